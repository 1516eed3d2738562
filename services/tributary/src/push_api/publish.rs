//! `POST /v1/push/publish`: a backend's direct push to a device, every device of a client, or
//! every device subscribed to a channel (and of the client ids subscribed to it).

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tributary_delivery::push::message::PushMessage;
use tributary_delivery::push::queue::{QueueError, Reach};
use tributary_delivery::rules::stable_id;
use tributary_protocol::ErrorCode;
use tributary_relay::http_api::{ApiError, channel, parse_body};
use tributary_relay::ops::OpError;

use super::{PushApi, caller, invalid, stored};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DirectPush {
    recipient: Recipient,
    push: PushMessage,
}

/// Exactly one of the three.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipient {
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    channel: Option<String>,
}

/// Checks what every service would refuse of the push itself, whichever devices it reaches.
pub(super) fn check(push: &PushMessage) -> Result<(), ApiError> {
    push.check().map_err(|err| invalid(err.to_string()))?;
    let sizes = [
        ("APNs", push.apns_payload().len(), tributary_delivery::push::apns::MAX_PAYLOAD_BYTES),
        ("FCM", push.fcm_message("").to_string().len(), tributary_delivery::push::fcm::MAX_MESSAGE_BYTES),
        ("Web Push", push.web_payload().len(), tributary_delivery::push::webpush::MAX_PLAINTEXT_BYTES),
    ];
    for (service, size, limit) in sizes {
        if size > limit {
            return Err(invalid(format!(
                "the push is {size} bytes for {service}, over its limit of {limit}"
            )));
        }
    }
    Ok(())
}

/// `POST /v1/push/publish` (API key) with `{"recipient": {...}, "push": {...}}`: queues jobs
/// of the devices reached (durably: the answer comes once they are in the store) and answers `202`
/// with the push's id and how many devices it reaches. With an `Idempotency-Key` the push's id
/// is derived from it, so a retried request queues nothing twice.
pub(super) async fn publish(
    State(api): State<PushApi>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = caller(&api, &headers).await?;
    caller.backend_only()?;
    let request: DirectPush = parse_body(body)?;
    check(&request.push)?;
    let (tenant_id, app_id) = caller.app();
    let push_id = match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(key) if !key.is_empty() && key.len() <= 256 => stable_id("psh_", app_id, key),
        Some(_) => return Err(invalid("Idempotency-Key is 1 to 256 characters")),
        None => format!("psh_{}", uuid::Uuid::new_v4().simple()),
    };
    let target = match (request.recipient.device_id, request.recipient.client_id, request.recipient.channel) {
        (Some(id), None, None) => Reach::Device(id),
        (None, Some(client), None) => Reach::Client(client),
        (None, None, Some(name)) => Reach::Channel(channel(&name)?.as_str().to_owned()),
        _ => return Err(invalid("name exactly one of recipient.device_id, client_id and channel")),
    };
    let reached = queue(&api.store, tenant_id, app_id, &target, &push_id, &request.push).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"push_id": push_id, "devices": reached}))))
}

/// Queues a push through [`tributary_delivery::push::queue`], its errors as the API says them.
pub(super) async fn queue(
    store: &tributary_store::Store,
    tenant_id: &str,
    app_id: &str,
    reach: &Reach,
    push_id: &str,
    push: &PushMessage,
) -> Result<usize, ApiError> {
    tributary_delivery::push::queue::queue(store, tenant_id, app_id, reach, push_id, push).await.map_err(
        |err| match err {
            QueueError::TooMany => invalid(err.to_string()),
            QueueError::Store(err) => stored(err),
        },
    )
}

/// The relay's sink of publishes' push sections. It holds the relay weakly: the relay holds it,
/// and a cycle would keep a stopped relay (its timers, its parked sessions) alive.
pub struct PublishedPushes {
    store: tributary_store::Store,
    relay: std::sync::Weak<tributary_relay::state::RelayState>,
}

impl PublishedPushes {
    /// The sink of `relay`'s publishes, queuing into `store`.
    pub fn new(
        store: tributary_store::Store,
        relay: &std::sync::Arc<tributary_relay::state::RelayState>,
    ) -> Self {
        Self { store, relay: std::sync::Arc::downgrade(relay) }
    }
}

#[async_trait::async_trait]
impl tributary_relay::state::PushSink for PublishedPushes {
    fn check(&self, push: &serde_json::value::RawValue) -> Result<(), OpError> {
        let push: PushMessage = serde_json::from_str(push.get())
            .map_err(|err| OpError::new(ErrorCode::InvalidParameter, format!("push: {err}")))?;
        check(&push).map_err(|err| err.0)
    }

    async fn push_on_publish(
        &self,
        app: &str,
        channel: &str,
        message_id: &str,
        push: &serde_json::value::RawValue,
    ) -> Result<(String, usize), OpError> {
        let push: PushMessage = serde_json::from_str(push.get())
            .map_err(|err| OpError::new(ErrorCode::InvalidParameter, format!("push: {err}")))?;
        // The publish authenticated the app: its policy (and so its tenant) is loaded.
        let relay = self.relay.upgrade().ok_or(ErrorCode::Unavailable)?;
        let tenant =
            relay.policies.peek(app).map(|p| p.tenant_id.to_string()).ok_or(ErrorCode::Unavailable)?;
        let push_id = stable_id("psh_", app, message_id);
        let reached = queue(&self.store, &tenant, app, &Reach::Channel(channel.to_owned()), &push_id, &push)
            .await
            .map_err(|err| err.0)?;
        Ok((push_id, reached))
    }
}
