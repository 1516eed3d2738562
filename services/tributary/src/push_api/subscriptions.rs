//! `/v1/push/channels/{channel}/subscriptions`: which devices and client ids a channel's pushes
//! reach.

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tributary_relay::http_api::{ApiError, channel, parse_body};
use tributary_store::PushTarget;

use super::{Caller, PushApi, caller, forbidden, invalid, stored};

/// A device or a client id, exactly one (the body of a subscribe, the query of an unsubscribe).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Target {
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

/// What `target` names, if the caller may name it: a client token names only its own client id
/// or a device of its own client.
async fn target(api: &PushApi, caller: &Caller, target: Target) -> Result<PushTarget, ApiError> {
    match (target.device_id, target.client_id) {
        (Some(device_id), None) => {
            if caller.own_client().is_some() {
                super::devices::visible(api, caller, &device_id).await?;
            }
            Ok(PushTarget::Device(device_id))
        }
        (None, Some(client_id)) => {
            if let Some(problem) = tributary_capability::identifier_problem(&client_id) {
                return Err(invalid(format!("client_id {problem}")));
            }
            match caller.own_client() {
                Some(own) if own != client_id => {
                    Err(forbidden("a client token subscribes only its own client id".into()))
                }
                _ => Ok(PushTarget::Client(client_id)),
            }
        }
        _ => Err(invalid("name exactly one of device_id and client_id")),
    }
}

/// `POST /v1/push/channels/{channel}/subscriptions` with `{"device_id"}` or `{"client_id"}`:
/// the channel's pushes reach that device, or every device of that client. Subscribing again
/// changes nothing.
pub(super) async fn subscribe(
    State(api): State<PushApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let caller = caller(&api, &headers).await?;
    let channel = channel(&name)?;
    caller.allow_channel(&channel)?;
    let target = target(&api, &caller, parse_body(body)?).await?;
    let (tenant_id, app_id) = caller.app();
    api.store.subscribe_push(tenant_id, app_id, channel.as_str(), &target).await.map_err(stored)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/push/channels/{channel}/subscriptions?device_id=…` (or `client_id=…`); 404 if it
/// was not subscribed.
pub(super) async fn unsubscribe(
    State(api): State<PushApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<Target>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let caller = caller(&api, &headers).await?;
    let channel = channel(&name)?;
    caller.allow_channel(&channel)?;
    let Query(query) = query.map_err(|rejection| invalid(rejection.body_text()))?;
    let target = target(&api, &caller, query).await?;
    let (tenant_id, app_id) = caller.app();
    if api.store.unsubscribe_push(tenant_id, app_id, channel.as_str(), &target).await.map_err(stored)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(stored(tributary_store::StoreError::NotFound("push subscription")))
    }
}

/// `GET /v1/push/channels/{channel}/subscriptions` (API key): who the channel's pushes reach.
pub(super) async fn list(
    State(api): State<PushApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&api, &headers).await?;
    caller.backend_only()?;
    let channel = channel(&name)?;
    let (tenant_id, app_id) = caller.app();
    let found =
        api.store.push_subscriptions(tenant_id, app_id, Some(channel.as_str())).await.map_err(stored)?;
    let shown: Vec<Value> = found
        .iter()
        .map(|subscription| match &subscription.target {
            PushTarget::Device(id) => json!({"device_id": id, "created_at": subscription.created_at}),
            PushTarget::Client(id) => json!({"client_id": id, "created_at": subscription.created_at}),
        })
        .collect();
    Ok(Json(json!({"channel": channel.as_str(), "subscriptions": shown})))
}
