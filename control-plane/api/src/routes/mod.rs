//! The routes, one module per kind of record. Every handler starts with the caller's scope and
//! role check (see [`crate::auth`]).

pub(crate) mod account;
pub(crate) mod apps;
pub(crate) mod audit;
pub(crate) mod keys;
pub(crate) mod namespaces;
pub(crate) mod plans;
pub(crate) mod revocations;
pub(crate) mod tenants;
pub(crate) mod tokens;
pub(crate) mod usage;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::ControlPlane;
use crate::error::ApiError;

/// Every management route.
pub(crate) fn all() -> Router<Arc<ControlPlane>> {
    let tenant = "/v1/tenants/{tenant}";
    let app = "/v1/tenants/{tenant}/apps/{app}";
    Router::new()
        .route("/v1/tenants", post(tenants::create).get(tenants::list))
        .route("/v1/plans", get(plans::list))
        .route("/graphql", post(crate::graphql::handle))
        .route("/graphql/schema", get(crate::graphql::sdl))
        .route("/v1/operator-tokens", post(tokens::create_operator).get(tokens::list_operator))
        .route("/v1/operator-tokens/{token}/revoke", post(tokens::revoke_operator))
        .route("/v1/auth/signup", post(account::signup))
        .route("/v1/auth/login", post(account::login))
        .route("/v1/auth/logout", post(account::logout))
        .route("/v1/auth/me", get(account::me))
        .route("/v1/auth/invitations/accept", post(account::accept))
        .route(&format!("{tenant}/invitations"), post(account::invite).get(account::invitations))
        .route(&format!("{tenant}/invitations/{{invitation}}"), axum::routing::delete(account::withdraw))
        .route(&format!("{tenant}/members/{{user}}/role"), post(account::set_role))
        .route(&format!("{tenant}/members"), get(account::members))
        .route(&format!("{tenant}/members/{{user}}"), axum::routing::delete(account::remove_member))
        .route(&format!("{tenant}/plan"), post(plans::set_plan))
        .route(&format!("{tenant}/limits"), post(plans::set).get(plans::get))
        .route(tenant, get(tenants::get))
        .route(&format!("{tenant}/status"), post(tenants::set_status))
        .route(&format!("{tenant}/revocations"), post(revocations::revoke_tenant))
        .route(&format!("{tenant}/audit-events"), get(audit::list))
        .route(&format!("{tenant}/usage"), get(usage::series))
        .route(&format!("{tenant}/apps"), post(apps::create).get(apps::list))
        .route(app, get(apps::get))
        .route(&format!("{app}/api-keys"), post(keys::create_api_key).get(keys::list_api_keys))
        .route(&format!("{app}/api-keys/{{key}}/revoke"), post(keys::revoke_api_key))
        .route(&format!("{app}/api-keys/{{key}}/rotate"), post(keys::rotate_api_key))
        .route(&format!("{app}/signing-keys"), post(keys::create_signing_key).get(keys::list_signing_keys))
        .route(&format!("{app}/signing-keys/{{kid}}/revoke"), post(keys::revoke_signing_key))
        .route(&format!("{app}/signing-keys/{{kid}}/bump-generation"), post(keys::bump_generation))
        .route(&format!("{app}/revocations"), post(revocations::revoke_in_app))
        .route(&format!("{app}/grants"), get(revocations::grants))
        .route(&format!("{app}/namespaces"), get(namespaces::list))
        .route(&format!("{app}/namespaces/{{name}}"), post(namespaces::set).delete(namespaces::delete))
        .route(&format!("{tenant}/management-tokens"), post(tokens::create).get(tokens::list))
        .route(&format!("{tenant}/management-tokens/{{token}}/revoke"), post(tokens::revoke))
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
