//! GraphQL for webhook endpoints and rules, with typed objects (not the `JSON` scalar): each
//! field calls the REST handler of its operation, as every other field does, and reads its
//! answer into the type.

use std::collections::BTreeMap;

use async_graphql::{Context, InputObject, Object, SimpleObject};
use axum::extract::Path;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, body, graphql_error, parts, query};
use crate::error::ApiError;
use crate::routes;

/// A custom header of an endpoint or a rule.
#[derive(SimpleObject, InputObject, Deserialize, Clone, Debug)]
#[graphql(input_name = "HeaderInput")]
pub struct Header {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// Reads the REST form of headers (a JSON object of strings) as a list.
fn header_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Header>, D::Error> {
    let map = BTreeMap::<String, String>::deserialize(deserializer)?;
    Ok(map.into_iter().map(|(name, value)| Header { name, value }).collect())
}

/// The REST form of a header list.
fn header_map(headers: &[Header]) -> Value {
    Value::Object(headers.iter().map(|h| (h.name.clone(), Value::String(h.value.clone()))).collect())
}

/// A webhook endpoint (never its secret).
#[derive(SimpleObject, Deserialize)]
pub struct Webhook {
    /// `wh_…`.
    pub id: String,
    /// Its app.
    pub app_id: String,
    /// Where requests go.
    pub url: String,
    /// The tenant's note.
    pub description: String,
    /// Custom headers sent with every request.
    #[serde(deserialize_with = "header_list")]
    pub headers: Vec<Header>,
    /// Whether deliveries are sent.
    pub enabled: bool,
    /// Why it was disabled, if it is.
    pub disabled_reason: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A new endpoint and its signing secret, shown this once.
#[derive(SimpleObject)]
pub struct CreatedWebhook {
    /// The endpoint.
    pub webhook: Webhook,
    /// `whsec_…`.
    pub secret: String,
}

/// A rotated secret.
#[derive(SimpleObject, Deserialize)]
pub struct RotatedSecret {
    /// The new secret, `whsec_…`, shown this once.
    pub secret: String,
    /// Until when (ms since the Unix epoch) the previous secret still signs.
    pub previous_valid_until: i64,
}

/// An attempt in an endpoint's delivery log.
#[derive(SimpleObject, Deserialize)]
pub struct DeliveryAttempt {
    /// The delivery.
    pub delivery_id: String,
    /// Its number among the delivery's attempts.
    pub attempt: i64,
    /// When (ms since the Unix epoch).
    pub at: i64,
    /// The HTTP status, if an answer came.
    pub status: Option<i64>,
    /// How long it took.
    pub latency_ms: i64,
    /// `delivered`, `retry`, `gone` or `dead`.
    pub outcome: String,
    /// The start of the answer, or what went wrong.
    pub response: String,
}

/// A dead-lettered delivery.
#[derive(SimpleObject, Deserialize)]
pub struct DeadLetter {
    /// The delivery, `dlv_…`.
    pub id: String,
    /// Its event id (`webhook-id`).
    pub event_id: String,
    /// `dead`, or `pending` once replayed.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// The request body, as text.
    #[serde(deserialize_with = "as_text")]
    pub payload: String,
}

/// A body the REST answer shows as JSON when it is JSON, as text here.
fn as_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) => text,
        other => other.to_string(),
    })
}

