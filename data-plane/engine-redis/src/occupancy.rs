//! Channels occupied and vacated across nodes, for apps with a durable feed.
//!
//! Each node knows which channels its own clients subscribe to (its routes); a channel is
//! occupied while any node holds it. Once a second every node tells Redis what changed in its
//! channels of the apps that have a feed (the set `<prefix>:feeds`), and renews its lease on
//! them; the scripts keep, per app, each node's channels (`<prefix>:fn:{app}:<node>`), how many
//! nodes hold each channel (`<prefix>:fo:{app}`) and the nodes' leases (`<prefix>:fl:{app}`),
//! and write `channel.occupied` when a channel's first node takes it and `channel.vacated` when
//! its last one lets it go — in the same script, so an entry exists exactly when the change
//! does. A node that stops renewing (killed, cut off) has its channels let go by the app's
//! feed reader ([`Inner::feed_sweep`]) once its lease ends.
//!
//! Gathering a second's changes is also a debounce: a channel is let go of once it has been
//! gone from a node for a whole tick, so one left and taken again within that (a page reload),
//! or passed from one node to another, is written as neither. Like the feed itself, not on a Redis Cluster.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tributary_engine::EngineError;

use crate::routes::lock_read;
use crate::{Inner, unavailable};

/// Lua helpers of the occupancy scripts. KEYS of every script start with the feed stream, its
/// marker and the channel counts hash.
pub(crate) const HELPERS: &str = r#"
local function occupy(set, channel, max_len)
  if redis.call('SADD', set, channel) == 1 and redis.call('HINCRBY', KEYS[3], channel, 1) == 1 then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', max_len, '*', 'c', channel, 'k', 'o', 'b', '')
  end
end
local function vacate(set, channel, max_len)
  if redis.call('SREM', set, channel) == 1 and redis.call('HINCRBY', KEYS[3], channel, -1) <= 0 then
    redis.call('HDEL', KEYS[3], channel)
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', max_len, '*', 'c', channel, 'k', 'v', 'b', '')
  end
end
"#;

/// A node's changes to its channels of an app, and its lease.
/// KEYS: feed stream, marker, counts, the node's channel set, leases. ARGV: node, lease ms,
/// most feed entries, mode (`d`: changes, `f`: the whole list), number of channels taken, the
/// channels taken (or, in `f` mode, every channel the node holds), then the channels let go.
/// Returns 0 when the app has no feed, 2 when a change came from a node Redis does not know
/// (its lease ended, or it is new: it must send the whole list), 1 when applied.
pub(crate) const SYNC: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local node, now, max_len = ARGV[1], now_ms(), ARGV[3]
local known = redis.call('ZSCORE', KEYS[5], node)
if ARGV[4] == 'd' and not known then return 2 end
redis.call('ZADD', KEYS[5], now + tonumber(ARGV[2]), node)
local taken = tonumber(ARGV[5])
if ARGV[4] == 'f' then
  local wanted = {}
  for i = 6, 5 + taken do wanted[ARGV[i]] = true end
  for _, channel in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    if not wanted[channel] then vacate(KEYS[4], channel, max_len) end
  end
end
for i = 6, 5 + taken do occupy(KEYS[4], ARGV[i], max_len) end
for i = 6 + taken, #ARGV do vacate(KEYS[4], ARGV[i], max_len) end
return 1
"#;

/// Lets go of the channels of nodes whose lease ended.
/// KEYS: feed stream, marker, counts, leases. ARGV: the prefix of a node's channel set, most
/// feed entries. Returns how many nodes were let go.
pub(crate) const SWEEP: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now_ms())
for _, node in ipairs(gone) do
  local set = ARGV[1] .. node
  for _, channel in ipairs(redis.call('SMEMBERS', set)) do vacate(set, channel, ARGV[2]) end
  redis.call('DEL', set)
  redis.call('ZREM', KEYS[4], node)
end
return #gone
"#;

/// Forgets an app's feed, its occupancy and its presence index.
/// KEYS: feed stream, marker, counts, leases, the set of apps with feeds, presence index.
/// ARGV: the prefix of a node's channel set, the app.
pub(crate) const FORGET: &str = r#"
for _, node in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do redis.call('DEL', ARGV[1] .. node) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6])
redis.call('SREM', KEYS[5], ARGV[2])
return 1
"#;

