//! Encryption of tenant secrets at rest: the [`MasterKey`] and the [`SecretCipher`] built on it.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::StoreError;

/// Length of an AES-256 key in bytes.
const KEY_LEN: usize = 32;
/// Length of an AES-GCM nonce in bytes (96 bits, the size GCM is specified for).
const NONCE_LEN: usize = 12;
/// Length of the AES-GCM authentication tag appended to every ciphertext.
const TAG_LEN: usize = 16;

/// The 32-byte key that encrypts every tenant secret in the store.
///
/// It is held in a [`SecretBox`], so it is zeroed on drop, and its `Debug` output shows nothing
/// of the key.
pub struct MasterKey(SecretBox<[u8; KEY_LEN]>);

impl MasterKey {
    /// Returns a new key of 32 bytes from the operating system's CSPRNG (via `rand`'s thread RNG,
    /// which is seeded from it).
    pub fn generate() -> Self {
        MasterKey(SecretBox::init_with_mut(|key: &mut [u8; KEY_LEN]| rand::fill(key)))
    }

    /// Parses a key from standard base64 (with padding); surrounding whitespace is ignored so a
    /// key read from a file with a trailing newline still works.
    ///
    /// Returns [`StoreError::InvalidMasterKey`] unless it decodes to exactly 32 bytes.
    pub fn from_base64(encoded: &str) -> Result<Self, StoreError> {
        let decoded =
            Zeroizing::new(STANDARD.decode(encoded.trim()).map_err(|_| StoreError::InvalidMasterKey)?);
        if decoded.len() != KEY_LEN {
            return Err(StoreError::InvalidMasterKey);
        }
        Ok(MasterKey(SecretBox::init_with_mut(|key: &mut [u8; KEY_LEN]| key.copy_from_slice(&decoded))))
    }

    /// Returns the key as standard base64, the form [`MasterKey::from_base64`] reads.
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(STANDARD.encode(self.0.expose_secret()))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

/// AES-256-GCM under the [`MasterKey`], with a fresh random 96-bit nonce per encryption.
///
/// The stored form is `nonce (12 bytes) || ciphertext || tag (16 bytes)`. The associated data
/// (AAD) names the row the secret belongs to, for example `signing_key:<app_id>:<kid>`, so a
/// ciphertext copied into another row fails to decrypt instead of handing out another app's
/// secret. Random nonces are safe here because a store encrypts far fewer than the ~2^32
/// messages after which a 96-bit nonce collision becomes a concern.
pub struct SecretCipher {
    aead: Aes256Gcm,
}

impl SecretCipher {
    /// Returns a cipher that encrypts and decrypts under `key`.
    pub fn new(key: &MasterKey) -> Self {
        SecretCipher { aead: Aes256Gcm::new(key.0.expose_secret().into()) }
    }

    /// Encrypts `plaintext` bound to `aad` and returns `nonce || ciphertext`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let sealed = self
            .aead
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .expect("AES-GCM only fails to encrypt messages longer than 64 GiB");
        let mut stored = Vec::with_capacity(NONCE_LEN + sealed.len());
        stored.extend_from_slice(&nonce);
        stored.extend_from_slice(&sealed);
        stored
    }

    /// Decrypts a value produced by [`SecretCipher::encrypt`] with the same `aad`.
    ///
    /// Returns [`StoreError::Decrypt`] when the value is too short, was encrypted under another
    /// key or another `aad`, or was modified.
    pub fn decrypt(&self, stored: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        if stored.len() < NONCE_LEN + TAG_LEN {
            return Err(StoreError::Decrypt);
        }
        let (nonce, sealed) = stored.split_at(NONCE_LEN);
        self.aead
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map_err(|_| StoreError::Decrypt)
    }
}

impl std::fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretCipher { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_key_round_trips_through_base64() {
        let key = MasterKey::generate();
        let encoded = key.to_base64();
        let again = MasterKey::from_base64(encoded.expose_secret()).unwrap();
        assert_eq!(again.0.expose_secret(), key.0.expose_secret());
    }

    #[test]
    fn master_key_of_wrong_length_or_alphabet_is_refused() {
        for bad in [
            STANDARD.encode([7u8; 31]),
            STANDARD.encode([7u8; 33]),
            STANDARD.encode([7u8; 16]),
            String::new(),
            "not base64 at all!".to_owned(),
        ] {
            assert!(matches!(MasterKey::from_base64(&bad), Err(StoreError::InvalidMasterKey)), "{bad}");
        }
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let key = MasterKey::from_base64(&STANDARD.encode([0xabu8; 32])).unwrap();
        assert_eq!(format!("{key:?}"), "MasterKey([redacted])");
        assert_eq!(format!("{:?}", SecretCipher::new(&key)), "SecretCipher { .. }");
    }

    #[test]
    fn ciphertext_decrypts_only_with_its_aad_and_key() {
        let cipher = SecretCipher::new(&MasterKey::generate());
        let stored = cipher.encrypt(b"hunter2", b"row:1");
        assert_eq!(cipher.decrypt(&stored, b"row:1").unwrap(), b"hunter2");
        assert!(matches!(cipher.decrypt(&stored, b"row:2"), Err(StoreError::Decrypt)));
        let other = SecretCipher::new(&MasterKey::generate());
        assert!(matches!(other.decrypt(&stored, b"row:1"), Err(StoreError::Decrypt)));
        assert!(matches!(cipher.decrypt(&stored[..20], b"row:1"), Err(StoreError::Decrypt)));
    }

    #[test]
    fn each_encryption_uses_a_fresh_nonce() {
        let cipher = SecretCipher::new(&MasterKey::generate());
        assert_ne!(cipher.encrypt(b"same", b"aad"), cipher.encrypt(b"same", b"aad"));
    }
}
