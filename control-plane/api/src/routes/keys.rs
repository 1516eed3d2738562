//! API keys and signing keys of an app. Secrets are shown once, at creation.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tributary_protocol::ControlEvent;
use tributary_store::{ApiKey, Role, SigningKeyRecord};

use super::app_of;
use crate::ControlPlane;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// An API key as lists show it: no secret.
#[derive(Serialize)]
pub(crate) struct ApiKeyView {
    id: String,
    app_id: String,
    name: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        Self { id: k.id, app_id: k.app_id, name: k.name, created_at: k.created_at, revoked_at: k.revoked_at }
    }
}

#[derive(Serialize)]
pub(crate) struct NewApiKeyView {
    #[serde(flatten)]
    key: ApiKeyView,
    /// The whole key, shown once.
    secret: String,
}

/// A signing key as lists show it: no secret.
#[derive(Serialize)]
pub(crate) struct SigningKeyView {
    kid: String,
    app_id: String,
    alg: String,
    generation: i64,
    created_at: i64,
}

impl From<&SigningKeyRecord> for SigningKeyView {
    fn from(k: &SigningKeyRecord) -> Self {
        Self {
            kid: k.kid.clone(),
            app_id: k.app_id.clone(),
            alg: k.alg.clone(),
            generation: k.generation,
            created_at: k.created_at,
        }
    }
}

/// A signing key just created, with its secret (base64url), shown once: backends that mint
/// their own tokens sign with it.
#[derive(Serialize)]
pub(crate) struct NewSigningKeyView {
    #[serde(flatten)]
    key: SigningKeyView,
    secret: String,
}

impl From<SigningKeyRecord> for NewSigningKeyView {
    fn from(k: SigningKeyRecord) -> Self {
        let secret = URL_SAFE_NO_PAD.encode(k.secret.expose_secret());
        Self { key: SigningKeyView::from(&k), secret }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameBody {
    name: String,
}

/// `POST …/apps/{app}/api-keys` `{"name":..}` (developer): 201 with the key and its secret.
pub(crate) async fn create_api_key(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<NewApiKeyView>), ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    let body: NameBody = body::parse(body)?;
    body::name("name", &body.name)?;
    let created = plane.store.create_api_key_as(&caller.actor, &tenant, &app, &body.name).await?;
    let secret = created.plaintext.expose_secret().to_owned();
    Ok((StatusCode::CREATED, Json(NewApiKeyView { key: created.record.into(), secret })))
}

/// `GET …/apps/{app}/api-keys`.
pub(crate) async fn list_api_keys(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    app_of(&plane, &tenant, &app).await?;
    Ok(Json(plane.store.api_keys(&tenant, &app).await?.into_iter().map(ApiKeyView::from).collect()))
}

/// `POST …/apps/{app}/api-keys/{key}/revoke` (developer): the key stops working on every node
/// within a second.
pub(crate) async fn revoke_api_key(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, key)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    plane.store.revoke_api_key_as(&caller.actor, &tenant, &app, &key).await?;
    plane.announce(ControlEvent::AppChanged { app }).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/apps/{app}/signing-keys` (developer): 201 with a new key and its secret. New tokens
/// are signed with the newest key; older keys keep verifying until revoked (rotation).
pub(crate) async fn create_signing_key(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
) -> Result<(StatusCode, Json<NewSigningKeyView>), ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    let key = plane.store.create_signing_key_as(&caller.actor, &tenant, &app).await?;
    plane.announce(ControlEvent::AppChanged { app }).await;
    Ok((StatusCode::CREATED, Json(key.into())))
}

/// `GET …/apps/{app}/signing-keys`: unrevoked keys, newest first, without secrets.
pub(crate) async fn list_signing_keys(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Vec<SigningKeyView>>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    app_of(&plane, &tenant, &app).await?;
    Ok(Json(plane.store.signing_keys(&app).await?.iter().map(SigningKeyView::from).collect()))
}

/// `POST …/signing-keys/{kid}/revoke` (developer): every token the key signed is refused, and
/// every connection holding one is closed (3504), on every node within a second.
pub(crate) async fn revoke_signing_key(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, kid)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    plane.store.revoke_signing_key(&caller.actor, &tenant, &app, &kid).await?;
    plane.announce(ControlEvent::AppChanged { app }).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub(crate) struct GenerationView {
    kid: String,
    generation: i64,
}

/// `POST …/signing-keys/{kid}/bump-generation` (developer): revokes every token the key signed
/// so far (their `gen` is now too low) and keeps the key for new ones.
pub(crate) async fn bump_generation(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, kid)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<Json<GenerationView>, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    let generation = plane.store.bump_signing_key_generation(&caller.actor, &tenant, &app, &kid).await?;
    plane.announce(ControlEvent::AppChanged { app }).await;
    Ok(Json(GenerationView { kid, generation }))
}
