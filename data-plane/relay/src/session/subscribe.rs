//! Subscribing, with recovery: the seam between history and the live stream.
//!
//! The order is what makes recovery exact: (1) join the hub in recovering mode, so live
//! publications are buffered from now on; (2) read history after the client's position;
//! (3) queue the reply and the missed messages; (4) hand the hub the last offset delivered, and
//! it queues only the buffered publications after it. A publication stored between (1) and (2)
//! is both in history and in the buffer, and step 4 drops the copy.
//!
//! A recovery longer than the queue's free room is streamed: each page of history is queued as
//! the client drains the previous one ([`Session::catch_up`]), with the hub dropping live
//! publications for the subscriber in between (its next page holds them), and the seam of
//! steps 1–4 is settled on the page that reaches the stream's newest offset.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tributary_capability::Right;
use tributary_engine::{ChannelKey, HistoryQuery, StreamOptions};
use tributary_protocol::frame::{Direction, MemberInfo, SubscribeRequest, server};
use tributary_protocol::{ChannelName, CloseCode, ErrorCode, Publication, StreamPosition};

use super::{Session, Subscription};
use crate::conn::{Outbound, PreparedMessage};
use crate::ops::OpError;

/// Queue slots kept free for the subscribe reply and the first live frames.
const REPLY_RESERVE: usize = 8;

/// The most messages a subscription's grace (see [`Session::subscribe_with_grace`]) delivers.
pub const GRACE_LOOKBACK: usize = 8;

/// How far before the request a plain subscription starts.
#[derive(Debug, Clone)]
struct Grace {
    /// What was stored this long before is delivered too.
    within: Duration,
    /// Never this message or one before it.
    floor: Option<StreamPosition>,
}

impl Grace {
    const NONE: Grace = Grace { within: Duration::ZERO, floor: None };
}

/// A recovery being streamed from history, page by page, as the client drains its queue.
#[derive(Debug, Clone)]
pub(super) struct CatchUp {
    epoch: Arc<str>,
    /// The offset of the last message queued.
    delivered: u64,
}

/// How much of the queue one history page may fill.
#[derive(Debug, Clone, Copy)]
struct Room {
    frames: usize,
    bytes: usize,
}

/// Returns about how many bytes a publication's `message` frame takes, without encoding it.
fn estimated_frame_len(key: &ChannelKey, publication: &Publication) -> usize {
    let payload = match &publication.payload {
        tributary_protocol::Payload::Json(b) => b.len(),
        tributary_protocol::Payload::Binary(b) => b.len().div_ceil(3) * 4 + 16,
    };
    let client = publication.client_id.as_ref().map_or(0, |c| c.len() + 16);
    payload + key.channel.as_str().len() + publication.epoch.len() + client + 96
}

/// The reply to a subscribe.
#[derive(Debug, Clone, Serialize)]
pub struct SubscribeReply {
    /// The channel.
    pub channel: String,
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The stream's newest offset when the subscription started.
    pub offset: u64,
    /// Whether the namespace keeps history, so a later reconnect can recover.
    pub recoverable: bool,
    /// For a recovery request: whether every missed message is being delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// How many messages from history follow this reply (a long recovery streams them as the
    /// client reads; messages published meanwhile follow them).
    pub replayed: u64,
    /// The position before the first replayed message, or where the live stream starts when
    /// nothing is replayed (not sent; the start of SSE and long-poll cursors).
    #[serde(skip)]
    pub position: StreamPosition,
}

impl Session {
    /// Subscribes to a channel, replays what the client missed, then goes live. The reply is
    /// queued before the replayed messages when `id_for_reply` is given.
    pub async fn subscribe(
        &mut self,
        request: SubscribeRequest,
        reply_id: Option<Option<u64>>,
    ) -> Result<SubscribeReply, OpError> {
        self.subscribe_from(request, reply_id, 1, Grace::NONE).await
    }

