//! What the server sends most: PUBLISH packets to subscribers, written straight into a
//! connection's write buffer from a stored message, and the small record ([`MessageMeta`])
//! stored with every message published over MQTT so that subscribers get its QoS, retain flag
//! and MQTT 5 properties back.

use bytes::{BufMut, Bytes};

use crate::Version;
use crate::packet::{Publish, QoS};
use crate::properties::Properties;
use crate::wire::{read_varint, varint_len, write_string, write_varint};

/// Bit 0–1 of the meta's first byte: the QoS it was published with.
const QOS_MASK: u8 = 0b11;
/// The message was published with the retain flag.
const RETAIN: u8 = 0b100;
/// A message expiry interval (4 bytes) follows the first byte.
const EXPIRY: u8 = 0b1000;

/// An MQTT publication's own properties, kept with the message (as its `meta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    /// The QoS it was published with: a subscriber gets at most this.
    pub qos: QoS,
    /// Whether it was published with the retain flag (for "retain as published").
    pub retain: bool,
    /// MQTT 5 message expiry interval in seconds, counted from the publication's time.
    pub expiry: Option<u32>,
    /// The properties a server forwards unaltered (payload format, content type, response
    /// topic, correlation data, user properties), encoded as on the wire without their length.
    pub forwarded: Bytes,
}

impl MessageMeta {
    /// Takes what a subscriber must get back from a client's PUBLISH.
    pub fn of(publish: &Publish) -> Self {
        let p = &publish.properties;
        let kept = Properties {
            payload_format: p.payload_format,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user: p.user.clone(),
            ..Properties::default()
        };
        let mut out = Vec::new();
        kept.write(&mut out);
        // `write` put the length first; the stored form is the properties alone.
        let skip = match read_varint(&out) {
            Ok(Some((_, used))) => used,
            _ => out.len(),
        };
        let forwarded = Bytes::copy_from_slice(&out[skip..]);
        Self { qos: publish.qos, retain: publish.retain, expiry: p.message_expiry, forwarded }
    }

    /// Encodes the meta for storage.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(5 + self.forwarded.len());
        let mut flags = self.qos as u8;
        if self.retain {
            flags |= RETAIN;
        }
        if self.expiry.is_some() {
            flags |= EXPIRY;
        }
        out.push(flags);
        if let Some(expiry) = self.expiry {
            out.put_u32(expiry);
        }
        out.extend_from_slice(&self.forwarded);
        Bytes::from(out)
    }

    /// Decodes a stored meta; `None` if it is not one (a message published another way).
    pub fn decode(stored: &Bytes) -> Option<Self> {
        let view = Self::view(stored)?;
        let skip = stored.len() - view.forwarded.len();
        Some(Self {
            qos: view.qos,
            retain: view.retain,
            expiry: view.expiry,
            forwarded: stored.slice(skip..),
        })
    }

    /// Reads a stored meta in place, without copying or counting a reference: it is read once
    /// per delivery.
    pub fn view(stored: &[u8]) -> Option<MetaView<'_>> {
        let (&flags, rest) = stored.split_first()?;
        let qos = match flags & QOS_MASK {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return None,
        };
        let (expiry, forwarded) = if flags & EXPIRY != 0 {
            let bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
            (Some(u32::from_be_bytes(bytes)), &rest[4..])
        } else {
            (None, rest)
        };
        Some(MetaView { qos, retain: flags & RETAIN != 0, expiry, forwarded })
    }
}

/// A stored [`MessageMeta`], borrowed.
#[derive(Debug, Clone, Copy)]
pub struct MetaView<'a> {
    /// The QoS it was published with.
    pub qos: QoS,
    /// Whether it was published with the retain flag.
    pub retain: bool,
    /// MQTT 5 message expiry interval in seconds.
    pub expiry: Option<u32>,
    /// The forwarded properties, encoded.
    pub forwarded: &'a [u8],
}

/// A PUBLISH to a subscriber, borrowed from the stored message and the subscription.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Whether this is a redelivery.
    pub dup: bool,
    /// The QoS of this delivery.
    pub qos: QoS,
    /// The retain flag of this delivery.
    pub retain: bool,
    /// The topic; empty when `topic_alias` names a topic the client already knows.
    pub topic: &'a str,
    /// The packet identifier (QoS 1 and 2).
    pub packet_id: Option<u16>,
    /// MQTT 5: a topic alias.
    pub topic_alias: Option<u16>,
    /// MQTT 5: the identifiers of the subscriptions it matched.
    pub subscription_ids: &'a [u32],
    /// MQTT 5: what is left of the message expiry interval.
    pub expiry: Option<u32>,
    /// MQTT 5: the forwarded properties ([`MessageMeta::forwarded`]).
    pub forwarded: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
}

