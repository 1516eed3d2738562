//! The shape shared by API keys and management tokens: `<prefix><record id>_<secret>_<check>`,
//! where the secret is 32 random bytes in unpadded base64url, only its SHA-256 is stored, and
//! `<check>` is the CRC-32 of everything before it in 8 lowercase hex digits: a secret scanner
//! can tell a real leaked credential from a look-alike without asking us. Credentials made
//! before the checksum existed (no `_<check>`) are still accepted.
//!
//! base64url may itself contain `_` and `-`, so a plaintext is not split on `_`: record ids
//! have a fixed length and are cut at that offset, and the `_` after them is checked.
//!
//! A fast, unsalted hash is right here (unlike for passwords) because the secret has 256 bits
//! of entropy: nothing can be brute-forced or looked up in a table, and a slow KDF would only
//! cost CPU on every request.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::zeroize::Zeroizing;
use sha2::{Digest as _, Sha256};

use crate::id;

/// Length of the random secret in bytes.
pub(crate) const SECRET_LEN: usize = 32;
/// Length of the secret in unpadded base64url: ceil(32 * 4 / 3).
const ENCODED_SECRET_LEN: usize = 43;

/// A new random secret.
pub(crate) fn generate() -> Zeroizing<[u8; SECRET_LEN]> {
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    rand::fill(&mut *secret);
    secret
}

/// Returns the plaintext `<prefix><record_id>_<secret>_<check>`.
pub(crate) fn plaintext(prefix: &str, record_id: &str, secret: &[u8]) -> String {
    let body = format!("{prefix}{record_id}_{}", URL_SAFE_NO_PAD.encode(secret));
    let check = crc32(body.as_bytes());
    format!("{body}_{check:08x}")
}

/// CRC-32 (IEEE 802.3, the one of zip and PNG), bit by bit: credentials are short.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Length of the `_<check>` suffix.
const CHECK_LEN: usize = 9;

/// Splits a presented plaintext into its record id (with `id_prefix`) and decoded secret, or
/// returns `None` if it is not in the format. Lengths are checked before anything is decoded.
pub(crate) fn parse<'a>(
    presented: &'a str,
    prefix: &str,
    id_prefix: &str,
) -> Option<(&'a str, Zeroizing<Vec<u8>>)> {
    // Only ASCII can be a credential; checking it first also keeps every cut below on a
    // character boundary.
    if !presented.is_ascii() {
        return None;
    }
    let rest = presented.strip_prefix(prefix)?;
    let id_len = id_prefix.len() + id::ENCODED_LEN;
    let record_id = rest.get(..id_len)?;
    let mut encoded = rest.get(id_len..)?.strip_prefix('_')?;
    if encoded.len() == ENCODED_SECRET_LEN + CHECK_LEN {
        let (secret, check) = encoded.split_at(ENCODED_SECRET_LEN);
        let expected = format!("_{:08x}", crc32(&presented.as_bytes()[..presented.len() - CHECK_LEN]));
        if check != expected {
            return None;
        }
        encoded = secret;
    }
    if !id::is_valid(id_prefix, record_id) || encoded.len() != ENCODED_SECRET_LEN {
        return None;
    }
    let secret = Zeroizing::new(URL_SAFE_NO_PAD.decode(encoded).ok()?);
    (secret.len() == SECRET_LEN).then_some((record_id, secret))
}

/// Returns the hash stored for a secret.
pub(crate) fn hash(secret: &[u8]) -> Vec<u8> {
    Sha256::digest(secret).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_input_of_any_length_is_refused_without_panicking() {
        let id = id::new(id::API_KEY);
        // 52 bytes after the id, a multibyte character across byte 43.
        let tricky = format!("trb_{id}_{}é{}", "a".repeat(42), "b".repeat(8));
        assert!(parse(&tricky, "trb_", id::API_KEY).is_none());
        assert!(parse("trb_é", "trb_", id::API_KEY).is_none());
    }

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_checksum_is_checked_and_credentials_without_one_still_parse() {
        let secret = [7u8; SECRET_LEN];
        let id = id::new(id::API_KEY);
        let text = plaintext("trb_", &id, &secret);
        assert_eq!(text.len(), 4 + id.len() + 1 + ENCODED_SECRET_LEN + CHECK_LEN);
        assert_eq!(
            parse(&text, "trb_", id::API_KEY).map(|(i, s)| (i.to_owned(), s.to_vec())),
            Some((id.clone(), secret.to_vec()))
        );
        let without = &text[..text.len() - CHECK_LEN];
        assert!(parse(without, "trb_", id::API_KEY).is_some(), "older keys have no checksum");
        let mut wrong = text.clone();
        wrong.replace_range(text.len() - 1.., if text.ends_with('0') { "1" } else { "0" });
        assert!(parse(&wrong, "trb_", id::API_KEY).is_none(), "a wrong checksum");
    }
}
