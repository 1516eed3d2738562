//! The routes, one module per kind of record. Every handler starts with the caller's scope and
//! role check (see [`crate::auth`]).

pub(crate) mod account;
pub(crate) mod apps;
pub(crate) mod audit;
pub(crate) mod audit_log;
pub(crate) mod billing;
pub(crate) mod exchanges;
pub(crate) mod keys;
pub(crate) mod namespaces;
pub(crate) mod plans;
pub(crate) mod push;
pub(crate) mod revocations;
pub(crate) mod rules;
pub(crate) mod tenants;
pub(crate) mod tokens;
pub(crate) mod usage;
pub(crate) mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, post, put};

use crate::ControlPlane;
use crate::error::ApiError;

/// Every management route: method, path and handler, in one list that builds the router and
/// that [`crate::routes_list`] hands to the tests keeping the OpenAPI file and the docs in step.
fn table() -> Vec<(Method, String, MethodRouter<Arc<ControlPlane>>)> {
    let tenant = "/v1/tenants/{tenant}";
    let app = "/v1/tenants/{tenant}/apps/{app}";
    let at = |path: &str| path.to_owned();
    let t = |rest: &str| format!("{tenant}{rest}");
    let a = |rest: &str| format!("{app}{rest}");
    vec![
        (Method::POST, at("/v1/tenants"), post(tenants::create)),
        (Method::GET, at("/v1/tenants"), get(tenants::list)),
        (Method::GET, at("/v1/plans"), get(plans::list)),
        // Stripe's events (an invoice with many lines) can be larger than a management request.
        (
            Method::POST,
            at("/v1/billing/stripe/webhook"),
            post(billing::stripe_webhook)
                .layer(axum::extract::DefaultBodyLimit::max(billing::MAX_EVENT_BYTES)),
        ),
        (Method::POST, at("/graphql"), post(crate::graphql::handle)),
        (Method::GET, at("/graphql/schema"), get(crate::graphql::sdl)),
        (Method::POST, at("/v1/operator-tokens"), post(tokens::create_operator)),
        (Method::GET, at("/v1/operator-tokens"), get(tokens::list_operator)),
        (Method::POST, at("/v1/operator-tokens/{token}/revoke"), post(tokens::revoke_operator)),
        (Method::POST, at("/v1/auth/signup"), post(account::signup)),
        (Method::POST, at("/v1/auth/login"), post(account::login)),
        (Method::POST, at("/v1/auth/logout"), post(account::logout)),
        (Method::GET, at("/v1/auth/me"), get(account::me)),
        (Method::POST, at("/v1/auth/invitations/accept"), post(account::accept)),
        (Method::POST, t("/invitations"), post(account::invite)),
        (Method::GET, t("/invitations"), get(account::invitations)),
        (Method::DELETE, t("/invitations/{invitation}"), delete(account::withdraw)),
        (Method::POST, t("/members/{user}/role"), post(account::set_role)),
        (Method::GET, t("/members"), get(account::members)),
        (Method::DELETE, t("/members/{user}"), delete(account::remove_member)),
        (Method::POST, t("/plan"), post(plans::set_plan)),
        (Method::POST, t("/limits"), post(plans::set)),
        (Method::GET, t("/limits"), get(plans::get)),
        (Method::GET, t(""), get(tenants::get)),
        (Method::POST, t("/status"), post(tenants::set_status)),
        (Method::POST, t("/revocations"), post(revocations::revoke_tenant)),
        (Method::GET, t("/audit-events"), get(audit::list)),
        (Method::GET, t("/audit/log"), get(audit_log::get)),
        (Method::GET, t("/audit/entries"), get(audit_log::entries)),
        (Method::GET, t("/audit/checkpoints"), get(audit_log::checkpoints)),
        (Method::GET, t("/audit/proofs/inclusion"), get(audit_log::inclusion)),
        (Method::GET, t("/audit/proofs/consistency"), get(audit_log::consistency)),
        (Method::GET, t("/audit/export"), get(audit_log::export)),
        (Method::POST, t("/audit/rotate-key"), post(audit_log::rotate_key)),
        (Method::PUT, t("/audit/cosigner"), put(audit_log::set_cosigner)),
        (Method::POST, t("/audit/cosignatures"), post(audit_log::cosign)),
        (Method::GET, at("/v1/operator/audit/log"), get(audit_log::operator::get)),
        (Method::GET, at("/v1/operator/audit/entries"), get(audit_log::operator::entries)),
        (Method::GET, at("/v1/operator/audit/checkpoints"), get(audit_log::operator::checkpoints)),
        (Method::GET, at("/v1/operator/audit/proofs/inclusion"), get(audit_log::operator::inclusion)),
        (Method::GET, at("/v1/operator/audit/proofs/consistency"), get(audit_log::operator::consistency)),
        (Method::GET, at("/v1/operator/audit/export"), get(audit_log::operator::export)),
        (Method::GET, t("/billing"), get(billing::get)),
        (Method::POST, t("/exchanges"), post(exchanges::offer)),
        (Method::GET, t("/exchanges"), get(exchanges::list)),
        (Method::GET, t("/exchanges/{exchange}"), get(exchanges::get)),
        (Method::POST, t("/exchanges/{exchange}/accept"), post(exchanges::accept)),
        (Method::POST, t("/exchanges/{exchange}/suspend"), post(exchanges::suspend)),
        (Method::POST, t("/exchanges/{exchange}/resume"), post(exchanges::resume)),
        (Method::POST, t("/exchanges/{exchange}/end"), post(exchanges::end)),
        (Method::GET, t("/exchanges/{exchange}/audit/log"), get(audit_log::get)),
        (Method::GET, t("/exchanges/{exchange}/audit/entries"), get(audit_log::entries)),
        (Method::GET, t("/exchanges/{exchange}/audit/checkpoints"), get(audit_log::checkpoints)),
        (Method::GET, t("/exchanges/{exchange}/audit/proofs/inclusion"), get(audit_log::inclusion)),
        (Method::GET, t("/exchanges/{exchange}/audit/proofs/consistency"), get(audit_log::consistency)),
        (Method::GET, t("/exchanges/{exchange}/audit/export"), get(audit_log::export)),
        (Method::POST, t("/exchanges/{exchange}/audit/cosignatures"), post(audit_log::cosign)),
        (Method::GET, t("/usage"), get(usage::series)),
        (Method::POST, t("/apps"), post(apps::create)),
        (Method::GET, t("/apps"), get(apps::list)),
        (Method::GET, a(""), get(apps::get)),
        (Method::POST, a("/api-keys"), post(keys::create_api_key)),
        (Method::GET, a("/api-keys"), get(keys::list_api_keys)),
        (Method::POST, a("/api-keys/{key}/revoke"), post(keys::revoke_api_key)),
        (Method::POST, a("/api-keys/{key}/rotate"), post(keys::rotate_api_key)),
        (Method::POST, a("/signing-keys"), post(keys::create_signing_key)),
        (Method::GET, a("/signing-keys"), get(keys::list_signing_keys)),
        (Method::POST, a("/signing-keys/{kid}/revoke"), post(keys::revoke_signing_key)),
        (Method::POST, a("/signing-keys/{kid}/bump-generation"), post(keys::bump_generation)),
        (Method::POST, a("/revocations"), post(revocations::revoke_in_app)),
        (Method::GET, a("/grants"), get(revocations::grants)),
        (Method::GET, a("/namespaces"), get(namespaces::list)),
        (Method::POST, a("/namespaces/{name}"), post(namespaces::set)),
        (Method::DELETE, a("/namespaces/{name}"), delete(namespaces::delete)),
        (Method::POST, a("/webhooks"), post(webhooks::create)),
        (Method::GET, a("/webhooks"), get(webhooks::list)),
        (Method::GET, a("/webhooks/{webhook}"), get(webhooks::get)),
        (Method::DELETE, a("/webhooks/{webhook}"), delete(webhooks::delete)),
        (Method::POST, a("/webhooks/{webhook}/enable"), post(webhooks::enable)),
        (Method::POST, a("/webhooks/{webhook}/disable"), post(webhooks::disable)),
        (Method::POST, a("/webhooks/{webhook}/rotate-secret"), post(webhooks::rotate_secret)),
        (Method::POST, a("/webhooks/{webhook}/test"), post(webhooks::test)),
        (Method::GET, a("/webhooks/{webhook}/deliveries"), get(webhooks::deliveries)),
        (Method::GET, a("/webhooks/{webhook}/dead-letters"), get(webhooks::dead_letters)),
        (Method::POST, a("/webhooks/{webhook}/dead-letters/{delivery}/replay"), post(webhooks::replay)),
        (Method::GET, a("/push-credentials"), get(push::list)),
        (Method::PUT, a("/push-credentials/{service}"), put(push::set)),
        (Method::DELETE, a("/push-credentials/{service}"), delete(push::delete)),
        (Method::POST, a("/rules"), post(rules::create)),
        (Method::GET, a("/rules"), get(rules::list)),
        (Method::GET, a("/rules/{rule}"), get(rules::get)),
        (Method::PUT, a("/rules/{rule}"), put(rules::update)),
        (Method::DELETE, a("/rules/{rule}"), delete(rules::delete)),
        (Method::POST, a("/rules/{rule}/enable"), post(rules::enable)),
        (Method::POST, a("/rules/{rule}/disable"), post(rules::disable)),
        (Method::POST, t("/management-tokens"), post(tokens::create)),
        (Method::GET, t("/management-tokens"), get(tokens::list)),
        (Method::POST, t("/management-tokens/{token}/revoke"), post(tokens::revoke)),
    ]
}