/// A rule: which of an app's events go to which endpoint.
#[derive(SimpleObject, Deserialize)]
pub struct Rule {
    /// `rul_…`.
    pub id: String,
    /// Its app.
    pub app_id: String,
    /// The tenant's name for it.
    pub name: String,
    /// The channels it reads.
    pub channel_pattern: String,
    /// The event kinds it reads.
    pub events: Vec<String>,
    /// `webhook`, `sms` or `push`.
    pub target: String,
    /// The endpoint it sends to (a webhook rule's).
    pub webhook_id: Option<String>,
    /// An SMS rule's recipients and template (docs/sms.md).
    #[serde(default)]
    pub sms: Option<async_graphql::Json<Value>>,
    /// A push rule's recipient and push (docs/push.md).
    #[serde(default)]
    pub push: Option<async_graphql::Json<Value>>,
    /// Most events per request.
    pub batch_max: i64,
    /// Longest an event waits for others to share its request.
    pub batch_ms: i64,
    /// `enveloped` or `raw`.
    pub body: String,
    /// Custom headers of its requests.
    #[serde(deserialize_with = "header_list")]
    pub headers: Vec<Header>,
    /// Whether it matches events.
    pub enabled: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// A rule's definition.
#[derive(InputObject)]
pub struct RuleInput {
    /// The tenant's name for it.
    #[graphql(default)]
    pub name: String,
    /// The channels it reads (a pattern).
    pub channel_pattern: String,
    /// The event kinds it reads.
    pub events: Vec<String>,
    /// A webhook endpoint of the same app (exactly one of `webhookId`, `sms` and `push`).
    pub webhook_id: Option<String>,
    /// Texts: `{"to": ["+1…"], "body": "template"}`.
    pub sms: Option<async_graphql::Json<Value>>,
    /// A push: `{"recipient": {...}, "push": {...}}`.
    pub push: Option<async_graphql::Json<Value>>,
    /// Most events per request (default 1).
    #[graphql(default = 1)]
    pub batch_max: i64,
    /// Longest an event waits for others, in ms (default 0).
    #[graphql(default)]
    pub batch_ms: i64,
    /// `enveloped` (default) or `raw`.
    #[graphql(default_with = "String::from(\"enveloped\")")]
    pub body: String,
    /// Custom headers.
    #[graphql(default)]
    pub headers: Vec<Header>,
}

impl RuleInput {
    fn rest(&self) -> Value {
        json!({
            "name": self.name,
            "channel_pattern": self.channel_pattern,
            "events": self.events,
            "webhook_id": self.webhook_id,
            "sms": self.sms.as_ref().map(|json| &json.0),
            "push": self.push.as_ref().map(|json| &json.0),
            "batch_max": self.batch_max,
            "batch_ms": self.batch_ms,
            "body": self.body,
            "headers": header_map(&self.headers),
        })
    }
}

/// A listing's `?limit=`.
fn limited(limit: Option<u32>) -> axum::extract::Query<std::collections::HashMap<String, String>> {
    query(&[("limit", limit.map(|n| n.to_string()))])
}

/// Runs a REST handler and reads its answer as `T`.
pub(super) async fn typed<T: serde::de::DeserializeOwned, A: Answer>(
    handler: impl std::future::Future<Output = Result<A, ApiError>>,
) -> async_graphql::Result<T> {
    let value = handler.await.map_err(graphql_error)?.into_value();
    serde_json::from_value(value)
        .map_err(|err| async_graphql::Error::new(format!("unexpected answer: {err}")))
}

/// Reads of endpoints and rules.
#[derive(Default)]
pub struct DeliveryQuery;

#[Object]
impl DeliveryQuery {
    /// An app's webhook endpoints.
    async fn webhooks(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
    ) -> async_graphql::Result<Vec<Webhook>> {
        let (state, caller) = parts(ctx)?;
        typed(routes::webhooks::list(state, Path((tenant, app)), caller)).await
    }

    /// An endpoint's delivery log, newest first.
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        webhook: String,
        limit: Option<u32>,
    ) -> async_graphql::Result<Vec<DeliveryAttempt>> {
        let (state, caller) = parts(ctx)?;
        typed(routes::webhooks::deliveries(state, Path((tenant, app, webhook)), limited(limit), caller)).await
    }

    /// An endpoint's dead letters, oldest first.
    async fn webhook_dead_letters(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        webhook: String,
        limit: Option<u32>,
    ) -> async_graphql::Result<Vec<DeadLetter>> {
        let (state, caller) = parts(ctx)?;
        typed(routes::webhooks::dead_letters(state, Path((tenant, app, webhook)), limited(limit), caller))
            .await
    }

    /// An app's rules.
    async fn rules(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
    ) -> async_graphql::Result<Vec<Rule>> {
        let (state, caller) = parts(ctx)?;
        typed(routes::rules::list(state, Path((tenant, app)), caller)).await
    }
}

/// Changes of endpoints and rules.
#[derive(Default)]
pub struct DeliveryMutation;

