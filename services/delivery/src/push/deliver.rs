//! Sending one device's copy of a push with an app's credentials: which client, which request.

use serde_json::Value;

use super::apns::{ApnsClient, ApnsKey, ApnsRequest, PushType};
use super::fcm::{FcmClient, ServiceAccount};
use super::job::{PushDevice, PushJob};
use super::webpush::{Subscription, VapidKey, WebPushClient, WebPushOptions};
use super::{PushError, PushOutcome, unix_now};

/// How long a Web Push service keeps a message for an offline browser when the push names no
/// TTL: a day.
const DEFAULT_WEB_TTL_SECS: u32 = 86_400;

/// An app's credentials for one service, read and ready to sign with.
pub enum PushSender {
    /// An APNs key, the app's bundle id, and whether it is a development build's (sandbox).
    Apns {
        /// The signing key.
        key: ApnsKey,
        /// The bundle id (`apns-topic`).
        topic: String,
        /// Whether pushes go to APNs' development service.
        sandbox: bool,
    },
    /// An FCM service account.
    Fcm(ServiceAccount),
    /// A VAPID key.
    Web(VapidKey),
}

impl PushSender {
    /// Reads credentials as the store keeps them: `service` (`apns`, `fcm`, `webpush`), the
    /// settings (JSON) and the secret (the `.p8` key, the service-account file, the VAPID key).
    pub fn from_stored(service: &str, settings: &str, secret: &[u8]) -> Result<Self, PushError> {
        let settings: Value = serde_json::from_str(settings)
            .map_err(|_| PushError::Credentials("the stored settings are not JSON".into()))?;
        let text = std::str::from_utf8(secret)
            .map_err(|_| PushError::Credentials("the secret is not text".into()))?;
        let field = |name: &str| settings[name].as_str().unwrap_or_default().to_owned();
        match service {
            "apns" => Ok(PushSender::Apns {
                key: ApnsKey::from_p8(&field("team_id"), &field("key_id"), secret)?,
                topic: field("topic"),
                sandbox: field("environment") == "sandbox",
            }),
            "fcm" => Ok(PushSender::Fcm(ServiceAccount::from_json(text)?)),
            "webpush" => Ok(PushSender::Web(VapidKey::from_pem(text, &field("subject"))?)),
            _ => Err(PushError::Credentials(format!("no push service is called {service}"))),
        }
    }
}

/// The service a device of `platform` is pushed through (as the store names services).
pub fn service_of(platform: &str) -> Option<&'static str> {
    match platform {
        "apns" => Some("apns"),
        "fcm" => Some("fcm"),
        "web" => Some("webpush"),
        _ => None,
    }
}

