//! One MQTT connection, over TCP, TLS or WebSocket (see `io`): CONNECT (authentication, the
//! session claimed or resumed), then one loop that reads packets, writes the session's queue as
//! PUBLISH packets within the client's Receive Maximum, and keeps the keep-alive, presence and
//! token deadlines; then the end (the will, the session parked or closed). A connection with
//! nothing to do gives up its task until something happens (see `hibernate`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tributary_capability::Right;
use tributary_mqtt::topic::{TopicFilter, channel_of};
use tributary_mqtt::{
    ConnAck, Connect, DecodeError, Disconnect, LastWill, Packet, Properties, Publish, QoS, SubAck, Subscribe,
    UnsubAck, Unsubscribe, Version, decode, encode,
};
use tributary_protocol::frame::SubscribeRequest;
use tributary_protocol::{ChannelName, ChannelPattern, CloseCode, ErrorCode};

use super::client::{Client, Filter, Link, Target, write_ack};
use super::handoff;
use super::hibernate::Hibernation;
use super::io::{self, MqttIo};
use crate::conn::{ConnHandle, Outbound, Outbox, PreparedMessage};
use crate::ops::OpError;
use crate::policy::Credential;
use crate::session::{Identity, Session, unix_now};
use crate::state::RelayState;

// CONNECT, the packets a client sends, and the end: the loop below drives them.
mod admit;
mod ending;
mod inbound;

pub(super) use admit::end_session;
use admit::*;
pub(super) use ending::publish_handed_will;
use ending::*;
pub(super) use inbound::parse_filter;
use inbound::*;

/// Queued items turned into packets per wake at most, so a busy connection still reads.
const COALESCE_MAX: usize = 256;

/// The most the write buffer is grown by ahead of a batch; a larger batch grows it as it goes.
const RESERVE_MAX: usize = 256 * 1024;

