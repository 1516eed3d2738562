//! The Redis engine: channels' offsets, history, idempotency keys and presence live in Redis, so
//! any number of relay nodes share them; publications reach every node subscribed to the
//! channel through Redis pub/sub.
//!
//! Every operation on a channel is one server-side script (see [`scripts`]), so offsets,
//! history, idempotency and delivery happen atomically. A node subscribes in Redis only to
//! channels with local subscribers (reference counted), on one dedicated connection whose
//! subscriptions are restored after a reconnect.
//!
//! When the pub/sub connection drops, publications may be missed while it reconnects, so the
//! node's subscribers of every subscribed channel are told to recover (see
//! [`EngineSink::on_gap`]).
//!
//! Wildcard subscribers need every channel of their app: a node with some subscribes to the
//! app's feed (see [`Engine::subscribe_app`]), on which the publish script repeats each
//! publication, in the same script (so in each channel's order), while any node listens.
//!
//! The same code serves one Redis server and a Redis Cluster (see [`connection`]): every key of
//! a channel shares one hash slot, and publications travel on sharded pub/sub. An app's feed
//! would span slots, so a cluster has none: there a wildcard subscriber gets the channels that
//! some client of its node subscribed to by name.

pub mod connection;
mod feed;
mod names;
mod occupancy;
mod publish;
mod pubsub;
mod retained;
mod routes;
mod scripts;
mod upkeep;
mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;
use tokio::sync::mpsc::error::TrySendError;
use tributary_engine::{
    ChannelKey, Engine, EngineError, EngineSink, FeedPage, FeedRetention, HistoryPage, HistoryQuery,
    NewMessage, Occupancy, PresenceOptions, PublishOptions, PublishOutcome, StreamOptions,
};
use tributary_protocol::frame::{Direction, MemberInfo};
use tributary_protocol::{ChannelName, Publication};

use connection::{Conn, Target};
use routes::{Feed, Route, Routes};
use scripts::Scripts;

/// Settings of the Redis engine.
#[derive(Clone)]
pub struct RedisEngineConfig {
    /// `redis://host:port/db`, or `redis+cluster://host:port,host:port` for a Redis Cluster
    /// (see [`Target`]).
    pub url: String,
    /// Prefix of every key and channel, so that several deployments can share one Redis.
    pub prefix: String,
    /// A channel with no history left and no publish for this long loses its epoch.
    pub stream_idle_ttl: Duration,
    /// How long a command may take before it fails.
    pub command_timeout: Duration,
    /// How often the node looks for subscribed channels whose upkeep is due (a presence entry
    /// expired, so its leave is announced; or the epoch needs keeping).
    pub presence_sweep: Duration,
    /// PEM certificates of the authority that signed Redis's TLS certificate, for `rediss` URLs
    /// and a private authority (the system's trusted roots otherwise).
    pub tls_ca_pem: Option<Vec<u8>>,
    /// How many connections carry commands. A channel's commands always take the same one (so
    /// a client's pipelined publishes keep their order); more spread the I/O of a busy node
    /// over more tasks. At least 1.
    pub command_connections: usize,
    /// Keep epochs across Redis restarts and failovers. Only safe when Redis cannot lose an
    /// acknowledged write (AOF with `appendfsync always`, no failover to an asynchronous
    /// replica); otherwise every channel starts a new epoch after a restart, which is the truth.
    pub trust_restarts: bool,
    /// How much of each app's durable feed is kept.
    pub feed_retention: FeedRetention,
    /// How often the node tells Redis which channels it holds in apps with a durable feed
    /// (so channels are written as occupied and vacated): the changes of this long are
    /// gathered, and a node silent for 15 of these is let go of.
    pub occupancy_tick: Duration,
}

impl std::fmt::Debug for RedisEngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("RedisEngineConfig")
            .field("url", &connection::redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("stream_idle_ttl", &self.stream_idle_ttl)
            .field("command_timeout", &self.command_timeout)
            .field("presence_sweep", &self.presence_sweep)
            .field("command_connections", &self.command_connections)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(Vec::len))
            .field("trust_restarts", &self.trust_restarts)
            .field("feed_retention", &self.feed_retention)
            .field("occupancy_tick", &self.occupancy_tick)
            .finish()
    }
}

impl RedisEngineConfig {
    /// Settings for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "trb".into(),
            stream_idle_ttl: Duration::from_secs(24 * 3600),
            command_timeout: Duration::from_secs(2),
            presence_sweep: Duration::from_millis(500),
            command_connections: 4,
            tls_ca_pem: None,
            trust_restarts: false,
            feed_retention: FeedRetention::default(),
            occupancy_tick: occupancy::DEFAULT_TICK,
        }
    }
}

