//! The WebSocket transport (subprotocol `tributary.v1`).
//!
//! Two tasks per connection: this one reads frames and runs the session; the writer drains the
//! connection's queue, coalescing whatever is waiting into one flush, and sends pings. Either
//! side ends the connection through the [`ConnHandle`]'s close token.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;
use tributary_protocol::frame::{ClientFrame, ClientOp, server};
use tributary_protocol::{CloseCode, ErrorCode, SUBPROTOCOL};

use crate::conn::{ConnHandle, Outbound, text};
use crate::session::{ConnectedReply, Session, unix_now};
use crate::state::RelayState;

/// Frames written per flush at most, so one busy connection cannot starve its own pings.
const COALESCE_MAX: usize = 64;

/// Bytes of frames gathered before tungstenite writes to the socket (a flush writes sooner).
const WRITE_BUFFER_BYTES: usize = 32 * 1024;

/// How long the close frame may take to send before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Upgrades to WebSocket with our limits set (tungstenite's defaults allow 64 MiB messages).
pub async fn upgrade(State(state): State<Arc<RelayState>>, ws: WebSocketUpgrade) -> Response {
    let max = state.config.max_frame_bytes;
    ws.protocols([SUBPROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        // Small read buffer: most connections are idle most of the time. The write buffer
        // collects a whole coalesced batch so it leaves in one syscall (at 0, every frame
        // would be its own write); it grows only while there is data.
        .read_buffer_size(4096)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(max.saturating_mul(4).max(1 << 20))
        .on_upgrade(move |socket| {
            let span = tracing::info_span!(
                "ws",
                app = tracing::field::Empty,
                client_id = tracing::field::Empty,
                conn_id = tracing::field::Empty
            );
            run(socket, state).instrument(span)
        })
}

async fn run(socket: WebSocket, state: Arc<RelayState>) {
    let (mut sink, mut stream) = socket.split();
    let deadline = Instant::now() + Duration::from_millis(state.config.handshake_timeout_ms);
    let first = tokio::select! {
        frame = next_frame(&mut stream, state.config.max_frame_bytes) => frame,
        _ = sleep_until(deadline) => Err(CloseCode::HandshakeTimeout),
    };
    let token = match first {
        Ok(Ok(ClientFrame { id, op: ClientOp::Connect { token } })) => (id, token),
        Ok(Ok(ClientFrame { id, .. })) => {
            return refuse(
                sink,
                id,
                ErrorCode::ConnectExpected,
                "the first frame must be connect",
                CloseCode::ProtocolViolation,
            )
            .await;
        }
        Ok(Err(err)) => {
            return refuse(sink, err.id, err.code, &err.message, CloseCode::ProtocolViolation).await;
        }
        Err(code) => return close(&mut sink, code).await,
    };
    let (id, token) = token;
    let (identity, conn, rx) = match crate::transport::open_connection(&state, Some(&token)).await {
        Ok(opened) => opened,
        Err(err) => {
            let code = match err.code {
                ErrorCode::ConnectionLimit => CloseCode::ConnectionLimit,
                code if code.temporary() => CloseCode::Internal,
                _ => CloseCode::InvalidToken,
            };
            return refuse(sink, id, err.code, &err.message, code).await;
        }
    };
    drop(token);
    let span = tracing::Span::current();
    span.record("app", &*identity.app_id);
    span.record("client_id", &*identity.client_id);
    span.record("conn_id", &**conn.id());
    let connected = ConnectedReply {
        client_id: &identity.client_id,
        conn_id: conn.id(),
        expires_at: identity.expires_at,
        ping_interval_ms: state.config.ping_interval_ms,
        protocol: SUBPROTOCOL,
    };
    conn.push(Outbound::Frame(text(server::encode_reply(id, &connected))));
    let writer = tokio::spawn(write_loop(sink, rx, conn.clone(), state.clone()).in_current_span());
    let mut session = Session::new(state.clone(), conn.clone(), identity, true);
    read_loop(&mut session, &mut stream, &state).await;
    if conn.close_code().is_none() {
        conn.closed().cancel();
    }
    session.close().await;
    let _ = writer.await;
}

type WsResult = Result<Result<ClientFrame, tributary_protocol::frame::FrameError>, CloseCode>;

/// Reads until the next data frame, skipping pings and pongs.
async fn next_frame(stream: &mut SplitStream<WebSocket>, max: usize) -> WsResult {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => return Ok(ClientFrame::parse(t.as_bytes(), max)),
            Some(Ok(Message::Binary(b))) => return Ok(ClientFrame::parse(&b, max)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Err(CloseCode::ProtocolViolation),
            Some(Err(err)) => return Err(classify(err)),
        }
    }
}

/// Tells an oversized frame (the client's fault, terminal) from a broken socket.
fn classify(err: axum::Error) -> CloseCode {
    let inner = err.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => CloseCode::FrameTooLarge,
        Some(tungstenite::Error::Utf8(_)) => CloseCode::ProtocolViolation,
        Some(tungstenite::Error::Protocol(_)) => CloseCode::ProtocolViolation,
        _ => CloseCode::Internal,
    }
}

