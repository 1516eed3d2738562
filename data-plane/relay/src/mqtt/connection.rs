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

/// Reads until the CONNECT packet. `Err(Some(_))`: it was malformed; `Err(None)`: the socket
/// went away.
async fn read_connect(
    stream: &mut impl MqttIo,
    input: &mut BytesMut,
    max: usize,
) -> Result<Box<Connect>, Option<DecodeError>> {
    loop {
        match decode(input, None, max) {
            Ok(Some((Packet::Connect(connect), used))) => {
                input.advance(used);
                return Ok(connect);
            }
            Ok(Some(_)) => return Err(Some(DecodeError::Protocol("the first packet must be CONNECT"))),
            Ok(None) => {}
            Err(err) => return Err(Some(err)),
        }
        input.reserve(1024);
        match io::read_into(stream, input).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

/// A CONNACK refusal: the MQTT 5 reason code and the 3.1.1 return code.
struct Refusal(u8, u8, String);

impl Refusal {
    fn of(err: &OpError) -> Self {
        let message = err.message.clone();
        match err.code {
            ErrorCode::TokenRevoked | ErrorCode::TenantSuspended | ErrorCode::Forbidden => {
                Self(0x87, 0x05, message)
            }
            ErrorCode::ConnectionLimit | ErrorCode::ChannelLimit | ErrorCode::QuotaExceeded => {
                Self(0x97, 0x03, message)
            }
            code if code.temporary() => Self(0x88, 0x03, message),
            _ => Self(0x86, 0x04, message),
        }
    }
}

/// Sends CONNACK with a refusal, then closes.
async fn refuse(stream: &mut impl MqttIo, version: Version, refusal: Refusal) {
    let Refusal(v5, v3, reason) = refusal;
    let mut properties = Properties::default();
    if version == Version::V5 {
        properties.reason_string = Some(reason);
    }
    let code = if version == Version::V5 { v5 } else { v3 };
    let packet = encode(&Packet::ConnAck(ConnAck { session_present: false, code, properties }), version);
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, io::write_all(stream, &packet)).await;
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, io::shutdown(stream)).await;
}

/// Whether a client id or user name holds a character that means "many" somewhere.
fn has_wildcard(text: &str) -> bool {
    text.contains(['+', '#', '*'])
}

