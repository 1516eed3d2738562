//! Apps' durable feeds on Redis: a stream per app (`<prefix>:fd:{app}`), written by the same
//! script that stores a message or changes presence, for apps whose marker key
//! (`<prefix>:fe:{app}`) exists. A position is the stream entry's id (`ms-seq`), which Redis
//! keeps increasing for the stream's whole life. Not on a Redis Cluster: the feed's keys are in
//! the app's slot, and a channel's scripts run in the channel's.

use std::sync::Arc;

use tributary_engine::{ChannelKey, EngineError, FeedEntry, FeedPage, FeedRecord};
use tributary_protocol::ChannelName;

use crate::{Inner, unavailable, wire};

/// An entry as `XRANGE` returns it: its id and its fields.
type RawEntry = (String, Vec<(String, String)>);

impl Inner {
    /// The durable feed's stream and marker keys of `app`.
    fn durable_feed_keys(&self, app: &str) -> (String, String) {
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
        redis::cmd("SET").arg(&marker).arg(1).query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    pub(crate) async fn feed_disable(&self, app: &str) -> Result<(), EngineError> {
        let (stream, marker) = self.durable_feed_keys(app);
        let mut conn = self.commands_for_name(&marker);
        redis::cmd("DEL").arg(&marker).arg(&stream).query_async::<()>(&mut conn).await.map_err(unavailable)
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
    let channel = ChannelName::parse(field("c").ok_or_else(|| broken("no channel"))?)
        .map_err(|_| broken("bad channel"))?;
    let body = field("b").ok_or_else(|| broken("no body"))?;
    let member = || wire::decode_member(body).map_err(|err| broken(&err.to_string()));
    let record = match field("k") {
        Some("m") => {
            FeedRecord::Message(wire::decode_publication(body).map_err(|err| broken(&err.to_string()))?)
        }
        Some("j") => FeedRecord::PresenceJoin(member()?),
        Some("l") => FeedRecord::PresenceLeave(member()?),
        Some("u") => FeedRecord::PresenceUpdate(member()?),
        _ => return Err(broken("unknown kind")),
    };
    let ts_ms = stream_id(&id).map_or(0, |(ms, _)| ms);
    Ok(FeedEntry { position: Arc::from(id), ts_ms, channel, record })
}
