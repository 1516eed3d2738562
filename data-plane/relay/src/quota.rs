//! A tenant's plan limits, enforced on the message path without a database round trip.
//!
//! - Message size: checked against the limit in the app's cached policy.
//! - Publish rate per second, over every node: each node counts its publishes per tenant per
//!   second and adds them to a counter in the engine every [`SYNC_EVERY`]; a publish is refused
//!   ("rate limited", with the milliseconds until the next second) once the tenant's count of
//!   the second (everyone's, as of the last sync, plus this node's since) reaches the limit.
//! - Messages per month: the same, with a counter per calendar month (UTC), never below what
//!   the store counted; past the quota publishing stops unless the plan allows overage.
//! - Concurrent connections, over every node: each node adds its count of the tenant's
//!   connections to a counter of the current second; the previous second's total is then
//!   everyone's. A connection is refused once that total (with this node's count brought up to
//!   date) reaches the limit.
//!
//! Counts between nodes are up to [`SYNC_EVERY`] (rate, month) or a second (connections) old,
//! so a tenant can briefly go past a limit by what the other nodes took in that time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tributary_protocol::ErrorCode;

use crate::ops::OpError;
use crate::policy::AppPolicy;
use crate::state::RelayState;

/// How often this node's counts are added to the engine's counters.
pub const SYNC_EVERY: Duration = Duration::from_millis(200);

/// A tenant's limits as the data plane enforces them (0: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections over every node.
    pub max_connections: u64,
    /// Messages per calendar month (UTC).
    pub max_messages_per_month: u64,
    /// Messages per second over every node.
    pub max_publish_rate: u64,
    /// Largest payload, in bytes.
    pub max_message_bytes: u64,
    /// Whether publishing goes on past the monthly quota.
    pub overage_allowed: bool,
    /// The longest history a namespace keeps, in seconds (a namespace's `history_ttl_secs` is
    /// cut to it).
    pub max_history_secs: u64,
    /// Channels with subscribers at once, over every node.
    pub max_channels: u64,
}

impl Limits {
    /// Returns whether publishing needs counting (a rate or a monthly quota).
    fn counts_publishes(&self) -> bool {
        self.max_publish_rate > 0 || self.max_messages_per_month > 0
    }
}

/// What this node knows of one tenant's counts.
#[derive(Default)]
struct Tenant {
    limits: Limits,
    /// The second (unix) the rate counts are of.
    second: u64,
    /// Publishes accepted here in that second, and how many of them the engine has.
    local: u64,
    synced: u64,
    /// The engine's count of the second at the last sync (everyone's, ours included).
    global: u64,
    /// The month (its first second) the monthly counts are of.
    month: u64,
    /// Publishes accepted here not yet added to the engine's monthly counter.
    month_unsynced: u64,
    /// The engine's monthly count at the last sync.
    month_global: u64,
    /// The store's monthly count (from the policy).
    month_stored: u64,
    /// Everyone's connections in the last full second, and this node's part of it.
    connections_everyone: u64,
    connections_reported: u64,
    /// The second and count this node last reported.
    last_report: (u64, u64),
    /// This node's count at the last tick, and connections admitted here since.
    connections_here: u64,
    connections_admitted: u64,
    /// Channels with subscribers on every node (each once) at the last tick, and channels new
    /// on this node since.
    channels_everyone: u64,
    channels_admitted: u64,
}