    /// Subscribes like [`Session::subscribe`]; a plain subscription also gets what the engine
    /// stored within `grace` before now (at most [`GRACE_LOOKBACK`] messages), so that of two
    /// requests of different connections that arrived together and were read in the other
    /// order, the publish still reaches the subscription (MQTT, whose clients have no
    /// positions to recover from).
    /// The grace never reaches back to `floor` or before it: MQTT passes its channel's retained
    /// message, which a new subscription gets as a retained message (if it asked for retained
    /// messages), not again as a message.
    pub async fn subscribe_with_grace(
        &mut self,
        request: SubscribeRequest,
        grace: Duration,
        floor: Option<StreamPosition>,
    ) -> Result<SubscribeReply, OpError> {
        self.subscribe_from(request, None, 1, Grace { within: grace, floor }).await
    }

    /// Subscribes like [`Session::subscribe`], letting the replay use at most `1 / share` of the
    /// queue's free room: SSE and long-poll subscribe several channels before anything drains,
    /// and the first must not take all the room from the others.
    pub async fn subscribe_sharing(
        &mut self,
        request: SubscribeRequest,
        reply_id: Option<Option<u64>>,
        share: usize,
    ) -> Result<SubscribeReply, OpError> {
        self.subscribe_from(request, reply_id, share, Grace::NONE).await
    }

    async fn subscribe_from(
        &mut self,
        request: SubscribeRequest,
        reply_id: Option<Option<u64>>,
        share: usize,
        grace: Grace,
    ) -> Result<SubscribeReply, OpError> {
        let channel = request.channel.clone();
        if !self.identity.capabilities.allows(&channel, Right::Subscribe) {
            return Err(OpError::new(ErrorCode::Forbidden, format!("no subscribe right on {channel}")));
        }
        if self.subscriptions.contains_key(&channel) {
            return Err(ErrorCode::AlreadySubscribed.into());
        }
        if self.subscriptions.len() >= self.state.config.max_subscriptions_per_connection {
            return Err(ErrorCode::TooManySubscriptions.into());
        }
        // An exchange's channel is the offering app's, with its namespace's options.
        let routed = self.state.route(&self.identity.app_id, &channel, Right::Subscribe).await?;
        // Recovering or rewinding reads history: through an exchange, only with its right.
        let reads_history = request.recover.is_some() || request.rewind.is_some_and(|n| n > 0);
        if reads_history && !routed.rights.contains(Right::History) {
            return Err(OpError::new(
                ErrorCode::Forbidden,
                format!("the exchange of {channel} gives this side no history right (recover, rewind)"),
            ));
        }
        // Through an exchange without the presence right, a subscriber neither appears in the
        // channel's presence nor sees its events.
        let presence_right = routed.rights.contains(Right::Presence);
        let ns = self.state.namespace(&routed.app, channel.namespace());
        // Without history a recovery simply reports `recovered: false` (unless nothing was
        // missed), so SSE and long-poll cursors work on live-only namespaces too.
        let key = ChannelKey::new(routed.app, channel.clone());
        // A channel new on this node may be new to the tenant: it counts against the plan.
        if self.state.hub.subscriber_count(&key) == 0
            && let Some(policy) = self.state.policies.peek(&self.identity.app_id)
        {
            self.state.quotas.admit_channel(&policy)?;
        }
        // Every subscription subscribes in the engine (which counts them), not only the node's
        // first: a second subscriber must also wait until delivery is live before it reads
        // history, and a first subscribe still in flight does not guarantee that.
        self.state.hub.add_with(&key, &self.conn, presence_right);
        if routed.exchanged
            && !self.state.still_routed(&self.identity.app_id, &channel, &key.app, Right::Subscribe)
        {
            // The exchange changed while this was routed: its reload may have missed this.
            self.state.hub.remove(&key, self.conn.id());
            return Err(OpError::new(
                ErrorCode::ExchangeSuspended,
                "the exchange of this channel changed meanwhile; subscribe again",
            ));
        }
        // A plain subscription (no recovery, no rewind) starts where the stream stood when the
        // request was read: the head is read now, before anything that can wait, so that a
        // publication read after the request reaches the subscriber (from the hub's buffer or
        // from history), never lost to a seam that opened while the engine subscribed.
        let plain = request.recover.is_none() && request.rewind.is_none_or(|n| n == 0);
        let (subscribed, start) = if plain {
            let (start, subscribed) =
                tokio::join!(self.start(&key, ns.stream(), grace), self.state.engine.subscribe(&key));
            (subscribed, Some(start))
        } else {
            (self.state.engine.subscribe(&key).await, None)
        };
        let start = match (subscribed, start.transpose()) {
            (Ok(()), Ok(start)) => start,
            (Err(err), _) => {
                self.state.hub.remove(&key, self.conn.id());
                return Err(err.into());
            }
            (Ok(()), Err(err)) => {
                self.state.hub.remove(&key, self.conn.id());
                let _ = self.state.engine.unsubscribe(&key).await;
                return Err(err);
            }
        };
        let stream = ns.stream();
        match self.replay(&key, &request, start, stream, ns.history_size > 0, reply_id, share.max(1)).await {
            Ok((reply, catch_up)) => {
                let presence = ns.presence && self.presence_allowed && presence_right;
                self.catching_up += usize::from(catch_up.is_some());
                let catch_up = catch_up.map(Box::new);
                self.subscriptions.insert(Subscription { key: key.clone(), presence, catch_up });
                if presence {
                    let member = self.member(&key, request.state.map(Arc::from));
                    let options = self.state.config.presence_options(&ns);
                    // The reply is already queued, so a failure here must not become a second
                    // reply; the next heartbeat joins again.
                    if let Err(err) = self.state.engine.presence_join(&key, member, options).await {
                        tracing::warn!(error = %err, "presence join failed; retrying with the heartbeat");
                    }
                }
                Ok(reply)
            }
            Err(err) => {
                self.state.hub.remove(&key, self.conn.id());
                let _ = self.state.engine.unsubscribe(&key).await;
                Err(err)
            }
        }
    }

