//! Operations shared by the client protocol and the HTTP API: errors, publish, history.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tributary_engine::{ChannelKey, HistoryQuery, NewMessage, PublishOptions, PublishOutcome};
use tributary_protocol::frame::Direction;
use tributary_protocol::{ChannelName, ErrorCode, Payload, PayloadError, Publication};

use crate::policy::AppPolicy;
use crate::state::RelayState;

/// A failed operation: a code and a precise message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct OpError {
    /// The error code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

impl OpError {
    /// Builds an error with a specific message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<ErrorCode> for OpError {
    fn from(code: ErrorCode) -> Self {
        Self::new(code, code.message())
    }
}

impl From<tributary_engine::EngineError> for OpError {
    fn from(err: tributary_engine::EngineError) -> Self {
        tracing::error!(error = %err, "engine operation failed");
        Self::from(err.code())
    }
}

impl From<PayloadError> for OpError {
    fn from(err: PayloadError) -> Self {
        let code = match err {
            PayloadError::NotBase64 => ErrorCode::InvalidPayload,
            PayloadError::TooLarge { .. } => ErrorCode::MessageTooLarge,
        };
        Self::new(code, err.to_string())
    }
}

/// A message to publish, from a client frame or an HTTP request.
pub struct PublishInput<'a> {
    /// The channel.
    pub channel: ChannelName,
    /// The JSON data (base64 text when `binary`).
    pub data: &'a RawValue,
    /// Whether `data` is base64 of opaque bytes.
    pub binary: bool,
    /// Opaque marker passed through.
    pub encoding: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// The publishing client, when a client publishes.
    pub client_id: Option<Arc<str>>,
    /// The publishing API key's id, when a backend publishes.
    pub api_key: Option<&'a str>,
}

/// The result of a publish, as replied to the publisher.
#[derive(Debug, Serialize)]
pub struct PublishResult {
    /// The channel.
    pub channel: String,
    /// The epoch.
    pub epoch: Arc<str>,
    /// The offset assigned (for a retried publish: the original offset).
    pub offset: u64,
    /// Milliseconds since the Unix epoch when it was stored.
    pub ts: u64,
    /// Whether this was a retry of an already stored publish.
    pub duplicate: bool,
    /// The pushes of the publish's push section: `{"push_id", "devices"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<serde_json::Value>,
    /// The client id the message was stored with (in an exchange's namespace, named by its
    /// app); not sent.
    #[serde(skip)]
    pub stored_client_id: Option<Arc<str>>,
}

/// Publishes into `app`, enforcing the namespace's size limit.
pub async fn publish(
    state: &RelayState,
    app: &Arc<str>,
    input: PublishInput<'_>,
) -> Result<PublishResult, OpError> {
    let ns = state.namespace(app, input.channel.namespace());
    let payload = Payload::from_raw(input.data, input.binary, ns.max_message_bytes)?;
    let message = NewMessage {
        payload,
        client_id: input.client_id,
        encoding: input.encoding.map(Arc::from),
        meta: None,
    };
    publish_message(state, app, input.channel, message, input.idempotency_key, input.api_key).await
}

/// Publishes a message whose payload is already built (MQTT's are bytes as they came), enforcing
/// the namespace's size limit and the tenant's quotas. In an exchange's namespace the message
/// goes into the offering app's stream, named by its publisher's app (see [`crate::exchange`]),
/// and counts to the publishing app.
pub async fn publish_message(
    state: &RelayState,
    app: &Arc<str>,
    channel: ChannelName,
    mut message: NewMessage,
    idempotency_key: Option<String>,
    api_key: Option<&str>,
) -> Result<PublishResult, OpError> {
    if channel.namespace() == tributary_protocol::channel::SYSTEM_NAMESPACE {
        return Err(OpError::new(
            ErrorCode::Forbidden,
            format!(
                "only the server publishes in the {:?} namespace",
                tributary_protocol::channel::SYSTEM_NAMESPACE
            ),
        ));
    }
    let policy = ready_to_publish(state, app).await?;
    let routed = state.route_in(&policy, app, &channel, tributary_capability::Right::Publish).await?;
    let idempotency_key = if routed.exchanged {
        message.client_id = Some(crate::exchange::publisher_id(app, message.client_id.as_deref(), api_key));
        // Both sides publish into one stream: each side's keys are its own.
        idempotency_key.map(|key| format!("{app}/{key}"))
    } else {
        idempotency_key
    };
    let ns = state.namespace(&routed.app, channel.namespace());
    if ns.audited
        && message.client_id.is_none()
        && let Some(key) = api_key
    {
        // An audited namespace's log records who published: a backend by its key's id.
        message.client_id = Some(format!("key:{key}").into());
    }
    let stored_client_id = message.client_id.clone();
    let bytes = message.payload.len();
    if bytes > ns.max_message_bytes {
        return Err(PayloadError::TooLarge { size: bytes, limit: ns.max_message_bytes }.into());
    }
    let key = ChannelKey::new(routed.app, channel);
    let options = PublishOptions {
        stream: ns.stream(),
        idempotency_key,
        idempotency_window: Duration::from_secs(state.config.idempotency_window_secs),
    };
    state.quotas.admit_publish(&policy, bytes)?;
    let PublishOutcome { epoch, offset, ts_ms, duplicate } =
        state.engine.publish(&key, message, &options).await?;
    if !duplicate {
        state.usage.app(app).published(bytes);
    }
    Ok(PublishResult {
        channel: key.channel.to_string(),
        epoch,
        offset,
        ts: ts_ms,
        duplicate,
        push: None,
        stored_client_id,
    })
}

