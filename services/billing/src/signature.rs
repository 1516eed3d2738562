//! Stripe's webhook signatures: the `Stripe-Signature` header is `t=<unix seconds>,v1=<hex>`
//! (several `v1` while a secret is rolled, other schemes ignored), where each `v1` is
//! HMAC-SHA256 under the endpoint's secret of `<t>.<raw body>`. A request is taken only if one
//! `v1` matches (compared in constant time) and `t` is within the tolerance of now, either way:
//! an old request replayed fails the tolerance, and a replayed event within it is caught by its
//! id (applied once).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a request's signature was refused; the message is safe to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("the request has no Stripe-Signature header")]
    Missing,
    /// The header has no `t=` or no `v1=`, or they do not read.
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    /// `t` is further from now than the tolerance.
    #[error("the Stripe-Signature timestamp is outside the tolerance (a replay, or a clock off)")]
    Stale,
    /// No `v1` is the body's signature under the secret.
    #[error("no signature of the Stripe-Signature header matches")]
    Mismatch,
}

/// The signature Stripe sends for `body` at `timestamp` under `secret`: what a fake Stripe
/// signs its events with, and what [`verify`] compares against.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `header` (the `Stripe-Signature` value, if any) for `body` under `secret`, at `now`
/// (unix seconds), allowing `tolerance_secs` between its timestamp and now.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => {
                timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let (Some(timestamp), false) = (timestamp, signatures.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    if now.abs_diff(timestamp) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let expected = sign(secret, timestamp, body);
    if signatures.iter().any(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes()))) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";

    #[test]
    fn the_signature_is_stripes_hmac_sha256_of_the_timestamp_and_the_body() {
        // Computed apart: HMAC-SHA256(key, "1000." + body), hex (as Stripe documents it).
        assert_eq!(
            sign(SECRET, 1000, br#"{"id":"evt_1"}"#),
            "387e46d34ab34bb0f3624adcaa371a0332240720155daad95713dfea27253ccd"
        );
    }

    #[test]
    fn a_signed_request_within_the_tolerance_is_taken() {
        let body = br#"{"id":"evt_1"}"#;
        let header = format!("t=1000,v1={}", sign(SECRET, 1000, body));
        assert_eq!(verify(Some(&header), body, SECRET, 1100, 300), Ok(()));
        // A rolled secret: two v1, one of them right; other schemes ignored.
        let header = format!("t=1000,v1=00ff,v0=abc,v1={}", sign(SECRET, 1000, body));
        assert_eq!(verify(Some(&header), body, SECRET, 1000, 300), Ok(()));
    }

    #[test]
    fn missing_malformed_stale_and_wrong_signatures_are_refused() {
        let body = br#"{"id":"evt_1"}"#;
        let good = sign(SECRET, 1000, body);
        let cases: [(Option<String>, &[u8], i64, SignatureError); 7] = [
            (None, body, 1000, SignatureError::Missing),
            (Some("v1=abc".into()), body, 1000, SignatureError::Malformed),
            (Some("t=1000".into()), body, 1000, SignatureError::Malformed),
            (Some(format!("t=x,v1={good}")), body, 1000, SignatureError::Malformed),
            (Some(format!("t=1000,v1={good}")), body, 1301, SignatureError::Stale),
            (Some(format!("t=1000,v1={good}")), br#"{"id":"evt_2"}"#, 1000, SignatureError::Mismatch),
            (Some(format!("t=1001,v1={good}")), body, 1000, SignatureError::Mismatch),
        ];
        for (header, body, now, expected) in cases {
            assert_eq!(
                verify(header.as_deref(), body, SECRET, now, 300),
                Err(expected.clone()),
                "{header:?}"
            );
        }
        assert_eq!(
            verify(Some(&format!("t=1000,v1={good}")), body, b"another secret", 1000, 300),
            Err(SignatureError::Mismatch)
        );
    }
}
