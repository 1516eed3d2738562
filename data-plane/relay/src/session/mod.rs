//! A client session: one authenticated connection and its subscriptions, independent of the
//! transport. WebSocket feeds it every client frame; SSE and long-poll use only
//! [`Session::subscribe`], because their clients cannot send frames.

mod auth;
mod subscribe;
mod subscriptions;

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use tributary_capability::{Capabilities, Right};
use tributary_engine::ChannelKey;
use tributary_protocol::frame::{ClientFrame, ClientOp, PublishRequest, server};
use tributary_protocol::{ChannelName, ErrorCode};

pub(crate) use auth::unavailable;
pub use auth::{authenticate, unix_now};
pub use subscribe::SubscribeReply;

use crate::conn::{ConnHandle, Outbound};
use crate::limits::TokenBucket;
use crate::ops::{self, OpError, PublishInput};
use crate::policy::Credential;
use crate::state::RelayState;

/// Who the connection is, from its (possibly refreshed) token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The client id (`sub`).
    pub client_id: Arc<str>,
    /// The app id.
    pub app_id: Arc<str>,
    /// What the client may do.
    pub capabilities: Capabilities,
    /// When the token expires, Unix seconds.
    pub expires_at: u64,
}

impl Identity {
    /// Verifies a token and checks that its app admits it (see [`authenticate`]); returns who
    /// the token names, what a revocation needs to know about it (kept by the connection) and
    /// the app's policy.
    pub async fn authenticate(
        state: &RelayState,
        token: &str,
    ) -> Result<(Self, Credential, Arc<crate::policy::AppPolicy>), OpError> {
        let (token, credential, policy) = authenticate(state, token).await?;
        let identity = Self {
            client_id: token.client_id,
            // The policy's (it verified the token, so the ids are the same): no string per
            // connection.
            app_id: policy.app_id.clone(),
            capabilities: token.capabilities,
            expires_at: token.expires_at,
        };
        Ok((identity, credential, policy))
    }
}

pub(crate) struct Subscription {
    key: ChannelKey,
    presence: bool,
    /// `Some` while a long recovery is still being read from history (boxed: rarely there, and
    /// every subscription of every connection would carry its room).
    catch_up: Option<Box<subscribe::CatchUp>>,
}

/// One client session.
pub struct Session {
    state: Arc<RelayState>,
    conn: ConnHandle,
    identity: Identity,
    subscriptions: subscriptions::Subscriptions,
    publish_bucket: TokenBucket,
    request_bucket: TokenBucket,
    /// Long-poll requests come and go; counting them in presence would flap join/leave.
    presence_allowed: bool,
    /// How many subscriptions are catching up (streaming a long recovery).
    catching_up: usize,
}

/// The reply to `connect`.
#[derive(Debug, Serialize)]
pub struct ConnectedReply<'a> {
    /// The client id from the token.
    pub client_id: &'a str,
    /// This connection's id.
    pub conn_id: &'a str,
    /// When the token expires, Unix seconds; refresh before then.
    pub expires_at: u64,
    /// How often the server pings, in milliseconds.
    pub ping_interval_ms: u64,
    /// The protocol version.
    pub protocol: &'static str,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct PresenceReply {
    channel: String,
    members: Vec<tributary_protocol::frame::MemberInfo>,
    occupancy: tributary_engine::Occupancy,
}

#[derive(Serialize)]
struct RefreshReply {
    expires_at: u64,
}

impl Session {
    /// Creates a session for a connection whose token was verified.
    pub fn new(state: Arc<RelayState>, conn: ConnHandle, identity: Identity, presence_allowed: bool) -> Self {
        let publish_bucket = TokenBucket::new(state.config.publish_burst);
        let request_bucket = TokenBucket::new(state.config.request_burst);
        Self {
            state,
            conn,
            identity,
            subscriptions: subscriptions::Subscriptions::default(),
            publish_bucket,
            request_bucket,
            presence_allowed,
            catching_up: 0,
        }
    }

    /// Returns the relay's shared state.
    pub fn state(&self) -> &Arc<RelayState> {
        &self.state
    }

    /// Returns the connection.
    pub fn conn(&self) -> &ConnHandle {
        &self.conn
    }

