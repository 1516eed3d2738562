//! The WebSocket transport (subprotocol `tributary.v1`), on our own lean WebSocket layer.
//!
//! One task per connection reads frames and runs the session, writes the connection's queue
//! (coalescing whatever is waiting into one write), pings, and keeps presence alive, all from
//! one poll loop with one timer. Nothing is allocated per connection while it is idle beyond its
//! task and session: buffers exist only while there is data, and the work of a request runs in a
//! boxed future so that its state does not sit in every idle connection's task.

mod frame;
mod handshake;
mod opening;
mod socket;
mod stream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep, sleep_until};
use tributary_protocol::frame::{ClientFrame, ClientOp, FrameError, server};
use tributary_protocol::{CloseCode, ErrorCode, SUBPROTOCOL};

pub use frame::{Incoming, WsError, encode_close, encode_header, opcode};
pub use handshake::{Accepted, accept, accept_key};
pub use opening::upgrade;
pub use socket::{Echoed, Read, Socket};
pub use stream::Stream;

use crate::conn::{ConnHandle, Outbox};
use crate::http_api::ApiError;
use crate::ops::OpError;
use crate::session::{ConnectedReply, Identity, Session, unix_now};
use crate::state::RelayState;
use crate::transport::deadline;

/// Frames moved from the queue into the write buffer per wake at most, so one busy connection
/// cannot starve its own reads and timers.
const COALESCE_MAX: usize = 256;

/// Encoded bytes waiting for the socket above which nothing more is taken from the queue: a
/// client that reads slowly fills its bounded queue and is closed as a slow consumer, instead
/// of growing an unbounded write buffer.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// How long the close frame may take to send before the socket is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Maps a framing error to the close code of `tributary.v1`.
fn close_code(err: &WsError) -> CloseCode {
    match err {
        WsError::TooLarge => CloseCode::FrameTooLarge,
        WsError::InvalidUtf8 | WsError::Protocol(_) => CloseCode::ProtocolViolation,
    }
}

/// What the client sent, parsed (the frame's bytes are not kept).
enum Input {
    Frame(Result<ClientFrame, FrameError>),
    /// The client's close frame, with its code (1005 when it gave none).
    Close(u16),
}

fn parse(incoming: Incoming<'_>, max: usize) -> Input {
    match incoming {
        Incoming::Text(bytes) | Incoming::Binary(bytes) => Input::Frame(ClientFrame::parse(bytes, max)),
        Incoming::Close(code, _) => Input::Close(code),
        // Pings and pongs are answered by the socket and never reach here.
        Incoming::Ping(_) | Incoming::Pong => Input::Close(1005),
    }
}

/// A connection past its `connect` frame.
struct Live<S> {
    socket: Socket<S>,
    session: Session,
    outbox: Outbox,
}

impl<S> Live<S> {
    fn config(&self) -> &crate::config::RelayConfig {
        &self.session.state().config
    }
}

/// Runs a connection. Every phase but the steady one runs in a boxed future, so an idle
/// connection's task holds only what the steady phase needs.
async fn run(opening: Pin<Box<dyn Future<Output = Option<Live<Stream>>> + Send>>) {
    let Some(mut live) = opening.await else { return };
    let client_close = serve(&mut live).await;
    Box::pin(finish(live, client_close)).await;
}

/// Ends the session, then says goodbye: the connection's close code, or the answer to the
/// client's close.
async fn finish(live: Live<Stream>, client_close: Option<u16>) {
    let Live { socket, session, .. } = live;
    let conn = session.conn().clone();
    conn.shut();
    session.close().await;
    match (conn.close_code(), client_close) {
        (Some(code), _) => close(socket, code).await,
        (None, Some(code)) => reply_close(socket, code).await,
        // The socket is gone.
        (None, None) => {}
    }
}

/// How many consecutive publishes of one client are handed to the engine together at most.
const PIPELINED_PUBLISHES: usize = 64;

/// How handling the client's frames ended.
enum Handled {
    /// Every complete frame was handled; serve on.
    More,
    /// The client sent a close frame with this code.
    ClientClosed(u16),
    /// The connection was closed (a framing error).
    Closed,
}

