//! MQTT 3.1.1 and 5.0 on the relay's own channels: no second broker. A device's connection is a
//! [`Session`](crate::session::Session) like a WebSocket's, so tokens, rights, quotas, presence,
//! history and the hub are the same; this module speaks the packets.
//!
//! # Mapping
//! - A topic name is a channel name, byte for byte (`devices/42/temp` is the channel
//!   `devices/42/temp`; `telemetry:devices/42` is in namespace `telemetry`). Topics with other
//!   characters are refused (0x90). `+` and `#` filters are wildcard subscriptions, allowed only
//!   if the token's subscribe right covers every channel they can match.
//! - User name: the app id or the signing key id; password: a capability token of that app.
//!   The client id is the token's client id (or empty, and the server assigns it).
//! - Payloads: compact JSON is stored as JSON (WebSocket, SSE and long-poll subscribers get the
//!   value), anything else as binary (they get base64 with `"binary": true`). MQTT subscribers
//!   get the bytes that were published, from whichever protocol.
//! - Messages published by other protocols are delivered at the subscription's QoS; MQTT ones
//!   at the lower of the two.
//! - A session outlives its connection for its expiry interval (MQTT 5) or for
//!   `max_session_expiry_secs` (3.1.1 without clean session): its subscriptions stay in the hub
//!   and messages wait in its bounded queue; past the queue, exact subscriptions recover from
//!   channel history when the client comes back.
//!
//! # Layout
//! - [`MqttConfig`]: the `[relay.mqtt]` settings.
//! - `connection`: one connection: CONNECT, then reading, writing and keep-alive.
//! - `hibernate`: idle connections without a task, and their deadlines.
//! - `handoff`: persistent sessions that move between nodes.
//! - `io`: the byte stream under it: TCP, binary WebSocket messages, or TLS ([`tls`]).
//! - `client`: the MQTT session: subscriptions, packet ids, QoS 1 and 2 state, delivery.
//! - `registry`: sessions by app and client id, across connections (takeover, expiry).
//! - `publish`: publishing a client's PUBLISH or will (retained messages included).

mod client;
mod connection;
mod handoff;
mod hibernate;
mod io;
mod publish;
mod registry;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use registry::Sessions;

use crate::state::RelayState;

