//! The relay as an HTTP service: its router and its shutdown.

use std::sync::{Arc, Weak};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tributary_engine::{Engine, EngineSink};
use tributary_protocol::{CloseCode, ErrorCode};

use crate::config::RelayConfig;
use crate::conn::Connections;
use crate::directory::AppDirectory;
use crate::http_api::{self, ApiError};
use crate::hub::Hub;
use crate::state::RelayState;
use crate::transport::{echo, long_poll, sse, websocket};

/// A relay: build it, mount [`Relay::router`] on a listener, call [`Relay::shutdown`] to stop.
pub struct Relay {
    state: Arc<RelayState>,
}

impl Relay {
    /// Creates a relay on `engine`, wiring the engine's deliveries to a new hub.
    pub fn new(config: RelayConfig, engine: Arc<dyn Engine>, directory: Arc<dyn AppDirectory>) -> Self {
        let usage = Arc::new(crate::usage::Usage::default());
        let hub = Arc::new(Hub::new(config.outbound_queue_len, usage.clone()));
        let sink: Arc<dyn EngineSink> = hub.clone();
        let weak: Weak<dyn EngineSink> = Arc::downgrade(&sink);
        engine.set_sink(weak);
        let state = RelayState {
            config,
            engine,
            hub,
            directory,
            policies: crate::policy::Policies::new(usage.payers.clone()),
            connections: Connections::default(),
            mqtt_sessions: Default::default(),
            usage,
            quotas: Default::default(),
            shutdown: CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            push: std::sync::OnceLock::new(),
            receipts: std::sync::OnceLock::new(),
        };
        let state = Arc::new(state);
        state.hub.set_control_handler(Arc::new(crate::control::ControlEvents::new(&state)));
        crate::control::spawn_resync(&state);
        crate::usage::spawn_metering(&state);
        crate::quota::spawn_sync(&state);
        Self { state }
    }

    /// Returns the relay's routes: `/v1/connect` (WebSocket), `/v1/sse`, `/v1/poll`, the HTTP
    /// API and `/healthz`.
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        if self.state.config.diagnostic_echo {
            router = router.route("/v1/diagnostics/echo", get(echo::upgrade));
        }
        router
            .route("/v1/connect", get(websocket::upgrade))
            .route("/v1/sse", get(sse::stream))
            .route("/v1/poll", get(long_poll::poll))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .merge(http_api::routes())
            .fallback(|| async { ApiError::from(ErrorCode::NotFound) })
            .layer(DefaultBodyLimit::max(self.state.config.max_frame_bytes))
            .with_state(self.state.clone())
    }

    /// Returns the shared state (for tests and metrics).
    pub fn state(&self) -> &Arc<RelayState> {
        &self.state
    }

    /// Closes every connection with "server shutting down" (clients reconnect elsewhere).
    pub fn shutdown(&self) {
        self.state.shutdown.cancel();
        self.state.connections.close_all(CloseCode::Shutdown);
    }
}

/// `GET /readyz`: 200 while the node can serve (not draining, engine reachable), else 503.
async fn ready(
    axum::extract::State(state): axum::extract::State<Arc<RelayState>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.shutdown.is_cancelled() {
        return ApiError::from(crate::ops::OpError::new(ErrorCode::Unavailable, "shutting down"))
            .into_response();
    }
    match state.engine.ready().await {
        Ok(()) => "ready".into_response(),
        Err(err) => {
            ApiError::from(crate::ops::OpError::new(ErrorCode::Unavailable, err.to_string())).into_response()
        }
    }
}
