//! An app's durable feed: one ordered log of everything that happens in the app — its channels'
//! messages and its presence changes — with positions of its own, kept only for apps that need
//! one (apps with rules; later audited namespaces and processors). It also says when a channel
//! becomes occupied (its first subscriber on any node) and vacated (its last one gone).
//!
//! Consumers (the delivery workers) read it the way a recovering client reads history: from a
//! saved position, saving the next one only once the work it covers is durable. So one position
//! per app is all a worker keeps, and it never scans channels. An entry is written by the same
//! engine step that stores the message or changes presence (one script on Redis), so an entry
//! exists exactly when the change does.

use std::sync::Arc;

use tributary_protocol::frame::MemberInfo;
use tributary_protocol::{ChannelName, Publication};

/// A client connection, as its lifecycle events name it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientInfo {
    /// The client id its credential names, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Arc<str>>,
    /// The connection's id.
    pub conn_id: Arc<str>,
}

/// What a feed entry records.
#[derive(Debug, Clone)]
pub enum FeedRecord {
    /// A message stored on the channel.
    Message(Publication),
    /// The first connection of a client id entered the channel's presence.
    PresenceJoin(MemberInfo),
    /// The last connection of a client id left (or its entry expired).
    PresenceLeave(MemberInfo),
    /// A present connection changed its state.
    PresenceUpdate(MemberInfo),
    /// A client connected (its credential accepted) to a relay node.
    ClientConnected(ClientInfo),
    /// A client's connection ended, as the relay node that served it saw.
    ClientDisconnected(ClientInfo),
    /// The channel got its first subscriber (on any node).
    ChannelOccupied,
    /// The channel's last subscriber (on every node) left, or the nodes that held its last
    /// subscribers stopped.
    ChannelVacated,
}

impl FeedRecord {
    /// The event kind rules match on: `message`, `presence.join`, `presence.leave`,
    /// `presence.update`, `client.connected`, `client.disconnected`, `channel.occupied`,
    /// `channel.vacated`.
    pub fn kind(&self) -> &'static str {
        match self {
            FeedRecord::Message(_) => "message",
            FeedRecord::PresenceJoin(_) => "presence.join",
            FeedRecord::PresenceLeave(_) => "presence.leave",
            FeedRecord::PresenceUpdate(_) => "presence.update",
            FeedRecord::ClientConnected(_) => "client.connected",
            FeedRecord::ClientDisconnected(_) => "client.disconnected",
            FeedRecord::ChannelOccupied => "channel.occupied",
            FeedRecord::ChannelVacated => "channel.vacated",
        }
    }
}

/// One entry of an app's feed.
#[derive(Debug, Clone)]
pub struct FeedEntry {
    /// Where it is in the feed: opaque, and the same every time it is read.
    pub position: Arc<str>,
    /// When it was written, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The channel it happened on (none for a connection's events).
    pub channel: Option<ChannelName>,
    /// What happened.
    pub record: FeedRecord,
}

/// A read of an app's feed.
#[derive(Debug, Clone, Default)]
pub struct FeedPage {
    /// The entries after the position asked for, oldest first.
    pub entries: Vec<FeedEntry>,
    /// Whether entries after that position were lost before this read (trimmed for length or
    /// age, or the engine lost its data): the consumer cannot have everything.
    pub gap: bool,
}

/// How much of a feed is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedRetention {
    /// Most entries kept per app; the oldest go first (on Redis, approximately).
    pub max_len: usize,
}

impl Default for FeedRetention {
    fn default() -> Self {
        Self { max_len: 100_000 }
    }
}
