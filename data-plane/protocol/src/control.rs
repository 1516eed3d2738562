//! Control events: what one node (or the control plane) asks of every relay node, as JSON on
//! the engine's control channel.
//!
//! Events carry no secrets and no state that must not be lost: a change is written to the
//! store first, and the event only says "look again now". A node that misses an event (its
//! engine connection dropped) catches up at its next periodic resync. Events of a type a node
//! does not know fail to parse and are ignored, so newer nodes can send events older ones skip.

use serde::{Deserialize, Serialize};

/// One control event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlEvent {
    /// Close every connection of a client of an app.
    Disconnect {
        /// The app.
        app: String,
        /// The client id (the tokens' subject).
        client_id: String,
        /// Whether the client may come back at once (close 3007) or was cut off (close 3504).
        reconnect: bool,
    },
    /// Something an app's connections depend on changed (a signing key, an API key, a
    /// revocation): reload the app and close the connections it no longer admits.
    AppChanged {
        /// The app.
        app: String,
    },
    /// A tenant changed (its status, a tenant-wide revocation): reload every app of it.
    TenantChanged {
        /// The tenant.
        tenant: String,
    },
    /// An MQTT client's persistent session moved to another node: `node`, which held it as
    /// `generation` (its own count), ends that session (parked, or with a connection that did
    /// not go away), unless a newer connection of the client id came to it since.
    MqttSessionMoved {
        /// The app.
        app: String,
        /// The session's key (the client id).
        session: String,
        /// The node that held it.
        node: String,
        /// The node's generation of the session.
        generation: u64,
    },
    /// A node shut down while an MQTT client's will waited for its delay: the will is stored
    /// in the engine, and after `delay_ms` one of the other nodes publishes it, unless the
    /// client came back (its CONNECT took the will away).
    MqttWillPending {
        /// The app.
        app: String,
        /// The session's key (the client id).
        session: String,
        /// The node that shut down.
        node: String,
        /// How long the will still waits.
        delay_ms: u64,
    },
}

impl ControlEvent {
    /// Returns the event as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Every field is a string, a bool or a number: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::ControlEvent;

    #[test]
    fn events_have_a_stable_json_form() {
        let cases = [
            (
                ControlEvent::Disconnect { app: "app_1".into(), client_id: "alice".into(), reconnect: false },
                r#"{"type":"disconnect","app":"app_1","client_id":"alice","reconnect":false}"#,
            ),
            (ControlEvent::AppChanged { app: "app_1".into() }, r#"{"type":"app_changed","app":"app_1"}"#),
            (
                ControlEvent::TenantChanged { tenant: "ten_1".into() },
                r#"{"type":"tenant_changed","tenant":"ten_1"}"#,
            ),
            (
                ControlEvent::MqttSessionMoved {
                    app: "app_1".into(),
                    session: "meter-7".into(),
                    node: "n2".into(),
                    generation: 7,
                },
                r#"{"type":"mqtt_session_moved","app":"app_1","session":"meter-7","node":"n2","generation":7}"#,
            ),
            (
                ControlEvent::MqttWillPending {
                    app: "app_1".into(),
                    session: "gw-3".into(),
                    node: "n1".into(),
                    delay_ms: 900,
                },
                r#"{"type":"mqtt_will_pending","app":"app_1","session":"gw-3","node":"n1","delay_ms":900}"#,
            ),
        ];
        for (event, json) in cases {
            assert_eq!(String::from_utf8(event.to_json()).unwrap(), json);
            assert_eq!(serde_json::from_str::<ControlEvent>(json).unwrap(), event);
        }
        assert!(serde_json::from_str::<ControlEvent>(r#"{"type":"from_the_future"}"#).is_err());
    }
}
