//! Webhook endpoints of an app: where its events are delivered, their signing secrets (shown
//! once, rotated with an overlap), their delivery log, and their dead letters (replayable).
//!
//! An endpoint's URL must pass the operator's address rules (`[delivery]`): `https` unless plain
//! `http` is allowed, no credentials, and an address that is not loopback, private, link-local
//! or metadata space unless the operator allows its range. The worker checks the addresses again
//! when it connects (a name may resolve elsewhere later).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tributary_store::{DeliveryJob, LoggedAttempt, Role, WebhookEndpoint};

use tributary_delivery::worker::now_ms;

use super::{app_of, limit};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// Most custom headers an endpoint may have.
const MAX_HEADERS: usize = 16;
/// Longest custom header value.
const MAX_HEADER_VALUE: usize = 1024;
/// Longest URL.
const MAX_URL: usize = 2048;
/// Longest rotation overlap: a week.
const MAX_OVERLAP_SECS: u64 = 7 * 86_400;
/// Headers the worker sets itself, which an endpoint may not replace.
const RESERVED_HEADERS: &[&str] =
    &["webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length", "host"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    url: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    #[serde(default = "default_overlap")]
    overlap_secs: u64,
}

fn default_overlap() -> u64 {
    86_400
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisableBody {
    #[serde(default)]
    reason: Option<String>,
}

/// An endpoint as the API shows it (never its secret).
#[derive(Serialize)]
pub(crate) struct WebhookView {
    id: String,
    app_id: String,
    url: String,
    description: String,
    headers: Value,
    enabled: bool,
    disabled_reason: Option<String>,
    created_at: i64,
}

impl From<WebhookEndpoint> for WebhookView {
    fn from(e: WebhookEndpoint) -> Self {
        Self {
            id: e.id,
            app_id: e.app_id,
            url: e.url,
            description: e.description,
            headers: serde_json::from_str(&e.headers).unwrap_or_else(|_| json!({})),
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            created_at: e.created_at,
        }
    }
}

/// A delivery as the API shows it: its body as JSON when it is JSON, base64 otherwise, `null`
/// once a delivered body is no longer kept.
fn delivery_view(job: DeliveryJob) -> Value {
    let payload = match job.body_kept {
        false => Value::Null,
        true => serde_json::from_slice::<Value>(&job.payload).unwrap_or_else(|_| {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&job.payload))
        }),
    };
    json!({
        "id": job.id,
        "event_id": job.event_id,
        "state": job.state.as_str(),
        "attempts": job.attempts,
        "payload": payload,
    })
}

fn attempt_view(a: LoggedAttempt) -> Value {
    json!({
        "delivery_id": a.job_id,
        "attempt": a.attempt,
        "at": a.record.at_ms / 1000,
        "status": a.record.status,
        "latency_ms": a.record.latency_ms,
        "outcome": a.record.outcome,
        "response": a.record.snippet,
    })
}

/// Checks custom headers: valid names and values, none the worker sets itself.
pub(crate) fn checked_headers(headers: &BTreeMap<String, String>) -> Result<String, ApiError> {
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::invalid(format!("at most {MAX_HEADERS} headers")));
    }
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || RESERVED_HEADERS.contains(&lower.as_str())
        {
            return Err(ApiError::invalid(format!("header {name:?} is not a header an endpoint may set")));
        }
        if value.len() > MAX_HEADER_VALUE || axum::http::HeaderValue::from_str(value).is_err() {
            return Err(ApiError::invalid(format!(
                "header {name:?}: a value of printable characters, at most {MAX_HEADER_VALUE} bytes"
            )));
        }
    }
    serde_json::to_string(headers).map_err(|e| ApiError::invalid(e.to_string()))
}