/// Authenticates CONNECT, claims or resumes the session and sends CONNACK.
async fn open(state: &Arc<RelayState>, stream: &mut impl MqttIo, connect: Box<Connect>) -> Option<Live> {
    let version = connect.version;
    let config = &state.config.mqtt;
    if has_wildcard(&connect.client_id) {
        refuse(stream, version, Refusal(0x85, 0x02, "wildcard characters in the client id".into())).await;
        return None;
    }
    let username = connect.username.as_deref().unwrap_or_default();
    if has_wildcard(username) {
        refuse(stream, version, Refusal(0x86, 0x04, "wildcard characters in the user name".into())).await;
        return None;
    }
    let anonymous = connect.password.is_none() && !config.anonymous_app.is_empty();
    let minted;
    let token = if anonymous {
        if connect.client_id.is_empty() && version == Version::V311 && !connect.clean_start {
            let reason = "an empty client id needs a clean session";
            refuse(stream, version, Refusal(0x85, 0x02, reason.into())).await;
            return None;
        }
        let client = match connect.client_id.as_str() {
            "" => format!("anon-{}", uuid::Uuid::now_v7().simple()),
            client => client.to_owned(),
        };
        minted = match mint_anonymous(state, client).await {
            Ok(token) => token,
            Err(err) => {
                refuse(stream, version, Refusal::of(&err)).await;
                return None;
            }
        };
        minted.as_str()
    } else {
        let Some(token) = connect.password.as_ref().and_then(|p| std::str::from_utf8(p).ok()) else {
            let reason = "the password must be a capability token of the app named by the user name";
            refuse(stream, version, Refusal(0x86, 0x04, reason.into())).await;
            return None;
        };
        token
    };
    let (identity, credential, policy) = match Identity::authenticate(state, token).await {
        Ok(authenticated) => authenticated,
        Err(err) => {
            refuse(stream, version, Refusal::of(&err)).await;
            return None;
        }
    };
    if !anonymous && username != &*identity.app_id && username != &*credential.kid {
        let reason = "the user name must be the token's app id or signing key id";
        refuse(stream, version, Refusal(0x86, 0x04, reason.into())).await;
        return None;
    }
    let assigned = connect.client_id.is_empty();
    if assigned && version == Version::V311 && !connect.clean_start {
        let reason = "an empty client id needs a clean session";
        refuse(stream, version, Refusal(0x85, 0x02, reason.into())).await;
        return None;
    }
    if !assigned && *connect.client_id != *identity.client_id {
        let reason = "the client id must be the token's client id";
        refuse(stream, version, Refusal(0x85, 0x02, reason.into())).await;
        return None;
    }
    if let Some(will) = &connect.will {
        // The checks of a PUBLISH on that topic, made now: the will is published when the
        // client is gone.
        let deny = denied(state, anonymous);
        let allowed = channel_of(&will.topic).is_ok_and(|c| {
            identity.capabilities.allows(&c, Right::Publish)
                && !deny.iter().any(|p| p.matches(&c))
                && state.namespace(&identity.app_id, c.namespace()).client_publish
        });
        if !allowed {
            let reason = format!("no publish right on the will topic {}", will.topic);
            refuse(stream, version, Refusal(0x87, 0x05, reason)).await;
            return None;
        }
    }
    if let Err(err) = state.quotas.admit_connection(&policy) {
        refuse(stream, version, Refusal::of(&err)).await;
        return None;
    }
    let max_keep_alive = config.max_keep_alive_secs;
    let keep_alive = match connect.keep_alive {
        0 => max_keep_alive,
        asked => asked.min(max_keep_alive),
    };
    let expiry_secs = match version {
        Version::V5 => connect.properties.session_expiry.unwrap_or(0).min(config.max_session_expiry_secs),
        Version::V311 if connect.clean_start => 0,
        Version::V311 => config.max_session_expiry_secs,
    };
    let app = identity.app_id.clone();
    let client_id = identity.client_id.clone();
    // Anonymous sessions are kept apart from those of tokens: an anonymous client naming a
    // device's client id must not resume, or take over, the device's session.
    let session_key: Arc<str> =
        if anonymous { Arc::from(format!("anonymous/{client_id}")) } else { client_id.clone() };
    let claim = state.mqtt_sessions.claim(&app, &session_key).await;
    let mut previous = claim.previous;
    // A copy written by another node is the session's latest state (this node's own copy is
    // of the session it holds, if any); a clean start drops both.
    // MQTT-3.1.3-9: back within its will's delay (on whichever node), the will is not sent.
    // Both looked up at once: one round trip of the CONNECT, not two.
    let (taken, _) =
        tokio::join!(handoff::take(state, &app, &session_key), handoff::take_will(state, &app, &session_key));
    let moved = taken.foreign(state).is_some() && !connect.clean_start;
    if (connect.clean_start || moved)
        && let Some(old) = previous.take()
    {
        end_session(state, old).await;
    }
    let session_present = previous.is_some() || moved;
    let expires_at = identity.expires_at;
    let deny = denied(state, anonymous);
    let client = match previous {
        Some(old) => resume(state, old, identity, credential, deny).await,
        None => fresh(state, identity, credential, session_key.clone(), deny).await,
    };
    let mut client = match client {
        Ok(client) => client,
        Err(err) => {
            state.mqtt_sessions.release(&app, &session_key, claim.generation);
            // Refused (a limit, the token): the copy stays for the client's next try.
            handoff::put_back(state, &app, &session_key, &taken).await;
            refuse(stream, version, Refusal::of(&err)).await;
            return None;
        }
    };
    client.expiry_secs = expiry_secs;
    client.copy_version = client.copy_version.max(taken.next_version(state));
    if moved && let Some(copy) = &taken.copy {
        Box::pin(restore(state, &mut client, copy)).await;
    }
    if !state.mqtt_sessions.attach(&app, &session_key, claim.generation, client.session.conn()) {
        // Opening took so long that a newer connection of the client id took over meanwhile.
        end_session(state, client).await;
        handoff::put_back(state, &app, &session_key, &taken).await;
        refuse(stream, version, Refusal(0x89, 0x03, "a newer connection took this client id over".into()))
            .await;
        return None;
    }
    if let Some(copy) = taken.foreign(state) {
        // Also after a clean start: the node that held the session ends it.
        handoff::announce(state, &app, &session_key, copy).await;
    }
    let p = &connect.properties;
    let receive_maximum = p.receive_maximum.unwrap_or(u16::MAX).min(config.max_inflight);
    let max_packet = p.maximum_packet_size.map_or(usize::MAX, |m| m as usize);
    let alias_max = p.topic_alias_maximum.unwrap_or(0).min(config.server_topic_aliases);
    let problem_info = p.request_problem_info != Some(0);
    let mut link = Link::new(version, receive_maximum, max_packet, alias_max, problem_info);
    let mut properties = Properties::default();
    if version == Version::V5 {
        properties.receive_maximum = Some(config.receive_maximum);
        properties.topic_alias_maximum = Some(config.topic_alias_maximum);
        properties.maximum_packet_size = Some(config.max_packet_bytes as u32);
        properties.retain_available = Some(1);
        properties.wildcard_available = Some(1);
        properties.subscription_ids_available = Some(1);
        properties.shared_available = Some(1);
        if keep_alive != connect.keep_alive {
            properties.server_keep_alive = Some(keep_alive);
        }
        if connect.properties.session_expiry.is_some_and(|asked| asked != expiry_secs) {
            properties.session_expiry = Some(expiry_secs);
        }
        if assigned {
            properties.assigned_client_id = Some(client_id.to_string());
        }
    }
    let connack = ConnAck { session_present, code: 0, properties };
    let mut out = encode(&Packet::ConnAck(connack), version);
    if session_present {
        client.resend(&mut link, &mut out);
        // Present again: join the presence of its channels.
        client.session.heartbeat().await;
    }
    handoff::save(state, &app, &mut client, claim.generation, true).await;
    Some(Live {
        client,
        link,
        app,
        generation: claim.generation,
        keep_alive: Duration::from_secs(keep_alive.into()),
        will: connect.will.map(Box::new),
        expires_at,
        out,
    })
}