    /// Returns who the client is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Handles one client frame, queuing its reply.
    pub async fn handle(&mut self, frame: ClientFrame) {
        let id = frame.id;
        let limited = !matches!(frame.op, ClientOp::Ping | ClientOp::Publish(_) | ClientOp::Connect { .. });
        let config = &self.state.config;
        if limited && !self.request_bucket.try_take(config.request_rate_per_second, config.request_burst) {
            self.refuse(id, ErrorCode::RateLimited, ErrorCode::RateLimited.message());
            return;
        }
        let outcome = match frame.op {
            ClientOp::Connect { .. } => Err(ErrorCode::ConnectExpected.into()),
            ClientOp::Subscribe(request) => match self.subscribe(request, Some(id)).await {
                // The reply was queued before the replayed messages.
                Ok(_) => return,
                Err(err) => Err(err),
            },
            ClientOp::Unsubscribe { channel } => {
                self.unsubscribe(&channel).await.map(|()| reply(id, &Empty {}))
            }
            ClientOp::Publish(request) => {
                self.publish_all(vec![(id, request)]).await;
                return;
            }
            ClientOp::History(request) => self.history(request).await.map(|r| {
                #[derive(Serialize)]
                struct Reply<'a> {
                    r#type: &'static str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    id: Option<u64>,
                    result: &'a RawValue,
                }
                let json = r.to_json(self.state.config.max_queued_bytes / 2);
                bytes::Bytes::from(
                    serde_json::to_vec(&Reply { r#type: "reply", id, result: &json }).unwrap_or_default(),
                )
            }),
            ClientOp::Presence { channel } => self.presence(channel).await.map(|r| reply(id, &r)),
            ClientOp::PresenceUpdate { channel, state } => {
                self.presence_update(&channel, state).await.map(|()| reply(id, &Empty {}))
            }
            ClientOp::Refresh { token } => self.refresh(&token).await.map(|r| reply(id, &r)),
            ClientOp::Ping => Ok(reply(id, &Empty {})),
        };
        let frame = match outcome {
            Ok(frame) if id.is_some() => frame,
            Ok(_) => return,
            Err(err) => server::encode_error(id, err.code, &err.message),
        };
        self.conn.push(Outbound::Frame(Arc::new(frame)));
    }

    /// Refuses a malformed frame with its error, keeping the connection.
    pub fn refuse(&self, id: Option<u64>, code: ErrorCode, message: &str) {
        self.conn.push(Outbound::frame(server::encode_error(id, code, message)));
    }

    /// Unsubscribes from a channel (and leaves its presence).
    pub async fn unsubscribe(&mut self, channel: &ChannelName) -> Result<(), OpError> {
        let subscription = self.subscriptions.remove(channel).ok_or(ErrorCode::NotSubscribed)?;
        self.drop_subscription(subscription).await;
        Ok(())
    }

    async fn drop_subscription(&mut self, subscription: Subscription) {
        self.catching_up -= usize::from(subscription.catch_up.is_some());
        self.state.hub.remove(&subscription.key, self.conn.id());
        if let Err(err) = self.state.engine.unsubscribe(&subscription.key).await {
            tracing::warn!(error = %err, "engine unsubscribe failed");
        }
        if subscription.presence
            && let Err(err) = self.state.engine.presence_leave(&subscription.key, self.conn.id()).await
        {
            tracing::warn!(error = %err, "presence leave failed");
        }
    }

    /// Handles a run of publish requests together: each is checked in order (rights, rate),
    /// then the engine stores them all at once, so an engine with a round trip (Redis) serves
    /// them in one pipeline rather than one after another. The engine receives them in order,
    /// so offsets follow the order of the requests; replies are queued in that order too.
    pub async fn publish_all(&mut self, requests: Vec<(Option<u64>, PublishRequest)>) {
        let (ids, checked): (Vec<Option<u64>>, Vec<Result<PublishRequest, OpError>>) =
            requests.into_iter().map(|(id, request)| (id, self.may_publish(request))).unzip();
        // Whatever may wait is done once, first: then each publish reaches the engine on its
        // first poll, and `join_all` polls them first in order.
        let ready = ops::ready_to_publish(&self.state, &self.identity.app_id).await.map(drop);
        let (this, ready) = (&*self, &ready);
        let outcomes = futures::future::join_all(checked.into_iter().map(|checked| async move {
            let PublishRequest { channel, data, binary, encoding, idempotency_key, push } = checked?;
            ready.clone()?;
            // A push section is checked before anything is published (see `may_publish`).
            let sink = ops::push_sink(&this.state, push.as_deref())?;
            let input = PublishInput {
                channel,
                data: &data,
                binary,
                encoding,
                idempotency_key,
                client_id: Some(this.identity.client_id.clone()),
                api_key: None,
            };
            let mut result = ops::publish(&this.state, &this.identity.app_id, input).await?;
            if let (Some(sink), Some(push)) = (sink, push.as_deref()) {
                result.push = Some(ops::queue_push(sink, &this.identity.app_id, &result, push).await?);
            }
            Ok::<_, OpError>(result)
        }))
        .await;
        for (id, outcome) in ids.into_iter().zip(outcomes) {
            let frame = match outcome {
                Ok(result) if id.is_some() => reply(id, &result),
                Ok(_) => continue,
                Err(err) => server::encode_error(id, err.code, &err.message),
            };
            self.conn.push(Outbound::Frame(Arc::new(frame)));
        }
    }

    /// Checks that this client may publish `request` now (takes from its publish rate).
    fn may_publish(&mut self, request: PublishRequest) -> Result<PublishRequest, OpError> {
        self.may_publish_on(&request.channel)?;
        if request.push.is_some() {
            self.may_push_on(&request.channel)?;
        }
        Ok(request)
    }

    /// Checks that this client may publish with a push section on `channel`: a push costs the
    /// tenant, so it needs a right of its own (`push_publish`).
    pub fn may_push_on(&self, channel: &ChannelName) -> Result<(), OpError> {
        if self.identity.capabilities.allows(channel, Right::PushPublish) {
            return Ok(());
        }
        Err(OpError::new(ErrorCode::Forbidden, format!("no push_publish right on {channel}")))
    }

    /// Checks that this client may publish on `channel` now (takes from its publish rate).
    pub fn may_publish_on(&mut self, channel: &ChannelName) -> Result<(), OpError> {
        if !self.identity.capabilities.allows(channel, Right::Publish) {
            return Err(OpError::new(ErrorCode::Forbidden, format!("no publish right on {channel}")));
        }
        let app = self.state.routed_app(&self.identity.app_id, channel);
        if !self.state.namespace(&app, channel.namespace()).client_publish {
            return Err(OpError::new(
                ErrorCode::DisabledInNamespace,
                "clients may not publish in this namespace",
            ));
        }
        let config = &self.state.config;
        if !self.publish_bucket.try_take(config.publish_rate_per_second, config.publish_burst) {
            return Err(ErrorCode::RateLimited.into());
        }
        Ok(())
    }

    /// Takes the request budget of one request other than a publish; false when the client is
    /// over its request rate.
    pub fn take_request(&mut self) -> bool {
        let config = &self.state.config;
        self.request_bucket.try_take(config.request_rate_per_second, config.request_burst)
    }

    /// Returns whether the session is subscribed to `channel`.
    pub fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.subscriptions.contains_key(channel)
    }