/// Handles every complete frame the client has sent, in a boxed future: the frames and the work
/// they cause never sit in the connection's task. Consecutive publishes are handled together
/// (see [`Session::publish_all`]); anything after them waits for them, so replies keep the
/// order of the requests.
fn handle_input(live: &mut Live<Stream>) -> Pin<Box<dyn Future<Output = Handled> + Send + '_>> {
    Box::pin(async move {
        let mut publishes = Vec::new();
        loop {
            let max = live.config().max_frame_bytes;
            let input = match live.socket.next(|incoming, _| parse(incoming, max)) {
                Ok(Some(Input::Frame(Ok(ClientFrame { id, op: ClientOp::Publish(request) })))) => {
                    publishes.push((id, request));
                    if publishes.len() < PIPELINED_PUBLISHES {
                        continue;
                    }
                    None
                }
                other => Some(other),
            };
            if !publishes.is_empty() {
                live.session.publish_all(std::mem::take(&mut publishes)).await;
            }
            let Some(input) = input else { continue };
            match input {
                Ok(None) => return Handled::More,
                Ok(Some(Input::Frame(Ok(frame)))) => live.session.handle(frame).await,
                Ok(Some(Input::Frame(Err(err)))) => live.session.refuse(err.id, err.code, &err.message),
                Ok(Some(Input::Close(code))) => return Handled::ClientClosed(code),
                Err(err) => {
                    live.session.conn().close(close_code(&err));
                    return Handled::Closed;
                }
            }
        }
    })
}

/// What woke the connection's task.
enum Event {
    /// The connection was closed (by the hub, a limit, a shutdown or ourselves).
    Closed,
    /// The socket failed or the peer went away.
    Gone,
    /// The client sent bytes.
    Input,
    /// A deadline passed.
    Timer,
    /// Frames were taken from the queue.
    Progress,
}

/// The connection's deadlines, all served by one timer, as milliseconds after `base`: four
/// `Instant`s would make every idle connection's task 32 bytes larger.
struct Deadlines {
    base: Instant,
    ping: u32,
    heartbeat: u32,
    idle: u32,
    /// Token expiry, capped (a later expiry is looked at again when the cap passes).
    expiry: u32,
}

/// The furthest a deadline is kept ahead: about 24 days.
const MAX_AHEAD_MS: u32 = i32::MAX as u32;

impl Deadlines {
    fn new(expires_at: u64, (idle, ping_every, heartbeat_every): (Duration, Duration, Duration)) -> Self {
        let mut deadlines = Self { base: Instant::now(), ping: 0, heartbeat: 0, idle: 0, expiry: 0 };
        let now = deadlines.base;
        deadlines.ping = deadlines.at(now + ping_every);
        deadlines.heartbeat = deadlines.at(now + heartbeat_every);
        deadlines.idle = deadlines.at(now + idle);
        deadlines.set_expiry(expires_at);
        deadlines
    }

    /// Converts an instant to milliseconds after the base (rounded up, so a deadline never
    /// fires early).
    fn at(&self, instant: Instant) -> u32 {
        let micros = instant.saturating_duration_since(self.base).as_micros();
        u32::try_from(micros.div_ceil(1000))
            .unwrap_or(u32::MAX)
            .min(self.now_ms().saturating_add(MAX_AHEAD_MS))
    }

    fn now_ms(&self) -> u32 {
        u32::try_from(self.base.elapsed().as_millis()).unwrap_or(u32::MAX)
    }

    fn instant(&self, ms: u32) -> Instant {
        self.base + Duration::from_millis(ms.into())
    }

    /// Moves the base forward once it is far behind, so the milliseconds never run out (a
    /// `u32` of them lasts 49 days; connections may last longer).
    fn rebase(&mut self) {
        let elapsed = self.now_ms();
        if elapsed < MAX_AHEAD_MS {
            return;
        }
        self.base += Duration::from_millis(elapsed.into());
        for deadline in [&mut self.ping, &mut self.heartbeat, &mut self.idle, &mut self.expiry] {
            *deadline = deadline.saturating_sub(elapsed);
        }
    }

