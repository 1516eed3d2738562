//! The HTTP API for backends, authenticated with an app's API key (`Authorization: Bearer`).
//!
//! - `POST /v1/channels/{channel}/messages` publishes one message.
//! - `POST /v1/publish` publishes a batch to many channels.
//! - `GET /v1/channels/{channel}/history` reads history.
//! - `GET /v1/channels/{channel}/presence` and `/occupancy` read presence.
//! - `POST /v1/tokens` mints a capability token for a client.
//! - `POST /v1/clients/{client_id}/disconnect` closes a client's connections on every node.
//!
//! Every error body is `{"error":{"code":..,"name":..,"message":..,"temporary":..}}` with the
//! code's HTTP status. Bodies are read as bytes and parsed here, so malformed JSON gets our
//! error codes rather than the framework's plain-text rejections.

mod channels;
mod clients;
mod publish;
mod tokens;

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tributary_protocol::ErrorCode;
use tributary_protocol::frame::server::ErrorBody;

use crate::directory::ApiKeyIdentity;
use crate::ops::OpError;
use crate::policy::AppPolicy;
use crate::state::RelayState;

/// An HTTP API error.
#[derive(Debug)]
pub struct ApiError(pub OpError);

impl From<OpError> for ApiError {
    fn from(err: OpError) -> Self {
        Self(err)
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        Self(code.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: ErrorBody<'a>,
        }
        let status =
            StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response =
            (status, Json(Body { error: ErrorBody::new(self.0.code, &self.0.message) })).into_response();
        if self.0.code == ErrorCode::RateLimited {
            // Rate windows are a second long: the message says how many milliseconds are left.
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

/// Returns the routes of the HTTP API.
pub fn routes() -> Router<Arc<RelayState>> {
    Router::new()
        .route("/v1/channels/{channel}/messages", post(publish::publish_one))
        .route("/v1/publish", post(publish::publish_batch))
        .route("/v1/channels/{channel}/history", get(channels::history))
        .route("/v1/channels/{channel}/presence", get(channels::presence))
        .route("/v1/channels/{channel}/occupancy", get(channels::occupancy))
        .route("/v1/channels/{channel}/receipt", get(channels::receipt))
        .route("/v1/tokens", post(tokens::mint))
        .route("/v1/clients/{client_id}/disconnect", post(clients::disconnect))
}

/// Authenticates the request's API key and checks that its tenant is served.
pub async fn authenticate(state: &RelayState, headers: &HeaderMap) -> Result<ApiKeyIdentity, ApiError> {
    authenticate_with_policy(state, headers).await.map(|(identity, _)| identity)
}

/// Authenticates the request's API key and returns it with its app's policy.
pub(crate) async fn authenticate_with_policy(
    state: &RelayState,
    headers: &HeaderMap,
) -> Result<(ApiKeyIdentity, Arc<AppPolicy>), ApiError> {
    let presented = crate::transport::bearer(headers, None).ok_or(ErrorCode::Unauthorized)?;
    let identity = state.directory.authenticate_api_key(presented).await.map_err(|err| {
        if let crate::directory::DirectoryError::Unavailable(reason) = &err {
            tracing::error!(%reason, "API key lookup failed");
        }
        ApiError::from(err.code())
    })?;
    let policy = state
        .policies
        .get(&*state.directory, &identity.app_id)
        .await
        .map_err(crate::session::unavailable)?
        .ok_or(ErrorCode::InvalidApiKey)?;
    if let Some(refusal) = policy.refusal() {
        return Err(refusal.error_code().into());
    }
    Ok((identity, policy))
}

/// Parses a JSON body, mapping every failure to a precise error code.
pub fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            OpError::new(ErrorCode::FrameTooLarge, "request body is larger than the maximum")
        } else {
            OpError::new(ErrorCode::InvalidFrame, rejection.body_text())
        }
    })?;
    let text = std::str::from_utf8(&body).map_err(|_| ErrorCode::InvalidUtf8)?;
    tributary_protocol::json::from_object(text, "the request body")
        .map_err(|e| ApiError(OpError::new(e.code, e.message)))
}

/// Parses a channel name from the path.
pub fn channel(name: &str) -> Result<tributary_protocol::ChannelName, ApiError> {
    tributary_protocol::ChannelName::parse(name)
        .map_err(|e| ApiError(OpError::new(ErrorCode::InvalidChannel, e.to_string())))
}
