//! Relay settings: limits, timeouts and per-namespace channel options.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tributary_engine::{PresenceOptions, StreamOptions};

/// Settings of the relay (the `[relay]` section of the configuration file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Largest client frame (WebSocket message, SSE/long-poll/HTTP body) in bytes.
    pub max_frame_bytes: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Frames queued for one connection before it is disconnected as a slow consumer.
    pub outbound_queue_len: usize,
    /// Bytes queued for one connection before it is disconnected as a slow consumer; history
    /// replies are cut to half of it.
    pub max_queued_bytes: usize,
    /// Most connections per app on this node.
    pub max_connections_per_app: usize,
    /// Sustained client publishes per second per connection.
    pub publish_rate_per_second: u32,
    /// Client publishes allowed in a burst per connection.
    pub publish_burst: u32,
    /// Sustained other requests (subscribe, unsubscribe, history, presence, refresh) per second
    /// per connection.
    pub request_rate_per_second: u32,
    /// Other requests allowed in a burst per connection.
    pub request_burst: u32,
    /// Time a new connection has, from the TCP accept, to send its whole request head; a
    /// WebSocket then has it again, from the upgrade, for its `connect` frame (an MQTT
    /// connection: for its CONNECT), in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Connections of one listener that may be sending their first request head at once; past
    /// it a new connection is answered `503` and closed.
    pub max_pending_handshakes: usize,
    /// Interval of server pings, in milliseconds.
    pub ping_interval_ms: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// A connection whose client has taken none of the bytes written to it for this long is
    /// closed as a slow consumer (3001; MQTT: dropped), whatever room its queue has, in
    /// milliseconds.
    pub write_stall_timeout_ms: u64,
    /// A presence entry not refreshed for this long expires, in milliseconds; connections
    /// refresh theirs every third of it.
    pub presence_timeout_ms: u64,
    /// How long idempotency keys are remembered, in seconds (at least 120).
    pub idempotency_window_secs: u64,
    /// Most messages one recovery replays; a client that missed more is told `recovered: false`.
    /// Recoveries longer than the connection's queue are streamed page by page as it drains.
    pub max_recover: usize,
    /// Longest wait of one long-poll request, in milliseconds.
    pub long_poll_max_wait_ms: u64,
    /// Clock skew tolerated on token `exp` and `nbf`, in seconds.
    pub token_leeway_secs: u64,
    /// Longest lifetime of a token minted by the HTTP API, in seconds.
    pub max_token_ttl_secs: u64,
    /// How often every cached app (keys, revocations, tenant status) is read again from the
    /// store, in seconds: the bound on how long a change whose control event was lost takes
    /// to reach this node.
    pub control_resync_secs: u64,
    /// How often this node's usage counts are written to the store, in seconds (at most 10:
    /// a billing system reads them).
    pub usage_flush_secs: u64,
    /// Mounts `/v1/diagnostics/echo`, an unauthenticated WebSocket echo used to run the
    /// Autobahn conformance cases. Never turn it on in production.
    pub diagnostic_echo: bool,
    /// Options per namespace (the channel-name part before the first `:`); `""` is the default
    /// namespace, used for names without `:` and for namespaces not listed.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// The MQTT front end (`[relay.mqtt]`).
    pub mqtt: crate::mqtt::MqttConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_subscriptions_per_connection: 128,
            outbound_queue_len: 1024,
            max_queued_bytes: 16 * 1024 * 1024,
            max_connections_per_app: 10_000,
            publish_rate_per_second: 50,
            publish_burst: 100,
            request_rate_per_second: 100,
            request_burst: 200,
            handshake_timeout_ms: 10_000,
            max_pending_handshakes: 4096,
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
            write_stall_timeout_ms: 30_000,
            presence_timeout_ms: 30_000,
            idempotency_window_secs: 300,
            max_recover: 100_000,
            long_poll_max_wait_ms: 30_000,
            token_leeway_secs: 5,
            max_token_ttl_secs: 24 * 3600,
            control_resync_secs: 30,
            usage_flush_secs: 10,
            diagnostic_echo: false,
            namespaces: BTreeMap::from([(String::new(), NamespaceConfig::default())]),
            mqtt: crate::mqtt::MqttConfig::default(),
        }
    }
}

