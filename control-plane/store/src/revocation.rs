//! Revocations of single tokens (by `jti`) and of clients (every token of a client issued
//! before a time). Revoking a whole app, tenant or signing key lives with those records
//! (`tokens_revoked_before`, a key's generation).
//!
//! A row only matters while a token it revokes can still be valid, so each carries an
//! `expires_at` after which it is no longer read: the token's own expiry when the control plane
//! minted it, else [`REVOCATION_RETENTION_SECS`] after the revocation.

use sqlx::Row as _;

use crate::audit::{self, Actor};
use crate::tenant::next_second;
use crate::{Store, StoreError, id, unix_now};

/// How long a revocation is kept when the revoked token's expiry is not known (tokens signed
/// by tenants' own backends): 30 days. A self-signed token that lives longer than 30 days past
/// its revocation would be admitted again; docs/management-api.md tells tenants to keep
/// self-signed tokens shorter.
pub const REVOCATION_RETENTION_SECS: i64 = 30 * 24 * 3600;

/// Kept past a minted token's expiry: the data plane admits a token up to its clock-skew
/// leeway after `exp`, and that leeway is at most 60 seconds.
const EXPIRY_MARGIN_SECS: i64 = 60;

/// What a revocation applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The one token with this `jti`.
    Token(String),
    /// Every token of this client id issued before the time.
    Client {
        /// The client id.
        client_id: String,
        /// Tokens whose `iat` is before this unix second are revoked.
        issued_before: i64,
    },
}

/// Refuses ids that cannot exist before they reach a query (PostgreSQL rejects a NUL byte as
/// an error, not as "not found"): a forged app is not found, and a token or client id with a
/// NUL byte can never have been issued.
fn check_scope(tenant_id: &str, app_id: &str, subject: &str) -> Result<(), StoreError> {
    if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) {
        return Err(StoreError::NotFound("app"));
    }
    if subject.is_empty() || subject.contains('\0') {
        return Err(StoreError::NotFound("token"));
    }
    Ok(())
}

impl Store {
    /// Revokes the token `jti` of an app of the tenant; audited as `token.revoke`.
    ///
    /// Returns [`StoreError::NotFound`] if the app is not the tenant's.
    pub async fn revoke_token(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        jti: &str,
    ) -> Result<(), StoreError> {
        check_scope(tenant_id, app_id, jti)?;
        // A grant we minted says how long the token can live; otherwise keep the row long.
        let expires_at = match self.grant_expiry(app_id, jti).await? {
            Some(expiry) => expiry.saturating_add(EXPIRY_MARGIN_SECS),
            None => unix_now() + REVOCATION_RETENTION_SECS,
        };
        self.insert_revocation(actor, (tenant_id, app_id), ("token", jti), next_second(), expires_at).await
    }

    /// Revokes every token of `client_id` in an app of the tenant issued up to now; audited as
    /// `client.revoke`. Returns the cut-off (unix seconds).
    pub async fn revoke_client(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        client_id: &str,
    ) -> Result<i64, StoreError> {
        check_scope(tenant_id, app_id, client_id)?;
        let cutoff = next_second();
        let expires_at = unix_now() + REVOCATION_RETENTION_SECS;
        self.insert_revocation(actor, (tenant_id, app_id), ("client", client_id), cutoff, expires_at).await?;
        Ok(cutoff)
    }

    async fn insert_revocation(
        &self,
        actor: &Actor,
        (tenant_id, app_id): (&str, &str),
        (kind, subject): (&'static str, &str),
        issued_before: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        check_scope(tenant_id, app_id, subject)?;
        let mut tx = self.pool.begin().await?;
        // The update path skips the foreign key's tenant check, so it names the tenant itself.
        let done = sqlx::query(
            "INSERT INTO token_revocations \
             (tenant_id, app_id, kind, subject, issued_before, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (app_id, kind, subject) DO UPDATE SET \
             issued_before = excluded.issued_before, expires_at = excluded.expires_at \
             WHERE token_revocations.tenant_id = excluded.tenant_id",
        )
        .bind(tenant_id)
        .bind(app_id)
        .bind(kind)
        .bind(subject)
        .bind(issued_before)
        .bind(expires_at)
        .bind(unix_now())
        .execute(&mut *tx)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "revocation", "app"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("app"));
        }
        let action = format!("{kind}.revoke");
        audit::record(&mut tx, actor, Some(tenant_id), &action, &format!("{app_id}/{subject}")).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Returns the revocations of an app that can still matter (not past their expiry).
    pub async fn revocations(&self, app_id: &str) -> Result<Vec<Revoked>, StoreError> {
        if !id::is_valid(id::APP, app_id) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT kind, subject, issued_before FROM token_revocations \
             WHERE app_id = $1 AND expires_at > $2",
        )
        .bind(app_id)
        .bind(unix_now())
        .fetch_all(&self.pool)
        .await?;
        let mut revoked = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind: String = row.try_get("kind")?;
            let subject: String = row.try_get("subject")?;
            match kind.as_str() {
                "token" => revoked.push(Revoked::Token(subject)),
                "client" => revoked.push(Revoked::Client {
                    client_id: subject,
                    issued_before: row.try_get("issued_before")?,
                }),
                other => tracing::warn!(kind = other, "unknown revocation kind ignored"),
            }
        }
        Ok(revoked)
    }

    /// Deletes revocations past their expiry; returns how many.
    pub async fn purge_expired_revocations(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM token_revocations WHERE expires_at <= $1")
            .bind(unix_now())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