/// Mints the token of an anonymous connection: the configured app and grants, the client id
/// the client gave, the longest lifetime a token may have.
async fn mint_anonymous(state: &RelayState, client: String) -> Result<String, OpError> {
    let config = &state.config.mqtt;
    let policy = state
        .policies
        .get(&*state.directory, &config.anonymous_app)
        .await
        .map_err(crate::session::unavailable)?
        .ok_or(ErrorCode::UnknownKey)?;
    let key = policy.minting_key().ok_or(ErrorCode::UnknownKey)?;
    let grants = config
        .anonymous_grants
        .iter()
        .filter_map(|g| tributary_capability::Capabilities::parse_spec(g).ok())
        .collect();
    let request = tributary_capability::TokenRequest::new(
        client,
        config.anonymous_app.clone(),
        state.config.max_token_ttl_secs,
        grants,
    );
    let minted = tributary_capability::mint(&request, key, unix_now())
        .map_err(|e| OpError::new(e.code(), e.to_string()))?;
    Ok(minted.token)
}

/// Returns the channel patterns an anonymous connection may not use (none for a token's).
fn denied(state: &RelayState, anonymous: bool) -> Arc<Vec<ChannelPattern>> {
    // One empty list for every token's connection, rather than an allocation each.
    static NONE: std::sync::LazyLock<Arc<Vec<ChannelPattern>>> = std::sync::LazyLock::new(Arc::default);
    if !anonymous {
        return NONE.clone();
    }
    Arc::new(state.config.mqtt.anonymous_deny.iter().filter_map(|p| ChannelPattern::parse(p).ok()).collect())
}

/// A new session.
async fn fresh(
    state: &Arc<RelayState>,
    identity: Identity,
    credential: Credential,
    session_key: Arc<str>,
    deny: Arc<Vec<ChannelPattern>>,
) -> Result<Box<Client>, OpError> {
    let (conn, outbox) = crate::transport::new_connection(state, &identity, credential).await?;
    let session = Session::new(state.clone(), conn, identity, true);
    Ok(Box::new(Client::new(session, outbox, session_key, deny)))
}

/// Resumes a parked session under the new connection's token: subscriptions it no longer
/// grants end. A session whose queue overflowed while it waited (or whose connection was
/// taken over) is rebuilt on a new queue, its exact subscriptions recovering from the last
/// message delivered.
async fn resume(
    state: &Arc<RelayState>,
    mut old: Box<Client>,
    identity: Identity,
    credential: Credential,
    deny: Arc<Vec<ChannelPattern>>,
) -> Result<Box<Client>, OpError> {
    old.deny = deny;
    if old.session.conn().is_closed() {
        let filters = std::mem::take(&mut old.filters);
        let (conn, outbox) = match crate::transport::new_connection(state, &identity, credential).await {
            Ok(opened) => opened,
            Err(err) => {
                old.filters = filters;
                end_session(state, old).await;
                return Err(err);
            }
        };
        let session = Session::new(state.clone(), conn, identity, true);
        let stale = std::mem::replace(&mut old.session, session);
        remove_patterns(state, stale.conn(), None).await;
        stale.close().await;
        old.outbox = outbox;
        for filter in filters {
            let recover = filter.recover_from();
            if let Err(err) = add_filter(state, &mut old, filter.clone(), recover).await {
                tracing::debug!(filter = %filter.text, error = %err.message, "subscription not resumed");
            }
        }
        return Ok(old);
    }
    old.session.conn().set_parked(false);
    // The new token first: the parked connection still holds the old one, which may have been
    // revoked meanwhile.
    let mut revoked = old.session.reauthenticate(identity, credential).await;
    if let Err(err) = crate::transport::register(state, old.session.conn()).await {
        end_session(state, old).await;
        return Err(err);
    }
    let denied: Vec<ChannelName> = old
        .filters
        .iter()
        .filter_map(|f| f.exact().cloned())
        .filter(|c| old.deny.iter().any(|p| p.matches(c)))
        .collect();
    for channel in denied {
        let _ = old.session.unsubscribe(&channel).await;
        revoked.push(channel);
    }
    let capabilities = old.session.identity().capabilities.clone();
    let mut uncovered = Vec::new();
    old.filters.retain(|f| match &f.target {
        Target::Channel(channel) => !revoked.contains(channel),
        Target::Pattern(topic) => {
            let kept = covers(&capabilities, topic);
            if !kept {
                uncovered.push(f.text.clone());
            }
            kept
        }
    });
    for text in uncovered {
        remove_patterns(state, old.session.conn(), Some(&text)).await;
    }
    Ok(old)
}

/// Rebuilds the subscriptions of a session another node held: channels recover from history
/// after where the client was.
async fn restore(state: &Arc<RelayState>, client: &mut Client, copy: &handoff::Snapshot) {
    for stored in &copy.filters {
        let Ok(mut filter) = parse_filter(&stored.subscription(), stored.id) else { continue };
        let recover = stored.recover_from();
        filter.position =
            stored.position.as_ref().map(|(epoch, offset)| (Arc::from(epoch.as_str()), *offset));
        if let Err(err) = add_filter(state, client, filter, recover).await {
            tracing::debug!(filter = %stored.text, error = %err.message, "subscription not resumed");
        }
    }
    client.awaiting_release.extend(copy.awaiting.iter().copied());
}

/// Ends a session for good: its wildcard subscriptions leave the hub, its channel
/// subscriptions and presence end, its connection is unregistered.
pub(super) async fn end_session(state: &RelayState, client: Box<Client>) {
    remove_patterns(state, client.session.conn(), None).await;
    client.session.close().await;
}

