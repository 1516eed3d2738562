//! The engine contract.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tributary_protocol::frame::{Direction, MemberInfo, PresenceEvent};
use tributary_protocol::{ChannelName, Payload, Publication};

use crate::feed::FeedPage;

/// A channel within an app. Apps never share channels: the same name in two apps is two channels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    /// The app id.
    pub app: Arc<str>,
    /// The channel name.
    pub channel: ChannelName,
}

impl ChannelKey {
    /// Builds the key of `channel` in `app`.
    pub fn new(app: impl Into<Arc<str>>, channel: ChannelName) -> Self {
        Self { app: app.into(), channel }
    }
}

/// History retention of a channel, from its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// How many messages history keeps (0: none, but offsets still advance).
    pub history_size: usize,
    /// How long a message stays in history.
    pub history_ttl: Duration,
}

/// Options of one publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Retention of the channel.
    pub stream: StreamOptions,
    /// A retried publish with the same key on the same channel within `idempotency_window` is
    /// stored once; the retry gets the original offset back.
    pub idempotency_key: Option<String>,
    /// How long idempotency keys are remembered.
    pub idempotency_window: Duration,
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The payload.
    pub payload: Payload,
    /// The publisher's client id, when a client published.
    pub client_id: Option<Arc<str>>,
    /// An opaque marker passed through to subscribers.
    pub encoding: Option<Arc<str>>,
    /// Protocol properties passed through to subscribers (see [`Publication::meta`]).
    pub meta: Option<Bytes>,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The offset assigned (for a duplicate: the original publication's offset).
    pub offset: u64,
    /// When it was stored, milliseconds since the Unix epoch (for a duplicate: the original time).
    pub ts_ms: u64,
    /// Whether this was a retry of an already stored publish (nothing was stored or delivered).
    pub duplicate: bool,
}

/// A history read.
#[derive(Debug, Clone, Copy)]
pub struct HistoryQuery {
    /// Start after (forward) or before (backward) this offset; from the window's end when absent.
    pub since: Option<u64>,
    /// Which way to read.
    pub direction: Direction,
    /// At most this many publications.
    pub limit: usize,
}

/// A page of history and the stream's state when it was read.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The stream's current epoch.
    pub epoch: Arc<str>,
    /// The offset of the newest publication ever stored in this epoch (0 if none).
    pub top_offset: u64,
    /// The offset of the oldest publication still in history, if any.
    pub oldest_offset: Option<u64>,
    /// The publications, in the requested direction.
    pub publications: Vec<Publication>,
}

impl HistoryPage {
    /// Returns whether a client at `(epoch, offset)` can get everything it missed from history:
    /// same epoch, not ahead of the stream, and nothing after `offset` has been trimmed.
    pub fn covers(&self, epoch: &str, offset: u64) -> bool {
        if *self.epoch != *epoch || offset > self.top_offset {
            return false;
        }
        offset == self.top_offset || self.oldest_offset.is_some_and(|oldest| oldest <= offset + 1)
    }
}

/// Presence options of a channel, from its namespace.
#[derive(Debug, Clone, Copy)]
pub struct PresenceOptions {
    /// An entry not refreshed within this time is removed (and a leave is announced).
    pub ttl: Duration,
    /// Whether join and leave events are delivered to subscribers.
    pub announce: bool,
}

/// Presence counts of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Occupancy {
    /// Distinct client ids present.
    pub members: usize,
    /// Connections present (one client id may have several).
    pub connections: usize,
}

/// An engine failure. Engines map their backend errors into these.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backend could not be reached or failed; the operation may be retried.
    #[error("engine backend unavailable: {0}")]
    Unavailable(String),
    /// The engine was shut down.
    #[error("engine is closed")]
    Closed,
    /// This engine, as set up, cannot do what was asked.
    #[error("not supported by this engine: {0}")]
    Unsupported(&'static str),
}

impl EngineError {
    /// Returns the client-facing error code.
    pub fn code(&self) -> tributary_protocol::ErrorCode {
        tributary_protocol::ErrorCode::Unavailable
    }
}

/// Which of a node's local subscribers a delivered publication is for.
///
/// An engine whose nodes see only the channels they subscribed to delivers a channel's
/// publications to its own subscribers, and the publications of every channel of an app to the
/// app's wildcard subscribers on a feed of its own (see [`Engine::subscribe_app`]): a wildcard
/// subscriber must not get a publication twice when the node also subscribed to its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The channel's own subscribers and the app's wildcard subscribers.
    All,
    /// The channel's own subscribers only.
    Channel,
    /// The app's wildcard subscribers only.
    Patterns,
}

impl Audience {
    /// Whether the channel's own subscribers get it.
    pub fn channel(self) -> bool {
        self != Self::Patterns
    }

    /// Whether the app's wildcard subscribers get it.
    pub fn patterns(self) -> bool {
        self != Self::Channel
    }
}

