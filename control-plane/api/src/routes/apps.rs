//! Apps of a tenant. A new app comes with its first signing key, in the same transaction.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_protocol::ControlEvent;
use tributary_store::{App, Role};

use super::app_of;
use super::keys::NewSigningKeyView;
use crate::ControlPlane;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// An app as the API shows it.
#[derive(Serialize)]
pub(crate) struct AppView {
    id: String,
    tenant_id: String,
    name: String,
    tokens_revoked_before: i64,
    created_at: i64,
}

impl From<App> for AppView {
    fn from(a: App) -> Self {
        Self {
            id: a.id,
            tenant_id: a.tenant_id,
            name: a.name,
            tokens_revoked_before: a.tokens_revoked_before,
            created_at: a.created_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    name: String,
}

#[derive(Serialize)]
pub(crate) struct CreatedApp {
    #[serde(flatten)]
    app: AppView,
    signing_key: NewSigningKeyView,
}

/// `POST /v1/tenants/{tenant}/apps` `{"name":..}` (developer): 201 with the app and its first
/// signing key (its secret shown this once).
pub(crate) async fn create(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreatedApp>), ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    let body: CreateBody = body::parse(body)?;
    body::name("name", &body.name)?;
    let (app, key) = plane.store.create_app_with_signing_key_as(&caller.actor, &tenant, &body.name).await?;
    // A node that was asked for this app id before it existed remembers "no such app".
    plane.announce(ControlEvent::AppChanged { app: app.id.clone() }).await;
    Ok((StatusCode::CREATED, Json(CreatedApp { app: app.into(), signing_key: key.into() })))
}

/// `GET /v1/tenants/{tenant}/apps`.
pub(crate) async fn list(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
) -> Result<Json<Vec<AppView>>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    // An unknown tenant (operator only gets this far) is not found rather than empty.
    plane.store.tenant(&tenant).await?;
    Ok(Json(plane.store.apps(&tenant).await?.into_iter().map(AppView::from).collect()))
}

/// `GET /v1/tenants/{tenant}/apps/{app}`.
pub(crate) async fn get(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<AppView>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    Ok(Json(app_of(&plane, &tenant, &app).await?.into()))
}
