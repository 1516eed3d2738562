//! Control events: what one node (or the control plane) asks of every node, through the
//! engine's control channel (the memory engine delivers them to its own node; the Redis engine
//! to every node). The event type lives in `tributary_protocol::control`.
//!
//! - `disconnect` closes a client's connections.
//! - `mqtt_session_moved` ends a node's copy of an MQTT session another node serves now.
//! - `mqtt_will_pending` has the other nodes publish a delayed will a node that shut down
//!   handed over, unless its client comes back first.
//! - `app_changed` and `tenant_changed` reload the apps' policies from the directory and close
//!   the connections they no longer admit (revoked tokens, keys, suspended tenants).
//!
//! Events only say "look again"; the store holds the change. A node that missed an event (its
//! engine connection dropped) catches up at the periodic resync, every
//! `relay.control_resync_secs`, which reloads every app it has cached.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tributary_protocol::CloseCode;
pub use tributary_protocol::ControlEvent;

use crate::hub::ControlHandler;
use crate::ops::OpError;
use crate::state::RelayState;

/// Sends an event to every node (this one included); returns how many nodes it reached.
pub async fn send(state: &RelayState, event: &ControlEvent) -> Result<usize, OpError> {
    state.engine.publish_control(Bytes::from(event.to_json())).await.map_err(OpError::from)
}

/// Applies a change of an app or a tenant on this node and returns once it is in force: the
/// policies reloaded and the connections they no longer admit closed. The management API calls
/// it before answering, so the node that answered never lags behind the others. The node hears
/// the event again from the engine and reloads once more, which finds nothing new to close.
/// Other events are left to the engine's delivery: a disconnect applied twice could close a
/// client that reconnected in between.
pub async fn apply(state: &RelayState, event: &ControlEvent) {
    match event {
        ControlEvent::AppChanged { app } => {
            reload_apps(state, vec![app.as_str().into()], RELOAD_TRIES).await;
        }
        ControlEvent::TenantChanged { tenant } => {
            reload_apps(state, state.policies.apps(Some(tenant)), RELOAD_TRIES).await;
        }
        ControlEvent::Disconnect { .. }
        | ControlEvent::MqttSessionMoved { .. }
        | ControlEvent::MqttWillPending { .. } => {}
    }
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
                if !reconnect {
                    // A revoked MQTT client's parked session is not waited for either.
                    tokio::spawn(async move { crate::mqtt::end_client(&state, &app, &client_id).await });
                }
            }
            Ok(ControlEvent::AppChanged { app }) => {
                tokio::spawn(async move { reload_apps(&state, vec![app.into()], RELOAD_TRIES).await });
            }
            Ok(ControlEvent::TenantChanged { tenant }) => {
                // Apps this node has not loaded have no connections here; they are read fresh
                // when first used.
                let apps = state.policies.apps(Some(&tenant));
                tokio::spawn(async move { reload_apps(&state, apps, RELOAD_TRIES).await });
            }
            Ok(ControlEvent::MqttSessionMoved { app, session, node, generation }) => {
                if node == state.mqtt_sessions.node() {
                    tokio::spawn(async move {
                        crate::mqtt::session_moved(&state, &app, &session, generation).await;
                    });
                }
            }
            Ok(ControlEvent::MqttWillPending { app, session, node, delay_ms }) => {
                if node != state.mqtt_sessions.node() {
                    // Tracked: a node that shuts down first passes it on before it stops.
                    let tasks = state.tasks.clone();
                    tasks.spawn(
                        async move { crate::mqtt::will_pending(&state, &app, &session, delay_ms).await },
                    );
                }
            }
            Err(err) => tracing::debug!(error = %err, "ignored a control event this node does not know"),
        }
    }
}

/// How often a reload that failed (database unreachable) is tried again before it is left to
/// the periodic resync, and the pause between tries.
const RELOAD_TRIES: u32 = 5;
const RELOAD_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Reloads the policies of `apps` (each tried up to `tries` times) and closes the connections
/// they no longer admit; returns how many connections were closed. A failed reload keeps the
/// cached policy.
pub async fn reload_apps(state: &RelayState, apps: Vec<Arc<str>>, tries: u32) -> usize {
    let mut closed = 0;
    for app in apps {
        for attempt in 1..=tries {
            match reload_app(state, &app).await {
                Ok(n) => {
                    closed += n;
                    break;
                }
                Err(err) if attempt >= tries => {
                    tracing::warn!(%app, error = %err, "app reload failed; serving from the cache until the next resync");
                }
                Err(_) => tokio::time::sleep(RELOAD_RETRY_PAUSE).await,
            }
        }
    }
    if closed > 0 {
        tracing::info!(closed, "connections closed after an app change");
    }
    closed
}

/// Reloads one app's policy and closes the connections it no longer admits.
async fn reload_app(state: &RelayState, app: &Arc<str>) -> Result<usize, crate::DirectoryError> {
    let before = state.policies.peek(app);
    let policy = state.policies.reload(&*state.directory, app).await?;
    // Only once the store answered: while it is down, cached API keys keep working.
    state.directory.forget_app(app);
    let closed = state.connections.close_unadmitted(app, policy.as_deref())
        + crate::exchange::close_changed_routes(state, app, before.as_deref(), policy.as_deref());
    Ok(closed + crate::mqtt::end_unadmitted(state, app, policy.as_deref()).await)
}

/// Reloads every cached app once; stops at the first failure (the store is down: every other
/// app would wait for it too) and keeps serving from the cache.
async fn resync(state: &RelayState) {
    state.directory.resync().await;
    let mut closed = 0;
    for app in state.policies.apps(None) {
        match reload_app(state, &app).await {
            Ok(n) => closed += n,
            Err(err) => {
                tracing::warn!(error = %err, "resync stopped: the directory is unavailable; serving from the cache");
                break;
            }
        }
    }
    if closed > 0 {
        tracing::info!(closed, "connections closed by the periodic resync");
    }
}

/// Starts the periodic resync: every `relay.control_resync_secs`, every cached app is reloaded
/// (and its connections checked again) and the directory checks its own caches. Ends with the
/// relay.
pub fn spawn_resync(state: &Arc<RelayState>) {
    let weak = Arc::downgrade(state);
    let period = Duration::from_secs(state.config.control_resync_secs);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let Some(state) = weak.upgrade() else { return };
            resync(&state).await;
        }
    });
}
