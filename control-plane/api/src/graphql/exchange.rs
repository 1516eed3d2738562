//! GraphQL for exchanges between tenants, typed: each field calls the REST handler of its
//! operation (docs/management-api.md#exchanges) and reads its answer into the type.

use async_graphql::{Context, Object, SimpleObject};
use axum::extract::Path;
use serde::Deserialize;
use serde_json::json;

use super::delivery::typed;
use super::{body, parts};
use crate::routes;

/// An exchange, as either party sees it.
#[derive(SimpleObject, Deserialize, Clone, Debug)]
pub struct Exchange {
    /// `exc_…`.
    pub id: String,
    /// `offerer` or `partner`: which side the caller is.
    pub side: String,
    /// The namespace shared.
    pub namespace: String,
    /// The offering tenant.
    pub offerer_tenant_id: String,
    /// The offering tenant's app.
    pub offerer_app_id: String,
    /// The tenant it was offered to.
    pub partner_tenant_id: String,
    /// The partner's app, once accepted.
    pub partner_app_id: Option<String>,
    /// What the offering side may do on the namespace.
    pub offerer_rights: Vec<String>,
    /// What the partner may do.
    pub partner_rights: Vec<String>,
    /// `offered`, `active`, `suspended` or `ended`.
    pub status: String,
    /// The tenant that suspended or ended it.
    pub changed_by: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// The largest checkpoint of its log the offering side cosigned.
    pub offerer_cosigned_size: u64,
    /// The largest the partner cosigned.
    pub partner_cosigned_size: u64,
}

/// Reads of exchanges.
#[derive(Default)]
pub struct ExchangeQuery;

#[Object]
impl ExchangeQuery {
    /// The exchanges the tenant offered or was offered, newest first (read_only).
    async fn exchanges(&self, ctx: &Context<'_>, tenant: String) -> async_graphql::Result<Vec<Exchange>> {
        let (state, caller) = parts(ctx)?;
        typed(routes::exchanges::list(state, Path(tenant), caller)).await
    }

    /// One exchange the tenant is a party of (read_only).
    async fn exchange(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        id: String,
    ) -> async_graphql::Result<Exchange> {
        let (state, caller) = parts(ctx)?;
        typed(routes::exchanges::get(state, Path((tenant, id)), caller)).await
    }
}

/// Changes of exchanges.
#[derive(Default)]
pub struct ExchangeMutation;

#[Object]
impl ExchangeMutation {
    /// Offers `namespace` of the tenant's `app` to `partnerTenantId` (admin).
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per field of the offer, as GraphQL takes them"
    )]
    async fn offer_exchange(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        namespace: String,
        partner_tenant_id: String,
        offerer_rights: Vec<String>,
        partner_rights: Vec<String>,
    ) -> async_graphql::Result<Exchange> {
        let (state, caller) = parts(ctx)?;
        let body = body(json!({
            "app_id": app, "namespace": namespace, "partner_tenant_id": partner_tenant_id,
            "offerer_rights": offerer_rights, "partner_rights": partner_rights,
        }));
        typed(routes::exchanges::offer(state, Path(tenant), caller, body)).await
    }

    /// Accepts an exchange offered to the tenant, into its `app` (admin).
    async fn accept_exchange(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        id: String,
        app: String,
    ) -> async_graphql::Result<Exchange> {
        let (state, caller) = parts(ctx)?;
        let body = body(json!({ "app_id": app }));
        typed(routes::exchanges::accept(state, Path((tenant, id)), caller, body)).await
    }

    /// Suspends an exchange (admin of either side).
    async fn suspend_exchange(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        id: String,
    ) -> async_graphql::Result<Exchange> {
        let (state, caller) = parts(ctx)?;
        typed(routes::exchanges::suspend(state, Path((tenant, id)), caller)).await
    }

    /// Resumes an exchange the tenant suspended (admin).
    async fn resume_exchange(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        id: String,
    ) -> async_graphql::Result<Exchange> {
        let (state, caller) = parts(ctx)?;
        typed(routes::exchanges::resume(state, Path((tenant, id)), caller)).await
    }

    /// Ends an exchange, or declines an offer (admin of either side).
    async fn end_exchange(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        id: String,
    ) -> async_graphql::Result<Exchange> {
        let (state, caller) = parts(ctx)?;
        typed(routes::exchanges::end(state, Path((tenant, id)), caller)).await
    }
}
