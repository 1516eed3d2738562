//! Rules: which events of an app's feed a rule takes, and the requests it makes of them.
//!
//! A rule's source is a channel pattern and a set of event kinds; its target a webhook
//! endpoint. The events it matches are sent in requests of up to `batch_max` events, with an
//! *enveloped* body (the events and their metadata, as JSON) or a *raw* one (one event's data as
//! it was published: a message's payload, a member's record). Each request gets an event id
//! derived from the rule and the feed position of its first event, so the same request always
//! has the same id, whichever worker makes it and however often.

use base64::Engine as _;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};
use tributary_engine::{ClientInfo, FeedEntry, FeedRecord};
use tributary_protocol::frame::MemberInfo;
use tributary_protocol::{ChannelName, ChannelPattern, Payload};
use tributary_store::{NewDelivery, NewRule, Rule};

use crate::rule_targets;

/// The event kinds a rule may name.
pub const EVENT_KINDS: [&str; 8] = [
    "message",
    "channel.occupied",
    "channel.vacated",
    "presence.join",
    "presence.leave",
    "presence.update",
    "client.connected",
    "client.disconnected",
];

/// Most events in one request.
pub const MAX_BATCH: i64 = 1000;

/// Longest a rule may gather events for one request, in milliseconds.
pub const MAX_BATCH_MS: i64 = 60_000;

/// Why a rule's definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The channel pattern is not one.
    #[error("channel_pattern: {0}")]
    Pattern(String),
    /// No event kinds, or one that is not known.
    #[error("events: name one or more of {}", EVENT_KINDS.join(", "))]
    Events,
    /// `batch_max` out of range.
    #[error("batch_max: from 1 to {MAX_BATCH}")]
    BatchMax,
    /// `batch_ms` out of range.
    #[error("batch_ms: from 0 to {MAX_BATCH_MS}")]
    BatchMs,
    /// An unknown body kind.
    #[error("body: enveloped or raw")]
    Body,
    /// A raw body with batching.
    #[error("body: a raw body carries one event, so batch_max must be 1")]
    RawBatch,
    /// An SMS or push target's definition that is not one.
    #[error("{0}")]
    Target(String),
    /// An SMS or push target with batching or headers.
    #[error("an SMS or push rule sends each event on its own: batch_max must be 1, and it has no headers")]
    TargetBatch,
}

/// Checks a rule's definition (its headers are checked where endpoints' are).
pub fn validate(spec: &NewRule) -> Result<(), RuleError> {
    ChannelPattern::parse(&spec.channel_pattern).map_err(|err| RuleError::Pattern(err.to_string()))?;
    if spec.events.is_empty() || spec.events.iter().any(|kind| !EVENT_KINDS.contains(&kind.as_str())) {
        return Err(RuleError::Events);
    }
    if !(1..=MAX_BATCH).contains(&spec.batch_max) {
        return Err(RuleError::BatchMax);
    }
    if !(0..=MAX_BATCH_MS).contains(&spec.batch_ms) {
        return Err(RuleError::BatchMs);
    }
    match spec.body.as_str() {
        "enveloped" => {}
        "raw" if spec.batch_max == 1 => {}
        "raw" => return Err(RuleError::RawBatch),
        _ => return Err(RuleError::Body),
    }
    let alone = spec.batch_max == 1 && (spec.headers.is_empty() || spec.headers == "{}");
    match spec.target_kind.as_str() {
        "webhook" => Ok(()),
        "sms" => {
            rule_targets::sms_target(&spec.target_spec).map_err(RuleError::Target)?;
            if alone { Ok(()) } else { Err(RuleError::TargetBatch) }
        }
        "push" => {
            rule_targets::push_target(&spec.target_spec).map_err(RuleError::Target)?;
            if alone { Ok(()) } else { Err(RuleError::TargetBatch) }
        }
        other => Err(RuleError::Target(format!("no target kind {other:?}: webhook, sms or push"))),
    }
}

/// A rule ready to match feed entries.
pub struct CompiledRule {
    /// The rule.
    pub rule: Rule,
    pattern: ChannelPattern,
    target: CompiledTarget,
}

/// What a rule sends.
enum CompiledTarget {
    /// Requests to a webhook endpoint, with enveloped or raw bodies.
    Webhook { raw: bool },
    /// Texts.
    Sms(rule_targets::SmsTarget),
    /// A push (boxed: a push section is large beside the other targets).
    Push(Box<rule_targets::PushTarget>),
}

