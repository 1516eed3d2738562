//! Signing keys: the per-app HMAC secrets that connection tokens (JWTs) are signed with.
//!
//! A tenant's backend signs tokens with a key's secret and puts its `kid` in the JWT header; the
//! data plane looks the key up by the token's app and `kid`. Secrets are encrypted at rest with
//! the store's [`SecretCipher`](crate::SecretCipher), bound to `signing_key:<app_id>:<kid>`.

use secrecy::SecretSlice;
use sqlx::Row as _;

use crate::audit::{self, Actor};
use crate::db::DbRow;
use crate::{Store, StoreError, id, unix_now};

/// The only algorithm signing keys are created for.
const ALG_HS256: &str = "HS256";
/// Secret length in bytes: HS256 wants a key at least as long as its 256-bit output.
const SECRET_LEN: usize = 32;

/// An active signing key of an app, with its decrypted secret.
#[derive(Clone)]
pub struct SigningKeyRecord {
    /// The app whose tokens this key signs.
    pub app_id: String,
    /// The key id, `sk_` followed by 26 base32 characters; the `kid` of JWT headers.
    pub kid: String,
    /// The JWT algorithm, `"HS256"`.
    pub alg: String,
    /// The HMAC secret (32 random bytes); zeroed on drop and never printed.
    pub secret: SecretSlice<u8>,
    /// The key's generation (the `gen` of the tokens it signs); raising it revokes every
    /// token signed before.
    pub generation: i64,
    /// When the key was created, in unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("app_id", &self.app_id)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("generation", &self.generation)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Returns the associated data that binds a secret to its row.
fn aad(app_id: &str, kid: &str) -> Vec<u8> {
    format!("signing_key:{app_id}:{kid}").into_bytes()
}

impl Store {
    /// Creates an HS256 signing key with a random 32-byte secret for an app of the tenant.
    ///
    /// Returns [`StoreError::NotFound`] if the app does not exist or belongs to another tenant.
    pub async fn create_signing_key(
        &self,
        tenant_id: &str,
        app_id: &str,
    ) -> Result<SigningKeyRecord, StoreError> {
        self.create_signing_key_as(&Actor::system(), tenant_id, app_id).await
    }