/// Adds a wildcard subscription to the hub once the engine delivers every channel of the app
/// to this node (one app subscription per wildcard subscription in the hub).
async fn add_pattern(
    state: &RelayState,
    conn: &ConnHandle,
    name: Arc<str>,
    filter: crate::hub::ChannelFilter,
    shared: bool,
) -> Result<(), OpError> {
    state.engine.subscribe_app(conn.app()).await?;
    if state.hub.add_pattern(conn, name, filter, shared) {
        // It replaced one of the same name, whose app subscription is not needed twice.
        release_app(state, conn, 1).await;
    }
    Ok(())
}

/// Removes a connection's wildcard subscription `name` (all of them with `None`) and gives back
/// their app subscriptions.
async fn remove_patterns(state: &RelayState, conn: &ConnHandle, name: Option<&str>) {
    let removed = state.hub.remove_pattern(conn, name);
    release_app(state, conn, removed).await;
}

async fn release_app(state: &RelayState, conn: &ConnHandle, times: usize) {
    for _ in 0..times {
        if let Err(err) = state.engine.unsubscribe_app(conn.app()).await {
            tracing::warn!(error = %err, "giving back an app subscription failed");
        }
    }
}

/// Returns whether `capabilities` allow subscribing to every channel `filter` can match.
fn covers(capabilities: &tributary_capability::Capabilities, filter: &TopicFilter) -> bool {
    filter.patterns().iter().all(|pattern| {
        capabilities.grants().iter().any(|g| g.rights.contains(Right::Subscribe) && g.pattern.covers(pattern))
    })
}