/// Settings of the MQTT front end (the `[relay.mqtt]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Address of the MQTT listener (plain TCP); unset, MQTT over TCP is off.
    pub listen: Option<SocketAddr>,
    /// Address of the MQTT-over-WebSocket listener (subprotocol `mqtt`, path `/mqtt` or `/`);
    /// unset, it is off.
    pub ws_listen: Option<SocketAddr>,
    /// Address of the MQTT-over-TLS listener (with `tls_cert_file` and `tls_key_file`); unset,
    /// it is off.
    pub tls_listen: Option<SocketAddr>,
    /// PEM file with the TLS certificate chain, the server's certificate first.
    pub tls_cert_file: String,
    /// PEM file with the TLS private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: String,
    /// New MQTT connections per second this node takes, over both listeners (as many may come
    /// at once); beyond it a client is refused with 0x9F "connection rate exceeded" (3.1.1:
    /// 0x03), so a fleet reconnecting after an outage comes back at a pace the node can serve.
    pub max_connections_per_second: u32,
    /// Largest packet a client may send, in bytes (checked from the fixed header, before the
    /// packet is read). Payloads are further bounded by their namespace.
    pub max_packet_bytes: usize,
    /// Longest keep-alive, in seconds. A client asking for more, or for none, is given this
    /// one (MQTT 5 clients are told with Server Keep Alive).
    pub max_keep_alive_secs: u16,
    /// QoS 1 and 2 messages sent to a client and not yet acknowledged, at most (the client's
    /// Receive Maximum lowers it).
    pub max_inflight: u16,
    /// QoS 2 publishes of a client waiting for their release, at most: the server's Receive
    /// Maximum.
    pub receive_maximum: u16,
    /// Longest session expiry, in seconds; 3.1.1 sessions without clean session get this.
    pub max_session_expiry_secs: u32,
    /// Sessions of one app this node keeps parked (their clients away) at most; past it, a
    /// session whose client goes away ends at once, as with expiry 0. Parked sessions hold no
    /// connection and count against no connection limit: this bounds what they can hold.
    pub max_parked_sessions_per_app: usize,
    /// Topic aliases a client may set (the server's Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Topic aliases the server uses towards a client at most (the client's own maximum
    /// lowers it).
    pub server_topic_aliases: u16,
    /// Retained messages sent for one wildcard subscription, at most.
    pub max_retained_per_subscription: usize,
    /// A new subscription by name also gets what was stored on its channel this many
    /// milliseconds before its SUBSCRIBE was read (at most the newest eight messages): packets
    /// of two connections that arrive together may be read in either order, and a PUBLISH
    /// that came right after another client's SUBSCRIBE must still reach it. 0: off.
    pub subscribe_grace_ms: u64,
    /// Anonymous access: a connection without a password joins this app (its id; `"dev"` is
    /// the development app of `tributary serve`) with `anonymous_grants`, and its client id is
    /// whatever it says. Empty: off. For trials and conformance suites, not for devices in the
    /// field.
    pub anonymous_app: String,
    /// The rights of anonymous connections, as `<pattern>=<right>,<right>`.
    pub anonymous_grants: Vec<String>,
    /// Channel patterns anonymous connections may not use: subscribing is refused with 0x80
    /// (the server does not say why, as a broker's ACL does not), wildcard subscriptions skip
    /// them, and publishes on them are refused.
    pub anonymous_deny: Vec<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: None,
            ws_listen: None,
            tls_listen: None,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            max_connections_per_second: 5000,
            max_packet_bytes: 256 * 1024,
            max_keep_alive_secs: 300,
            max_inflight: 32,
            receive_maximum: 32,
            max_session_expiry_secs: 24 * 3600,
            max_parked_sessions_per_app: 10_000,
            topic_alias_maximum: 32,
            server_topic_aliases: 32,
            max_retained_per_subscription: 1000,
            subscribe_grace_ms: 10,
            anonymous_app: String::new(),
            anonymous_grants: vec!["*=subscribe,publish,presence,history".into()],
            anonymous_deny: Vec::new(),
        }
    }
}

impl MqttConfig {
    /// Returns what is wrong with the settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("max_packet_bytes", self.max_packet_bytes as u64),
            ("max_keep_alive_secs", self.max_keep_alive_secs.into()),
            ("max_inflight", self.max_inflight.into()),
            ("receive_maximum", self.receive_maximum.into()),
            ("max_retained_per_subscription", self.max_retained_per_subscription as u64),
            ("max_connections_per_second", self.max_connections_per_second.into()),
        ] {
            if value == 0 {
                problems.push(format!("relay.mqtt.{name} must be greater than 0"));
            }
        }
        for grant in &self.anonymous_grants {
            if let Err(err) = tributary_capability::Capabilities::parse_spec(grant) {
                problems.push(format!("relay.mqtt.anonymous_grants: {grant:?}: {err}"));
            }
        }
        for pattern in &self.anonymous_deny {
            if let Err(err) = tributary_protocol::ChannelPattern::parse(pattern) {
                problems.push(format!("relay.mqtt.anonymous_deny: {pattern:?}: {err}"));
            }
        }
        if self.tls_listen.is_some() && (self.tls_cert_file.is_empty() || self.tls_key_file.is_empty()) {
            problems.push(
                "relay.mqtt.tls_listen needs relay.mqtt.tls_cert_file and relay.mqtt.tls_key_file".into(),
            );
        }
        // The MQTT remaining length caps a packet at 256 MB.
        if self.max_packet_bytes > 268_435_455 {
            problems.push("relay.mqtt.max_packet_bytes must be at most 268435455".into());
        }
        problems
    }
}

