//! Subscribing, with recovery: the seam between history and the live stream.
//!
//! The order is what makes recovery exact: (1) join the hub in recovering mode, so live
//! publications are buffered from now on; (2) read history after the client's position;
//! (3) queue the reply and the missed messages; (4) hand the hub the last offset delivered, and
//! it queues only the buffered publications after it. A publication stored between (1) and (2)
//! is both in history and in the buffer, and step 4 drops the copy.

use std::sync::Arc;

use serde::Serialize;
use tributary_capability::Right;
use tributary_engine::{ChannelKey, HistoryQuery};
use tributary_protocol::frame::{Direction, MemberInfo, SubscribeRequest, server};
use tributary_protocol::{ErrorCode, StreamPosition};

use super::{Session, Subscription};
use crate::conn::{Outbound, PreparedMessage, text};
use crate::ops::OpError;

/// Queue slots kept free for the subscribe reply and the first live frames.
const REPLY_RESERVE: usize = 8;

/// Returns about how many bytes a publication's `message` frame takes, without encoding it.
fn estimated_frame_len(key: &ChannelKey, publication: &tributary_protocol::Publication) -> usize {
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
    /// How many messages from history follow this reply.
    pub replayed: usize,
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
        self.subscribe_sharing(request, reply_id, 1).await
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
        let ns = self.state.config.namespace(channel.namespace());
        // Without history a recovery simply reports `recovered: false` (unless nothing was
        // missed), so SSE and long-poll cursors work on live-only namespaces too.
        let key = ChannelKey::new(self.identity.app_id.clone(), channel.clone());
        if self.state.hub.add(&key, &self.conn)
            && let Err(err) = self.state.engine.subscribe(&key).await
        {
            self.state.hub.remove(&key, self.conn.id());
            return Err(err.into());
        }
        match self.replay(&key, &request, ns.stream(), ns.history_size > 0, reply_id, share.max(1)).await {
            Ok(reply) => {
                let presence = ns.presence && self.presence_allowed;
                self.subscriptions.insert(channel, Subscription { key: key.clone(), presence });
                if presence {
                    let member = self.member(request.state.map(Arc::from));
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
                if self.state.hub.remove(&key, self.conn.id()) {
                    let _ = self.state.engine.unsubscribe(&key).await;
                }
                Err(err)
            }
        }
    }

    async fn replay(
        &self,
        key: &ChannelKey,
        request: &SubscribeRequest,
        stream: tributary_engine::StreamOptions,
        recoverable: bool,
        reply_id: Option<Option<u64>>,
        share: usize,
    ) -> Result<SubscribeReply, OpError> {
        // Never replay more than the queue can take now, by count and by bytes: a recovery must
        // not make its own connection a slow consumer. What does not fit is not recovered.
        let room = self.conn.room().saturating_sub(REPLY_RESERVE) / share;
        let max = self.state.config.max_recover.min(room);
        let query = match (&request.recover, request.rewind) {
            (Some(position), _) => {
                HistoryQuery { since: Some(position.offset), direction: Direction::Forward, limit: max }
            }
            (None, Some(n)) => {
                HistoryQuery { since: None, direction: Direction::Backward, limit: (n as usize).min(max) }
            }
            (None, None) => HistoryQuery { since: None, direction: Direction::Backward, limit: 0 },
        };
        let mut page = self.state.engine.history(key, query, stream).await?;
        let mut publications = std::mem::take(&mut page.publications);
        let byte_room = self.conn.room_bytes() / 2 / share;
        let mut bytes = 0;
        let fits = publications
            .iter()
            .take_while(|p| {
                bytes += estimated_frame_len(key, p);
                bytes <= byte_room
            })
            .count();
        // A forward page keeps its oldest messages (a recovery then reports what it could not
        // deliver); a backward (rewind) page starts with the newest, so it keeps the newest.
        publications.truncate(fits);
        let recovered = request.recover.as_ref().map(|position| {
            // History offsets are consecutive, so the page holds offset+1 ..= offset+len.
            let complete = position.offset.saturating_add(publications.len() as u64) >= page.top_offset;
            page.covers(&position.epoch, position.offset) && complete
        });
        match (recovered, request.rewind) {
            (Some(false), _) => publications.clear(),
            (None, Some(_)) => publications.reverse(),
            _ => {}
        }
        let delivered = match (recovered, publications.last()) {
            (_, Some(last)) => last.offset,
            (Some(true), None) => request.recover.as_ref().map(|p| p.offset).unwrap_or(page.top_offset),
            _ => page.top_offset,
        };
        let reply = SubscribeReply {
            channel: key.channel.to_string(),
            epoch: page.epoch.clone(),
            offset: page.top_offset,
            recoverable,
            recovered,
            replayed: publications.len(),
            // The position *before* the replayed messages: a cursor advances only as messages
            // are actually handed to the client.
            position: StreamPosition {
                epoch: page.epoch.to_string(),
                offset: publications.first().map(|p| p.offset - 1).unwrap_or(delivered),
            },
        };
        if let Some(id) = reply_id {
            self.conn.push(Outbound::frame(server::encode_reply(id, &reply)));
        }
        for publication in &publications {
            let frame = text(server::encode_message(key.channel.as_str(), publication));
            let prepared = PreparedMessage {
                frame,
                channel: key.channel.clone(),
                epoch: publication.epoch.clone(),
                offset: publication.offset,
            };
            if !self.conn.push(Outbound::Message(Arc::new(prepared))) {
                break;
            }
        }
        self.state.hub.finish_recovery(key, &self.conn, &page.epoch, delivered);
        Ok(reply)
    }

    pub(super) fn member(&self, state: Option<Arc<serde_json::value::RawValue>>) -> MemberInfo {
        MemberInfo { client_id: self.identity.client_id.clone(), conn_id: self.conn.id().clone(), state }
    }
}