/// Adds a subscription: an exact filter subscribes its channel in the session (recovering from
/// `recover`), a wildcard one goes to the hub.
async fn add_filter(
    state: &Arc<RelayState>,
    client: &mut Client,
    mut filter: Filter,
    recover: Option<tributary_protocol::StreamPosition>,
) -> Result<(), OpError> {
    match &filter.target {
        Target::Channel(channel) => {
            let recovering = recover.is_some();
            let request = SubscribeRequest { channel: channel.clone(), recover, rewind: None, state: None };
            let reply = if recovering {
                client.session.subscribe(request, None).await?
            } else {
                let grace = Duration::from_millis(state.config.mqtt.subscribe_grace_ms);
                // The retained message comes as one (or not at all), never as a message too.
                let key = tributary_engine::ChannelKey::new(
                    client.session.identity().app_id.clone(),
                    channel.clone(),
                );
                let floor = match state.engine.retained(&key).await {
                    Ok(Some(retained)) => Some(tributary_protocol::StreamPosition {
                        epoch: retained.epoch.to_string(),
                        offset: retained.offset,
                    }),
                    _ => None,
                };
                client.session.subscribe_with_grace(request, grace, floor).await?
            };
            // Where a rebuilt session recovers from if nothing of the channel is delivered first.
            filter.position = Some((reply.epoch.clone(), reply.position.offset));
        }
        Target::Pattern(topic) => {
            if !covers(&client.session.identity().capabilities, topic) {
                return Err(OpError::new(
                    ErrorCode::Forbidden,
                    format!("no subscribe right on every channel {} matches", filter.text),
                ));
            }
            let topic = topic.clone();
            let deny = client.deny.clone();
            let matches = Arc::new(move |channel: &ChannelName| {
                topic.matches(channel.as_str()) && !deny.iter().any(|p| p.matches(channel))
            });
            add_pattern(state, client.session.conn(), filter.text.clone(), matches, filter.shared).await?;
        }
    }
    client.add_filter(filter);
    Ok(())
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

/// Handles one packet of the client; `Some` ends the connection.
async fn handle(state: &Arc<RelayState>, live: &mut Live, packet: Packet) -> Option<Ending> {
    let version = live.link.version;
    match packet {
        Packet::PingReq => live.out.extend_from_slice(&[0xD0, 0x00]),
        Packet::Publish(publish) => return on_publish(state, live, publish).await,
        Packet::PubAck(ack) => live.client.on_puback(ack.packet_id),
        Packet::PubRec(ack) => live.client.on_pubrec(&live.link, ack.packet_id, ack.code, &mut live.out),
        Packet::PubComp(ack) => live.client.on_pubcomp(ack.packet_id),
        Packet::PubRel(ack) => {
            let known = live.client.awaiting_release.remove(&ack.packet_id);
            write_ack(&mut live.out, version, 0x70, ack.packet_id, if known { 0 } else { 0x92 });
        }
        Packet::Subscribe(subscribe) => on_subscribe(state, live, subscribe).await,
        Packet::Unsubscribe(unsubscribe) => on_unsubscribe(state, live, unsubscribe).await,
        Packet::Disconnect(disconnect) => {
            if let Some(expiry) = disconnect.properties.session_expiry {
                if live.client.expiry_secs == 0 && expiry > 0 {
                    // MQTT-3.14.2-2.
                    return Some(Ending::Refused(0x82, "a session without expiry cannot be given one"));
                }
                live.client.expiry_secs = expiry.min(state.config.mqtt.max_session_expiry_secs);
            }
            return Some(Ending::Disconnected { will: disconnect.code == 0x04 });
        }
        Packet::Auth(_) => return Some(Ending::Refused(0x8C, "extended authentication is not supported")),
        Packet::Connect(_)
        | Packet::ConnAck(_)
        | Packet::SubAck(_)
        | Packet::UnsubAck(_)
        | Packet::PingResp => return Some(Ending::Refused(0x82, "a packet only a server sends")),
    }
    None
}

/// Maps a refused publish or subscribe to its reason code.
fn reason_of(err: &OpError) -> u8 {
    match err.code {
        ErrorCode::Forbidden
        | ErrorCode::DisabledInNamespace
        | ErrorCode::TokenRevoked
        | ErrorCode::TenantSuspended => 0x87,
        ErrorCode::RateLimited
        | ErrorCode::QuotaExceeded
        | ErrorCode::ChannelLimit
        | ErrorCode::TooManySubscriptions
        | ErrorCode::MessageTooLarge => 0x97,
        ErrorCode::InvalidChannel => 0x90,
        _ => 0x80,
    }
}

/// Answers a publish that was refused (and not stored): MQTT 5 acknowledges it with the
/// reason. A 3.1.1 client has no way to hear a reason; MQTT-3.3.5-2 lets the server either close
/// the connection or acknowledge as usual, and it acknowledges, so that one refused topic does
/// not cut a device off from the ones it may use (the refusal is logged).
fn refuse_publish(live: &mut Live, publish: &Publish, code: u8) -> Option<Ending> {
    let version = live.link.version;
    if version == Version::V311 {
        tracing::info!(client = %live.client.client_id(), topic = %publish.topic, code, "MQTT 3.1.1 publish refused");
    }
    let code = if version == Version::V5 { code } else { 0 };
    match (publish.qos, publish.packet_id) {
        (QoS::AtLeastOnce, Some(id)) => write_ack(&mut live.out, version, 0x40, id, code),
        (QoS::ExactlyOnce, Some(id)) => {
            if version == Version::V311 {
                // The PUBREL that follows must find its id.
                live.client.awaiting_release.insert(id);
            }
            write_ack(&mut live.out, version, 0x50, id, code);
        }
        _ => {}
    }
    None
}

async fn on_publish(state: &Arc<RelayState>, live: &mut Live, mut publish: Publish) -> Option<Ending> {
    // Topic aliases set by the client (MQTT 5).
    let channel = match publish.properties.topic_alias.take() {
        Some(alias) if alias == 0 || alias > state.config.mqtt.topic_alias_maximum => {
            return Some(Ending::Refused(0x94, "topic alias out of range"));
        }
        Some(alias) if publish.topic.is_empty() => match live.link.inbound_alias(alias) {
            Some(channel) => Ok(channel.clone()),
            None => return Some(Ending::Refused(0x82, "unknown topic alias")),
        },
        Some(alias) => channel_of(&publish.topic).inspect(|channel| {
            live.link.extras().inbound_aliases.insert(alias, channel.clone());
        }),
        None if publish.topic.is_empty() => return Some(Ending::Refused(0x82, "a PUBLISH without a topic")),
        None => channel_of(&publish.topic),
    };
    let Ok(channel) = channel else { return refuse_publish(live, &publish, 0x90) };
    if publish.topic.is_empty() {
        publish.topic = channel.to_string();
    }
    if let (QoS::ExactlyOnce, Some(id)) = (publish.qos, publish.packet_id) {
        if live.client.awaiting_release.contains(&id) {
            // A retransmission before PUBREL: stored once already (MQTT-4.3.3-9).
            write_ack(&mut live.out, live.link.version, 0x50, id, 0);
            return None;
        }
        // 3.1.1 clients are never told the server's Receive Maximum, so it binds MQTT 5 only.
        if live.link.version == Version::V5
            && live.client.awaiting_release.len() >= usize::from(state.config.mqtt.receive_maximum)
        {
            return Some(Ending::Refused(0x93, "receive maximum exceeded"));
        }
    }
    if publish.properties.payload_format == Some(1) && std::str::from_utf8(&publish.payload).is_err() {
        return refuse_publish(live, &publish, 0x99);
    }
    if live.client.deny.iter().any(|p| p.matches(&channel)) {
        return refuse_publish(live, &publish, 0x80);
    }
    if let Err(err) = live.client.session.may_publish_on(&channel) {
        return refuse_publish(live, &publish, reason_of(&err));
    }
    let client_id = live.client.client_id().clone();
    if let Err(err) = super::publish::publish(state, &live.app, &client_id, channel, &publish).await {
        return refuse_publish(live, &publish, reason_of(&err));
    }
    match (publish.qos, publish.packet_id) {
        (QoS::AtLeastOnce, Some(id)) => write_ack(&mut live.out, live.link.version, 0x40, id, 0),
        (QoS::ExactlyOnce, Some(id)) => {
            live.client.awaiting_release.insert(id);
            write_ack(&mut live.out, live.link.version, 0x50, id, 0);
        }
        _ => {}
    }
    None
}

async fn on_subscribe(state: &Arc<RelayState>, live: &mut Live, subscribe: Subscribe) {
    let v5 = live.link.version == Version::V5;
    let id = subscribe.properties.subscription_ids.first().map(|id| *id as u32);
    let mut codes = Vec::with_capacity(subscribe.subscriptions.len());
    let mut retained_for = Vec::new();
    for wanted in subscribe.subscriptions {
        let code = match subscribe_one(state, live, &wanted, id).await {
            Ok(is_new) => {
                // Shared subscriptions get no retained messages (MQTT 5 section 4.8.2).
                let send = !wanted.filter.starts_with("$share/")
                    && match wanted.retain_handling {
                        0 => true,
                        1 => is_new,
                        _ => false,
                    };
                if send {
                    retained_for.push(Arc::<str>::from(wanted.filter.as_str()));
                }
                wanted.qos as u8
            }
            Err(code) if v5 => code,
            Err(_) => 0x80,
        };
        codes.push(code);
    }
    let suback = SubAck { packet_id: subscribe.packet_id, properties: Properties::default(), codes };
    live.out.extend_from_slice(&encode(&Packet::SubAck(suback), live.link.version));
    for filter in retained_for {
        queue_retained(state, live, filter).await;
    }
    handoff::save(state, &live.app, &mut live.client, live.generation, true).await;
}

/// Adds or replaces one subscription; returns whether it is new, or the reason code.
async fn subscribe_one(
    state: &Arc<RelayState>,
    live: &mut Live,
    wanted: &tributary_mqtt::Subscription,
    id: Option<u32>,
) -> Result<bool, u8> {
    if !live.client.session.take_request() {
        return Err(0x97);
    }
    let filter = parse_filter(wanted, id)?;
    if let Some(existing) = live.client.filters.iter_mut().find(|f| *f.text == *wanted.filter) {
        // MQTT-3.8.4-3: a subscription to the same filter replaces the options.
        existing.qos = wanted.qos;
        existing.no_local = wanted.no_local;
        existing.retain_as_published = wanted.retain_as_published;
        existing.id = id;
        return Ok(false);
    }
    if live.client.filters.len() >= state.config.max_subscriptions_per_connection {
        return Err(0x97);
    }
    // The channel a filter without wildcards names, shared or not.
    let inner = wanted
        .filter
        .strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
        .map_or(&*wanted.filter, |(_, i)| i);
    if let Ok(channel) = channel_of(inner)
        && live.client.deny.iter().any(|p| p.matches(&channel))
    {
        return Err(0x80);
    }
    add_filter(state, &mut live.client, filter, None).await.map_err(|err| reason_of(&err))?;
    Ok(true)
}

/// Reads a subscription's filter and options; `Err` is the SUBACK reason code.
pub(super) fn parse_filter(wanted: &tributary_mqtt::Subscription, id: Option<u32>) -> Result<Filter, u8> {
    // `$share/<group>/<filter>`: a shared subscription (MQTT 5 section 4.8.2).
    let (inner, shared) = match wanted.filter.strip_prefix("$share/") {
        Some(rest) => {
            let (group, inner) = rest.split_once('/').ok_or(0x8F)?;
            if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
                return Err(0x8F);
            }
            if wanted.no_local {
                // MQTT-3.8.3-4 calls No Local on a shared subscription a protocol error; it is
                // refused as an invalid filter, which leaves the client's other subscriptions be.
                return Err(0x8F);
            }
            (inner, true)
        }
        None => (wanted.filter.as_str(), false),
    };
    let topic = TopicFilter::parse(inner).map_err(|e| e.reason_code())?;
    // A shared subscription is served by the hub like a wildcard one, even without wildcards.
    let (text, target) = if topic.is_exact() && !shared {
        // The channel name's text serves as the filter's: one string per subscription.
        let channel = channel_of(inner).map_err(|e| e.reason_code())?;
        (channel.shared().clone(), Target::Channel(channel))
    } else {
        (Arc::from(wanted.filter.as_str()), Target::Pattern(Arc::new(topic)))
    };
    Ok(Filter {
        text,
        target,
        qos: wanted.qos,
        no_local: wanted.no_local,
        retain_as_published: wanted.retain_as_published,
        id,
        shared,
        position: None,
    })
}

