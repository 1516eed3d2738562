//! Packets round trip in both versions; malformed ones are refused with the right reason code;
//! sizes are checked before anything is allocated; no input makes the decoder panic.

// Test helpers panic on failure on purpose.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use tributary_mqtt::packet::Ack;
use tributary_mqtt::{
    ConnAck, Connect, Disconnect, LastWill, Packet, Properties, Publish, QoS, SubAck, Subscribe,
    Subscription, UnsubAck, Unsubscribe, Version, decode, encode,
};

const MAX: usize = 1 << 20;

fn round_trip(packet: Packet, version: Version) {
    let bytes = encode(&packet, version);
    let before = if matches!(packet, Packet::Connect(_)) { None } else { Some(version) };
    let (decoded, used) = decode(&bytes, before, MAX).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(decoded, packet, "{version:?}");
    // Every strict prefix is incomplete, never an error.
    for cut in 0..bytes.len() {
        assert_eq!(decode(&bytes[..cut], before, MAX).unwrap(), None, "prefix of {cut}");
    }
}

fn connect(version: Version) -> Packet {
    let v5 = version == Version::V5;
    let props = |p: Properties| if v5 { p } else { Properties::default() };
    Packet::Connect(Box::new(Connect {
        version,
        client_id: "sensor-42".into(),
        clean_start: true,
        keep_alive: 30,
        username: Some("app_1".into()),
        password: Some(Bytes::from_static(b"token")),
        will: Some(LastWill {
            topic: "devices/42/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: props(Properties { will_delay: Some(5), ..Properties::default() }),
        }),
        properties: props(Properties {
            session_expiry: Some(3600),
            receive_maximum: Some(20),
            ..Properties::default()
        }),
    }))
}

#[test]
fn every_packet_round_trips_in_both_versions() {
    for version in [Version::V311, Version::V5] {
        let v5 = version == Version::V5;
        let props = |p: Properties| if v5 { p } else { Properties::default() };
        round_trip(connect(version), version);
        round_trip(
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: 0,
                properties: props(Properties { topic_alias_maximum: Some(10), ..Properties::default() }),
            }),
            version,
        );
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            round_trip(
                Packet::Publish(Publish {
                    dup: qos != QoS::AtMostOnce,
                    qos,
                    retain: true,
                    topic: "devices/42/temp".into(),
                    packet_id: (qos != QoS::AtMostOnce).then_some(7),
                    properties: props(Properties {
                        subscription_ids: vec![3],
                        payload_format: Some(1),
                        ..Properties::default()
                    }),
                    payload: Bytes::from_static(b"{\"c\":21.5}"),
                }),
                version,
            );
        }
        let ack = |code: u8| Ack {
            packet_id: 9,
            code: if v5 { code } else { 0 },
            properties: Properties::default(),
        };
        round_trip(Packet::PubAck(ack(0)), version);
        round_trip(Packet::PubRec(ack(0x10)), version);
        round_trip(Packet::PubRel(ack(0)), version);
        round_trip(Packet::PubComp(ack(0x92)), version);
        round_trip(
            Packet::Subscribe(Subscribe {
                packet_id: 11,
                properties: props(Properties { subscription_ids: vec![5], ..Properties::default() }),
                subscriptions: vec![
                    Subscription {
                        filter: "devices/+/temp".into(),
                        qos: QoS::AtLeastOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 { 2 } else { 0 },
                    },
                    Subscription {
                        filter: "firmware/#".into(),
                        qos: QoS::ExactlyOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                    },
                ],
            }),
            version,
        );
        round_trip(
            Packet::SubAck(SubAck { packet_id: 11, properties: Properties::default(), codes: vec![1, 0x87] }),
            version,
        );
        round_trip(
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 12,
                properties: Properties::default(),
                filters: vec!["a/b".into()],
            }),
            version,
        );
        round_trip(
            Packet::UnsubAck(UnsubAck {
                packet_id: 12,
                properties: Properties::default(),
                codes: if v5 { vec![0, 0x11] } else { vec![] },
            }),
            version,
        );
        round_trip(Packet::PingReq, version);
        round_trip(Packet::PingResp, version);
        round_trip(
            Packet::Disconnect(Disconnect {
                code: if v5 { 0x04 } else { 0 },
                properties: Properties::default(),
            }),
            version,
        );
    }
    round_trip(
        Packet::Auth(Disconnect {
            code: 0x18,
            properties: Properties { auth_method: Some("SCRAM".into()), ..Properties::default() },
        }),
        Version::V5,
    );
}