/// The Redis engine.
pub struct RedisEngine {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisEngineConfig,
    /// The command connections (see [`RedisEngineConfig::command_connections`]).
    commands: Vec<Conn>,
    /// The queue of each command connection's publish writer (see [`publish`]).
    publishers: Vec<tokio::sync::mpsc::Sender<publish::Pending>>,
    pubsub: tokio::sync::Mutex<Conn>,
    scripts: Scripts,
    routes: Arc<Routes>,
    /// Which apps have a durable feed, as this node last looked (see `feed::FeedApps`).
    feed_apps: feed::FeedApps,
    /// This node's id in the apps' occupancy (see [`occupancy`]): new for every engine.
    node: String,
}

pub(crate) fn unavailable(err: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(err.to_string())
}

pub(crate) fn fresh_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..10).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

impl RedisEngine {
    /// Connects (the command connections, one for pub/sub) and starts the channels' upkeep.
    pub async fn connect(config: RedisEngineConfig) -> Result<Self, EngineError> {
        let target = Target::parse(&config.url).map_err(EngineError::Unavailable)?;
        let mut commands = Vec::new();
        for _ in 0..config.command_connections.max(1) {
            let conn = Conn::open(&target, config.command_timeout, config.tls_ca_pem.as_deref(), None);
            commands.push(conn.await.map_err(unavailable)?);
        }
        let routes = Arc::new(Routes::new(matches!(target, Target::Single(_))));
        let pushed = routes.clone();
        let mut pubsub = Conn::open(
            &target,
            config.command_timeout,
            config.tls_ca_pem.as_deref(),
            Some(Box::new(move |push| pushed.on_push(push))),
        )
        .await
        .map_err(unavailable)?;
        let control = format!("{}:control", config.prefix);
        pubsub.ssubscribe(&control).await.map_err(unavailable)?;
        let _ = routes.control.set(control);
        routes.delivering.store(true, Ordering::Release);
        let (publishers, queues): (Vec<_>, Vec<_>) =
            commands.iter().map(|_| tokio::sync::mpsc::channel(publish::QUEUE_CAPACITY)).unzip();
        let inner = Arc::new(Inner {
            config,
            commands,
            publishers,
            pubsub: tokio::sync::Mutex::new(pubsub),
            scripts: Scripts::new(),
            routes,
            feed_apps: feed::FeedApps::default(),
            node: format!("{}{}", fresh_epoch(), fresh_epoch()),
        });
        for (conn, queue) in inner.commands.iter().zip(queues) {
            publish::spawn_writer(Arc::downgrade(&inner), conn.clone(), queue);
        }
        tokio::spawn(upkeep::upkeep(Arc::downgrade(&inner)));
        tokio::spawn(pubsub::keep_pubsub(Arc::downgrade(&inner)));
        if inner.routes.feeds_enabled {
            tokio::spawn(occupancy::keep_occupancy(Arc::downgrade(&inner)));
        }
        Ok(Self { inner })
    }
}

fn parse_entries(
    entries: Vec<Value>,
    epoch: &Arc<str>,
) -> Result<Vec<tributary_protocol::Publication>, EngineError> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else { return Err(unavailable("history entry")) };
        let [Value::BulkString(id), Value::Array(fields)] = &parts[..] else {
            return Err(unavailable("history entry"));
        };
        let offset = std::str::from_utf8(id)
            .ok()
            .and_then(|id| id.strip_prefix("0-"))
            .and_then(|o| o.parse().ok())
            .ok_or_else(|| unavailable("history id"))?;
        let [_, Value::BulkString(ts), _, Value::BulkString(body)] = &fields[..] else {
            return Err(unavailable("history fields"));
        };
        let ts = std::str::from_utf8(ts).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
        let body = std::str::from_utf8(body).map_err(unavailable)?;
        out.push(wire::decode_body(body, epoch, offset, ts).map_err(unavailable)?);
    }
    Ok(out)
}

#[async_trait]
impl Engine for RedisEngine {
    fn set_sink(&self, sink: Weak<dyn EngineSink>) {
        let _ = self.inner.routes.sink.set(sink);
    }

    async fn publish(
        &self,
        key: &ChannelKey,
        message: NewMessage,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        let inner = &self.inner;
        let body = wire::encode_body(&message).map_err(unavailable)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = publish::Pending {
            key: key.clone(),
            body,
            stream: options.stream,
            idempotency_key: options.idempotency_key.clone(),
            window_secs: options.idempotency_window.as_secs().max(1),
            reply,
        };
        // Queued at once, without an await (which may yield to the runtime's budget and let a
        // publish made later be queued first), so publishes are stored in the order they were
        // made. A full queue (Redis far behind) refuses rather than waits, for the same reason.
        inner.publishers[inner.connection_of(key)].try_send(pending).map_err(|err| match err {
            TrySendError::Full(_) => unavailable("too many publishes are waiting for Redis"),
            TrySendError::Closed(_) => EngineError::Closed,
        })?;
        answer.await.map_err(|_| EngineError::Closed)?
    }

