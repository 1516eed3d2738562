//! API keys: what tenants' backends present to the HTTP API.
//!
//! # Format
//! The plaintext of a key is `trb_<key_id>_<secret>_<check>`, for example
//! `trb_key_01jd3k5v4q8w2r9x7m6n5p4t3s_Zm9v…_3f1c09ab` where
//! - `trb_` marks it as a Tributary key (so secret scanners can find leaked ones),
//! - `<key_id>` is the record id, `key_` plus 26 base32 characters (a fixed length),
//! - `<secret>` is 32 random bytes in unpadded base64url (43 characters), and
//! - `<check>` is the CRC-32 of everything before it, 8 hex digits (see `secret_token`); keys
//!   made before it existed have none and are still accepted.
//!
//! base64url may itself contain `_` and `-`, so the plaintext is not split on `_`: the key id
//! has a fixed length and is cut at that offset, and the `_` after it is checked.
//!
//! The store keeps only the key id and SHA-256 of the secret. A fast, unsalted hash is right
//! here (unlike for passwords) because the secret has 256 bits of entropy: nothing can be
//! brute-forced or looked up in a table, and a slow KDF would only cost CPU on every request.

use secrecy::SecretString;
use secrecy::zeroize::Zeroizing;
use sqlx::Row as _;
use subtle::ConstantTimeEq as _;

use crate::audit::{self, Actor};
use crate::db::DbRow;
use crate::secret_token::{self, hash};
use crate::{Store, StoreError, id, unix_now};

/// The prefix of every API key plaintext.
const PLAINTEXT_PREFIX: &str = "trb_";

/// The stored record of an API key; it holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The key id, `key_` followed by 26 base32 characters; also part of the plaintext.
    pub id: String,
    /// The tenant that owns the key's app.
    pub tenant_id: String,
    /// The app the key acts for.
    pub app_id: String,
    /// A label chosen by the tenant, such as `"ci"`; not unique.
    pub name: String,
    /// When the key was created, in unix seconds.
    pub created_at: i64,
    /// When the key was revoked, in unix seconds, if it was.
    pub revoked_at: Option<i64>,
    /// What the key may do, as JSON (`{"grants": [...], "mint_tokens": bool}`); `None`:
    /// everything on every channel of its app. The store keeps it as given; the API checks it.
    pub capabilities: Option<String>,
    /// When a rotated key stops working, in unix seconds; `None`: no end.
    pub expires_at: Option<i64>,
}

/// A key just created: its record and the plaintext, which is shown once and never stored.
#[derive(Debug)]
pub struct NewApiKey {
    /// The stored record.
    pub record: ApiKey,
    /// The full key in the `trb_<key_id>_<secret>_<check>` format; the only copy there will
    /// ever be.
    pub plaintext: SecretString,
}

impl ApiKey {
    fn from_row(row: &DbRow) -> Result<Self, sqlx::Error> {
        Ok(ApiKey {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            app_id: row.try_get("app_id")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
            revoked_at: row.try_get("revoked_at")?,
            capabilities: row.try_get("capabilities")?,
            expires_at: row.try_get("expires_at")?,
        })
    }

    /// Returns whether the key works at `now` (unix seconds): not revoked, not past its end.
    pub fn is_active_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|end| end > now)
    }
}

/// The columns [`ApiKey::from_row`] reads.
macro_rules! api_key_columns {
    () => {
        "id, tenant_id, app_id, name, created_at, revoked_at, capabilities, expires_at"
    };
}

/// Splits a presented plaintext into its key id and decoded secret, or returns `None` if it is
/// not in the format.
fn parse(presented: &str) -> Option<(&str, Zeroizing<Vec<u8>>)> {
    secret_token::parse(presented, PLAINTEXT_PREFIX, id::API_KEY)
}

/// Returns the key id of a presented API key if it is in the format (the secret unchecked):
/// what a cache of verified keys is keyed and invalidated by.
pub fn api_key_id(presented: &str) -> Option<&str> {
    parse(presented).map(|(key_id, _)| key_id)
}

