//! The control packets of MQTT 3.1.1 and 5.0 (section 3 of both specifications).

use bytes::{BufMut, Bytes};

use crate::properties::Properties;
use crate::wire::{Reader, read_varint, varint_len, write_binary, write_string, write_varint};
use crate::{DecodeError, Version};

/// Quality of service of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    fn from_bits(bits: u8) -> Result<Self, DecodeError> {
        match bits {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::Malformed("QoS 3 does not exist")),
        }
    }
}

/// A will: published by the server when the connection ends without a DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// Its QoS.
    pub qos: QoS,
    /// Whether it is retained.
    pub retain: bool,
    /// Its properties (MQTT 5).
    pub properties: Properties,
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol version the client speaks.
    pub version: Version,
    /// The client identifier (may be empty: the server assigns one).
    pub client_id: String,
    /// Clean session (3.1.1) / clean start (5).
    pub clean_start: bool,
    /// Keep-alive in seconds (0: none).
    pub keep_alive: u16,
    /// The user name.
    pub username: Option<String>,
    /// The password.
    pub password: Option<Bytes>,
    /// The will.
    pub will: Option<LastWill>,
    /// CONNECT properties (MQTT 5).
    pub properties: Properties,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server had a session for the client.
    pub session_present: bool,
    /// The return code (3.1.1) or reason code (5).
    pub code: u8,
    /// CONNACK properties (MQTT 5).
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Whether this is a redelivery.
    pub dup: bool,
    /// Its QoS.
    pub qos: QoS,
    /// Whether it is (to be) retained.
    pub retain: bool,
    /// The topic (empty in MQTT 5 when a topic alias stands for it).
    pub topic: String,
    /// The packet identifier (QoS 1 and 2 only).
    pub packet_id: Option<u16>,
    /// PUBLISH properties (MQTT 5).
    pub properties: Properties,
    /// The payload.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The packet identifier acknowledged.
    pub packet_id: u16,
    /// The reason code (MQTT 5; 0 success).
    pub code: u8,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

/// One topic filter of a SUBSCRIBE and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter (`+` and `#` wildcards).
    pub filter: String,
    /// The highest QoS the client wants.
    pub qos: QoS,
    /// MQTT 5: do not send the client its own publications.
    pub no_local: bool,
    /// MQTT 5: keep the retain flag as published.
    pub retain_as_published: bool,
    /// MQTT 5: 0 send retained messages, 1 only on a new subscription, 2 never.
    pub retain_handling: u8,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The packet identifier.
    pub packet_id: u16,
    /// Properties (MQTT 5: a subscription identifier, user properties).
    pub properties: Properties,
    /// The filters, at least one.
    pub subscriptions: Vec<Subscription>,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// Properties (MQTT 5).
    pub properties: Properties,
    /// One code per filter: the granted QoS, or a failure code (0x80 and up).
    pub codes: Vec<u8>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The packet identifier.
    pub packet_id: u16,
    /// Properties (MQTT 5).
    pub properties: Properties,
    /// The filters, at least one.
    pub filters: Vec<String>,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// Properties (MQTT 5).
    pub properties: Properties,
    /// One reason code per filter (MQTT 5; 3.1.1 has none).
    pub codes: Vec<u8>,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// The reason code (MQTT 5; 0 normal).
    pub code: u8,
    /// Properties (MQTT 5).
    pub properties: Properties,
}

/// A control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(Ack),
    /// PUBREC.
    PubRec(Ack),
    /// PUBREL.
    PubRel(Ack),
    /// PUBCOMP.
    PubComp(Ack),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (MQTT 5).
    Auth(Disconnect),
}