    async fn subscribe(&self, key: &ChannelKey) -> Result<(), EngineError> {
        let inner = &self.inner;
        let route = || Route { key: key.clone(), holders: 0, upkeep_due: AtomicU64::new(0) };
        inner.hold(&inner.routes.channels, inner.names(key).pubsub, route).await
    }

    async fn unsubscribe(&self, key: &ChannelKey) -> Result<(), EngineError> {
        let inner = &self.inner;
        inner.release(&inner.routes.channels, inner.names(key).pubsub).await
    }

    async fn subscribe_app(&self, app: &str) -> Result<(), EngineError> {
        let inner = &self.inner;
        let feed = inner.feed(app);
        if feed.is_empty() {
            return Ok(());
        }
        inner.hold(&inner.routes.feeds, feed, || Feed { app: Arc::from(app), holders: 0 }).await
    }

    async fn unsubscribe_app(&self, app: &str) -> Result<(), EngineError> {
        let inner = &self.inner;
        let feed = inner.feed(app);
        if feed.is_empty() {
            return Ok(());
        }
        inner.release(&inner.routes.feeds, feed).await
    }

    async fn history(
        &self,
        key: &ChannelKey,
        query: HistoryQuery,
        stream: StreamOptions,
    ) -> Result<HistoryPage, EngineError> {
        let inner = &self.inner;
        let names = inner.names(key);
        // Nothing is before offset 0 or after the largest one; Redis would refuse those bounds.
        let empty = matches!(
            (query.direction, query.since),
            (Direction::Backward, Some(0)) | (Direction::Forward, Some(u64::MAX))
        );
        let limit = if empty { 0 } else { query.limit };
        let (epoch, top, oldest, entries): (String, u64, i64, Vec<Value>) = inner
            .scripts
            .history
            .key(&names.meta)
            .key(&names.stream)
            .arg(fresh_epoch())
            .arg(if inner.config.trust_restarts { "1" } else { "0" })
            .arg(stream.history_size)
            .arg(stream.history_ttl.as_millis() as u64)
            .arg(if query.direction == Direction::Forward { "f" } else { "b" })
            .arg(query.since.map(|s| s.to_string()).unwrap_or_default())
            .arg(limit)
            .arg(inner.meta_ttl_ms(stream))
            .invoke_async(&mut inner.commands_for(key))
            .await
            .map_err(unavailable)?;
        let epoch: Arc<str> = Arc::from(epoch);
        let publications = parse_entries(entries, &epoch)?;
        Ok(HistoryPage { epoch, top_offset: top, oldest_offset: u64::try_from(oldest).ok(), publications })
    }

    async fn presence_join(
        &self,
        key: &ChannelKey,
        member: MemberInfo,
        options: PresenceOptions,
    ) -> Result<bool, EngineError> {
        let inner = &self.inner;
        let names = inner.names(key);
        let record =
            format!("{}{}", u8::from(options.announce), wire::encode_member(&member).map_err(unavailable)?);
        let mut invocation = names.presence_call(&inner.scripts.presence_join);
        invocation
            .arg(&*member.conn_id)
            .arg(&*member.client_id)
            .arg(record)
            .arg(options.ttl.as_millis() as u64)
            .arg(if member.state.is_some() { "1" } else { "0" })
            .arg(&names.pubsub);
        names.with_feed(&mut invocation);
        let joined: u8 = invocation.invoke_async(&mut inner.commands_for(key)).await.map_err(unavailable)?;
        Ok(joined == 1)
    }

    async fn presence_update(&self, key: &ChannelKey, member: MemberInfo) -> Result<bool, EngineError> {
        let inner = &self.inner;
        let names = inner.names(key);
        let mut invocation = names.presence_call(&inner.scripts.presence_update);
        invocation
            .arg(&*member.conn_id)
            .arg(wire::encode_member(&member).map_err(unavailable)?)
            .arg(&*member.client_id)
            .arg(&names.pubsub);
        names.with_feed(&mut invocation);
        let updated: u8 = invocation.invoke_async(&mut inner.commands_for(key)).await.map_err(unavailable)?;
        Ok(updated == 1)
    }