/// `POST …/apps/{app}/webhooks` (developer): 201 with the endpoint and its secret, shown once.
pub(crate) async fn create(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    app_of(&plane, &tenant, &app).await?;
    let body: CreateBody = body::parse(body)?;
    if body.url.len() > MAX_URL {
        return Err(ApiError::invalid(format!("url: at most {MAX_URL} bytes")));
    }
    let url = plane
        .settings
        .webhook_policy
        .check_url(&body.url)
        .map_err(|e| ApiError::invalid(format!("url: {e}")))?;
    let new = tributary_store::NewWebhookEndpoint {
        url: url.to_string(),
        description: body.description,
        headers: checked_headers(&body.headers)?,
    };
    let (endpoint, secret) = plane.store.create_webhook_endpoint(&caller.actor, &tenant, &app, &new).await?;
    let secret = tributary_delivery::signature::WebhookSecret::from_bytes(secret.expose_secret().to_vec());
    let mut view = serde_json::to_value(WebhookView::from(endpoint)).unwrap_or_default();
    view["secret"] = Value::String(secret.expose());
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET …/apps/{app}/webhooks` (read_only).
pub(crate) async fn list(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Vec<WebhookView>>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    app_of(&plane, &tenant, &app).await?;
    let endpoints = plane.store.webhook_endpoints(&tenant, &app).await?;
    Ok(Json(endpoints.into_iter().map(WebhookView::from).collect()))
}

/// Returns an endpoint of the app (another app's is `not_found`).
async fn endpoint_of(
    plane: &ControlPlane,
    tenant: &str,
    app: &str,
    webhook: &str,
) -> Result<WebhookEndpoint, ApiError> {
    app_of(plane, tenant, app).await?;
    let endpoint = plane.store.webhook_endpoint(tenant, webhook).await?;
    if endpoint.app_id != app {
        return Err(tributary_store::StoreError::NotFound("webhook endpoint").into());
    }
    Ok(endpoint)
}

/// `GET …/apps/{app}/webhooks/{webhook}` (read_only).
pub(crate) async fn get(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, webhook)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<Json<WebhookView>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    Ok(Json(endpoint_of(&plane, &tenant, &app, &webhook).await?.into()))
}

/// `DELETE …/apps/{app}/webhooks/{webhook}` (developer).
pub(crate) async fn delete(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, webhook)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    endpoint_of(&plane, &tenant, &app, &webhook).await?;
    plane.store.delete_webhook_endpoint(&caller.actor, &tenant, &webhook).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/webhooks/{webhook}/enable` (developer).
pub(crate) async fn enable(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, webhook)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<Json<WebhookView>, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    endpoint_of(&plane, &tenant, &app, &webhook).await?;
    plane.store.set_webhook_enabled(&caller.actor, &tenant, &webhook, None).await?;
    Ok(Json(endpoint_of(&plane, &tenant, &app, &webhook).await?.into()))
}

/// `POST …/webhooks/{webhook}/disable` (developer), with an optional reason.
pub(crate) async fn disable(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, webhook)): Path<(String, String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookView>, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    endpoint_of(&plane, &tenant, &app, &webhook).await?;
    let body: DisableBody = match body {
        Ok(bytes) if bytes.is_empty() => DisableBody::default(),
        other => body::parse(other)?,
    };
    let reason = body.reason.unwrap_or_else(|| "disabled by the tenant".to_owned());
    if reason.len() > 500 {
        return Err(ApiError::invalid("reason: at most 500 bytes"));
    }
    plane.store.set_webhook_enabled(&caller.actor, &tenant, &webhook, Some(&reason)).await?;
    Ok(Json(endpoint_of(&plane, &tenant, &app, &webhook).await?.into()))
}

