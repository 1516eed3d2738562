//! Apps' durable feeds on Redis: a stream per app (`<prefix>:fd:{app}`), written by the same
//! script that stores a message or changes presence, for apps whose marker key
//! (`<prefix>:fe:{app}`) exists. A position is the stream entry's id (`ms-seq`), which Redis
//! keeps increasing for the stream's whole life. Not on a Redis Cluster: the feed's keys are in
//! the app's slot, and a channel's scripts run in the channel's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tributary_engine::{ChannelKey, ClientInfo, EngineError, FeedEntry, FeedPage, FeedRecord};
use tributary_protocol::ChannelName;

use crate::{Inner, unavailable, wire};

/// How long a node trusts what it last saw of an app's feed (on or off) before a connection's
/// event makes it look again.
const FEED_APPS_TTL: Duration = Duration::from_secs(1);

/// Which apps have a durable feed, as this node last looked: connection events (unlike
/// messages, which the publish script checks itself) would otherwise cost every connect and
/// disconnect of every app a round trip.
#[derive(Default)]
pub(crate) struct FeedApps {
    seen: Mutex<HashMap<String, (bool, Instant)>>,
}

impl FeedApps {
    fn get(&self, app: &str) -> Option<bool> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(app).filter(|(_, at)| at.elapsed() < FEED_APPS_TTL).map(|(on, _)| *on)
    }

    fn set(&self, app: &str, on: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Forgotten in bulk: at most one entry per app that connected within the TTL matters.
        if seen.len() > 100_000 {
            seen.retain(|_, (_, at)| at.elapsed() < FEED_APPS_TTL);
        }
        seen.insert(app.to_owned(), (on, Instant::now()));
    }
}

/// An entry as `XRANGE` returns it: its id and its fields.
type RawEntry = (String, Vec<(String, String)>);

impl Inner {
    /// The durable feed's stream and marker keys of `app`.
    pub(crate) fn durable_feed_keys(&self, app: &str) -> (String, String) {
        let p = &self.config.prefix;
        (format!("{p}:fd:{{{app}}}"), format!("{p}:fe:{{{app}}}"))
    }

    /// The durable feed as a channel's scripts take it (see `Names::durable`).
    pub(crate) fn durable_feed_args(&self, key: &ChannelKey) -> [String; 4] {
        if !self.routes.feeds_enabled {
            return Default::default();
        }
        let (stream, marker) = self.durable_feed_keys(&key.app);
        [
            stream,
            marker,
            key.channel.as_str().to_owned(),
            self.config.feed_retention.max_len.max(1).to_string(),
        ]
    }

    pub(crate) async fn feed_enable(&self, app: &str) -> Result<(), EngineError> {
        if !self.routes.feeds_enabled {
            return Err(EngineError::Unsupported(
                "durable app feeds need a single Redis, not a Redis Cluster",
            ));
        }
        let (_, marker) = self.durable_feed_keys(app);
        let mut conn = self.commands_for_name(&marker);
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&marker)
            .arg(1)
            .ignore()
            .cmd("SADD")
            .arg(self.feeds_key())
            .arg(app)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        self.feed_apps.set(app, true);
        Ok(())
    }

    pub(crate) async fn feed_client(&self, app: &str, record: FeedRecord) -> Result<bool, EngineError> {
        let (kind, client) = match &record {
            FeedRecord::ClientConnected(client) => ("c", client),
            FeedRecord::ClientDisconnected(client) => ("d", client),
            _ => return Err(EngineError::Unsupported("only a connection's events are written this way")),
        };
        if !self.routes.feeds_enabled || self.feed_apps.get(app) == Some(false) {
            return Ok(false);
        }
        let (stream, marker) = self.durable_feed_keys(app);
        let json = serde_json::to_string(client).map_err(unavailable)?;
        let mut invocation = self.scripts.feed_client.prepare_invoke();
        invocation
            .key(&stream)
            .key(&marker)
            .arg(kind)
            .arg(json)
            .arg(self.config.feed_retention.max_len.max(1));
        let written: u8 =
            invocation.invoke_async(&mut self.commands_for_name(&marker)).await.map_err(unavailable)?;
        self.feed_apps.set(app, written == 1);
        Ok(written == 1)
    }

    pub(crate) async fn feed_disable(&self, app: &str) -> Result<(), EngineError> {
        let (stream, marker) = self.durable_feed_keys(app);
        let keys = self.occupancy_keys(app);
        let mut invocation = self.scripts.occupancy_forget.prepare_invoke();
        invocation
            .key(&stream)
            .key(&marker)
            .key(&keys.counts)
            .key(&keys.leases)
            .key(self.feeds_key())
            .key(&keys.presence)
            .arg(&keys.node_prefix)
            .arg(app);
        invocation.invoke_async::<()>(&mut self.commands_for_name(&marker)).await.map_err(unavailable)?;
        self.feed_apps.set(app, false);
        Ok(())
    }

    pub(crate) async fn feed_read(
        &self,
        app: &str,
        after: &str,
        limit: usize,
    ) -> Result<FeedPage, EngineError> {
        if !self.routes.feeds_enabled {
            return Ok(FeedPage::default());
        }
        // A position that is no stream id (another engine's) is read as a lost one.
        let valid = after.is_empty() || stream_id(after).is_some();
        let from = if valid { after } else { "" };
        let (stream, marker) = self.durable_feed_keys(app);
        let mut invocation = self.scripts.feed_read.prepare_invoke();
        invocation.key(&stream).key(&marker).arg(from).arg(limit.max(1));
        let (raw, gap): (Vec<RawEntry>, u8) =
            invocation.invoke_async(&mut self.commands_for_name(&marker)).await.map_err(unavailable)?;
        let entries = raw.into_iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        Ok(FeedPage { entries, gap: gap == 1 || !valid })
    }
}

/// The `(ms, seq)` of a stream id.
fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn entry((id, fields): RawEntry) -> Result<FeedEntry, EngineError> {
    let field = |name: &str| fields.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
    let broken = |what: &str| unavailable(format!("feed entry {id}: {what}"));
    let channel = match field("c") {
        None | Some("") => None,
        Some(name) => Some(ChannelName::parse(name).map_err(|_| broken("bad channel"))?),
    };
    let body = field("b").ok_or_else(|| broken("no body"))?;
    let client = || serde_json::from_str::<ClientInfo>(body).map_err(|err| broken(&err.to_string()));
    let member = || wire::decode_member(body).map_err(|err| broken(&err.to_string()));
    let record = match field("k") {
        Some("m") => {
            FeedRecord::Message(wire::decode_publication(body).map_err(|err| broken(&err.to_string()))?)
        }
        Some("j") => FeedRecord::PresenceJoin(member()?),
        Some("l") => FeedRecord::PresenceLeave(member()?),
        Some("u") => FeedRecord::PresenceUpdate(member()?),
        Some("c") => FeedRecord::ClientConnected(client()?),
        Some("d") => FeedRecord::ClientDisconnected(client()?),
        Some("o") => FeedRecord::ChannelOccupied,
        Some("v") => FeedRecord::ChannelVacated,
        _ => return Err(broken("unknown kind")),
    };
    let ts_ms = stream_id(&id).map_or(0, |(ms, _)| ms);
    Ok(FeedEntry { position: Arc::from(id), ts_ms, channel, record })
}
