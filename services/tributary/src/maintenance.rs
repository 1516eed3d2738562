//! Housekeeping of the store while the server runs: revocations, token grants and delivered
//! webhooks that can no longer matter are deleted, so no table grows without bound.

use std::time::Duration;

use tributary_store::Store;

/// How often the housekeeping runs.
const EVERY: Duration = Duration::from_secs(600);

/// How long the numbers of applied usage batches are kept: a node retries a batch for at most
/// an hour (`tributary_relay::usage::MAX_PENDING_BATCHES` flushes).
const FLUSH_KEEP_SECS: i64 = 24 * 3600;

/// How long a grant is kept after its token expired, for tenants to look it up.
const GRANT_KEEP_SECS: i64 = 7 * 24 * 3600;

/// How long a delivered webhook (and its attempts) stays in the delivery log.
const DELIVERED_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

/// Runs the housekeeping every [`EVERY`] until the task is dropped. Every node runs it; the
/// deletes are idempotent, so several nodes doing it at once only repeat each other.
pub async fn run(store: Store) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.purge_expired_revocations().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired revocations deleted"),
            Err(err) => tracing::warn!(error = %err, "deleting expired revocations failed"),
        }
        match store.purge_usage_flushes(FLUSH_KEEP_SECS).await {
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "deleting old usage flush records failed"),
        }
        match store.purge_expired_grants(GRANT_KEEP_SECS).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired token grants deleted"),
            Err(err) => tracing::warn!(error = %err, "deleting expired token grants failed"),
        }
        let before = tributary_delivery::worker::now_ms().saturating_sub(DELIVERED_KEEP_MS);
        match store.purge_delivered(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "delivered webhooks older than a week deleted"),
            Err(err) => tracing::warn!(error = %err, "deleting old delivered webhooks failed"),
        }
    }
}

/// How often billing's grace periods are checked.
const GRACE_EVERY: Duration = Duration::from_secs(60);

/// Cuts off, every [`GRACE_EVERY`], the tenants past due for longer than `grace_secs` (billing
/// on only). Every node may run it: a tenant is cut off once.
pub async fn expire_billing_grace(
    control_plane: std::sync::Arc<tributary_control_plane::ControlPlane>,
    grace_secs: i64,
) {
    let mut ticks = tokio::time::interval(GRACE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(err) = control_plane.expire_billing_grace(grace_secs).await {
            tracing::warn!(error = %err, "billing's grace periods could not be checked");
        }
    }
}