/// The node-side receiver of what an engine delivers. Calls must not block: they run on the
/// engine's publish path (the hub only pushes into bounded queues).
pub trait EngineSink: Send + Sync {
    /// A publication for `audience`: of a channel this node subscribed to, or of an app it
    /// subscribed to. Per channel and audience, calls arrive in offset order, one at a time.
    fn on_publication(&self, key: &ChannelKey, publication: &Publication, audience: Audience);
    /// A presence event on a channel this node subscribed to.
    fn on_presence(&self, key: &ChannelKey, event: &PresenceEvent);
    /// A node-wide control event (revocations, disconnects), delivered to every node.
    fn on_control(&self, event: &Bytes);
    /// Publications of `key` may have been missed (the engine's delivery connection dropped):
    /// the node's subscribers must recover from history, or they would see a silent gap.
    fn on_gap(&self, key: &ChannelKey) {
        let _ = key;
    }
}

/// Channels: offsets, history, presence and delivery to every node's [`EngineSink`].
///
/// Guarantees every implementation must give (the [`conformance`](crate::conformance) suite
/// checks each one):
/// - per channel, offsets start at 1 and strictly increase within an epoch; the epoch changes
///   only when history is lost;
/// - after [`Engine::subscribe`] returns, every later publication on that channel reaches the
///   sink exactly once, in offset order;
/// - a publish with an idempotency key seen within the window is not stored again and returns
///   the original position with `duplicate: true`;
/// - history returns exactly the stored publications still within size and TTL;
/// - presence counts a client id once however many connections it has; join is announced for
///   its first connection and leave for its last, including when entries expire.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Sets the sink that receives publications. Called once, before anything else; the engine
    /// keeps only a weak reference so that dropping the node frees it.
    fn set_sink(&self, sink: Weak<dyn EngineSink>);

    /// Stores and delivers a message. The publish takes its place in the channel's order on
    /// the future's first poll, before anything that may yield: publishes whose futures are
    /// first polled one after another (a client's pipelined publishes) get offsets in that
    /// order, however their round trips overlap.
    async fn publish(
        &self,
        key: &ChannelKey,
        message: NewMessage,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError>;

    /// Starts delivering the channel's publications to this node's sink; returns once delivery
    /// is live. Calls are counted (one per local subscription): the node stays subscribed while
    /// more subscribes than unsubscribes were made. While a node is subscribed, the channel's
    /// stream (and so its epoch) is kept even when idle.
    async fn subscribe(&self, key: &ChannelKey) -> Result<(), EngineError>;

    /// Undoes one [`Engine::subscribe`]; the last one stops delivery to this node's sink.
    async fn unsubscribe(&self, key: &ChannelKey) -> Result<(), EngineError>;

    /// Starts delivering the publications of every channel of `app` to this node's sink for
    /// its wildcard subscribers ([`Audience::Patterns`] or [`Audience::All`]); returns once
    /// delivery is live. Counted like [`Engine::subscribe`]. An engine whose sink sees every
    /// publication anyway (one node) has nothing to do.
    async fn subscribe_app(&self, app: &str) -> Result<(), EngineError> {
        let _ = app;
        Ok(())
    }

    /// Undoes one [`Engine::subscribe_app`].
    async fn unsubscribe_app(&self, app: &str) -> Result<(), EngineError> {
        let _ = app;
        Ok(())
    }

    /// Reads history. Creates the stream's epoch if the channel has none yet, so that a
    /// position read now stays valid for the next publish.
    async fn history(
        &self,
        key: &ChannelKey,
        query: HistoryQuery,
        stream: StreamOptions,
    ) -> Result<HistoryPage, EngineError>;

    /// Adds or refreshes a connection's presence entry; returns whether this was the client
    /// id's first connection (a join, announced when `options.announce`).
    async fn presence_join(
        &self,
        key: &ChannelKey,
        member: MemberInfo,
        options: PresenceOptions,
    ) -> Result<bool, EngineError>;

    /// Replaces a present connection's state and announces the update; returns false (and
    /// announces nothing) when the connection is not present.
    async fn presence_update(&self, key: &ChannelKey, member: MemberInfo) -> Result<bool, EngineError>;

    /// Removes a connection's presence entry; returns whether it was the client id's last
    /// connection (a leave, announced when the entry was joined with `announce`).
    async fn presence_leave(&self, key: &ChannelKey, conn_id: &str) -> Result<bool, EngineError>;

    /// Returns the present connections.
    async fn presence(&self, key: &ChannelKey) -> Result<Vec<MemberInfo>, EngineError>;

    /// Returns the presence counts.
    async fn occupancy(&self, key: &ChannelKey) -> Result<Occupancy, EngineError>;

    /// Delivers a control event to every node's sink; returns how many nodes it reached, the
    /// sender's included (so a node can tell whether any other node heard it).
    async fn publish_control(&self, event: Bytes) -> Result<usize, EngineError>;

    /// Adds `delta` to the counter `name` shared by every node (a new counter starts at 0)
    /// and returns its new value; the counter is forgotten `ttl` after its last change.
    /// Limits that must hold across nodes (a tenant's publish rate, connections, monthly
    /// messages) are counted with these.
    async fn counter_add(&self, name: &str, delta: i64, ttl: Duration) -> Result<i64, EngineError>;

    /// Marks `members` of the set `name` shared by every node as seen now, forgets the members
    /// no node has marked within `window`, and returns how many members the set has: what
    /// the nodes saw lately, each counted once (a tenant's channels with subscribers).
    async fn active_set(&self, name: &str, members: &[String], window: Duration) -> Result<u64, EngineError>;

    /// Whether other nodes share this engine (so what one node stores, another may need).
    fn spans_nodes(&self) -> bool {
        false
    }

    /// Stores `value` under `name`, shared by every node, for `ttl`: state that must outlive the
    /// node that made it (an MQTT session while its client is away). Versions order the
    /// writers: a value is stored only if `version` is above that of the value stored, or of
    /// the one last taken (so a late write of an older state never replaces a newer one).
    /// Returns whether it was stored.
    async fn put(&self, name: &str, version: u64, value: Bytes, ttl: Duration) -> Result<bool, EngineError>;

    /// Takes what is stored under `name`: of two nodes taking it at once, one gets it. Returns
    /// the version stored or last taken (0: none) and the value, if one is stored; the version
    /// is remembered until its TTL ends.
    async fn take(&self, name: &str) -> Result<(u64, Option<Bytes>), EngineError>;

    /// Sets the retained message of a channel (its last value, which a new MQTT subscriber gets
    /// at once), or clears it with `None`, as the message at `offset` of stream `epoch` asked.
    /// A change older than the one in place (the same stream, a lower offset) is ignored, so
    /// concurrent publishers leave the newest; returns whether it was applied. Retained
    /// messages outlive history: they stay until replaced or cleared.
    async fn set_retained(
        &self,
        key: &ChannelKey,
        epoch: &str,
        offset: u64,
        publication: Option<Publication>,
    ) -> Result<bool, EngineError>;

    /// Returns the retained message of a channel.
    async fn retained(&self, key: &ChannelKey) -> Result<Option<Publication>, EngineError>;

    /// Returns the retained messages of every channel of `app` (for wildcard subscriptions),
    /// at most `limit` of them.
    async fn retained_in(
        &self,
        app: &str,
        limit: usize,
    ) -> Result<Vec<(ChannelName, Publication)>, EngineError>;

    /// Starts keeping a durable feed for `app` (see [`crate::feed`]): from the moment this
    /// returns, every message stored and every presence change on any node, in any channel of
    /// the app, is also written to the app's feed. Calling it again changes nothing.
    ///
    /// Channels becoming occupied and vacated (counting every node's subscribe calls) are
    /// written too, and the channels already occupied when the feed starts are written as
    /// occupied: an engine shared by nodes may gather them for a moment (a channel vacated and
    /// occupied again within it is written as neither).
    async fn feed_enable(&self, app: &str) -> Result<(), EngineError>;

    /// Writes a connection's lifecycle event ([`FeedRecord::ClientConnected`] or
    /// [`FeedRecord::ClientDisconnected`]) to `app`'s feed if it has one; returns whether it did.
    /// Cheap for an app without a feed; on an engine shared by nodes, a feed turned on is seen
    /// within a second.
    async fn feed_client(&self, app: &str, record: crate::feed::FeedRecord) -> Result<bool, EngineError>;

    /// Stops keeping `app`'s feed and forgets what it held.
    async fn feed_disable(&self, app: &str) -> Result<(), EngineError>;

    /// Reads up to `limit` entries of `app`'s feed after `after` (a position an earlier read
    /// returned, or `""` for the oldest entry kept). A position from before the feed was lost
    /// or trimmed reads from the oldest entry kept, with `gap` set.
    async fn feed_read(&self, app: &str, after: &str, limit: usize) -> Result<FeedPage, EngineError>;

    /// Does what `app`'s feed needs of its reader, called by the one worker reading it about
    /// once a second: on an engine shared by nodes, the channels held only by nodes that
    /// stopped (killed, cut off) are written as vacated once those nodes' leases end.
    async fn feed_upkeep(&self, app: &str) -> Result<(), EngineError> {
        let _ = app;
        Ok(())
    }

    /// Returns whether the engine can serve now (its backend reachable, deliveries flowing);
    /// a node that is not ready should get no new clients from its load balancer.
    async fn ready(&self) -> Result<(), EngineError> {
        Ok(())
    }
}
