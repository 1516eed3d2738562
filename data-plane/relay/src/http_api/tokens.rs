//! Minting capability tokens for clients, on behalf of a backend.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_capability::{Grant, Rights, TokenRequest};
use tributary_protocol::{ChannelPattern, ErrorCode};

use super::{ApiError, authenticate, parse_body};
use crate::ops::OpError;
use crate::session::unix_now;
use crate::state::RelayState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantBody {
    channel: String,
    allow: Rights,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MintBody {
    client_id: String,
    ttl_secs: Option<u64>,
    capabilities: Vec<GrantBody>,
    info: Option<serde_json::Value>,
}

#[derive(Serialize)]
pub(super) struct MintReply {
    token: String,
    client_id: String,
    expires_at: u64,
}

/// `POST /v1/tokens` with `{"client_id":..,"ttl_secs":..,"capabilities":[{"channel":"chat:*","allow":["subscribe"]}]}`.
pub(super) async fn mint(
    State(state): State<Arc<RelayState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<MintReply>, ApiError> {
    let identity = authenticate(&state, &headers).await?;
    let body: MintBody = parse_body(body)?;
    let ttl = body.ttl_secs.unwrap_or(3600);
    if ttl == 0 || ttl > state.config.max_token_ttl_secs {
        let message = format!("ttl_secs must be 1 to {}", state.config.max_token_ttl_secs);
        return Err(OpError::new(ErrorCode::InvalidParameter, message).into());
    }
    let grants = body
        .capabilities
        .into_iter()
        .map(|g| {
            let pattern = ChannelPattern::parse(&g.channel)
                .map_err(|e| OpError::new(ErrorCode::InvalidChannel, e.to_string()))?;
            Ok(Grant { pattern, rights: g.allow })
        })
        .collect::<Result<Vec<_>, OpError>>()?;
    let key = state.directory.minting_key(&identity.app_id).await.map_err(|e| ApiError::from(e.code()))?;
    let mut request = TokenRequest::new(body.client_id.clone(), identity.app_id, ttl, grants);
    request.info = body.info;
    let minted = tributary_capability::mint(&request, &key, unix_now())
        .map_err(|e| OpError::new(e.code(), e.to_string()))?;
    Ok(Json(MintReply { token: minted.token, client_id: body.client_id, expires_at: minted.expires_at }))
}
