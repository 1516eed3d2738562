//! Plans, and the plan and limit overrides of a tenant (set by the operator).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_protocol::ControlEvent;
use tributary_store::{LimitOverrides, Limits, Plan, Role};

use crate::ControlPlane;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// Limits as the API shows them (0: no limit).
#[derive(Serialize)]
pub(crate) struct LimitsView {
    max_connections: i64,
    max_messages_per_month: i64,
    max_publish_rate: i64,
    max_channels: i64,
    max_message_bytes: i64,
    history_retention_secs: i64,
    overage_allowed: bool,
    max_webhook_events_per_month: i64,
    max_sms_segments_per_month: i64,
    max_sms_per_minute: i64,
}

impl From<Limits> for LimitsView {
    fn from(l: Limits) -> Self {
        Self {
            max_connections: l.max_connections,
            max_messages_per_month: l.max_messages_per_month,
            max_publish_rate: l.max_publish_rate,
            max_channels: l.max_channels,
            max_message_bytes: l.max_message_bytes,
            history_retention_secs: l.history_retention_secs,
            overage_allowed: l.overage_allowed,
            max_webhook_events_per_month: l.max_webhook_events_per_month,
            max_sms_segments_per_month: l.max_sms_segments_per_month,
            max_sms_per_minute: l.max_sms_per_minute,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct PlanView {
    id: String,
    name: String,
    limits: LimitsView,
}

impl From<Plan> for PlanView {
    fn from(p: Plan) -> Self {
        Self { id: p.id, name: p.name, limits: p.limits.into() }
    }
}

/// `GET /v1/plans` (operator).
pub(crate) async fn list(
    State(plane): State<Arc<ControlPlane>>,
    caller: Caller,
) -> Result<Json<Vec<PlanView>>, ApiError> {
    caller.operator()?;
    Ok(Json(plane.store.plans().await?.into_iter().map(PlanView::from).collect()))
}

/// Overrides: a field present replaces the plan's value; `null` or absent keeps the plan's.
#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverridesBody {
    #[serde(default)]
    max_connections: Option<i64>,
    #[serde(default)]
    max_messages_per_month: Option<i64>,
    #[serde(default)]
    max_publish_rate: Option<i64>,
    #[serde(default)]
    max_channels: Option<i64>,
    #[serde(default)]
    max_message_bytes: Option<i64>,
    #[serde(default)]
    history_retention_secs: Option<i64>,
    #[serde(default)]
    overage_allowed: Option<bool>,
    #[serde(default)]
    max_webhook_events_per_month: Option<i64>,
    #[serde(default)]
    max_sms_segments_per_month: Option<i64>,
    #[serde(default)]
    max_sms_per_minute: Option<i64>,
}

impl OverridesBody {
    fn to_store(&self) -> Result<LimitOverrides, ApiError> {
        let values = [
            ("max_connections", self.max_connections),
            ("max_messages_per_month", self.max_messages_per_month),
            ("max_publish_rate", self.max_publish_rate),
            ("max_channels", self.max_channels),
            ("max_message_bytes", self.max_message_bytes),
            ("history_retention_secs", self.history_retention_secs),
            ("max_webhook_events_per_month", self.max_webhook_events_per_month),
            ("max_sms_segments_per_month", self.max_sms_segments_per_month),
            ("max_sms_per_minute", self.max_sms_per_minute),
        ];
        if let Some((name, _)) = values.iter().find(|(_, v)| v.is_some_and(|v| v < 0)) {
            return Err(ApiError::invalid(format!("{name} must be 0 (no limit) or more")));
        }
        Ok(LimitOverrides {
            max_connections: self.max_connections,
            max_messages_per_month: self.max_messages_per_month,
            max_publish_rate: self.max_publish_rate,
            max_channels: self.max_channels,
            max_message_bytes: self.max_message_bytes,
            history_retention_secs: self.history_retention_secs,
            overage_allowed: self.overage_allowed,
            max_webhook_events_per_month: self.max_webhook_events_per_month,
            max_sms_segments_per_month: self.max_sms_segments_per_month,
            max_sms_per_minute: self.max_sms_per_minute,
        })
    }

    fn from_store(o: LimitOverrides) -> Self {
        Self {
            max_connections: o.max_connections,
            max_messages_per_month: o.max_messages_per_month,
            max_publish_rate: o.max_publish_rate,
            max_channels: o.max_channels,
            max_message_bytes: o.max_message_bytes,
            history_retention_secs: o.history_retention_secs,
            overage_allowed: o.overage_allowed,
            max_webhook_events_per_month: o.max_webhook_events_per_month,
            max_sms_segments_per_month: o.max_sms_segments_per_month,
            max_sms_per_minute: o.max_sms_per_minute,
        }
    }
}

/// A tenant's plan, overrides and the limits that result.
#[derive(Serialize)]
pub(crate) struct TenantLimitsView {
    plan: String,
    overrides: OverridesBody,
    limits: LimitsView,
}

async fn tenant_limits(plane: &ControlPlane, tenant: &str) -> Result<TenantLimitsView, ApiError> {
    let record = plane.store.tenant(tenant).await?;
    let overrides = plane.store.tenant_limit_overrides(tenant).await?;
    let limits = plane.store.tenant_limits(tenant).await?;
    Ok(TenantLimitsView {
        plan: record.plan_id,
        overrides: OverridesBody::from_store(overrides),
        limits: limits.into(),
    })
}

/// `GET /v1/tenants/{tenant}/limits` (read_only).
pub(crate) async fn get(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
) -> Result<Json<TenantLimitsView>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    Ok(Json(tenant_limits(&plane, &tenant).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanBody {
    plan: String,
}

/// `POST /v1/tenants/{tenant}/plan` `{"plan":"pro"}` (operator): every node applies the new
/// limits within a second.
pub(crate) async fn set_plan(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TenantLimitsView>, ApiError> {
    caller.operator()?;
    let body: PlanBody = body::parse(body)?;
    plane.store.set_tenant_plan(&caller.actor, &tenant, &body.plan).await.map_err(|err| match err {
        tributary_store::StoreError::NotFound("plan") => {
            ApiError::invalid(format!("no plan {:?}", body.plan))
        }
        other => other.into(),
    })?;
    plane.announce(ControlEvent::TenantChanged { tenant: tenant.clone() }).await;
    Ok(Json(tenant_limits(&plane, &tenant).await?))
}

/// `POST /v1/tenants/{tenant}/limits` with the overrides (operator): replaces all of them.
pub(crate) async fn set(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TenantLimitsView>, ApiError> {
    caller.operator()?;
    let body: OverridesBody = body::parse(body)?;
    let overrides = body.to_store()?;
    plane.store.set_tenant_limits(&caller.actor, &tenant, &overrides).await?;
    plane.announce(ControlEvent::TenantChanged { tenant: tenant.clone() }).await;
    Ok(Json(tenant_limits(&plane, &tenant).await?))
}