/// Decodes the first packet of `buf`. `version` is the connection's (`None` before its
/// CONNECT, which must come first); `max_size` is the largest whole packet accepted, checked
/// from the fixed header before anything is copied. Returns the packet and how many bytes it
/// took, or `Ok(None)` if `buf` does not hold all of it yet.
pub fn decode(
    buf: &[u8],
    version: Option<Version>,
    max_size: usize,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    if version.is_none() && first >> 4 != 1 {
        // Known from the first byte: a peer that does not speak MQTT is not waited for.
        return Err(DecodeError::Protocol("the first packet must be CONNECT"));
    }
    let Some((remaining, len_bytes)) = read_varint(&buf[1..])? else { return Ok(None) };
    let total = 1 + len_bytes + remaining;
    if total > max_size {
        return Err(DecodeError::TooLarge(total));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = Bytes::copy_from_slice(&buf[1 + len_bytes..total]);
    let (kind, flags) = (first >> 4, first & 0x0f);
    let packet = match (kind, version) {
        (1, None) => Packet::Connect(Box::new(connect(flags, body)?)),
        (1, Some(_)) => return Err(DecodeError::Protocol("a second CONNECT")),
        (_, None) => return Err(DecodeError::Protocol("the first packet must be CONNECT")),
        (kind, Some(version)) => other(kind, flags, body, version)?,
    };
    Ok(Some((packet, total)))
}

fn flags_are(flags: u8, expected: u8) -> Result<(), DecodeError> {
    if flags == expected { Ok(()) } else { Err(DecodeError::Malformed("reserved fixed-header flags")) }
}

fn nonzero(id: u16) -> Result<u16, DecodeError> {
    if id == 0 { Err(DecodeError::Protocol("packet identifier 0")) } else { Ok(id) }
}

fn connect(flags: u8, body: Bytes) -> Result<Connect, DecodeError> {
    flags_are(flags, 0)?;
    let mut r = Reader::new(body);
    let name = r.string()?;
    let level = r.u8()?;
    let version = match (name.as_str(), level) {
        ("MQTT", 4) => Version::V311,
        ("MQTT", 5) => Version::V5,
        _ => return Err(DecodeError::UnsupportedProtocol),
    };
    let connect_flags = r.u8()?;
    if connect_flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag"));
    }
    let clean_start = connect_flags & 0x02 != 0;
    let will_flag = connect_flags & 0x04 != 0;
    let will_qos = QoS::from_bits((connect_flags >> 3) & 0x03)?;
    let will_retain = connect_flags & 0x20 != 0;
    let has_password = connect_flags & 0x40 != 0;
    let has_username = connect_flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::Malformed("will QoS or retain without a will"));
    }
    if version == Version::V311 && has_password && !has_username {
        return Err(DecodeError::Malformed("a password without a user name"));
    }
    let keep_alive = r.u16()?;
    let properties = if version == Version::V5 { Properties::read(&mut r)? } else { Properties::default() };
    let client_id = r.string()?;
    let will = if will_flag {
        let will_properties =
            if version == Version::V5 { Properties::read(&mut r)? } else { Properties::default() };
        let topic = r.string()?;
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(DecodeError::Malformed("a will topic is a topic name"));
        }
        let payload = r.binary()?;
        Some(LastWill { topic, payload, qos: will_qos, retain: will_retain, properties: will_properties })
    } else {
        None
    };
    let username = if has_username { Some(r.string()?) } else { None };
    let password = if has_password { Some(r.binary()?) } else { None };
    if r.remaining() > 0 {
        return Err(DecodeError::Malformed("bytes after the CONNECT payload"));
    }
    Ok(Connect { version, client_id, clean_start, keep_alive, username, password, will, properties })
}