    async fn history(
        &self,
        request: tributary_protocol::frame::HistoryRequest,
    ) -> Result<ops::HistoryResult, OpError> {
        if !self.identity.capabilities.allows(&request.channel, Right::History) {
            return Err(OpError::new(
                ErrorCode::Forbidden,
                format!("no history right on {}", request.channel),
            ));
        }
        ops::history(
            &self.state,
            &self.identity.app_id,
            request.channel,
            request.since,
            request.direction,
            request.limit,
        )
        .await
    }

    async fn presence(&self, channel: ChannelName) -> Result<PresenceReply, OpError> {
        if !self.identity.capabilities.allows(&channel, Right::Presence) {
            return Err(OpError::new(ErrorCode::Forbidden, format!("no presence right on {channel}")));
        }
        let app = self.state.route(&self.identity.app_id, &channel, Right::Presence).await?.app;
        if !self.state.namespace(&app, channel.namespace()).presence {
            return Err(OpError::new(
                ErrorCode::DisabledInNamespace,
                "presence is disabled for this namespace",
            ));
        }
        let key = ChannelKey::new(app, channel);
        let members = self.state.engine.presence(&key).await?;
        let occupancy = self.state.engine.occupancy(&key).await?;
        Ok(PresenceReply { channel: key.channel.to_string(), members, occupancy })
    }

