//! Rules of an app: which of its events (a channel pattern and event kinds) go to which of its
//! webhook endpoints, batched and shaped how; or become texts or pushes, their templates filled
//! in from each event.
//!
//! Making the first rule of an app turns on the app's durable feed in the engine *before* the
//! rule is stored and answered, so every event after the answer is in the feed; the delivery
//! workers pick the rule up at their next read. Removing an app's last enabled rule turns the
//! feed off.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tributary_protocol::ErrorCode;
use tributary_store::{NewRule, Role, Rule};

use super::app_of;
use super::webhooks::checked_headers;
use crate::ControlPlane;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// Longest rule name.
const MAX_NAME: usize = 200;

/// A rule's definition as a request gives it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleBody {
    #[serde(default)]
    name: String,
    channel_pattern: String,
    events: Vec<String>,
    /// Exactly one of `webhook_id`, `sms` and `push`.
    #[serde(default)]
    webhook_id: Option<String>,
    #[serde(default)]
    sms: Option<Value>,
    #[serde(default)]
    push: Option<Value>,
    #[serde(default = "one")]
    batch_max: i64,
    #[serde(default)]
    batch_ms: i64,
    #[serde(default = "enveloped")]
    body: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn one() -> i64 {
    1
}

fn enveloped() -> String {
    "enveloped".to_owned()
}

/// A rule as the API shows it.
#[derive(Serialize)]
pub(crate) struct RuleView {
    id: String,
    app_id: String,
    name: String,
    channel_pattern: String,
    events: Vec<String>,
    /// `webhook`, `sms` or `push`.
    target: String,
    webhook_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sms: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<Value>,
    batch_max: i64,
    batch_ms: i64,
    body: String,
    headers: Value,
    enabled: bool,
    created_at: i64,
}

impl From<Rule> for RuleView {
    fn from(rule: Rule) -> Self {
        let spec = rule.spec;
        let definition = || serde_json::from_str::<Value>(&spec.target_spec).ok();
        let (webhook_id, sms, push) = match spec.target_kind.as_str() {
            "sms" => (None, definition(), None),
            "push" => (None, None, definition()),
            _ => (Some(spec.target_id.clone()), None, None),
        };
        Self {
            id: rule.id,
            app_id: rule.app_id,
            name: spec.name,
            channel_pattern: spec.channel_pattern,
            events: spec.events,
            target: spec.target_kind,
            webhook_id,
            sms,
            push,
            batch_max: spec.batch_max,
            batch_ms: spec.batch_ms,
            body: spec.body,
            headers: serde_json::from_str(&spec.headers).unwrap_or_else(|_| json!({})),
            enabled: rule.enabled,
            created_at: rule.created_at,
        }
    }
}

/// Checks a definition and makes it the store's.
fn definition(body: RuleBody) -> Result<NewRule, ApiError> {
    if body.name.len() > MAX_NAME {
        return Err(ApiError::invalid(format!("name: at most {MAX_NAME} bytes")));
    }
    let (target_kind, target_id, target_spec) = match (body.webhook_id, body.sms, body.push) {
        (Some(webhook), None, None) => ("webhook", webhook, "{}".to_owned()),
        (None, Some(sms), None) => ("sms", String::new(), sms.to_string()),
        (None, None, Some(push)) => ("push", String::new(), push.to_string()),
        _ => return Err(ApiError::invalid("name exactly one of webhook_id, sms and push".to_owned())),
    };
    let spec = NewRule {
        name: body.name,
        channel_pattern: body.channel_pattern,
        events: body.events,
        target_id,
        target_kind: target_kind.to_owned(),
        target_spec,
        batch_max: body.batch_max,
        batch_ms: body.batch_ms,
        body: body.body,
        headers: checked_headers(&body.headers)?,
    };
    tributary_delivery::rules::validate(&spec).map_err(|err| ApiError::invalid(err.to_string()))?;
    Ok(spec)
}

/// Turns the app's feed on (before a rule that needs it is stored).
pub(super) async fn feed_on(plane: &ControlPlane, app: &str) -> Result<(), ApiError> {
    plane.engine.feed_enable(app).await.map_err(|err| match err {
        tributary_engine::EngineError::Unsupported(what) => ApiError::new(ErrorCode::Unavailable, what),
        other => ApiError::new(ErrorCode::Unavailable, other.to_string()),
    })
}