/// Every management route, as a router.
pub(crate) fn all() -> Router<Arc<ControlPlane>> {
    // Routes of one path are merged first: axum refuses a path given twice.
    let mut by_path: BTreeMap<String, MethodRouter<Arc<ControlPlane>>> = BTreeMap::new();
    for (_, path, handler) in table() {
        let merged = match by_path.remove(&path) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(path, merged);
    }
    by_path.into_iter().fold(Router::new(), |router, (path, handler)| router.route(&path, handler))
}

/// Every management route as `(method, path)`, in the order of the table.
pub(crate) fn list() -> Vec<(Method, String)> {
    table().into_iter().map(|(method, path, _)| (method, path)).collect()
}

/// Checks that `app` is an app of `tenant` (after the caller's scope was checked): a
/// tenant's own ids and another tenant's look the same, `not_found`.
async fn app_of(plane: &ControlPlane, tenant: &str, app: &str) -> Result<tributary_store::App, ApiError> {
    Ok(plane.store.app(tenant, app).await?)
}

/// Reads `?limit=` (default 50, at most 500).
fn limit(query: &std::collections::HashMap<String, String>) -> Result<u32, ApiError> {
    match query.get("limit") {
        None => Ok(50),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::invalid("limit must be an integer from 1 to 500")),
    }
}
