//! HTTP long-poll: `GET /v1/poll?channels=a,b&cursor=C` returns as soon as there is something
//! after the cursor, or empty after the wait.
//!
//! Each request is a short session that subscribes with recovery from the cursor, so long-poll
//! has exactly the offsets and recovery semantics of WebSocket: the messages after the cursor
//! come from history, anything newer from the live stream, with no gap and no duplicate.
//! Long-poll clients are not counted in presence (they would join and leave on every request).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tributary_protocol::{Cursor, StreamPosition};

use crate::conn::{ConnHandle, Outbound, Outbox};
use crate::ops::OpError;
use crate::session::Session;
use crate::state::RelayState;

/// Query parameters of the long-poll endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    /// Comma-separated channels.
    pub channels: String,
    /// The cursor from the previous response; without it the response is immediate and only
    /// carries the current cursor.
    pub cursor: Option<String>,
    /// How long to wait for messages, in milliseconds (capped by the configuration).
    pub timeout_ms: Option<u64>,
    /// The token, when `Authorization` cannot be set.
    pub token: Option<String>,
}

/// Most frames returned by one poll.
const MAX_FRAMES: usize = 1000;

/// Handles one poll.
pub async fn poll(
    State(state): State<Arc<RelayState>>,
    headers: HeaderMap,
    query: Result<Query<PollQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // If the client goes away mid-poll, the poll still ends (within its wait) and closes its
    // session, freeing its slot.
    super::detached(run(state, headers, query)).await
}

async fn run(
    state: Arc<RelayState>,
    headers: HeaderMap,
    query: Result<Query<PollQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, OpError> {
    let query = super::query(query)?;
    let channels = super::parse_channels(&query.channels)?;
    let given = super::decode_cursor(query.cursor.as_deref(), "cursor")?;
    let wait =
        Duration::from_millis(query.timeout_ms.unwrap_or(25_000).min(state.config.long_poll_max_wait_ms));
    let (identity, conn, mut rx) =
        super::open_connection(&state, super::bearer(&headers, query.token.as_deref())).await?;
    let mut session = Session::new(state.clone(), conn, identity, false);
    let super::Subscribed { mut cursor, unrecovered } =
        match super::subscribe_all(&mut session, channels, given.as_ref(), false).await {
            Ok(subscribed) => subscribed,
            Err(err) => {
                session.close().await;
                return Err(err);
            }
        };
    let mut frames = Vec::new();
    if given.is_some() && unrecovered.is_empty() {
        let conn = session.conn().clone();
        collect(&mut rx, &mut frames, wait, &state, &conn).await;
    }
    session.close().await;
    Ok(respond(frames, &mut cursor, &unrecovered))
}

async fn collect(
    rx: &mut Outbox,
    frames: &mut Vec<Outbound>,
    wait: Duration,
    state: &RelayState,
    conn: &ConnHandle,
) {
    tokio::select! {
        n = rx.recv_many(frames, MAX_FRAMES) => { if n == 0 { return; } }
        _ = tokio::time::sleep(wait) => return,
        _ = state.shutdown.cancelled() => return,
        // Nothing is queued after a close, so what was queued before it is a gap-free prefix.
        _ = conn.closed() => {}
    }
    // Take what is already queued too, so a burst is one response, not many.
    rx.try_recv_many(frames, MAX_FRAMES - frames.len());
}

fn respond(frames: Vec<Outbound>, cursor: &mut Cursor, unrecovered: &[String]) -> Response {
    let mut messages = Vec::new();
    let mut events = Vec::new();
    for item in frames {
        match item {
            Outbound::Message(m) => {
                let position = StreamPosition { epoch: m.epoch().to_string(), offset: m.offset() };
                cursor.positions.insert(m.channel.to_string(), position);
                messages.push(String::from_utf8_lossy(&m.frame).into_owned());
            }
            Outbound::Frame(f) => events.push(String::from_utf8_lossy(&f).into_owned()),
        }
    }
    let mut body = String::with_capacity(64 + messages.iter().map(String::len).sum::<usize>());
    body.push_str(r#"{"cursor":"#);
    body.push_str(&serde_json::to_string(&cursor.encode()).unwrap_or_default());
    body.push_str(r#","unrecovered":"#);
    body.push_str(&serde_json::to_string(unrecovered).unwrap_or_default());
    body.push_str(r#","messages":["#);
    body.push_str(&messages.join(","));
    body.push_str(r#"],"events":["#);
    body.push_str(&events.join(","));
    body.push_str("]}");
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