impl CompiledRule {
    /// Compiles a stored rule; `None` for one whose definition is not valid (it matches
    /// nothing rather than stopping its app's other rules).
    pub fn compile(rule: Rule) -> Option<Self> {
        validate(&rule.spec).ok()?;
        let pattern = ChannelPattern::parse(&rule.spec.channel_pattern).ok()?;
        let target = match rule.spec.target_kind.as_str() {
            "sms" => CompiledTarget::Sms(rule_targets::sms_target(&rule.spec.target_spec).ok()?),
            "push" => CompiledTarget::Push(Box::new(rule_targets::push_target(&rule.spec.target_spec).ok()?)),
            _ => CompiledTarget::Webhook { raw: rule.spec.body == "raw" },
        };
        Some(Self { rule, pattern, target })
    }

    /// Whether the rule takes this entry: one of its kinds, on a channel its pattern matches (a
    /// connection's events, which have no channel, need only the kind).
    pub fn matches(&self, entry: &FeedEntry) -> bool {
        self.rule.spec.events.iter().any(|kind| kind == entry.record.kind())
            && entry.channel.as_ref().is_none_or(|channel| self.pattern.matches(channel))
    }

    /// The deliveries of the entries this rule matched, in feed order: one request per
    /// `batch_max` of them.
    /// For an SMS target, one text per recipient and entry; for a push target, one push per
    /// entry.
    pub fn deliveries(&self, matched: &[&FeedEntry]) -> Vec<NewDelivery> {
        let event = |entry: &FeedEntry| serde_json::to_value(EventView::of(entry)).unwrap_or_default();
        match &self.target {
            CompiledTarget::Webhook { raw } => {
                let size = usize::try_from(self.rule.spec.batch_max).unwrap_or(1).max(1);
                matched.chunks(size).map(|chunk| self.delivery(chunk, *raw)).collect()
            }
            CompiledTarget::Sms(target) => matched
                .iter()
                .flat_map(|entry| rule_targets::sms_deliveries(target, &self.rule, entry, &event(entry)))
                .collect(),
            CompiledTarget::Push(target) => matched
                .iter()
                .filter_map(|entry| rule_targets::push_delivery(target, &self.rule, entry, &event(entry)))
                .collect(),
        }
    }

    fn delivery(&self, chunk: &[&FeedEntry], raw: bool) -> NewDelivery {
        let event_id = event_id(&self.rule.id, &chunk[0].position);
        let (payload, content_type) = if raw {
            raw_body(chunk[0])
        } else {
            let events: Vec<EventView<'_>> = chunk.iter().map(|entry| EventView::of(entry)).collect();
            let envelope = Envelope { id: &event_id, app: &self.rule.app_id, rule: &self.rule.id, events };
            (serde_json::to_vec(&envelope).unwrap_or_default(), "application/json")
        };
        let mut headers: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&self.rule.spec.headers).unwrap_or_default();
        headers.insert("content-type".to_owned(), content_type.into());
        NewDelivery {
            tenant_id: self.rule.tenant_id.clone(),
            app_id: self.rule.app_id.clone(),
            target_id: self.rule.spec.target_id.clone(),
            event_id,
            payload,
            headers: serde_json::Value::Object(headers).to_string(),
            events: i64::try_from(chunk.len()).unwrap_or(1),
        }
    }
}

/// The stable id of the request that starts with the entry at `position`, for `rule_id`.
pub fn event_id(rule_id: &str, position: &str) -> String {
    stable_id("evt_", rule_id, position)
}

