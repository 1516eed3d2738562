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

use super::{ApiError, authenticate_with_policy, parse_body};
use crate::directory::MintedGrant;
use crate::ops::OpError;
use crate::session::unix_now;
use crate::state::RelayState;

/// How long minting waits for its grant to be recorded.
const GRANT_RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

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
    token_id: String,
    client_id: String,
    expires_at: u64,
}

/// `POST /v1/tokens` with `{"client_id":..,"ttl_secs":..,"capabilities":[{"channel":"chat:*","allow":["subscribe"]}]}`.
pub(super) async fn mint(
    State(state): State<Arc<RelayState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<MintReply>, ApiError> {
    let (identity, policy) = authenticate_with_policy(&state, &headers).await?;
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
    identity.allow_minting(&grants)?;
    let key = policy.minting_key().ok_or(ErrorCode::UnknownKey)?;
    let jti = state.directory.new_token_id();
    let mut request = TokenRequest::new(body.client_id.clone(), identity.app_id.clone(), ttl, grants);
    request.info = body.info;
    request.jti = Some(jti.clone());
    let now = unix_now();
    let minted =
        tributary_capability::mint(&request, key, now).map_err(|e| OpError::new(e.code(), e.to_string()))?;
    let grant = MintedGrant {
        jti: jti.clone(),
        tenant_id: identity.tenant_id,
        app_id: identity.app_id,
        client_id: body.client_id.clone(),
        kid: key.kid.clone(),
        generation: key.generation,
        capabilities: caps_json(&request.grants),
        issued_at: now,
        expires_at: minted.expires_at,
    };
    // Best effort and bounded: a store that is down or slow must not hold minting up.
    match tokio::time::timeout(GRANT_RECORD_TIMEOUT, state.directory.record_grant(&grant)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "token minted but its grant was not recorded"),
        Err(_) => tracing::warn!("token minted but recording its grant timed out"),
    }
    Ok(Json(MintReply {
        token: minted.token,
        token_id: jti,
        client_id: body.client_id,
        expires_at: minted.expires_at,
    }))
}

/// Returns the grants as the JSON array of the token's `caps` claim.
fn caps_json(grants: &[Grant]) -> String {
    let caps: Vec<serde_json::Value> = grants
        .iter()
        .map(|g| serde_json::json!({ "channel": g.pattern.as_str(), "allow": g.rights }))
        .collect();
    serde_json::Value::Array(caps).to_string()
}
