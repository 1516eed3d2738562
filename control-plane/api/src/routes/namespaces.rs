//! Namespaces of an app: channel options per channel-name prefix, editable at runtime. Every
//! node applies a change within a second (`app_changed`); they take precedence over the
//! configuration file's `[relay.namespaces]`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_protocol::ControlEvent;
use tributary_store::{Namespace, Role};

use super::app_of;
use crate::ControlPlane;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// The path name of the app's default namespace (`""`, for channels of no listed namespace).
const DEFAULT_NAME: &str = "_default";

/// Most messages a namespace keeps per channel.
const MAX_HISTORY_SIZE: u64 = 1_000_000;
/// Longest history age, in seconds (30 days).
const MAX_HISTORY_TTL_SECS: u64 = 30 * 24 * 3600;
/// Largest message a namespace may allow (16 MiB; the relay's frame limit applies too).
const MAX_MESSAGE_BYTES: u64 = 16 * 1024 * 1024;

/// The options of a namespace; absent fields take the defaults of docs/configuration.md.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Options {
    #[serde(default = "defaults::history_size")]
    history_size: u64,
    #[serde(default = "defaults::history_ttl_secs")]
    history_ttl_secs: u64,
    #[serde(default = "defaults::yes")]
    presence: bool,
    #[serde(default = "defaults::yes")]
    join_leave: bool,
    #[serde(default = "defaults::yes")]
    client_publish: bool,
    #[serde(default = "defaults::max_message_bytes")]
    max_message_bytes: u64,
    /// Whether the namespace's messages go on the tenant's audit log (docs/audit.md).
    #[serde(default)]
    audited: bool,
}

mod defaults {
    pub(super) fn history_size() -> u64 {
        100
    }
    pub(super) fn history_ttl_secs() -> u64 {
        3600
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn max_message_bytes() -> u64 {
        32 * 1024
    }
}

impl Options {
    fn check(&self) -> Result<(), ApiError> {
        if self.history_size > MAX_HISTORY_SIZE {
            return Err(ApiError::invalid(format!("history_size must be 0 to {MAX_HISTORY_SIZE}")));
        }
        if self.history_size > 0 && !(1..=MAX_HISTORY_TTL_SECS).contains(&self.history_ttl_secs) {
            return Err(ApiError::invalid(format!("history_ttl_secs must be 1 to {MAX_HISTORY_TTL_SECS}")));
        }
        if !(1..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return Err(ApiError::invalid(format!("max_message_bytes must be 1 to {MAX_MESSAGE_BYTES}")));
        }
        Ok(())
    }
}

/// A namespace as the API shows it.
#[derive(Serialize)]
pub(crate) struct NamespaceView {
    name: String,
    options: serde_json::Value,
    updated_at: i64,
}

impl From<Namespace> for NamespaceView {
    fn from(ns: Namespace) -> Self {
        let name = if ns.name.is_empty() { DEFAULT_NAME.to_owned() } else { ns.name };
        Self {
            name,
            options: serde_json::from_str(&ns.options).unwrap_or_default(),
            updated_at: ns.updated_at,
        }
    }
}

/// Returns the stored name of a path name: `_default` is `""`; others must be channel-name
/// characters without `:`.
fn stored_name(name: &str) -> Result<String, ApiError> {
    if name == DEFAULT_NAME {
        return Ok(String::new());
    }
    let valid =
        !name.contains(':') && !name.contains('*') && tributary_protocol::ChannelName::parse(name).is_ok();
    if !valid {
        return Err(ApiError::new(
            tributary_protocol::ErrorCode::InvalidChannel,
            "a namespace is a channel-name prefix without ':' (or _default)",
        ));
    }
    Ok(name.to_owned())
}

/// `GET …/apps/{app}/namespaces` (read_only).
pub(crate) async fn list(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Vec<NamespaceView>>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    app_of(&plane, &tenant, &app).await?;
    Ok(Json(
        plane.store.namespaces(Some(&tenant), &app).await?.into_iter().map(NamespaceView::from).collect(),
    ))
}

/// `POST …/apps/{app}/namespaces/{name}` with the options (developer): creates or replaces it.
pub(crate) async fn set(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, name)): Path<(String, String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<NamespaceView>, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    app_of(&plane, &tenant, &app).await?;
    let name = stored_name(&name)?;
    let options: Options = match body {
        Ok(bytes) if bytes.is_empty() => body::parse(Ok(Bytes::from_static(b"{}")))?,
        other => body::parse(other)?,
    };
    options.check()?;
    if options.audited {
        // The feed the audit log reads is on before the namespace says it is audited, so no
        // message of it is missed.
        super::rules::feed_on(&plane, &app).await?;
    }
    let json = serde_json::to_string(&options)
        .map_err(|e| ApiError::new(tributary_protocol::ErrorCode::Internal, e.to_string()))?;
    let stored = plane.store.set_namespace(&caller.actor, &tenant, &app, &name, &json).await?;
    plane.announce(ControlEvent::AppChanged { app }).await;
    Ok(Json(stored.into()))
}

/// `DELETE …/apps/{app}/namespaces/{name}` (developer): the configuration file's options (or
/// the app's default) apply again.
pub(crate) async fn delete(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, name)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    app_of(&plane, &tenant, &app).await?;
    let name = stored_name(&name)?;
    plane.store.delete_namespace(&caller.actor, &tenant, &app, &name).await?;
    plane.announce(ControlEvent::AppChanged { app }).await;
    Ok(StatusCode::NO_CONTENT)
}