/// An id made of `prefix` and 24 hex digits of SHA-256 over `scope` and `key`: the same for the
/// same pair, on every node and every retry (what receivers de-duplicate by).
pub fn stable_id(prefix: &str, scope: &str, key: &str) -> String {
    let digest = Sha256::new().chain_update(scope).chain_update(b"\n").chain_update(key).finalize();
    let mut id = String::from(prefix);
    for byte in &digest[..12] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// A raw body: a message's payload as published (JSON, or its bytes), a member's record, a
/// client's, or for a channel's occupancy `{"channel": name}`.
fn raw_body(entry: &FeedEntry) -> (Vec<u8>, &'static str) {
    match &entry.record {
        FeedRecord::Message(publication) => match &publication.payload {
            Payload::Json(json) => (json.to_vec(), "application/json"),
            Payload::Binary(bytes) => (bytes.to_vec(), "application/octet-stream"),
        },
        FeedRecord::PresenceJoin(member)
        | FeedRecord::PresenceLeave(member)
        | FeedRecord::PresenceUpdate(member) => {
            (serde_json::to_vec(member).unwrap_or_default(), "application/json")
        }
        FeedRecord::ClientConnected(client) | FeedRecord::ClientDisconnected(client) => {
            (serde_json::to_vec(client).unwrap_or_default(), "application/json")
        }
        FeedRecord::ChannelOccupied | FeedRecord::ChannelVacated => {
            let channel = entry.channel.as_ref().map(ChannelName::as_str);
            (
                serde_json::to_vec(&serde_json::json!({ "channel": channel })).unwrap_or_default(),
                "application/json",
            )
        }
    }
}

/// An enveloped body.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    app: &'a str,
    rule: &'a str,
    events: Vec<EventView<'a>>,
}

/// One event of an enveloped body.
#[derive(Serialize)]
struct EventView<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    /// When it happened, milliseconds since the Unix epoch.
    ts: u64,
    /// Its position in the app's feed.
    position: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<MessageView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<&'a MemberInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a ClientInfo>,
}

/// A message in an enveloped body, as subscribers see it.
#[derive(Serialize)]
struct MessageView<'a> {
    epoch: &'a str,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    data: Box<RawValue>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    binary: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'a str>,
}