/// Inserts a new key (with a fresh secret) inside the caller's transaction.
async fn insert_api_key(
    conn: &mut sqlx::AnyConnection,
    tenant_id: &str,
    app_id: &str,
    name: &str,
    capabilities: Option<&str>,
) -> Result<NewApiKey, StoreError> {
    let record = ApiKey {
        id: id::new(id::API_KEY),
        tenant_id: tenant_id.to_owned(),
        app_id: app_id.to_owned(),
        name: name.to_owned(),
        created_at: unix_now(),
        revoked_at: None,
        capabilities: capabilities.map(str::to_owned),
        expires_at: None,
    };
    let secret = secret_token::generate();
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, app_id, name, key_hash, created_at, capabilities) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&record.id)
    .bind(&record.tenant_id)
    .bind(&record.app_id)
    .bind(&record.name)
    .bind(hash(&*secret))
    .bind(record.created_at)
    .bind(&record.capabilities)
    .execute(conn)
    .await
    .map_err(|err| StoreError::from_sqlx(err, "api key", "app"))?;
    let plaintext = secret_token::plaintext(PLAINTEXT_PREFIX, &record.id, &*secret);
    Ok(NewApiKey { record, plaintext: SecretString::from(plaintext) })
}

impl Store {
    /// Creates an API key for an app of the tenant and returns its plaintext, once.
    ///
    /// Returns [`StoreError::NotFound`] if the app does not exist or belongs to another tenant.
    pub async fn create_api_key(
        &self,
        tenant_id: &str,
        app_id: &str,
        name: &str,
    ) -> Result<NewApiKey, StoreError> {
        self.create_api_key_as(&Actor::system(), tenant_id, app_id, name).await
    }

    /// Creates an API key as [`Store::create_api_key`] does; audited as `api_key.create`.
    pub async fn create_api_key_as(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        name: &str,
    ) -> Result<NewApiKey, StoreError> {
        self.create_api_key_with(actor, tenant_id, app_id, name, None).await
    }