#[test]
fn the_size_is_refused_from_the_fixed_header_before_the_body_arrives() {
    // A PUBLISH announcing 200 MB: refused with "packet too large" from 5 bytes.
    let header = [0x30, 0x80, 0x80, 0x80, 0x60];
    let err = decode(&header, Some(Version::V5), MAX).unwrap_err();
    assert_eq!(err.reason_code(), 0x95);
}

#[test]
fn malformed_packets_get_their_reason_codes() {
    let v5 = Some(Version::V5);
    let cases: Vec<(&[u8], Option<Version>, u8)> = vec![
        (&[0x30, 0x02, 0x00, 0x00], None, 0x82), // PUBLISH before CONNECT
        (&[0x10, 0x00], v5, 0x82),               // a second CONNECT
        (&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01], v5, 0x81), // QoS 3
        (&[0x38, 0x04, 0x00, 0x01, b'a', 0x00], v5, 0x81), // DUP on QoS 0
        (&[0x30, 0x04, 0x00, 0x01, b'#', 0x00], v5, 0x81), // a wildcard in a topic name
        (&[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00], v5, 0x82), // packet identifier 0
        (&[0x80, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00], v5, 0x81), // SUBSCRIBE with wrong flags
        (&[0x82, 0x03, 0x00, 0x01, 0x00], v5, 0x82), // SUBSCRIBE without filters
        (&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30], v5, 0x82), // retain handling 3
        (&[0x30, 0x04, 0x00, 0x02, 0xc3, 0x28], v5, 0x81), // invalid UTF-8 topic
        (&[0xc0, 0x01, 0x00], v5, 0x81),         // PINGREQ with a body
        (&[0xf0, 0x00], Some(Version::V311), 0x82), // AUTH in 3.1.1
        (&[0x00, 0x00], v5, 0x81),               // packet type 0
        (&[0xb0, 0x03, 0x00, 0x01, 0x00], Some(Version::V311), 0x81), // codes in a 3.1.1 UNSUBACK
    ];
    for (bytes, version, code) in cases {
        let err = decode(bytes, version, MAX).unwrap_err();
        assert_eq!(err.reason_code(), code, "{bytes:02x?}: {err}");
    }
    // CONNECT with another protocol, or a reserved flag.
    let mut mqisdp = encode(&connect(Version::V311), Version::V311);
    mqisdp[8] = 3; // protocol level (after the fixed header and "MQTT")
    assert_eq!(decode(&mqisdp, None, MAX).unwrap_err().reason_code(), 0x84);
    let mut reserved = encode(&connect(Version::V311), Version::V311);
    reserved[9] |= 0x01; // the CONNECT flags
    assert_eq!(decode(&reserved, None, MAX).unwrap_err().reason_code(), 0x81);
}

proptest! {
    #[test]
    fn no_input_makes_the_decoder_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), which in 0u8..3) {
        let version = match which { 0 => None, 1 => Some(Version::V311), _ => Some(Version::V5) };
        let _ = decode(&bytes, version, 256);
    }

    #[test]
    fn decoding_a_stream_of_packets_takes_each_in_turn(count in 1usize..8) {
        let mut stream = Vec::new();
        for n in 0..count {
            stream.extend(encode(&Packet::PubAck(Ack { packet_id: n as u16 + 1, code: 0, properties: Properties::default() }), Version::V5));
        }
        let mut offset = 0;
        let mut seen = 0;
        while let Some((_, used)) = decode(&stream[offset..], Some(Version::V5), MAX).unwrap() {
            offset += used;
            seen += 1;
        }
        prop_assert_eq!((seen, offset), (count, stream.len()));
    }
}