    /// Returns how much of the queue a page may take now, split `share` ways.
    fn room(&self, share: usize) -> Room {
        let reserve = REPLY_RESERVE.min(self.state.config.outbound_queue_len / 2);
        Room {
            frames: self.conn.room().saturating_sub(reserve) / share,
            // Half: the live stream keeps flowing into the same queue.
            bytes: self.conn.room_bytes() / 2 / share,
        }
    }

    /// Starts a subscription's delivery: the reply, whatever history it replays (all of it, or
    /// the first page of a long recovery, which then continues in [`Session::catch_up`]), and
    /// the switch to live. `start` is, for a plain subscription, the head read when the request
    /// was: what was published after it is delivered.
    #[allow(clippy::too_many_arguments, reason = "one private step of subscribe, called once")]
    async fn replay(
        &self,
        key: &ChannelKey,
        request: &SubscribeRequest,
        start: Option<tributary_engine::HistoryPage>,
        stream: StreamOptions,
        recoverable: bool,
        reply_id: Option<Option<u64>>,
        share: usize,
    ) -> Result<(SubscribeReply, Option<CatchUp>), OpError> {
        let max = self.state.config.max_recover as u64;
        // The offset after which the replay starts, if anything is replayed.
        let since = match (&request.recover, request.rewind, &start) {
            (Some(position), _, _) => Some(position.offset),
            (None, Some(n), _) if n > 0 => {
                // The newest `n`: find where the stream stands, then read forward like a
                // recovery (the oldest message kept bounds it).
                let head = self.head(key, stream).await?;
                let oldest = head.oldest_offset.map_or(head.top_offset, |o| o - 1);
                Some(head.top_offset.saturating_sub(u64::from(n).min(max)).max(oldest))
            }
            (None, _, Some(start)) => Some(start.top_offset),
            (None, _, None) => None,
        };
        let room = self.room(share);
        let (page, recovered) = match since {
            Some(since) => {
                let query =
                    HistoryQuery { since: Some(since), direction: Direction::Forward, limit: room.frames };
                let page = self.state.engine.history(key, query, stream).await?;
                let recovered = request.recover.as_ref().map(|position| {
                    page.covers(&position.epoch, position.offset)
                        && page.top_offset.saturating_sub(position.offset) <= max
                });
                (page, recovered)
            }
            None => (self.head(key, stream).await?, None),
        };
        if let Some(start) = start.as_ref().filter(|start| start.epoch == page.epoch)
            && !page.covers(&start.epoch, start.top_offset)
        {
            // A plain subscription on a stream without the history to fill the seam (history
            // off, or trimmed meanwhile): what the hub buffered after the start is all there is.
            return Ok((self.go_live(key, &page, start.top_offset, recoverable, reply_id), None));
        }
        // A plain subscription whose stream was reset meanwhile starts at the new head.
        let since = since
            .filter(|_| recovered != Some(false) && start.as_ref().is_none_or(|s| s.epoch == page.epoch));
        let epoch = page.epoch.clone();
        let top = page.top_offset;
        let reply = SubscribeReply {
            channel: key.channel.to_string(),
            epoch: epoch.clone(),
            offset: top,
            recoverable,
            recovered,
            replayed: since.map_or(0, |since| top.saturating_sub(since)),
            // The position *before* the replayed messages: a cursor advances only as messages
            // are actually handed to the client.
            position: StreamPosition { epoch: epoch.to_string(), offset: since.unwrap_or(top) },
        };
        if let Some(id) = reply_id {
            self.conn.push(Outbound::frame(server::encode_reply(id, &reply)));
        }
        let catch_up = match since {
            Some(since) => self.deliver_page(key, page, &epoch, since, room),
            None => {
                self.state.hub.finish_recovery(key, &self.conn, &epoch, top);
                None
            }
        };
        Ok((reply, catch_up))
    }

