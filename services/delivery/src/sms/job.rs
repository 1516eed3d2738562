//! A text's delivery job, queued for the `sms:<app>` target: the recipient, the body, and what
//! the text's record needs (its id, its cost, where it came from).

use serde::{Deserialize, Serialize};

/// A text to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsJob {
    /// The text's id (`sms_…`): its record's, and the job's event id.
    pub sms_id: String,
    /// The recipient, E.164.
    pub to: String,
    /// What it says.
    pub body: String,
    /// `api`, or the id of the rule that sent it.
    pub origin: String,
    /// What it costs, in segments, as counted when it was queued.
    pub segments: u32,
}

impl SmsJob {
    /// Reads a job's body.
    pub fn read(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }
}

/// The delivery target of an app's texts.
pub fn target_id(app_id: &str) -> String {
    format!("sms:{app_id}")
}

/// The app of an SMS target, if `target_id` is one.
pub fn parse_target(target_id: &str) -> Option<&str> {
    target_id.strip_prefix("sms:")
}

/// Where Twilio reports a text's progress: `base` (the server's public URL) and the text's
/// route, which names the app and the text (so a callback needs no lookup by Twilio's SID, and
/// its signature covers both).
pub fn status_callback(base: &str, app_id: &str, sms_id: &str) -> String {
    format!("{}/v1/sms/status/{app_id}/{sms_id}", base.trim_end_matches('/'))
}
