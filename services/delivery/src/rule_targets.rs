//! A rule's SMS or push target: what it sends for each event it matches, written as templates
//! filled in from the event.
//!
//! A template's `{{path}}` is replaced by what the path names in the event as an enveloped body
//! shows it (`kind`, `channel`, `message.data.temperature`, `message.client_id`,
//! `member.client_id`, `client.client_id`…): a string as it is, a number or `true` as its text, an
//! object or array as its JSON, nothing for a path the event does not have. Each event makes its
//! own texts (one per recipient) or push, with ids derived from the rule and the event's feed
//! position, so routing the same event again queues nothing twice.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tributary_engine::FeedEntry;
use tributary_store::NewDelivery;

use crate::push::message::PushMessage;
use crate::push::queue::Reach;
use crate::rules::stable_id;
use crate::sms::job::SmsJob;
use crate::sms::text;

/// Most recipients of one SMS rule.
pub const MAX_RECIPIENTS: usize = 10;

/// An SMS target: texts to fixed numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsTarget {
    /// The recipients, E.164.
    pub to: Vec<String>,
    /// The text, a template.
    pub body: String,
}

/// A push target: a push to a device, a client's devices or a channel's subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushTarget {
    /// Exactly one of `device_id`, `client_id` and `channel`, each a template.
    pub recipient: PushRecipient,
    /// The push; its `title`, `body` and `collapse_id` are templates.
    pub push: PushMessage,
}

/// Whom a rule's push reaches.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRecipient {
    /// A device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Every device of a client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Every device subscribed to a channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// A rule's push of one event, queued for the `pushout:<app>` target: a worker reads the
/// devices it reaches and queues their jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushOut {
    /// The push's id (derived from the rule and the event).
    pub push_id: String,
    /// Whom it reaches.
    pub reach: Reach,
    /// The push, its templates filled in.
    pub push: PushMessage,
}

/// The target of an app's rules' pushes.
pub fn pushout_target(app_id: &str) -> String {
    format!("pushout:{app_id}")
}

/// The app of a rule's push target, if `target_id` is one.
pub fn parse_pushout(target_id: &str) -> Option<&str> {
    target_id.strip_prefix("pushout:")
}

/// Reads and checks an SMS target.
pub fn sms_target(spec: &str) -> Result<SmsTarget, String> {
    let target: SmsTarget = serde_json::from_str(spec).map_err(|err| format!("sms: {err}"))?;
    if target.to.is_empty() || target.to.len() > MAX_RECIPIENTS {
        return Err(format!("sms.to: 1 to {MAX_RECIPIENTS} numbers"));
    }
    if let Some(bad) = target.to.iter().find(|to| !text::is_e164(to)) {
        return Err(format!("sms.to: {bad:?} is not an E.164 number (+14155550100)"));
    }
    let chars = target.body.chars().count();
    if chars == 0 || chars > crate::sms::MAX_BODY_CHARS {
        return Err(format!("sms.body: 1 to {} characters", crate::sms::MAX_BODY_CHARS));
    }
    Ok(target)
}

/// Reads and checks a push target.
pub fn push_target(spec: &str) -> Result<PushTarget, String> {
    let target: PushTarget = serde_json::from_str(spec).map_err(|err| format!("push: {err}"))?;
    let r = &target.recipient;
    let named = [&r.device_id, &r.client_id, &r.channel].iter().filter(|v| v.is_some()).count();
    if named != 1 {
        return Err("push.recipient: name exactly one of device_id, client_id and channel".into());
    }
    target.push.check().map_err(|err| format!("push.push: {err}"))?;
    Ok(target)
}

/// Fills in a template from `event` (the event as an enveloped body shows it).
pub fn render(template: &str, event: &Value) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start + 2..].find("}}") else { break };
        out.push_str(&rest[..start]);
        let path = rest[start + 2..start + 2 + end].trim();
        let mut value = Some(event);
        for key in path.split('.').filter(|key| !key.is_empty()) {
            value = value.and_then(|v| match v {
                Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => v.get(key),
            });
        }
        match value {
            Some(Value::String(text)) => out.push_str(text),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &rest[start + 2 + end + 2..];
    }
    out.push_str(rest);
    out
}

/// Cuts a text to what one message may be: 1,600 characters and ten segments, ending in `…`
/// when cut (a template filled with a long value must not make a text Twilio refuses).
fn fit(body: String) -> String {
    let fits = |text: &str| {
        text.chars().count() <= crate::sms::MAX_BODY_CHARS && text::segments(text) <= text::MAX_SEGMENTS
    };
    if fits(&body) {
        return body;
    }
    let chars: Vec<char> = body.chars().collect();
    let mut keep = chars.len().min(crate::sms::MAX_BODY_CHARS - 1);
    loop {
        let cut: String = chars[..keep].iter().chain(std::iter::once(&'…')).collect();
        if keep == 0 || fits(&cut) {
            return cut;
        }
        keep -= (keep / 20).max(1);
    }
}

