//! Server-Sent Events: `GET /v1/sse?channels=a,b` with a token, resuming from `Last-Event-ID`.
//!
//! Each `message` event's id is an opaque cursor holding the position of every channel of the
//! stream, so the browser's automatic reconnect (which sends the last id back) recovers all
//! channels at once. Other frames (subscribe replies, presence events) are sent without an id.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tributary_protocol::frame::server;
use tributary_protocol::{CloseCode, Cursor};

use crate::conn::{ConnHandle, Outbound, Outbox};
use crate::ops::OpError;
use crate::session::{Session, unix_now};
use crate::state::RelayState;

/// Query parameters of the SSE endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseQuery {
    /// Comma-separated channels.
    pub channels: String,
    /// The token, for clients that cannot set `Authorization` (browsers' `EventSource`).
    pub token: Option<String>,
    /// A cursor to resume from, when `Last-Event-ID` cannot be sent.
    pub cursor: Option<String>,
}

/// Opens an event stream.
pub async fn stream(
    State(state): State<Arc<RelayState>>,
    headers: HeaderMap,
    query: Result<Query<SseQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // If the client goes away mid-setup, the setup still finishes and its cleanup (which is in
    // the pump) still runs.
    super::detached(open(state, headers, query)).await
}

async fn open(
    state: Arc<RelayState>,
    headers: HeaderMap,
    query: Result<Query<SseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, OpError> {
    let query = super::query(query)?;
    let channels = super::parse_channels(&query.channels)?;
    // Name the input that was used in any error: the header wins over the query parameter.
    let resume = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(header) => Some((header, "Last-Event-ID")),
        None => query.cursor.as_deref().map(|cursor| (cursor, "cursor")),
    };
    let from = match resume {
        Some((text, what)) => super::decode_cursor(Some(text), what)?,
        None => None,
    };
    let token = super::bearer(&headers, query.token.as_deref());
    let (identity, conn, rx) = super::open_connection(&state, token).await?;
    let mut session = Session::new(state.clone(), conn, identity, true);
    let cursor = match super::subscribe_all(&mut session, channels, from.as_ref(), true).await {
        Ok(subscribed) => subscribed.cursor,
        Err(err) => {
            session.close().await;
            return Err(err);
        }
    };
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let timers = Timers {
        ping: Duration::from_millis(state.config.ping_interval_ms),
        heartbeat: Duration::from_millis((state.config.presence_timeout_ms / 3).max(1)),
        idle: Duration::from_millis(state.config.idle_timeout_ms),
    };
    state.tasks.spawn(pump(session, rx, body_tx, cursor, timers));
    let mut response = Body::from_stream(ReceiverStream::new(body_rx)).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct Timers {
    ping: Duration,
    heartbeat: Duration,
    idle: Duration,
}

type BodySender = mpsc::Sender<Result<Bytes, Infallible>>;

/// Sends a chunk unless the connection closes first; a client that reads nothing for the idle
/// timeout is closed, so a stuck body never pins the session.
async fn send(body: &BodySender, chunk: Bytes, conn: &ConnHandle, idle: Duration) -> bool {
    tokio::select! {
        sent = body.send(Ok(chunk)) => sent.is_ok(),
        _ = conn.closed() => false,
        _ = tokio::time::sleep(idle) => {
            conn.close(CloseCode::IdleTimeout);
            false
        }
    }
}

/// Moves queued frames into the response body until the client goes away or the session ends.
async fn pump(mut session: Session, mut rx: Outbox, body: BodySender, mut cursor: Cursor, timers: Timers) {
    let conn: ConnHandle = session.conn().clone();
    let mut ping = tokio::time::interval_at(Instant::now() + timers.ping, timers.ping);
    let mut heartbeat = tokio::time::interval_at(Instant::now() + timers.heartbeat, timers.heartbeat);
    let mut batch = Vec::new();
    // A comment first, so proxies and clients see the stream open at once.
    let mut open = send(&body, Bytes::from_static(b": open\n\n"), &conn, timers.idle).await;
    while open {
        if session.catching_up() {
            session.catch_up().await;
        }
        let expires_in = Duration::from_secs(session.identity().expires_at.saturating_sub(unix_now()));
        tokio::select! {
            biased;
            _ = conn.closed() => break,
            _ = body.closed() => break,
            n = rx.recv_many(&mut batch, 64) => {
                if n == 0 { break; }
                let chunk = encode_batch(&mut batch, &mut cursor);
                open = send(&body, chunk, &conn, timers.idle).await;
            }
            _ = ping.tick() => open = send(&body, Bytes::from_static(b": ping\n\n"), &conn, timers.idle).await,
            _ = heartbeat.tick() => session.heartbeat().await,
            _ = tokio::time::sleep(expires_in) => conn.close(CloseCode::TokenExpired),
        }
    }
    if let Some(code) = conn.close_code() {
        let frame = server::encode_disconnect(code);
        let mut chunk = Vec::with_capacity(frame.len() + 8);
        chunk.extend_from_slice(b"data: ");
        chunk.extend_from_slice(&frame);
        chunk.extend_from_slice(b"\n\n");
        let _ = body.try_send(Ok(Bytes::from(chunk)));
    }
    conn.shut();
    session.close().await;
}

/// Encodes queued frames as SSE events. Frames are compact JSON, which never contains a raw
/// newline, so each fits one `data:` line.
fn encode_batch(batch: &mut Vec<Outbound>, cursor: &mut Cursor) -> Bytes {
    let mut out = Vec::new();
    for item in batch.drain(..) {
        match item {
            Outbound::Message(m) => {
                let position =
                    tributary_protocol::StreamPosition { epoch: m.epoch().to_string(), offset: m.offset() };
                cursor.positions.insert(m.channel.to_string(), position);
                out.extend_from_slice(b"id: ");
                out.extend_from_slice(cursor.encode().as_bytes());
                out.extend_from_slice(b"\ndata: ");
                out.extend_from_slice(&m.frame);
            }
            Outbound::Frame(f) => {
                // Every event carries the cursor, so a stream that drops before its first
                // message still resumes from where it started.
                out.extend_from_slice(b"id: ");
                out.extend_from_slice(cursor.encode().as_bytes());
                out.extend_from_slice(b"\ndata: ");
                out.extend_from_slice(&f);
            }
        }
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
}