    /// Queues the reply of a subscription that replays nothing and goes live after `after`.
    fn go_live(
        &self,
        key: &ChannelKey,
        page: &tributary_engine::HistoryPage,
        after: u64,
        recoverable: bool,
        reply_id: Option<Option<u64>>,
    ) -> SubscribeReply {
        let reply = SubscribeReply {
            channel: key.channel.to_string(),
            epoch: page.epoch.clone(),
            offset: page.top_offset,
            recoverable,
            recovered: None,
            replayed: 0,
            position: StreamPosition { epoch: page.epoch.to_string(), offset: after },
        };
        if let Some(id) = reply_id {
            self.conn.push(Outbound::frame(server::encode_reply(id, &reply)));
        }
        self.state.hub.finish_from_buffer(key, &self.conn, &page.epoch, after, page.top_offset);
        reply
    }

    /// Reads where a plain subscription starts: the stream's head, or, with a `grace`, before
    /// the oldest of the newest [`GRACE_LOOKBACK`] publications stored within it.
    async fn start(
        &self,
        key: &ChannelKey,
        stream: StreamOptions,
        grace: Grace,
    ) -> Result<tributary_engine::HistoryPage, OpError> {
        if grace.within.is_zero() {
            return self.head(key, stream).await;
        }
        let query = HistoryQuery { since: None, direction: Direction::Backward, limit: GRACE_LOOKBACK };
        let mut page = self.state.engine.history(key, query, stream).await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let cutoff = now_ms.saturating_sub(grace.within.as_millis() as u64);
        let floor = grace.floor.filter(|floor| *floor.epoch == *page.epoch).map_or(0, |floor| floor.offset);
        // Newest first: the last one still within the grace is where the subscription starts.
        if let Some(oldest) = page.publications.iter().take_while(|p| p.ts_ms >= cutoff).last() {
            page.top_offset = oldest.offset.saturating_sub(1).max(floor.min(page.top_offset));
        }
        page.publications.clear();
        Ok(page)
    }

    /// Reads where a stream stands, without any publication.
    async fn head(
        &self,
        key: &ChannelKey,
        stream: StreamOptions,
    ) -> Result<tributary_engine::HistoryPage, OpError> {
        let query = HistoryQuery { since: None, direction: Direction::Backward, limit: 0 };
        Ok(self.state.engine.history(key, query, stream).await?)
    }