/// How long the goodbye (a DISCONNECT) may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a connection ended.
enum Ending {
    /// The socket closed or failed without a DISCONNECT: the will is published.
    Gone,
    /// The client sent DISCONNECT; with reason 0x04 it asked for its will to be published.
    Disconnected { will: bool },
    /// The server closed the connection (a revocation, a slow consumer, a shutdown, a takeover,
    /// the token's expiry): the will is published.
    Closed,
    /// The client broke the protocol or a limit: DISCONNECT with this reason code (MQTT 5),
    /// then the will.
    Refused(u8, &'static str),
}

/// A connection past its CONNECT.
struct Live {
    client: Box<Client>,
    link: Link,
    app: Arc<str>,
    generation: u64,
    keep_alive: Duration,
    /// Boxed: most clients have none, and the connection's task would carry its room.
    will: Option<Box<LastWill>>,
    expires_at: u64,
    out: Vec<u8>,
}

/// What a connection keeps between tasks: everything but its read buffer (empty when it
/// hibernates) and its timer (an alarm meanwhile).
struct Dormant<S> {
    state: Arc<RelayState>,
    stream: S,
    live: Live,
    marks: Marks,
}

/// A connection's deadlines, and when it was last busy.
struct Marks {
    keep_alive_at: Instant,
    heartbeat_at: Instant,
    /// A message was delivered to the client or published by it since the last presence
    /// heartbeat: the connection keeps its task when it has nothing to do, as it will likely
    /// have more soon (and a busy connection reads no clock for it).
    busy: bool,
}

impl Marks {
    /// The first deadline of `live`, the token's expiry included.
    fn first(&self, live: &Live) -> Instant {
        self.keep_alive_at.min(self.heartbeat_at).min(crate::transport::deadline(live.expires_at))
    }
}

/// MQTT-3.1.2-24: one and a half keep-alives without a packet end the connection.
fn grace(live: &Live) -> Duration {
    live.keep_alive + live.keep_alive / 2
}

fn heartbeat_every(state: &RelayState) -> Duration {
    Duration::from_millis((state.config.presence_timeout_ms / 3).max(1))
}

/// Serves one MQTT connection.
#[allow(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice in the task")]
pub(super) fn run<S: MqttIo>(mut stream: S, state: Arc<RelayState>) -> impl Future<Output = ()> + Send {
    // An async block, not an async fn: a fn's arguments would take their room in the task
    // twice, once as arguments and once as locals.
    async move {
        let mut input = BytesMut::new();
        let max = state.config.mqtt.max_packet_bytes;
        let timeout = Duration::from_millis(state.config.handshake_timeout_ms);
        let connect = match tokio::time::timeout(timeout, read_connect(&mut stream, &mut input, max)).await {
            Ok(Ok(connect)) => connect,
            Ok(Err(Some(DecodeError::UnsupportedProtocol))) => {
                // MQTT-3.1.2-2: "unacceptable protocol version", in the 3.1.1 form every client reads.
                let _ = io::write_all(&mut stream, &[0x20, 0x02, 0x00, 0x01]).await;
                return;
            }
            _ => return,
        };
        if !state.mqtt_sessions.admit_connect(state.config.mqtt.max_connections_per_second) {
            let reason = "connection rate exceeded; try again later".into();
            Box::pin(refuse(&mut stream, connect.version, Refusal(0x9F, 0x03, reason))).await;
            return;
        }
        let Some(live) = Box::pin(open(&state, &mut stream, connect)).await else { return };
        if input.is_empty() {
            input = BytesMut::new();
        }
        let now = Instant::now();
        let marks = Marks {
            keep_alive_at: now + grace(&live),
            heartbeat_at: now + heartbeat_every(&state),
            busy: false,
        };
        drive(Box::new(Dormant { state, stream, live, marks }), None, input).await;
    }
}

/// Serves a connection until it ends, or until it hibernates (the task ends; a wake spawns a
/// new one with the hibernation).
#[allow(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice in the task")]
fn drive<S: MqttIo>(
    mut conn: Box<Dormant<S>>,
    hibernation: Option<Arc<Hibernation<Dormant<S>>>>,
    mut input: BytesMut,
) -> impl Future<Output = ()> + Send {
    async move {
        let hibernation = hibernation.unwrap_or_else(|| Hibernation::new(wake_up::<S>));
        let ending = loop {
            hibernation.awake();
            let Dormant { state, stream, live, marks } = &mut *conn;
            match serve(state, stream, &mut input, live, marks, &hibernation).await {
                Served::Ended(ending) => break ending,
                Served::Idle => {
                    let alarms = &state.mqtt_sessions.alarms;
                    alarms.start(state, |state| &state.mqtt_sessions.alarms);
                    let deadline = marks.first(live);
                    let state = state.clone();
                    match hibernation.sleep(conn, &state.mqtt_sessions.alarms, deadline) {
                        None => return,
                        Some(back) => conn = back,
                    }
                }
            }
        };
        let Dormant { state, stream, live, .. } = *conn;
        Box::pin(finish(&state, stream, live, ending)).await;
    }
}

/// Serves a hibernating connection again, on a new task.
fn wake_up<S: MqttIo>(conn: Box<Dormant<S>>, hibernation: Arc<Hibernation<Dormant<S>>>) {
    let state = conn.state.clone();
    let task = drive(conn, Some(hibernation), BytesMut::new());
    if tokio::runtime::Handle::try_current().is_ok() {
        state.tasks.spawn(task);
    } else if let Some(runtime) = state.mqtt_sessions.alarms.runtime() {
        // Woken from a thread of no runtime: the connection's own runtime serves it.
        state.tasks.spawn_on(task, runtime);
    }
}

/// Why serving stopped.
enum Served {
    Ended(Ending),
    /// Nothing to do: the stream and the queue were polled with the hibernation's waker.
    Idle,
}

/// What woke the connection.
enum Event {
    /// Bytes were read into the input (`false`: the client closed or the stream failed).
    Read(bool),
    Queue(usize),
    Closed,
    Timer,
}

/// Serves the connection until it ends.
///
/// An async block with no more locals than it needs: its room is taken by every idle
/// connection (an async fn would also keep its arguments twice).
#[allow(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice in the task")]
fn serve<'a, S: MqttIo>(
    state: &'a Arc<RelayState>,
    stream: &'a mut S,
    input: &'a mut BytesMut,
    live: &'a mut Live,
    marks: &'a mut Marks,
    hibernation: &'a Arc<Hibernation<Dormant<S>>>,
) -> impl Future<Output = Served> + Send + 'a {
    async move {
        let token_at = crate::transport::deadline(live.expires_at);
        let mut timer =
            std::pin::pin!(sleep_until(marks.keep_alive_at.min(marks.heartbeat_at).min(token_at)));
        // Packets that came with CONNECT.
        let mut buffered = !input.is_empty();
        loop {
            // Retained messages of new subscriptions go first (before what the queue holds),
            // within the Receive Maximum.
            while live.client.can_send(&live.link)
                && let Some((message, filter)) = live.link.next_retained()
            {
                live.client.deliver(&mut live.link, &message, Some(&filter), &mut live.out);
            }
            if !live.out.is_empty() {
                // A write may stall `write_stall_timeout_ms` before the client counts as gone; the
                // timer serves as its deadline once the socket stops taking bytes (most writes
                // complete at once: no clock read, no timer moved) and is set again below.
                let stall = Duration::from_millis(state.config.write_stall_timeout_ms);
                match write_out(stream, &live.out, live.client.session.conn(), timer.as_mut(), stall).await {
                    Written::Done => {}
                    // What the stream took is not sent again with the goodbye.
                    Written::Failed(taken) => {
                        live.out.drain(..taken);
                        return Served::Ended(Ending::Gone);
                    }
                    Written::Closed(taken) => {
                        live.out.drain(..taken);
                        return Served::Ended(Ending::Closed);
                    }
                }
                live.out.clear();
                if live.out.capacity() > 4096 {
                    // A burst's buffer is not kept by a connection that goes quiet after it.
                    live.out = Vec::new();
                }
            }
            if live.client.session.conn().is_closed() {
                return Served::Ended(Ending::Closed);
            }
            if live.client.session.catching_up() {
                Box::pin(live.client.session.catch_up()).await;
            }
            let first = marks.keep_alive_at.min(marks.heartbeat_at).min(token_at);
            if timer.deadline() != first {
                timer.as_mut().reset(first);
            }
            let room = live.client.room(&live.link, COALESCE_MAX);
            let mut batch = Vec::new();
            let event = if std::mem::take(&mut buffered) {
                Event::Read(true)
            } else {
                let Client { outbox, session, .. } = &mut *live.client;
                // A deadline that passed is met in the task, not by an alarm.
                let idle = !marks.busy
                    && room > 0
                    && input.is_empty()
                    && !session.catching_up()
                    && Instant::now() < first;
                if idle {
                    // Polled with the hibernation's waker: what comes next wakes the connection
                    // after its task ended.
                    let waker = Waker::from(hibernation.clone());
                    let mut cx = Context::from_waker(&waker);
                    match poll_event(stream, input, outbox, session.conn(), room, &mut batch, &mut cx) {
                        Poll::Ready(event) => event,
                        Poll::Pending => return Served::Idle,
                    }
                } else {
                    next_event(stream, input, outbox, session.conn(), room, &mut batch, timer.as_mut()).await
                }
            };
            match event {
                Event::Read(false) => return Served::Ended(Ending::Gone),
                Event::Closed | Event::Queue(0) => return Served::Ended(Ending::Closed),
                Event::Read(true) => {
                    let mut read_at = None;
                    loop {
                        // The plain PUBACK (no reason code, no properties) that acknowledges
                        // every QoS 1 delivery, read where it lies: no packet built, nothing
                        // allocated, as it comes once per message sent.
                        // (Packet id 0 is left to the decoder, which refuses it.)
                        if let [0x40, 0x02, high, low, ..] = input[..]
                            && (high | low) != 0
                        {
                            input.advance(4);
                            marks.keep_alive_at = *read_at.get_or_insert_with(Instant::now) + grace(live);
                            live.client.on_puback(u16::from_be_bytes([high, low]));
                            continue;
                        }
                        let packet = match decode(
                            input,
                            Some(live.link.version),
                            state.config.mqtt.max_packet_bytes,
                        ) {
                            Ok(Some((packet, used))) => {
                                input.advance(used);
                                packet
                            }
                            Ok(None) => break,
                            Err(err) => {
                                return Served::Ended(Ending::Refused(err.reason_code(), "malformed packet"));
                            }
                        };
                        // The packets of one read arrived together: one clock read for them all.
                        let now = *read_at.get_or_insert_with(Instant::now);
                        marks.keep_alive_at = now + grace(live);
                        marks.busy |= matches!(packet, Packet::Publish(_));
                        if let Some(ending) = Box::pin(handle(state, live, packet)).await {
                            return Served::Ended(ending);
                        }
                    }
                    if input.is_empty() && !marks.busy {
                        // An idle connection keeps no read buffer: most connections are idle most
                        // of the time, and the buffer would be most of their memory. A busy one
                        // (acknowledging what it is sent) keeps it rather than allocate per read.
                        *input = BytesMut::new();
                    }
                }
                Event::Queue(_) => {
                    let mut delivered = false;
                    // Room for the whole batch at once, rather than growing (and copying) the
                    // buffer as the packets are written into it.
                    // Capped: what `deliver` drops (too large for the client, expired, no longer
                    // matching) must not make a big allocation per batch.
                    let max_packet = live.link.max_packet;
                    let wanted: usize = batch
                        .iter()
                        .map(|item| match item {
                            // The payload, the topic, and the fixed header, packet id and
                            // properties' usual few bytes.
                            Outbound::Message(m) => {
                                (m.publication.payload.len() + m.channel.as_str().len() + 16).min(max_packet)
                            }
                            Outbound::Frame(_) => 0,
                        })
                        .sum();
                    live.out.reserve(wanted.min(RESERVE_MAX));
                    for item in batch {
                        // Other items (presence events) are not for MQTT clients.
                        if let Outbound::Message(message) = item {
                            live.client.deliver(&mut live.link, &message, None, &mut live.out);
                            delivered = true;
                        }
                    }
                    marks.busy |= delivered;
                }
                Event::Timer => {
                    let now = Instant::now();
                    if now >= marks.keep_alive_at {
                        return Served::Ended(Ending::Refused(0x8D, "keep alive timeout"));
                    }
                    if now >= token_at {
                        live.client.session.conn().close(CloseCode::TokenExpired);
                        return Served::Ended(Ending::Closed);
                    }
                    if now >= marks.heartbeat_at {
                        marks.heartbeat_at = now + heartbeat_every(state);
                        marks.busy = false;
                        Box::pin(live.client.session.heartbeat()).await;
                        Box::pin(handoff::save(state, &live.app, &mut live.client, live.generation, true))
                            .await;
                    }
                }
            }
        }
    }
}