    /// Creates an API key that may do only what `capabilities` says (JSON, see
    /// [`ApiKey::capabilities`]; `None`: everything); audited as `api_key.create`.
    pub async fn create_api_key_with(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        name: &str,
        capabilities: Option<&str>,
    ) -> Result<NewApiKey, StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) {
            return Err(StoreError::NotFound("app"));
        }
        let mut tx = self.pool.begin().await?;
        let created = insert_api_key(&mut tx, tenant_id, app_id, name, capabilities).await?;
        audit::record(&mut tx, actor, Some(tenant_id), "api_key.create", &created.record.id).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Rotates a key of an app of the tenant: a new key with the same name and capabilities,
    /// while the old one keeps working for `overlap_secs` more (0: it stops now); audited as
    /// `api_key.rotate`. Returns the new key.
    ///
    /// Returns [`StoreError::NotFound`] unless the key is an active key of that app.
    pub async fn rotate_api_key(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        key_id: &str,
        overlap_secs: i64,
    ) -> Result<NewApiKey, StoreError> {
        let valid = id::is_valid(id::TENANT, tenant_id)
            && id::is_valid(id::APP, app_id)
            && id::is_valid(id::API_KEY, key_id);
        if !valid {
            return Err(StoreError::NotFound("api key"));
        }
        let now = unix_now();
        let mut tx = self.pool.begin().await?;
        let old = sqlx::query(concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM api_keys WHERE id = $1 AND app_id = $2 AND tenant_id = $3"
        ))
        .bind(key_id)
        .bind(app_id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| ApiKey::from_row(&row))
        .transpose()?
        .filter(|key| key.is_active_at(now))
        .ok_or(StoreError::NotFound("api key"))?;
        let end = now.saturating_add(overlap_secs.max(0));
        let end = old.expires_at.map_or(end, |current| current.min(end));
        sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2")
            .bind(end)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        let created =
            insert_api_key(&mut tx, tenant_id, app_id, &old.name, old.capabilities.as_deref()).await?;
        audit::record(&mut tx, actor, Some(tenant_id), "api_key.rotate", key_id).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Returns the record of the presented key if it is valid.
    ///
    /// Returns [`StoreError::InvalidApiKey`] alike for a malformed string, an unknown key id, a
    /// wrong secret and a revoked key. The hash comparison is constant-time; the lookup by key id
    /// is not, which only reveals whether a key id exists, and key ids are not secret.
    pub async fn verify_api_key(&self, presented: &str) -> Result<ApiKey, StoreError> {
        let Some((key_id, secret)) = parse(presented) else {
            tracing::debug!("api key refused: malformed");
            return Err(StoreError::InvalidApiKey);
        };
        let row =
            sqlx::query(concat!("SELECT key_hash, ", api_key_columns!(), " FROM api_keys WHERE id = $1"))
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            tracing::debug!(key_id, "api key refused: unknown key id");
            return Err(StoreError::InvalidApiKey);
        };
        let stored_hash: Vec<u8> = row.try_get("key_hash")?;
        if !bool::from(stored_hash.ct_eq(&hash(&secret))) {
            tracing::debug!(key_id, "api key refused: wrong secret");
            return Err(StoreError::InvalidApiKey);
        }
        let key = ApiKey::from_row(&row)?;
        if !key.is_active_at(unix_now()) {
            tracing::debug!(key_id, "api key refused: revoked or past its rotation overlap");
            return Err(StoreError::InvalidApiKey);
        }
        Ok(key)
    }

    /// Revokes a key of an app of the tenant. Revoking a revoked key succeeds and keeps the
    /// first revocation time.
    ///
    /// Returns [`StoreError::NotFound`] unless the key belongs to that app of that tenant.
    pub async fn revoke_api_key(
        &self,
        tenant_id: &str,
        app_id: &str,
        key_id: &str,
    ) -> Result<(), StoreError> {
        self.revoke_api_key_as(&Actor::system(), tenant_id, app_id, key_id).await
    }

    /// Revokes a key as [`Store::revoke_api_key`] does; audited as `api_key.revoke`.
    pub async fn revoke_api_key_as(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        key_id: &str,
    ) -> Result<(), StoreError> {
        let valid = id::is_valid(id::TENANT, tenant_id)
            && id::is_valid(id::APP, app_id)
            && id::is_valid(id::API_KEY, key_id);
        if !valid {
            return Err(StoreError::NotFound("api key"));
        }
        self.write_audited(
            sqlx::query(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) \
                 WHERE id = $2 AND app_id = $3 AND tenant_id = $4",
            )
            .bind(unix_now())
            .bind(key_id)
            .bind(app_id)
            .bind(tenant_id),
            "api key",
            (actor, Some(tenant_id)),
            ("api_key.revoke", key_id),
        )
        .await
    }

    /// Returns the API keys of an app of the tenant (revoked ones too), newest first.
    pub async fn api_keys(&self, tenant_id: &str, app_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM api_keys WHERE app_id = $1 AND tenant_id = $2 ORDER BY id DESC"
        ))
        .bind(app_id)
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(ApiKey::from_row).collect::<Result<_, _>>()?)
    }

    /// Returns whether the key with this id exists and is not revoked (for caches of verified
    /// keys to drop the ones revoked behind their back).
    pub async fn api_key_is_active(&self, key_id: &str) -> Result<bool, StoreError> {
        if !id::is_valid(id::API_KEY, key_id) {
            return Ok(false);
        }
        let row = sqlx::query(concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE id = $1"))
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => ApiKey::from_row(&row)?.is_active_at(unix_now()),
            None => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plaintext(secret: &[u8]) -> String {
        secret_token::plaintext(PLAINTEXT_PREFIX, &id::new(id::API_KEY), secret)
    }

    #[test]
    fn well_formed_plaintext_parses_even_with_underscores_in_the_secret() {
        // 0xff bytes encode to `_` in base64url.
        let text = plaintext(&[0xff; secret_token::SECRET_LEN]);
        let (key_id, secret) = parse(&text).unwrap();
        assert!(key_id.starts_with("key_"));
        assert_eq!(*secret, vec![0xff; secret_token::SECRET_LEN]);
    }

    #[test]
    fn malformed_plaintexts_do_not_parse() {
        let good = plaintext(&[1; secret_token::SECRET_LEN]);
        for bad in [
            String::new(),
            "trb_".to_owned(),
            good.replacen("trb_", "xyz_", 1),
            good[..good.len() - 1].to_owned(),
            format!("{good}A"),
            good.replacen("_key_", "_kex_", 1),
            plaintext(&[1; secret_token::SECRET_LEN - 1]),
            format!("{}é", &good[..good.len() - 2]),
        ] {
            assert!(parse(&bad).is_none(), "{bad}");
        }
    }
}
