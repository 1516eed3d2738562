//! The HTTP API of texts (SMS): a backend sends one with the app's API key (`POST /v1/sms`),
//! reads how far it got (`GET /v1/sms/{id}`, `GET /v1/sms`), and Twilio reports its progress
//! to `POST /v1/sms/status/{app}/{id}`, a callback verified by `X-Twilio-Signature`.
//!
//! A text is checked before anything is queued (an E.164 recipient, a body Twilio takes, the
//! app's Twilio credentials, the tenant's SMS quota and rate), then recorded, charged to the
//! quota and queued in one transaction: it is either all done or not at all. The delivery
//! workers send it (at least once, retried, dead-lettered).

mod send;
mod status;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tributary_protocol::ErrorCode;
use tributary_relay::ApiKeyIdentity;
use tributary_relay::http_api::ApiError;
use tributary_relay::ops::OpError;
use tributary_relay::state::RelayState;
use tributary_store::{SmsRecord, Store};

use crate::push_api::{invalid, stored};

/// What the SMS routes need: the relay (to authenticate API keys), the store, and the URL base
/// Twilio's callbacks are signed with (what the workers give Twilio).
#[derive(Clone)]
pub struct SmsApi {
    relay: Arc<RelayState>,
    store: Store,
    callback_base: Arc<str>,
}

impl SmsApi {
    /// The SMS API of `relay`'s apps; Twilio's callbacks arrive under `callback_base`.
    pub fn new(relay: Arc<RelayState>, store: Store, callback_base: &str) -> Self {
        Self { relay, store, callback_base: Arc::from(callback_base.trim_end_matches('/')) }
    }

    /// Its routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/sms", post(send::send).get(send::list))
            .route("/v1/sms/{sms_id}", get(send::read))
            .route("/v1/sms/status/{app_id}/{sms_id}", post(status::callback))
            .with_state(self)
    }
}

/// Authenticates the app's API key; a key with capabilities needs `mint_tokens` (a text is
/// the app's, not a channel's).
async fn backend(api: &SmsApi, headers: &HeaderMap) -> Result<ApiKeyIdentity, ApiError> {
    let identity = tributary_relay::http_api::authenticate(&api.relay, headers).await?;
    if identity.permissions.as_ref().is_some_and(|p| !p.mint_tokens) {
        return Err(ApiError(OpError::new(
            ErrorCode::Forbidden,
            "a restricted API key needs mint_tokens to send or read texts",
        )));
    }
    Ok(identity)
}

/// A text as the API shows it.
fn view(sms: &SmsRecord) -> Value {
    json!({
        "sms_id": sms.id,
        "to": sms.to,
        "segments": sms.segments,
        "origin": sms.origin,
        "status": sms.status,
        "sid": sms.sid,
        "error_code": sms.error_code,
        "created_ms": sms.created_ms,
        "updated_ms": sms.updated_ms,
    })
}