fn other(kind: u8, flags: u8, body: Bytes, version: Version) -> Result<Packet, DecodeError> {
    let v5 = version == Version::V5;
    let mut r = Reader::new(body);
    let packet = match kind {
        2 => {
            flags_are(flags, 0)?;
            let ack_flags = r.u8()?;
            if ack_flags & 0xfe != 0 {
                return Err(DecodeError::Malformed("reserved CONNACK flags"));
            }
            let code = r.u8()?;
            let properties = if v5 { Properties::read(&mut r)? } else { Properties::default() };
            Packet::ConnAck(ConnAck { session_present: ack_flags & 1 == 1, code, properties })
        }
        3 => {
            let qos = QoS::from_bits((flags >> 1) & 0x03)?;
            let dup = flags & 0x08 != 0;
            if dup && qos == QoS::AtMostOnce {
                return Err(DecodeError::Malformed("DUP on a QoS 0 message"));
            }
            let topic = r.string()?;
            if topic.contains(['+', '#']) {
                return Err(DecodeError::Malformed("wildcards in a topic name"));
            }
            let packet_id = if qos == QoS::AtMostOnce { None } else { Some(nonzero(r.u16()?)?) };
            let properties = if v5 { Properties::read(&mut r)? } else { Properties::default() };
            if topic.is_empty() && properties.topic_alias.is_none() {
                return Err(DecodeError::Protocol("an empty topic without a topic alias"));
            }
            Packet::Publish(Publish {
                dup,
                qos,
                retain: flags & 0x01 != 0,
                topic,
                packet_id,
                properties,
                payload: r.rest(),
            })
        }
        4..=7 => {
            flags_are(flags, if kind == 6 { 0b0010 } else { 0 })?;
            let packet_id = nonzero(r.u16()?)?;
            let (code, properties) = if v5 && r.remaining() > 0 {
                let code = r.u8()?;
                let properties =
                    if r.remaining() > 0 { Properties::read(&mut r)? } else { Properties::default() };
                (code, properties)
            } else {
                (0, Properties::default())
            };
            let ack = Ack { packet_id, code, properties };
            match kind {
                4 => Packet::PubAck(ack),
                5 => Packet::PubRec(ack),
                6 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        8 => {
            flags_are(flags, 0b0010)?;
            let packet_id = nonzero(r.u16()?)?;
            let properties = if v5 { Properties::read(&mut r)? } else { Properties::default() };
            let mut subscriptions = Vec::new();
            while r.remaining() > 0 {
                let filter = r.string()?;
                let options = r.u8()?;
                let reserved = if v5 { options & 0xc0 } else { options & 0xfc };
                if reserved != 0 {
                    return Err(DecodeError::Malformed("reserved subscription option bits"));
                }
                let retain_handling = (options >> 4) & 0x03;
                if retain_handling == 3 {
                    return Err(DecodeError::Protocol("retain handling 3"));
                }
                subscriptions.push(Subscription {
                    filter,
                    qos: QoS::from_bits(options & 0x03)?,
                    no_local: options & 0x04 != 0,
                    retain_as_published: options & 0x08 != 0,
                    retain_handling,
                });
            }
            if subscriptions.is_empty() {
                return Err(DecodeError::Protocol("SUBSCRIBE without a filter"));
            }
            Packet::Subscribe(Subscribe { packet_id, properties, subscriptions })
        }
        9 => {
            flags_are(flags, 0)?;
            let packet_id = r.u16()?;
            let properties = if v5 { Properties::read(&mut r)? } else { Properties::default() };
            Packet::SubAck(SubAck { packet_id, properties, codes: r.rest().to_vec() })
        }
        10 => {
            flags_are(flags, 0b0010)?;
            let packet_id = nonzero(r.u16()?)?;
            let properties = if v5 { Properties::read(&mut r)? } else { Properties::default() };
            let mut filters = Vec::new();
            while r.remaining() > 0 {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("UNSUBSCRIBE without a filter"));
            }
            Packet::Unsubscribe(Unsubscribe { packet_id, properties, filters })
        }
        11 => {
            flags_are(flags, 0)?;
            let packet_id = r.u16()?;
            let properties = if v5 { Properties::read(&mut r)? } else { Properties::default() };
            // MQTT 3.1.1's UNSUBACK has no codes (any byte after the identifier is malformed).
            let codes = if v5 { r.rest().to_vec() } else { Vec::new() };
            Packet::UnsubAck(UnsubAck { packet_id, properties, codes })
        }
        12 | 13 => {
            flags_are(flags, 0)?;
            if r.remaining() > 0 {
                return Err(DecodeError::Malformed("PINGREQ and PINGRESP have no body"));
            }
            if kind == 12 { Packet::PingReq } else { Packet::PingResp }
        }
        14 | 15 => {
            flags_are(flags, 0)?;
            if kind == 15 && !v5 {
                return Err(DecodeError::Protocol("AUTH is MQTT 5"));
            }
            let (code, properties) = if v5 && r.remaining() > 0 {
                let code = r.u8()?;
                let properties =
                    if r.remaining() > 0 { Properties::read(&mut r)? } else { Properties::default() };
                (code, properties)
            } else {
                (0, Properties::default())
            };
            if r.remaining() > 0 {
                return Err(DecodeError::Malformed("bytes after the packet"));
            }
            let disconnect = Disconnect { code, properties };
            if kind == 14 { Packet::Disconnect(disconnect) } else { Packet::Auth(disconnect) }
        }
        _ => return Err(DecodeError::Malformed("packet type 0")),
    };
    if r.remaining() > 0 {
        return Err(DecodeError::Malformed("bytes after the packet"));
    }
    Ok(packet)
}

/// Encodes `packet` for a connection of `version` (properties only in MQTT 5).
pub fn encode(packet: &Packet, version: Version) -> Vec<u8> {
    let v5 = version == Version::V5;
    let mut body = Vec::new();
    let props = |body: &mut Vec<u8>, p: &Properties| {
        if v5 {
            p.write(body);
        }
    };
    let header = match packet {
        Packet::Connect(c) => {
            write_string(&mut body, "MQTT");
            body.push(if c.version == Version::V5 { 5 } else { 4 });
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(will) = &c.will {
                flags |= 0x04 | ((will.qos as u8) << 3);
                if will.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            body.push(flags);
            body.put_u16(c.keep_alive);
            let cv5 = c.version == Version::V5;
            if cv5 {
                c.properties.write(&mut body);
            }
            write_string(&mut body, &c.client_id);
            if let Some(will) = &c.will {
                if cv5 {
                    will.properties.write(&mut body);
                }
                write_string(&mut body, &will.topic);
                write_binary(&mut body, &will.payload);
            }
            if let Some(username) = &c.username {
                write_string(&mut body, username);
            }
            if let Some(password) = &c.password {
                write_binary(&mut body, password);
            }
            0x10
        }
        Packet::ConnAck(a) => {
            body.push(u8::from(a.session_present));
            body.push(a.code);
            props(&mut body, &a.properties);
            0x20
        }
        Packet::Publish(p) => {
            write_string(&mut body, &p.topic);
            if let Some(id) = p.packet_id {
                body.put_u16(id);
            }
            props(&mut body, &p.properties);
            body.extend_from_slice(&p.payload);
            0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            body.put_u16(a.packet_id);
            if v5 && (a.code != 0 || a.properties != Properties::default()) {
                body.push(a.code);
                if a.properties != Properties::default() {
                    a.properties.write(&mut body);
                }
            }
            match packet {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            }
        }
        Packet::Subscribe(s) => {
            body.put_u16(s.packet_id);
            props(&mut body, &s.properties);
            for sub in &s.subscriptions {
                write_string(&mut body, &sub.filter);
                let mut options = sub.qos as u8;
                if v5 {
                    options |= u8::from(sub.no_local) << 2
                        | u8::from(sub.retain_as_published) << 3
                        | (sub.retain_handling & 0x03) << 4;
                }
                body.push(options);
            }
            0x82
        }
        Packet::SubAck(s) => {
            body.put_u16(s.packet_id);
            props(&mut body, &s.properties);
            body.extend_from_slice(&s.codes);
            0x90
        }
        Packet::Unsubscribe(u) => {
            body.put_u16(u.packet_id);
            props(&mut body, &u.properties);
            for filter in &u.filters {
                write_string(&mut body, filter);
            }
            0xa2
        }
        Packet::UnsubAck(u) => {
            body.put_u16(u.packet_id);
            if v5 {
                u.properties.write(&mut body);
                body.extend_from_slice(&u.codes);
            }
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect(d) | Packet::Auth(d) => {
            if v5 && (d.code != 0 || d.properties != Properties::default()) {
                body.push(d.code);
                d.properties.write(&mut body);
            }
            if matches!(packet, Packet::Disconnect(_)) { 0xe0 } else { 0xf0 }
        }
    };
    let mut out = Vec::with_capacity(1 + varint_len(body.len()) + body.len());
    out.push(header);
    write_varint(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}
