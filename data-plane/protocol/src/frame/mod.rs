//! Frames: what clients send ([`client`]) and what the server sends ([`server`]).

pub mod client;
pub mod server;

pub use client::{
    ClientFrame, ClientOp, Direction, FrameError, HistoryRequest, PublishRequest, SubscribeRequest,
};
pub use server::{MemberInfo, PresenceEvent};
