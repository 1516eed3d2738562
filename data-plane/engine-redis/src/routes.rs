//! Where the pub/sub connection's messages go: the channels and app feeds this node is
//! subscribed to in Redis, and the routing of each push to the node's sink.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};

use bytes::Bytes;
use redis::{PushInfo, PushKind, Value};
use tokio::time::Instant;
use tributary_engine::{Audience, ChannelKey, EngineSink};

use crate::wire::{self, Received};

/// A channel the node is subscribed to in Redis.
pub(crate) struct Route {
    pub(crate) key: ChannelKey,
    /// How many local subscribe calls hold it.
    pub(crate) holders: usize,
    /// When its upkeep is due next (see [`crate::upkeep::upkeep`]), in milliseconds of [`Routes::clock`].
    pub(crate) upkeep_due: AtomicU64,
}

/// An app whose feed the node is subscribed to.
pub(crate) struct Feed {
    pub(crate) app: Arc<str>,
    /// How many local subscribe calls hold it.
    pub(crate) holders: usize,
}

/// What the pub/sub connection's messages are routed by.
pub(crate) struct Routes {
    pub(crate) sink: OnceLock<Weak<dyn EngineSink>>,
    /// Redis channel → the channel it carries.
    pub(crate) channels: RwLock<HashMap<String, Route>>,
    /// Redis channel → the app whose feed it is.
    pub(crate) feeds: RwLock<HashMap<String, Feed>>,
    /// Whether apps have feeds (not on a Redis Cluster): if not, a channel's publications are
    /// for the node's wildcard subscribers too.
    pub(crate) feeds_enabled: bool,
    /// The start of the node's upkeep clock.
    pub(crate) clock: Instant,
    pub(crate) control: OnceLock<String>,
    /// Signalled when the pub/sub connection dropped, so it is re-established (with its
    /// subscriptions) at once rather than at the next subscription change, or when Redis
    /// dropped some subscriptions (see `moved`).
    pub(crate) lost: tokio::sync::Notify,
    /// Channels whose shard subscription Redis Cluster dropped (their slot moved), to be made
    /// again.
    pub(crate) moved: std::sync::Mutex<Vec<String>>,
    /// Whether the pub/sub connection is up (deliveries reach this node).
    pub(crate) delivering: AtomicBool,
}

impl Routes {
    pub(crate) fn new(feeds_enabled: bool) -> Self {
        Self {
            sink: OnceLock::new(),
            channels: RwLock::new(HashMap::new()),
            feeds: RwLock::new(HashMap::new()),
            feeds_enabled,
            clock: Instant::now(),
            control: OnceLock::new(),
            lost: tokio::sync::Notify::new(),
            moved: std::sync::Mutex::new(Vec::new()),
            delivering: AtomicBool::new(false),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }
}

pub(crate) fn lock_read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn lock_write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Routes {
    /// Called by the connection for every push (pub/sub message); must not block.
    pub(crate) fn on_push(&self, push: PushInfo) {
        if push.kind == PushKind::Disconnection {
            // Whatever was published while the connection was down never reaches this node;
            // its subscribers must recover from history.
            // Subscribers are told to recover once the node is subscribed again (see
            // `keep_pubsub`): told earlier, they could read history before delivery resumed.
            tracing::warn!("Redis pub/sub connection lost; reconnecting");
            self.delivering.store(false, Ordering::Release);
            self.lost.notify_one();
            return;
        }
        if push.kind == PushKind::SUnsubscribe {
            // Redis Cluster drops a node's shard subscriptions when their slot moves to another
            // node; one the engine still holds must be made again, and its subscribers recover.
            let Some(Value::BulkString(channel)) = push.data.first() else { return };
            let channel = String::from_utf8_lossy(channel).into_owned();
            let held = lock_read(&self.channels).contains_key(&channel)
                || lock_read(&self.feeds).contains_key(&channel)
                || self.control.get().is_some_and(|c| *c == channel);
            if held {
                tracing::warn!("Redis dropped a shard subscription (slot moved); subscribing again");
                self.moved.lock().unwrap_or_else(|p| p.into_inner()).push(channel);
                self.lost.notify_one();
            }
            return;
        }
        if push.kind != PushKind::SMessage {
            return;
        }
        let [Value::BulkString(channel), Value::BulkString(message)] = &push.data[..] else { return };
        let Some(sink) = self.sink.get().and_then(Weak::upgrade) else { return };
        let channel = String::from_utf8_lossy(channel);
        if self.control.get().is_some_and(|c| *c == channel) {
            sink.on_control(&Bytes::copy_from_slice(message));
            return;
        }
        let routed = lock_read(&self.channels).get(channel.as_ref()).map(|route| {
            if message.first() == Some(&b'j') {
                // A member joined: its expiry must be watched (the next upkeep learns it).
                route.upkeep_due.store(0, Ordering::Relaxed);
            }
            route.key.clone()
        });
        // Not under the routes' lock: delivery runs the whole hub.
        let Some(key) = routed else { return self.on_feed(&sink, &channel, message) };
        let audience = if self.feeds_enabled { Audience::Channel } else { Audience::All };
        match wire::decode_message(message) {
            Ok(Received::Publication(publication)) => sink.on_publication(&key, &publication, audience),
            Ok(Received::Presence(event)) => sink.on_presence(&key, &event),
            Ok(Received::AppPublication(..)) => tracing::warn!("dropped a feed message on a channel"),
            Err(err) => tracing::warn!(error = %err, "dropped an unreadable message"),
        }
    }

    /// Routes a message of an app's feed to the node's wildcard subscribers.
    pub(crate) fn on_feed(&self, sink: &Arc<dyn EngineSink>, feed: &str, message: &[u8]) {
        let Some(app) = lock_read(&self.feeds).get(feed).map(|feed| feed.app.clone()) else { return };
        match wire::decode_message(message) {
            Ok(Received::AppPublication(channel, publication)) => {
                sink.on_publication(&ChannelKey { app, channel }, &publication, Audience::Patterns)
            }
            Ok(_) => tracing::warn!("dropped a channel message on an app feed"),
            Err(err) => tracing::warn!(error = %err, "dropped an unreadable message"),
        }
    }
}
