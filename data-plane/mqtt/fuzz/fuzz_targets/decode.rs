//! Fuzzes the MQTT packet decoder: any bytes, under each connection state. It must never panic,
//! never report using more bytes than it was given, and whatever it decodes must encode back
//! to something that decodes to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_mqtt::{Version, decode, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&state, bytes)) = data.split_first() else { return };
    let version = match state % 3 {
        0 => None,
        1 => Some(Version::V311),
        _ => Some(Version::V5),
    };
    if let Ok(Some((packet, used))) = decode(bytes, version, 1 << 16) {
        assert!(used <= bytes.len());
        let speaking = match &packet {
            tributary_mqtt::Packet::Connect(connect) => connect.version,
            _ => version.unwrap_or(Version::V5),
        };
        let again = encode(&packet, speaking);
        let (decoded, _) = decode(&again, version, 1 << 20)
            .expect("an encoded packet decodes")
            .expect("an encoded packet is complete");
        assert_eq!(decoded, packet);
    }
});
