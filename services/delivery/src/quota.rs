//! Tenants' monthly webhook event quotas, as a worker applies them to the deliveries it claims.
//!
//! A tenant's quota ([`Limits::max_webhook_events_per_month`]) counts the events its endpoints
//! were delivered this calendar month (UTC), as usage records them. Once they reach it, the
//! deliveries a worker claims for the tenant are dead-lettered with the reason — kept and
//! replayable once the quota allows, never dropped — unless the plan allows overage. A worker
//! reads a tenant's limit and count at most once a second and adds what it sends meanwhile, so
//! the quota may be passed by what workers have in flight, never by more. The first refusal of
//! a month tells the tenant: an audit entry `webhook.quota_exceeded` (actor `system`) and a
//! message of that type on the app's system channel.
//!
//! [`Limits::max_webhook_events_per_month`]: tributary_store::Limits::max_webhook_events_per_month

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tributary_store::{Store, StoreError};

/// How long a worker trusts what it read of a tenant's quota.
const REFRESH: Duration = Duration::from_secs(1);

/// The reason a delivery past its tenant's quota is dead-lettered with.
pub const QUOTA_REASON: &str = "the tenant's monthly webhook event quota is used up";

/// A worker's answer for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Send it.
    Admitted,
    /// Dead-letter it; `first` when this worker has not yet refused one of the tenant's this
    /// month (so the tenant is told, once per worker and month).
    Refused { first: bool, limit: i64 },
}

/// What a worker last read of a tenant's quota, and what it sent since.
struct Seen {
    /// The quota (0: none).
    limit: i64,
    /// Whether the plan lets deliveries go on past it (billed as overage).
    overage: bool,
    /// Events delivered this month, as read, plus those this worker admitted since.
    used: i64,
    at: Instant,
    /// The month (its first second) this worker last refused a delivery of the tenant in.
    refused_in: Option<i64>,
}

/// The quotas of the tenants a worker delivers for.
#[derive(Default)]
pub(crate) struct Quotas {
    seen: Mutex<HashMap<String, Seen>>,
}

impl Quotas {
    /// Whether a delivery of `events` events may be sent for `tenant` now; if so, counts them.
    pub(crate) async fn admit(
        &self,
        store: &Store,
        tenant: &str,
        events: i64,
    ) -> Result<Admission, StoreError> {
        if events == 0 {
            // A test event: no channel event to count.
            return Ok(Admission::Admitted);
        }
        let month = tributary_store::usage::month_start(crate::worker::now_ms() / 1000);
        let fresh = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .is_some_and(|seen| seen.at.elapsed() < REFRESH);
        if !fresh {
            let limits = match store.tenant_limits(tenant).await {
                Ok(limits) => limits,
                // A deleted tenant's deliveries are dead-lettered for their endpoint anyway.
                Err(StoreError::NotFound(_)) => return Ok(Admission::Admitted),
                Err(other) => return Err(other),
            };
            let used = if limits.max_webhook_events_per_month > 0 {
                store.webhook_events_delivered_since(tenant, month).await?
            } else {
                0
            };
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let refused_in = seen.get(tenant).and_then(|before| before.refused_in);
            let fresh = Seen {
                limit: limits.max_webhook_events_per_month,
                overage: limits.overage_allowed,
                used,
                at: Instant::now(),
                refused_in,
            };
            seen.insert(tenant.to_owned(), fresh);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let Some(seen) = seen.get_mut(tenant) else { return Ok(Admission::Admitted) };
        if seen.limit > 0 && seen.used >= seen.limit && !seen.overage {
            let first = seen.refused_in != Some(month);
            seen.refused_in = Some(month);
            return Ok(Admission::Refused { first, limit: seen.limit });
        }
        seen.used = seen.used.saturating_add(events);
        Ok(Admission::Admitted)
    }
}
