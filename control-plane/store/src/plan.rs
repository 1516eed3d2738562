//! Plans (what a tenant pays for) and their limits, with a tenant's own overrides.
//!
//! A limit of 0 means "no limit". The effective limits of a tenant are its plan's, with every
//! override the tenant has replacing the plan's value.

use sqlx::Row as _;

use crate::audit::{self, Actor};
use crate::db::DbRow;
use crate::{Store, StoreError, id};

/// The limits a plan sets (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Concurrent connections of the tenant, over every node.
    pub max_connections: i64,
    /// Messages published per calendar month (UTC).
    pub max_messages_per_month: i64,
    /// Messages published per second, over every node.
    pub max_publish_rate: i64,
    /// Channels with subscribers at once.
    pub max_channels: i64,
    /// Largest message payload, in bytes.
    pub max_message_bytes: i64,
    /// How long history is kept, in seconds.
    pub history_retention_secs: i64,
    /// Whether publishing goes on past the monthly quota (billed as overage).
    pub overage_allowed: bool,
    /// Webhook events delivered per calendar month (UTC), over every rule of the tenant.
    /// Deliveries past it are dead-lettered (replayable), unless overage is allowed.
    pub max_webhook_events_per_month: i64,
    /// SMS segments (what carriers bill) per calendar month (UTC), over every app of the
    /// tenant. Texts past it are refused (or, a rule's, dead-lettered), never sent.
    pub max_sms_segments_per_month: i64,
    /// Texts sent per minute, over every app of the tenant: a runaway rule's are dead-lettered.
    pub max_sms_per_minute: i64,
}

/// Overrides of a tenant: each `Some` replaces the plan's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitOverrides {
    /// See [`Limits::max_connections`].
    pub max_connections: Option<i64>,
    /// See [`Limits::max_messages_per_month`].
    pub max_messages_per_month: Option<i64>,
    /// See [`Limits::max_publish_rate`].
    pub max_publish_rate: Option<i64>,
    /// See [`Limits::max_channels`].
    pub max_channels: Option<i64>,
    /// See [`Limits::max_message_bytes`].
    pub max_message_bytes: Option<i64>,
    /// See [`Limits::history_retention_secs`].
    pub history_retention_secs: Option<i64>,
    /// See [`Limits::overage_allowed`].
    pub overage_allowed: Option<bool>,
    /// See [`Limits::max_webhook_events_per_month`].
    pub max_webhook_events_per_month: Option<i64>,
    /// See [`Limits::max_sms_segments_per_month`].
    pub max_sms_segments_per_month: Option<i64>,
    /// See [`Limits::max_sms_per_minute`].
    pub max_sms_per_minute: Option<i64>,
}

impl Limits {
    /// Returns these limits with `overrides` applied.
    pub fn with(self, overrides: &LimitOverrides) -> Limits {
        Limits {
            max_connections: overrides.max_connections.unwrap_or(self.max_connections),
            max_messages_per_month: overrides.max_messages_per_month.unwrap_or(self.max_messages_per_month),
            max_publish_rate: overrides.max_publish_rate.unwrap_or(self.max_publish_rate),
            max_channels: overrides.max_channels.unwrap_or(self.max_channels),
            max_message_bytes: overrides.max_message_bytes.unwrap_or(self.max_message_bytes),
            history_retention_secs: overrides.history_retention_secs.unwrap_or(self.history_retention_secs),
            overage_allowed: overrides.overage_allowed.unwrap_or(self.overage_allowed),
            max_webhook_events_per_month: overrides
                .max_webhook_events_per_month
                .unwrap_or(self.max_webhook_events_per_month),
            max_sms_segments_per_month: overrides
                .max_sms_segments_per_month
                .unwrap_or(self.max_sms_segments_per_month),
            max_sms_per_minute: overrides.max_sms_per_minute.unwrap_or(self.max_sms_per_minute),
        }
    }
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The plan id, such as `free`.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// Its limits.
    pub limits: Limits,
}

impl Plan {
    fn from_row(row: &DbRow) -> Result<Self, sqlx::Error> {
        Ok(Plan {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            limits: Limits {
                max_connections: row.try_get("max_connections")?,
                max_messages_per_month: row.try_get("max_messages_per_month")?,
                max_publish_rate: row.try_get("max_publish_rate")?,
                max_channels: row.try_get("max_channels")?,
                max_message_bytes: row.try_get("max_message_bytes")?,
                history_retention_secs: row.try_get("history_retention_secs")?,
                overage_allowed: row.try_get::<i64, _>("overage_allowed")? != 0,
                max_webhook_events_per_month: row.try_get("max_webhook_events_per_month")?,
                max_sms_segments_per_month: row.try_get("max_sms_segments_per_month")?,
                max_sms_per_minute: row.try_get("max_sms_per_minute")?,
            },
        })
    }
}