    fn set_expiry(&mut self, expires_at: u64) {
        self.expiry = self.at(deadline(expires_at));
    }

    fn next(&self, stalled_since: Option<Instant>, stall: Duration) -> Instant {
        let mut next = self.instant(self.ping.min(self.heartbeat).min(self.idle).min(self.expiry));
        if let Some(since) = stalled_since {
            next = next.min(since + stall);
        }
        next
    }
}

/// The intervals of a connection's deadlines, read from the configuration when needed rather
/// than kept in every connection.
fn intervals(config: &crate::config::RelayConfig) -> (Duration, Duration, Duration) {
    (
        Duration::from_millis(config.idle_timeout_ms),
        Duration::from_millis(config.ping_interval_ms),
        Duration::from_millis((config.presence_timeout_ms / 3).max(1)),
    )
}

/// How long a write may stall before the client counts as a slow consumer.
fn stall_timeout(config: &crate::config::RelayConfig) -> Duration {
    Duration::from_millis(config.write_stall_timeout_ms)
}

/// Runs the session until the client leaves, the connection is closed, or a deadline passes.
/// Returns the client's close code if it closed the connection. Everything kept across its
/// awaits is part of every idle connection's task, hence the care about what is held here.
async fn serve(live: &mut Live<Stream>) -> Option<u16> {
    let mut deadlines = Deadlines::new(live.session.identity().expires_at, intervals(live.config()));
    let mut expires_at = live.session.identity().expires_at;
    let mut timer = std::pin::pin!(sleep_until(deadlines.next(None, stall_timeout(live.config()))));
    // Frames that arrived with the `connect` frame are already read: handle them first.
    let mut buffered = live.socket.has_input();
    loop {
        // A long recovery continues whenever the client has drained enough of its queue.
        if live.session.catching_up() {
            Box::pin(live.session.catch_up()).await;
        }
        {
            let next = deadlines.next(live.socket.stalled_since(), stall_timeout(live.config()));
            if timer.deadline() != next {
                timer.as_mut().reset(next);
            }
        }
        // A shutdown closes every registered connection, so it needs no waiting on here.
        let event = if std::mem::take(&mut buffered) {
            Event::Input
        } else {
            std::future::poll_fn(|cx| {
                let Live { socket, session, outbox } = &mut *live;
                poll_event(cx, socket, outbox, session.conn(), timer.as_mut())
            })
            .await
        };
        match event {
            Event::Closed | Event::Gone => return None,
            Event::Progress => {}
            Event::Input => {
                deadlines.idle = deadlines.at(Instant::now() + intervals(live.config()).0);
                match handle_input(live).await {
                    Handled::More => {}
                    Handled::ClientClosed(code) => return Some(code),
                    Handled::Closed => return None,
                }
                if live.session.identity().expires_at != expires_at {
                    // A refresh moved the expiry.
                    expires_at = live.session.identity().expires_at;
                    deadlines.set_expiry(expires_at);
                }
            }
            Event::Timer => {
                // Here rather than on every wake: the timer fires at least every ping interval.
                deadlines.rebase();
                let now = Instant::now();
                let (_, ping_every, heartbeat_every) = intervals(live.config());
                let conn = live.session.conn();
                if now >= deadlines.instant(deadlines.expiry) {
                    if unix_now() >= expires_at {
                        conn.close(CloseCode::TokenExpired);
                        return None;
                    }
                    // The expiry was further away than a deadline is kept.
                    deadlines.set_expiry(expires_at);
                }
                if now >= deadlines.instant(deadlines.idle) {
                    conn.close(CloseCode::IdleTimeout);
                    return None;
                }
                if live
                    .socket
                    .stalled_since()
                    .is_some_and(|since| now >= since + stall_timeout(live.config()))
                {
                    // The client stopped reading: it must not pin this task.
                    conn.close(CloseCode::SlowConsumer);
                    return None;
                }
                if now >= deadlines.instant(deadlines.ping) {
                    frame::encode(live.socket.out(), opcode::PING, &[]);
                    deadlines.ping = deadlines.at(now + ping_every);
                }
                if now >= deadlines.instant(deadlines.heartbeat) {
                    deadlines.heartbeat = deadlines.at(now + heartbeat_every);
                    Box::pin(live.session.heartbeat()).await;
                }
            }
        }
    }
}

