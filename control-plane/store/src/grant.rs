//! Token grants: a record of every token the control plane minted (who, what, until when),
//! so a tenant can see what it handed out and revoke one token by its id. The token itself is
//! never stored.

use sqlx::Row as _;

use crate::db::DbRow;
use crate::{Store, StoreError, id};

/// One minted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The token id (`jti`).
    pub jti: String,
    /// The tenant.
    pub tenant_id: String,
    /// The app.
    pub app_id: String,
    /// The client id (`sub`).
    pub client_id: String,
    /// The signing key.
    pub kid: String,
    /// The key generation it was signed under.
    pub generation: i64,
    /// The capabilities granted, as the JSON array of the token's `caps` claim.
    pub capabilities: String,
    /// When it was issued, unix seconds.
    pub issued_at: i64,
    /// When it expires, unix seconds.
    pub expires_at: i64,
}

impl TokenGrant {
    fn from_row(row: &DbRow) -> Result<Self, sqlx::Error> {
        Ok(TokenGrant {
            jti: row.try_get("jti")?,
            tenant_id: row.try_get("tenant_id")?,
            app_id: row.try_get("app_id")?,
            client_id: row.try_get("client_id")?,
            kid: row.try_get("kid")?,
            generation: row.try_get("generation")?,
            capabilities: row.try_get("capabilities")?,
            issued_at: row.try_get("issued_at")?,
            expires_at: row.try_get("expires_at")?,
        })
    }
}

/// Returns a new token id, `tok_` followed by 26 base32 characters.
pub fn new_token_id() -> String {
    id::new(id::TOKEN)
}

impl Store {
    /// Records a minted token. Not audited: minting is a data-plane action that backends do
    /// at connection rate, and the grant row is itself the record.
    pub async fn record_grant(&self, grant: &TokenGrant) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO token_grants \
             (jti, tenant_id, app_id, client_id, kid, generation, capabilities, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&grant.jti)
        .bind(&grant.tenant_id)
        .bind(&grant.app_id)
        .bind(&grant.client_id)
        .bind(&grant.kid)
        .bind(grant.generation)
        .bind(&grant.capabilities)
        .bind(grant.issued_at)
        .bind(grant.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "token grant", "app"))?;
        Ok(())
    }

    /// Returns the newest `limit` grants of an app of the tenant, of one client if given.
    pub async fn grants(
        &self,
        tenant_id: &str,
        app_id: &str,
        client_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TokenGrant>, StoreError> {
        let forged_client = client_id.is_some_and(|c| c.is_empty() || c.contains('\0'));
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) || forged_client {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT jti, tenant_id, app_id, client_id, kid, generation, capabilities, issued_at, \
             expires_at FROM token_grants WHERE app_id = $1 AND tenant_id = $2 \
             AND ($3 = '' OR client_id = $3) ORDER BY jti DESC LIMIT $4",
        )
        .bind(app_id)
        .bind(tenant_id)
        .bind(client_id.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(TokenGrant::from_row).collect::<Result<_, _>>()?)
    }

    /// Deletes grants that expired more than `keep_secs` ago; returns how many.
    pub async fn purge_expired_grants(&self, keep_secs: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM token_grants WHERE expires_at <= $1")
            .bind(crate::unix_now() - keep_secs)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Returns when the grant `jti` of the app expires, if the control plane minted it.
    pub(crate) async fn grant_expiry(&self, app_id: &str, jti: &str) -> Result<Option<i64>, StoreError> {
        if !(id::is_valid(id::APP, app_id) && id::is_valid(id::TOKEN, jti)) {
            return Ok(None);
        }
        let row = sqlx::query("SELECT expires_at FROM token_grants WHERE jti = $1 AND app_id = $2")
            .bind(jti)
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get("expires_at")?),
            None => None,
        })
    }
}