impl<'a> EventView<'a> {
    fn of(entry: &'a FeedEntry) -> Self {
        let (message, member, client) = match &entry.record {
            FeedRecord::Message(publication) => {
                let (data, binary) = match &publication.payload {
                    Payload::Json(json) => (std::str::from_utf8(json).ok().map(str::to_owned), false),
                    Payload::Binary(bytes) => (
                        Some(format!("\"{}\"", base64::engine::general_purpose::STANDARD.encode(bytes))),
                        true,
                    ),
                };
                let data = data
                    .and_then(|text| RawValue::from_string(text).ok())
                    .unwrap_or_else(|| RawValue::NULL.to_owned());
                let message = MessageView {
                    epoch: &publication.epoch,
                    offset: publication.offset,
                    client_id: publication.client_id.as_deref(),
                    data,
                    binary,
                    encoding: publication.encoding.as_deref(),
                };
                (Some(message), None, None)
            }
            FeedRecord::PresenceJoin(member)
            | FeedRecord::PresenceLeave(member)
            | FeedRecord::PresenceUpdate(member) => (None, Some(member), None),
            FeedRecord::ClientConnected(client) | FeedRecord::ClientDisconnected(client) => {
                (None, None, Some(client))
            }
            FeedRecord::ChannelOccupied | FeedRecord::ChannelVacated => (None, None, None),
        };
        Self {
            kind: entry.record.kind(),
            channel: entry.channel.as_ref().map(ChannelName::as_str),
            ts: entry.ts_ms,
            position: &entry.position,
            message,
            member,
            client,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tributary_protocol::Publication;

    use super::*;

    fn spec(body: &str, batch_max: i64) -> NewRule {
        NewRule {
            name: "r".into(),
            channel_pattern: "orders:*".into(),
            events: vec!["message".into()],
            target_id: "wh_1".into(),
            target_kind: "webhook".into(),
            target_spec: "{}".into(),
            batch_max,
            batch_ms: 0,
            body: body.into(),
            headers: r#"{"x-rule":"yes"}"#.into(),
        }
    }

    fn compiled(body: &str, batch_max: i64) -> CompiledRule {
        let rule = Rule {
            id: "rul_1".into(),
            tenant_id: "ten_1".into(),
            app_id: "app_1".into(),
            spec: spec(body, batch_max),
            enabled: true,
            created_at: 0,
        };
        CompiledRule::compile(rule).unwrap()
    }

    fn message(channel: &str, offset: u64, payload: Payload) -> FeedEntry {
        let publication = Publication {
            epoch: Arc::from("ep"),
            offset,
            ts_ms: 1_000 + offset,
            client_id: Some(Arc::from("alice")),
            payload,
            encoding: None,
            meta: None,
        };
        FeedEntry {
            position: Arc::from(format!("1-{offset}")),
            ts_ms: 1_000 + offset,
            channel: Some(ChannelName::parse(channel).unwrap()),
            record: FeedRecord::Message(publication),
        }
    }

    #[test]
    fn definitions_out_of_bounds_are_refused_with_the_reason() {
        let mut bad = spec("enveloped", 1);
        bad.channel_pattern = "no spaces".into();
        assert!(matches!(validate(&bad), Err(RuleError::Pattern(_))));
        for events in [vec![], vec!["message".to_owned(), "channel.exploded".to_owned()]] {
            let bad = NewRule { events, ..spec("enveloped", 1) };
            assert_eq!(validate(&bad), Err(RuleError::Events));
        }
        assert_eq!(validate(&spec("enveloped", 0)), Err(RuleError::BatchMax));
        assert_eq!(validate(&spec("enveloped", MAX_BATCH + 1)), Err(RuleError::BatchMax));
        assert_eq!(validate(&NewRule { batch_ms: -1, ..spec("enveloped", 1) }), Err(RuleError::BatchMs));
        assert_eq!(validate(&spec("xml", 1)), Err(RuleError::Body));
        assert_eq!(validate(&spec("raw", 2)), Err(RuleError::RawBatch));
        assert_eq!(validate(&spec("raw", 1)), Ok(()));
    }

    #[test]
    fn a_rule_batches_what_it_matches_in_order_under_stable_ids() {
        let rule = compiled("enveloped", 2);
        let json = |n: u64| Payload::Json(Bytes::from(format!("{{\"n\":{n}}}")));
        let entries = [
            message("orders:1", 1, json(1)),
            message("chat:1", 1, json(9)),
            message("orders:2", 1, json(2)),
            message("orders:1", 2, json(3)),
        ];
        let matched: Vec<&FeedEntry> = entries.iter().filter(|e| rule.matches(e)).collect();
        assert_eq!(matched.len(), 3, "chat:1 is not the rule's");
        let deliveries = rule.deliveries(&matched);
        assert_eq!(deliveries.len(), 2, "two requests of at most two events");
        assert_eq!(deliveries[0].event_id, event_id("rul_1", "1-1"));
        assert_eq!(
            rule.deliveries(&matched)[1].event_id,
            deliveries[1].event_id,
            "the same request, the same id"
        );
        assert_ne!(deliveries[0].event_id, event_id("rul_2", "1-1"), "another rule's request has its own id");
        let body: serde_json::Value = serde_json::from_slice(&deliveries[0].payload).unwrap();
        assert_eq!(body["id"], deliveries[0].event_id.as_str());
        assert_eq!((body["app"].as_str(), body["rule"].as_str()), (Some("app_1"), Some("rul_1")));
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["kind"], "message");
        assert_eq!(events[0]["channel"], "orders:1");
        assert_eq!(events[0]["message"]["data"], serde_json::json!({"n": 1}));
        assert_eq!(events[0]["message"]["client_id"], "alice");
        assert_eq!(events[1]["channel"], "orders:2");
        let headers: serde_json::Value = serde_json::from_str(&deliveries[0].headers).unwrap();
        assert_eq!(headers, serde_json::json!({"x-rule": "yes", "content-type": "application/json"}));
    }

    #[test]
    fn a_raw_body_is_the_payload_as_published() {
        let rule = compiled("raw", 1);
        let json = message("orders:1", 1, Payload::Json(Bytes::from_static(b"{\"t\":21.5}")));
        let binary = message("orders:1", 2, Payload::Binary(Bytes::from_static(b"\x00\xff")));
        let deliveries = rule.deliveries(&[&json, &binary]);
        assert_eq!(deliveries[0].payload, b"{\"t\":21.5}");
        assert_eq!(deliveries[1].payload, b"\x00\xff");
        assert!(deliveries[1].headers.contains("application/octet-stream"));
        let enveloped = compiled("enveloped", 1).deliveries(&[&binary]);
        let body: serde_json::Value = serde_json::from_slice(&enveloped[0].payload).unwrap();
        assert_eq!(body["events"][0]["message"]["data"], "AP8=");
        assert_eq!(body["events"][0]["message"]["binary"], true);
    }
}