/// `POST …/webhooks/{webhook}/rotate-secret` (developer): a new secret (shown once); the old
/// one keeps signing beside it for `overlap_secs` (default a day, at most a week).
pub(crate) async fn rotate_secret(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, webhook)): Path<(String, String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    endpoint_of(&plane, &tenant, &app, &webhook).await?;
    let body: RotateBody = match body {
        Ok(bytes) if bytes.is_empty() => body::parse(Ok(Bytes::from_static(b"{}")))?,
        other => body::parse(other)?,
    };
    if body.overlap_secs > MAX_OVERLAP_SECS {
        return Err(ApiError::invalid(format!("overlap_secs must be 0 to {MAX_OVERLAP_SECS}")));
    }
    let now = now_ms() / 1000;
    let until = now.saturating_add(i64::try_from(body.overlap_secs).unwrap_or(0));
    let secret = plane
        .store
        .rotate_webhook_secret(&caller.actor, &tenant, &webhook, until.saturating_mul(1000))
        .await?;
    let secret = tributary_delivery::signature::WebhookSecret::from_bytes(secret.expose_secret().to_vec());
    Ok(Json(json!({"secret": secret.expose(), "previous_valid_until": until})))
}

/// Checks a listing of an endpoint's records (read_only, the endpoint in the app) and returns
/// its `?limit=`.
async fn listing(
    plane: &ControlPlane,
    caller: &Caller,
    (tenant, app, webhook): (&str, &str, &str),
    query: &HashMap<String, String>,
) -> Result<i64, ApiError> {
    caller.tenant(tenant, Role::ReadOnly)?;
    let limit = limit(query)?;
    endpoint_of(plane, tenant, app, webhook).await?;
    Ok(i64::from(limit))
}

/// `GET …/webhooks/{webhook}/deliveries` (read_only): the delivery log, newest first.
pub(crate) async fn deliveries(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, webhook)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<Vec<Value>>, ApiError> {
    let limit = listing(&plane, &caller, (&tenant, &app, &webhook), &query).await?;
    let log = plane.store.delivery_log(&tenant, &webhook, limit).await?;
    Ok(Json(log.into_iter().map(attempt_view).collect()))
}

/// `GET …/webhooks/{webhook}/dead-letters` (read_only): deliveries that failed every attempt.
pub(crate) async fn dead_letters(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, webhook)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<Vec<Value>>, ApiError> {
    let limit = listing(&plane, &caller, (&tenant, &app, &webhook), &query).await?;
    let dead = plane.store.dead_deliveries(&tenant, &webhook, limit).await?;
    Ok(Json(dead.into_iter().map(delivery_view).collect()))
}

/// `POST …/webhooks/{webhook}/dead-letters/{delivery}/replay` (developer): sends it again now,
/// with its event id and a fresh retry schedule.
pub(crate) async fn replay(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, webhook, delivery)): Path<(String, String, String, String)>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    endpoint_of(&plane, &tenant, &app, &webhook).await?;
    let job = plane.store.delivery(&tenant, &delivery).await?;
    if job.target_id != webhook {
        return Err(tributary_store::StoreError::NotFound("dead delivery").into());
    }
    let now_ms = now_ms();
    plane.store.replay_delivery(&tenant, &delivery, now_ms).await?;
    Ok(Json(delivery_view(plane.store.delivery(&tenant, &delivery).await?)))
}

/// `POST …/webhooks/{webhook}/test` (developer): queues a `webhook.test` event for the endpoint
/// (sent, signed and retried like any other); 202 with its event id.
pub(crate) async fn test(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, webhook)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    endpoint_of(&plane, &tenant, &app, &webhook).await?;
    let now_ms = now_ms();
    let event_id = format!("evt_test_{}", uuid::Uuid::now_v7().simple());
    let payload = json!({"type": "webhook.test", "webhook_id": webhook, "app_id": app, "at": now_ms / 1000});
    let delivery = tributary_store::NewDelivery {
        tenant_id: tenant,
        app_id: app,
        target_id: webhook,
        event_id: event_id.clone(),
        payload: payload.to_string().into_bytes(),
        headers: "{}".into(),
        // No channel event: not counted as one in usage, and sent past the tenant's quota (an
        // endpoint can be tested whatever the month has used).
        events: 0,
    };
    plane.store.enqueue_delivery(&delivery, now_ms).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"event_id": event_id}))))
}