/// Ends the parked sessions of `app` whose connection `policy` no longer admits (a revoked
/// token, client or key, a suspended tenant; `None`: the app is gone), as live connections are
/// closed; returns how many. Their delayed wills are not published.
pub async fn end_unadmitted(
    state: &RelayState,
    app: &str,
    policy: Option<&crate::policy::AppPolicy>,
) -> usize {
    let ended =
        state.mqtt_sessions.take_parked(app, |client| client.session.conn().close_unless_admitted(policy));
    let count = ended.len();
    for client in ended {
        handoff::forget(state, app, &client).await;
        connection::end_session(state, client).await;
    }
    count
}

/// Ends the parked sessions of a client id of `app` (revoked by the app's backend); returns
/// how many.
pub async fn end_client(state: &RelayState, app: &str, client_id: &str) -> usize {
    let ended = state.mqtt_sessions.take_parked(app, |client| &**client.client_id() == client_id);
    let count = ended.len();
    for client in ended {
        client.session.conn().close(tributary_protocol::CloseCode::Revoked);
        handoff::forget(state, app, &client).await;
        connection::end_session(state, client).await;
    }
    count
}

/// Ends generation `generation` of a session that another node serves now (see `handoff`): a
/// parked one quietly, an online one as a takeover (DISCONNECT 0x8E). A newer connection of
/// the client id on this node is left alone.
pub async fn session_moved(state: &RelayState, app: &str, session: &str, generation: u64) {
    let (app, session): (Arc<str>, Arc<str>) = (Arc::from(app), Arc::from(session));
    if let Some(client) = state.mqtt_sessions.take_generation(&app, &session, generation).await {
        connection::end_session(state, client).await;
    }
    // A will this node handed over as it shut down, after the client's CONNECT elsewhere
    // looked for one: the client is back, so it is not sent.
    if state.shutdown.is_cancelled() {
        let _ = handoff::take_will(state, &app, &session).await;
    }
}

/// Publishes, after `delay_ms`, the will that a node shutting down handed over for a session,
/// unless its client came back meanwhile (another node may have published it already: one
/// node takes it).
pub async fn will_pending(state: &Arc<RelayState>, app: &str, session: &str, delay_ms: u64) {
    connection::publish_handed_will(state, app, session, std::time::Duration::from_millis(delay_ms)).await;
}

/// The MQTT-over-WebSocket listener's routes: `/mqtt` (what most clients ask for) and `/`.
pub fn websocket_router(state: Arc<RelayState>) -> axum::Router {
    axum::Router::new()
        .route("/mqtt", axum::routing::get(upgrade))
        .route("/", axum::routing::get(upgrade))
        .with_state(state)
}

/// Upgrades a request to MQTT over WebSocket (subprotocol `mqtt`, selected when offered).
async fn upgrade(
    axum::extract::State(state): axum::extract::State<Arc<RelayState>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use crate::transport::websocket::{Stream, accept};
    let accepted = match accept(request, Some("mqtt")) {
        Ok(accepted) => accepted,
        Err(refused) => return axum::response::IntoResponse::into_response(refused),
    };
    let upgrade = accepted.upgrade;
    // A message may carry several packets: room for the largest packet and then some.
    let max_message = state.config.mqtt.max_packet_bytes.saturating_add(64 * 1024);
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let (stream, read_ahead) = Stream::from_upgrade(upgraded);
        connection::run(io::WsIo::new(stream, &read_ahead, max_message), state).await;
    });
    accepted.response
}

/// Accepts MQTT connections on `listener` until the relay shuts down.
pub async fn serve(listener: TcpListener, state: Arc<RelayState>) {
    accept_each(listener, &state, |stream| {
        state.tasks.spawn(connection::run(stream, state.clone()));
    })
    .await;
}

/// Accepts connections on `listener` until the relay shuts down, with `TCP_NODELAY`, and hands
/// each to `serve_one`. A failed accept (out of file descriptors, most likely) backs off
/// instead of spinning.
async fn accept_each(
    listener: TcpListener,
    state: &RelayState,
    mut serve_one: impl FnMut(tokio::net::TcpStream),
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "MQTT accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = state.shutdown.cancelled() => return,
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        serve_one(stream);
    }
}