/// A UUID (canonical form, as APNs takes an `apns-id`) made from a device's copy's stable id:
/// the same for every attempt of it.
fn uuid_of(copy_id: &str) -> String {
    use sha2::Digest as _;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = sha2::Sha256::digest(copy_id.as_bytes());
    let mut uuid = String::with_capacity(36);
    for (n, byte) in digest[..16].iter().enumerate() {
        if matches!(n, 4 | 6 | 8 | 10) {
            uuid.push('-');
        }
        uuid.push(char::from(HEX[usize::from(byte >> 4)]));
        uuid.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    uuid
}

/// Most of one job's requests in flight at once: APNs takes up to a thousand concurrent
/// streams on a connection, and a worker runs a few jobs of a target at once.
pub const JOB_CONCURRENCY: usize = 250;

/// The clients a worker pushes with.
pub struct PushClients {
    apns: ApnsClient,
    apns_sandbox: ApnsClient,
    fcm: FcmClient,
    web: WebPushClient,
}

/// The parts of a push's requests that are the same for every device, made once per job.
struct Prepared {
    apns_payload: Vec<u8>,
    web_payload: Vec<u8>,
    expiration: Option<u64>,
}

impl PushClients {
    /// Clients of APNs (production and sandbox), FCM and Web Push.
    pub fn new(apns: ApnsClient, apns_sandbox: ApnsClient, fcm: FcmClient, web: WebPushClient) -> Self {
        Self { apns, apns_sandbox, fcm, web }
    }

    /// Sends `job` with `sender` to each of its devices not refused yet, [`JOB_CONCURRENCY`]
    /// at a time; returns each device's answer, by its index in `job.devices`.
    pub async fn send_job(
        &self,
        sender: &PushSender,
        job: &PushJob,
    ) -> Vec<(usize, Result<PushOutcome, PushError>)> {
        use futures::StreamExt as _;
        let push = &job.push;
        let prepared = Prepared {
            apns_payload: if job.platform == "apns" { push.apns_payload() } else { Vec::new() },
            web_payload: if job.platform == "web" { push.web_payload() } else { Vec::new() },
            expiration: push.ttl.map(|ttl| unix_now() + u64::from(ttl)),
        };
        let prepared = &prepared;
        // By index: a stream of borrowed devices makes a future the worker cannot spawn (its
        // closures would have to hold for any lifetime).
        let unrefused: Vec<usize> =
            (0..job.devices.len()).filter(|&i| job.devices[i].refused.is_none()).collect();
        futures::stream::iter(unrefused)
            .map(|index| async move { (index, self.send(sender, job, &job.devices[index], prepared).await) })
            .buffer_unordered(JOB_CONCURRENCY)
            .collect()
            .await
    }

    /// Sends `job`'s push to one of its devices.
    async fn send(
        &self,
        sender: &PushSender,
        job: &PushJob,
        device: &PushDevice,
        prepared: &Prepared,
    ) -> Result<PushOutcome, PushError> {
        let push = &job.push;
        match (sender, job.platform.as_str()) {
            (PushSender::Apns { key, topic, sandbox }, "apns") => {
                let id = uuid_of(&job.copy_id(device));
                let request = ApnsRequest {
                    device_token: &device.token,
                    topic,
                    push_type: if push.apns_is_alert() { PushType::Alert } else { PushType::Background },
                    priority: Some(push.apns_priority()),
                    expiration: prepared.expiration,
                    collapse_id: push.collapse_id.as_deref(),
                    id: Some(&id),
                    payload: &prepared.apns_payload,
                };
                let client = if *sandbox { &self.apns_sandbox } else { &self.apns };
                client.send(key, request).await
            }
            (PushSender::Fcm(account), "fcm") => {
                self.fcm.send(account, &push.fcm_message(&device.token)).await
            }
            (PushSender::Web(vapid), "web") => {
                let keys = device
                    .web_keys
                    .as_ref()
                    .ok_or_else(|| PushError::DeviceToken("a subscription's keys".into()))?;
                let key = |name: &str| keys[name].as_str().unwrap_or_default().to_owned();
                let subscription = Subscription::parse(&device.token, &key("p256dh"), &key("auth"))?;
                // A Web Push topic is at most 32 base64url characters: a collapse id that is not
                // one is not sent as one.
                let topic = push.collapse_id.as_deref().filter(|id| {
                    id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
                let options = WebPushOptions {
                    ttl: push.ttl.unwrap_or(DEFAULT_WEB_TTL_SECS),
                    urgency: Some(if push.priority.as_deref() == Some("normal") { "normal" } else { "high" }),
                    topic,
                };
                self.web.send(vapid, &subscription, &prepared.web_payload, options).await
            }
            _ => Err(PushError::Invalid("platform (the device's and the credentials' service differ)")),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_copys_apns_id_is_a_uuid_made_of_its_stable_id() {
        let id = super::uuid_of("psh_1:dev_1");
        assert_eq!(id, super::uuid_of("psh_1:dev_1"));
        assert_ne!(id, super::uuid_of("psh_1:dev_2"));
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{id}");
        assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
    }
}