/// The quota counts of this node.
#[derive(Default)]
pub struct Quotas {
    tenants: Mutex<HashMap<Arc<str>, Tenant>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Quotas {
    /// Returns whether this node keeps counts of `tenant` yet.
    pub fn knows(&self, tenant: &str) -> bool {
        lock(&self.tenants).contains_key(tenant)
    }

    /// Starts the counts of a tenant this node has not counted yet from the engine's (what the
    /// other nodes took this second and this month), so its first publishes here cannot go
    /// past the limits unseen. One round trip, once per tenant per node.
    pub async fn learn(&self, engine: &dyn tributary_engine::Engine, policy: &AppPolicy) {
        let limits = policy.limits();
        if !limits.counts_publishes() {
            return;
        }
        let now = now_ms() / 1000;
        let month = month_of(now);
        let tenant = &policy.tenant_id;
        let (rate_name, month_name) = (format!("rate:{tenant}:{now}"), format!("month:{tenant}:{month}"));
        let rate = engine.counter_add(&rate_name, 0, Duration::from_secs(3));
        let monthly = engine.counter_add(&month_name, 0, Duration::from_secs(35 * 86_400));
        let (rate, monthly) = futures::join!(rate, monthly);
        let mut tenants = lock(&self.tenants);
        let t = tenants.entry(tenant.clone()).or_default();
        t.limits = limits;
        // Counts only ever move forward: publishes counted while the engine answered may
        // already have moved this tenant to a later second.
        if now > t.second {
            (t.second, t.local, t.synced, t.global) = (now, 0, 0, 0);
        }
        if month > t.month {
            (t.month, t.month_unsynced, t.month_global, t.month_stored) = (month, 0, 0, 0);
        }
        if t.second == now {
            t.global = t.global.max(rate.unwrap_or(0).max(0) as u64);
        }
        if t.month == month {
            t.month_global = t.month_global.max(monthly.unwrap_or(0).max(0) as u64);
        }
    }

    /// Checks a publish of `bytes` payload bytes against the policy's limits and counts it.
    pub fn admit_publish(&self, policy: &AppPolicy, bytes: usize) -> Result<(), OpError> {
        let limits = policy.limits();
        if limits.max_message_bytes > 0 && bytes as u64 > limits.max_message_bytes {
            return Err(OpError::new(
                ErrorCode::MessageTooLarge,
                format!("the message is larger than the plan's {} bytes", limits.max_message_bytes),
            ));
        }
        if !limits.counts_publishes() {
            return Ok(());
        }
        let now = now_ms();
        let (second, month) = (now / 1000, month_of(now / 1000));
        let mut tenants = lock(&self.tenants);
        let tenant = tenants.entry(policy.tenant_id.clone()).or_default();
        tenant.limits = limits;
        if second > tenant.second {
            (tenant.second, tenant.local, tenant.synced, tenant.global) = (second, 0, 0, 0);
        }
        if month > tenant.month {
            (tenant.month, tenant.month_unsynced, tenant.month_global, tenant.month_stored) =
                (month, 0, 0, 0);
        }
        tenant.month_stored = tenant.month_stored.max(policy.messages_this_month());
        if limits.max_publish_rate > 0
            && tenant.global + tenant.local.saturating_sub(tenant.synced) >= limits.max_publish_rate
        {
            let wait = 1000 - now % 1000;
            return Err(OpError::new(
                ErrorCode::RateLimited,
                format!(
                    "the plan's {} messages per second are reached: retry after {wait} ms",
                    limits.max_publish_rate
                ),
            ));
        }
        let this_month = tenant.month_global.max(tenant.month_stored) + tenant.month_unsynced;
        if limits.max_messages_per_month > 0
            && !limits.overage_allowed
            && this_month >= limits.max_messages_per_month
        {
            return Err(OpError::new(
                ErrorCode::QuotaExceeded,
                format!("the plan's {} messages this month are used up", limits.max_messages_per_month),
            ));
        }
        tenant.local += 1;
        tenant.month_unsynced += 1;
        Ok(())
    }

    /// Checks a subscription to a channel that has no subscriber on this node yet against the
    /// tenant's channel limit, and counts it.
    pub fn admit_channel(&self, policy: &AppPolicy) -> Result<(), OpError> {
        let limits = policy.limits();
        if limits.max_channels == 0 {
            return Ok(());
        }
        let mut tenants = lock(&self.tenants);
        let tenant = tenants.entry(policy.tenant_id.clone()).or_default();
        tenant.limits = limits;
        if tenant.channels_everyone + tenant.channels_admitted >= limits.max_channels {
            return Err(OpError::new(
                ErrorCode::ChannelLimit,
                format!("the account's {} channels with subscribers are in use", limits.max_channels),
            ));
        }
        tenant.channels_admitted += 1;
        Ok(())
    }

    /// Checks a new connection against the tenant's connection limit and counts it.
    pub fn admit_connection(&self, policy: &AppPolicy) -> Result<(), OpError> {
        let limits = policy.limits();
        if limits.max_connections == 0 {
            return Ok(());
        }
        let mut tenants = lock(&self.tenants);
        let tenant = tenants.entry(policy.tenant_id.clone()).or_default();
        tenant.limits = limits;
        let everyone = tenant.connections_everyone.saturating_sub(tenant.connections_reported)
            + tenant.connections_here
            + tenant.connections_admitted;
        if everyone >= limits.max_connections {
            return Err(OpError::new(
                ErrorCode::ConnectionLimit,
                format!("the account's {} connections are in use", limits.max_connections),
            ));
        }
        tenant.connections_admitted += 1;
        Ok(())
    }
}

/// Returns the first second of the calendar month (UTC) of `unix`.
fn month_of(unix: u64) -> u64 {
    let days = unix / 86_400;
    // Civil date from days (Howard Hinnant's algorithm), back to the month's first day.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day_of_month = doy - (153 * mp + 2) / 5;
    (days - day_of_month) * 86_400
}

/// Starts the syncing of counts with the engine; ends with the relay.
pub fn spawn_sync(state: &Arc<RelayState>) {
    let weak = Arc::downgrade(state);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SYNC_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_second = 0;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let Some(state) = weak.upgrade() else { return };
            sync_publishes(&state).await;
            let second = now_ms() / 1000;
            if second != last_second {
                last_second = second;
                sync_connections(&state, second).await;
                sync_channels(&state).await;
            }
        }
    });
}