/// Waits for what comes first: bytes from the client (read into `input`), queued messages
/// (when the client has room for them), the connection's close (when it has not), or the
/// timer. Polled by hand rather than with `select!`, whose futures would add their room to
/// every idle connection.
fn next_event<'a, S: MqttIo>(
    stream: &'a mut S,
    input: &'a mut BytesMut,
    outbox: &'a mut Outbox,
    conn: &'a ConnHandle,
    room: usize,
    batch: &'a mut Vec<Outbound>,
    mut timer: Pin<&'a mut Sleep>,
) -> impl Future<Output = Event> + 'a {
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(event) = poll_event(stream, input, outbox, conn, room, batch, cx) {
            return Poll::Ready(event);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Timer);
        }
        Poll::Pending
    })
}

/// Polls what [`next_event`] waits for, but the timer.
fn poll_event<S: MqttIo>(
    stream: &mut S,
    input: &mut BytesMut,
    outbox: &mut Outbox,
    conn: &ConnHandle,
    room: usize,
    batch: &mut Vec<Outbound>,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    if let Poll::Ready(read) = stream.poll_read_into(cx, input) {
        return Poll::Ready(Event::Read(matches!(read, Ok(n) if n > 0)));
    }
    if room > 0 {
        if let Poll::Ready(n) = outbox.poll_drain(cx, room, |item| batch.push(item)) {
            return Poll::Ready(Event::Queue(n));
        }
    } else if std::pin::pin!(conn.closed()).poll(cx).is_ready() {
        return Poll::Ready(Event::Closed);
    }
    Poll::Pending
}

