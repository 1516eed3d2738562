//! Signing keys: one algorithm, one key id and one app per key.
//!
//! A key belongs to exactly one app, and its algorithm is fixed when it is created. The verifier
//! never lets a token choose the algorithm (the `alg: none` and HS/RS confusion attacks both rely
//! on that), so the algorithm lives here, next to the key material it applies to.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretSlice};

/// The length of a generated HS256 secret, in bytes: the size of the SHA-256 output, the minimum
/// RFC 7518 section 3.2 allows.
pub const HS256_SECRET_LEN: usize = 32;

/// The generation of a new key, and of tokens without a `gen` claim.
pub const FIRST_GENERATION: u64 = 1;

/// The signature algorithm of a key.
///
/// Only HS256 exists today. Asymmetric algorithms (EdDSA, ES256) are meant to be added as
/// variants whose [`SigningKey::secret`] holds a PKCS#8 DER private key; every use of the
/// algorithm goes through the methods below, so adding one is local to this file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// HMAC with SHA-256 over a shared secret.
    Hs256,
}

impl KeyAlgorithm {
    /// Returns the JOSE name of the algorithm, as written in the `alg` header.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Hs256 => "HS256",
        }
    }

    /// Returns the algorithm with this JOSE name, or `None` for `none` and anything unsupported.
    /// The match is exact: JOSE names are case-sensitive.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "HS256" => Some(KeyAlgorithm::Hs256),
            _ => None,
        }
    }

    pub(crate) const fn jwt_algorithm(self) -> Algorithm {
        match self {
            KeyAlgorithm::Hs256 => Algorithm::HS256,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key that signs and verifies the tokens of one app.
///
/// `Debug` never shows the secret; neither does any error of this crate.
#[derive(Clone)]
pub struct SigningKey {
    /// The app whose tokens this key signs.
    pub app_id: String,
    /// The key id, written in the `kid` header so the verifier can find the key.
    pub kid: String,
    /// The only algorithm this key signs with and accepts.
    pub alg: KeyAlgorithm,
    /// The key material: for HS256 the shared secret.
    pub secret: SecretSlice<u8>,
    /// The key's generation, written as the `gen` claim of every token it signs. Raising it
    /// revokes every token the key signed before: a token whose `gen` is lower is refused.
    pub generation: u64,
}

impl SigningKey {
    /// Returns a key of `app_id` named `kid` with the given algorithm and key material.
    pub fn new(
        app_id: impl Into<String>,
        kid: impl Into<String>,
        alg: KeyAlgorithm,
        secret: Vec<u8>,
    ) -> Self {
        Self {
            app_id: app_id.into(),
            kid: kid.into(),
            alg,
            secret: SecretSlice::from(secret),
            generation: FIRST_GENERATION,
        }
    }

    /// Returns the key with its generation set (a stored key's current generation).
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// Returns a new HS256 key of `app_id` named `kid` with [`HS256_SECRET_LEN`] random bytes
    /// from the thread-local CSPRNG.
    pub fn generate_hs256(app_id: impl Into<String>, kid: impl Into<String>) -> Self {
        let mut secret = vec![0u8; HS256_SECRET_LEN];
        rand::rng().fill_bytes(&mut secret);
        Self::new(app_id, kid, KeyAlgorithm::Hs256, secret)
    }

    pub(crate) fn encoding_key(&self) -> EncodingKey {
        match self.alg {
            KeyAlgorithm::Hs256 => EncodingKey::from_secret(self.secret.expose_secret()),
        }
    }

    pub(crate) fn decoding_key(&self) -> DecodingKey {
        match self.alg {
            KeyAlgorithm::Hs256 => DecodingKey::from_secret(self.secret.expose_secret()),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("app_id", &self.app_id)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("secret", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip_and_none_is_not_an_algorithm() {
        assert_eq!(KeyAlgorithm::parse(KeyAlgorithm::Hs256.as_str()), Some(KeyAlgorithm::Hs256));
        assert_eq!(KeyAlgorithm::parse("none"), None);
        assert_eq!(KeyAlgorithm::parse("hs256"), None);
        assert_eq!(KeyAlgorithm::parse("HS384"), None);
    }

    #[test]
    fn generated_keys_have_32_random_bytes() {
        let a = SigningKey::generate_hs256("app", "k1");
        let b = SigningKey::generate_hs256("app", "k1");
        assert_eq!(a.secret.expose_secret().len(), HS256_SECRET_LEN);
        assert_ne!(a.secret.expose_secret(), b.secret.expose_secret());
        assert_eq!((a.app_id.as_str(), a.kid.as_str(), a.alg), ("app", "k1", KeyAlgorithm::Hs256));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let key = SigningKey::new("app", "k1", KeyAlgorithm::Hs256, b"hunter2-hunter2".to_vec());
        let shown = format!("{key:?} {:?}", key.clone());
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("104, 117"), "no byte list either: {shown}");
        assert!(shown.contains("[redacted]") && shown.contains("k1"));
    }
}