    /// Creates a signing key as [`Store::create_signing_key`] does; audited as
    /// `signing_key.create`.
    pub async fn create_signing_key_as(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
    ) -> Result<SigningKeyRecord, StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) {
            return Err(StoreError::NotFound("app"));
        }
        let mut tx = self.pool.begin().await?;
        let record = self.insert_signing_key(&mut tx, actor, tenant_id, app_id).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Inserts a new key of the app and its audit event, inside the caller's transaction.
    pub(crate) async fn insert_signing_key(
        &self,
        conn: &mut sqlx::AnyConnection,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
    ) -> Result<SigningKeyRecord, StoreError> {
        let kid = id::new(id::SIGNING_KEY);
        let mut secret = vec![0u8; SECRET_LEN];
        rand::fill(secret.as_mut_slice());
        let secret = SecretSlice::from(secret);
        let ciphertext = self.cipher.encrypt_for(
            tenant_id,
            secrecy::ExposeSecret::expose_secret(&secret),
            &aad(app_id, &kid),
        );
        let created_at = unix_now();
        sqlx::query(
            "INSERT INTO signing_keys (kid, tenant_id, app_id, alg, secret_ciphertext, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&kid)
        .bind(tenant_id)
        .bind(app_id)
        .bind(ALG_HS256)
        .bind(ciphertext)
        .bind(created_at)
        .execute(&mut *conn)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "signing key", "app"))?;
        audit::record(conn, actor, Some(tenant_id), "signing_key.create", &kid).await?;
        Ok(SigningKeyRecord {
            app_id: app_id.to_owned(),
            kid,
            alg: ALG_HS256.to_owned(),
            secret,
            generation: 1,
            created_at,
        })
    }

    /// Returns the key `kid` of the app with its decrypted secret.
    ///
    /// Returns [`StoreError::NotFound`] unless `kid` is an unrevoked key of that very app (a key
    /// of another app is not found, so one app's key never verifies another app's tokens), and
    /// [`StoreError::Decrypt`] if the secret cannot be decrypted with this store's master key.
    pub async fn signing_key(&self, app_id: &str, kid: &str) -> Result<SigningKeyRecord, StoreError> {
        // Ids come from tokens, which anyone can forge: one that cannot exist is not looked up
        // (PostgreSQL would refuse a NUL byte as an error, not as "not found").
        if !(id::is_valid(id::APP, app_id) && id::is_valid(id::SIGNING_KEY, kid)) {
            return Err(StoreError::NotFound("signing key"));
        }
        let row = sqlx::query(
            "SELECT tenant_id, app_id, kid, alg, secret_ciphertext, generation, created_at FROM signing_keys \
             WHERE app_id = $1 AND kid = $2 AND revoked_at IS NULL",
        )
        .bind(app_id)
        .bind(kid)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("signing key"))?;
        self.decrypt_signing_key(&row)
    }

    /// Returns the unrevoked keys of the app, newest first, with their decrypted secrets.
    ///
    /// Fails with [`StoreError::Decrypt`] if any secret cannot be decrypted.
    pub async fn signing_keys(&self, app_id: &str) -> Result<Vec<SigningKeyRecord>, StoreError> {
        if !id::is_valid(id::APP, app_id) {
            return Ok(Vec::new());
        }
        // Kids are UUIDv7-based and sort by creation, which orders keys made in the same second.
        let rows = sqlx::query(
            "SELECT tenant_id, app_id, kid, alg, secret_ciphertext, generation, created_at FROM signing_keys \
             WHERE app_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, kid DESC",
        )
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| self.decrypt_signing_key(row)).collect()
    }

    /// Raises the generation of a key of an app of the tenant by one, revoking every token it
    /// signed so far; audited as `signing_key.bump_generation`. Returns the new generation.
    ///
    /// Returns [`StoreError::NotFound`] unless `kid` is an unrevoked key of that app.
    pub async fn bump_signing_key_generation(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        kid: &str,
    ) -> Result<i64, StoreError> {
        self.change_signing_key(
            actor,
            (tenant_id, app_id, kid),
            "UPDATE signing_keys SET generation = generation + 1 \
             WHERE kid = $1 AND app_id = $2 AND tenant_id = $3 AND revoked_at IS NULL",
            None,
            "signing_key.bump_generation",
        )
        .await?;
        let row = sqlx::query("SELECT generation FROM signing_keys WHERE kid = $1 AND app_id = $2")
            .bind(kid)
            .bind(app_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("generation")?)
    }

    /// Revokes a key of an app of the tenant: tokens it signed are refused from then on;
    /// audited as `signing_key.revoke`.
    ///
    /// Returns [`StoreError::NotFound`] unless `kid` is an unrevoked key of that app.
    pub async fn revoke_signing_key(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        kid: &str,
    ) -> Result<(), StoreError> {
        self.change_signing_key(
            actor,
            (tenant_id, app_id, kid),
            "UPDATE signing_keys SET revoked_at = $4 \
             WHERE kid = $1 AND app_id = $2 AND tenant_id = $3 AND revoked_at IS NULL",
            Some(unix_now()),
            "signing_key.revoke",
        )
        .await
    }

    /// Runs one update of a key (`$1` kid, `$2` app, `$3` tenant, then `$4` if given) and its
    /// audit event.
    async fn change_signing_key(
        &self,
        actor: &Actor,
        (tenant_id, app_id, kid): (&str, &str, &str),
        update: &'static str,
        fourth: Option<i64>,
        action: &str,
    ) -> Result<(), StoreError> {
        let valid = id::is_valid(id::TENANT, tenant_id)
            && id::is_valid(id::APP, app_id)
            && id::is_valid(id::SIGNING_KEY, kid);
        if !valid {
            return Err(StoreError::NotFound("signing key"));
        }
        let mut tx = self.pool.begin().await?;
        let mut query = sqlx::query(update).bind(kid).bind(app_id).bind(tenant_id);
        if let Some(value) = fourth {
            query = query.bind(value);
        }
        if query.execute(&mut *tx).await?.rows_affected() == 0 {
            return Err(StoreError::NotFound("signing key"));
        }
        audit::record(&mut tx, actor, Some(tenant_id), action, kid).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Re-encrypts every stored secret (signing keys, webhook endpoints' secrets, audit log keys) under this
    /// store's master key (and its tenant data keys), reading each with `old` (or, on a re-run, already with this store's key), in one
    /// transaction; returns how many were rewritten. This is the second step of a master key
    /// rotation (docs/operations.md): open the store with the new key, re-encrypt from the old.
    ///
    /// Returns [`StoreError::Decrypt`] (and changes nothing) if a secret opens with neither key.
    pub async fn reencrypt_secrets(&self, old: &crate::MasterKey) -> Result<u64, StoreError> {
        let old = crate::SecretCipher::new(old);
        let mut tx = self.pool.begin().await?;
        if self.backend == crate::Backend::Postgres {
            // Keys created meanwhile (by a node still on the old key) would be missed by the
            // read below and left unreadable: hold new ones back until this commits. (SQLite
            // has one writer at a time already.)
            sqlx::query("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
        }
        if self.backend == crate::Backend::Postgres {
            sqlx::query("LOCK TABLE webhook_endpoints IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
            sqlx::query("LOCK TABLE audit_keys IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
        }
        let rows = sqlx::query("SELECT tenant_id, app_id, kid, secret_ciphertext FROM signing_keys")
            .fetch_all(&mut *tx)
            .await?;
        let mut rewritten = 0;
        for row in &rows {
            let tenant_id: String = row.try_get("tenant_id")?;
            let app_id: String = row.try_get("app_id")?;
            let kid: String = row.try_get("kid")?;
            let stored: Vec<u8> = row.try_get("secret_ciphertext")?;
            let row_aad = aad(&app_id, &kid);
            let secret = secrecy::zeroize::Zeroizing::new(
                old.decrypt_for(&tenant_id, &stored, &row_aad)
                    .or_else(|_| self.cipher.decrypt_for(&tenant_id, &stored, &row_aad))
                    .inspect_err(|_| tracing::error!(app_id, kid, "a signing key opens with neither key"))?,
            );
            let sealed = self.cipher.encrypt_for(&tenant_id, &secret, &row_aad);
            sqlx::query("UPDATE signing_keys SET secret_ciphertext = $1 WHERE kid = $2 AND app_id = $3")
                .bind(sealed)
                .bind(&kid)
                .bind(&app_id)
                .execute(&mut *tx)
                .await?;
            rewritten += 1;
        }
        rewritten += self.reencrypt_webhook_secrets(&mut tx, &old).await?;
        rewritten += self.reencrypt_audit_keys(&mut tx, &old).await?;
        tx.commit().await?;
        Ok(rewritten)
    }

    /// Builds a record from a row, decrypting its secret with the row's own app id and kid.
    fn decrypt_signing_key(&self, row: &DbRow) -> Result<SigningKeyRecord, StoreError> {
        let tenant_id: String = row.try_get("tenant_id")?;
        let app_id: String = row.try_get("app_id")?;
        let kid: String = row.try_get("kid")?;
        let ciphertext: Vec<u8> = row.try_get("secret_ciphertext")?;
        let secret =
            self.cipher.decrypt_for(&tenant_id, &ciphertext, &aad(&app_id, &kid)).inspect_err(|_| {
                tracing::error!(app_id, kid, "signing key secret failed to decrypt; wrong master key?");
            })?;
        Ok(SigningKeyRecord {
            secret: SecretSlice::from(secret),
            alg: row.try_get("alg")?,
            generation: row.try_get("generation")?,
            created_at: row.try_get("created_at")?,
            app_id,
            kid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_secret() {
        let record = SigningKeyRecord {
            app_id: "app_x".into(),
            kid: "sk_y".into(),
            alg: ALG_HS256.into(),
            secret: SecretSlice::from(b"topsecretbytes".to_vec()),
            generation: 1,
            created_at: 1,
        };
        let shown = format!("{record:?}");
        assert!(shown.contains("sk_y") && !shown.contains("topsecret") && !shown.contains("116"), "{shown}");
    }
}
