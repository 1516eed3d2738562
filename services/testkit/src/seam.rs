//! [`SeamEngine`]: an engine wrapper that holds a channel's `subscribe` call until the test
//! lets it go, so the seam between joining a channel and going live is open for as long as the
//! test needs, every run, on any engine.
//!
//! A test arms the gate for a channel ([`Gate::arm`]), starts a subscription, waits until the
//! relay is inside `subscribe` ([`Gate::entered`]), does whatever must land in the seam
//! (publish), then [`Gate::release`]s it. Every other call goes straight to the inner engine.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tributary_engine::{
    ChannelKey, Engine, EngineError, EngineSink, HistoryPage, HistoryQuery, NewMessage, Occupancy,
    PresenceOptions, PublishOptions, PublishOutcome, StreamOptions,
};
use tributary_protocol::frame::MemberInfo;
use tributary_protocol::{ChannelName, Publication};

/// The test's side of a [`SeamEngine`]: which channel's subscribe is held, and the signals.
#[derive(Default)]
pub struct Gate {
    /// The channel whose next subscribe is watched, and whether it is held.
    armed: Mutex<Option<(String, bool)>>,
    /// Every subscribe waits this long first (zero: none).
    delay_all: Mutex<Duration>,
    /// Whether a subscribe is held now.
    holding: std::sync::atomic::AtomicBool,
    /// Counts subscribe calls that reached the gate, so a test can wait for the next one.
    entered: watch::Sender<u64>,
    released: Notify,
}

impl Gate {
    /// Holds the next `subscribe` of `channel` (in any app) until [`Gate::release`].
    pub fn arm(&self, channel: &str) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some((channel.to_owned(), true));
    }

    /// Counts the next `subscribe` of `channel` for [`Gate::entered`] without holding it: the
    /// seam stays as long as the engine makes it.
    pub fn watch(&self, channel: &str) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some((channel.to_owned(), false));
    }

    /// Makes every `subscribe` wait `delay` before it goes on: the seam of every subscription
    /// stays open that long, so concurrent publishers land in it on every run.
    pub fn delay_all(&self, delay: Duration) {
        *self.delay_all.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// Waits (at most `timeout`) until a held `subscribe` has been called; returns how many
    /// have been so far.
    pub async fn entered(&self, timeout: Duration) -> anyhow::Result<u64> {
        let mut seen = self.entered.subscribe();
        let wait = seen.wait_for(|n| *n > 0);
        let entered = tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| anyhow::anyhow!("no subscribe reached the gate within {timeout:?}"))?
            .map_err(|_| anyhow::anyhow!("gate dropped"))?;
        Ok(*entered)
    }

    /// Lets the held `subscribe` go on (and resets the count of a watched one).
    pub fn release(&self) {
        self.entered.send_modify(|n| *n = 0);
        // Only a held subscribe is waiting: a permit stored for nobody would let the next held
        // one through at once.
        if self.holding.swap(false, std::sync::atomic::Ordering::AcqRel) {
            self.released.notify_one();
        }
    }

    /// Whether this subscribe is watched, and if so whether it is held.
    fn check(&self, channel: &ChannelName) -> Option<bool> {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        match armed.take() {
            Some((armed_channel, hold)) if armed_channel == channel.as_str() => Some(hold),
            other => {
                *armed = other;
                None
            }
        }
    }
}

/// An engine that delegates everything to `inner`, holding armed `subscribe` calls at the gate.
pub struct SeamEngine {
    inner: Arc<dyn Engine>,
    gate: Arc<Gate>,
}

impl SeamEngine {
    /// Wraps `inner`; the test keeps `gate`.
    pub fn new(inner: Arc<dyn Engine>, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
    }
}

#[async_trait]
impl Engine for SeamEngine {
    fn set_sink(&self, sink: Weak<dyn EngineSink>) {
        self.inner.set_sink(sink);
    }

    async fn publish(
        &self,
        key: &ChannelKey,
        message: NewMessage,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        self.inner.publish(key, message, options).await
    }

