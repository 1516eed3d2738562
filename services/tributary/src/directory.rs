//! The relay's [`AppDirectory`], answered from the store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tributary_capability::{KeyAlgorithm, SigningKey};
use tributary_relay::{ApiKeyIdentity, AppDirectory, DirectoryError};
use tributary_store::{SigningKeyRecord, Store, StoreError};

/// How long a verification key is served from memory. Every connect needs one, and a storm of
/// connects must not become a storm of queries; one second also bounds how long a revoked
/// signing key keeps working on this node.
const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// The cache never holds more keys than this; past it, it starts over.
const KEY_CACHE_MAX: usize = 10_000;

type KeyCache = HashMap<(String, String), (SigningKey, Instant)>;

/// Apps and keys from the store, with verification keys cached briefly.
pub struct StoreDirectory {
    store: Store,
    keys: Mutex<KeyCache>,
}

impl StoreDirectory {
    /// Wraps a store.
    pub fn new(store: Store) -> Self {
        Self { store, keys: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, app_id: &str, kid: &str) -> Option<SigningKey> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let (key, fetched) = keys.get(&(app_id.to_owned(), kid.to_owned()))?;
        (fetched.elapsed() < KEY_CACHE_TTL).then(|| key.clone())
    }

    fn remember(&self, key: &SigningKey) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= KEY_CACHE_MAX {
            keys.clear();
        }
        keys.insert((key.app_id.clone(), key.kid.clone()), (key.clone(), Instant::now()));
    }
}

fn translate(err: StoreError) -> DirectoryError {
    match err {
        StoreError::NotFound(_) => DirectoryError::NotFound,
        StoreError::InvalidApiKey => DirectoryError::InvalidApiKey,
        other => DirectoryError::Unavailable(other.to_string()),
    }
}

/// Converts a stored key into a verification key; its algorithm comes from the record, never
/// from a token.
pub fn signing_key(record: SigningKeyRecord) -> Result<SigningKey, DirectoryError> {
    let alg = KeyAlgorithm::parse(&record.alg).ok_or_else(|| {
        DirectoryError::Unavailable(format!("stored key has unknown algorithm {:?}", record.alg))
    })?;
    Ok(SigningKey::new(record.app_id, record.kid, alg, record.secret.expose_secret().to_vec()))
}

#[async_trait]
impl AppDirectory for StoreDirectory {
    async fn authenticate_api_key(&self, presented: &str) -> Result<ApiKeyIdentity, DirectoryError> {
        let key = self.store.verify_api_key(presented).await.map_err(translate)?;
        Ok(ApiKeyIdentity { tenant_id: key.tenant_id, app_id: key.app_id })
    }

    async fn signing_key(&self, app_id: &str, kid: &str) -> Result<SigningKey, DirectoryError> {
        if let Some(key) = self.cached(app_id, kid) {
            return Ok(key);
        }
        let key = signing_key(self.store.signing_key(app_id, kid).await.map_err(translate)?)?;
        self.remember(&key);
        Ok(key)
    }

    async fn minting_key(&self, app_id: &str) -> Result<SigningKey, DirectoryError> {
        let newest = self.store.signing_keys(app_id).await.map_err(translate)?.into_iter().next();
        signing_key(newest.ok_or(DirectoryError::NotFound)?)
    }
}
