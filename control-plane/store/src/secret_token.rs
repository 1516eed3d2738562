//! The shape shared by API keys and management tokens: `<prefix><record id>_<secret>`, where
//! the secret is 32 random bytes in unpadded base64url and only its SHA-256 is stored.
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

/// Returns the plaintext `<prefix><record_id>_<secret>`.
pub(crate) fn plaintext(prefix: &str, record_id: &str, secret: &[u8]) -> String {
    format!("{prefix}{record_id}_{}", URL_SAFE_NO_PAD.encode(secret))
}

/// Splits a presented plaintext into its record id (with `id_prefix`) and decoded secret, or
/// returns `None` if it is not in the format. Lengths are checked before anything is decoded.
pub(crate) fn parse<'a>(
    presented: &'a str,
    prefix: &str,
    id_prefix: &str,
) -> Option<(&'a str, Zeroizing<Vec<u8>>)> {
    let rest = presented.strip_prefix(prefix)?;
    let id_len = id_prefix.len() + id::ENCODED_LEN;
    let record_id = rest.get(..id_len)?;
    let encoded = rest.get(id_len..)?.strip_prefix('_')?;
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
