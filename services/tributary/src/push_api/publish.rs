//! `POST /v1/push/publish`: a backend's direct push to a device, every device of a client, or
//! every device subscribed to a channel (and of the client ids subscribed to it).

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tributary_delivery::push::deliver::service_of;
use tributary_delivery::push::message::{PushJob, PushMessage, target_id};
use tributary_relay::http_api::{ApiError, channel, parse_body};
use tributary_store::{Device, NewDelivery};

use super::{PushApi, caller, invalid, stored};

/// Most devices one push reaches.
const MAX_DEVICES: usize = 100_000;
/// Devices read (and jobs queued) at a time.
const PAGE: i64 = 500;

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
fn check(push: &PushMessage) -> Result<(), ApiError> {
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

/// `POST /v1/push/publish` (API key) with `{"recipient": {...}, "push": {...}}`: queues one job
/// per device reached (durably: the answer comes once they are in the store) and answers `202`
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
        Some(key) if !key.is_empty() && key.len() <= 256 => {
            let digest = Sha256::new().chain_update(app_id).chain_update(b"\n").chain_update(key).finalize();
            format!("psh_{}", digest[..12].iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
        Some(_) => return Err(invalid("Idempotency-Key is 1 to 256 characters")),
        None => format!("psh_{}", uuid::Uuid::new_v4().simple()),
    };
    let Recipient { device_id, client_id, channel: channel_name } = request.recipient;
    let mut reached = 0usize;
    let mut after = String::new();
    loop {
        let page: Vec<Device> = match (&device_id, &client_id, &channel_name) {
            (Some(id), None, None) => match after.is_empty() {
                true => vec![api.store.device(tenant_id, app_id, id).await.map_err(stored)?],
                false => Vec::new(),
            },
            (None, Some(client), None) => {
                api.store.devices(tenant_id, app_id, Some(client), &after, PAGE).await.map_err(stored)?
            }
            (None, None, Some(name)) => {
                let name = channel(name)?;
                api.store.channel_push_devices(app_id, name.as_str(), &after, PAGE).await.map_err(stored)?
            }
            _ => return Err(invalid("name exactly one of recipient.device_id, client_id and channel")),
        };
        let Some(last) = page.last() else { break };
        after = last.id.clone();
        reached += page.len();
        if reached > MAX_DEVICES {
            return Err(invalid(format!("a push reaches at most {MAX_DEVICES} devices")));
        }
        let jobs: Vec<NewDelivery> = page
            .iter()
            .filter_map(|device| job(tenant_id, app_id, &push_id, device, &request.push))
            .collect();
        api.store.enqueue_deliveries(&jobs, tributary_delivery::worker::now_ms()).await.map_err(stored)?;
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"push_id": push_id, "devices": reached}))))
}

/// One device's job of the push `push_id`: its event id is the push's and the device's, the
/// same on every retry of the request (with an idempotency key) and every attempt.
fn job(
    tenant_id: &str,
    app_id: &str,
    push_id: &str,
    device: &Device,
    push: &PushMessage,
) -> Option<NewDelivery> {
    let service = service_of(device.platform.as_str())?;
    let web_keys = device.web_keys.as_deref().and_then(|keys| serde_json::from_str(keys).ok());
    let copy = PushJob {
        device_id: device.id.clone(),
        platform: device.platform.as_str().to_owned(),
        token: device.token.clone(),
        web_keys,
        push: push.clone(),
    };
    Some(NewDelivery {
        tenant_id: tenant_id.to_owned(),
        app_id: app_id.to_owned(),
        target_id: target_id(app_id, service),
        event_id: format!("{push_id}:{}", device.id),
        payload: serde_json::to_vec(&copy).ok()?,
        headers: "{}".into(),
        events: 1,
    })
}
