//! What a log's entries say: canonical JSON bodies (fields in a fixed order, no whitespace), so
//! the same action or message always makes the same bytes and a verifier can read an entry
//! without knowing more than this page (docs/audit.md#entries).

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// A management action (what `audit_events` records): `{"kind": "management", …}`.
#[derive(Debug, Clone, Serialize)]
pub struct Management<'a> {
    /// Always `management`.
    pub kind: &'static str,
    /// The event's id (`ev_…`).
    pub id: &'a str,
    /// The tenant acted upon (none on the operator's log).
    pub tenant: Option<&'a str>,
    /// Who acted: `operator:<token>`, `token:<token>`, `user:<id>` or `system`.
    pub actor: &'a str,
    /// What was done, such as `api_key.create`.
    pub action: &'a str,
    /// The record acted upon.
    pub target: &'a str,
    /// The request's id.
    pub request_id: &'a str,
    /// When, in unix seconds.
    pub at: i64,
}

/// A message of an audited namespace (or through an exchange): `{"kind": "message", …}`. The
/// payload is in the entry as its SHA-256; the payload itself stays in history.
#[derive(Debug, Clone, Serialize)]
pub struct Message<'a> {
    /// Always `message`.
    pub kind: &'static str,
    /// The app.
    pub app: &'a str,
    /// The channel.
    pub channel: &'a str,
    /// The channel's stream epoch.
    pub epoch: &'a str,
    /// The message's offset in it.
    pub offset: u64,
    /// When the engine stored it, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The publisher's client id, when a client published it (none for a backend's publish).
    pub client_id: Option<&'a str>,
    /// The SHA-256 of the payload's bytes, hex.
    pub payload_sha256: String,
    /// The payload's size in bytes.
    pub payload_bytes: usize,
    /// Whether the payload is binary (else JSON).
    pub binary: bool,
    /// The publisher's encoding marker, if any.
    pub encoding: Option<&'a str>,
}

/// Messages of an app's feed that were lost before the log read them (the feed was trimmed,
/// or the engine lost its data): `{"kind": "gap", …}`. The log says so rather than pretending
/// it has everything.
#[derive(Debug, Clone, Serialize)]
pub struct Gap<'a> {
    /// Always `gap`.
    pub kind: &'static str,
    /// The app whose feed lost entries.
    pub app: &'a str,
    /// The feed position read from when the loss was found.
    pub after: &'a str,
    /// When it was found, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// The canonical bytes of an entry body.
pub fn body(entry: &impl Serialize) -> Vec<u8> {
    // Serialising structs of strings and integers cannot fail.
    serde_json::to_vec(entry).unwrap_or_default()
}

/// The hex SHA-256 of a payload.
pub fn payload_sha256(payload: &[u8]) -> String {
    let digest = Sha256::digest(payload);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_canonical_json_in_a_fixed_order() {
        let message = Message {
            kind: "message",
            app: "app_1",
            channel: "ledger:eu",
            epoch: "e1",
            offset: 7,
            ts_ms: 1_700_000_000_000,
            client_id: Some("alice"),
            payload_sha256: payload_sha256(b"{\"x\":1}"),
            payload_bytes: 7,
            binary: false,
            encoding: None,
        };
        assert_eq!(
            String::from_utf8(body(&message)).expect("utf-8"),
            "{\"kind\":\"message\",\"app\":\"app_1\",\"channel\":\"ledger:eu\",\"epoch\":\"e1\",\"offset\":7,\
             \"ts_ms\":1700000000000,\"client_id\":\"alice\",\"payload_sha256\":\
             \"5041bf1f713df204784353e82f6a4a535931cb64f1f4b4a5aeaffcb720918b22\",\"payload_bytes\":7,\
             \"binary\":false,\"encoding\":null}"
        );
        assert_eq!(payload_sha256(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
