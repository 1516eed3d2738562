//! `POST /v1/push/publish`: a backend's direct push to a device, every device of a client, or
//! every device subscribed to a channel (and of the client ids subscribed to it).

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tributary_delivery::push::deliver::service_of;
use tributary_delivery::push::job::{MAX_JOB_DEVICES, PushDevice, PushJob};
use tributary_delivery::push::message::{PushMessage, target_id};
use tributary_delivery::rules::stable_id;
use tributary_protocol::ErrorCode;
use tributary_relay::http_api::{ApiError, channel, parse_body};
use tributary_relay::ops::OpError;
use tributary_store::{NewDelivery, PushAddress};

use super::{PushApi, caller, invalid, stored};

/// Most devices one push reaches.
const MAX_DEVICES: usize = 100_000;
/// Devices read (and queued, a job per service) at a time.
const PAGE: i64 = MAX_JOB_DEVICES as i64;

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

/// Whom a push reaches.
pub(super) enum Reach {
    /// One device.
    Device(String),
    /// Every device of a client.
    Client(String),
    /// Every device subscribed to a channel, and of the client ids subscribed to it.
    Channel(String),
}

/// Queues the jobs of the devices `reach` names, a page at a time; returns how many devices.
/// A channel's devices' ids are read once (from indexes alone), then the devices a page at a
/// time: paging through the devices themselves read every remaining device per page.
pub(super) async fn queue(
    store: &tributary_store::Store,
    tenant_id: &str,
    app_id: &str,
    reach: &Reach,
    push_id: &str,
    push: &PushMessage,
) -> Result<usize, ApiError> {
    let too_many = || invalid(format!("a push reaches at most {MAX_DEVICES} devices"));
    let now = tributary_delivery::worker::now_ms();
    match reach {
        Reach::Device(id) => {
            let device = store.device(tenant_id, app_id, id).await.map_err(stored)?;
            let jobs = jobs(tenant_id, app_id, push_id, &[device.into()], push);
            store.enqueue_deliveries(&jobs, now).await.map_err(stored)?;
            Ok(1)
        }
        Reach::Client(client) => {
            let mut reached = 0usize;
            let mut after = String::new();
            loop {
                let page =
                    store.devices(tenant_id, app_id, Some(client), &after, PAGE).await.map_err(stored)?;
                let Some(last) = page.last() else { break };
                after = last.id.clone();
                reached += page.len();
                if reached > MAX_DEVICES {
                    return Err(too_many());
                }
                let addresses: Vec<PushAddress> = page.into_iter().map(PushAddress::from).collect();
                let jobs = jobs(tenant_id, app_id, push_id, &addresses, push);
                store.enqueue_deliveries(&jobs, now).await.map_err(stored)?;
                if (addresses.len() as i64) < PAGE {
                    break;
                }
            }
            Ok(reached)
        }
        Reach::Channel(name) => {
            let limit = i64::try_from(MAX_DEVICES + 1).unwrap_or(i64::MAX);
            let ids = store.channel_push_device_ids(app_id, name, "", limit).await.map_err(stored)?;
            if ids.len() > MAX_DEVICES {
                return Err(too_many());
            }
            for chunk in ids.chunks(MAX_JOB_DEVICES) {
                let page = store.push_addresses(app_id, chunk).await.map_err(stored)?;
                let jobs = jobs(tenant_id, app_id, push_id, &page, push);
                store.enqueue_deliveries(&jobs, now).await.map_err(stored)?;
            }
            Ok(ids.len())
        }
    }
}

/// The jobs of one page of devices: one per service, of the page's devices of that service.
/// A job's event id is the push's and its first device's, the same on every retry of the
/// request (with an idempotency key) and every attempt.
fn jobs(
    tenant_id: &str,
    app_id: &str,
    push_id: &str,
    page: &[PushAddress],
    push: &PushMessage,
) -> Vec<NewDelivery> {
    let mut by_platform: Vec<PushJob> = Vec::new();
    for device in page {
        if service_of(device.platform.as_str()).is_none() {
            continue;
        }
        let platform = device.platform.as_str();
        let at = match by_platform.iter().position(|job| job.platform == platform) {
            Some(at) => at,
            None => {
                by_platform.push(PushJob {
                    push_id: push_id.to_owned(),
                    platform: platform.to_owned(),
                    push: push.clone(),
                    devices: Vec::new(),
                });
                by_platform.len() - 1
            }
        };
        by_platform[at].devices.push(PushDevice {
            device_id: device.id.clone(),
            token: device.token.clone(),
            web_keys: device.web_keys.as_deref().and_then(|keys| serde_json::from_str(keys).ok()),
            refused: None,
        });
    }
    by_platform
        .into_iter()
        .filter_map(|job| {
            let service = service_of(&job.platform)?;
            Some(NewDelivery {
                tenant_id: tenant_id.to_owned(),
                app_id: app_id.to_owned(),
                target_id: target_id(app_id, service),
                event_id: format!("{push_id}:{}", job.devices.first()?.device_id),
                events: i64::try_from(job.devices.len()).unwrap_or(i64::MAX),
                payload: serde_json::to_vec(&job).ok()?,
                headers: "{}".into(),
            })
        })
        .collect()
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
