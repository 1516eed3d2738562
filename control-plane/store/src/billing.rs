//! Billing's records (docs/billing.md): which Stripe customer is which tenant, and each Stripe
//! event applied once, in one transaction with the tenant status it sets and the audit events
//! it leaves. What an event means is decided by `tributary_billing::lifecycle`; the store only
//! keeps the order (an older event never undoes a newer one) and the operator's word (a
//! `suspended` or `deleted` tenant is left as it is).

use sqlx::Row as _;

use crate::audit::{self, Actor};
use crate::tenant::TenantStatus;
use crate::{Store, StoreError, id, unix_now};

/// What a Stripe event asks of the store (see `tributary_billing::lifecycle::Decision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingChange {
    /// The Stripe customer.
    pub customer_id: String,
    /// The tenant, when the event links the customer to it (a completed checkout).
    pub tenant_id: Option<String>,
    /// The subscription, when the event names one.
    pub subscription_id: Option<String>,
    /// The status it sets: `Active`, `PastDue` or `Unpaid` (`None`: none).
    pub status: Option<TenantStatus>,
    /// The audit action recorded for the tenant (`billing.invoice_paid`, …).
    pub action: String,
}

/// What applying an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// Applied before (the same event id): nothing done again.
    Duplicate,
    /// Not about a known customer's billing: recorded only.
    Ignored,
    /// About a customer no tenant is linked to: recorded only.
    UnknownCustomer,
    /// Applied to the tenant; `changed` when its status moved (its nodes must look again).
    Applied {
        /// The tenant.
        tenant_id: String,
        /// Its status, when the event changed it.
        changed: Option<TenantStatus>,
    },
}

impl Store {
    /// Applies the Stripe event `event_id` (of `kind`, made at `created`) once: see the module's
    /// documentation.
    pub async fn apply_billing_event(
        &self,
        event_id: &str,
        kind: &str,
        created: i64,
        change: Option<&BillingChange>,
    ) -> Result<EventOutcome, StoreError> {
        let now = unix_now();
        let mut tx = self.pool.begin().await?;
        let new = sqlx::query(
            "INSERT INTO billing_events (event_id, type, created, outcome, received_at) VALUES ($1, $2, $3, 'pending', $4) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(kind)
        .bind(created)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if new.rows_affected() == 0 {
            return Ok(EventOutcome::Duplicate);
        }
        let (outcome, result) = match change {
            None => ("ignored", EventOutcome::Ignored),
            Some(change) => match Self::billing_account(&mut tx, change, now).await? {
                None => ("unknown_customer", EventOutcome::UnknownCustomer),
                Some((tenant_id, status_at)) => {
                    let (outcome, changed) =
                        Self::apply_billing_change(&mut tx, &tenant_id, status_at, created, change, now)
                            .await?;
                    (outcome, EventOutcome::Applied { tenant_id, changed })
                }
            },
        };
        let tenant = match &result {
            EventOutcome::Applied { tenant_id, .. } => Some(tenant_id.as_str()),
            _ => None,
        };
        sqlx::query("UPDATE billing_events SET outcome = $2, tenant_id = $3 WHERE event_id = $1")
            .bind(event_id)
            .bind(outcome)
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result)
    }

