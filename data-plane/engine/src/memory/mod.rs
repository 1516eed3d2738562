//! The in-memory engine: one node, no persistence. History and presence live in this process
//! and are lost (with a new epoch per channel) when it restarts.
//!
//! Locking: a shard map finds a channel's stream, and each stream has its own mutex, held while
//! the offset is assigned *and* the publication is handed to the sink. That is what makes
//! delivery per channel ordered with concurrent publishers; the sink only does `try_send`s,
//! so the lock is short. No lock here is ever held across an `.await`.

mod feed;
mod presence;
mod stream;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use tributary_protocol::frame::{MemberInfo, PresenceEvent};
use tributary_protocol::{ChannelName, Publication};

use crate::contract::{
    Audience, ChannelKey, Engine, EngineError, EngineSink, HistoryPage, HistoryQuery, NewMessage, Occupancy,
    PresenceOptions, PublishOptions, PublishOutcome, StreamOptions,
};
use crate::feed::{FeedPage, FeedRecord, FeedRetention};
use feed::Feeds;
use presence::{PresenceSet, Removed};
use stream::Stream;

const SHARDS: usize = 32;

/// How often idle streams are looked for.
const STREAM_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Settings of the in-memory engine.
#[derive(Debug, Clone)]
pub struct MemoryEngineConfig {
    /// A stream with no history left is forgotten (and gets a new epoch) after this idle time.
    pub stream_idle_ttl: Duration,
    /// How often expired presence entries and idle streams are swept.
    pub sweep_interval: Duration,
    /// How much of each app's durable feed is kept.
    pub feed_retention: FeedRetention,
}

impl Default for MemoryEngineConfig {
    fn default() -> Self {
        Self {
            stream_idle_ttl: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_millis(500),
            feed_retention: FeedRetention::default(),
        }
    }
}

type StreamMap = HashMap<ChannelKey, Arc<Mutex<Stream>>>;

/// A channel's retained message (`None`: cleared) and the message that set it.
struct Retained {
    epoch: Arc<str>,
    offset: u64,
    publication: Option<Publication>,
}

struct Inner {
    config: MemoryEngineConfig,
    hasher: RandomState,
    shards: Vec<Mutex<StreamMap>>,
    presence: Mutex<HashMap<ChannelKey, PresenceSet>>,
    sink: OnceLock<Weak<dyn EngineSink>>,
    /// Shared counters (this node is every node): value and expiry.
    counters: Mutex<HashMap<String, (i64, Instant)>>,
    /// Active sets: member and when it was last marked.
    sets: Mutex<HashMap<String, HashMap<String, Instant>>>,
    /// Retained messages per app, by channel.
    retained: Mutex<HashMap<Arc<str>, std::collections::BTreeMap<ChannelName, Retained>>>,
    /// What [`Engine::put`] stored.
    stored: Mutex<HashMap<String, Stored>>,
    /// The apps' durable feeds.
    feeds: Feeds,
}

/// A value of [`Engine::put`]: its version, the value (`None` once taken) and its expiry.
type Stored = (u64, Option<Bytes>, Instant);

/// The single-node engine.
#[derive(Clone)]
pub struct MemoryEngine {
    inner: Arc<Inner>,
}

/// Past this many counters, expired ones are dropped before a new one is made.
const MAX_COUNTERS: usize = 10_000;

