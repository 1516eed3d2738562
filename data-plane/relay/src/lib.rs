//! The relay: where clients connect. It owns the transports, client sessions, the channel hub
//! and per-connection queues, and knows nothing about SQL (apps and keys come through the
//! [`AppDirectory`] trait that the binary implements).
//!
//! # Layout
//! - [`server`]: [`Relay`], the router of every transport and the HTTP API.
//! - [`transport`]: WebSocket (`/v1/connect`), Server-Sent Events (`/v1/sse`), long-poll (`/v1/poll`).
//! - [`http_api`]: publish, batch publish, history, presence and token minting for backends.
//! - [`session`]: a client session, independent of the transport; recovery lives in `session::subscribe`.
//! - [`hub`]: channel to local subscribers; encodes each publication once and shares it.
//! - [`conn`]: a connection's bounded outbound queue and close signal; the connection registry.
//! - [`mqtt`]: MQTT 3.1.1 and 5.0 clients on the same channels, sessions and hub.
//! - [`ops`]: publish and history, shared by sessions and the HTTP API; [`OpError`](ops::OpError).
//! - [`config`], [`directory`], [`limits`], [`state`]: settings, the app directory trait,
//!   rate limiting, shared state.
#![forbid(unsafe_code)]

pub mod config;
pub mod conn;
pub mod control;
pub mod directory;
pub mod exchange;
pub mod http_api;
pub mod hub;
pub mod limits;
pub mod mqtt;
pub mod ops;
pub mod policy;
pub mod quota;
pub mod server;
pub mod session;
pub mod state;
pub mod transport;
pub mod usage;

pub use config::{NamespaceConfig, RelayConfig};
pub use directory::{ApiKeyIdentity, AppDirectory, AppRecord, DirectoryError, MintedGrant};
pub use server::Relay;
