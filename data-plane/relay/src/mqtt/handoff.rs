//! Persistent sessions that move between nodes.
//!
//! A session lives on the node its client connected to. With an engine that spans nodes
//! (Redis), that node also keeps a copy of what another node needs to rebuild it — its
//! subscriptions, each channel's position (before anything sent and not yet acknowledged) and
//! the QoS 2 ids waiting for their release — in the engine, refreshed at every subscription
//! change and presence heartbeat, and written exactly when the client goes away or the node
//! shuts down. A client that comes back to another node (a load balancer's choice, a rolling
//! restart, a node that died) finds the copy there: its channel subscriptions recover from
//! history where it was, and the node that held the session is told to drop its own.
//!
//! What does not move: messages sent and unacknowledged come again as new PUBLISH packets (a
//! QoS 2 one may arrive twice), and wildcard subscriptions, live only, miss what was published
//! while the client was away.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_mqtt::{QoS, Subscription};
use tributary_protocol::StreamPosition;

use super::client::Client;
use crate::state::RelayState;

/// What another node rebuilds a session from.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Snapshot {
    /// The node that wrote it.
    pub node: String,
    /// The session's expiry, in seconds.
    pub expiry: u32,
    pub filters: Vec<StoredFilter>,
    /// QoS 2 publishes of the client whose PUBREL has not come yet.
    #[serde(default)]
    pub awaiting: Vec<u16>,
}

/// One subscription of a [`Snapshot`].
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StoredFilter {
    /// As the client wrote it (`$share/...` included).
    pub text: String,
    pub qos: u8,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    #[serde(default)]
    pub id: Option<u32>,
    /// For a channel: the epoch and offset it recovers after.
    #[serde(default)]
    pub position: Option<(String, u64)>,
}

impl StoredFilter {
    /// The subscription as a SUBSCRIBE would have asked for it.
    pub fn subscription(&self) -> Subscription {
        Subscription {
            filter: self.text.clone(),
            qos: match self.qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            retain_handling: 2,
        }
    }

    /// Where its channel recovers from.
    pub fn recover_from(&self) -> Option<StreamPosition> {
        self.position.as_ref().map(|(epoch, offset)| StreamPosition { epoch: epoch.clone(), offset: *offset })
    }
}

/// The engine's name of a session's copy.
fn name(app: &str, session_key: &str) -> String {
    format!("mqtt-session/{app}/{session_key}")
}

/// Whether sessions are copied at all: only an engine other nodes share is worth it.
fn copied(state: &RelayState, client: &Client) -> bool {
    client.expiry_secs > 0 && state.engine.spans_nodes()
}

/// Writes the copy of `client`'s session. `online`: its client is connected, so the copy is
/// kept for a while past the session's expiry (it is refreshed at every heartbeat), and QoS 0
/// subscriptions start live rather than replay what a crashed node may have sent already.
pub(super) async fn save(state: &RelayState, app: &str, client: &Client, online: bool) {
    if !copied(state, client) {
        return;
    }
    let filters = client
        .filters
        .iter()
        .map(|filter| {
            let position = filter.exact().and_then(|channel| {
                if online && filter.qos == QoS::AtMostOnce {
                    return None;
                }
                client.unacknowledged_from(channel).or_else(|| filter.position.clone())
            });
            StoredFilter {
                text: filter.text.to_string(),
                qos: filter.qos as u8,
                no_local: filter.no_local,
                retain_as_published: filter.retain_as_published,
                id: filter.id,
                position: position.map(|(epoch, offset)| (epoch.to_string(), offset)),
            }
        })
        .collect();
    let snapshot = Snapshot {
        node: state.mqtt_sessions.node().to_owned(),
        expiry: client.expiry_secs,
        filters,
        awaiting: client.awaiting_release.iter().copied().collect(),
    };
    let Ok(json) = serde_json::to_vec(&snapshot) else { return };
    let mut ttl = Duration::from_secs(client.expiry_secs.into());
    if online {
        ttl += Duration::from_millis(state.config.presence_timeout_ms);
    }
    if let Err(err) = state.engine.put(&name(app, &client.session_key), Bytes::from(json), ttl).await {
        tracing::warn!(error = %err, "copying an MQTT session to the engine failed");
    }
}

/// Takes the copy of a session out of the engine (nobody else gets it): `None` if there is
/// none, or it cannot be read.
pub(super) async fn take(state: &RelayState, app: &str, session_key: &str) -> Option<Snapshot> {
    if !state.engine.spans_nodes() {
        return None;
    }
    let stored = match state.engine.take(&name(app, session_key)).await {
        Ok(stored) => stored?,
        Err(err) => {
            tracing::warn!(error = %err, "reading an MQTT session's copy failed");
            return None;
        }
    };
    match serde_json::from_slice(&stored) {
        Ok(snapshot) => Some(snapshot),
        Err(err) => {
            tracing::warn!(error = %err, "dropped an unreadable MQTT session copy");
            None
        }
    }
}

/// Drops the copy of a session that ended for good.
pub(super) async fn forget(state: &RelayState, app: &str, client: &Client) {
    if copied(state, client) {
        let _ = take(state, app, &client.session_key).await;
    }
}

/// Tells the other nodes that this node serves the session now: the one that held it drops
/// its own.
pub(super) async fn announce(state: &RelayState, app: &Arc<str>, session_key: &Arc<str>) {
    let event = crate::control::ControlEvent::MqttSessionMoved {
        app: app.to_string(),
        session: session_key.to_string(),
        node: state.mqtt_sessions.node().to_owned(),
    };
    if let Err(err) = crate::control::send(state, &event).await {
        tracing::warn!(error = %err.message, "announcing a moved MQTT session failed");
    }
}
