//! Revocations: one token, one client, a whole app or a whole tenant; and the grants (minted
//! tokens) they can be chosen from.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_protocol::ControlEvent;
use tributary_store::{Role, TokenGrant};

use super::{app_of, limit};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// What to revoke in an app: exactly one of the fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeBody {
    token_id: Option<String>,
    client_id: Option<String>,
    #[serde(default)]
    all: bool,
}

#[derive(Serialize)]
pub(crate) struct Revocation {
    /// `token`, `client`, `app` or `tenant`.
    revoked: &'static str,
    /// The token id, client id, app id or tenant id.
    target: String,
    /// Tokens issued before this unix second are refused (absent for one token).
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_before: Option<i64>,
}

fn identifier(field: &str, value: &str) -> Result<(), ApiError> {
    match tributary_capability::identifier_problem(value) {
        Some(problem) => Err(ApiError::invalid(format!("{field} {problem}"))),
        None => Ok(()),
    }
}

/// `POST …/apps/{app}/revocations` with `{"token_id":..}`, `{"client_id":..}` or
/// `{"all":true}` (developer). Every node refuses the revoked tokens and closes the
/// connections holding them (3504) within a second.
pub(crate) async fn revoke_in_app(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Revocation>, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    app_of(&plane, &tenant, &app).await?;
    let body: RevokeBody = body::parse(body)?;
    let actor = &caller.actor;
    let revocation = match (body.token_id, body.client_id, body.all) {
        (Some(jti), None, false) => {
            identifier("token_id", &jti)?;
            plane.store.revoke_token(actor, &tenant, &app, &jti).await?;
            Revocation { revoked: "token", target: jti, issued_before: None }
        }
        (None, Some(client), false) => {
            identifier("client_id", &client)?;
            let before = plane.store.revoke_client(actor, &tenant, &app, &client).await?;
            Revocation { revoked: "client", target: client, issued_before: Some(before) }
        }
        (None, None, true) => {
            let before = plane.store.revoke_app_tokens(actor, &tenant, &app).await?;
            Revocation { revoked: "app", target: app.clone(), issued_before: Some(before) }
        }
        _ => return Err(ApiError::invalid("give exactly one of token_id, client_id or \"all\": true")),
    };
    plane.announce(ControlEvent::AppChanged { app }).await;
    Ok(Json(revocation))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeTenantBody {
    #[serde(default)]
    all: bool,
}

/// `POST /v1/tenants/{tenant}/revocations` `{"all":true}` (admin): revokes every token of
/// every app of the tenant issued up to now.
pub(crate) async fn revoke_tenant(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Revocation>, ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    let body: RevokeTenantBody = body::parse(body)?;
    if !body.all {
        return Err(ApiError::invalid("a tenant-wide revocation needs \"all\": true"));
    }
    let before = plane.store.revoke_tenant_tokens(&caller.actor, &tenant).await?;
    plane.announce(ControlEvent::TenantChanged { tenant: tenant.clone() }).await;
    Ok(Json(Revocation { revoked: "tenant", target: tenant, issued_before: Some(before) }))
}

/// A minted token as the API shows it.
#[derive(Serialize)]
pub(crate) struct GrantView {
    token_id: String,
    client_id: String,
    kid: String,
    generation: i64,
    capabilities: serde_json::Value,
    issued_at: i64,
    expires_at: i64,
}

impl From<TokenGrant> for GrantView {
    fn from(g: TokenGrant) -> Self {
        Self {
            capabilities: serde_json::from_str(&g.capabilities).unwrap_or(serde_json::Value::Null),
            token_id: g.jti,
            client_id: g.client_id,
            kid: g.kid,
            generation: g.generation,
            issued_at: g.issued_at,
            expires_at: g.expires_at,
        }
    }
}

/// `GET …/apps/{app}/grants?client_id=&limit=`: the tokens minted for the app, newest first.
pub(crate) async fn grants(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<Vec<GrantView>>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    let limit = limit(&query)?;
    let client = query.get("client_id").map(String::as_str);
    if let Some(client) = client {
        identifier("client_id", client)?;
    }
    app_of(&plane, &tenant, &app).await?;
    let grants = plane.store.grants(&tenant, &app, client, limit).await?;
    Ok(Json(grants.into_iter().map(GrantView::from).collect()))
}
