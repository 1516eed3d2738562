//! The HTTP API of push: devices register (an APNs or FCM token, or a browser's Web Push
//! subscription) and subscribe to channels' pushes; backends push directly to a device, a
//! client or a channel's subscribers.
//!
//! Two kinds of caller: a backend with the app's API key (every device of the app; a key with
//! capabilities needs `mint_tokens`, and `push_subscribe` on a channel to subscribe to it), and a
//! device itself with a client token carrying `push_subscribe` (only its own client's devices,
//! only channels its grants cover). Errors are the HTTP API's (`{"error": {...}}`).

mod devices;
mod publish;

pub use publish::PublishedPushes;
mod subscriptions;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use tributary_capability::{Capabilities, Right};
use tributary_delivery::address::AddressPolicy;
use tributary_protocol::{ChannelName, ErrorCode};
use tributary_relay::ApiKeyIdentity;
use tributary_relay::http_api::ApiError;
use tributary_relay::ops::OpError;
use tributary_relay::state::RelayState;
use tributary_store::{Store, StoreError};

/// What the push routes need: the relay (to authenticate), the store, and the address policy a
/// Web Push endpoint must pass (it is where the workers will send).
#[derive(Clone)]
pub struct PushApi {
    relay: Arc<RelayState>,
    store: Store,
    addresses: Arc<AddressPolicy>,
}

impl PushApi {
    /// The push API of `relay`'s apps, stored in `store`.
    pub fn new(relay: Arc<RelayState>, store: Store, addresses: AddressPolicy) -> Self {
        Self { relay, store, addresses: Arc::new(addresses) }
    }

    /// Its routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/push/devices", post(devices::register).get(devices::list))
            .route("/v1/push/devices/{device_id}", get(devices::read).delete(devices::remove))
            .route("/v1/push/publish", post(publish::publish))
            .route("/v1/push/web-key", get(web_key))
            .route(
                "/v1/push/channels/{channel}/subscriptions",
                post(subscriptions::subscribe).get(subscriptions::list).delete(subscriptions::unsubscribe),
            )
            .with_state(self)
    }
}

/// Who is asking.
enum Caller {
    /// A backend, with an API key (its app, tenant and permissions).
    Backend(ApiKeyIdentity),
    /// A device, with a client token.
    Client {
        /// The token's app and tenant.
        app_id: String,
        tenant_id: String,
        /// The token's client id: the only client whose devices it may touch.
        client_id: String,
        /// The token's grants.
        grants: Capabilities,
    },
}

impl Caller {
    fn app(&self) -> (&str, &str) {
        match self {
            Caller::Backend(key) => (&key.tenant_id, &key.app_id),
            Caller::Client { tenant_id, app_id, .. } => (tenant_id, app_id),
        }
    }

    /// The client id a client token is limited to (`None` for a backend).
    fn own_client(&self) -> Option<&str> {
        match self {
            Caller::Backend(_) => None,
            Caller::Client { client_id, .. } => Some(client_id),
        }
    }

    /// Whether the caller may subscribe to `channel`'s pushes.
    fn allow_channel(&self, channel: &ChannelName) -> Result<(), ApiError> {
        match self {
            Caller::Backend(key) => Ok(key.allow(channel, Right::PushSubscribe)?),
            Caller::Client { grants, .. } if grants.allows(channel, Right::PushSubscribe) => Ok(()),
            Caller::Client { .. } => Err(forbidden(format!("push_subscribe is not granted on {channel}"))),
        }
    }

    /// Only backends list the app's devices and subscriptions.
    fn backend_only(&self) -> Result<(), ApiError> {
        match self {
            Caller::Backend(_) => Ok(()),
            Caller::Client { .. } => Err(forbidden("this needs the app's API key".into())),
        }
    }
}

/// `GET /v1/push/web-key` (a client token with `push_subscribe`, or the API key): the app's
/// VAPID public key, the `applicationServerKey` a page subscribes with; 409 `not_configured`
/// without Web Push credentials.
async fn web_key(
    axum::extract::State(api): axum::extract::State<PushApi>,
    headers: HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let caller = caller(&api, &headers).await?;
    let (tenant_id, app_id) = caller.app();
    let all = api.store.push_credentials(tenant_id, app_id).await.map_err(stored)?;
    let key = all
        .iter()
        .find(|c| c.service == tributary_store::PushService::WebPush && c.disabled_reason.is_none())
        .and_then(|c| serde_json::from_str::<serde_json::Value>(&c.settings).ok())
        .and_then(|settings| settings["public_key"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            ApiError(OpError::new(ErrorCode::NotConfigured, "the app has no Web Push credentials"))
        })?;
    Ok(axum::Json(serde_json::json!({"public_key": key})))
}

fn forbidden(message: String) -> ApiError {
    ApiError(OpError::new(ErrorCode::Forbidden, message))
}

/// A 400 `invalid_parameter` with `message`.
pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError(OpError::new(ErrorCode::InvalidParameter, message.into()))
}

/// A store error as the HTTP API says it (a database failure is `unavailable`, never its
/// details).
pub(crate) fn stored(err: StoreError) -> ApiError {
    match err {
        StoreError::NotFound(what) => {
            ApiError(OpError::new(ErrorCode::NotFound, format!("{what} not found")))
        }
        StoreError::Database(_) => {
            tracing::error!(error = %err, "push and SMS API: the store failed");
            ApiError::from(ErrorCode::Unavailable)
        }
        other => ApiError::from(other.code()),
    }
}

/// Authenticates an API key (`trb_…`) or a client token, and checks what each may do here.
async fn caller(api: &PushApi, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let presented = tributary_relay::transport::bearer(headers, None).ok_or(ErrorCode::Unauthorized)?;
    if presented.starts_with("trb_") {
        let identity = tributary_relay::http_api::authenticate(&api.relay, headers).await?;
        // The registry is the key's app's as a whole: a restricted key needs `mint_tokens`.
        identity.allow_minting(&[])?;
        return Ok(Caller::Backend(identity));
    }
    let (token, _, policy) = tributary_relay::session::authenticate(&api.relay, presented).await?;
    if let Some(refusal) = policy.refusal() {
        return Err(refusal.error_code().into());
    }
    if !token.capabilities.grants().iter().any(|grant| grant.rights.contains(Right::PushSubscribe)) {
        return Err(forbidden("the token has no push_subscribe right".into()));
    }
    Ok(Caller::Client {
        app_id: token.app_id.clone(),
        tenant_id: policy.tenant_id.to_string(),
        client_id: token.client_id.to_string(),
        grants: token.capabilities.clone(),
    })
}
