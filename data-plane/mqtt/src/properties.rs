//! MQTT 5 properties (section 2.2.2): a length, then identifier-value pairs. A property that
//! may appear once and appears twice is a protocol error; an unknown identifier is malformed.

use bytes::{BufMut, Bytes};

use crate::DecodeError;
#[cfg(test)]
use crate::wire::varint_len;
use crate::wire::{Reader, write_binary, write_string, write_varint};

/// The properties of a packet; each field is the property of that name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01: the payload is UTF-8 (1) or unspecified bytes (0).
    pub payload_format: Option<u8>,
    /// 0x02: seconds the message lives.
    pub message_expiry: Option<u32>,
    /// 0x03: the payload's content type.
    pub content_type: Option<String>,
    /// 0x08: the topic of a response.
    pub response_topic: Option<String>,
    /// 0x09: correlation data of a request/response.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: subscription identifiers (several on a delivered PUBLISH).
    pub subscription_ids: Vec<usize>,
    /// 0x11: seconds the session outlives the connection.
    pub session_expiry: Option<u32>,
    /// 0x12: the client id the server assigned.
    pub assigned_client_id: Option<String>,
    /// 0x13: the keep-alive the server imposes.
    pub server_keep_alive: Option<u16>,
    /// 0x15: the extended authentication method.
    pub auth_method: Option<String>,
    /// 0x16: the extended authentication data.
    pub auth_data: Option<Bytes>,
    /// 0x17: whether reason strings and user properties may be sent on failures.
    pub request_problem_info: Option<u8>,
    /// 0x18: seconds before a will is published.
    pub will_delay: Option<u32>,
    /// 0x19: whether response information is requested.
    pub request_response_info: Option<u8>,
    /// 0x1A: response information.
    pub response_info: Option<String>,
    /// 0x1C: another server to use.
    pub server_reference: Option<String>,
    /// 0x1F: a human-readable reason.
    pub reason_string: Option<String>,
    /// 0x21: QoS 1 and 2 messages the sender accepts unacknowledged.
    pub receive_maximum: Option<u16>,
    /// 0x22: the highest topic alias the sender accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: a topic alias.
    pub topic_alias: Option<u16>,
    /// 0x24: the highest QoS the server supports.
    pub maximum_qos: Option<u8>,
    /// 0x25: whether retained messages are supported.
    pub retain_available: Option<u8>,
    /// 0x26: user properties, in order.
    pub user: Vec<(String, String)>,
    /// 0x27: the largest packet the sender accepts.
    pub maximum_packet_size: Option<u32>,
    /// 0x28: whether wildcard subscriptions are supported.
    pub wildcard_available: Option<u8>,
    /// 0x29: whether subscription identifiers are supported.
    pub subscription_ids_available: Option<u8>,
    /// 0x2A: whether shared subscriptions are supported.
    pub shared_available: Option<u8>,
}

fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("a property appears twice"));
    }
    *slot = Some(value);
    Ok(())
}

