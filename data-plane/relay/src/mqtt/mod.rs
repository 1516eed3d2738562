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
//! - `connection`: one TCP connection: CONNECT, then reading, writing and keep-alive.
//! - `client`: the MQTT session: subscriptions, packet ids, QoS 1 and 2 state, delivery.
//! - `registry`: sessions by app and client id, across connections (takeover, expiry).
//! - `publish`: publishing a client's PUBLISH or will (retained messages included).

mod client;
mod connection;
mod publish;
mod registry;

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
    /// Address of the MQTT listener (plain TCP); unset, MQTT is off.
    pub listen: Option<SocketAddr>,
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
    /// Topic aliases a client may set (the server's Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Topic aliases the server uses towards a client at most (the client's own maximum
    /// lowers it).
    pub server_topic_aliases: u16,
    /// Retained messages sent for one wildcard subscription, at most.
    pub max_retained_per_subscription: usize,
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
            max_packet_bytes: 256 * 1024,
            max_keep_alive_secs: 300,
            max_inflight: 32,
            receive_maximum: 32,
            max_session_expiry_secs: 24 * 3600,
            topic_alias_maximum: 32,
            server_topic_aliases: 32,
            max_retained_per_subscription: 1000,
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
        // The MQTT remaining length caps a packet at 256 MB.
        if self.max_packet_bytes > 268_435_455 {
            problems.push("relay.mqtt.max_packet_bytes must be at most 268435455".into());
        }
        problems
    }
}

/// Accepts MQTT connections on `listener` until the relay shuts down.
pub async fn serve(listener: TcpListener, state: Arc<RelayState>) {
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
        state.tasks.spawn(connection::run(stream, state.clone()));
    }
}