/// Queues the retained messages a new subscription gets.
async fn queue_retained(state: &Arc<RelayState>, live: &mut Live, text: Arc<str>) {
    let Some(filter) = live.client.filters.iter().find(|f| f.text == text) else { return };
    let found = match &filter.target {
        Target::Channel(channel) => {
            let key = tributary_engine::ChannelKey::new(live.app.clone(), channel.clone());
            let retained = state.engine.retained(&key).await;
            // A retained message stored after the subscription's start comes as a message
            // anyway (from the seam or the grace): not twice.
            let after_start = |p: &tributary_protocol::Publication| {
                filter
                    .position
                    .as_ref()
                    .is_some_and(|(epoch, offset)| *p.epoch == **epoch && p.offset > *offset)
            };
            retained.map(|p| {
                p.filter(|p| !after_start(p)).map(|p| vec![(channel.clone(), p)]).unwrap_or_default()
            })
        }
        Target::Pattern(topic) => {
            let limit = state.config.mqtt.max_retained_per_subscription;
            let topic = topic.clone();
            let deny = live.client.deny.clone();
            let taken = |c: &ChannelName| topic.matches(c.as_str()) && !deny.iter().any(|p| p.matches(c));
            let all = state.engine.retained_in(&live.app, usize::MAX).await;
            all.map(|all| all.into_iter().filter(|(c, _)| taken(c)).take(limit).collect())
        }
    };
    // A repeated SUBSCRIBE replaces what the last one queued rather than adding to it.
    live.link.drop_retained(&text);
    match found {
        Ok(found) => {
            for (channel, publication) in found {
                let message = PreparedMessage { frame: bytes::Bytes::new(), channel, publication };
                live.link.extras().retained.push_back((Arc::new(message), text.clone()));
            }
        }
        Err(err) => tracing::warn!(error = %err, "reading retained messages failed"),
    }
}

