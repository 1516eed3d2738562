//! Tributary's management API: REST under `/v1/tenants`, for operators, tenants' automation
//! and (later) the web console. `docs/management-api.md` documents every route.
//!
//! Every route authenticates a management token ([`auth::Caller`]), scopes by tenant before
//! anything else (another tenant's objects are `not_found`), checks the caller's role, then
//! calls one store method: each change is one transaction that also writes its audit event.
//! Changes the data plane must act on (revocations, key changes, tenant status) are then
//! announced on the engine's control channel, so every relay node reloads the app and closes
//! the connections it no longer admits within a second.
//!
//! It does not own the data plane's HTTP API (`/v1/channels`, `/v1/tokens`, …, in
//! `tributary-relay`), the schema (`tributary-store`) or the server (`tributary`).
#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub mod error;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use bytes::Bytes;
use tributary_engine::Engine;
use tributary_protocol::ControlEvent;
use tributary_store::Store;

pub use error::ApiError;

/// The largest management request body.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The management API's state: the store and the engine whose control channel reaches every
/// relay node.
pub struct ControlPlane {
    store: Store,
    engine: Arc<dyn Engine>,
}

impl ControlPlane {
    /// Creates the API over a store and an engine.
    pub fn new(store: Store, engine: Arc<dyn Engine>) -> Arc<Self> {
        Arc::new(Self { store, engine })
    }

    /// Returns the management routes, to merge with the relay's.
    pub fn router(self: &Arc<Self>) -> Router {
        routes::all().layer(DefaultBodyLimit::max(MAX_BODY_BYTES)).with_state(self.clone())
    }

    /// Tells every relay node about a change that is already stored. A lost event is not an
    /// error for the caller: the nodes' periodic resync picks the change up.
    async fn announce(&self, event: ControlEvent) {
        if let Err(err) = self.engine.publish_control(Bytes::from(event.to_json())).await {
            tracing::warn!(error = %err, ?event, "control event not sent; nodes pick the change up at their next resync");
        }
    }
}
