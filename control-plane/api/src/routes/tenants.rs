//! Tenants: created, listed and suspended by the operator; read by their own tokens.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_protocol::ControlEvent;
use tributary_store::{Role, Tenant, TenantStatus};

use crate::ControlPlane;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// A tenant as the API shows it.
#[derive(Serialize)]
pub(crate) struct TenantView {
    id: String,
    name: String,
    status: &'static str,
    plan: String,
    tokens_revoked_before: i64,
    created_at: i64,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id,
            name: t.name,
            status: t.status.as_str(),
            plan: t.plan_id,
            tokens_revoked_before: t.tokens_revoked_before,
            created_at: t.created_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    name: String,
}

/// `POST /v1/tenants` `{"name":..}` (operator): 201 with the tenant.
pub(crate) async fn create(
    State(plane): State<Arc<ControlPlane>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    caller.operator()?;
    let body: CreateBody = body::parse(body)?;
    body::name("name", &body.name)?;
    let tenant = plane.store.create_tenant_as(&caller.actor, &body.name).await?;
    Ok((StatusCode::CREATED, Json(tenant.into())))
}

/// `GET /v1/tenants` (operator): every tenant.
pub(crate) async fn list(
    State(plane): State<Arc<ControlPlane>>,
    caller: Caller,
) -> Result<Json<Vec<TenantView>>, ApiError> {
    caller.operator()?;
    Ok(Json(plane.store.tenants().await?.into_iter().map(TenantView::from).collect()))
}

/// `GET /v1/tenants/{tenant}`.
pub(crate) async fn get(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
) -> Result<Json<TenantView>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    Ok(Json(plane.store.tenant(&tenant).await?.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusBody {
    status: String,
}

/// `POST /v1/tenants/{tenant}/status` `{"status":"suspended"}` (operator): every node closes
/// the tenant's connections within a second when it is no longer served.
pub(crate) async fn set_status(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TenantView>, ApiError> {
    caller.operator()?;
    let body: StatusBody = body::parse(body)?;
    let status = TenantStatus::parse(&body.status).ok_or_else(|| {
        ApiError::invalid("status must be one of active, past_due, unpaid, suspended, deleted")
    })?;
    let updated = plane.store.set_tenant_status(&caller.actor, &tenant, status).await?;
    plane.announce(ControlEvent::TenantChanged { tenant: updated.id.clone() }).await;
    Ok(Json(updated.into()))
}
