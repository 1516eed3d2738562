//! A push's delivery job: the push and up to a page of devices of one service it goes to.
//!
//! One job per device cost the queue a row, a claim and a recorded attempt per notification,
//! which capped pushes at the store's few thousand jobs a second; a job of many devices is sent
//! over one HTTP/2 connection's concurrent streams and recorded once. What each device's answer
//! decides stays per device: a device delivered or found dead leaves the job, one the service
//! asked to try again stays in it for the retry, and one the service refused is kept, marked
//! with why, for the dead letter (a replay sends the marked ones again).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::message::PushMessage;

/// Most devices in one job: a page of the device registry.
pub const MAX_JOB_DEVICES: usize = 500;

/// A push job: one push to devices of one platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushJob {
    /// The push's id; with a device's id, the stable id of that device's copy (APNs'
    /// `apns-id`), the same on every attempt.
    pub push_id: String,
    /// `apns`, `fcm` or `web`.
    pub platform: String,
    /// The push.
    pub push: PushMessage,
    /// The devices it still goes to.
    pub devices: Vec<PushDevice>,
}

/// A device a push job goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushDevice {
    /// The device.
    pub device_id: String,
    /// Its token, or its subscription's endpoint.
    pub token: String,
    /// A Web Push subscription's keys, `{"p256dh", "auth"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_keys: Option<Value>,
    /// Why its service refused this push, once it has: it is not sent again but by a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The job of one device, as the first version of the pipeline queued them: read as a job of
/// that one device, so jobs queued before an upgrade are still sent.
#[derive(Deserialize)]
struct OneDevice {
    device_id: String,
    platform: String,
    token: String,
    #[serde(default)]
    web_keys: Option<Value>,
    push: PushMessage,
}

impl PushJob {
    /// Reads a job's body; `event_id` is the job's (a one-device job's push id is its part
    /// before the device's id).
    pub fn read(body: &[u8], event_id: &str) -> Option<Self> {
        if let Ok(job) = serde_json::from_slice::<PushJob>(body) {
            return Some(job);
        }
        let one: OneDevice = serde_json::from_slice(body).ok()?;
        let push_id = event_id.rsplit_once(':').map_or(event_id, |(push_id, _)| push_id);
        Some(PushJob {
            push_id: push_id.to_owned(),
            platform: one.platform,
            push: one.push,
            devices: vec![PushDevice {
                device_id: one.device_id,
                token: one.token,
                web_keys: one.web_keys,
                refused: None,
            }],
        })
    }

    /// The stable id of `device`'s copy of this push.
    pub fn copy_id(&self, device: &PushDevice) -> String {
        format!("{}:{}", self.push_id, device.device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_one_device_job_of_the_first_version_is_read_as_a_job_of_that_device() {
        let old = json!({"device_id": "dev_1", "platform": "apns", "token": "ab", "push": {"title": "t"}});
        let job = PushJob::read(old.to_string().as_bytes(), "psh_9:dev_1").unwrap();
        assert_eq!((job.push_id.as_str(), job.devices.len()), ("psh_9", 1));
        assert_eq!(job.copy_id(&job.devices[0]), "psh_9:dev_1");
        let again = PushJob::read(&serde_json::to_vec(&job).unwrap(), "ignored").unwrap();
        assert_eq!(again, job);
        assert!(PushJob::read(b"{}", "x").is_none());
    }
}
