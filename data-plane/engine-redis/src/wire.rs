//! How publications and presence members are written into Redis and read back.
//!
//! A publication's body is stored once in the stream and sent once on pub/sub: a small JSON
//! object with the payload kept in its wire form (JSON text as is, binary as base64), so it is
//! never re-encoded. Pub/sub messages are prefixed with their kind: `p<epoch>\n<offset>\n<ts>\n`
//! then the body for a publication; `j`, `l`, `u` then the member for presence events. An app's
//! feed carries `P<channel>\n` then what the channel's own message has after its `p`.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tributary_engine::NewMessage;
use tributary_protocol::frame::{MemberInfo, PresenceEvent};
use tributary_protocol::{ChannelName, Payload, Publication};

/// The stored body of a publication.
#[derive(Serialize, Deserialize)]
struct Body<'a> {
    /// The payload: JSON text, or a base64 string when `b`.
    #[serde(borrow)]
    d: &'a RawValue,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    b: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<&'a str>,
    /// Protocol properties, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<std::borrow::Cow<'a, str>>,
}

/// Why something read from Redis could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("malformed data in Redis: {0}")]
pub struct WireError(pub &'static str);

/// Encodes a message's body.
pub fn encode_body(message: &NewMessage) -> Result<String, WireError> {
    let base64;
    let data: Box<RawValue> = match &message.payload {
        Payload::Json(json) => {
            let text = std::str::from_utf8(json).map_err(|_| WireError("payload is not UTF-8"))?;
            RawValue::from_string(text.to_owned()).map_err(|_| WireError("payload is not JSON"))?
        }
        Payload::Binary(bytes) => {
            base64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            RawValue::from_string(format!("\"{base64}\"")).map_err(|_| WireError("base64"))?
        }
    };
    let body = Body {
        d: &data,
        b: matches!(message.payload, Payload::Binary(_)),
        c: message.client_id.as_deref(),
        e: message.encoding.as_deref(),
        m: message.meta.as_ref().map(|m| base64::engine::general_purpose::STANDARD.encode(m).into()),
    };
    serde_json::to_string(&body).map_err(|_| WireError("body"))
}

/// Decodes a stored body into a publication at `(epoch, offset, ts_ms)`.
pub fn decode_body(body: &str, epoch: &Arc<str>, offset: u64, ts_ms: u64) -> Result<Publication, WireError> {
    let body: Body<'_> = serde_json::from_str(body).map_err(|_| WireError("body"))?;
    let payload = if body.b {
        let text: &str = serde_json::from_str(body.d.get()).map_err(|_| WireError("binary payload"))?;
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| WireError("base64"))?;
        Payload::Binary(Bytes::from(bytes))
    } else {
        Payload::Json(Bytes::copy_from_slice(body.d.get().as_bytes()))
    };
    Ok(Publication {
        epoch: epoch.clone(),
        offset,
        ts_ms,
        client_id: body.c.map(Arc::from),
        payload,
        encoding: body.e.map(Arc::from),
        meta: match body.m {
            Some(m) => Some(Bytes::from(
                base64::engine::general_purpose::STANDARD.decode(&*m).map_err(|_| WireError("meta"))?,
            )),
            None => None,
        },
    })
}

/// Encodes a publication with its position, as a retained message is stored:
/// `<epoch>\n<offset>\n<ts>\n<body>`.
pub fn encode_publication(publication: &Publication) -> Result<String, WireError> {
    let message = NewMessage {
        payload: publication.payload.clone(),
        client_id: publication.client_id.clone(),
        encoding: publication.encoding.clone(),
        meta: publication.meta.clone(),
    };
    let body = encode_body(&message)?;
    Ok(format!("{}\n{}\n{}\n{body}", publication.epoch, publication.offset, publication.ts_ms))
}

/// Decodes what [`encode_publication`] wrote.
pub fn decode_publication(text: &str) -> Result<Publication, WireError> {
    let mut parts = text.splitn(4, '\n');
    let (Some(epoch), Some(offset), Some(ts), Some(body)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(WireError("publication header"));
    };
    let offset = offset.parse().map_err(|_| WireError("offset"))?;
    let ts = ts.parse().map_err(|_| WireError("timestamp"))?;
    decode_body(body, &Arc::from(epoch), offset, ts)
}