    /// Queues what fits of a forward history page read after `since`. If it reaches the
    /// stream's newest offset, the subscriber goes live; otherwise it catches up from where the
    /// page ended.
    fn deliver_page(
        &self,
        key: &ChannelKey,
        mut page: tributary_engine::HistoryPage,
        epoch: &Arc<str>,
        since: u64,
        room: Room,
    ) -> Option<CatchUp> {
        let mut publications = std::mem::take(&mut page.publications);
        let mut bytes = 0;
        let fits = publications
            .iter()
            .take_while(|p| {
                bytes += estimated_frame_len(key, p);
                bytes <= room.bytes
            })
            .count();
        // At least one when the queue can take it: a share of the room smaller than one large
        // message would otherwise stall a recovery for good.
        let first_fits =
            publications.first().is_some_and(|p| estimated_frame_len(key, p) <= self.conn.room_bytes());
        publications.truncate(fits.max(usize::from(first_fits)));
        let mut delivered = since;
        for publication in publications {
            let frame = server::encode_message(key.channel.as_str(), &publication);
            let offset = publication.offset;
            let prepared = PreparedMessage { frame, channel: key.channel.clone(), publication };
            if !self.conn.push(Outbound::Message(Arc::new(prepared))) {
                // Closed as a slow consumer: nothing more is queued anyway.
                break;
            }
            delivered = offset;
        }
        if delivered >= page.top_offset {
            self.state.hub.finish_recovery(key, &self.conn, epoch, delivered);
            None
        } else {
            self.state.hub.pause_recovery(key, &self.conn);
            Some(CatchUp { epoch: epoch.clone(), delivered })
        }
    }

    /// Returns whether a long recovery is still being streamed on some subscription.
    pub fn catching_up(&self) -> bool {
        self.catching_up > 0
    }

    /// Queues the next history page of every subscription that is catching up, once the
    /// client has drained enough of its queue for a page worth reading. Transports call it
    /// whenever they have written to the client.
    pub async fn catch_up(&mut self) {
        let config = &self.state.config;
        if self.catching_up == 0
            || self.conn.room() < config.outbound_queue_len / 4
            || self.conn.room_bytes() < config.max_queued_bytes / 4
        {
            return;
        }
        let share = self.catching_up;
        let channels: Vec<ChannelName> = self
            .subscriptions
            .iter()
            .filter(|s| s.catch_up.is_some())
            .map(|s| s.key.channel.clone())
            .collect();
        for channel in channels {
            let Some((key, catch_up)) =
                self.subscriptions.get(&channel).and_then(|s| Some((s.key.clone(), *s.catch_up.clone()?)))
            else {
                continue;
            };
            let next = self.next_page(&key, catch_up, share).await;
            if let Some(subscription) = self.subscriptions.get_mut(&channel) {
                if next.is_none() {
                    self.catching_up -= 1;
                }
                subscription.catch_up = next.map(Box::new);
            }
            if self.conn.is_closed() {
                return;
            }
        }
    }

    /// Reads and queues the page after `catch_up.delivered`.
    async fn next_page(&self, key: &ChannelKey, catch_up: CatchUp, share: usize) -> Option<CatchUp> {
        // Buffer live publications from before the read, so that if this page reaches the
        // newest offset, the seam between it and the live stream is exact.
        self.state.hub.resume_recovery(key, &self.conn);
        let stream = self.state.namespace(&key.app, key.channel.namespace()).stream();
        let mut room = self.room(share);
        // At least one message per page, or a crowd of catching-up channels would starve.
        room.frames = room.frames.max(1);
        let query = HistoryQuery {
            since: Some(catch_up.delivered),
            direction: Direction::Forward,
            limit: room.frames,
        };
        let page = match self.state.engine.history(key, query, stream).await {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(error = %err, "history read failed while catching up");
                self.conn.close(CloseCode::Internal);
                return None;
            }
        };
        if !page.covers(&catch_up.epoch, catch_up.delivered) {
            // History moved on (trimmed or reset) faster than this client read it. It asks
            // again from its position and is told `recovered: false` there, never shown a gap.
            self.conn.close(CloseCode::SlowConsumer);
            return None;
        }
        self.deliver_page(key, page, &catch_up.epoch, catch_up.delivered, room)
    }

    /// This client as a member of `key`'s presence: in an exchange's namespace named by its
    /// app, as its messages are (see [`crate::exchange`]).
    pub(super) fn member(
        &self,
        key: &ChannelKey,
        state: Option<Arc<serde_json::value::RawValue>>,
    ) -> MemberInfo {
        let app = &self.identity.app_id;
        let client_id = if crate::exchange::is_exchanged(&self.state, app, &key.channel) {
            crate::exchange::publisher_id(app, Some(&self.identity.client_id), None)
        } else {
            self.identity.client_id.clone()
        };
        MemberInfo { client_id, conn_id: self.conn.id().clone(), state }
    }
}
