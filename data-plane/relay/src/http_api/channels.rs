//! Reading channels from backends: history, presence, occupancy, receipts of audited messages.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tributary_engine::ChannelKey;
use tributary_protocol::ErrorCode;
use tributary_protocol::frame::{Direction, MemberInfo};

use super::{ApiError, authenticate, channel};
use crate::ops::{self, OpError};
use crate::state::RelayState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryParams {
    since: Option<u64>,
    direction: Option<Direction>,
    limit: Option<u32>,
}

/// `GET /v1/channels/{channel}/history?since=&direction=forward|backward&limit=`.
pub(super) async fn history(
    State(state): State<Arc<RelayState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let identity = authenticate(&state, &headers).await?;
    let channel = channel(&name)?;
    identity.allow(&channel, tributary_capability::Right::History)?;
    let Query(params) = params.map_err(|e| OpError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    let app = Arc::from(identity.app_id);
    let direction = params.direction.unwrap_or_default();
    let result = ops::history(&state, &app, channel, params.since, direction, params.limit).await?;
    let mut response = result.to_json(state.config.max_queued_bytes / 2).get().to_owned().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

#[derive(Serialize)]
pub(super) struct PresenceReply {
    channel: String,
    members: Vec<MemberInfo>,
    occupancy: tributary_engine::Occupancy,
}

async fn presence_key(state: &RelayState, headers: &HeaderMap, name: &str) -> Result<ChannelKey, ApiError> {
    let identity = authenticate(state, headers).await?;
    let channel = channel(name)?;
    identity.allow(&channel, tributary_capability::Right::Presence)?;
    let app =
        state.route(&Arc::from(identity.app_id), &channel, tributary_capability::Right::Presence).await?.app;
    if !state.namespace(&app, channel.namespace()).presence {
        return Err(
            OpError::new(ErrorCode::DisabledInNamespace, "presence is disabled for this namespace").into()
        );
    }
    Ok(ChannelKey::new(app, channel))
}

/// `GET /v1/channels/{channel}/presence`.
pub(super) async fn presence(
    State(state): State<Arc<RelayState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<PresenceReply>, ApiError> {
    let key = presence_key(&state, &headers, &name).await?;
    let members = state.engine.presence(&key).await.map_err(OpError::from)?;
    let occupancy = state.engine.occupancy(&key).await.map_err(OpError::from)?;
    Ok(Json(PresenceReply { channel: key.channel.to_string(), members, occupancy }))
}

/// `GET /v1/channels/{channel}/occupancy`.
pub(super) async fn occupancy(
    State(state): State<Arc<RelayState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<tributary_engine::Occupancy>, ApiError> {
    let key = presence_key(&state, &headers, &name).await?;
    Ok(Json(state.engine.occupancy(&key).await.map_err(OpError::from)?))
}

/// The query of a receipt.
#[derive(Deserialize)]
pub(super) struct ReceiptParams {
    epoch: String,
    offset: u64,
}

/// `GET /v1/channels/{channel}/receipt?epoch=&offset=`: the receipt of a message of an audited
/// namespace (or of an exchange's) — its log entry, the entry's inclusion proof and the signed
/// checkpoint — for a key with the history right on the channel.
pub(super) async fn receipt(
    State(state): State<Arc<RelayState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Result<Query<ReceiptParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let identity = authenticate(&state, &headers).await?;
    let channel = channel(&name)?;
    identity.allow(&channel, tributary_capability::Right::History)?;
    let Query(params) = params.map_err(|e| OpError::new(ErrorCode::InvalidParameter, e.body_text()))?;
    let app: Arc<str> = Arc::from(identity.app_id);
    let routed = state.route(&app, &channel, tributary_capability::Right::History).await?;
    let exchange = routed
        .exchanged
        .then(|| {
            state
                .policies
                .peek(&app)
                .and_then(|p| p.exchange(channel.namespace()).map(|r| r.exchange_id.clone()))
        })
        .flatten();
    let receipts = state
        .receipts
        .get()
        .ok_or_else(|| OpError::new(ErrorCode::Unavailable, "this server keeps no audit logs"))?;
    let found = receipts
        .receipt(&routed.app, exchange.as_deref(), channel.as_str(), &params.epoch, params.offset)
        .await?;
    Ok(Json(found))
}
