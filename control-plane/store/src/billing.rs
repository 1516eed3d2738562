//! Billing's records (docs/billing.md): which Stripe customer is which tenant, and each Stripe
//! event applied once, in one transaction with the tenant status it sets and the audit events
//! it leaves. What an event means is decided by `tributary_billing::lifecycle`; the store only
//! keeps the order (an older event never undoes a newer one) and the operator's word (a
//! `suspended` or `deleted` tenant is left as it is).

use sqlx::Row as _;

use crate::audit::{self, Actor};
use crate::tenant::TenantStatus;
use crate::{Store, StoreError, id, unix_now};

/// Which tenant an event's customer is.
enum Account {
    /// None.
    Unknown,
    /// The event would link the customer against an existing link: the tenant it named.
    Conflict(String),
    /// This tenant, with the subscription it pays with (if known).
    Linked { tenant_id: String, subscription_id: Option<String> },
}

/// What a Stripe event asks of the store (see `tributary_billing::lifecycle::Decision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingChange {
    /// The Stripe customer.
    pub customer_id: String,
    /// The tenant, when the event links the customer to it (a completed checkout).
    pub tenant_id: Option<String>,
    /// The subscription, when the event names one.
    pub subscription_id: Option<String>,
    /// Whether the event makes `subscription_id` the customer's (a checkout, a subscription
    /// created); another event's subscription must be the customer's for its status to count.
    pub links_subscription: bool,
    /// The status it sets: `Active`, `PastDue` or `Unpaid` (`None`: none).
    pub status: Option<TenantStatus>,
    /// The plan it puts the tenant on (the operator's mapping of the subscription's price).
    pub plan_id: Option<String>,
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
    /// A checkout naming a tenant already linked to another customer, or a customer already
    /// linked to another tenant: recorded (and audited for the tenant named), nothing linked.
    Conflict {
        /// The tenant the checkout named.
        tenant_id: String,
    },
    /// Applied to the tenant; `changed` or `plan` when its status or plan moved (its nodes
    /// must look again).
    Applied {
        /// The tenant.
        tenant_id: String,
        /// Its status, when the event changed it.
        changed: Option<TenantStatus>,
        /// Its plan, when the event changed it.
        plan: Option<String>,
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
            Some(change) => match Self::account_of_event(&mut tx, change, now).await? {
                Account::Unknown => ("unknown_customer", EventOutcome::UnknownCustomer),
                Account::Conflict(tenant_id) => {
                    audit::record(
                        &mut tx,
                        &Actor::system(),
                        Some(&tenant_id),
                        "billing.link_refused",
                        &change.customer_id,
                    )
                    .await?;
                    ("conflict", EventOutcome::Conflict { tenant_id })
                }
                Account::Linked { tenant_id, subscription_id } => {
                    let (changed, plan) = Self::apply_billing_change(
                        &mut tx,
                        &tenant_id,
                        subscription_id.as_deref(),
                        created,
                        change,
                        now,
                    )
                    .await?;
                    ("applied", EventOutcome::Applied { tenant_id, changed, plan })
                }
            },
        };
        let tenant = match &result {
            EventOutcome::Applied { tenant_id, .. } | EventOutcome::Conflict { tenant_id } => {
                Some(tenant_id.as_str())
            }
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

    /// The tenant `change`'s customer is linked to. A completed checkout links its customer to
    /// the tenant it names, unless either is linked to another already: a link is never moved
    /// by an event (a buyer naming someone else's tenant takes nothing over).
    async fn account_of_event(
        conn: &mut sqlx::AnyConnection,
        change: &BillingChange,
        now: i64,
    ) -> Result<Account, StoreError> {
        let by_customer =
            sqlx::query("SELECT tenant_id, subscription_id FROM billing_accounts WHERE customer_id = $1")
                .bind(&change.customer_id)
                .fetch_optional(&mut *conn)
                .await?;
        let named = change.tenant_id.as_deref().filter(|t| id::is_valid(id::TENANT, t));
        let linked = match (by_customer, named) {
            (Some(row), named) => {
                let tenant_id: String = row.try_get("tenant_id")?;
                if named.is_some_and(|named| named != tenant_id) {
                    return Ok(Account::Conflict(named.unwrap_or_default().to_owned()));
                }
                Account::Linked { tenant_id, subscription_id: row.try_get("subscription_id")? }
            }
            (None, None) => return Ok(Account::Unknown),
            (None, Some(named)) => {
                let linked = sqlx::query(
                    "INSERT INTO billing_accounts (tenant_id, customer_id, subscription_id, updated_at) \
                     SELECT id, $2, $3, $4 FROM tenants WHERE id = $1 ON CONFLICT DO NOTHING",
                )
                .bind(named)
                .bind(&change.customer_id)
                .bind(&change.subscription_id)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                if linked.rows_affected() == 0 {
                    // No such tenant, or linked to another customer already.
                    return Ok(Account::Conflict(named.to_owned()));
                }
                Account::Linked {
                    tenant_id: named.to_owned(),
                    subscription_id: change.subscription_id.clone(),
                }
            }
        };
        if let (Account::Linked { tenant_id, .. }, true, Some(subscription)) =
            (&linked, change.links_subscription, &change.subscription_id)
        {
            sqlx::query(
                "UPDATE billing_accounts SET subscription_id = $2, updated_at = $3 WHERE tenant_id = $1",
            )
            .bind(tenant_id)
            .bind(subscription)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            return Ok(Account::Linked {
                tenant_id: tenant_id.clone(),
                subscription_id: Some(subscription.clone()),
            });
        }
        Ok(linked)
    }

    /// Sets the tenant's status as `change` says, in statements that check what they change
    /// (so concurrent events and an operator's change are never overwritten by a stale read):
    /// the status moves only if no event newer than `created` set it, only between `active`,
    /// `past_due` and `unpaid`, never from `unpaid` to `past_due`, and only for an event of the
    /// customer's own subscription. Records the billing action; returns the new status if it
    /// moved.
    async fn apply_billing_change(
        conn: &mut sqlx::AnyConnection,
        tenant_id: &str,
        subscription_id: Option<&str>,
        created: i64,
        change: &BillingChange,
        now: i64,
    ) -> Result<(Option<TenantStatus>, Option<String>), StoreError> {
        let actor = Actor::system();
        audit::record(&mut *conn, &actor, Some(tenant_id), &change.action, &change.customer_id).await?;
        if change.status.is_none() && change.plan_id.is_none() {
            return Ok((None, None));
        }
        let of_another_subscription = !change.links_subscription
            && matches!((subscription_id, change.subscription_id.as_deref()), (Some(ours), Some(its)) if ours != its);
        if of_another_subscription {
            return Ok((None, None));
        }
        // Newer than what set the status last (ties apply: Stripe stamps seconds).
        let ordered = sqlx::query(
            "UPDATE billing_accounts SET status_at = $2, updated_at = $3, \
             past_due_since = CASE WHEN $4 = 1 THEN COALESCE(past_due_since, $2) \
                                   WHEN $4 = 2 THEN NULL ELSE past_due_since END \
             WHERE tenant_id = $1 AND status_at <= $2",
        )
        .bind(tenant_id)
        .bind(created)
        .bind(now)
        .bind(match change.status {
            Some(TenantStatus::PastDue) => 1i32,
            Some(TenantStatus::Active) => 2,
            _ => 0,
        })
        .execute(&mut *conn)
        .await?;
        if ordered.rows_affected() == 0 {
            return Ok((None, None));
        }
        let plan = match &change.plan_id {
            Some(plan) => Self::apply_billing_plan(conn, tenant_id, plan).await?,
            None => None,
        };
        let Some(status) = change.status else { return Ok((None, plan)) };
        let from: &[&str] = match status {
            TenantStatus::Active => &["past_due", "unpaid"],
            TenantStatus::PastDue => &["active"],
            TenantStatus::Unpaid => &["active", "past_due"],
            _ => &[],
        };
        let mut moved = 0;
        for previous in from {
            moved += sqlx::query("UPDATE tenants SET status = $2 WHERE id = $1 AND status = $3")
                .bind(tenant_id)
                .bind(status.as_str())
                .bind(*previous)
                .execute(&mut *conn)
                .await?
                .rows_affected();
        }
        if moved == 0 {
            return Ok((None, plan));
        }
        let action = format!("tenant.status.{}", status.as_str());
        audit::record(&mut *conn, &actor, Some(tenant_id), &action, tenant_id).await?;
        Ok((Some(status), plan))
    }

    /// Puts the tenant on `plan_id` (a plan that exists) unless it is on it; returns the plan if
    /// it moved. Its limits apply on every node at once (the caller announces the change).
    async fn apply_billing_plan(
        conn: &mut sqlx::AnyConnection,
        tenant_id: &str,
        plan_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let moved = sqlx::query(
            "UPDATE tenants SET plan_id = $2 WHERE id = $1 AND plan_id <> $2 \
             AND EXISTS (SELECT 1 FROM plans WHERE plans.id = $2)",
        )
        .bind(tenant_id)
        .bind(plan_id)
        .execute(&mut *conn)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(None);
        }
        let action = format!("tenant.plan.{plan_id}");
        audit::record(&mut *conn, &Actor::system(), Some(tenant_id), &action, tenant_id).await?;
        Ok(Some(plan_id.to_owned()))
    }

    /// Cuts off (`unpaid`) the tenants past due for longer than `grace_secs` at `now`; returns
    /// them (their nodes must look again). Only a paid invoice lets them back (a failed payment
    /// never moves `unpaid` to `past_due`).
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
            // status_at is left alone: it orders Stripe's events by Stripe's clock, and a paid
            // invoice made before this moment must still let the tenant back.
            let actor = Actor::system();
            audit::record(&mut tx, &actor, Some(&tenant_id), "billing.grace_expired", &tenant_id).await?;
            audit::record(&mut tx, &actor, Some(&tenant_id), "tenant.status.unpaid", &tenant_id).await?;
            tx.commit().await?;
            expired.push(tenant_id);
        }
        Ok(expired)
    }
}