/// Returns the app's policy, with its tenant's quota counts learnt on this node. Only the first
/// call for an app waits on anything: a run of publishes calls this once before making them, so
/// that none of them waits here while a later one goes ahead (offsets follow the order of the
/// calls to the engine).
pub async fn ready_to_publish(state: &RelayState, app: &str) -> Result<Arc<AppPolicy>, OpError> {
    let policy = state
        .policies
        .get(&*state.directory, app)
        .await
        .map_err(crate::session::unavailable)?
        .ok_or(ErrorCode::UnknownKey)?;
    if !state.quotas.knows(&policy.tenant_id) {
        state.quotas.learn(&*state.engine, &policy).await;
    }
    Ok(policy)
}

/// A page of history as replied to clients.
pub struct HistoryResult {
    /// The channel.
    pub channel: ChannelName,
    /// The epoch.
    pub epoch: Arc<str>,
    /// The newest offset of the stream.
    pub top_offset: u64,
    /// The publications.
    pub publications: Vec<Publication>,
}

impl HistoryResult {
    /// Encodes `{"channel":..,"epoch":..,"offset":..,"messages":[<message frames>]}`, with as
    /// many messages as fit in `max_bytes` (at least one): a client pages on from the last
    /// offset it got, so one request never builds an unbounded reply.
    pub fn to_json(&self, max_bytes: usize) -> Box<RawValue> {
        let mut out = String::with_capacity(64 + self.publications.len() * 128);
        out.push_str(r#"{"channel":"#);
        out.push_str(&serde_json::to_string(self.channel.as_str()).unwrap_or_default());
        out.push_str(r#","epoch":"#);
        out.push_str(&serde_json::to_string(&*self.epoch).unwrap_or_default());
        out.push_str(&format!(r#","offset":{},"messages":["#, self.top_offset));
        for (i, p) in self.publications.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let frame = tributary_protocol::frame::server::encode_message(self.channel.as_str(), p);
            if i > 0 && out.len() + frame.len() > max_bytes {
                out.pop();
                break;
            }
            out.push_str(std::str::from_utf8(&frame).unwrap_or("null"));
        }
        out.push_str("]}");
        RawValue::from_string(out).unwrap_or_default()
    }
}

/// The largest page of history one request may ask for.
pub const MAX_HISTORY_LIMIT: u32 = 1000;

/// Reads history, refusing namespaces without history.
pub async fn history(
    state: &RelayState,
    app: &Arc<str>,
    channel: ChannelName,
    since: Option<u64>,
    direction: Direction,
    limit: Option<u32>,
) -> Result<HistoryResult, OpError> {
    let app = &state.route(app, &channel, tributary_capability::Right::History).await?.app;
    let ns = state.namespace(app, channel.namespace());
    if ns.history_size == 0 {
        return Err(OpError::new(ErrorCode::DisabledInNamespace, "history is disabled for this namespace"));
    }
    let limit = limit.unwrap_or(100);
    if limit == 0 || limit > MAX_HISTORY_LIMIT {
        return Err(OpError::new(
            ErrorCode::InvalidParameter,
            format!("limit must be 1 to {MAX_HISTORY_LIMIT}"),
        ));
    }
    let key = ChannelKey::new(app.clone(), channel);
    let query = HistoryQuery { since, direction, limit: limit as usize };
    let page = state.engine.history(&key, query, ns.stream()).await?;
    Ok(HistoryResult {
        channel: key.channel,
        epoch: page.epoch,
        top_offset: page.top_offset,
        publications: page.publications,
    })
}

/// The sink of a publish's push section (none needed without one; a server with none refuses
/// the section before anything is published).
pub(crate) fn push_sink<'a>(
    state: &'a RelayState,
    push: Option<&RawValue>,
) -> Result<Option<&'a Arc<dyn crate::state::PushSink>>, OpError> {
    match (push, state.push.get()) {
        (None, _) => Ok(None),
        (Some(push), Some(sink)) => sink.check(push).map(|()| Some(sink)),
        (Some(_), None) => Err(OpError::new(ErrorCode::Unavailable, "this server does not push")),
    }
}

/// Queues a published message's pushes: the message's id (channel, epoch and offset, the same
/// for a retried publish) names them, so they are queued once however often it is retried.
pub(crate) async fn queue_push(
    sink: &Arc<dyn crate::state::PushSink>,
    app: &str,
    result: &PublishResult,
    push: &RawValue,
) -> Result<serde_json::Value, OpError> {
    let message_id = format!("{}:{}:{}", result.channel, result.epoch, result.offset);
    let (push_id, devices) = sink.push_on_publish(app, &result.channel, &message_id, push).await?;
    Ok(serde_json::json!({"push_id": push_id, "devices": devices}))
}