impl Properties {
    /// Reads a property set (its length first).
    pub(crate) fn read(reader: &mut Reader) -> Result<Self, DecodeError> {
        let len = reader.varint()?;
        let mut r = Reader::new(reader.take(len)?);
        let mut p = Properties::default();
        while r.remaining() > 0 {
            match r.varint()? {
                0x01 => {
                    let v = r.u8()?;
                    if v > 1 {
                        return Err(DecodeError::Protocol("payload format indicator is 0 or 1"));
                    }
                    once(&mut p.payload_format, v)?
                }
                0x02 => once(&mut p.message_expiry, r.u32()?)?,
                0x03 => once(&mut p.content_type, r.string()?)?,
                0x08 => once(&mut p.response_topic, r.string()?)?,
                0x09 => once(&mut p.correlation_data, r.binary()?)?,
                0x0B => {
                    let id = r.varint()?;
                    if id == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    p.subscription_ids.push(id)
                }
                0x11 => once(&mut p.session_expiry, r.u32()?)?,
                0x12 => once(&mut p.assigned_client_id, r.string()?)?,
                0x13 => once(&mut p.server_keep_alive, r.u16()?)?,
                0x15 => once(&mut p.auth_method, r.string()?)?,
                0x16 => once(&mut p.auth_data, r.binary()?)?,
                0x17 => once(&mut p.request_problem_info, bool_byte(&mut r)?)?,
                0x18 => once(&mut p.will_delay, r.u32()?)?,
                0x19 => once(&mut p.request_response_info, bool_byte(&mut r)?)?,
                0x1A => once(&mut p.response_info, r.string()?)?,
                0x1C => once(&mut p.server_reference, r.string()?)?,
                0x1F => once(&mut p.reason_string, r.string()?)?,
                0x21 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    once(&mut p.receive_maximum, v)?
                }
                0x22 => once(&mut p.topic_alias_maximum, r.u16()?)?,
                0x23 => once(&mut p.topic_alias, r.u16()?)?,
                0x24 => once(&mut p.maximum_qos, bool_byte(&mut r)?)?,
                0x25 => once(&mut p.retain_available, bool_byte(&mut r)?)?,
                0x26 => {
                    let key = r.string()?;
                    let value = r.string()?;
                    p.user.push((key, value))
                }
                0x27 => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    once(&mut p.maximum_packet_size, v)?
                }
                0x28 => once(&mut p.wildcard_available, bool_byte(&mut r)?)?,
                0x29 => once(&mut p.subscription_ids_available, bool_byte(&mut r)?)?,
                0x2A => once(&mut p.shared_available, bool_byte(&mut r)?)?,
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            }
        }
        Ok(p)
    }

    /// Writes the property set, its length first.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        let byte = |body: &mut Vec<u8>, id: u8, v: Option<u8>| {
            if let Some(v) = v {
                body.push(id);
                body.push(v);
            }
        };
        byte(&mut body, 0x01, self.payload_format);
        if let Some(v) = self.message_expiry {
            body.push(0x02);
            body.put_u32(v);
        }
        let strings = [
            (0x03, &self.content_type),
            (0x08, &self.response_topic),
            (0x12, &self.assigned_client_id),
            (0x15, &self.auth_method),
            (0x1A, &self.response_info),
            (0x1C, &self.server_reference),
            (0x1F, &self.reason_string),
        ];
        for (id, value) in strings {
            if let Some(v) = value {
                body.push(id);
                write_string(&mut body, v);
            }
        }
        for (id, value) in [(0x09, &self.correlation_data), (0x16, &self.auth_data)] {
            if let Some(v) = value {
                body.push(id);
                write_binary(&mut body, v);
            }
        }
        for id in &self.subscription_ids {
            body.push(0x0B);
            write_varint(&mut body, *id);
        }
        for (id, value) in
            [(0x11, self.session_expiry), (0x18, self.will_delay), (0x27, self.maximum_packet_size)]
        {
            if let Some(v) = value {
                body.push(id);
                body.put_u32(v);
            }
        }
        for (id, value) in [
            (0x13, self.server_keep_alive),
            (0x21, self.receive_maximum),
            (0x22, self.topic_alias_maximum),
            (0x23, self.topic_alias),
        ] {
            if let Some(v) = value {
                body.push(id);
                body.put_u16(v);
            }
        }
        byte(&mut body, 0x17, self.request_problem_info);
        byte(&mut body, 0x19, self.request_response_info);
        byte(&mut body, 0x24, self.maximum_qos);
        byte(&mut body, 0x25, self.retain_available);
        byte(&mut body, 0x28, self.wildcard_available);
        byte(&mut body, 0x29, self.subscription_ids_available);
        byte(&mut body, 0x2A, self.shared_available);
        for (key, value) in &self.user {
            body.push(0x26);
            write_string(&mut body, key);
            write_string(&mut body, value);
        }
        write_varint(out, body.len());
        out.extend_from_slice(&body);
    }

    /// Returns how many bytes [`Properties::write`] writes.
    #[cfg(test)]
    pub(crate) fn encoded_len(&self) -> usize {
        let mut out = Vec::new();
        self.write(&mut out);
        debug_assert!(out.len() >= varint_len(0));
        out.len()
    }
}

/// A property whose value is 0 or 1.
fn bool_byte(r: &mut Reader) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 { Err(DecodeError::Protocol("a flag property is 0 or 1")) } else { Ok(v) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip_and_duplicates_are_refused() {
        let props = Properties {
            payload_format: Some(1),
            message_expiry: Some(60),
            content_type: Some("application/json".into()),
            subscription_ids: vec![1, 300],
            topic_alias: Some(7),
            user: vec![("a".into(), "b".into()), ("a".into(), "c".into())],
            reason_string: Some("why".into()),
            ..Properties::default()
        };
        let mut out = Vec::new();
        props.write(&mut out);
        assert_eq!(out.len(), props.encoded_len());
        let read = Properties::read(&mut Reader::new(Bytes::from(out))).unwrap();
        assert_eq!(read, props);
        // Topic alias twice.
        let dup = Bytes::from_static(&[6, 0x23, 0, 1, 0x23, 0, 2]);
        assert_eq!(
            Properties::read(&mut Reader::new(dup)),
            Err(DecodeError::Protocol("a property appears twice"))
        );
        let unknown = Bytes::from_static(&[2, 0x7f, 0]);
        assert!(matches!(Properties::read(&mut Reader::new(unknown)), Err(DecodeError::Malformed(_))));
        let past_end = Bytes::from_static(&[5, 0x23, 0]);
        assert!(Properties::read(&mut Reader::new(past_end)).is_err());
    }
}
