//! Control events: what one node asks of every node, through the engine's control channel (the
//! memory engine delivers them to its own node; the Redis engine to every node). Today:
//! disconnecting a client everywhere. Events of a type this node does not know are ignored,
//! so newer nodes can send events older ones skip.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_protocol::{CloseCode, ErrorCode};

use crate::hub::ControlHandler;
use crate::ops::OpError;
use crate::state::RelayState;

/// One control event, as JSON on the control channel.
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
}

/// Sends an event to every node (this one included).
pub async fn send(state: &RelayState, event: &ControlEvent) -> Result<(), OpError> {
    let bytes = serde_json::to_vec(event).map_err(|e| OpError::new(ErrorCode::Internal, e.to_string()))?;
    state.engine.publish_control(Bytes::from(bytes)).await.map_err(OpError::from)
}

/// Applies the control events this node hears.
pub struct ControlEvents {
    state: Weak<RelayState>,
}

impl ControlEvents {
    /// Handles events for the relay of `state`.
    pub fn new(state: &Arc<RelayState>) -> Self {
        Self { state: Arc::downgrade(state) }
    }
}

impl ControlHandler for ControlEvents {
    fn on_control(&self, event: &Bytes) {
        let Some(state) = self.state.upgrade() else { return };
        match serde_json::from_slice::<ControlEvent>(event) {
            Ok(ControlEvent::Disconnect { app, client_id, reconnect }) => {
                let code = if reconnect { CloseCode::Disconnected } else { CloseCode::Revoked };
                let closed = state.connections.close_client(&app, &client_id, code);
                tracing::debug!(closed, "client disconnected by control event");
            }
            Err(err) => tracing::debug!(error = %err, "ignored a control event this node does not know"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ControlEvent;

    #[test]
    fn events_have_a_stable_json_form() {
        let event =
            ControlEvent::Disconnect { app: "app_1".into(), client_id: "alice".into(), reconnect: false };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(json, r#"{"type":"disconnect","app":"app_1","client_id":"alice","reconnect":false}"#);
        assert_eq!(serde_json::from_str::<ControlEvent>(&json).unwrap(), event);
        assert!(serde_json::from_str::<ControlEvent>(r#"{"type":"from_the_future"}"#).is_err());
    }
}