/// Locks a mutex, recovering from poisoning: every critical section here leaves the data
/// consistent before anything that could panic, so a poisoned lock holds valid state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryEngine {
    /// Creates the engine and, when called inside a Tokio runtime, its sweeper task (which
    /// stops when the engine is dropped).
    pub fn new(config: MemoryEngineConfig) -> Self {
        let inner = Arc::new(Inner {
            config: config.clone(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            presence: Mutex::new(HashMap::new()),
            sink: OnceLock::new(),
            counters: Mutex::new(HashMap::new()),
            sets: Mutex::new(HashMap::new()),
            retained: Mutex::new(HashMap::new()),
            stored: Mutex::new(HashMap::new()),
            feeds: Feeds::new(config.feed_retention),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(sweep_loop(Arc::downgrade(&inner)));
        }
        Self { inner }
    }
}

impl Inner {
    fn sink(&self) -> Option<Arc<dyn EngineSink>> {
        self.sink.get().and_then(Weak::upgrade)
    }

    fn shard(&self, key: &ChannelKey) -> &Mutex<StreamMap> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    fn stream(&self, key: &ChannelKey) -> Arc<Mutex<Stream>> {
        lock(self.shard(key))
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Stream::new())))
            .clone()
    }

    fn announce(&self, key: &ChannelKey, event: PresenceEvent) {
        if let Some(sink) = self.sink() {
            sink.on_presence(key, &event);
        }
    }

    /// Writes a change of a channel (its presence, whether or not subscribers are told of it;
    /// its occupancy) to the app's feed.
    fn record(&self, key: &ChannelKey, record: FeedRecord) {
        self.feeds.append(&key.app, Some(&key.channel), stream::now_ms(), record);
    }

    /// Writes every channel of `app` that has subscribers as occupied (its feed just started).
    fn record_occupied_channels(&self, app: &str) {
        let mut streams: Vec<(ChannelKey, Arc<Mutex<Stream>>)> = Vec::new();
        for shard in &self.shards {
            let shard = lock(shard);
            streams.extend(
                shard.iter().filter(|(key, _)| &*key.app == app).map(|(k, s)| (k.clone(), s.clone())),
            );
        }
        // Each under its own lock (never a shard's and a stream's at once, as elsewhere).
        for (key, stream) in streams {
            let stream = lock(&stream);
            if stream.subscribers > 0 {
                self.record(&key, FeedRecord::ChannelOccupied);
            }
        }
    }

    fn announce_removed(&self, key: &ChannelKey, removed: Removed) -> bool {
        if removed.left {
            self.record(key, FeedRecord::PresenceLeave(removed.member.clone()));
        }
        if removed.left && removed.announce {
            self.announce(key, PresenceEvent::Leave(removed.member));
        }
        removed.left
    }

    /// Expires presence entries; every `streams_every`-th call also forgets idle streams, which
    /// visits every stream and so runs less often than the presence sweep needs to.
    fn sweep(&self, tick: u64) {
        let now = Instant::now();
        {
            let mut presence = lock(&self.presence);
            for (key, set) in presence.iter_mut() {
                for removed in set.expire(now) {
                    self.announce_removed(key, removed);
                }
            }
            presence.retain(|_, set| !set.is_empty());
        }
        let every =
            (STREAM_SWEEP_INTERVAL.as_millis() / self.config.sweep_interval.as_millis().max(1)).max(1);
        if u128::from(tick) % every != 0 {
            return;
        }
        lock(&self.stored).retain(|_, (_, _, expires)| *expires > now);
        let idle = self.config.stream_idle_ttl;
        for shard in &self.shards {
            // A stream in use elsewhere (an Arc clone alive) is never dropped under its user.
            lock(shard).retain(|_, stream| Arc::strong_count(stream) > 1 || !lock(stream).is_idle(now, idle));
        }
    }
}