/// Runs the session until the client leaves, the connection is closed, or a timer fires.
async fn read_loop(session: &mut Session, stream: &mut SplitStream<WebSocket>, state: &RelayState) {
    let idle = Duration::from_millis(state.config.idle_timeout_ms);
    let heartbeat_every = Duration::from_millis((state.config.presence_timeout_ms / 3).max(1));
    let mut heartbeat = tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
    let mut idle_deadline = Instant::now() + idle;
    let conn = session.conn().clone();
    loop {
        let expires_in = Duration::from_secs(session.identity().expires_at.saturating_sub(unix_now()));
        tokio::select! {
            message = stream.next() => {
                idle_deadline = Instant::now() + idle;
                if !on_message(session, message, state.config.max_frame_bytes).await {
                    return;
                }
            }
            _ = conn.closed().cancelled() => return,
            _ = state.shutdown.cancelled() => return conn.close(CloseCode::Shutdown),
            _ = heartbeat.tick() => session.heartbeat().await,
            _ = sleep_until(idle_deadline) => return conn.close(CloseCode::IdleTimeout),
            _ = tokio::time::sleep(expires_in) => {
                // Re-check: a refresh may have moved the expiry while we slept.
                if session.identity().expires_at <= unix_now() {
                    return conn.close(CloseCode::TokenExpired);
                }
            }
        }
    }
}

/// Handles one WebSocket message; returns false when the connection must end.
async fn on_message(
    session: &mut Session,
    message: Option<Result<Message, axum::Error>>,
    max: usize,
) -> bool {
    let parsed = match message {
        Some(Ok(Message::Text(t))) => ClientFrame::parse(t.as_bytes(), max),
        Some(Ok(Message::Binary(b))) => ClientFrame::parse(&b, max),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => return true,
        Some(Ok(Message::Close(_))) | None => return false,
        Some(Err(err)) => {
            let code = classify(err);
            if code != CloseCode::Internal {
                session.conn().close(code);
            }
            return false;
        }
    };
    match parsed {
        Ok(frame) => session.handle(frame).await,
        Err(err) => session.refuse(err.id, err.code, &err.message),
    }
    true
}

/// Drains the queue into the socket, coalescing, and pings; sends the close frame at the end.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    conn: ConnHandle,
    state: Arc<RelayState>,
) {
    let every = Duration::from_millis(state.config.ping_interval_ms);
    let mut ping = tokio::time::interval_at(Instant::now() + every, every);
    let mut batch = Vec::with_capacity(COALESCE_MAX);
    loop {
        tokio::select! {
            biased;
            _ = conn.closed().cancelled() => break,
            n = rx.recv_many(&mut batch, COALESCE_MAX) => {
                conn.dequeued(&batch);
                // A peer that stops reading must not pin this task: closing wins over writing.
                let written = tokio::select! {
                    written = write_batch(&mut sink, &mut batch) => written.is_ok(),
                    _ = conn.closed().cancelled() => false,
                };
                if n == 0 || !written {
                    conn.closed().cancel();
                    break;
                }
            }
            _ = ping.tick() => {
                let sent = tokio::select! {
                    sent = sink.send(Message::Ping(bytes::Bytes::new())) => sent.is_ok(),
                    _ = conn.closed().cancelled() => false,
                };
                if !sent {
                    conn.closed().cancel();
                    break;
                }
            }
        }
    }
    let goodbye = async {
        match conn.close_code() {
            Some(code) => close(&mut sink, code).await,
            None => {
                let normal = CloseFrame { code: 1000, reason: Utf8Bytes::from("") };
                let _ = sink.send(Message::Close(Some(normal))).await;
            }
        }
    };
    // The close frame is best effort: a peer that reads nothing gets its TCP connection dropped.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
}

async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    batch: &mut Vec<Outbound>,
) -> Result<(), axum::Error> {
    for item in batch.drain(..) {
        let frame = match item {
            Outbound::Message(m) => m.frame.clone(),
            Outbound::Frame(f) => f,
        };
        sink.feed(Message::Text(frame)).await?;
    }
    sink.flush().await
}

async fn refuse(
    mut sink: SplitSink<WebSocket, Message>,
    id: Option<u64>,
    code: ErrorCode,
    message: &str,
    close_code: CloseCode,
) {
    let _ = sink.send(Message::Text(text(server::encode_error(id, code, message)))).await;
    close(&mut sink, close_code).await;
}

async fn close(sink: &mut SplitSink<WebSocket, Message>, code: CloseCode) {
    let frame = CloseFrame { code: code.number(), reason: Utf8Bytes::from(code.reason()) };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = sink.close().await;
}
