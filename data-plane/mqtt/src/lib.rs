//! MQTT 3.1.1 and 5.0 control packets for Tributary's MQTT front end: decoding from bytes a
//! peer sent (never trusting a length before checking it against the limit and against what
//! arrived) and encoding what the server sends.
//!
//! It is data only: no sockets and no sessions (the relay owns those). [`decode`] returns `Ok(None)` while a packet is incomplete, so a reader can feed it
//! a growing buffer; every malformed packet is a [`DecodeError`] whose
//! [`DecodeError::reason_code`] is the MQTT 5 reason code to close the connection with.
//!
//! The decoder is fuzzed: `cd data-plane/mqtt && cargo +nightly fuzz run decode` (needs
//! `cargo install cargo-fuzz`). The target feeds any bytes under each connection state and
//! checks that whatever decodes encodes back to the same packet; 10 minutes (59 million
//! inputs) found nothing on 2026-11-25.
//!
//! # Layout
//! - `wire`: variable byte integers, UTF-8 strings and binary data, with the spec's rules.
//! - [`properties`]: MQTT 5 properties.
//! - [`packet`]: the packets and [`decode`] / [`encode`].
//! - [`outgoing`]: PUBLISH packets to subscribers written from stored messages, and the meta
//!   stored with each message published over MQTT.
//! - [`topic`]: topic names as channel names, topic filters matched the MQTT way, and the
//!   channel patterns a filter's subscribe right must cover.
#![forbid(unsafe_code)]

pub mod outgoing;
pub mod packet;
pub mod properties;
pub mod topic;
mod wire;

pub use outgoing::{MessageMeta, MetaView, Outgoing};
pub use packet::{
    Ack, ConnAck, Connect, Disconnect, LastWill, Packet, Publish, QoS, SubAck, Subscribe, Subscription,
    UnsubAck, Unsubscribe, decode, encode,
};
pub use properties::Properties;

/// The protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The packet breaks the specification (a reserved flag set, a length past its packet, a
    /// missing field).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet type or a property is not allowed here.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The packet is larger than the maximum this side accepts; nothing of it was allocated.
    #[error("packet of {0} bytes is larger than the maximum")]
    TooLarge(usize),
    /// CONNECT names a protocol this server does not speak.
    #[error("unsupported protocol name or level")]
    UnsupportedProtocol,
    /// A string is not valid UTF-8, or holds a character MQTT forbids (U+0000, surrogates).
    #[error("invalid UTF-8 string")]
    InvalidString,
}

impl DecodeError {
    /// Returns the MQTT 5 reason code a server closes the connection with for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) | DecodeError::InvalidString => 0x81,
            DecodeError::Protocol(_) => 0x82,
            DecodeError::TooLarge(_) => 0x95,
            DecodeError::UnsupportedProtocol => 0x84,
        }
    }
}
