//! Client frames: one JSON object per WebSocket message, `{"id": 1, "op": "subscribe", ...}`.
//!
//! Parsing is two-step on purpose: a flat struct with every known field (so unknown fields and
//! wrong types are refused with serde's precise message), then a per-op check that the fields
//! that op needs are there. A frame whose JSON is broken still gets its `id` echoed when it can
//! be read, so the client can match the error to its request.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::channel::ChannelName;
use crate::code::ErrorCode;
use crate::position::StreamPosition;

/// A parsed client frame.
#[derive(Debug)]
pub struct ClientFrame {
    /// The request id to echo in the reply; frames without one get no reply on success.
    pub id: Option<u64>,
    /// What the client asks for.
    pub op: ClientOp,
}

/// The operations a client can ask for.
#[derive(Debug)]
pub enum ClientOp {
    /// Authenticates the connection; must be the first frame.
    Connect {
        /// The capability token (a JWT).
        token: String,
    },
    /// Subscribes to a channel, optionally recovering missed messages.
    Subscribe(SubscribeRequest),
    /// Unsubscribes from a channel.
    Unsubscribe {
        /// The channel.
        channel: ChannelName,
    },
    /// Publishes a message to a channel.
    Publish(PublishRequest),
    /// Reads a channel's history.
    History(HistoryRequest),
    /// Reads a channel's presence.
    Presence {
        /// The channel.
        channel: ChannelName,
    },
    /// Replaces this connection's presence state on a channel it is subscribed to.
    PresenceUpdate {
        /// The channel.
        channel: ChannelName,
        /// The new state (any JSON value).
        state: Box<RawValue>,
    },
    /// Replaces the connection's token before it expires.
    Refresh {
        /// The new token.
        token: String,
    },
    /// Asks for a `pong` reply; also counts as activity for the idle timeout.
    Ping,
}

/// A subscribe request.
#[derive(Debug)]
pub struct SubscribeRequest {
    /// The channel.
    pub channel: ChannelName,
    /// Recover from this position: deliver every message after it, then the live stream.
    pub recover: Option<StreamPosition>,
    /// Deliver the last `rewind` messages, then the live stream.
    pub rewind: Option<u32>,
    /// Presence state to announce with this subscription.
    pub state: Option<Box<RawValue>>,
}

/// A publish request.
#[derive(Debug)]
pub struct PublishRequest {
    /// The channel.
    pub channel: ChannelName,
    /// The payload: any JSON value, or a base64 string when `binary`.
    pub data: Box<RawValue>,
    /// Whether `data` is base64 of opaque bytes.
    pub binary: bool,
    /// An opaque marker passed through to subscribers (for example an encryption scheme).
    pub encoding: Option<String>,
    /// A key that makes a retried publish be stored and delivered once.
    pub idempotency_key: Option<String>,
    /// A push section: the message is also pushed to the channel's push subscribers.
    pub push: Option<Box<RawValue>>,
}

/// Which way history is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// A history request.
#[derive(Debug)]
pub struct HistoryRequest {
    /// The channel.
    pub channel: ChannelName,
    /// Start after (forward) or before (backward) this offset; from the end of the window when absent.
    pub since: Option<u64>,
    /// Which way to read.
    pub direction: Direction,
    /// At most this many messages.
    pub limit: Option<u32>,
}

/// Why a frame was refused, with the request id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    /// The request id, if the frame had a readable one.
    pub id: Option<u64>,
    /// The error code.
    pub code: ErrorCode,
    /// A precise message for the client.
    pub message: String,
}

impl FrameError {
    fn new(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { id, code, message: message.into() }
    }
}

