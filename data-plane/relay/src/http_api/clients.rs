//! Acting on a client's connections, on every node.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_protocol::ErrorCode;

use super::{ApiError, authenticate, parse_body};
use crate::control::{self, ControlEvent};
use crate::ops::OpError;
use crate::state::RelayState;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct DisconnectBody {
    #[serde(default)]
    reconnect: bool,
}

#[derive(Serialize)]
pub(super) struct DisconnectReply {
    client_id: String,
}

/// `POST /v1/clients/{client_id}/disconnect` with an optional `{"reconnect": true}`: closes every
/// connection of the client in the key's app, on every node.
pub(super) async fn disconnect(
    State(state): State<Arc<RelayState>>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DisconnectReply>, ApiError> {
    let identity = authenticate(&state, &headers).await?;
    identity.allow_minting(&[])?;
    if let Some(problem) = tributary_capability::identifier_problem(&client_id) {
        return Err(OpError::new(ErrorCode::InvalidParameter, format!("client_id {problem}")).into());
    }
    let body: DisconnectBody = match body {
        Ok(bytes) if bytes.is_empty() => DisconnectBody::default(),
        other => parse_body(other)?,
    };
    let event = ControlEvent::Disconnect {
        app: identity.app_id.to_string(),
        client_id: client_id.clone(),
        reconnect: body.reconnect,
    };
    control::send(&state, &event).await?;
    Ok(Json(DisconnectReply { client_id }))
}