    async fn presence_update(&self, channel: &ChannelName, state: Box<RawValue>) -> Result<(), OpError> {
        let subscription = self.subscriptions.get(channel).ok_or(ErrorCode::NotSubscribed)?;
        if !subscription.presence {
            return Err(OpError::new(
                ErrorCode::DisabledInNamespace,
                "presence is disabled for this namespace",
            ));
        }
        let member = self.member(&subscription.key, Some(Arc::from(state)));
        if !self.state.engine.presence_update(&subscription.key, member.clone()).await? {
            // The entry expired (a missed heartbeat); the client is still subscribed, so join again.
            let ns = self.state.namespace(&subscription.key.app, channel.namespace());
            let options = self.state.config.presence_options(&ns);
            self.state.engine.presence_join(&subscription.key, member, options).await?;
        }
        Ok(())
    }

    async fn refresh(&mut self, token: &str) -> Result<RefreshReply, OpError> {
        let (identity, credential, _) = Identity::authenticate(&self.state, token).await?;
        if identity.client_id != self.identity.client_id || identity.app_id != self.identity.app_id {
            return Err(ErrorCode::TokenMismatch.into());
        }
        for channel in self.reauthenticate(identity, credential).await {
            let frame = server::encode_unsubscribed(channel.as_str(), ErrorCode::Forbidden);
            self.conn.push(Outbound::frame(frame));
        }
        Ok(RefreshReply { expires_at: self.identity.expires_at })
    }

    /// Puts a new token of the same client and app in force: the connection is checked against
    /// it, and the subscriptions it no longer grants end (returned, so the transport can say so).
    pub async fn reauthenticate(&mut self, identity: Identity, credential: Credential) -> Vec<ChannelName> {
        self.conn.set_credential(credential);
        crate::transport::recheck(&self.state, &self.conn).await;
        self.identity = identity;
        let revoked: Vec<ChannelName> = self
            .subscriptions
            .iter()
            .map(|s| &s.key.channel)
            .filter(|c| !self.identity.capabilities.allows(c, Right::Subscribe))
            .cloned()
            .collect();
        for channel in &revoked {
            if let Some(subscription) = self.subscriptions.remove(channel) {
                self.drop_subscription(subscription).await;
            }
        }
        revoked
    }

    /// Leaves the presence of every channel (the client went away but its session stays, as an
    /// MQTT session does); [`Session::heartbeat`] joins again.
    pub async fn leave_presence(&self) {
        for subscription in self.subscriptions.iter().filter(|s| s.presence) {
            if let Err(err) = self.state.engine.presence_leave(&subscription.key, self.conn.id()).await {
                tracing::warn!(error = %err, "presence leave failed");
            }
        }
    }

    /// Refreshes this connection's presence entries (the heartbeat).
    pub async fn heartbeat(&self) {
        for subscription in self.subscriptions.iter() {
            if !subscription.presence {
                continue;
            }
            let ns = self.state.namespace(&subscription.key.app, subscription.key.channel.namespace());
            let options = self.state.config.presence_options(&ns);
            if let Err(err) = self
                .state
                .engine
                .presence_join(&subscription.key, self.member(&subscription.key, None), options)
                .await
            {
                tracing::warn!(error = %err, "presence heartbeat failed");
            }
        }
    }

    /// Ends the session: leaves every channel and its presence, and unregisters.
    pub async fn close(mut self) {
        for subscription in self.subscriptions.take_all() {
            self.drop_subscription(subscription).await;
        }
        if self.conn.is_parked() {
            // An offline MQTT session ending: its connection's end was told when it went offline.
            self.state.connections.unregister(&self.conn);
        } else {
            crate::transport::unregister(&self.state, &self.conn).await;
        }
    }
}

fn reply<T: Serialize>(id: Option<u64>, result: &T) -> bytes::Bytes {
    server::encode_reply(id, result)
}