/// The texts of one event: one per recipient.
pub fn sms_deliveries(
    target: &SmsTarget,
    rule: &tributary_store::Rule,
    entry: &FeedEntry,
    event: &Value,
) -> Vec<NewDelivery> {
    let body = fit(render(&target.body, event));
    let segments = text::segments(&body);
    target
        .to
        .iter()
        .filter_map(|to| {
            let sms_id = stable_id("sms_", &rule.id, &format!("{}:{to}", entry.position));
            let job = SmsJob {
                sms_id: sms_id.clone(),
                to: to.clone(),
                body: body.clone(),
                origin: rule.id.clone(),
                segments,
            };
            Some(NewDelivery {
                tenant_id: rule.tenant_id.clone(),
                app_id: rule.app_id.clone(),
                target_id: crate::sms::job::target_id(&rule.app_id),
                event_id: sms_id,
                events: 1,
                payload: serde_json::to_vec(&job).ok()?,
                headers: "{}".into(),
            })
        })
        .collect()
}

/// The push of one event, for a worker to queue to the devices it reaches; `None` when the
/// filled-in recipient is empty (the event has no such client or channel).
pub fn push_delivery(
    target: &PushTarget,
    rule: &tributary_store::Rule,
    entry: &FeedEntry,
    event: &Value,
) -> Option<NewDelivery> {
    let r = &target.recipient;
    let filled = |template: &Option<String>| template.as_deref().map(|t| render(t, event));
    let reach = match (filled(&r.device_id), filled(&r.client_id), filled(&r.channel)) {
        (Some(id), _, _) if !id.is_empty() => Reach::Device(id),
        (_, Some(client), _) if !client.is_empty() => Reach::Client(client),
        (_, _, Some(channel)) if !channel.is_empty() => Reach::Channel(channel),
        _ => return None,
    };
    let mut push = target.push.clone();
    push.title = push.title.map(|t| render(&t, event));
    push.body = push.body.map(|t| render(&t, event));
    push.collapse_id =
        push.collapse_id.map(|t| render(&t, event)).filter(|id| !id.is_empty() && id.len() <= 64);
    let push_id = stable_id("psh_", &rule.id, &entry.position);
    let out = PushOut { push_id: push_id.clone(), reach, push };
    Some(NewDelivery {
        tenant_id: rule.tenant_id.clone(),
        app_id: rule.app_id.clone(),
        target_id: pushout_target(&rule.app_id),
        event_id: push_id,
        events: 1,
        payload: serde_json::to_vec(&out).ok()?,
        headers: "{}".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_are_filled_from_the_event() {
        let event = json!({"kind": "message", "channel": "sensors:7",
                           "message": {"client_id": "probe", "data": {"temp": 41.5, "tags": ["hot"], "site": {"name": "Hall"}}}});
        assert_eq!(render("{{channel}}: {{message.data.temp}} °C", &event), "sensors:7: 41.5 °C");
        assert_eq!(render("{{ message.data.site.name }}/{{message.data.tags.0}}", &event), "Hall/hot");
        assert_eq!(render("{{missing.path}}!", &event), "!");
        assert_eq!(render("{{message.data.site}}", &event), r#"{"name":"Hall"}"#);
        assert_eq!(render("no {{ end", &event), "no {{ end");
    }

    #[test]
    fn targets_are_checked() {
        assert!(sms_target(r#"{"to": ["+14155550100"], "body": "hi {{channel}}"}"#).is_ok());
        assert!(sms_target(r#"{"to": [], "body": "hi"}"#).unwrap_err().contains("1 to 10"));
        assert!(sms_target(r#"{"to": ["4155550100"], "body": "hi"}"#).unwrap_err().contains("E.164"));
        assert!(sms_target(r#"{"to": ["+14155550100"], "body": ""}"#).unwrap_err().contains("sms.body"));
        assert!(sms_target(r#"{"to": ["+14155550100"], "body": "x", "cc": 1}"#).unwrap_err().contains("cc"));
        let push = r#"{"recipient": {"client_id": "{{member.client_id}}"}, "push": {"title": "Gone"}}"#;
        assert!(push_target(push).is_ok());
        let both = r#"{"recipient": {"client_id": "a", "channel": "b"}, "push": {"title": "x"}}"#;
        assert!(push_target(both).unwrap_err().contains("exactly one"));
        let empty = r#"{"recipient": {"channel": "b"}, "push": {}}"#;
        assert!(push_target(empty).unwrap_err().contains("push.push"));
    }

    #[test]
    fn a_filled_in_text_too_long_for_one_message_is_cut_to_fit() {
        let fitted = fit("a".repeat(5000));
        assert!(fitted.ends_with('…') && fitted.chars().count() <= 1600, "{}", fitted.len());
        assert!(text::segments(&fitted) <= text::MAX_SEGMENTS);
        let emoji = fit("😀".repeat(1000));
        assert!(text::segments(&emoji) <= text::MAX_SEGMENTS, "{}", text::segments(&emoji));
        assert_eq!(fit("short".into()), "short");
    }
}
