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
pub mod graphql;
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
/// relay node, the relay of this node, and its settings.
pub struct ControlPlane {
    store: Store,
    engine: Arc<dyn Engine>,
    node: Option<Arc<dyn LocalNode>>,
    settings: ControlSettings,
    graphql: graphql::ManagementSchema,
}

/// The relay running in this process, when there is one. A change is in force on it before the
/// request that made it is answered (read-your-writes: a token signed with a key just created is
/// accepted, one of a bumped generation refused); the other nodes follow within a second.
#[async_trait::async_trait]
pub trait LocalNode: Send + Sync {
    /// Applies the event on this node and returns once it is in force.
    async fn apply(&self, event: &ControlEvent);
}

/// Settings of the console's accounts (the `[control]` section of the configuration).
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Whether anyone may sign a company up (`POST /v1/auth/signup`); off on a self-hosted
    /// install unless its operator wants it.
    pub allow_signup: bool,
    /// The plan of a company that signs up.
    pub signup_plan: String,
    /// How long a console session lasts, in seconds.
    pub session_ttl_secs: i64,
    /// Whether session cookies carry `Secure` (sent over HTTPS only); turn off only for local
    /// development over plain HTTP.
    pub secure_cookies: bool,
    /// Which webhook endpoint URLs may be registered (the `[delivery]` section's address rules;
    /// the worker checks the addresses again when it connects).
    pub webhook_policy: tributary_delivery::address::AddressPolicy,
    /// The Stripe webhook endpoint's signing secret; `None`: billing is off.
    pub stripe_webhook_secret: Option<secrecy::SecretString>,
    /// How far a Stripe webhook's signed timestamp may be from now, in seconds.
    pub stripe_tolerance_secs: i64,
    /// The plan each Stripe price puts a subscriber on (the operator's mapping).
    pub stripe_plans: std::collections::HashMap<String, String>,
    /// Billing's grace period, in seconds (shown as when a past-due tenant is cut off).
    pub billing_grace_secs: i64,
}

impl Default for ControlSettings {
    fn default() -> Self {
        Self {
            allow_signup: false,
            signup_plan: "free".to_owned(),
            session_ttl_secs: 7 * 24 * 3600,
            secure_cookies: true,
            webhook_policy: tributary_delivery::address::AddressPolicy::new(),
            stripe_webhook_secret: None,
            stripe_tolerance_secs: 300,
            stripe_plans: std::collections::HashMap::new(),
            billing_grace_secs: 7 * 24 * 3600,
        }
    }
}

/// Every management route as `(method, path)` (paths in axum's `{param}` form): the list the
/// router is built from, for the tests that keep the OpenAPI file and the docs in step.
pub fn routes_list() -> Vec<(axum::http::Method, String)> {
    routes::list()
}

impl ControlPlane {
    /// Creates the API over a store and an engine, with default settings.
    pub fn new(store: Store, engine: Arc<dyn Engine>) -> Arc<Self> {
        Self::with_settings(store, engine, ControlSettings::default())
    }

    /// Creates the API with `settings`.
    pub fn with_settings(store: Store, engine: Arc<dyn Engine>, settings: ControlSettings) -> Arc<Self> {
        Arc::new(Self { store, engine, node: None, settings, graphql: graphql::schema() })
    }

    /// Creates the API of a node that also runs a relay, which applies every change before it
    /// is answered.
    pub fn on_node(
        store: Store,
        engine: Arc<dyn Engine>,
        settings: ControlSettings,
        node: Arc<dyn LocalNode>,
    ) -> Arc<Self> {
        Arc::new(Self { store, engine, node: Some(node), settings, graphql: graphql::schema() })
    }

    /// Returns the management routes, to merge with the relay's.
    pub fn router(self: &Arc<Self>) -> Router {
        routes::all().layer(DefaultBodyLimit::max(MAX_BODY_BYTES)).with_state(self.clone())
    }

    /// Applies a change that is already stored on this node's relay, then tells every other
    /// relay node. A lost event is not an error for the caller: the nodes' periodic resync picks
    /// the change up.
    async fn announce(&self, event: ControlEvent) {
        if let Some(node) = &self.node {
            node.apply(&event).await;
        }
        if let Err(err) = self.engine.publish_control(Bytes::from(event.to_json())).await {
            tracing::warn!(error = %err, ?event, "control event not sent; nodes pick the change up at their next resync");
        }
    }
}
