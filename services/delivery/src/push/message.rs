//! What a push says, and the request each service is sent of it.
//!
//! A push section (of a publish, or of a direct push) is one message for every platform: a
//! title, a body and data, with per-platform overrides merged last (`apns` into APNs' payload,
//! `fcm` into FCM's `message`, `web` into the JSON a service worker receives). A delivery job
//! carries the section and the devices it goes to ([`super::job::PushJob`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::PushError;

/// A push section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushMessage {
    /// The notification's title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The notification's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Data for the app (FCM takes string values only: others are sent as JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
    /// Notifications with the same id replace each other on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_id: Option<String>,
    /// How long a service keeps it for an offline device, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// `high` (at once; the default) or `normal` (when it suits the device's battery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// Merged into APNs' payload last (`{"aps": {"sound": "default"}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns: Option<Map<String, Value>>,
    /// Merged into FCM's `message` last (`{"android": {"notification": {"icon": "stock"}}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fcm: Option<Map<String, Value>>,
    /// Merged into the Web Push JSON last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<Map<String, Value>>,
}

impl PushMessage {
    /// Checks what no platform would take: nothing to show or send, a priority that is not one,
    /// a collapse id over 64 bytes.
    pub fn check(&self) -> Result<(), PushError> {
        let empty =
            self.title.is_none() && self.body.is_none() && self.data.as_ref().is_none_or(Map::is_empty);
        if empty && self.apns.is_none() && self.fcm.is_none() && self.web.is_none() {
            return Err(PushError::Invalid("push (no title, body or data)"));
        }
        if self.priority.as_deref().is_some_and(|p| p != "high" && p != "normal") {
            return Err(PushError::Invalid("priority (high or normal)"));
        }
        if self.collapse_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > 64) {
            return Err(PushError::Invalid("collapse_id (1 to 64 bytes)"));
        }
        Ok(())
    }

    fn high(&self) -> bool {
        self.priority.as_deref() != Some("normal")
    }

    /// APNs' payload: `aps.alert` of the title and body, the data beside `aps`, the overrides.
    pub fn apns_payload(&self) -> Vec<u8> {
        let mut payload = Map::new();
        let mut aps = Map::new();
        if self.title.is_some() || self.body.is_some() {
            let mut alert = Map::new();
            if let Some(title) = &self.title {
                alert.insert("title".into(), json!(title));
            }
            if let Some(body) = &self.body {
                alert.insert("body".into(), json!(body));
            }
            aps.insert("alert".into(), Value::Object(alert));
        } else {
            aps.insert("content-available".into(), json!(1));
        }
        payload.insert("aps".into(), Value::Object(aps));
        for (key, value) in self.data.iter().flatten() {
            if key != "aps" {
                payload.insert(key.clone(), value.clone());
            }
        }
        let mut payload = Value::Object(payload);
        if let Some(overrides) = &self.apns {
            merge(&mut payload, &Value::Object(overrides.clone()));
        }
        payload.to_string().into_bytes()
    }

    /// Whether APNs shows it (an alert) or only wakes the app (background, priority 5).
    pub fn apns_is_alert(&self) -> bool {
        self.title.is_some() || self.body.is_some()
    }

    /// APNs' priority: 10 for `high` alerts, 5 otherwise (a background push must be 5).
    pub fn apns_priority(&self) -> u8 {
        if self.apns_is_alert() && self.high() { 10 } else { 5 }
    }

    /// FCM's `message` for `token`: `notification`, `data` (string values), Android's collapse
    /// key, TTL and priority, the overrides.
    pub fn fcm_message(&self, token: &str) -> Value {
        let mut message = json!({ "token": token });
        if self.title.is_some() || self.body.is_some() {
            let mut notification = Map::new();
            if let Some(title) = &self.title {
                notification.insert("title".into(), json!(title));
            }
            if let Some(body) = &self.body {
                notification.insert("body".into(), json!(body));
            }
            message["notification"] = Value::Object(notification);
        }
        if let Some(data) = &self.data {
            let strings: Map<String, Value> = data
                .iter()
                .map(|(key, value)| {
                    let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                    (key.clone(), Value::String(text))
                })
                .collect();
            message["data"] = Value::Object(strings);
        }
        let mut android = Map::new();
        android.insert("priority".into(), json!(if self.high() { "high" } else { "normal" }));
        if let Some(id) = &self.collapse_id {
            android.insert("collapse_key".into(), json!(id));
        }
        if let Some(ttl) = self.ttl {
            android.insert("ttl".into(), json!(format!("{ttl}s")));
        }
        message["android"] = Value::Object(android);
        if let Some(overrides) = &self.fcm {
            merge(&mut message, &Value::Object(overrides.clone()));
        }
        message
    }

    /// The JSON a browser's service worker receives: title, body, data, the overrides.
    pub fn web_payload(&self) -> Vec<u8> {
        let mut payload = json!({});
        if let Some(title) = &self.title {
            payload["title"] = json!(title);
        }
        if let Some(body) = &self.body {
            payload["body"] = json!(body);
        }
        if let Some(data) = &self.data {
            payload["data"] = Value::Object(data.clone());
        }
        if let Some(overrides) = &self.web {
            merge(&mut payload, &Value::Object(overrides.clone()));
        }
        payload.to_string().into_bytes()
    }
}