impl Outgoing<'_> {
    fn properties_len(&self) -> usize {
        self.forwarded.len()
            + self.expiry.map_or(0, |_| 5)
            + self.topic_alias.map_or(0, |_| 3)
            + self.subscription_ids.iter().map(|id| 1 + varint_len(*id as usize)).sum::<usize>()
    }

    fn remaining_len(&self, version: Version) -> usize {
        let mut len = 2 + self.topic.len() + self.payload.len();
        if self.packet_id.is_some() {
            len += 2;
        }
        if version == Version::V5 {
            let props = self.properties_len();
            len += varint_len(props) + props;
        }
        len
    }

    /// Returns the size of the whole packet.
    pub fn packet_len(&self, version: Version) -> usize {
        let remaining = self.remaining_len(version);
        1 + varint_len(remaining) + remaining
    }

    /// Appends the packet to `out` (no allocation beyond `out` growing).
    pub fn write(&self, version: Version, out: &mut Vec<u8>) {
        let mut header = 0x30 | ((self.qos as u8) << 1);
        if self.dup {
            header |= 0x08;
        }
        if self.retain {
            header |= 0x01;
        }
        out.reserve(self.packet_len(version));
        out.push(header);
        write_varint(out, self.remaining_len(version));
        write_string(out, self.topic);
        if let Some(id) = self.packet_id {
            out.put_u16(id);
        }
        if version == Version::V5 {
            write_varint(out, self.properties_len());
            if let Some(expiry) = self.expiry {
                out.push(0x02);
                out.put_u32(expiry);
            }
            if let Some(alias) = self.topic_alias {
                out.push(0x23);
                out.put_u16(alias);
            }
            for id in self.subscription_ids {
                out.push(0x0B);
                write_varint(out, *id as usize);
            }
            out.extend_from_slice(self.forwarded);
        }
        out.extend_from_slice(self.payload);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::packet::{Packet, decode};

    fn publish(properties: Properties) -> Publish {
        Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "devices/1/temp".into(),
            packet_id: Some(7),
            properties,
            payload: Bytes::from_static(b"21.5"),
        }
    }

    #[test]
    fn meta_keeps_what_subscribers_get_back() {
        let props = Properties {
            payload_format: Some(1),
            message_expiry: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("replies/1".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            topic_alias: Some(3),
            user: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            ..Properties::default()
        };
        let meta = MessageMeta::of(&publish(props));
        let decoded = MessageMeta::decode(&meta.encode()).unwrap();
        assert_eq!(decoded, meta);
        assert_eq!((decoded.qos, decoded.retain, decoded.expiry), (QoS::ExactlyOnce, true, Some(60)));
        let bare = MessageMeta::of(&publish(Properties::default()));
        assert_eq!(MessageMeta::decode(&bare.encode()).unwrap(), bare);
        assert!(MessageMeta::decode(&Bytes::new()).is_none());
        assert!(MessageMeta::decode(&Bytes::from_static(&[3])).is_none(), "QoS 3");
        assert!(MessageMeta::decode(&Bytes::from_static(&[EXPIRY, 0])).is_none(), "short expiry");
    }

    #[test]
    fn outgoing_publishes_decode_as_the_packet_they_stand_for() {
        let props = Properties {
            payload_format: Some(1),
            content_type: Some("text/plain".into()),
            user: vec![("k".into(), "v".into())],
            ..Properties::default()
        };
        let meta = MessageMeta::of(&publish(props));
        for version in [Version::V311, Version::V5] {
            for (qos, packet_id) in [(QoS::AtMostOnce, None), (QoS::AtLeastOnce, Some(9))] {
                let outgoing = Outgoing {
                    dup: packet_id.is_some(),
                    qos,
                    retain: false,
                    topic: "devices/1/temp",
                    packet_id,
                    topic_alias: Some(4),
                    subscription_ids: &[1, 300],
                    expiry: Some(59),
                    forwarded: &meta.forwarded,
                    payload: b"21.5",
                };
                let mut out = Vec::new();
                outgoing.write(version, &mut out);
                assert_eq!(out.len(), outgoing.packet_len(version));
                let (packet, used) = decode(&out, Some(version), 1 << 20).unwrap().unwrap();
                assert_eq!(used, out.len());
                let Packet::Publish(p) = packet else { panic!("not a publish") };
                assert_eq!(
                    (p.qos, p.packet_id, p.dup, &*p.topic),
                    (qos, packet_id, packet_id.is_some(), "devices/1/temp")
                );
                assert_eq!(&p.payload[..], b"21.5");
                if version == Version::V5 {
                    assert_eq!(p.properties.subscription_ids, vec![1, 300]);
                    assert_eq!(p.properties.topic_alias, Some(4));
                    assert_eq!(p.properties.message_expiry, Some(59));
                    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
                    assert_eq!(p.properties.user, vec![("k".to_string(), "v".to_string())]);
                } else {
                    assert_eq!(p.properties, Properties::default());
                }
            }
        }
    }
}
