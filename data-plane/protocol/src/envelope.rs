//! The message envelope: what a channel carries.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::value::RawValue;

/// A message payload, kept in its wire form so fan-out never re-encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Compact JSON text (no raw newlines), any JSON value.
    Json(Bytes),
    /// Opaque bytes, sent to clients as base64 with `"binary": true`.
    Binary(Bytes),
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// A binary payload was not a base64 string.
    #[error("binary data must be a base64 string")]
    NotBase64,
    /// The payload is larger than allowed.
    #[error("payload of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Size of the payload in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
}

impl Payload {
    /// Builds a payload from a JSON value as sent by a client. With `binary`, the value must be
    /// a base64 string and the decoded bytes are kept. `limit` applies to the stored size.
    pub fn from_raw(raw: &RawValue, binary: bool, limit: usize) -> Result<Self, PayloadError> {
        let text = raw.get();
        if binary {
            let s: &str = serde_json::from_str(text).map_err(|_| PayloadError::NotBase64)?;
            // Size check before decoding: base64 decodes to 3/4 of its length.
            check_size(s.len() / 4 * 3, limit)?;
            let bytes = STANDARD.decode(s).map_err(|_| PayloadError::NotBase64)?;
            check_size(bytes.len(), limit)?;
            return Ok(Payload::Binary(Bytes::from(bytes)));
        }
        check_size(text.len(), limit)?;
        Ok(Payload::Json(compact_json(text)))
    }

    /// Takes the bytes of a protocol whose payloads have no type (MQTT). Compact JSON stays JSON,
    /// so subscribers over every protocol get it as a value; anything else (text that is not
    /// JSON, or JSON with whitespace that a frame would have to rewrite) is binary, so that every
    /// subscriber gets exactly the bytes that were sent.
    pub fn from_bytes(bytes: Bytes) -> Self {
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
        if json && !has_outer_whitespace(&bytes) { Payload::Json(bytes) } else { Payload::Binary(bytes) }
    }

    /// Returns the stored size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(b) | Payload::Binary(b) => b.len(),
        }
    }

    /// Returns whether the payload is empty (never true for valid JSON).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns whether the payload is binary.
    pub fn is_binary(&self) -> bool {
        matches!(self, Payload::Binary(_))
    }
}

fn check_size(size: usize, limit: usize) -> Result<(), PayloadError> {
    if size > limit { Err(PayloadError::TooLarge { size, limit }) } else { Ok(()) }
}

/// Returns valid JSON text in compact form. Text without whitespace outside strings is kept as
/// is (the common case); anything else is re-serialised so frames never contain raw newlines,
/// which SSE relies on.
fn compact_json(text: &str) -> Bytes {
    if !has_outer_whitespace(text.as_bytes()) {
        return Bytes::copy_from_slice(text.as_bytes());
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => Bytes::from(value.to_string()),
        // The caller passes text that already parsed as JSON; keep it rather than lose it.
        Err(_) => Bytes::copy_from_slice(text.as_bytes()),
    }
}

/// Returns whether JSON text has whitespace outside its strings.
fn has_outer_whitespace(text: &[u8]) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    text.iter().any(|&b| {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            false
        } else if b == b'"' {
            in_string = true;
            false
        } else {
            b.is_ascii_whitespace()
        }
    })
}

/// A message as stored in a channel's history and fanned out to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The stream's epoch when the message was stored.
    pub epoch: Arc<str>,
    /// The message's offset, strictly increasing within the epoch.
    pub offset: u64,
    /// Milliseconds since the Unix epoch when the engine stored the message.
    pub ts_ms: u64,
    /// The publisher's client id, when the publisher was a client.
    pub client_id: Option<Arc<str>>,
    /// The payload.
    pub payload: Payload,
    /// An opaque, client-defined marker such as an end-to-end encryption scheme; passed through untouched.
    pub encoding: Option<Arc<str>>,
    /// Properties of the protocol the message was published with, for subscribers of that
    /// protocol (MQTT: QoS, retain flag and MQTT 5 properties); opaque to everything else.
    pub meta: Option<Bytes>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untyped_bytes_are_json_only_when_compact_json() {
        for json in [&b"{\"t\":21.5}"[..], b"21.5", b"\"a b\"", b"[1,2]", b"true"] {
            assert_eq!(
                Payload::from_bytes(Bytes::copy_from_slice(json)),
                Payload::Json(Bytes::copy_from_slice(json))
            );
        }
        for other in [&b"hello"[..], b"{ \"t\": 1 }", b"\xff\x00", b"", b"21.5\n", b"{\"a\":1}{"] {
            let payload = Payload::from_bytes(Bytes::copy_from_slice(other));
            assert_eq!(payload, Payload::Binary(Bytes::copy_from_slice(other)), "{other:?}");
        }
    }
}