/// Options of the channels of one namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Messages kept in each channel's history (0 turns history and recovery off).
    pub history_size: usize,
    /// How long a message stays in history, in seconds.
    pub history_ttl_secs: u64,
    /// Whether subscribers are tracked in presence.
    pub presence: bool,
    /// Whether join and leave events are sent to subscribers.
    pub join_leave: bool,
    /// Whether clients (with the publish right) may publish; backends always may.
    pub client_publish: bool,
    /// Largest message payload in bytes.
    pub max_message_bytes: usize,
    /// Whether the namespace's messages go on the tenant's audit log: set per app through the
    /// management API (the audit log writer reads it from the store), refused in the file.
    pub audited: bool,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            history_size: 100,
            history_ttl_secs: 3600,
            presence: true,
            join_leave: true,
            client_publish: true,
            max_message_bytes: 32 * 1024,
            audited: false,
        }
    }
}

impl NamespaceConfig {
    /// Returns the engine's view of history retention.
    pub fn stream(&self) -> StreamOptions {
        StreamOptions {
            history_size: self.history_size,
            history_ttl: Duration::from_secs(self.history_ttl_secs),
        }
    }
}

impl RelayConfig {
    /// Returns the options of `namespace`, falling back to the default namespace.
    pub fn namespace(&self, namespace: &str) -> NamespaceConfig {
        self.namespaces.get(namespace).or_else(|| self.namespaces.get("")).cloned().unwrap_or_default()
    }

    /// Returns the presence options for a namespace.
    pub fn presence_options(&self, namespace: &NamespaceConfig) -> PresenceOptions {
        PresenceOptions {
            ttl: Duration::from_millis(self.presence_timeout_ms),
            announce: namespace.join_leave,
        }
    }

    /// Returns every problem with these settings, or none.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut positive = |name: &str, value: u64| {
            if value == 0 {
                problems.push(format!("relay.{name} must be greater than 0"));
            }
        };
        positive("max_frame_bytes", self.max_frame_bytes as u64);
        positive("max_subscriptions_per_connection", self.max_subscriptions_per_connection as u64);
        positive("outbound_queue_len", self.outbound_queue_len as u64);
        positive("max_connections_per_app", self.max_connections_per_app as u64);
        positive("publish_rate_per_second", self.publish_rate_per_second.into());
        positive("publish_burst", self.publish_burst.into());
        positive("request_rate_per_second", self.request_rate_per_second.into());
        positive("request_burst", self.request_burst.into());
        positive("handshake_timeout_ms", self.handshake_timeout_ms);
        positive("max_pending_handshakes", self.max_pending_handshakes as u64);
        positive("ping_interval_ms", self.ping_interval_ms);
        positive("write_stall_timeout_ms", self.write_stall_timeout_ms);
        positive("presence_timeout_ms", self.presence_timeout_ms);
        positive("max_recover", self.max_recover as u64);
        positive("long_poll_max_wait_ms", self.long_poll_max_wait_ms);
        positive("max_token_ttl_secs", self.max_token_ttl_secs);
        positive("control_resync_secs", self.control_resync_secs);
        positive("usage_flush_secs", self.usage_flush_secs);
        problems.extend(self.mqtt.problems());
        for (name, namespace) in &self.namespaces {
            if namespace.audited {
                problems.push(format!(
                    "relay.namespaces.{name}.audited: audited namespaces are set per app through the management API"
                ));
            }
        }
        if self.usage_flush_secs > 10 {
            problems.push("relay.usage_flush_secs must be at most 10".into());
        }
        if self.max_queued_bytes < self.max_frame_bytes.saturating_mul(4) {
            problems.push("relay.max_queued_bytes must be at least 4 times relay.max_frame_bytes".into());
        }
        if self.idle_timeout_ms <= self.ping_interval_ms {
            problems.push("relay.idle_timeout_ms must be greater than relay.ping_interval_ms".into());
        }
        if self.idempotency_window_secs < 120 {
            problems.push("relay.idempotency_window_secs must be at least 120".into());
        }
        if self.token_leeway_secs > 60 {
            problems.push("relay.token_leeway_secs must be at most 60 (seconds, not minutes)".into());
        }
        for (name, ns) in &self.namespaces {
            if !name.is_empty() && tributary_protocol::ChannelName::parse(name).is_err() || name.contains(':')
            {
                problems.push(format!(
                    "relay.namespaces.{name:?}: a namespace is a channel-name prefix without ':'"
                ));
            }
            if ns.max_message_bytes == 0 || ns.max_message_bytes > self.max_frame_bytes {
                problems.push(format!(
                    "relay.namespaces.{name:?}.max_message_bytes must be between 1 and relay.max_frame_bytes"
                ));
            }
            if ns.history_size > 0 && ns.history_ttl_secs == 0 {
                problems.push(format!("relay.namespaces.{name:?}.history_ttl_secs must be greater than 0"));
            }
        }
        problems
    }
}