async fn sweep_loop(inner: Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(inner) => inner.config.sweep_interval,
        None => return,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for tick in 0u64.. {
        ticker.tick().await;
        match inner.upgrade() {
            Some(inner) => inner.sweep(tick),
            None => return,
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    fn set_sink(&self, sink: Weak<dyn EngineSink>) {
        if self.inner.sink.set(sink).is_err() {
            tracing::warn!("engine sink was already set; keeping the first one");
        }
    }

    async fn publish(
        &self,
        key: &ChannelKey,
        message: NewMessage,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        let stream = self.inner.stream(key);
        let mut stream = lock(&stream);
        let (outcome, stored) = stream.publish(message, options);
        if let Some(publication) = stored {
            if self.inner.feeds.any() {
                // Under the stream lock too, so the feed has the channel's messages in order.
                let record = FeedRecord::Message(publication.clone());
                self.inner.feeds.append(&key.app, Some(&key.channel), publication.ts_ms, record);
            }
            if let Some(sink) = self.inner.sink() {
                // Delivered under the stream lock: this is what orders delivery per channel.
                sink.on_publication(key, &publication, Audience::All);
            }
        }
        Ok(outcome)
    }

    async fn subscribe(&self, key: &ChannelKey) -> Result<(), EngineError> {
        // One node: the sink already sees every publication (the hub drops those without local
        // subscribers). Subscribing only pins the stream, so its epoch outlives quiet periods.
        let stream = self.inner.stream(key);
        let mut stream = lock(&stream);
        stream.subscribers += 1;
        if stream.subscribers == 1 {
            // Under the stream's lock, so its occupied and vacated entries alternate.
            self.inner.record(key, FeedRecord::ChannelOccupied);
        }
        Ok(())
    }

    async fn unsubscribe(&self, key: &ChannelKey) -> Result<(), EngineError> {
        let stream = self.inner.stream(key);
        let mut stream = lock(&stream);
        if stream.subscribers == 1 {
            self.inner.record(key, FeedRecord::ChannelVacated);
        }
        stream.subscribers = stream.subscribers.saturating_sub(1);
        Ok(())
    }

    async fn history(
        &self,
        key: &ChannelKey,
        query: HistoryQuery,
        stream: StreamOptions,
    ) -> Result<HistoryPage, EngineError> {
        let entry = self.inner.stream(key);
        let page = lock(&entry).history(query, stream);
        Ok(page)
    }

    async fn presence_join(
        &self,
        key: &ChannelKey,
        member: MemberInfo,
        options: PresenceOptions,
    ) -> Result<bool, EngineError> {
        let mut presence = lock(&self.inner.presence);
        let set = presence.entry(key.clone()).or_default();
        let joined = set.join(member.clone(), Instant::now() + options.ttl, options.announce);
        if joined {
            self.inner.record(key, FeedRecord::PresenceJoin(member.clone()));
        }
        if joined && options.announce {
            self.inner.announce(key, PresenceEvent::Join(member));
        }
        Ok(joined)
    }

    async fn presence_update(&self, key: &ChannelKey, member: MemberInfo) -> Result<bool, EngineError> {
        let mut presence = lock(&self.inner.presence);
        let updated = presence.get_mut(key).and_then(|set| set.update(member));
        match updated {
            Some(member) => {
                self.inner.record(key, FeedRecord::PresenceUpdate(member.clone()));
                self.inner.announce(key, PresenceEvent::Update(member));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn presence_leave(&self, key: &ChannelKey, conn_id: &str) -> Result<bool, EngineError> {
        let mut presence = lock(&self.inner.presence);
        let Some(set) = presence.get_mut(key) else { return Ok(false) };
        let left =
            set.remove(conn_id).map(|removed| self.inner.announce_removed(key, removed)).unwrap_or(false);
        if set.is_empty() {
            presence.remove(key);
        }
        Ok(left)
    }

    async fn presence(&self, key: &ChannelKey) -> Result<Vec<MemberInfo>, EngineError> {
        Ok(lock(&self.inner.presence).get(key).map(PresenceSet::members).unwrap_or_default())
    }

    async fn occupancy(&self, key: &ChannelKey) -> Result<Occupancy, EngineError> {
        Ok(lock(&self.inner.presence).get(key).map(PresenceSet::occupancy).unwrap_or_default())
    }

    async fn publish_control(&self, event: Bytes) -> Result<usize, EngineError> {
        match self.inner.sink() {
            Some(sink) => {
                sink.on_control(&event);
                Ok(1)
            }
            None => Ok(0),
        }
    }

    async fn active_set(&self, name: &str, members: &[String], window: Duration) -> Result<u64, EngineError> {
        let now = Instant::now();
        let mut sets = lock(&self.inner.sets);
        let set = sets.entry(name.to_owned()).or_default();
        for member in members {
            set.insert(member.clone(), now);
        }
        set.retain(|_, seen| now.duration_since(*seen) <= window);
        let count = set.len() as u64;
        if set.is_empty() {
            sets.remove(name);
        }
        Ok(count)
    }

    async fn put(&self, name: &str, version: u64, value: Bytes, ttl: Duration) -> Result<bool, EngineError> {
        let now = Instant::now();
        let mut stored = lock(&self.inner.stored);
        if stored.get(name).is_some_and(|(v, _, expires)| *v >= version && *expires > now) {
            return Ok(false);
        }
        stored.insert(name.to_owned(), (version, Some(value), now + ttl));
        Ok(true)
    }

    async fn take(&self, name: &str) -> Result<(u64, Option<Bytes>), EngineError> {
        let now = Instant::now();
        let mut stored = lock(&self.inner.stored);
        match stored.get_mut(name) {
            Some((version, value, expires)) if *expires > now => Ok((*version, value.take())),
            _ => Ok((0, None)),
        }
    }

    async fn feed_enable(&self, app: &str) -> Result<(), EngineError> {
        if self.inner.feeds.enable(app) {
            self.inner.record_occupied_channels(app);
        }
        Ok(())
    }

    async fn feed_disable(&self, app: &str) -> Result<(), EngineError> {
        self.inner.feeds.disable(app);
        Ok(())
    }

    async fn feed_client(&self, app: &str, record: FeedRecord) -> Result<bool, EngineError> {
        Ok(self.inner.feeds.append(app, None, stream::now_ms(), record))
    }

    async fn feed_read(&self, app: &str, after: &str, limit: usize) -> Result<FeedPage, EngineError> {
        Ok(self.inner.feeds.read(app, after, limit))
    }

    async fn set_retained(
        &self,
        key: &ChannelKey,
        epoch: &str,
        offset: u64,
        publication: Option<Publication>,
    ) -> Result<bool, EngineError> {
        let mut retained = lock(&self.inner.retained);
        let app = retained.entry(key.app.clone()).or_default();
        if let Some(current) = app.get(&key.channel)
            && *current.epoch == *epoch
            && current.offset > offset
        {
            return Ok(false);
        }
        // A clear is kept as an entry without a message: an older set arriving later must not
        // bring the cleared value back.
        app.insert(key.channel.clone(), Retained { epoch: Arc::from(epoch), offset, publication });
        Ok(true)
    }

    async fn retained(&self, key: &ChannelKey) -> Result<Option<Publication>, EngineError> {
        let retained = lock(&self.inner.retained);
        Ok(retained.get(&key.app).and_then(|app| app.get(&key.channel)).and_then(|r| r.publication.clone()))
    }

    async fn retained_in(
        &self,
        app: &str,
        limit: usize,
    ) -> Result<Vec<(ChannelName, Publication)>, EngineError> {
        Ok(lock(&self.inner.retained)
            .get(app)
            .map(|app| {
                let set = app.iter().filter_map(|(c, r)| Some((c.clone(), r.publication.clone()?)));
                set.take(limit).collect()
            })
            .unwrap_or_default())
    }

    async fn counter_add(&self, name: &str, delta: i64, ttl: Duration) -> Result<i64, EngineError> {
        let now = Instant::now();
        let mut counters = lock(&self.inner.counters);
        if counters.len() >= MAX_COUNTERS {
            counters.retain(|_, (_, expires)| *expires > now);
        }
        let entry = counters.entry(name.to_owned()).or_insert((0, now));
        if entry.1 <= now {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(delta);
        entry.1 = now + ttl;
        Ok(entry.0)
    }
}

/// Returns a fresh random token; the conformance suite uses it for unique app ids.
#[cfg(any(test, feature = "conformance"))]
pub(crate) fn stream_epoch_for_tests() -> Arc<str> {
    stream::new_epoch()
}

#[cfg(test)]
mod conformance_tests {
    use super::*;

    async fn memory_engine() -> Arc<dyn Engine> {
        Arc::new(MemoryEngine::new(MemoryEngineConfig {
            sweep_interval: Duration::from_millis(50),
            ..MemoryEngineConfig::default()
        }))
    }

    crate::engine_conformance_suite!(memory_engine);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_protocol::ChannelName;
    use tributary_protocol::frame::Direction;

    fn key(name: &str) -> ChannelKey {
        ChannelKey::new("app", ChannelName::parse(name).unwrap())
    }

    async fn epoch(engine: &MemoryEngine, key: &ChannelKey) -> Arc<str> {
        let query = HistoryQuery { since: None, direction: Direction::Forward, limit: 1 };
        let stream = StreamOptions { history_size: 10, history_ttl: Duration::from_secs(60) };
        engine.history(key, query, stream).await.unwrap().epoch
    }

    #[tokio::test(start_paused = true)]
    async fn streams_created_by_reads_are_forgotten_but_subscribed_ones_keep_their_epoch() {
        let engine = MemoryEngine::new(MemoryEngineConfig {
            sweep_interval: Duration::from_secs(1),
            stream_idle_ttl: Duration::from_secs(24 * 3600),
            ..MemoryEngineConfig::default()
        });
        let (read, subscribed) = (key("read-only"), key("subscribed"));
        let read_epoch = epoch(&engine, &read).await;
        engine.subscribe(&subscribed).await.unwrap();
        let subscribed_epoch = epoch(&engine, &subscribed).await;
        for _ in 0..400 {
            tokio::time::advance(Duration::from_secs(1)).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(epoch(&engine, &subscribed).await, subscribed_epoch);
        assert_ne!(epoch(&engine, &read).await, read_epoch, "the never-published stream was forgotten");
        let total: usize = engine.inner.shards.iter().map(|s| lock(s).len()).sum();
        assert_eq!(total, 2, "the re-read stream exists again, nothing else piled up");
    }

    /// Past `MAX_IDEMPOTENCY_KEYS` keys within the window on one channel, the oldest key is
    /// forgotten early (a flood of unique keys shortens the window instead of growing memory);
    /// docs/http-api.md says so.
    #[tokio::test]
    async fn past_the_key_cap_the_oldest_idempotency_key_is_forgotten_early() {
        let engine = MemoryEngine::new(MemoryEngineConfig::default());
        let channel = key("idem:flood");
        let stream = StreamOptions { history_size: 10, history_ttl: Duration::from_secs(60) };
        let options = |n: usize| PublishOptions {
            stream,
            idempotency_key: Some(format!("k{n}")),
            idempotency_window: Duration::from_secs(300),
        };
        let message = || NewMessage {
            payload: tributary_protocol::Payload::Json(bytes::Bytes::from_static(b"1")),
            encoding: None,
            client_id: None,
            meta: None,
        };
        for n in 0..=stream::MAX_IDEMPOTENCY_KEYS {
            assert!(!engine.publish(&channel, message(), &options(n)).await.unwrap().duplicate);
        }
        let newest =
            engine.publish(&channel, message(), &options(stream::MAX_IDEMPOTENCY_KEYS)).await.unwrap();
        assert!(newest.duplicate, "the newest key is remembered");
        let second = engine.publish(&channel, message(), &options(1)).await.unwrap();
        assert!(second.duplicate, "only the oldest went");
        let oldest = engine.publish(&channel, message(), &options(0)).await.unwrap();
        assert!(!oldest.duplicate, "the oldest key was forgotten before its window");
    }
}