/// A tenant's link to Stripe, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingAccount {
    /// The Stripe customer.
    pub customer_id: String,
    /// The subscription it pays with, if known.
    pub subscription_id: Option<String>,
    /// Since when it is past due (the first failed payment's event time), if it is.
    pub past_due_since: Option<i64>,
    /// When it last changed, unix seconds.
    pub updated_at: i64,
}

/// A Stripe event as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingEvent {
    /// `evt_…`.
    pub event_id: String,
    /// Its type.
    pub kind: String,
    /// When Stripe made it.
    pub created: i64,
    /// What it did: applied, ignored, unknown_customer, conflict.
    pub outcome: String,
    /// When it was received.
    pub received_at: i64,
}

impl Store {
    /// The tenant's link to Stripe, if it has one.
    pub async fn billing_account(&self, tenant_id: &str) -> Result<Option<BillingAccount>, StoreError> {
        let row = sqlx::query(
            "SELECT customer_id, subscription_id, past_due_since, updated_at FROM billing_accounts WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(BillingAccount {
                customer_id: row.try_get("customer_id")?,
                subscription_id: row.try_get("subscription_id")?,
                past_due_since: row.try_get("past_due_since")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    /// The newest `limit` Stripe events recorded for the tenant, newest first.
    pub async fn billing_events(&self, tenant_id: &str, limit: i64) -> Result<Vec<BillingEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, type, created, outcome, received_at FROM billing_events WHERE tenant_id = $1 \
             ORDER BY received_at DESC, created DESC LIMIT $2",
        )
        .bind(tenant_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(BillingEvent {
                    event_id: row.try_get("event_id")?,
                    kind: row.try_get("type")?,
                    created: row.try_get("created")?,
                    outcome: row.try_get("outcome")?,
                    received_at: row.try_get("received_at")?,
                })
            })
            .collect()
    }
}
