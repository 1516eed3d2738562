//! Management tokens of a tenant: for automation (CI, Terraform). A token may only be given a
//! role up to its creator's.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tributary_protocol::ErrorCode;
use tributary_store::{ManagementToken, Role};

use crate::ControlPlane;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// A management token as lists show it: no secret.
#[derive(Serialize)]
pub(crate) struct TokenView {
    id: String,
    tenant_id: Option<String>,
    name: String,
    role: &'static str,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl From<ManagementToken> for TokenView {
    fn from(t: ManagementToken) -> Self {
        Self {
            id: t.id,
            tenant_id: t.tenant_id,
            name: t.name,
            role: t.role.as_str(),
            created_at: t.created_at,
            revoked_at: t.revoked_at,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct NewTokenView {
    #[serde(flatten)]
    token: TokenView,
    /// The whole token, shown once.
    secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    name: String,
    role: String,
}

/// `POST /v1/tenants/{tenant}/management-tokens` `{"name":..,"role":..}` (admin): 201 with the
/// token and its secret. Roles: `read_only`, `developer`, `admin`, `owner`; never above the
/// caller's own (the operator may give any tenant role).
pub(crate) async fn create(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<NewTokenView>), ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    let body: CreateBody = body::parse(body)?;
    body::name("name", &body.name)?;
    let role = caller.grantable_role(&tenant, &body.role)?;
    let created = plane.store.create_management_token(&caller.actor, Some(&tenant), &body.name, role).await?;
    let secret = created.plaintext.expose_secret().to_owned();
    Ok((StatusCode::CREATED, Json(NewTokenView { token: created.record.into(), secret })))
}

/// `GET /v1/tenants/{tenant}/management-tokens` (admin).
pub(crate) async fn list(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    plane.store.tenant(&tenant).await?;
    Ok(Json(plane.store.management_tokens(&tenant).await?.into_iter().map(TokenView::from).collect()))
}

/// `POST /v1/tenants/{tenant}/management-tokens/{token}/revoke` (admin): the token stops
/// working at once (tokens are checked against the store on every request). Like creation, a
/// caller may only revoke tokens up to its own role.
pub(crate) async fn revoke(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, token)): Path<(String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    let tokens = plane.store.management_tokens(&tenant).await?;
    let target = tokens
        .iter()
        .find(|t| t.id == token)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "management token not found"))?;
    if Some(target.role) > caller.role_in(&tenant) {
        return Err(ApiError::new(ErrorCode::PermissionDenied, "a token cannot revoke one of a higher role"));
    }
    plane.store.revoke_management_token(&caller.actor, &tenant, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/operator-tokens` (operator): every operator token, revoked ones too.
pub(crate) async fn list_operator(
    State(plane): State<Arc<ControlPlane>>,
    caller: Caller,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    caller.operator()?;
    Ok(Json(plane.store.operator_tokens().await?.into_iter().map(TokenView::from).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OperatorBody {
    name: String,
}

/// `POST /v1/operator-tokens` `{"name":..}` (operator): 201 with a new operator token and its
/// secret (shown once).
pub(crate) async fn create_operator(
    State(plane): State<Arc<ControlPlane>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<NewTokenView>), ApiError> {
    caller.operator()?;
    let body: OperatorBody = body::parse(body)?;
    body::name("name", &body.name)?;
    let created =
        plane.store.create_management_token(&caller.actor, None, &body.name, Role::Operator).await?;
    let secret = created.plaintext.expose_secret().to_owned();
    Ok((StatusCode::CREATED, Json(NewTokenView { token: created.record.into(), secret })))
}

/// `POST /v1/operator-tokens/{token}/revoke` (operator): the token stops working at once (an
/// operator may revoke its own; keep another).
pub(crate) async fn revoke_operator(
    State(plane): State<Arc<ControlPlane>>,
    Path(token): Path<String>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    caller.operator()?;
    plane.store.revoke_operator_token(&caller.actor, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}
