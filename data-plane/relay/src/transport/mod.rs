//! Transports: how clients reach a session.

pub mod echo;
pub mod long_poll;
pub mod sse;
pub mod websocket;

use std::sync::Arc;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::HeaderMap;
use tributary_protocol::frame::SubscribeRequest;
use tributary_protocol::{ChannelName, Cursor, ErrorCode};

use crate::conn::ConnHandle;
use crate::ops::OpError;
use crate::session::{Identity, Session};
use crate::state::RelayState;

/// Returns the bearer token of an `Authorization` header, or the `token` query parameter.
pub fn bearer<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(query_token)
}

/// Returns the instant of a Unix time in seconds (now, if it has passed). Capped at ten years,
/// because a token may say "never" with a huge `exp` and `Instant` arithmetic must not overflow.
pub(crate) fn deadline(unix_secs: u64) -> tokio::time::Instant {
    const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
    let left = unix_secs.saturating_sub(crate::session::unix_now()).min(TEN_YEARS);
    tokio::time::Instant::now() + std::time::Duration::from_secs(left)
}

/// Authenticates a token and registers a new connection for it, within the app's limit.
pub async fn open_connection(
    state: &Arc<RelayState>,
    token: Option<&str>,
) -> Result<(Identity, ConnHandle, crate::conn::Outbox), OpError> {
    let token = token.ok_or(ErrorCode::Unauthorized)?;
    let (identity, credential, policy) = Identity::authenticate(state, token).await?;
    state.quotas.admit_connection(&policy)?;
    let (conn, outbox) = new_connection(state, &identity, credential).await?;
    Ok((identity, conn, outbox))
}

/// Registers a new connection of an authenticated client, within its app's limit.
pub async fn new_connection(
    state: &Arc<RelayState>,
    identity: &Identity,
    credential: crate::policy::Credential,
) -> Result<(ConnHandle, crate::conn::Outbox), OpError> {
    let conn_id: Arc<str> = Arc::from(uuid::Uuid::now_v7().simple().to_string());
    let config = &state.config;
    let (conn, outbox) = ConnHandle::new(
        conn_id,
        identity.app_id.clone(),
        identity.client_id.clone(),
        credential,
        config.outbound_queue_len,
        config.max_queued_bytes,
    );
    register(state, &conn).await?;
    Ok((conn, outbox))
}

/// Registers a connection (a new one, or an MQTT session's coming back) within its app's limit
/// and checks it against its app's current policy.
pub async fn register(state: &Arc<RelayState>, conn: &ConnHandle) -> Result<(), OpError> {
    if !state.connections.register(conn, state.config.max_connections_per_app) {
        return Err(ErrorCode::ConnectionLimit.into());
    }
    recheck(state, conn).await;
    // A shutdown cancels the token, then closes every registered connection: one registered
    // in between is closed here.
    if state.shutdown.is_cancelled() {
        conn.close(tributary_protocol::CloseCode::Shutdown);
    }
    lifecycle(state, conn, true).await;
    Ok(())
}

/// Unregisters a connection that ended (or an MQTT session's that went offline).
pub async fn unregister(state: &RelayState, conn: &ConnHandle) {
    state.connections.unregister(conn);
    lifecycle(state, conn, false).await;
}

/// Writes `client.connected` or `client.disconnected` to the app's durable feed, when the app
/// has one (rules want it); nothing otherwise, at the cost of a check.
async fn lifecycle(state: &RelayState, conn: &ConnHandle, connected: bool) {
    use tributary_engine::{ClientInfo, FeedRecord};
    let client_id = (!conn.client().is_empty()).then(|| conn.client().clone());
    let client = ClientInfo { client_id, conn_id: conn.id().clone() };
    let record =
        if connected { FeedRecord::ClientConnected(client) } else { FeedRecord::ClientDisconnected(client) };
    if let Err(err) = state.engine.feed_client(conn.app(), record).await {
        tracing::debug!(error = %err, "a connection's event was not written to its app's feed");
    }
}

/// Checks a registered connection against its app's current policy. A revocation reloads the
/// policy and then checks the registered connections; one that was verified against the old
/// policy but registered after that check is caught here.
pub(crate) async fn recheck(state: &RelayState, conn: &ConnHandle) {
    if let Ok(policy) = state.policies.get(&*state.directory, conn.app()).await {
        conn.close_unless_admitted(policy.as_deref());
    }
}

/// Runs a request's work in a task of its own and answers with its result. Hyper drops a
/// handler whose client went away; work that registered a connection or hub subscriptions
/// must still reach its cleanup, so it must not be dropped with the handler.
pub async fn detached<F>(work: F) -> axum::response::Response
where
    F: std::future::Future<Output = Result<axum::response::Response, OpError>> + Send + 'static,
{
    use axum::response::IntoResponse;
    match tokio::spawn(work).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => crate::http_api::ApiError::from(err).into_response(),
        Err(_) => crate::http_api::ApiError::from(ErrorCode::Internal).into_response(),
    }
}

/// Maps a rejected query string to `invalid_parameter`.
pub fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, OpError> {
    query.map(|Query(q)| q).map_err(|e| OpError::new(ErrorCode::InvalidParameter, e.body_text()))
}

/// Decodes an optional cursor; a present but malformed one is `invalid_parameter`.
pub fn decode_cursor(text: Option<&str>, what: &str) -> Result<Option<Cursor>, OpError> {
    text.map(|text| {
        Cursor::decode(text).ok_or_else(|| {
            OpError::new(ErrorCode::InvalidParameter, format!("{what} is not a cursor of this server"))
        })
    })
    .transpose()
}

/// What subscribing a cursor's channels produced.
pub struct Subscribed {
    /// Where each channel starts (before anything replayed).
    pub cursor: Cursor,
    /// Channels whose position in `from` could not be recovered.
    pub unrecovered: Vec<String>,
}

/// Subscribes `session` to every channel, recovering each from its position in `from` (if
/// any). With `send_replies`, each subscribe reply is queued (SSE shows them; long-poll does not).
/// On error the caller must close the session.
pub async fn subscribe_all(
    session: &mut Session,
    channels: Vec<ChannelName>,
    from: Option<&Cursor>,
    send_replies: bool,
) -> Result<Subscribed, OpError> {
    let mut subscribed = Subscribed { cursor: Cursor::default(), unrecovered: Vec::new() };
    let total = channels.len();
    for (index, channel) in channels.into_iter().enumerate() {
        let recover = from.and_then(|c| c.positions.get(channel.as_str()).cloned());
        let request = SubscribeRequest { channel, recover, rewind: None, state: None };
        let reply = session.subscribe_sharing(request, send_replies.then_some(None), total - index).await?;
        if reply.recovered == Some(false) {
            subscribed.unrecovered.push(reply.channel.clone());
        }
        subscribed.cursor.positions.insert(reply.channel, reply.position);
    }
    Ok(subscribed)
}

/// Parses a comma-separated channel list.
pub fn parse_channels(list: &str) -> Result<Vec<tributary_protocol::ChannelName>, OpError> {
    let mut seen = std::collections::HashSet::new();
    let channels: Vec<_> = list
        .split(',')
        .filter(|c| !c.is_empty() && seen.insert(*c))
        .map(|c| {
            tributary_protocol::ChannelName::parse(c)
                .map_err(|e| OpError::new(ErrorCode::InvalidChannel, e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if channels.is_empty() {
        return Err(OpError::new(ErrorCode::InvalidParameter, "channels must name at least one channel"));
    }
    Ok(channels)
}
