//! The audit events of a tenant: every management action, newest first.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Serialize;
use tributary_store::{AuditEvent, Role};

use super::limit;
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::ApiError;

/// An audit event as the API shows it.
#[derive(Serialize)]
pub(crate) struct EventView {
    id: String,
    actor: String,
    action: String,
    target: String,
    request_id: String,
    at: i64,
}

impl From<AuditEvent> for EventView {
    fn from(e: AuditEvent) -> Self {
        Self {
            id: e.id,
            actor: e.actor,
            action: e.action,
            target: e.target,
            request_id: e.request_id,
            at: e.at,
        }
    }
}

/// `GET /v1/tenants/{tenant}/audit-events?limit=` (admin).
pub(crate) async fn list(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<Vec<EventView>>, ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    let limit = limit(&query)?;
    plane.store.tenant(&tenant).await?;
    Ok(Json(plane.store.audit_events(&tenant, limit).await?.into_iter().map(EventView::from).collect()))
}