/// Turns the app's feed off when none of its rules is enabled any more and no audit log reads
/// it. A failure leaves a feed that costs memory but loses nothing: it is logged, not returned.
async fn feed_off_if_unused(plane: &ControlPlane, tenant: &str, app: &str) {
    match plane.store.is_audit_source(app).await {
        Ok(false) => {}
        Ok(true) => return,
        Err(err) => {
            tracing::warn!(error = %err, app, "audit sources not read; the app's feed stays on");
            return;
        }
    }
    match plane.store.rules(tenant, app).await {
        Ok(rules) if rules.iter().all(|rule| !rule.enabled) => {
            if let Err(err) = plane.engine.feed_disable(app).await {
                tracing::warn!(error = %err, app, "an unused app feed was not turned off");
            } else if let Err(err) = plane.store.forget_feed_position(app).await {
                tracing::warn!(error = %err, app, "the position of a feed turned off was not forgotten");
            }
            // A rule made or enabled, or a namespace set audited, meanwhile (it turned the feed
            // on before this turned it off) must not wait for the workers' resync: look again,
            // and turn it back on.
            let rule_on =
                plane.store.rules(tenant, app).await.is_ok_and(|rules| rules.iter().any(|rule| rule.enabled));
            let audited = plane.store.is_audit_source(app).await.unwrap_or(true);
            if (rule_on || audited)
                && let Err(err) = plane.engine.feed_enable(app).await
            {
                tracing::warn!(error = %err, app, "an app feed is off until the workers' resync");
            }
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, app, "rules not read; the app's feed stays on"),
    }
}

/// Returns a rule of the app (another app's is `not_found`).
async fn rule_of(plane: &ControlPlane, tenant: &str, app: &str, rule: &str) -> Result<Rule, ApiError> {
    app_of(plane, tenant, app).await?;
    let found = plane.store.rule(tenant, rule).await?;
    if found.app_id != app {
        return Err(tributary_store::StoreError::NotFound("rule").into());
    }
    Ok(found)
}

/// `POST …/apps/{app}/rules` (developer): 201 with the rule.
pub(crate) async fn create(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RuleView>), ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    app_of(&plane, &tenant, &app).await?;
    let spec = definition(body::parse(body)?)?;
    // The endpoint is checked before the feed is turned on: a refused rule changes nothing.
    if spec.target_kind == "webhook" {
        let endpoint = plane.store.webhook_endpoint(&tenant, &spec.target_id).await?;
        if endpoint.app_id != app {
            return Err(tributary_store::StoreError::NotFound("webhook endpoint").into());
        }
    }
    feed_on(&plane, &app).await?;
    let rule = match plane.store.create_rule(&caller.actor, &tenant, &app, &spec).await {
        Ok(rule) => rule,
        Err(err) => {
            // Not stored: a feed turned on for it alone is turned off again.
            feed_off_if_unused(&plane, &tenant, &app).await;
            return Err(err.into());
        }
    };
    Ok((StatusCode::CREATED, Json(rule.into())))
}

/// `GET …/apps/{app}/rules` (read_only).
pub(crate) async fn list(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Vec<RuleView>>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    app_of(&plane, &tenant, &app).await?;
    let rules = plane.store.rules(&tenant, &app).await?;
    Ok(Json(rules.into_iter().map(RuleView::from).collect()))
}

/// `GET …/apps/{app}/rules/{rule}` (read_only).
pub(crate) async fn get(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, rule)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<Json<RuleView>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    Ok(Json(rule_of(&plane, &tenant, &app, &rule).await?.into()))
}

/// `PUT …/apps/{app}/rules/{rule}` (developer): replaces the definition.
pub(crate) async fn update(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, rule)): Path<(String, String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RuleView>, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    rule_of(&plane, &tenant, &app, &rule).await?;
    let spec = definition(body::parse(body)?)?;
    Ok(Json(plane.store.update_rule(&caller.actor, &tenant, &rule, &spec).await?.into()))
}

/// `DELETE …/apps/{app}/rules/{rule}` (developer).
pub(crate) async fn delete(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, rule)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    rule_of(&plane, &tenant, &app, &rule).await?;
    plane.store.delete_rule(&caller.actor, &tenant, &rule).await?;
    feed_off_if_unused(&plane, &tenant, &app).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/rules/{rule}/enable` (developer).
pub(crate) async fn enable(
    state: State<Arc<ControlPlane>>,
    path: Path<(String, String, String)>,
    caller: Caller,
) -> Result<Json<RuleView>, ApiError> {
    set_enabled(state, path, caller, true).await
}

/// `POST …/rules/{rule}/disable` (developer).
pub(crate) async fn disable(
    state: State<Arc<ControlPlane>>,
    path: Path<(String, String, String)>,
    caller: Caller,
) -> Result<Json<RuleView>, ApiError> {
    set_enabled(state, path, caller, false).await
}

/// Turns a rule on (its app's feed first) or off (and the feed, if no rule is left on).
async fn set_enabled(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, rule)): Path<(String, String, String)>,
    caller: Caller,
    enabled: bool,
) -> Result<Json<RuleView>, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    rule_of(&plane, &tenant, &app, &rule).await?;
    if enabled {
        feed_on(&plane, &app).await?;
    }
    let view = plane.store.set_rule_enabled(&caller.actor, &tenant, &rule, enabled).await?.into();
    if !enabled {
        feed_off_if_unused(&plane, &tenant, &app).await;
    }
    Ok(Json(view))
}