    /// The tenant of `change`'s customer and the time its status was last set; a completed
    /// checkout links the customer to the tenant it names first.
    async fn billing_account(
        conn: &mut sqlx::AnyConnection,
        change: &BillingChange,
        now: i64,
    ) -> Result<Option<(String, i64)>, StoreError> {
        if let Some(tenant) = change.tenant_id.as_deref().filter(|t| id::is_valid(id::TENANT, t)) {
            sqlx::query(
                "INSERT INTO billing_accounts (tenant_id, customer_id, subscription_id, updated_at) \
                 SELECT id, $2, $3, $4 FROM tenants WHERE id = $1 \
                 ON CONFLICT (tenant_id) DO UPDATE SET customer_id = excluded.customer_id, \
                 subscription_id = COALESCE(excluded.subscription_id, billing_accounts.subscription_id), \
                 updated_at = excluded.updated_at",
            )
            .bind(tenant)
            .bind(&change.customer_id)
            .bind(&change.subscription_id)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(|err| StoreError::from_sqlx(err, "billing account of this customer", "tenant"))?;
        }
        let row = sqlx::query("SELECT tenant_id, status_at FROM billing_accounts WHERE customer_id = $1")
            .bind(&change.customer_id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else { return Ok(None) };
        if let Some(subscription) = &change.subscription_id {
            sqlx::query(
                "UPDATE billing_accounts SET subscription_id = $2, updated_at = $3 WHERE customer_id = $1",
            )
            .bind(&change.customer_id)
            .bind(subscription)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        Ok(Some((row.try_get("tenant_id")?, row.try_get("status_at")?)))
    }

    /// Sets the tenant's status as `change` says, unless an event newer than `created` set it
    /// already or an operator set one billing does not touch; records the billing action.
    async fn apply_billing_change(
        conn: &mut sqlx::AnyConnection,
        tenant_id: &str,
        status_at: i64,
        created: i64,
        change: &BillingChange,
        now: i64,
    ) -> Result<(&'static str, Option<TenantStatus>), StoreError> {
        let actor = Actor::system();
        audit::record(&mut *conn, &actor, Some(tenant_id), &change.action, &change.customer_id).await?;
        let Some(status) = change.status else { return Ok(("applied", None)) };
        if created < status_at {
            return Ok(("stale", None));
        }
        let current: String = sqlx::query("SELECT status FROM tenants WHERE id = $1")
            .bind(tenant_id)
            .fetch_one(&mut *conn)
            .await?
            .try_get("status")?;
        let current = TenantStatus::parse(&current).unwrap_or(TenantStatus::Suspended);
        if !matches!(current, TenantStatus::Active | TenantStatus::PastDue | TenantStatus::Unpaid) {
            return Ok(("held", None));
        }
        // Past due from the first failure on: the grace period counts from there.
        sqlx::query(
            "UPDATE billing_accounts SET status_at = $2, updated_at = $3, \
             past_due_since = CASE WHEN $4 = 1 THEN COALESCE(past_due_since, $2) ELSE NULL END \
             WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .bind(created)
        .bind(now)
        .bind(i32::from(status == TenantStatus::PastDue))
        .execute(&mut *conn)
        .await?;
        if status == current {
            return Ok(("applied", None));
        }
        sqlx::query("UPDATE tenants SET status = $2 WHERE id = $1")
            .bind(tenant_id)
            .bind(status.as_str())
            .execute(&mut *conn)
            .await?;
        let action = format!("tenant.status.{}", status.as_str());
        audit::record(&mut *conn, &actor, Some(tenant_id), &action, tenant_id).await?;
        Ok(("applied", Some(status)))
    }

    /// Cuts off (`unpaid`) the tenants past due for longer than `grace_secs` at `now`; returns
    /// them (their nodes must look again). A later event older than `now` does not undo it.
    pub async fn expire_past_due(&self, grace_secs: i64, now: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT billing_accounts.tenant_id FROM billing_accounts JOIN tenants ON tenants.id = billing_accounts.tenant_id \
             WHERE tenants.status = 'past_due' AND billing_accounts.past_due_since <= $1",
        )
        .bind(now.saturating_sub(grace_secs))
        .fetch_all(&self.pool)
        .await?;
        let mut expired = Vec::new();
        for row in rows {
            let tenant_id: String = row.try_get("tenant_id")?;
            let mut tx = self.pool.begin().await?;
            let done =
                sqlx::query("UPDATE tenants SET status = 'unpaid' WHERE id = $1 AND status = 'past_due'")
                    .bind(&tenant_id)
                    .execute(&mut *tx)
                    .await?;
            if done.rows_affected() == 0 {
                continue;
            }
            sqlx::query("UPDATE billing_accounts SET status_at = $2, updated_at = $2 WHERE tenant_id = $1")
                .bind(&tenant_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let actor = Actor::system();
            audit::record(&mut tx, &actor, Some(&tenant_id), "billing.grace_expired", &tenant_id).await?;
            audit::record(&mut tx, &actor, Some(&tenant_id), "tenant.status.unpaid", &tenant_id).await?;
            tx.commit().await?;
            expired.push(tenant_id);
        }
        Ok(expired)
    }
}
