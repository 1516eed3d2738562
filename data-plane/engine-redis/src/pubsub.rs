//! The node's pub/sub subscriptions: held by local subscribe calls (reference counted), and
//! kept alive and made again after the connection drops.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{RwLock, Weak};
use std::time::Duration;

use futures::StreamExt;

use tributary_engine::{ChannelKey, EngineError};

use crate::connection::Conn;
use crate::routes::{Feed, Route, lock_read, lock_write};
use crate::{Inner, unavailable};

/// Keeps the pub/sub connection alive: pings it every few seconds (a half-open socket sends no
/// disconnection), and whenever it dropped, reconnects with backoff, subscribes every routed
/// channel and the control channel again, and only then tells the sink that the subscribers of
/// those channels may have missed publications.
pub(crate) async fn keep_pubsub(inner: Weak<Inner>) {
    loop {
        let Some(routes) = inner.upgrade().map(|i| i.routes.clone()) else { return };
        let notified = tokio::select! {
            _ = routes.lost.notified() => true,
            _ = tokio::time::sleep(Duration::from_secs(5)) => false,
        };
        drop(routes);
        let Some(engine) = inner.upgrade() else { return };
        let moved = std::mem::take(&mut *engine.routes.moved.lock().unwrap_or_else(|p| p.into_inner()));
        let healthy = if !engine.routes.delivering.load(Ordering::Acquire) {
            false
        } else if !moved.is_empty() {
            // Only the channels whose slot moved: the rest of the node is unaffected.
            engine.subscribe_again(moved).await
        } else {
            notified || engine.ping_pubsub().await
        };
        if healthy {
            continue;
        }
        engine.routes.delivering.store(false, Ordering::Release);
        drop(engine);
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(engine) = inner.upgrade() else { return };
            let mut channels: Vec<String> = lock_read(&engine.routes.channels).keys().cloned().collect();
            channels.extend(lock_read(&engine.routes.feeds).keys().cloned());
            channels.extend(engine.routes.control.get().cloned());
            if engine.subscribe_again(channels).await {
                engine.routes.delivering.store(true, Ordering::Release);
                break;
            }
            drop(engine);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// How many subscriptions are made at once when subscribing again.
const RESUBSCRIBE_CONCURRENCY: usize = 64;

impl Inner {
    async fn ping_pubsub(&self) -> bool {
        let pinged: Result<String, _> = redis::cmd("PING").query_async(&mut *self.pubsub.lock().await).await;
        pinged.is_ok()
    }

    /// Subscribes `channels` again, then tells the sink that their subscribers may have missed
    /// publications (told earlier, they could read history before delivery resumed), and has
    /// their presence looked at (joins may have been missed too). Returns false if Redis
    /// refused any.
    async fn subscribe_again(&self, channels: Vec<String>) -> bool {
        let pubsub = self.pubsub.lock().await;
        let conn: Conn = pubsub.clone();
        let results: Vec<redis::RedisResult<()>> = futures::stream::iter(channels.clone())
            .map(move |channel: String| {
                let mut conn = conn.clone();
                async move { conn.ssubscribe(&channel).await }
            })
            .buffer_unordered(RESUBSCRIBE_CONCURRENCY)
            .collect()
            .await;
        drop(pubsub);
        if results.iter().any(Result::is_err) {
            return false;
        }
        let keys: Vec<ChannelKey> = {
            let routes = lock_read(&self.routes.channels);
            channels
                .iter()
                .filter_map(|channel| routes.get(channel))
                .map(|route| {
                    route.upkeep_due.store(0, Ordering::Relaxed);
                    route.key.clone()
                })
                .collect()
        };
        let feeds = lock_read(&self.routes.feeds);
        let apps: Vec<&str> = channels.iter().filter_map(|c| feeds.get(c)).map(|f| &*f.app).collect();
        if !apps.is_empty() {
            // Wildcard subscriptions are live only: there is no history to recover them from.
            tracing::warn!(
                ?apps,
                "app feeds restored; wildcard subscribers missed what was published meanwhile"
            );
        }
        drop(feeds);
        let Some(sink) = self.routes.sink.get().and_then(Weak::upgrade) else { return true };
        tracing::info!(channels = keys.len(), "Redis pub/sub restored; subscribers will recover");
        for key in keys {
            sink.on_gap(&key);
        }
        true
    }
}

/// A pub/sub subscription held by local subscribe calls.
pub(crate) trait Held {
    /// How many calls hold it.
    fn holders(&mut self) -> &mut usize;
}

impl Held for Route {
    fn holders(&mut self) -> &mut usize {
        &mut self.holders
    }
}

impl Held for Feed {
    fn holders(&mut self) -> &mut usize {
        &mut self.holders
    }
}

impl Inner {
    /// Takes one hold of the pub/sub channel `name` of `held` (`make` makes its entry), and
    /// subscribes it in Redis with the first.
    pub(crate) async fn hold<T: Held>(
        &self,
        held: &RwLock<HashMap<String, T>>,
        name: String,
        make: impl FnOnce() -> T,
    ) -> Result<(), EngineError> {
        // One subscription change at a time, so that the count and Redis agree.
        let mut pubsub = self.pubsub.lock().await;
        let first = {
            let mut held = lock_write(held);
            let holders = held.entry(name.clone()).or_insert_with(make).holders();
            *holders += 1;
            *holders == 1
        };
        if first && let Err(err) = pubsub.ssubscribe(&name).await {
            let mut held = lock_write(held);
            if let Some(entry) = held.get_mut(&name) {
                *entry.holders() -= 1;
                if *entry.holders() == 0 {
                    held.remove(&name);
                }
            }
            return Err(unavailable(err));
        }
        Ok(())
    }

    /// Gives back one hold of `name` (see [`Inner::hold`]); the last unsubscribes it.
    pub(crate) async fn release<T: Held>(
        &self,
        held: &RwLock<HashMap<String, T>>,
        name: String,
    ) -> Result<(), EngineError> {
        let mut pubsub = self.pubsub.lock().await;
        let last = {
            let mut held = lock_write(held);
            let Some(entry) = held.get_mut(&name) else { return Ok(()) };
            *entry.holders() -= 1;
            let last = *entry.holders() == 0;
            if last {
                held.remove(&name);
            }
            last
        };
        if last {
            pubsub.sunsubscribe(&name).await.map_err(unavailable)?;
        }
        Ok(())
    }
}
