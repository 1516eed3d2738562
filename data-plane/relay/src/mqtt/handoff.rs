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
    /// That node's generation of the session (see `registry`).
    pub generation: u64,
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

/// Whether a session is copied: only for an engine other nodes share, while it outlives its
/// connection.
fn copied(state: &RelayState, client: &Client) -> bool {
    client.expiry_secs > 0 && state.engine.spans_nodes()
}

/// How far ahead of a copy it took a node starts its own copies' versions: past whatever the
/// node it took the session from may still write before it hears that the session moved (a
/// heartbeat, its goodbye), so those late writes never replace the new node's copies.
const TAKEN_LEAD: u64 = 1 << 20;

/// Writes the copy of `client`'s session, held by this node as `generation`. `online`: its
/// client is connected, so the copy is kept for a while past the session's expiry (it is
/// refreshed at every heartbeat), and QoS 0 subscriptions start live rather than replay what a
/// node that died may have sent already.
pub(super) async fn save(state: &RelayState, app: &str, client: &mut Client, generation: u64, online: bool) {
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
        generation,
        expiry: client.expiry_secs,
        filters,
        awaiting: client.awaiting_release.iter().copied().collect(),
    };
    let mut ttl = Duration::from_secs(client.expiry_secs.into());
    if online {
        ttl += Duration::from_millis(state.config.presence_timeout_ms);
    }
    let version = client.copy_version + 1;
    match put(state, app, &client.session_key, version, &snapshot, ttl).await {
        Some(true) => client.copy_version = version,
        // A node took the session meanwhile: it serves it now, and this copy is stale.
        Some(false) => tracing::debug!("an MQTT session's copy is newer elsewhere; not replaced"),
        None => {}
    }
}

async fn put(
    state: &RelayState,
    app: &str,
    session_key: &str,
    version: u64,
    snapshot: &Snapshot,
    ttl: Duration,
) -> Option<bool> {
    let json = serde_json::to_vec(snapshot).ok()?;
    match state.engine.put(&name(app, session_key), version, Bytes::from(json), ttl).await {
        Ok(stored) => Some(stored),
        Err(err) => {
            tracing::warn!(error = %err, "copying an MQTT session to the engine failed");
            None
        }
    }
}

/// What a CONNECT found in the engine.
pub(super) struct Taken {
    /// The version of the copy taken or last taken (0: none).
    pub version: u64,
    /// The copy, if one was there and readable.
    pub copy: Option<Snapshot>,
}

impl Taken {
    /// The copy, if another node wrote it: the session's latest state is there.
    pub fn foreign(&self, state: &RelayState) -> Option<&Snapshot> {
        self.copy.as_ref().filter(|copy| copy.node != state.mqtt_sessions.node())
    }

    /// The version the session's own copies continue from.
    pub fn next_version(&self, state: &RelayState) -> u64 {
        self.version + if self.foreign(state).is_some() { TAKEN_LEAD } else { 0 }
    }
}

/// Takes the copy of a session out of the engine (nobody else gets it).
pub(super) async fn take(state: &RelayState, app: &str, session_key: &str) -> Taken {
    let none = Taken { version: 0, copy: None };
    if !state.engine.spans_nodes() {
        return none;
    }
    let (version, stored) = match state.engine.take(&name(app, session_key)).await {
        Ok(taken) => taken,
        Err(err) => {
            tracing::warn!(error = %err, "reading an MQTT session's copy failed");
            return none;
        }
    };
    let copy = stored.and_then(|stored| match serde_json::from_slice(&stored) {
        Ok(snapshot) => Some(snapshot),
        Err(err) => {
            tracing::warn!(error = %err, "dropped an unreadable MQTT session copy");
            None
        }
    });
    Taken { version, copy }
}

/// Puts a copy taken by a CONNECT that then failed back where it was, for the client's next try.
pub(super) async fn put_back(state: &RelayState, app: &str, session_key: &str, taken: &Taken) {
    if let Some(copy) = &taken.copy {
        let ttl = Duration::from_secs(copy.expiry.max(1).into());
        put(state, app, session_key, taken.version + 1, copy, ttl).await;
    }
}

/// Drops the copy of a session that ended for good.
pub(super) async fn forget(state: &RelayState, app: &str, client: &Client) {
    if state.engine.spans_nodes() {
        // Taken and dropped unread.
        let _ = state.engine.take(&name(app, &client.session_key)).await;
    }
}

/// Tells the node that held a session this node took (`copy`) to end its own.
pub(super) async fn announce(state: &RelayState, app: &Arc<str>, session_key: &Arc<str>, copy: &Snapshot) {
    let event = crate::control::ControlEvent::MqttSessionMoved {
        app: app.to_string(),
        session: session_key.to_string(),
        node: copy.node.clone(),
        generation: copy.generation,
    };
    if let Err(err) = crate::control::send(state, &event).await {
        tracing::warn!(error = %err.message, "announcing a moved MQTT session failed");
    }
}