#[Object]
impl DeliveryMutation {
    /// Creates a webhook endpoint; its secret is in the answer, this once.
    async fn create_webhook(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        url: String,
        #[graphql(default)] description: String,
        #[graphql(default)] headers: Vec<Header>,
    ) -> async_graphql::Result<CreatedWebhook> {
        let (state, caller) = parts(ctx)?;
        let request = json!({"url": url, "description": description, "headers": header_map(&headers)});
        let mut value: Value =
            typed(routes::webhooks::create(state, Path((tenant, app)), caller, body(request))).await?;
        let secret = value.get("secret").and_then(Value::as_str).unwrap_or_default().to_owned();
        if let Some(map) = value.as_object_mut() {
            map.remove("secret");
        }
        let webhook =
            serde_json::from_value(value).map_err(|err| async_graphql::Error::new(err.to_string()))?;
        Ok(CreatedWebhook { webhook, secret })
    }

    /// Deletes an endpoint and its rules.
    async fn delete_webhook(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        webhook: String,
    ) -> async_graphql::Result<bool> {
        let (state, caller) = parts(ctx)?;
        typed(routes::webhooks::delete(state, Path((tenant, app, webhook)), caller)).await
    }

    /// Enables an endpoint, or disables it with a reason.
    async fn set_webhook_enabled(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        webhook: String,
        enabled: bool,
        reason: Option<String>,
    ) -> async_graphql::Result<Webhook> {
        let (state, caller) = parts(ctx)?;
        let path = Path((tenant, app, webhook));
        if enabled {
            typed(routes::webhooks::enable(state, path, caller)).await
        } else {
            typed(routes::webhooks::disable(state, path, caller, body(json!({"reason": reason})))).await
        }
    }

    /// Gives an endpoint a new secret; the old one signs too for `overlapSecs`.
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        webhook: String,
        #[graphql(default = 86400)] overlap_secs: u64,
    ) -> async_graphql::Result<RotatedSecret> {
        let (state, caller) = parts(ctx)?;
        let request = body(json!({"overlap_secs": overlap_secs}));
        typed(routes::webhooks::rotate_secret(state, Path((tenant, app, webhook)), caller, request)).await
    }

    /// Queues a test event for an endpoint; returns its event id.
    async fn send_webhook_test(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        webhook: String,
    ) -> async_graphql::Result<String> {
        let (state, caller) = parts(ctx)?;
        let value: Value = typed(routes::webhooks::test(state, Path((tenant, app, webhook)), caller)).await?;
        Ok(value.get("event_id").and_then(Value::as_str).unwrap_or_default().to_owned())
    }

    /// Sends a dead letter again, with its event id.
    async fn replay_dead_letter(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        webhook: String,
        delivery: String,
    ) -> async_graphql::Result<DeadLetter> {
        let (state, caller) = parts(ctx)?;
        typed(routes::webhooks::replay(state, Path((tenant, app, webhook, delivery)), caller)).await
    }

    /// Creates a rule.
    async fn create_rule(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        rule: RuleInput,
    ) -> async_graphql::Result<Rule> {
        let (state, caller) = parts(ctx)?;
        typed(routes::rules::create(state, Path((tenant, app)), caller, body(rule.rest()))).await
    }

    /// Replaces a rule's definition.
    async fn update_rule(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        id: String,
        rule: RuleInput,
    ) -> async_graphql::Result<Rule> {
        let (state, caller) = parts(ctx)?;
        typed(routes::rules::update(state, Path((tenant, app, id)), caller, body(rule.rest()))).await
    }

    /// Turns a rule on or off.
    async fn set_rule_enabled(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        id: String,
        enabled: bool,
    ) -> async_graphql::Result<Rule> {
        let (state, caller) = parts(ctx)?;
        let path = Path((tenant, app, id));
        if enabled {
            typed(routes::rules::enable(state, path, caller)).await
        } else {
            typed(routes::rules::disable(state, path, caller)).await
        }
    }

    /// Deletes a rule.
    async fn delete_rule(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        id: String,
    ) -> async_graphql::Result<bool> {
        let (state, caller) = parts(ctx)?;
        typed(routes::rules::delete(state, Path((tenant, app, id)), caller)).await
    }
}
