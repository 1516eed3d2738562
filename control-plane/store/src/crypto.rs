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

/// AES-256-GCM with a fresh random 96-bit nonce per encryption, under a data key of each
/// tenant derived from the [`MasterKey`].
///
/// A tenant's data key is HMAC-SHA256(master key, `"tributary/tenant-data-key/v1\0" ||
/// tenant_id`): HKDF-Expand for one block, with the uniformly random master key as the
/// pseudorandom key. Keys are derived when needed and never stored.
///
/// The stored form is `nonce (12 bytes) || ciphertext || tag (16 bytes)`. The associated data
/// (AAD) names the tenant and the row the secret belongs to (`tenant:<id>\0signing_key:<app>:<kid>`),
/// so a ciphertext copied into another row or tenant fails to decrypt instead of handing out
/// another app's secret. Random nonces are safe here because a tenant's key encrypts far fewer
/// than the ~2^32 messages after which a 96-bit nonce collision becomes a concern.
///
/// Values written before per-tenant keys existed (under the master key itself, row AAD only)
/// still decrypt; [`crate::Store::reencrypt_secrets`] rewrites them.
pub struct SecretCipher {
    master: SecretBox<[u8; KEY_LEN]>,
    aead: Aes256Gcm,
}

/// The HKDF "info" prefix of tenant data keys; the version lets a later scheme coexist.
const TENANT_KEY_INFO: &[u8] = b"tributary/tenant-data-key/v1\0";

impl SecretCipher {
    /// Returns a cipher that encrypts and decrypts under `key`.
    pub fn new(key: &MasterKey) -> Self {
        SecretCipher {
            master: SecretBox::init_with_mut(|bytes: &mut [u8; KEY_LEN]| {
                bytes.copy_from_slice(key.0.expose_secret())
            }),
            aead: Aes256Gcm::new(key.0.expose_secret().into()),
        }
    }

    /// Returns the cipher of a tenant's data key.
    fn tenant_aead(&self, tenant_id: &str) -> Aes256Gcm {
        use hmac::{Hmac, Mac};
        // HMAC accepts keys of any length: 32 bytes cannot fail.
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.master.expose_secret())
            .expect("HMAC takes a key of any length");
        mac.update(TENANT_KEY_INFO);
        mac.update(tenant_id.as_bytes());
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&mac.finalize().into_bytes());
        Aes256Gcm::new((&*key).into())
    }

    /// Returns a value that differs between tenants' keys (for tests).
    #[cfg(test)]
    fn tenant_aead_fingerprint(&self, tenant_id: &str) -> Vec<u8> {
        // A fixed nonce is fine for a test fingerprint: nothing secret is sealed.
        self.tenant_aead(tenant_id)
            .encrypt(Nonce::from_slice(&[0u8; NONCE_LEN]), Payload { msg: b"fingerprint", aad: b"" })
            .unwrap_or_default()
    }

    /// Encrypts a secret of `tenant_id` under the tenant's data key, bound to the tenant and to
    /// `aad` (the row).
    pub fn encrypt_for(&self, tenant_id: &str, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal(&self.tenant_aead(tenant_id), plaintext, &tenant_aad(tenant_id, aad))
    }

    /// Decrypts a value of [`SecretCipher::encrypt_for`] (or, for values written before tenant
    /// data keys, of [`SecretCipher::encrypt`] with the same row `aad`).
    ///
    /// Returns [`StoreError::Decrypt`] when the value was encrypted under another key, tenant
    /// or row, or was modified.
    pub fn decrypt_for(&self, tenant_id: &str, stored: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        open(&self.tenant_aead(tenant_id), stored, &tenant_aad(tenant_id, aad))
            .or_else(|_| self.decrypt(stored, aad))
    }

    /// Encrypts `plaintext` under the master key itself, bound to `aad`, and returns
    /// `nonce || ciphertext`. Tenant secrets use [`SecretCipher::encrypt_for`].
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        seal(&self.aead, plaintext, aad)
    }

    /// Decrypts a value produced by [`SecretCipher::encrypt`] with the same `aad`.
    ///
    /// Returns [`StoreError::Decrypt`] when the value is too short, was encrypted under another
    /// key or another `aad`, or was modified.
    pub fn decrypt(&self, stored: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        open(&self.aead, stored, aad)
    }
}

/// Binds a row's AAD to its tenant: `tenant:<id>\0<row aad>`.
fn tenant_aad(tenant_id: &str, aad: &[u8]) -> Vec<u8> {
    let mut bound = Vec::with_capacity(8 + tenant_id.len() + aad.len());
    bound.extend_from_slice(b"tenant:");
    bound.extend_from_slice(tenant_id.as_bytes());
    bound.push(0);
    bound.extend_from_slice(aad);
    bound
}

fn seal(aead: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    let sealed = aead
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .expect("AES-GCM only fails to encrypt messages longer than 64 GiB");
    let mut stored = Vec::with_capacity(NONCE_LEN + sealed.len());
    stored.extend_from_slice(&nonce);
    stored.extend_from_slice(&sealed);
    stored
}

fn open(aead: &Aes256Gcm, stored: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
    if stored.len() < NONCE_LEN + TAG_LEN {
        return Err(StoreError::Decrypt);
    }
    let (nonce, sealed) = stored.split_at(NONCE_LEN);
    aead.decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad }).map_err(|_| StoreError::Decrypt)
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
    fn each_tenant_has_its_own_data_key_and_values_are_bound_to_tenant_and_row() {
        let cipher = SecretCipher::new(&MasterKey::generate());
        let sealed = cipher.encrypt_for("ten_a", b"secret", b"row-1");
        assert_eq!(cipher.decrypt_for("ten_a", &sealed, b"row-1").unwrap(), b"secret");
        assert!(cipher.decrypt_for("ten_b", &sealed, b"row-1").is_err(), "another tenant");
        assert!(cipher.decrypt_for("ten_a", &sealed, b"row-2").is_err(), "another row");
        assert!(cipher.decrypt(&sealed, b"row-1").is_err(), "not under the master key itself");
        // Two tenants' keys differ: the same plaintext and row seal differently and do not open
        // across.
        assert_ne!(cipher.tenant_aead_fingerprint("ten_a"), cipher.tenant_aead_fingerprint("ten_b"));
        // Values written before tenant keys (master key, row AAD) still open.
        let legacy = cipher.encrypt(b"old", b"row-1");
        assert_eq!(cipher.decrypt_for("ten_a", &legacy, b"row-1").unwrap(), b"old");
        // Another master key opens nothing.
        let other = SecretCipher::new(&MasterKey::generate());
        assert!(other.decrypt_for("ten_a", &sealed, b"row-1").is_err());
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