/// Most channels one call of the presence sweep looks at (a call is atomic: kept short).
const EXPIRE_CHANNELS: usize = 100;

/// How many renewals a lease outlives: a node that misses this many is let go.
const LEASE_TICKS: u32 = 15;

/// Every this many ticks a node sends its whole list rather than its changes, so a change
/// lost on the way (a reply lost with Redis) is set right within a minute.
const FULL_EVERY: u64 = 60;

/// The occupancy keys of an app: counts, leases, and the prefix of a node's channel set; and
/// its presence index (see the `PRESENCE_EXPIRE` script).
pub(crate) struct OccupancyKeys {
    pub(crate) counts: String,
    pub(crate) leases: String,
    pub(crate) node_prefix: String,
    pub(crate) presence: String,
}

impl Inner {
    pub(crate) fn occupancy_keys(&self, app: &str) -> OccupancyKeys {
        let p = &self.config.prefix;
        OccupancyKeys {
            counts: format!("{p}:fo:{{{app}}}"),
            leases: format!("{p}:fl:{{{app}}}"),
            node_prefix: format!("{p}:fn:{{{app}}}:"),
            presence: format!("{p}:fp:{{{app}}}"),
        }
    }

    /// The set of apps that have a durable feed.
    pub(crate) fn feeds_key(&self) -> String {
        format!("{}:feeds", self.config.prefix)
    }

    /// Sends a node's changes of `app`'s channels (or, `full`, the whole list); returns the
    /// script's answer (see [`SYNC`]).
    async fn occupancy_sync(
        &self,
        app: &str,
        full: bool,
        taken: &[&str],
        let_go: &[&str],
    ) -> Result<u8, EngineError> {
        let (stream, marker) = self.durable_feed_keys(app);
        let keys = self.occupancy_keys(app);
        let lease = self.config.occupancy_tick * LEASE_TICKS;
        let mut invocation = self.scripts.occupancy_sync.prepare_invoke();
        invocation
            .key(&stream)
            .key(&marker)
            .key(&keys.counts)
            .key(format!("{}{}", keys.node_prefix, self.node))
            .key(&keys.leases)
            .arg(&self.node)
            .arg(lease.as_millis() as u64)
            .arg(self.config.feed_retention.max_len.max(1))
            .arg(if full { "f" } else { "d" })
            .arg(taken.len());
        for channel in taken.iter().chain(let_go) {
            invocation.arg(*channel);
        }
        invocation.invoke_async(&mut self.commands_for_name(&marker)).await.map_err(unavailable)
    }

    /// The upkeep of `app`'s feed by its reader: lets go of the channels held by nodes whose
    /// lease ended (see [`SWEEP`]), and writes the leaves of presence entries that expired in
    /// any channel, served by a node or not (see the `PRESENCE_EXPIRE` script).
    pub(crate) async fn feed_sweep(&self, app: &str) -> Result<(), EngineError> {
        if !self.routes.feeds_enabled {
            return Ok(());
        }
        let (stream, marker) = self.durable_feed_keys(app);
        let keys = self.occupancy_keys(app);
        let mut invocation = self.scripts.occupancy_sweep.prepare_invoke();
        invocation
            .key(&stream)
            .key(&marker)
            .key(&keys.counts)
            .key(&keys.leases)
            .arg(&keys.node_prefix)
            .arg(self.config.feed_retention.max_len.max(1));
        let gone: u64 =
            invocation.invoke_async(&mut self.commands_for_name(&marker)).await.map_err(unavailable)?;
        if gone > 0 {
            tracing::info!(app, nodes = gone, "let go of the channels of nodes whose lease ended");
        }
        // Presence entries that expired, in channels whatever node served them (maybe none now);
        // at most a hundred calls a round, the rest next second.
        for _ in 0..100 {
            let mut invocation = self.scripts.presence_expire.prepare_invoke();
            invocation
                .key(&stream)
                .key(&marker)
                .key(&keys.presence)
                .arg(&self.config.prefix)
                .arg(app)
                .arg(self.config.feed_retention.max_len.max(1))
                .arg(EXPIRE_CHANNELS);
            let swept: usize =
                invocation.invoke_async(&mut self.commands_for_name(&marker)).await.map_err(unavailable)?;
            if swept < EXPIRE_CHANNELS {
                break;
            }
        }
        Ok(())
    }
}