/// Polls everything the connection waits on; returns the first thing to handle.
fn poll_event<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    socket: &mut Socket<S>,
    outbox: &mut Outbox,
    conn: &ConnHandle,
    timer: Pin<&mut Sleep>,
) -> Poll<Event> {
    if conn.is_closed() {
        return Poll::Ready(Event::Closed);
    }
    let mut progress = false;
    if socket.pending() > 0
        && let Poll::Ready(Err(_)) = socket.poll_flush(cx)
    {
        return Poll::Ready(Event::Gone);
    }
    if socket.pending() < WRITE_HIGH_WATER {
        let drained = outbox.poll_drain(cx, COALESCE_MAX, |item| {
            frame::encode(socket.out(), opcode::TEXT, item.bytes());
        });
        match drained {
            Poll::Ready(0) => return Poll::Ready(Event::Closed),
            Poll::Ready(_) => progress = true,
            Poll::Pending if socket.pending() == 0 => socket.release_write(),
            Poll::Pending => {}
        }
    } else if Pin::new(&mut conn.closed()).poll(cx).is_ready() {
        return Poll::Ready(Event::Closed);
    }
    // A client that does not read stops being read: its pings would otherwise pile up pongs
    // in the write buffer, beyond every queue limit.
    if socket.pending() < WRITE_HIGH_WATER {
        match socket.poll_read(cx) {
            Poll::Ready(Read::Data) => return Poll::Ready(Event::Input),
            Poll::Ready(Read::Gone) => return Poll::Ready(Event::Gone),
            Poll::Pending => {}
        }
    }
    if timer.poll(cx).is_ready() {
        return Poll::Ready(Event::Timer);
    }
    if progress { Poll::Ready(Event::Progress) } else { Poll::Pending }
}

/// Sends an error frame, then closes with `code`.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut socket: Socket<S>, frame: &[u8], code: CloseCode) {
    frame::encode(socket.out(), opcode::TEXT, frame);
    close(socket, code).await;
}

async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut socket: Socket<S>, code: CloseCode) {
    socket.close(code.number(), code.reason(), CLOSE_TIMEOUT).await;
}

/// Answers the client's close frame with its own code (RFC 6455 §5.5.1).
async fn reply_close<S: AsyncRead + AsyncWrite + Unpin>(mut socket: Socket<S>, code: u16) {
    let code = if code == 1005 { 1000 } else { code };
    socket.close(code, "", CLOSE_TIMEOUT).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Deadlines, MAX_AHEAD_MS};
    use crate::session::unix_now;
    use crate::transport::deadline;

    #[tokio::test(start_paused = true)]
    async fn deadlines_never_fire_early_and_far_expiries_are_capped() {
        let intervals =
            (Duration::from_millis(60_000), Duration::from_millis(25_000), Duration::from_millis(10_000));
        let d = Deadlines::new(unix_now() + 3600, intervals);
        let start = d.base;
        assert_eq!(
            d.next(None, intervals.0),
            start + Duration::from_millis(10_000),
            "the heartbeat comes first"
        );
        assert!(d.instant(d.expiry) >= deadline(unix_now() + 3600) - Duration::from_millis(1));
        // A stalled write brings its own deadline forward.
        let stalled = Instant::now();
        assert_eq!(d.next(Some(stalled), Duration::from_millis(500)), stalled + Duration::from_millis(500));
        // Sub-millisecond instants round up.
        assert_eq!(d.at(start + Duration::from_micros(1_001)), 2);
        // A token that never expires is looked at again after about 24 days, not never.
        let far = Deadlines::new(u64::MAX, intervals);
        assert_eq!(far.expiry, MAX_AHEAD_MS);
    }
}