    async fn subscribe(&self, key: &ChannelKey) -> Result<(), EngineError> {
        match self.gate.check(&key.channel) {
            Some(true) => {
                // Held before the count moves, so a release right after `entered` finds it
                // (and its permit waits for this `notified` if it comes first).
                self.gate.holding.store(true, std::sync::atomic::Ordering::Release);
                let released = self.gate.released.notified();
                self.gate.entered.send_modify(|n| *n += 1);
                released.await;
            }
            Some(false) => self.gate.entered.send_modify(|n| *n += 1),
            None => {}
        }
        let delay = *self.gate.delay_all.lock().unwrap_or_else(|p| p.into_inner());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.inner.subscribe(key).await
    }

    async fn unsubscribe(&self, key: &ChannelKey) -> Result<(), EngineError> {
        self.inner.unsubscribe(key).await
    }

    async fn subscribe_app(&self, app: &str) -> Result<(), EngineError> {
        self.inner.subscribe_app(app).await
    }

    async fn unsubscribe_app(&self, app: &str) -> Result<(), EngineError> {
        self.inner.unsubscribe_app(app).await
    }

    async fn history(
        &self,
        key: &ChannelKey,
        query: HistoryQuery,
        stream: StreamOptions,
    ) -> Result<HistoryPage, EngineError> {
        self.inner.history(key, query, stream).await
    }

    async fn presence_join(
        &self,
        key: &ChannelKey,
        member: MemberInfo,
        options: PresenceOptions,
    ) -> Result<bool, EngineError> {
        self.inner.presence_join(key, member, options).await
    }

    async fn presence_update(&self, key: &ChannelKey, member: MemberInfo) -> Result<bool, EngineError> {
        self.inner.presence_update(key, member).await
    }

    async fn presence_leave(&self, key: &ChannelKey, conn_id: &str) -> Result<bool, EngineError> {
        self.inner.presence_leave(key, conn_id).await
    }

    async fn presence(&self, key: &ChannelKey) -> Result<Vec<MemberInfo>, EngineError> {
        self.inner.presence(key).await
    }

    async fn occupancy(&self, key: &ChannelKey) -> Result<Occupancy, EngineError> {
        self.inner.occupancy(key).await
    }

    async fn publish_control(&self, event: Bytes) -> Result<usize, EngineError> {
        self.inner.publish_control(event).await
    }

    async fn counter_add(&self, name: &str, delta: i64, ttl: Duration) -> Result<i64, EngineError> {
        self.inner.counter_add(name, delta, ttl).await
    }

    async fn active_set(&self, name: &str, members: &[String], window: Duration) -> Result<u64, EngineError> {
        self.inner.active_set(name, members, window).await
    }

    fn spans_nodes(&self) -> bool {
        self.inner.spans_nodes()
    }

    async fn put(&self, name: &str, version: u64, value: Bytes, ttl: Duration) -> Result<bool, EngineError> {
        self.inner.put(name, version, value, ttl).await
    }

    async fn take(&self, name: &str) -> Result<(u64, Option<Bytes>), EngineError> {
        self.inner.take(name).await
    }

    async fn set_retained(
        &self,
        key: &ChannelKey,
        epoch: &str,
        offset: u64,
        publication: Option<Publication>,
    ) -> Result<bool, EngineError> {
        self.inner.set_retained(key, epoch, offset, publication).await
    }

    async fn retained(&self, key: &ChannelKey) -> Result<Option<Publication>, EngineError> {
        self.inner.retained(key).await
    }

    async fn retained_in(
        &self,
        app: &str,
        limit: usize,
    ) -> Result<Vec<(ChannelName, Publication)>, EngineError> {
        self.inner.retained_in(app, limit).await
    }

    async fn feed_enable(&self, app: &str) -> Result<(), EngineError> {
        self.inner.feed_enable(app).await
    }

    async fn feed_disable(&self, app: &str) -> Result<(), EngineError> {
        self.inner.feed_disable(app).await
    }

    async fn feed_client(
        &self,
        app: &str,
        record: tributary_engine::FeedRecord,
    ) -> Result<bool, EngineError> {
        self.inner.feed_client(app, record).await
    }

    async fn feed_read(
        &self,
        app: &str,
        after: &str,
        limit: usize,
    ) -> Result<tributary_engine::FeedPage, EngineError> {
        self.inner.feed_read(app, after, limit).await
    }

    async fn ready(&self) -> Result<(), EngineError> {
        self.inner.ready().await
    }
}
