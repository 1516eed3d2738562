//! A log's signing keys: made by its writer, stored encrypted (AES-256-GCM under the tenant's
//! data key, the master key's for the operator's log, bound to the log and the key), rotated
//! through the API, re-encrypted when the master key is.

use sqlx::Row as _;

use super::{AuditKey, AuditLogState};
use crate::{SecretCipher, Store, StoreError};

impl Store {
    /// A log's keys, oldest first.
    pub async fn audit_keys(&self, log_id: &str) -> Result<Vec<AuditKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT verifier, created_at, retired_at FROM audit_keys WHERE log_id = $1 ORDER BY CASE WHEN retired_at IS NULL THEN 1 ELSE 0 END, retired_at, created_at, verifier",
        )
        .bind(log_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditKey {
                    verifier: row.try_get("verifier")?,
                    created_at: row.try_get("created_at")?,
                    retired_at: row.try_get("retired_at")?,
                })
            })
            .collect()
    }

    /// The key that signs a log's checkpoints: its verifier key and its secret (the Ed25519
    /// seed, decrypted), or `None` when the log has none yet.
    pub async fn audit_signing_key(
        &self,
        log: &AuditLogState,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let row = sqlx::query(
            "SELECT verifier, secret_ciphertext FROM audit_keys WHERE log_id = $1 AND retired_at IS NULL \
             ORDER BY created_at DESC, verifier LIMIT 1",
        )
        .bind(&log.id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let verifier: String = row.try_get("verifier")?;
        let sealed: Vec<u8> = row.try_get("secret_ciphertext")?;
        let seed = self.open_audit_seed(log, &verifier, &sealed)?;
        Ok(Some((verifier, seed)))
    }

    /// Stores the first signing key of a log (`verifier`, its `seed`), made by its writer.
    /// Does nothing when the log has a key already (another writer made one first).
    pub async fn add_audit_key(
        &self,
        log: &AuditLogState,
        verifier: &str,
        seed: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_keys (verifier, log_id, secret_ciphertext, created_at) \
             SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM audit_keys WHERE log_id = $2 AND retired_at IS NULL) \
             ON CONFLICT (verifier) DO NOTHING",
        )
        .bind(verifier)
        .bind(&log.id)
        .bind(self.seal_audit_seed(log, verifier, seed))
        .bind(crate::unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces the key that signs a tenant's log with a new one (`verifier`, its `seed`): the
    /// old one is retired, still listed; audited as `audit.key.rotate`.
    pub async fn rotate_audit_key(
        &self,
        actor: &crate::Actor,
        log: &AuditLogState,
        verifier: &str,
        seed: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.insert_audit_key(&mut tx, log, verifier, seed).await?;
        // The writers holding the old key see the version move at their next claim.
        sqlx::query("UPDATE audit_logs SET key_version = key_version + 1 WHERE id = $1")
            .bind(&log.id)
            .execute(&mut *tx)
            .await?;
        crate::audit::record(&mut tx, actor, log.tenant_id.as_deref(), "audit.key.rotate", verifier).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_audit_key(
        &self,
        conn: &mut sqlx::AnyConnection,
        log: &AuditLogState,
        verifier: &str,
        seed: &[u8],
    ) -> Result<(), StoreError> {
        let sealed = self.seal_audit_seed(log, verifier, seed);
        let now = crate::unix_now();
        sqlx::query("UPDATE audit_keys SET retired_at = $2 WHERE log_id = $1 AND retired_at IS NULL")
            .bind(&log.id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO audit_keys (verifier, log_id, secret_ciphertext, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (verifier) DO NOTHING",
        )
        .bind(verifier)
        .bind(&log.id)
        .bind(sealed)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    fn seal_audit_seed(&self, log: &AuditLogState, verifier: &str, seed: &[u8]) -> Vec<u8> {
        seal_seed(&self.cipher, &log.id, verifier, seed)
    }

    fn open_audit_seed(
        &self,
        log: &AuditLogState,
        verifier: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        open_seed(&self.cipher, &log.id, verifier, sealed)
    }

    /// Re-encrypts the logs' signing keys under this store's master key, reading each with `old`
    /// or already with this store's key (part of [`Store::reencrypt_secrets`]).
    pub(crate) async fn reencrypt_audit_keys(
        &self,
        tx: &mut sqlx::AnyConnection,
        old: &SecretCipher,
    ) -> Result<u64, StoreError> {
        let rows = sqlx::query("SELECT verifier, log_id, secret_ciphertext FROM audit_keys")
            .fetch_all(&mut *tx)
            .await?;
        let mut rewritten = 0;
        for row in &rows {
            let verifier: String = row.try_get("verifier")?;
            let log_id: String = row.try_get("log_id")?;
            let stored: Vec<u8> = row.try_get("secret_ciphertext")?;
            let seed = secrecy::zeroize::Zeroizing::new(
                open_seed(old, &log_id, &verifier, &stored)
                    .or_else(|_| open_seed(&self.cipher, &log_id, &verifier, &stored))
                    .inspect_err(|_| tracing::error!(log_id, "an audit log key opens with neither key"))?,
            );
            sqlx::query("UPDATE audit_keys SET secret_ciphertext = $1 WHERE verifier = $2")
                .bind(seal_seed(&self.cipher, &log_id, &verifier, &seed))
                .bind(&verifier)
                .execute(&mut *tx)
                .await?;
            rewritten += 1;
        }
        Ok(rewritten)
    }
}

/// A log key's seed sealed under its tenant's data key (the master key for the operator's
/// log), bound to the log and the key.
fn seal_seed(cipher: &SecretCipher, log_id: &str, verifier: &str, seed: &[u8]) -> Vec<u8> {
    let aad = format!("audit-key:{log_id}:{verifier}");
    match log_id.strip_prefix("tenant:") {
        Some(tenant) => cipher.encrypt_for(tenant, seed, aad.as_bytes()),
        None => cipher.encrypt(seed, aad.as_bytes()),
    }
}

fn open_seed(
    cipher: &SecretCipher,
    log_id: &str,
    verifier: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let aad = format!("audit-key:{log_id}:{verifier}");
    match log_id.strip_prefix("tenant:") {
        Some(tenant) => cipher.decrypt_for(tenant, sealed, aad.as_bytes()),
        None => cipher.decrypt(sealed, aad.as_bytes()),
    }
}
