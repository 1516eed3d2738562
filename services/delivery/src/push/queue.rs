//! Queuing a push: the devices it reaches, read from the registry a page at a time, become jobs
//! of up to [`MAX_JOB_DEVICES`] devices of one service each. Used by the HTTP API (a direct
//! push, a publish's push section) and by the workers (a rule's push).

use tributary_store::{NewDelivery, PushAddress, Store, StoreError};

use super::deliver::service_of;
use super::job::{MAX_JOB_DEVICES, PushDevice, PushJob};
use super::message::{PushMessage, target_id};

/// Most devices one push reaches.
pub const MAX_DEVICES: usize = 100_000;
/// Devices read (and queued, a job per service) at a time.
const PAGE: i64 = MAX_JOB_DEVICES as i64;

/// Whom a push reaches.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// One device.
    Device(String),
    /// Every device of a client.
    Client(String),
    /// Every device subscribed to a channel, and of the client ids subscribed to it.
    Channel(String),
}

/// Why a push was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// It reaches more than [`MAX_DEVICES`] devices.
    #[error("a push reaches at most {MAX_DEVICES} devices")]
    TooMany,
    /// The store failed (or the device does not exist: `NotFound`).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Queues the jobs of the devices `reach` names, a page at a time; returns how many devices.
/// A channel's devices' ids are read once (from indexes alone), then the devices a page at a
/// time: paging through the devices themselves read every remaining device per page. Queuing
/// again with the same `push_id` queues nothing twice (a job's event id is the push's and its
/// first device's).
pub async fn queue(
    store: &Store,
    tenant_id: &str,
    app_id: &str,
    reach: &Reach,
    push_id: &str,
    push: &PushMessage,
) -> Result<usize, QueueError> {
    let now = crate::worker::now_ms();
    match reach {
        Reach::Device(id) => {
            let device = store.device(tenant_id, app_id, id).await?;
            store.enqueue_deliveries(&jobs(tenant_id, app_id, push_id, &[device.into()], push), now).await?;
            Ok(1)
        }
        Reach::Client(client) => {
            let mut reached = 0usize;
            let mut after = String::new();
            loop {
                let page = store.devices(tenant_id, app_id, Some(client), &after, PAGE).await?;
                let Some(last) = page.last() else { break };
                after = last.id.clone();
                reached += page.len();
                if reached > MAX_DEVICES {
                    return Err(QueueError::TooMany);
                }
                let addresses: Vec<PushAddress> = page.into_iter().map(PushAddress::from).collect();
                store.enqueue_deliveries(&jobs(tenant_id, app_id, push_id, &addresses, push), now).await?;
                if (addresses.len() as i64) < PAGE {
                    break;
                }
            }
            Ok(reached)
        }
        Reach::Channel(name) => {
            let limit = i64::try_from(MAX_DEVICES + 1).unwrap_or(i64::MAX);
            let ids = store.channel_push_device_ids(app_id, name, "", limit).await?;
            if ids.len() > MAX_DEVICES {
                return Err(QueueError::TooMany);
            }
            for chunk in ids.chunks(MAX_JOB_DEVICES) {
                let page = store.push_addresses(app_id, chunk).await?;
                store.enqueue_deliveries(&jobs(tenant_id, app_id, push_id, &page, push), now).await?;
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