/// Merges `patch` into `target`: objects key by key (recursively), anything else replaced.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// The delivery target of an app's pushes through a service: `push:<app>:<service>` (one queue
/// per app and service, so one app's dead credentials hold back only its own pushes).
pub fn target_id(app_id: &str, service: &str) -> String {
    format!("push:{app_id}:{service}")
}

/// The app and service of a push target, if `target_id` is one.
pub fn parse_target(target_id: &str) -> Option<(&str, &str)> {
    target_id.strip_prefix("push:")?.split_once(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> PushMessage {
        PushMessage {
            title: Some("Order 42".into()),
            body: Some("Your driver is here".into()),
            data: serde_json::from_value(json!({"order": 42, "eta": "2 min"})).unwrap(),
            collapse_id: Some("order-42".into()),
            ttl: Some(600),
            ..Default::default()
        }
    }

    #[test]
    fn each_platform_gets_its_own_request_with_the_overrides_last() {
        let mut push = message();
        push.apns = serde_json::from_value(json!({"aps": {"sound": "default"}})).unwrap();
        push.fcm = serde_json::from_value(json!({"android": {"notification": {"icon": "car"}}})).unwrap();
        push.web = serde_json::from_value(json!({"icon": "/car.png"})).unwrap();
        let apns: Value = serde_json::from_slice(&push.apns_payload()).unwrap();
        assert_eq!(
            apns,
            json!({"aps": {"alert": {"title": "Order 42", "body": "Your driver is here"}, "sound": "default"},
                   "order": 42, "eta": "2 min"})
        );
        assert_eq!((push.apns_is_alert(), push.apns_priority()), (true, 10));
        let fcm = push.fcm_message("tok");
        assert_eq!(fcm["data"], json!({"order": "42", "eta": "2 min"}), "FCM data values are strings");
        assert_eq!(
            fcm["android"],
            json!({"priority": "high", "collapse_key": "order-42", "ttl": "600s",
                                          "notification": {"icon": "car"}})
        );
        assert_eq!(fcm["notification"]["title"], "Order 42");
        let web: Value = serde_json::from_slice(&push.web_payload()).unwrap();
        assert_eq!(web["icon"], "/car.png");
        assert_eq!(web["data"]["order"], 42);
    }

    #[test]
    fn data_alone_is_a_background_push() {
        let push = PushMessage {
            data: serde_json::from_value(json!({"sync": true})).unwrap(),
            ..Default::default()
        };
        assert!(!push.apns_is_alert());
        assert_eq!(push.apns_priority(), 5);
        let apns: Value = serde_json::from_slice(&push.apns_payload()).unwrap();
        assert_eq!(apns["aps"], json!({"content-available": 1}));
        assert!(push.fcm_message("t").get("notification").is_none());
    }

    #[test]
    fn a_push_no_platform_would_take_is_refused() {
        assert!(PushMessage::default().check().is_err());
        assert!(PushMessage { priority: Some("urgent".into()), ..message() }.check().is_err());
        assert!(PushMessage { collapse_id: Some("x".repeat(65)), ..message() }.check().is_err());
        assert!(message().check().is_ok());
        assert_eq!(parse_target(&target_id("app_1", "apns")), Some(("app_1", "apns")));
        assert_eq!(parse_target("wh_1"), None);
    }
}