/// A presence member as stored.
#[derive(Serialize, Deserialize)]
struct Member<'a> {
    client_id: &'a str,
    conn_id: &'a str,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    state: Option<&'a RawValue>,
}

/// Encodes a member as JSON.
pub fn encode_member(member: &MemberInfo) -> Result<String, WireError> {
    let stored =
        Member { client_id: &member.client_id, conn_id: &member.conn_id, state: member.state.as_deref() };
    serde_json::to_string(&stored).map_err(|_| WireError("member"))
}

/// Decodes a member.
pub fn decode_member(json: &str) -> Result<MemberInfo, WireError> {
    let stored: Member<'_> = serde_json::from_str(json).map_err(|_| WireError("member"))?;
    let state = match stored.state {
        Some(raw) => {
            Some(Arc::from(RawValue::from_string(raw.get().to_owned()).map_err(|_| WireError("state"))?))
        }
        None => None,
    };
    Ok(MemberInfo { client_id: Arc::from(stored.client_id), conn_id: Arc::from(stored.conn_id), state })
}

/// A message received on a channel's pub/sub channel or an app's feed.
pub enum Received {
    /// A publication.
    Publication(Publication),
    /// A publication on an app's feed, with its channel.
    AppPublication(ChannelName, Publication),
    /// A presence event.
    Presence(PresenceEvent),
}

/// Decodes a pub/sub message of a channel.
pub fn decode_message(message: &[u8]) -> Result<Received, WireError> {
    let text = std::str::from_utf8(message).map_err(|_| WireError("not UTF-8"))?;
    let (kind, rest) = text.split_at_checked(1).ok_or(WireError("empty message"))?;
    match kind {
        "p" => decode_publication(rest).map(Received::Publication),
        "P" => {
            let (channel, rest) = rest.split_once('\n').ok_or(WireError("feed message header"))?;
            let channel = ChannelName::parse(channel).map_err(|_| WireError("channel name"))?;
            decode_publication(rest).map(|publication| Received::AppPublication(channel, publication))
        }
        "j" => decode_member(rest).map(|m| Received::Presence(PresenceEvent::Join(m))),
        "l" => decode_member(rest).map(|m| Received::Presence(PresenceEvent::Leave(m))),
        "u" => decode_member(rest).map(|m| Received::Presence(PresenceEvent::Update(m))),
        _ => Err(WireError("unknown message kind")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use bytes::Bytes;
    use tributary_engine::NewMessage;
    use tributary_protocol::Payload;

    use super::*;

    #[test]
    fn bodies_and_messages_round_trip() {
        for payload in [
            Payload::Json(Bytes::from_static(br#"{"a":[1,"x\n"]}"#)),
            Payload::Binary(Bytes::from_static(b"\0\xff")),
        ] {
            let message = NewMessage {
                payload: payload.clone(),
                client_id: Some(Arc::from("c")),
                encoding: None,
                meta: Some(Bytes::from_static(b"\x01\x02")),
            };
            let body = encode_body(&message).unwrap();
            let wire = format!("pE1\n7\n123\n{body}");
            let Received::Publication(p) = decode_message(wire.as_bytes()).unwrap() else { panic!("kind") };
            assert_eq!(
                (&*p.epoch, p.offset, p.ts_ms, p.payload, p.client_id.as_deref()),
                ("E1", 7, 123, payload, Some("c"))
            );
            assert_eq!(p.meta.as_deref(), Some(&b"\x01\x02"[..]));
        }
        let feed = format!(
            "Psensors/1\nE2\n8\n124\n{}",
            encode_body(&NewMessage {
                payload: Payload::Json(Bytes::from_static(b"1")),
                client_id: None,
                encoding: None,
                meta: None,
            })
            .unwrap()
        );
        let Received::AppPublication(channel, p) = decode_message(feed.as_bytes()).unwrap() else {
            panic!("kind")
        };
        assert_eq!((channel.as_str(), &*p.epoch, p.offset), ("sensors/1", "E2", 8));
        assert!(decode_message(b"Pbad name!\nE\n1\n1\n{}").is_err(), "a channel name is checked");
        assert!(decode_message(b"Psensors/1").is_err(), "a header is needed");
        assert!(decode_message(b"x").is_err());
        assert!(decode_message(b"pE\nnot-a-number\n1\n{}").is_err());
    }
}
