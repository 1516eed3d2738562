//! Server frames. Every frame is a JSON object with a `type`:
//! `reply`, `message`, `join`, `leave`, `presence`, `unsubscribed` and `disconnect`.
//!
//! Message frames are built by hand into one buffer: this is the one encoding per publish that
//! every subscriber then shares, so it avoids the intermediate values a derive would build.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::code::{CloseCode, ErrorCode};
use crate::envelope::{Payload, Publication};

fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// Encodes a publication as a `message` frame:
/// `{"type":"message","channel":..,"epoch":..,"offset":..,"ts":..,"client_id":..,"data":..}`.
pub fn encode_message(channel: &str, publication: &Publication) -> Bytes {
    let data_len = publication.payload.len();
    let mut buf = Vec::with_capacity(96 + channel.len() + data_len * 4 / 3);
    buf.extend_from_slice(br#"{"type":"message","channel":"#);
    push_json_str(&mut buf, channel);
    buf.extend_from_slice(br#","epoch":"#);
    push_json_str(&mut buf, &publication.epoch);
    buf.extend_from_slice(
        format!(r#","offset":{},"ts":{}"#, publication.offset, publication.ts_ms).as_bytes(),
    );
    if let Some(client_id) = &publication.client_id {
        buf.extend_from_slice(br#","client_id":"#);
        push_json_str(&mut buf, client_id);
    }
    if let Some(encoding) = &publication.encoding {
        buf.extend_from_slice(br#","encoding":"#);
        push_json_str(&mut buf, encoding);
    }
    match &publication.payload {
        Payload::Json(json) => {
            buf.extend_from_slice(br#","data":"#);
            buf.extend_from_slice(json);
        }
        Payload::Binary(bytes) => {
            buf.extend_from_slice(br#","binary":true,"data":""#);
            buf.extend_from_slice(STANDARD.encode(bytes).as_bytes());
            buf.push(b'"');
        }
    }
    buf.push(b'}');
    Bytes::from(buf)
}

#[derive(Serialize)]
struct ReplyOk<'a, T: Serialize> {
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    result: &'a T,
}

/// An error as it appears in replies and HTTP error bodies.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// The stable number.
    pub code: u16,
    /// The stable name.
    pub name: &'static str,
    /// A human-readable message.
    pub message: &'a str,
    /// Whether retrying later may succeed.
    pub temporary: bool,
}

impl<'a> ErrorBody<'a> {
    /// Builds the body of `code` with `message`.
    pub fn new(code: ErrorCode, message: &'a str) -> Self {
        Self { code: code.number(), name: code.name(), message, temporary: code.temporary() }
    }
}

#[derive(Serialize)]
struct ReplyErr<'a> {
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    error: ErrorBody<'a>,
}

/// Encodes a successful reply `{"type":"reply","id":..,"result":..}`.
pub fn encode_reply<T: Serialize>(id: Option<u64>, result: &T) -> Bytes {
    to_bytes(&ReplyOk { r#type: "reply", id, result })
}

/// Encodes an error reply `{"type":"reply","id":..,"error":{"code":..,"name":..,"message":..}}`.
pub fn encode_error(id: Option<u64>, code: ErrorCode, message: &str) -> Bytes {
    to_bytes(&ReplyErr { r#type: "reply", id, error: ErrorBody::new(code, message) })
}

/// Encodes a `disconnect` frame, sent on SSE and long-poll where there is no close frame.
pub fn encode_disconnect(code: CloseCode) -> Bytes {
    #[derive(Serialize)]
    struct Disconnect {
        r#type: &'static str,
        code: u16,
        reason: &'static str,
        reconnect: bool,
    }
    to_bytes(&Disconnect {
        r#type: "disconnect",
        code: code.number(),
        reason: code.reason(),
        reconnect: code.reconnect(),
    })
}

fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    // Our frame types serialise infallibly (no maps with non-string keys, no failing impls).
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// A presence member as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberInfo {
    /// The member's client id.
    pub client_id: Arc<str>,
    /// The connection id (one member may have several connections).
    pub conn_id: Arc<str>,
    /// The member's custom state, if it set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Arc<RawValue>>,
}

/// A presence change on a channel.
#[derive(Debug, Clone)]
pub enum PresenceEvent {
    /// The first connection of a client id subscribed with presence.
    Join(MemberInfo),
    /// The last connection of a client id left (unsubscribed, disconnected or timed out).
    Leave(MemberInfo),
    /// A member replaced its state.
    Update(MemberInfo),
}

impl PresenceEvent {
    /// Returns the frame type: `join`, `leave` or `presence`.
    pub fn kind(&self) -> &'static str {
        match self {
            PresenceEvent::Join(_) => "join",
            PresenceEvent::Leave(_) => "leave",
            PresenceEvent::Update(_) => "presence",
        }
    }

    /// Returns the member.
    pub fn member(&self) -> &MemberInfo {
        match self {
            PresenceEvent::Join(m) | PresenceEvent::Leave(m) | PresenceEvent::Update(m) => m,
        }
    }

    /// Encodes the event as `{"type":"join","channel":..,"member":{..}}`.
    pub fn encode(&self, channel: &str) -> Bytes {
        #[derive(Serialize)]
        struct Event<'a> {
            r#type: &'static str,
            channel: &'a str,
            member: &'a MemberInfo,
        }
        to_bytes(&Event { r#type: self.kind(), channel, member: self.member() })
    }
}

/// Encodes an `unsubscribed` frame: the server ended a subscription (for example after a
/// token refresh that no longer grants it).
pub fn encode_unsubscribed(channel: &str, code: ErrorCode) -> Bytes {
    #[derive(Serialize)]
    struct Unsubscribed<'a> {
        r#type: &'static str,
        channel: &'a str,
        error: ErrorBody<'a>,
    }
    to_bytes(&Unsubscribed { r#type: "unsubscribed", channel, error: ErrorBody::new(code, code.message()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(payload: Payload) -> Publication {
        Publication {
            epoch: Arc::from("ep"),
            offset: 7,
            ts_ms: 1000,
            client_id: Some(Arc::from("al\"ice")),
            payload,
            encoding: None,
            meta: None,
        }
    }

    #[test]
    fn message_frame_is_valid_json_with_every_field() {
        let bytes = encode_message("chat:a", &publication(Payload::Json(Bytes::from_static(br#"{"t":1}"#))));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["channel"], "chat:a");
        assert_eq!(v["epoch"], "ep");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["client_id"], "al\"ice");
        assert_eq!(v["data"]["t"], 1);
        assert!(v.get("binary").is_none());
    }

    #[test]
    fn binary_payloads_are_base64_with_a_flag() {
        let bytes = encode_message("a", &publication(Payload::Binary(Bytes::from_static(&[0, 255]))));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["binary"], true);
        assert_eq!(v["data"], "AP8=");
    }

    #[test]
    fn error_reply_carries_number_and_name() {
        let v: serde_json::Value =
            serde_json::from_slice(&encode_error(Some(4), ErrorCode::Forbidden, "no")).unwrap();
        assert_eq!(v["id"], 4);
        assert_eq!(v["error"]["code"], 1106);
        assert_eq!(v["error"]["name"], "forbidden");
    }
}