/// How writing the connection's output ended; the count is how much of it the stream took.
enum Written {
    Done,
    /// The socket failed, or the deadline passed first.
    Failed(usize),
    /// The connection was closed (a takeover or a revocation must not wait for a client that
    /// stopped reading).
    Closed(usize),
}

/// Writes `out` to the client before `deadline`.
fn write_out<'a, S: MqttIo>(
    stream: &'a mut S,
    out: &'a [u8],
    conn: &'a ConnHandle,
    mut deadline: Pin<&'a mut Sleep>,
    stall: Duration,
) -> impl Future<Output = Written> + 'a {
    let mut written = 0;
    let mut armed = false;
    std::future::poll_fn(move |cx| {
        loop {
            // Everything taken, then flushed (a WebSocket may hold the last message).
            let step = if written < out.len() {
                stream.poll_write_some(cx, &out[written..])
            } else {
                stream.poll_flush(cx).map_ok(|()| usize::MAX)
            };
            match step {
                Poll::Ready(Ok(usize::MAX)) => return Poll::Ready(Written::Done),
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Written::Failed(written)),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Pending => {
                    if std::pin::pin!(conn.closed()).poll(cx).is_ready() {
                        return Poll::Ready(Written::Closed(written));
                    }
                    if !armed {
                        // The socket stopped taking bytes: the stall starts now.
                        armed = true;
                        deadline.as_mut().reset(Instant::now() + stall);
                    }
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Written::Failed(written));
                    }
                    return Poll::Pending;
                }
            }
        }
    })
}
