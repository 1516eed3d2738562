//! `/v1/push/devices`: register, read, list and remove devices.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tributary_delivery::push::webpush::Subscription;
use tributary_relay::http_api::{ApiError, parse_body};
use tributary_store::{Device, DevicePlatform, NewDevice};

use super::{Caller, PushApi, caller, forbidden, invalid, stored};

/// Most bytes of a device's metadata (as JSON).
const MAX_METADATA_BYTES: usize = 4096;
/// Most devices one list returns.
const MAX_PAGE: i64 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Registration {
    platform: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    subscription: Option<WebSubscription>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// A browser's `PushSubscription.toJSON()`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebSubscription {
    endpoint: String,
    keys: WebKeys,
    #[serde(default, rename = "expirationTime")]
    _expiration_time: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebKeys {
    p256dh: String,
    auth: String,
}

/// A device as the API shows it (a Web Push subscription's keys are not shown again).
fn view(device: &Device) -> Value {
    let metadata: Value = serde_json::from_str(&device.metadata).unwrap_or_else(|_| json!({}));
    let mut shown = json!({
        "id": device.id,
        "platform": device.platform.as_str(),
        "client_id": device.client_id,
        "metadata": metadata,
        "created_at": device.created_at,
        "updated_at": device.updated_at,
    });
    let key = if device.platform == DevicePlatform::Web { "endpoint" } else { "token" };
    shown[key] = json!(device.token);
    shown
}

/// Checks a registration and makes the device of it; a client token registers only its own
/// client's devices.
fn new_device(api: &PushApi, caller: &Caller, registration: Registration) -> Result<NewDevice, ApiError> {
    let platform = DevicePlatform::parse(&registration.platform)
        .ok_or_else(|| invalid("platform must be apns, fcm or web"))?;
    let (token, web_keys) = match (platform, registration.token, registration.subscription) {
        (DevicePlatform::Apns, Some(token), None) => {
            if token.len() < 16 || token.len() > 400 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("an APNs device token is 16 to 400 hexadecimal digits"));
            }
            (token.to_ascii_lowercase(), None)
        }
        (DevicePlatform::Fcm, Some(token), None) => {
            if token.is_empty()
                || token.len() > 4096
                || token.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                return Err(invalid("an FCM registration token is 1 to 4,096 characters without spaces"));
            }
            (token, None)
        }
        (DevicePlatform::Web, None, Some(web)) => {
            Subscription::parse(&web.endpoint, &web.keys.p256dh, &web.keys.auth)
                .map_err(|err| invalid(err.to_string()))?;
            // Where the workers will send: the same rules as a webhook's URL.
            api.addresses
                .check_url(&web.endpoint)
                .map_err(|err| invalid(format!("subscription endpoint: {err}")))?;
            let keys = json!({"p256dh": web.keys.p256dh, "auth": web.keys.auth}).to_string();
            (web.endpoint, Some(keys))
        }
        (DevicePlatform::Web, _, _) => return Err(invalid("a web device has a subscription and no token")),
        _ => return Err(invalid("an apns or fcm device has a token and no subscription")),
    };
    let client_id = match (caller.own_client(), registration.client_id) {
        (Some(own), Some(asked)) if asked != own => {
            return Err(forbidden("a client token registers only its own client's devices".into()));
        }
        (Some(own), _) => Some(own.to_owned()),
        (None, asked) => asked,
    };
    if let Some(problem) = client_id.as_deref().and_then(tributary_capability::identifier_problem) {
        return Err(invalid(format!("client_id {problem}")));
    }
    let metadata = Value::Object(registration.metadata.unwrap_or_default()).to_string();
    if metadata.len() > MAX_METADATA_BYTES {
        return Err(invalid(format!("metadata is over {MAX_METADATA_BYTES} bytes")));
    }
    Ok(NewDevice { platform, token, web_keys, client_id, metadata })
}

/// `POST /v1/push/devices`: registers a device, or updates the one its token is registered as.
pub(super) async fn register(
    State(api): State<PushApi>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&api, &headers).await?;
    let new = new_device(&api, &caller, parse_body(body)?)?;
    let (tenant_id, app_id) = caller.app();
    let device = api.store.register_device(tenant_id, app_id, &new).await.map_err(stored)?;
    Ok(Json(view(&device)))
}

/// A device of the caller's app that the caller may see: any for a backend, its own client's
/// for a client token (another client's device is not found, not forbidden: no probing).
pub(super) async fn visible(api: &PushApi, caller: &Caller, device_id: &str) -> Result<Device, ApiError> {
    let (tenant_id, app_id) = caller.app();
    let device = api.store.device(tenant_id, app_id, device_id).await.map_err(stored)?;
    match caller.own_client() {
        Some(own) if device.client_id.as_deref() != Some(own) => {
            Err(stored(tributary_store::StoreError::NotFound("device")))
        }
        _ => Ok(device),
    }
}

/// `GET /v1/push/devices/{device_id}`.
pub(super) async fn read(
    State(api): State<PushApi>,
    Path(device_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&api, &headers).await?;
    Ok(Json(view(&visible(&api, &caller, &device_id).await?)))
}

/// `DELETE /v1/push/devices/{device_id}`: removes the device and its subscriptions.
pub(super) async fn remove(
    State(api): State<PushApi>,
    Path(device_id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let caller = caller(&api, &headers).await?;
    visible(&api, &caller, &device_id).await?;
    let (tenant_id, app_id) = caller.app();
    api.store.remove_device(tenant_id, app_id, &device_id).await.map_err(stored)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /v1/push/devices?client_id=&after=&limit=` (API key): the app's devices in id order,
/// a page at a time; `next` is the `after` of the next page.
pub(super) async fn list(
    State(api): State<PushApi>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&api, &headers).await?;
    caller.backend_only()?;
    let Query(query) = query.map_err(|rejection| invalid(rejection.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid(format!("limit is 1 to {MAX_PAGE}")));
    }
    let (tenant_id, app_id) = caller.app();
    let after = query.after.unwrap_or_default();
    let devices = api
        .store
        .devices(tenant_id, app_id, query.client_id.as_deref(), &after, limit)
        .await
        .map_err(stored)?;
    let next = (devices.len() as i64 == limit).then(|| devices.last().map(|d| d.id.clone())).flatten();
    Ok(Json(json!({"devices": devices.iter().map(view).collect::<Vec<_>>(), "next": next})))
}