/// The longest idempotency key or encoding marker accepted, in bytes.
pub const MAX_KEY_LEN: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrame {
    id: Option<u64>,
    op: String,
    token: Option<String>,
    channel: Option<String>,
    recover: Option<StreamPosition>,
    rewind: Option<u32>,
    state: Option<Box<RawValue>>,
    data: Option<Box<RawValue>>,
    binary: Option<bool>,
    encoding: Option<String>,
    idempotency_key: Option<String>,
    push: Option<Box<RawValue>>,
    since: Option<u64>,
    direction: Option<Direction>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

impl ClientFrame {
    /// Parses one frame. The size is checked before anything is parsed.
    pub fn parse(bytes: &[u8], max_frame_bytes: usize) -> Result<Self, FrameError> {
        if bytes.len() > max_frame_bytes {
            return Err(FrameError::new(
                None,
                ErrorCode::FrameTooLarge,
                format!("frame of {} bytes is larger than the maximum of {max_frame_bytes}", bytes.len()),
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            FrameError::new(None, ErrorCode::InvalidUtf8, format!("frame is not valid UTF-8: {e}"))
        })?;
        let raw: RawFrame = crate::json::from_object(text, "a frame").map_err(|e| {
            // An id is only read from an object (an array's first element is no id); a plain
            // parse, as the error is already decided.
            let object = text.trim_start().starts_with('{');
            let id = object.then(|| serde_json::from_str::<IdOnly>(text).ok().and_then(|f| f.id)).flatten();
            FrameError::new(id, e.code, e.message)
        })?;
        let id = raw.id;
        let op = raw.into_op().map_err(|(code, message)| FrameError::new(id, code, message))?;
        Ok(ClientFrame { id, op })
    }
}

type OpError = (ErrorCode, String);

fn missing(op: &str, field: &str) -> OpError {
    (ErrorCode::InvalidFrame, format!("op {op} needs field {field}"))
}

fn check_key(field: &str, value: Option<String>) -> Result<Option<String>, OpError> {
    match value {
        Some(v) if v.is_empty() || v.len() > MAX_KEY_LEN => {
            Err((ErrorCode::InvalidParameter, format!("{field} must be 1 to {MAX_KEY_LEN} bytes")))
        }
        other => Ok(other),
    }
}

impl RawFrame {
    fn channel(&mut self, op: &str) -> Result<ChannelName, OpError> {
        let name = self.channel.take().ok_or_else(|| missing(op, "channel"))?;
        ChannelName::parse(&name).map_err(|e| (ErrorCode::InvalidChannel, e.to_string()))
    }

    fn into_op(mut self) -> Result<ClientOp, OpError> {
        let op = std::mem::take(&mut self.op);
        Ok(match op.as_str() {
            "connect" => ClientOp::Connect { token: self.token.ok_or_else(|| missing("connect", "token"))? },
            "refresh" => ClientOp::Refresh { token: self.token.ok_or_else(|| missing("refresh", "token"))? },
            "subscribe" => {
                let channel = self.channel("subscribe")?;
                if self.recover.is_some() && self.rewind.is_some() {
                    return Err((ErrorCode::InvalidFrame, "recover and rewind are exclusive".into()));
                }
                ClientOp::Subscribe(SubscribeRequest {
                    channel,
                    recover: self.recover,
                    rewind: self.rewind,
                    state: self.state,
                })
            }
            "unsubscribe" => ClientOp::Unsubscribe { channel: self.channel("unsubscribe")? },
            "publish" => {
                let channel = self.channel("publish")?;
                ClientOp::Publish(PublishRequest {
                    channel,
                    data: self.data.ok_or_else(|| missing("publish", "data"))?,
                    binary: self.binary.unwrap_or(false),
                    encoding: check_key("encoding", self.encoding)?,
                    idempotency_key: check_key("idempotency_key", self.idempotency_key)?,
                    push: self.push,
                })
            }
            "history" => ClientOp::History(HistoryRequest {
                channel: self.channel("history")?,
                since: self.since,
                direction: self.direction.unwrap_or_default(),
                limit: self.limit,
            }),
            "presence" => ClientOp::Presence { channel: self.channel("presence")? },
            "presence_update" => {
                let channel = self.channel("presence_update")?;
                ClientOp::PresenceUpdate {
                    channel,
                    state: self.state.ok_or_else(|| missing("presence_update", "state"))?,
                }
            }
            "ping" => ClientOp::Ping,
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err((ErrorCode::UnknownOp, format!("unknown op {shown:?}")));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<ClientFrame, FrameError> {
        ClientFrame::parse(s.as_bytes(), 64 * 1024)
    }

    #[test]
    fn subscribe_with_recovery_parses() {
        let f = parse(r#"{"id":3,"op":"subscribe","channel":"chat:a","recover":{"epoch":"e","offset":4}}"#)
            .unwrap();
        assert_eq!(f.id, Some(3));
        match f.op {
            ClientOp::Subscribe(s) => {
                assert_eq!(s.channel.as_str(), "chat:a");
                assert_eq!(s.recover, Some(StreamPosition { epoch: "e".into(), offset: 4 }));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_json_is_invalid_json() {
        let e = parse(r#"{"id":1,"op":"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn wrong_types_and_unknown_fields_are_invalid_frames_that_keep_the_id() {
        let e = parse(r#"{"id":9,"op":"subscribe","channel":5}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::InvalidFrame, Some(9)));
        let e = parse(r#"{"id":9,"op":"ping","bogus":1}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::InvalidFrame, Some(9)));
        assert!(e.message.contains("bogus"), "{}", e.message);
    }

    #[test]
    fn unknown_op_and_missing_fields_are_named() {
        let e = parse(r#"{"id":2,"op":"teleport"}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::UnknownOp, Some(2)));
        let e = parse(r#"{"id":2,"op":"publish","channel":"a"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidFrame);
        assert!(e.message.contains("data"));
    }

    #[test]
    fn oversized_and_non_utf8_frames_are_refused_before_parsing() {
        let big = format!(r#"{{"op":"ping","token":"{}"}}"#, "x".repeat(100));
        let e = ClientFrame::parse(big.as_bytes(), 50).unwrap_err();
        assert_eq!(e.code, ErrorCode::FrameTooLarge);
        let e = ClientFrame::parse(&[0x7b, 0xff, 0xfe, 0x7d], 50).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidUtf8);
    }

    #[test]
    fn bad_channel_names_are_invalid_channel() {
        let e = parse(r#"{"op":"unsubscribe","channel":"a b"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidChannel);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ClientFrame::parse(&bytes, 256);
        }

        #[test]
        fn arbitrary_json_objects_never_panic(s in r#"\{("[a-z_]{1,10}":("[a-z:]{0,8}"|[0-9]{1,3}|null|true|\{\}|\[\]),?){0,6}\}"#) {
            let _ = parse(&s);
        }
    }
}