async fn on_unsubscribe(state: &Arc<RelayState>, live: &mut Live, unsubscribe: Unsubscribe) {
    let mut codes = Vec::with_capacity(unsubscribe.filters.len());
    for text in &unsubscribe.filters {
        let Some(index) = live.client.filters.iter().position(|f| *f.text == **text) else {
            codes.push(0x11);
            continue;
        };
        let filter = live.client.filters.remove(index);
        match filter.exact() {
            Some(channel) => {
                let _ = live.client.session.unsubscribe(channel).await;
            }
            None => remove_patterns(state, live.client.session.conn(), Some(&filter.text)).await,
        }
        live.link.drop_retained(&filter.text);
        codes.push(0x00);
    }
    let unsuback = UnsubAck { packet_id: unsubscribe.packet_id, properties: Properties::default(), codes };
    live.out.extend_from_slice(&encode(&Packet::UnsubAck(unsuback), live.link.version));
    handoff::save(state, &live.app, &mut live.client, live.generation, true).await;
}

/// The MQTT 5 reason code for a connection the server closed.
fn close_reason(code: Option<CloseCode>) -> u8 {
    match code {
        Some(CloseCode::Shutdown) => 0x8B,
        Some(CloseCode::SlowConsumer) => 0x97,
        Some(CloseCode::IdleTimeout) => 0x8D,
        Some(CloseCode::Revoked | CloseCode::TenantSuspended | CloseCode::InvalidToken) => 0x87,
        Some(CloseCode::TokenExpired) => 0xA0,
        Some(CloseCode::Disconnected) => 0x98,
        Some(CloseCode::SessionTakenOver) => 0x8E,
        Some(CloseCode::ConnectionLimit) => 0x97,
        _ => 0x80,
    }
}

/// Ends a connection: the goodbye, the session parked or closed, the will.
async fn finish(state: &Arc<RelayState>, mut stream: impl MqttIo, live: Live, ending: Ending) {
    let Live { mut client, link, app, generation, will, mut out, .. } = live;
    let conn = client.session.conn().clone();
    let close_code = conn.close_code();
    let publish_will = !matches!(ending, Ending::Disconnected { will: false });
    let revoked =
        matches!(close_code, Some(CloseCode::Revoked | CloseCode::TenantSuspended | CloseCode::InvalidToken));
    let client_id = client.client_id().clone();
    let key = client.session_key.clone();
    let expiry = client.expiry_secs;
    // Shutting down, the session is copied for the node the client comes back to, and a
    // delayed will is handed to the other nodes rather than published at once: stored before
    // the goodbye, so a client that reconnects at once takes it away.
    let handed = state.shutdown.is_cancelled()
        && expiry > 0
        && !revoked
        && close_code != Some(CloseCode::SessionTakenOver)
        && state.engine.spans_nodes();
    let will = will.filter(|_| publish_will && !revoked);
    let handed_will = match &will {
        Some(will) if handed => {
            let delay = will.properties.will_delay.unwrap_or(0).min(expiry);
            let delay = Duration::from_secs(delay.into());
            (!delay.is_zero() && handoff::store_will(state, &app, &key, &client_id, will, delay).await)
                .then_some(delay)
        }
        _ => None,
    };
    if link.version == Version::V5 {
        let goodbye = match &ending {
            Ending::Closed => {
                Some((close_reason(close_code), close_code.map(|c| c.reason()).unwrap_or_default()))
            }
            Ending::Refused(code, reason) => Some((*code, *reason)),
            Ending::Gone | Ending::Disconnected { .. } => None,
        };
        if let Some((code, reason)) = goodbye {
            let mut properties = Properties::default();
            if link.problem_info {
                properties.reason_string = Some(reason.to_owned());
            }
            out.extend_from_slice(&encode(&Packet::Disconnect(Disconnect { code, properties }), Version::V5));
        }
    }
    if !out.is_empty() {
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, io::write_all(&mut stream, &out)).await;
    }
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, io::shutdown(&mut stream)).await;
    if matches!(ending, Ending::Refused(..)) {
        // A client that is still sending (the acknowledgements of what it was sent before the
        // DISCONNECT) would get a reset and could lose the DISCONNECT: read until it closes too.
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            let mut sink = BytesMut::new();
            while matches!(io::read_into(&mut stream, &mut sink).await, Ok(n) if n > 0) {
                sink.clear();
            }
        })
        .await;
    }
    drop(stream);
    // The count is read, then the session parked, without one lock: at the cap, a few
    // sessions going away at once may all be parked.
    let parked = expiry > 0
        && !revoked
        && !state.shutdown.is_cancelled()
        && state.mqtt_sessions.parked_in(&app) < state.config.mqtt.max_parked_sessions_per_app;
    let delay = will
        .as_ref()
        .map_or(0, |w| w.properties.will_delay.unwrap_or(0).min(if parked { expiry } else { 0 }));
    let will_cancel = (delay > 0).then(CancellationToken::new);
    // Taken over, the session lives on in the connection that took it (here or on another
    // node), which keeps its copy.
    if close_code != Some(CloseCode::SessionTakenOver) {
        if !revoked && (parked || state.shutdown.is_cancelled()) {
            // Where the client is exactly: a node it comes back to resumes from here.
            handoff::save(state, &app, &mut client, generation, false).await;
        } else {
            handoff::forget(state, &app, &client).await;
        }
    }
    if parked {
        conn.set_parked(true);
        client.session.leave_presence().await;
        // Offline, it counts against no connection limit; its queue keeps taking what comes,
        // up to its bound, for the client's return.
        crate::transport::unregister(state, &conn).await;
        let expiry_task = spawn_expiry(state, app.clone(), key.clone(), generation, expiry);
        let parked = state.mqtt_sessions.park(
            &app,
            &key,
            generation,
            client,
            will_cancel.clone(),
            expiry_task.clone(),
        );
        // A newer connection of the client id (which cancels a delayed will) or a revocation
        // came meanwhile: the session is not kept, and its will not published.
        if let Some(client) = parked {
            expiry_task.abort();
            if let Some(cancel) = &will_cancel {
                cancel.cancel();
            }
            end_session(state, client).await;
        }
    } else {
        state.mqtt_sessions.release(&app, &key, generation);
        end_session(state, client).await;
    }
    let Some(will) = will else { return };
    if let Some(delay) = handed_will {
        announce_or_publish(state, &app, &key, &client_id, *will, delay).await;
        return;
    }
    match will_cancel {
        None => publish_will_now(state, &app, &client_id, *will).await,
        Some(cancel) => {
            let state = state.clone();
            // Tracked: at a shutdown it hands the will over before the node stops.
            let tasks = state.tasks.clone();
            tasks.spawn(async move {
                let due = Instant::now() + Duration::from_secs(delay.into());
                tokio::select! {
                    () = sleep_until(due) => {}
                    () = state.shutdown.cancelled() => {
                        let left = due.saturating_duration_since(Instant::now());
                        if !left.is_zero() && handoff::store_will(&state, &app, &key, &client_id, &will, left).await {
                            announce_or_publish(&state, &app, &key, &client_id, *will, left).await;
                            return;
                        }
                    }
                    // MQTT-3.1.3-9: the client came back within the delay.
                    () = cancel.cancelled() => return,
                }
                publish_will_now(&state, &app, &client_id, *will).await;
            });
        }
    }
}

