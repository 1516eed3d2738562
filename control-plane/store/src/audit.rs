//! Audit events: one row per management action, written by [`record`] in the action's own
//! transaction, so an action and its event are stored together or not at all.
//!
//! The audit-trail service chains these rows later; this module only guarantees that every
//! change made through the store's management methods leaves one.

use sqlx::Row as _;

use crate::db::DbRow;
use crate::{Store, StoreError, id, unix_now};

/// Who is acting, and in which request: passed to every management method of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The actor: `operator:<token id>`, `token:<token id>`, `user:<id>` or `system`.
    pub actor: String,
    /// The request id (from the API's `x-request-id`), to find the request in logs.
    pub request_id: String,
}

impl Actor {
    /// The server itself (first-start bootstrap, migrations).
    pub fn system() -> Self {
        Self { actor: "system".to_owned(), request_id: String::new() }
    }
}

/// One stored audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The event id, `ev_` followed by 26 base32 characters (sorts by time).
    pub id: String,
    /// The tenant acted upon; `None` for operator-wide actions.
    pub tenant_id: Option<String>,
    /// Who acted.
    pub actor: String,
    /// What was done, such as `tenant.status.suspended` or `api_key.create`.
    pub action: String,
    /// The id of the record acted upon.
    pub target: String,
    /// The request id.
    pub request_id: String,
    /// When, in unix seconds.
    pub at: i64,
}

impl AuditEvent {
    pub(crate) fn from_row(row: &DbRow) -> Result<Self, sqlx::Error> {
        Ok(AuditEvent {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            target: row.try_get("target")?,
            request_id: row.try_get("request_id")?,
            at: row.try_get("at")?,
        })
    }
}

/// Writes the audit event of an action, inside the action's transaction. The one function
/// every management write goes through.
pub(crate) async fn record(
    conn: &mut sqlx::AnyConnection,
    actor: &Actor,
    tenant_id: Option<&str>,
    action: &str,
    target: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_events (id, tenant_id, actor, action, target, request_id, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id::new(id::AUDIT_EVENT))
    .bind(tenant_id)
    .bind(&actor.actor)
    .bind(action)
    .bind(target)
    .bind(&actor.request_id)
    .bind(unix_now())
    .execute(conn)
    .await
    .map_err(|err| StoreError::from_sqlx(err, "audit event", "tenant"))?;
    Ok(())
}

impl Store {
    /// Runs one write and its audit event in a transaction: the write must touch a row, else
    /// nothing is kept and [`StoreError::NotFound`]`(missing)` is returned. The shape of every
    /// "change this record of this tenant" method.
    pub(crate) async fn write_audited<'q>(
        &self,
        write: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
        missing: &'static str,
        (actor, tenant_id): (&Actor, Option<&str>),
        (action, target): (&str, &str),
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if write.execute(&mut *tx).await?.rows_affected() == 0 {
            return Err(StoreError::NotFound(missing));
        }
        record(&mut tx, actor, tenant_id, action, target).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records what the server itself did or saw of a tenant (actor `system`), such as the
    /// tenant reaching its webhook quota.
    pub async fn audit_system(&self, tenant_id: &str, action: &str, target: &str) -> Result<(), StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Err(StoreError::NotFound("tenant"));
        }
        let mut conn = self.pool.acquire().await?;
        record(&mut conn, &Actor::system(), Some(tenant_id), action, target).await
    }

    /// Returns the newest `limit` audit events of a tenant, newest first.
    pub async fn audit_events(&self, tenant_id: &str, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, tenant_id, actor, action, target, request_id, at FROM audit_events \
             WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(tenant_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(AuditEvent::from_row).collect::<Result<_, _>>()?)
    }
}
