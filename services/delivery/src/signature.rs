//! Webhook signatures the Standard Webhooks way.
//!
//! Each request carries `webhook-id` (the event's stable id, the same on every retry, so a
//! receiver can de-duplicate), `webhook-timestamp` (Unix seconds of this attempt) and
//! `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the
//! endpoint's secret. While a secret is being rotated both the new and the old one sign, and the
//! header lists both signatures, space-separated; a receiver accepts a request when any of them
//! verifies with a secret it knows.
//!
//! A secret is 32 random bytes, shown to the tenant once as `whsec_` and their base64.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a secret's text form.
const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a secret made here.
const SECRET_BYTES: usize = 32;

/// Fewest bytes a secret given by a tenant may have (the spec asks for 24 to 64).
const MIN_SECRET_BYTES: usize = 24;

/// Most bytes a secret given by a tenant may have.
const MAX_SECRET_BYTES: usize = 64;

/// Why a secret's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error("a webhook secret starts with whsec_")]
    Prefix,
    /// What follows the prefix is not base64.
    #[error("a webhook secret is whsec_ and base64")]
    Base64,
    /// Too short or too long.
    #[error("a webhook secret has {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {0}")]
    Length(usize),
}

/// An endpoint's signing secret. Its bytes are never printed: `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecret({} bytes)", self.key.len())
    }
}

impl WebhookSecret {
    /// Makes a new random secret.
    pub fn generate() -> Self {
        let mut key = vec![0u8; SECRET_BYTES];
        rand::Rng::fill(&mut rand::rng(), &mut key[..]);
        Self { key }
    }

    /// A secret of these bytes (as the store keeps it).
    pub fn from_bytes(key: Vec<u8>) -> Self {
        Self { key }
    }

    /// Reads a secret's text form (`whsec_` and base64).
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(SecretError::Prefix)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Self { key })
    }

    /// Returns the text form, to show the tenant once (and to store encrypted).
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// Returns `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The three headers of a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`: the event's id, the same on every attempt.
    pub id: String,
    /// `webhook-timestamp`: Unix seconds of this attempt.
    pub timestamp: u64,
    /// `webhook-signature`: one `v1,` signature per secret, space-separated.
    pub signature: String,
}

/// Signs `body` for the event `id` at `timestamp` with every secret in `secrets` (the current
/// one first, then one being rotated out).
pub fn sign_request(secrets: &[&WebhookSecret], id: &str, timestamp: u64, body: &[u8]) -> SignedHeaders {
    let signature =
        secrets.iter().map(|secret| secret.sign(id, timestamp, body)).collect::<Vec<_>>().join(" ");
    SignedHeaders { id: id.to_owned(), timestamp, signature }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's own example (standard-webhooks, `spec/standard-webhooks.md`), also checked
    /// with Python's `hmac` module: an implementation that shares no code with this one.
    #[test]
    fn the_specifications_example_signs_to_its_published_signature() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    /// A receiver's check, written from the spec: any listed `v1` signature that matches.
    fn receiver_accepts(secret_text: &str, headers: &SignedHeaders, body: &[u8]) -> bool {
        let key = STANDARD.decode(secret_text.trim_start_matches("whsec_")).unwrap();
        let signed = format!("{}.{}.{}", headers.id, headers.timestamp, String::from_utf8_lossy(body));
        headers.signature.split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|sig| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
            mac.update(signed.as_bytes());
            STANDARD.decode(sig).is_ok_and(|sig| mac.verify_slice(&sig).is_ok())
        })
    }

    #[test]
    fn during_a_rotation_both_secrets_sign_and_either_verifies() {
        let (new, old) = (WebhookSecret::generate(), WebhookSecret::generate());
        let body = br#"{"type":"message"}"#;
        let headers = sign_request(&[&new, &old], "evt_1", 1_700_000_000, body);
        assert_eq!(headers.signature.split(' ').count(), 2);
        assert!(receiver_accepts(&new.expose(), &headers, body), "a receiver with the new secret");
        assert!(receiver_accepts(&old.expose(), &headers, body), "a receiver still on the old one");
        let stranger = WebhookSecret::generate();
        assert!(!receiver_accepts(&stranger.expose(), &headers, body), "another secret does not verify");
        assert!(
            !receiver_accepts(&new.expose(), &headers, b"{\"type\":\"other\"}"),
            "a changed body does not"
        );
        let replayed = SignedHeaders { timestamp: headers.timestamp + 1, ..headers.clone() };
        assert!(!receiver_accepts(&new.expose(), &replayed, body), "nor a changed timestamp");
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused_with_their_reason() {
        let secret = WebhookSecret::generate();
        assert_eq!(WebhookSecret::parse(&secret.expose()).unwrap(), secret);
        assert!(!format!("{secret:?}").contains(&secret.expose()[6..]), "Debug hides the key");
        assert_eq!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Err(SecretError::Prefix));
        assert_eq!(WebhookSecret::parse("whsec_not base64!"), Err(SecretError::Base64));
        assert_eq!(WebhookSecret::parse("whsec_c2hvcnQ="), Err(SecretError::Length(5)));
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert_eq!(WebhookSecret::parse(&long), Err(SecretError::Length(65)));
    }
}
