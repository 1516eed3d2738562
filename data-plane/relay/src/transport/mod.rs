//! Transports: how clients reach a session.

pub mod long_poll;
pub mod sse;
pub mod websocket;

use std::sync::Arc;

use axum::http::HeaderMap;
use tributary_protocol::ErrorCode;

use crate::conn::ConnHandle;
use crate::ops::OpError;
use crate::session::{Identity, authenticate};
use crate::state::RelayState;

/// Returns the bearer token of an `Authorization` header, or the `token` query parameter.
pub fn bearer<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(query_token)
}

/// Authenticates a token and registers a new connection for it, within the app's limit.
pub async fn open_connection(
    state: &Arc<RelayState>,
    token: Option<&str>,
) -> Result<(Identity, ConnHandle, tokio::sync::mpsc::Receiver<crate::conn::Outbound>), OpError> {
    let token = token.ok_or(ErrorCode::Unauthorized)?;
    let identity = Identity::from(authenticate(state, token).await?);
    let conn_id: Arc<str> = Arc::from(uuid::Uuid::now_v7().simple().to_string());
    let (conn, rx) = ConnHandle::new(conn_id, identity.app_id.clone(), state.config.outbound_queue_len);
    if !state.connections.register(&conn, state.config.max_connections_per_app) {
        return Err(ErrorCode::ConnectionLimit.into());
    }
    Ok((identity, conn, rx))
}

/// Parses a comma-separated channel list.
pub fn parse_channels(list: &str) -> Result<Vec<tributary_protocol::ChannelName>, OpError> {
    let channels: Vec<_> = list
        .split(',')
        .filter(|c| !c.is_empty())
        .map(|c| {
            tributary_protocol::ChannelName::parse(c)
                .map_err(|e| OpError::new(ErrorCode::InvalidChannel, e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if channels.is_empty() {
        return Err(OpError::new(ErrorCode::InvalidParameter, "channels must name at least one channel"));
    }
    Ok(channels)
}
