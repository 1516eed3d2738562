//! Stripe's webhooks (docs/billing.md): `POST /v1/billing/stripe/webhook`, authenticated by
//! Stripe's signature, not by a token. Each event is applied once (by its id), an older event
//! never undoes a newer one, and a status change is in force on this node before the answer (on
//! the others within a second): an `unpaid` tenant's connections are closed with 3505 and its
//! requests refused with 402 `payment_required`; an `invoice.paid` lets them back.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use bytes::Bytes;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use tributary_billing::event::StripeEvent;
use tributary_billing::lifecycle::{self, BillingStatus};
use tributary_billing::signature;
use tributary_protocol::{ControlEvent, ErrorCode};
use tributary_store::TenantStatus;
use tributary_store::billing::{BillingChange, EventOutcome};

use crate::ControlPlane;
use crate::error::ApiError;

/// The largest Stripe event taken (1 MiB; Stripe's are well under it).
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;

/// `POST /v1/billing/stripe/webhook` (Stripe's signature): applies one Stripe event.
pub(crate) async fn stripe_webhook(
    State(plane): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Some(secret) = &plane.settings.stripe_webhook_secret else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "billing is off: no Stripe webhook secret is configured",
        ));
    };
    let body = body.map_err(|rejection| ApiError::new(ErrorCode::InvalidFrame, rejection.body_text()))?;
    let header = headers.get("stripe-signature").and_then(|value| value.to_str().ok());
    let now = tributary_store::unix_now_secs();
    signature::verify(
        header,
        &body,
        secret.expose_secret().as_bytes(),
        now,
        plane.settings.stripe_tolerance_secs,
    )
    .map_err(|err| {
        tracing::warn!(error = %err, "a Stripe webhook was refused");
        ApiError::new(ErrorCode::Unauthorized, err.to_string())
    })?;
    let event = StripeEvent::parse(&body).map_err(|err| ApiError::invalid(err.to_string()))?;
    let change = lifecycle::decide(&event).map(|decision| BillingChange {
        customer_id: decision.customer,
        tenant_id: decision.tenant,
        subscription_id: decision.subscription,
        links_subscription: decision.links_subscription,
        // The first of the subscription's prices the operator maps to a plan.
        plan_id: decision.prices.iter().find_map(|price| plane.settings.stripe_plans.get(price).cloned()),
        status: decision.status.map(|status| match status {
            BillingStatus::Active => TenantStatus::Active,
            BillingStatus::PastDue => TenantStatus::PastDue,
            BillingStatus::Unpaid => TenantStatus::Unpaid,
        }),
        action: decision.action.to_owned(),
    });
    let outcome =
        plane.store.apply_billing_event(&event.id, &event.kind, event.created, change.as_ref()).await?;
    let described = match &outcome {
        EventOutcome::Duplicate => json!({"received": true, "outcome": "duplicate"}),
        EventOutcome::Ignored => json!({"received": true, "outcome": "ignored"}),
        EventOutcome::UnknownCustomer => json!({"received": true, "outcome": "unknown_customer"}),
        EventOutcome::Conflict { tenant_id } => {
            tracing::warn!(
                tenant_id,
                event = event.id,
                "a Stripe event would link a customer against an existing link; refused"
            );
            json!({"received": true, "outcome": "conflict", "tenant_id": tenant_id})
        }
        EventOutcome::Applied { tenant_id, changed, plan } => {
            if changed.is_some() || plan.is_some() {
                tracing::info!(
                    tenant_id,
                    status = changed.map(TenantStatus::as_str),
                    plan = plan.as_deref(),
                    event = event.kind,
                    "billing changed a tenant"
                );
                // New limits and a new status apply to live connections at once.
                plane.announce(ControlEvent::TenantChanged { tenant: tenant_id.clone() }).await;
            }
            if let Some(action) = change.as_ref().map(|c| c.action.as_str()) {
                let status =
                    plane.store.tenant(tenant_id).await.map(|t| t.status.as_str()).unwrap_or_default();
                let notice = json!({"type": action, "tenant_id": tenant_id, "status": status,
                                    "stripe_event": event.id, "at": event.created});
                notify_tenant(&plane, tenant_id, &notice, &format!("billing:{}", event.id)).await;
            }
            json!({"received": true, "outcome": "applied", "tenant_id": tenant_id,
                   "status": changed.map(TenantStatus::as_str), "plan": plan})
        }
    };
    Ok(Json(described))
}

/// Tells the tenant on each of its apps' system channel (`tributary:system`): its clients and
/// console see it, and its rules on that channel deliver it onwards (a webhook, a text).
async fn notify_tenant(plane: &ControlPlane, tenant_id: &str, notice: &Value, key: &str) {
    match plane.store.apps(tenant_id).await {
        Ok(apps) => {
            for app in apps {
                tributary_delivery::notices::publish(&*plane.engine, &app.id, notice, key.to_owned()).await;
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, tenant_id, "the tenant's billing notice was not sent (the audit log has it)")
        }
    }
}

impl ControlPlane {
    /// Cuts off the tenants past due for longer than `grace_secs` (billing's grace period), in
    /// force on this node before it returns; returns how many. Every node may run it: a tenant
    /// is cut off once.
    pub async fn expire_billing_grace(&self, grace_secs: i64) -> Result<usize, tributary_store::StoreError> {
        let expired = self.store.expire_past_due(grace_secs, tributary_store::unix_now_secs()).await?;
        let now = tributary_store::unix_now_secs();
        for tenant in &expired {
            tracing::info!(tenant_id = tenant, "a tenant's grace period is over: cut off until it pays");
            self.announce(ControlEvent::TenantChanged { tenant: tenant.clone() }).await;
            let notice =
                json!({"type": "billing.grace_expired", "tenant_id": tenant, "status": "unpaid", "at": now});
            notify_tenant(self, tenant, &notice, &format!("billing:grace:{tenant}:{now}")).await;
        }
        Ok(expired.len())
    }
}

/// `GET /v1/tenants/{tenant}/billing` (admin): the tenant's billing as the service knows it —
/// whether billing is on, its status and plan, its Stripe customer and subscription, when its
/// grace period ends if it is past due, and the Stripe events recorded for it, newest first.
pub(crate) async fn get(
    State(plane): State<Arc<ControlPlane>>,
    axum::extract::Path(tenant): axum::extract::Path<String>,
    caller: crate::auth::Caller,
) -> Result<Json<Value>, ApiError> {
    caller.tenant(&tenant, tributary_store::Role::Admin)?;
    let shown = plane.store.tenant(&tenant).await?;
    let account = plane.store.billing_account(&tenant).await?;
    let events = plane.store.billing_events(&tenant, 50).await?;
    let grace_ends_at = account
        .as_ref()
        .and_then(|a| a.past_due_since)
        .filter(|_| shown.status == TenantStatus::PastDue)
        .map(|since| since.saturating_add(plane.settings.billing_grace_secs));
    Ok(Json(json!({
        "enabled": plane.settings.stripe_webhook_secret.is_some(),
        "status": shown.status.as_str(),
        "plan": shown.plan_id,
        "customer_id": account.as_ref().map(|a| a.customer_id.clone()),
        "subscription_id": account.as_ref().and_then(|a| a.subscription_id.clone()),
        "past_due_since": account.as_ref().and_then(|a| a.past_due_since),
        "grace_ends_at": grace_ends_at,
        "events": events.iter().map(|e| json!({"id": e.event_id, "type": e.kind, "created": e.created,
                                                "outcome": e.outcome, "received_at": e.received_at}))
                             .collect::<Vec<_>>(),
    })))
}