    async fn presence_leave(&self, key: &ChannelKey, conn_id: &str) -> Result<bool, EngineError> {
        let inner = &self.inner;
        let names = inner.names(key);
        let mut invocation = names.presence_call(&inner.scripts.presence_leave);
        invocation.arg(conn_id).arg(&names.pubsub);
        names.with_feed(&mut invocation);
        let left: u8 = invocation.invoke_async(&mut inner.commands_for(key)).await.map_err(unavailable)?;
        Ok(left == 1)
    }

    async fn presence(&self, key: &ChannelKey) -> Result<Vec<MemberInfo>, EngineError> {
        Ok(self.inner.presence_read(key).await?.0)
    }

    async fn occupancy(&self, key: &ChannelKey) -> Result<Occupancy, EngineError> {
        Ok(self.inner.presence_read(key).await?.1)
    }

    async fn ready(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        if !inner.routes.delivering.load(Ordering::Acquire) {
            return Err(EngineError::Unavailable("Redis pub/sub connection is down".into()));
        }
        let _: String =
            redis::cmd("PING").query_async(&mut inner.commands[0].clone()).await.map_err(unavailable)?;
        Ok(())
    }

    async fn active_set(&self, name: &str, members: &[String], window: Duration) -> Result<u64, EngineError> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let inner = &self.inner;
        let key = format!("{}:as:{name}", inner.config.prefix);
        let index = BuildHasherDefault::<DefaultHasher>::default().hash_one(&key) as usize;
        let window_ms = window.as_millis().max(1) as u64;
        // The nodes' clocks mark the members; they need only agree to within the window.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !members.is_empty() {
            let zadd = pipe.cmd("ZADD").arg(&key);
            for member in members {
                zadd.arg(now_ms).arg(member);
            }
            zadd.ignore();
        }
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({}", now_ms.saturating_sub(window_ms)))
            .ignore()
            .cmd("ZCARD")
            .arg(&key)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(window_ms * 2)
            .ignore();
        let (count,): (u64,) = pipe
            .query_async(&mut inner.commands[index % inner.commands.len()].clone())
            .await
            .map_err(unavailable)?;
        Ok(count)
    }

    async fn counter_add(&self, name: &str, delta: i64, ttl: Duration) -> Result<i64, EngineError> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let inner = &self.inner;
        let key = format!("{}:n:{name}", inner.config.prefix);
        let index = BuildHasherDefault::<DefaultHasher>::default().hash_one(&key) as usize;
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let (value, _): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("INCRBY")
            .arg(&key)
            .arg(delta)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .query_async(&mut inner.commands[index % inner.commands.len()].clone())
            .await
            .map_err(unavailable)?;
        Ok(value)
    }

    fn spans_nodes(&self) -> bool {
        true
    }

    async fn put(&self, name: &str, version: u64, value: Bytes, ttl: Duration) -> Result<bool, EngineError> {
        let inner = &self.inner;
        let key = format!("{}:kv:{name}", inner.config.prefix);
        let mut invocation = inner.scripts.put.key(&key);
        invocation.arg(version).arg(value.as_ref()).arg(ttl.as_millis().max(1) as u64);
        let stored: i64 =
            invocation.invoke_async(&mut inner.commands_for_name(&key)).await.map_err(unavailable)?;
        Ok(stored == 1)
    }

    async fn take(&self, name: &str) -> Result<(u64, Option<Bytes>), EngineError> {
        let inner = &self.inner;
        let key = format!("{}:kv:{name}", inner.config.prefix);
        let taken: Vec<Value> = inner
            .scripts
            .take
            .key(&key)
            .invoke_async(&mut inner.commands_for_name(&key))
            .await
            .map_err(unavailable)?;
        match &taken[..] {
            [Value::Int(version)] => Ok((*version as u64, None)),
            [Value::Int(version), Value::BulkString(value)] => {
                Ok((*version as u64, Some(Bytes::copy_from_slice(value))))
            }
            _ => Err(unavailable("a stored value's reply")),
        }
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

    async fn feed_read(&self, app: &str, after: &str, limit: usize) -> Result<FeedPage, EngineError> {
        self.inner.feed_read(app, after, limit).await
    }

    async fn feed_upkeep(&self, app: &str) -> Result<(), EngineError> {
        self.inner.feed_sweep(app).await
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

    async fn publish_control(&self, event: Bytes) -> Result<usize, EngineError> {
        let inner = &self.inner;
        let channel = inner.routes.control.get().cloned().unwrap_or_default();
        // SPUBLISH answers how many subscribers got it: one per node.
        let reached: i64 = redis::cmd("SPUBLISH")
            .arg(channel)
            .arg(event.as_ref())
            .query_async(&mut inner.commands[0].clone())
            .await
            .map_err(unavailable)?;
        Ok(usize::try_from(reached).unwrap_or(0))
    }
}
