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
    /// What it may do; `null`: everything.
    capabilities: Option<serde_json::Value>,
    created_at: i64,
    revoked_at: Option<i64>,
    /// When a rotated key stops working.
    expires_at: Option<i64>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            // `null` means "everything": a stored value that does not parse must not read as that.
            capabilities: k
                .capabilities
                .as_deref()
                .map(|c| serde_json::from_str(c).unwrap_or_else(|_| serde_json::json!({"unreadable": true}))),
            id: k.id,
            app_id: k.app_id,
            name: k.name,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            expires_at: k.expires_at,
        }
    }
}

/// What a restricted API key may do.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyCapabilities {
    /// Rights (`publish`, `subscribe`, `history`, `presence`) per channel pattern.
    #[serde(default)]
    grants: Vec<KeyGrant>,
    /// Whether it may mint tokens (within `grants`) and disconnect clients.
    #[serde(default)]
    mint_tokens: bool,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyGrant {
    channel: String,
    allow: tributary_capability::Rights,
}

impl KeyCapabilities {
    /// Checks the patterns and returns the JSON to store.
    fn to_stored(&self) -> Result<String, ApiError> {
        if self.grants.len() > tributary_capability::MAX_GRANTS {
            return Err(ApiError::invalid(format!(
                "an API key has at most {} grants",
                tributary_capability::MAX_GRANTS
            )));
        }
        for grant in &self.grants {
            tributary_protocol::ChannelPattern::parse(&grant.channel)
                .map_err(|e| ApiError::new(tributary_protocol::ErrorCode::InvalidChannel, e.to_string()))?;
        }
        serde_json::to_string(self)
            .map_err(|e| ApiError::new(tributary_protocol::ErrorCode::Internal, e.to_string()))
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
pub(crate) struct NewKeyBody {
    name: String,
    #[serde(default)]
    capabilities: Option<KeyCapabilities>,
}

/// `POST …/apps/{app}/api-keys` `{"name":..,"capabilities":{..}}` (developer): 201 with the key
/// and its secret. Without `capabilities` the key may do everything in its app.
pub(crate) async fn create_api_key(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<NewApiKeyView>), ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    let body: NewKeyBody = body::parse(body)?;
    body::name("name", &body.name)?;
    let capabilities = body.capabilities.as_ref().map(KeyCapabilities::to_stored).transpose()?;
    let created = plane
        .store
        .create_api_key_with(&caller.actor, &tenant, &app, &body.name, capabilities.as_deref())
        .await?;
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

/// The longest overlap of a rotation.
const MAX_OVERLAP_SECS: u64 = 30 * 24 * 3600;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    #[serde(default)]
    overlap_secs: Option<u64>,
}

/// `POST …/api-keys/{key}/rotate` `{"overlap_secs": 3600}` (developer): 201 with a new key
/// (same name and capabilities, secret shown once); the old one works `overlap_secs` more
/// (default an hour, 0 to stop it now).
pub(crate) async fn rotate_api_key(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, key)): Path<(String, String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<NewApiKeyView>), ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    let body: RotateBody = match body {
        Ok(bytes) if bytes.is_empty() => RotateBody::default(),
        other => body::parse(other)?,
    };
    let overlap = body.overlap_secs.unwrap_or(3600);
    if overlap > MAX_OVERLAP_SECS {
        return Err(ApiError::invalid(format!("overlap_secs must be 0 to {MAX_OVERLAP_SECS}")));
    }
    let created = plane.store.rotate_api_key(&caller.actor, &tenant, &app, &key, overlap as i64).await?;
    plane.announce(ControlEvent::AppChanged { app }).await;
    let secret = created.plaintext.expose_secret().to_owned();
    Ok((StatusCode::CREATED, Json(NewApiKeyView { key: created.record.into(), secret })))
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