/// Announces a will stored for the other nodes; publishes it now if none of them heard.
async fn announce_or_publish(
    state: &Arc<RelayState>,
    app: &Arc<str>,
    key: &str,
    client_id: &Arc<str>,
    will: LastWill,
    delay: Duration,
) {
    match handoff::announce_will(state, app, key, delay).await {
        handoff::Announced::Heard | handoff::Announced::TakenBack(None) => {}
        // Taken back, or unknown: rather twice than never.
        handoff::Announced::TakenBack(Some(_)) | handoff::Announced::Unknown => {
            publish_will_now(state, app, client_id, will).await;
        }
    }
}

/// Publishes a will another node handed over when it shut down, once its delay passed, unless
/// its client came back (see `handoff::store_will`). A node that shuts down first passes it on
/// with the time left (or, the last one, publishes it now).
pub(super) async fn publish_handed_will(
    state: &Arc<RelayState>,
    app: &str,
    session_key: &str,
    delay: Duration,
) {
    let due = Instant::now() + delay;
    tokio::select! {
        () = sleep_until(due) => {}
        () = state.shutdown.cancelled() => {
            let left = due.saturating_duration_since(Instant::now());
            match handoff::announce_will(state, app, session_key, left).await {
                handoff::Announced::TakenBack(Some(taken)) => {
                    let (client_id, publish) = *taken;
                    publish_handed(state, app, &client_id, &publish).await;
                }
                handoff::Announced::Unknown => tracing::warn!("a handed-over will could not be passed on"),
                handoff::Announced::Heard | handoff::Announced::TakenBack(None) => {}
            }
            return;
        }
    }
    if let Ok(Some((client_id, publish))) = handoff::take_will(state, app, session_key).await {
        publish_handed(state, app, &client_id, &publish).await;
    }
}

async fn publish_handed(state: &Arc<RelayState>, app: &str, client_id: &Arc<str>, publish: &Publish) {
    let Ok(channel) = channel_of(&publish.topic) else { return };
    let app: Arc<str> = Arc::from(app);
    if let Err(err) = super::publish::publish(state, &app, client_id, channel, publish).await {
        tracing::warn!(error = %err.message, "publishing a handed-over will failed");
    }
}

/// Closes a parked session when its expiry comes (or the relay shuts down); aborted when the
/// client comes back first.
fn spawn_expiry(
    state: &Arc<RelayState>,
    app: Arc<str>,
    client: Arc<str>,
    generation: u64,
    expiry: u32,
) -> tokio::task::AbortHandle {
    let state = state.clone();
    let task = tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(expiry.into())) => {}
            () = state.shutdown.cancelled() => {}
        }
        if let Some(parked) = state.mqtt_sessions.expire(&app, &client, generation) {
            end_session(&state, parked).await;
        }
    });
    task.abort_handle()
}

async fn publish_will_now(state: &Arc<RelayState>, app: &Arc<str>, client: &Arc<str>, will: LastWill) {
    let Ok(channel) = channel_of(&will.topic) else { return };
    let publish = Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic,
        packet_id: None,
        properties: will.properties,
        payload: will.payload,
    };
    if let Err(err) = super::publish::publish(state, app, client, channel, &publish).await {
        tracing::warn!(error = %err.message, "publishing a will failed");
    }
}
