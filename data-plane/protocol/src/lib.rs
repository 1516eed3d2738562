//! Tributary's wire protocol: everything a client and a relay must agree on, and nothing else.
//!
//! This crate owns the JSON frames of the `tributary.v1` WebSocket subprotocol (also used, event
//! by event, by Server-Sent Events and long-poll), the message envelope, the one table of error
//! codes and close codes, channel names and patterns, and stream positions. It does no I/O and
//! depends on nothing async, so it stays small and easy to fuzz.
//!
//! # Layout
//! - [`channel`]: validated channel names, namespaces and `*` patterns.
//! - [`position`]: `(epoch, offset)` stream positions and the opaque multi-channel [`Cursor`].
//! - [`code`]: [`ErrorCode`] (number, message, HTTP status, temporary) and [`CloseCode`] bands.
//! - [`envelope`]: the [`Publication`] a channel carries and its [`Payload`].
//! - [`frame`]: parsing client frames (size checked first) and encoding server frames.
//! - [`json`]: reading frames and bodies that must be JSON objects, with the right error code.
#![forbid(unsafe_code)]

pub mod channel;
pub mod code;
pub mod control;
pub mod envelope;
pub mod frame;
pub mod json;
pub mod position;

pub use channel::{ChannelError, ChannelName, ChannelPattern};
pub use code::{CloseCode, ErrorCode};
pub use control::ControlEvent;
pub use envelope::{Payload, PayloadError, Publication};
pub use position::{Cursor, StreamPosition};

/// The WebSocket subprotocol name of this protocol version.
pub const SUBPROTOCOL: &str = "tributary.v1";