/// Adds this node's publishes to the engine's counters and reads everyone's back, for every
/// tenant with a rate or a monthly quota this node has loaded (so it knows what the other nodes
/// took before its own first publish of a second).
async fn sync_publishes(state: &RelayState) {
    let now = now_ms() / 1000;
    let limited: Vec<(Arc<str>, Limits)> = state
        .policies
        .loaded()
        .iter()
        .filter(|policy| policy.limits().counts_publishes())
        .map(|policy| (policy.tenant_id.clone(), policy.limits()))
        .collect();
    let pending: Vec<(Arc<str>, Limits, u64, u64, u64, u64)> = {
        let mut tenants = lock(&state.quotas.tenants);
        for (tenant, limits) in limited {
            tenants.entry(tenant).or_default().limits = limits;
        }
        tenants
            .iter_mut()
            .filter(|(_, t)| t.limits.counts_publishes())
            .map(|(name, t)| {
                if now > t.second {
                    (t.second, t.local, t.synced, t.global) = (now, 0, 0, 0);
                }
                let month = month_of(now);
                if month > t.month {
                    (t.month, t.month_unsynced, t.month_global, t.month_stored) = (month, 0, 0, 0);
                }
                (
                    name.clone(),
                    t.limits,
                    t.second,
                    t.local.saturating_sub(t.synced),
                    t.month,
                    t.month_unsynced,
                )
            })
            .collect()
    };
    for (tenant, limits, second, delta, month, month_delta) in pending {
        let rate_name = format!("rate:{tenant}:{second}");
        let month_name = format!("month:{tenant}:{month}");
        let rate = async {
            if limits.max_publish_rate == 0 {
                return None;
            }
            Some(state.engine.counter_add(&rate_name, delta as i64, Duration::from_secs(3)).await)
        };
        let monthly = async {
            if limits.max_messages_per_month == 0 {
                return None;
            }
            Some(
                state
                    .engine
                    .counter_add(&month_name, month_delta as i64, Duration::from_secs(35 * 86_400))
                    .await,
            )
        };
        let (rate, monthly) = futures::join!(rate, monthly);
        let mut tenants = lock(&state.quotas.tenants);
        let Some(t) = tenants.get_mut(&tenant) else { continue };
        if t.second == second {
            match rate {
                Some(Ok(global)) => {
                    t.synced = (t.synced + delta).min(t.local);
                    t.global = global.max(0) as u64;
                }
                // Not counted across nodes: nothing to wait for.
                None => t.synced = (t.synced + delta).min(t.local),
                Some(Err(_)) => {}
            }
        }
        if t.month == month {
            match monthly {
                Some(Ok(global)) => {
                    t.month_unsynced = t.month_unsynced.saturating_sub(month_delta);
                    t.month_global = global.max(0) as u64;
                }
                None => t.month_unsynced = t.month_unsynced.saturating_sub(month_delta),
                Some(Err(_)) => {}
            }
        }
    }
}

/// How long a channel counts after the last node that had subscribers to it reported it.
const CHANNEL_WINDOW: Duration = Duration::from_secs(3);