fn overrides_from_row(row: &DbRow) -> Result<LimitOverrides, sqlx::Error> {
    Ok(LimitOverrides {
        max_connections: row.try_get("max_connections")?,
        max_messages_per_month: row.try_get("max_messages_per_month")?,
        max_publish_rate: row.try_get("max_publish_rate")?,
        max_channels: row.try_get("max_channels")?,
        max_message_bytes: row.try_get("max_message_bytes")?,
        history_retention_secs: row.try_get("history_retention_secs")?,
        overage_allowed: row.try_get::<Option<i64>, _>("overage_allowed")?.map(|v| v != 0),
        max_webhook_events_per_month: row.try_get("max_webhook_events_per_month")?,
        max_sms_segments_per_month: row.try_get("max_sms_segments_per_month")?,
        max_sms_per_minute: row.try_get("max_sms_per_minute")?,
    })
}

/// Plan ids are short lowercase names.
fn plan_id_is_valid(plan_id: &str) -> bool {
    (1..=64).contains(&plan_id.len())
        && plan_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Store {
    /// Returns every plan, by id.
    pub async fn plans(&self) -> Result<Vec<Plan>, StoreError> {
        let rows = sqlx::query("SELECT * FROM plans ORDER BY id").fetch_all(&self.pool).await?;
        Ok(rows.iter().map(Plan::from_row).collect::<Result<_, _>>()?)
    }

    /// Returns the plan `plan_id`.
    pub async fn plan(&self, plan_id: &str) -> Result<Plan, StoreError> {
        if !plan_id_is_valid(plan_id) {
            return Err(StoreError::NotFound("plan"));
        }
        let row = sqlx::query("SELECT * FROM plans WHERE id = $1")
            .bind(plan_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("plan"))?;
        Ok(Plan::from_row(&row)?)
    }

    /// Puts a tenant on a plan; audited as `tenant.plan.<plan>`.
    pub async fn set_tenant_plan(
        &self,
        actor: &Actor,
        tenant_id: &str,
        plan_id: &str,
    ) -> Result<(), StoreError> {
        self.plan(plan_id).await?;
        if !id::is_valid(id::TENANT, tenant_id) {
            return Err(StoreError::NotFound("tenant"));
        }
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE tenants SET plan_id = $1 WHERE id = $2")
            .bind(plan_id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("tenant"));
        }
        audit::record(&mut tx, actor, Some(tenant_id), &format!("tenant.plan.{plan_id}"), tenant_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces a tenant's overrides (all of them: a `None` removes one); audited as
    /// `tenant.limits`.
    pub async fn set_tenant_limits(
        &self,
        actor: &Actor,
        tenant_id: &str,
        overrides: &LimitOverrides,
    ) -> Result<(), StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Err(StoreError::NotFound("tenant"));
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO tenant_limits (tenant_id, max_connections, max_messages_per_month, \
             max_publish_rate, max_channels, max_message_bytes, history_retention_secs, overage_allowed, \
             max_webhook_events_per_month, max_sms_segments_per_month, max_sms_per_minute) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (tenant_id) DO UPDATE SET \
             max_connections = excluded.max_connections, \
             max_messages_per_month = excluded.max_messages_per_month, \
             max_publish_rate = excluded.max_publish_rate, max_channels = excluded.max_channels, \
             max_message_bytes = excluded.max_message_bytes, \
             history_retention_secs = excluded.history_retention_secs, \
             overage_allowed = excluded.overage_allowed, \
             max_webhook_events_per_month = excluded.max_webhook_events_per_month, \
             max_sms_segments_per_month = excluded.max_sms_segments_per_month, \
             max_sms_per_minute = excluded.max_sms_per_minute",
        )
        .bind(tenant_id)
        .bind(overrides.max_connections)
        .bind(overrides.max_messages_per_month)
        .bind(overrides.max_publish_rate)
        .bind(overrides.max_channels)
        .bind(overrides.max_message_bytes)
        .bind(overrides.history_retention_secs)
        .bind(overrides.overage_allowed.map(i64::from))
        .bind(overrides.max_webhook_events_per_month)
        .bind(overrides.max_sms_segments_per_month)
        .bind(overrides.max_sms_per_minute)
        .execute(&mut *tx)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "tenant limits", "tenant"))?;
        audit::record(&mut tx, actor, Some(tenant_id), "tenant.limits", tenant_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Returns a tenant's overrides (all `None` when it has none).
    pub async fn tenant_limit_overrides(&self, tenant_id: &str) -> Result<LimitOverrides, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Err(StoreError::NotFound("tenant"));
        }
        let row = sqlx::query("SELECT * FROM tenant_limits WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => overrides_from_row(&row)?,
            None => LimitOverrides::default(),
        })
    }

    /// Returns a tenant's effective limits: its plan's with its overrides.
    pub async fn tenant_limits(&self, tenant_id: &str) -> Result<Limits, StoreError> {
        let tenant = self.tenant(tenant_id).await?;
        let plan = self.plan(&tenant.plan_id).await?;
        Ok(plan.limits.with(&self.tenant_limit_overrides(tenant_id).await?))
    }
}
