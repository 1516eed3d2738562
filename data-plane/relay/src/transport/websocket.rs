//! The WebSocket transport (subprotocol `tributary.v1`).
//!
//! One task per connection reads frames and runs the session, drains the connection's queue
//! (coalescing whatever is waiting into one flush) and sends pings. Anything can end the
//! connection through the [`ConnHandle`]'s close token.

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

/// Bytes read per read call; allocated for every connection, so kept small (a larger frame
/// just takes more reads).
const READ_BUFFER_BYTES: usize = 1024;

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
        .read_buffer_size(READ_BUFFER_BYTES)
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
    conn.push(Outbound::frame(server::encode_reply(id, &connected)));
    let mut session = Session::new(state.clone(), conn.clone(), identity, true);
    let mut io = Io { sink, stream, rx, batch: Vec::new() };
    serve(&mut io, &mut session, &state).await;
    conn.closed().cancel();
    session.close().await;
    goodbye(&mut io.sink, &conn).await;
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

/// A connected WebSocket's halves and its outbound queue, all driven by one task.
struct Io {
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    rx: mpsc::Receiver<Outbound>,
    /// Grows to the largest batch seen; an idle connection never pays for a full one.
    batch: Vec<Outbound>,
}

/// Runs the session until the client leaves, the connection is closed, or a timer fires. One
/// task per connection reads frames, drains the queue (coalescing), pings and keeps presence
/// alive: a second task per connection would cost memory on every idle connection.
async fn serve(io: &mut Io, session: &mut Session, state: &RelayState) {
    let config = &state.config;
    let conn = session.conn().clone();
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let ping_every = Duration::from_millis(config.ping_interval_ms);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let heartbeat_every = Duration::from_millis((config.presence_timeout_ms / 3).max(1));
    let mut heartbeat = tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
    // Timers live across iterations and are reset only when their deadline moves: creating
    // them anew on every wake would put two timer registrations on every write.
    let idle_timer = sleep_until(Instant::now() + idle);
    tokio::pin!(idle_timer);
    let mut expires_at = session.identity().expires_at;
    let expiry = sleep_until(deadline(expires_at));
    tokio::pin!(expiry);
    loop {
        // A long recovery continues whenever the client has drained enough of its queue.
        if session.catching_up() {
            session.catch_up().await;
        }
        // Not `biased`: a queue that is never empty must not starve reads, timers or the
        // heartbeat, and a chatty client must not starve its deliveries.
        tokio::select! {
            _ = conn.closed().cancelled() => return,
            _ = state.shutdown.cancelled() => return conn.close(CloseCode::Shutdown),
            _ = &mut idle_timer => return conn.close(CloseCode::IdleTimeout),
            _ = &mut expiry => return conn.close(CloseCode::TokenExpired),
            n = io.rx.recv_many(&mut io.batch, COALESCE_MAX) => {
                if n == 0 || !write_batch(io, &conn, idle).await {
                    return;
                }
            }
            message = io.stream.next() => {
                idle_timer.as_mut().reset(Instant::now() + idle);
                if !on_message(session, message, config.max_frame_bytes).await {
                    return;
                }
                if session.identity().expires_at != expires_at {
                    // A refresh moved the expiry.
                    expires_at = session.identity().expires_at;
                    expiry.as_mut().reset(deadline(expires_at));
                }
            }
            _ = ping.tick() => {
                if !send_or_close(&mut io.sink, Message::Ping(bytes::Bytes::new()), &conn, idle).await {
                    return;
                }
            }
            _ = heartbeat.tick() => session.heartbeat().await,
        }
    }
}

/// Returns the instant of a Unix time in seconds (now, if it has passed). Capped at ten years,
/// because a token may say "never" with a huge `exp` and `Instant` arithmetic must not overflow.
fn deadline(unix_secs: u64) -> Instant {
    const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
    Instant::now() + Duration::from_secs(unix_secs.saturating_sub(unix_now()).min(TEN_YEARS))
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

/// Sends a message unless the connection is closed first or the peer reads nothing for `stall`:
/// a peer that stops reading must not pin the task, so it is closed as a slow consumer.
async fn send_or_close(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
    conn: &ConnHandle,
    stall: Duration,
) -> bool {
    tokio::select! {
        sent = sink.send(message) => sent.is_ok(),
        _ = conn.closed().cancelled() => false,
        _ = tokio::time::sleep(stall) => {
            conn.close(CloseCode::SlowConsumer);
            false
        }
    }
}

/// Writes the batch taken from the queue with one flush; returns false when the socket is gone,
/// the connection was closed meanwhile, or the peer read nothing for `stall` (then it is closed
/// as a slow consumer).
async fn write_batch(io: &mut Io, conn: &ConnHandle, stall: Duration) -> bool {
    conn.dequeued(&io.batch);
    let write = async {
        for item in io.batch.drain(..) {
            let frame = match item {
                Outbound::Message(m) => m.frame.clone(),
                Outbound::Frame(f) => (*f).clone(),
            };
            io.sink.feed(Message::Text(frame)).await?;
        }
        io.sink.flush().await
    };
    let mut write = std::pin::pin!(write);
    // Most writes complete at once (the socket has room); only a write that has to wait pays
    // for registering the stall timer, which would otherwise happen on every delivery batch.
    if let std::task::Poll::Ready(written) = futures::poll!(write.as_mut()) {
        return written.is_ok();
    }
    tokio::select! {
        written = write => written.is_ok(),
        _ = conn.closed().cancelled() => false,
        _ = tokio::time::sleep(stall) => {
            conn.close(CloseCode::SlowConsumer);
            false
        }
    }
}

/// Sends the close frame: the connection's close code, or the answer to the client's own close.
/// Best effort: a peer that reads nothing gets its TCP connection dropped after a moment.
async fn goodbye(sink: &mut SplitSink<WebSocket, Message>, conn: &ConnHandle) {
    let send = async {
        match conn.close_code() {
            Some(code) => close(sink, code).await,
            // The client closed first: the WebSocket layer queued the answer to its close frame,
            // and closing the sink flushes it.
            None => {
                let _ = sink.close().await;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, send).await;
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