/// The engine's name of a session's will handed over by a node that shut down.
fn will_name(app: &str, session_key: &str) -> String {
    format!("mqtt-will/{app}/{session_key}")
}

/// A will handed over: the client id it is published as, and the will as an MQTT 5 PUBLISH.
#[derive(Serialize, Deserialize)]
struct PendingWill {
    client: String,
    /// The PUBLISH packet, base64.
    publish: String,
}

/// Stores a will still waiting for its delay, as this node shuts down, for the other nodes to
/// publish (see [`announce_will`]) unless its client comes back first: its CONNECT, on any
/// node, takes the will away. Stored before the client is told goodbye, so a client that
/// reconnects at once finds it. Returns whether it was stored.
pub(super) async fn store_will(
    state: &RelayState,
    app: &str,
    session_key: &str,
    client_id: &str,
    will: &tributary_mqtt::LastWill,
    delay: Duration,
) -> bool {
    use base64::Engine as _;
    if !state.engine.spans_nodes() {
        return false;
    }
    let mut properties = will.properties.clone();
    properties.will_delay = None;
    let publish = tributary_mqtt::Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic.clone(),
        packet_id: (will.qos != QoS::AtMostOnce).then_some(1),
        properties,
        payload: will.payload.clone(),
    };
    let packet =
        tributary_mqtt::encode(&tributary_mqtt::Packet::Publish(publish), tributary_mqtt::Version::V5);
    let pending = PendingWill {
        client: client_id.to_owned(),
        publish: base64::engine::general_purpose::STANDARD.encode(packet),
    };
    let Ok(json) = serde_json::to_vec(&pending) else { return false };
    // Versions of wills only need to grow: the time does.
    let version = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let ttl = delay + Duration::from_secs(60);
    match state.engine.put(&will_name(app, session_key), version, Bytes::from(json), ttl).await {
        Ok(stored) => stored,
        Err(err) => {
            tracing::warn!(error = %err, "handing over a delayed will failed; publishing it now");
            false
        }
    }
}

/// What became of a stored will announced to the other nodes.
pub(super) enum Announced {
    /// Another node heard it: one of them publishes it after its delay.
    Heard,
    /// No other node heard it (this one is the last, or the announcement failed), so it was
    /// taken back: to be published now (`None`: a CONNECT of its client took it first).
    TakenBack(Option<Box<(Arc<str>, tributary_mqtt::Publish)>>),
    /// No other node heard it, and reading it back failed.
    Unknown,
}

/// Tells the other nodes that the will of `session_key` is stored and waits `delay` more.
pub(super) async fn announce_will(
    state: &RelayState,
    app: &str,
    session_key: &str,
    delay: Duration,
) -> Announced {
    let event = crate::control::ControlEvent::MqttWillPending {
        app: app.to_owned(),
        session: session_key.to_owned(),
        node: state.mqtt_sessions.node().to_owned(),
        delay_ms: delay.as_millis() as u64,
    };
    match crate::control::send(state, &event).await {
        Ok(reached) if reached > 1 => return Announced::Heard,
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err.message, "announcing a delayed will failed"),
    }
    match take_will(state, app, session_key).await {
        Ok(taken) => Announced::TakenBack(taken.map(Box::new)),
        Err(()) => Announced::Unknown,
    }
}

/// Takes a handed-over will away (its client came back, or its delay passed): the client id
/// and the will's PUBLISH, if it was still there; `Err` if the engine could not say.
pub(super) async fn take_will(
    state: &RelayState,
    app: &str,
    session_key: &str,
) -> Result<Option<(Arc<str>, tributary_mqtt::Publish)>, ()> {
    use base64::Engine as _;
    if !state.engine.spans_nodes() {
        return Ok(None);
    }
    let stored = match state.engine.take(&will_name(app, session_key)).await {
        Ok((_, Some(stored))) => stored,
        Ok((_, None)) => return Ok(None),
        Err(err) => {
            tracing::warn!(error = %err, "reading a handed-over will failed");
            return Err(());
        }
    };
    let decoded = serde_json::from_slice::<PendingWill>(&stored).ok().and_then(|pending| {
        let packet = base64::engine::general_purpose::STANDARD.decode(pending.publish).ok()?;
        match tributary_mqtt::decode(&packet, Some(tributary_mqtt::Version::V5), usize::MAX) {
            Ok(Some((tributary_mqtt::Packet::Publish(publish), _))) => {
                Some((Arc::from(pending.client), publish))
            }
            _ => None,
        }
    });
    if decoded.is_none() {
        tracing::warn!("dropped an unreadable handed-over will");
        return Err(());
    }
    Ok(decoded)
}