/// Each second, tells Redis what changed in this node's channels of apps with a feed (see the
/// module's comment). Stops when the engine is dropped.
pub(crate) async fn keep_occupancy(inner: Weak<Inner>) {
    // What Redis was last told, per app: the channels this node holds there.
    let mut told: HashMap<Arc<str>, HashSet<String>> = HashMap::new();
    // Channels found gone at the last tick, per app: let go of if still gone at this one.
    let mut leaving: HashMap<Arc<str>, HashSet<String>> = HashMap::new();
    let mut tick: u64 = 0;
    loop {
        let Some(every) = inner.upgrade().map(|i| i.config.occupancy_tick) else { return };
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        tick += 1;
        let feeds: HashSet<String> = {
            let mut conn = inner.commands_for_name(&inner.feeds_key());
            match redis::cmd("SMEMBERS").arg(inner.feeds_key()).query_async(&mut conn).await {
                Ok(feeds) => feeds,
                Err(err) => {
                    tracing::debug!(error = %err, "could not read which apps have feeds");
                    continue;
                }
            }
        };
        let mut held: HashMap<Arc<str>, HashSet<String>> = HashMap::new();
        if !feeds.is_empty() {
            for route in lock_read(&inner.routes.channels).values() {
                if feeds.contains(&*route.key.app) {
                    held.entry(route.key.app.clone())
                        .or_default()
                        .insert(route.key.channel.as_str().to_owned());
                }
            }
        }
        told.retain(|app, _| feeds.contains(&**app));
        leaving.retain(|app, _| feeds.contains(&**app));
        let apps: HashSet<Arc<str>> = held.keys().chain(told.keys()).cloned().collect();
        for app in apps {
            let now = held.remove(&app).unwrap_or_default();
            let before = told.get(&app);
            let taken: Vec<&str> =
                now.iter().filter(|c| before.is_none_or(|b| !b.contains(*c))).map(String::as_str).collect();
            // A channel is let go of only once it has been gone for a whole tick: another
            // node that took it before this one let go has told Redis by then, so a channel
            // passed between nodes is never written as vacated.
            let was_leaving = leaving.remove(&app).unwrap_or_default();
            let (let_go, still): (Vec<&str>, Vec<&str>) = before
                .map(|b| b.iter().filter(|c| !now.contains(*c)).map(String::as_str).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .partition(|c| was_leaving.contains(*c));
            let mut kept = now.clone();
            kept.extend(still.iter().map(|c| (*c).to_owned()));
            let full = tick.is_multiple_of(FULL_EVERY);
            let all: Vec<&str> = kept.iter().map(String::as_str).collect();
            let mut answer = if full {
                inner.occupancy_sync(&app, true, &all, &[]).await
            } else {
                inner.occupancy_sync(&app, false, &taken, &let_go).await
            };
            if let Ok(2) = answer {
                answer = inner.occupancy_sync(&app, true, &all, &[]).await;
            }
            match answer {
                Ok(1) if kept.is_empty() => {
                    told.remove(&app);
                }
                Ok(1) => {
                    let still: HashSet<String> = still.iter().map(|c| (*c).to_owned()).collect();
                    if !still.is_empty() {
                        leaving.insert(app.clone(), still);
                    }
                    told.insert(app, kept);
                }
                Ok(_) => {
                    told.remove(&app);
                }
                // Told again next time: taking and letting go are idempotent.
                Err(err) => {
                    tracing::debug!(error = %err, "could not tell Redis this node's channels");
                    leaving.insert(app, was_leaving);
                }
            }
        }
    }
}

/// How often a node tells Redis its channels' changes, by default.
pub(crate) const DEFAULT_TICK: Duration = Duration::from_secs(1);
