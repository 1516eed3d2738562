//! The relay's [`AppDirectory`], answered from the store.

use async_trait::async_trait;
use secrecy::ExposeSecret;
use tributary_capability::{KeyAlgorithm, SigningKey};
use tributary_relay::{ApiKeyIdentity, AppDirectory, DirectoryError};
use tributary_store::{SigningKeyRecord, Store, StoreError};

/// Apps and keys from the store.
pub struct StoreDirectory {
    store: Store,
}

impl StoreDirectory {
    /// Wraps a store.
    pub fn new(store: Store) -> Self {
        Self { store }
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
        signing_key(self.store.signing_key(app_id, kid).await.map_err(translate)?)
    }

    async fn minting_key(&self, app_id: &str) -> Result<SigningKey, DirectoryError> {
        let newest = self.store.signing_keys(app_id).await.map_err(translate)?.into_iter().next();
        signing_key(newest.ok_or(DirectoryError::NotFound)?)
    }
}