/// Reports this node's channels with subscribers per tenant with a channel limit, and reads
/// how many the tenant has over every node.
async fn sync_channels(state: &RelayState) {
    let mut apps_of: HashMap<Arc<str>, Vec<Arc<str>>> = HashMap::new();
    for (app, policy) in state.policies.loaded_by_app() {
        if policy.limits().max_channels > 0 {
            apps_of.entry(policy.tenant_id.clone()).or_default().push(app);
        }
    }
    for (tenant, apps) in apps_of {
        let here = state.hub.channels_of(&apps);
        let everyone = state.engine.active_set(&format!("chans:{tenant}"), &here, CHANNEL_WINDOW).await;
        let mut tenants = lock(&state.quotas.tenants);
        let t = tenants.entry(tenant).or_default();
        if let Ok(everyone) = everyone {
            t.channels_everyone = everyone;
            t.channels_admitted = 0;
        }
    }
}

/// Reports this node's connections per limited tenant for this second and reads everyone's
/// for the previous one.
async fn sync_connections(state: &RelayState, second: u64) {
    let limited: Vec<Arc<str>> = lock(&state.quotas.tenants)
        .iter()
        .filter(|(_, t)| t.limits.max_connections > 0)
        .map(|(name, _)| name.clone())
        .collect();
    if limited.is_empty() {
        return;
    }
    let mut here: HashMap<Arc<str>, u64> = HashMap::new();
    for (app, count) in state.connections.per_app() {
        if let Ok(Some(policy)) = state.policies.get(&*state.directory, &app).await {
            *here.entry(policy.tenant_id.clone()).or_default() += count as u64;
        }
    }
    let ttl = Duration::from_secs(5);
    for tenant in limited {
        let mine = here.get(&tenant).copied().unwrap_or(0);
        let reported = state.engine.counter_add(&format!("conns:{tenant}:{second}"), mine as i64, ttl).await;
        let previous = state.engine.counter_add(&format!("conns:{tenant}:{}", second - 1), 0, ttl).await;
        let mut tenants = lock(&state.quotas.tenants);
        let Some(t) = tenants.get_mut(&tenant) else { continue };
        t.connections_here = mine;
        t.connections_admitted = 0;
        if let (Ok(_), Ok(previous)) = (reported, previous) {
            // Our part of the previous second is what we reported for it, if we did.
            let (last_second, last_count) = t.last_report;
            t.connections_reported = if last_second + 1 == second { last_count } else { 0 };
            t.connections_everyone = previous.max(0) as u64;
            t.last_report = (second, mine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::AppRecord;

    fn policy(limits: Limits, messages_this_month: u64) -> AppPolicy {
        AppPolicy::from(AppRecord {
            app_id: "app_1".into(),
            tenant_id: "ten_1".into(),
            served: true,
            unpaid: false,
            tokens_revoked_before: 0,
            signing_keys: Vec::new(),
            revoked_tokens: Vec::new(),
            revoked_clients: Vec::new(),
            limits,
            messages_this_month,
            namespaces: Vec::new(),
            exchanges: Vec::new(),
        })
    }

    #[test]
    fn the_monthly_quota_counts_what_the_store_has_and_what_this_node_took() {
        let quotas = Quotas::default();
        let limits = Limits { max_messages_per_month: 5, ..Limits::default() };
        let policy = policy(limits, 2);
        for _ in 0..3 {
            quotas.admit_publish(&policy, 1).unwrap();
        }
        let err = quotas.admit_publish(&policy, 1).unwrap_err();
        assert_eq!(err.code, ErrorCode::QuotaExceeded);
        let overage = self::policy(Limits { overage_allowed: true, ..limits }, 2);
        quotas.admit_publish(&overage, 1).unwrap();
    }

    #[test]
    fn the_rate_is_counted_per_second_and_sizes_against_the_plan() {
        let quotas = Quotas::default();
        let policy = policy(Limits { max_publish_rate: 3, max_message_bytes: 10, ..Limits::default() }, 0);
        assert_eq!(quotas.admit_publish(&policy, 11).unwrap_err().code, ErrorCode::MessageTooLarge);
        // Run in one second (retry once if the test straddled a second boundary).
        for _ in 0..2 {
            let start = now_ms() / 1000;
            let results: Vec<bool> = (0..4).map(|_| quotas.admit_publish(&policy, 1).is_ok()).collect();
            if now_ms() / 1000 == start {
                assert_eq!(results.iter().filter(|ok| **ok).count(), 3, "{results:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(1100));
        }
        panic!("never ran within one second");
    }
}
