//! The GraphQL API at `/graphql`, for the web console: the same operations as the REST routes,
//! with the same authorisation, through the same handlers. Every field calls the REST handler
//! of its operation with the request's caller, so scoping, roles, validation, audit events and
//! control events cannot differ between the two; results are the REST bodies, as the `JSON`
//! scalar, and errors carry the REST error's `code` and `name` in their extensions.
//!
//! Fields added since the console's first version return typed objects ([`delivery`]: webhook
//! endpoints and rules); the older ones are retyped by the console's issue.
//!
//! Authenticated like every management route: a management token, or a console session with
//! its CSRF token (a GraphQL request is a `POST`).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::{Context, EmptySubscription, Error, ErrorExtensions, Json, MergedObject, Object, Schema};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes;

pub mod audit;
pub mod delivery;
pub mod exchange;
pub mod push;

/// The schema.
pub type ManagementSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Builds the schema.
pub fn schema() -> ManagementSchema {
    Schema::build(QueryRoot::default(), MutationRoot::default(), EmptySubscription)
        .limit_depth(8)
        .limit_complexity(256)
        .finish()
}

/// Every read.
#[derive(MergedObject, Default)]
pub struct QueryRoot(
    CoreQuery,
    delivery::DeliveryQuery,
    push::PushQuery,
    audit::AuditQuery,
    exchange::ExchangeQuery,
);

/// Every change.
#[derive(MergedObject, Default)]
pub struct MutationRoot(
    CoreMutation,
    delivery::DeliveryMutation,
    push::PushMutation,
    audit::AuditMutation,
    exchange::ExchangeMutation,
);

/// A REST handler's successful answer, as JSON.
pub(crate) trait Answer {
    fn into_value(self) -> Value;
}

impl<T: Serialize> Answer for axum::Json<T> {
    fn into_value(self) -> Value {
        serde_json::to_value(self.0).unwrap_or(Value::Null)
    }
}

impl<T: Serialize> Answer for (StatusCode, axum::Json<T>) {
    fn into_value(self) -> Value {
        self.1.into_value()
    }
}

impl Answer for StatusCode {
    fn into_value(self) -> Value {
        Value::Bool(self.is_success())
    }
}

fn graphql_error(err: ApiError) -> Error {
    Error::new(err.message.clone()).extend_with(|_, extensions| {
        extensions.set("code", err.code.number());
        extensions.set("name", err.code.name());
    })
}

/// Runs a REST handler's future and turns its answer into the field's value.
async fn answer<A: Answer>(
    handler: impl std::future::Future<Output = Result<A, ApiError>>,
) -> async_graphql::Result<Json<Value>> {
    handler.await.map(|a| Json(a.into_value())).map_err(graphql_error)
}

fn parts(ctx: &Context<'_>) -> async_graphql::Result<(State<Arc<ControlPlane>>, Caller)> {
    let plane = ctx.data::<Arc<ControlPlane>>()?.clone();
    let caller = ctx.data::<Caller>()?.clone();
    Ok((State(plane), caller))
}

fn body(value: Value) -> Result<Bytes, axum::extract::rejection::BytesRejection> {
    Ok(Bytes::from(value.to_string()))
}

fn query(pairs: &[(&str, Option<String>)]) -> Query<HashMap<String, String>> {
    Query(pairs.iter().filter_map(|(k, v)| v.clone().map(|v| ((*k).to_owned(), v))).collect())
}

/// Reads of tenants, apps, keys and accounts.
#[derive(Default)]
pub struct CoreQuery;

#[Object]
impl CoreQuery {
    /// The console session's user and tenants.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Json<Value>> {
        let (_, caller) = parts(ctx)?;
        answer(routes::account::me(caller)).await
    }

    /// Every tenant (operator).
    async fn tenants(&self, ctx: &Context<'_>) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::tenants::list(state, caller)).await
    }

    /// A tenant.
    async fn tenant(&self, ctx: &Context<'_>, tenant: String) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::tenants::get(state, Path(tenant), caller)).await
    }

    /// The tenant's plan, overrides and limits.
    async fn limits(&self, ctx: &Context<'_>, tenant: String) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::plans::get(state, Path(tenant), caller)).await
    }

    /// Every plan (operator).
    async fn plans(&self, ctx: &Context<'_>) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::plans::list(state, caller)).await
    }

    /// The tenant's apps.
    async fn apps(&self, ctx: &Context<'_>, tenant: String) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::apps::list(state, Path(tenant), caller)).await
    }

    /// An app's API keys (no secrets).
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::keys::list_api_keys(state, Path((tenant, app)), caller)).await
    }

    /// An app's signing keys (no secrets).
    async fn signing_keys(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::keys::list_signing_keys(state, Path((tenant, app)), caller)).await
    }

    /// An app's namespaces.
    async fn namespaces(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::namespaces::list(state, Path((tenant, app)), caller)).await
    }

    /// Tokens minted for an app.
    async fn grants(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        client_id: Option<String>,
        limit: Option<u32>,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        let q = query(&[("client_id", client_id), ("limit", limit.map(|l| l.to_string()))]);
        answer(routes::revocations::grants(state, Path((tenant, app)), q, caller)).await
    }

    /// The tenant's members and their roles.
    async fn members(&self, ctx: &Context<'_>, tenant: String) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::account::members(state, Path(tenant), caller)).await
    }

    /// The tenant's invitations not yet accepted (admin).
    async fn invitations(&self, ctx: &Context<'_>, tenant: String) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::account::invitations(state, Path(tenant), caller)).await
    }

    /// The tenant's management tokens (admin).
    async fn management_tokens(
        &self,
        ctx: &Context<'_>,
        tenant: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::tokens::list(state, Path(tenant), caller)).await
    }

    /// The tenant's audit events (admin), newest first.
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        limit: Option<u32>,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        let q = query(&[("limit", limit.map(|l| l.to_string()))]);
        answer(routes::audit::list(state, Path(tenant), q, caller)).await
    }

    /// The tenant's usage as a time series.
    async fn usage(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        from: Option<i64>,
        to: Option<i64>,
        granularity: Option<String>,
        app_id: Option<String>,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        let q = query(&[
            ("from", from.map(|v| v.to_string())),
            ("to", to.map(|v| v.to_string())),
            ("granularity", granularity),
            ("app_id", app_id),
        ]);
        answer(routes::usage::series(state, Path(tenant), q, caller)).await
    }
}

/// Changes.
#[derive(Default)]
pub struct CoreMutation;

#[Object]
impl CoreMutation {
    /// Creates a tenant (operator).
    async fn create_tenant(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::tenants::create(state, caller, body(json!({"name": name})))).await
    }

    /// Sets a tenant's status (operator).
    async fn set_tenant_status(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        status: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::tenants::set_status(state, Path(tenant), caller, body(json!({"status": status}))))
            .await
    }

    /// Puts a tenant on a plan (operator).
    async fn set_tenant_plan(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        plan: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::plans::set_plan(state, Path(tenant), caller, body(json!({"plan": plan})))).await
    }

    /// Replaces a tenant's overrides (operator).
    async fn set_tenant_limits(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        overrides: Json<Value>,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::plans::set(state, Path(tenant), caller, body(overrides.0))).await
    }

    /// Creates an app with its first signing key.
    async fn create_app(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        name: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::apps::create(state, Path(tenant), caller, body(json!({"name": name})))).await
    }

    /// Creates an API key (with capabilities if given); the secret is in the answer, once.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        name: String,
        capabilities: Option<Json<Value>>,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        let mut request = json!({"name": name});
        if let Some(capabilities) = capabilities {
            request["capabilities"] = capabilities.0;
        }
        answer(routes::keys::create_api_key(state, Path((tenant, app)), caller, body(request))).await
    }

    /// Revokes an API key.
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        key: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::keys::revoke_api_key(state, Path((tenant, app, key)), caller)).await
    }

    /// Rotates an API key with an overlap.
    async fn rotate_api_key(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        key: String,
        overlap_secs: Option<u64>,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        let request = body(json!({"overlap_secs": overlap_secs}));
        answer(routes::keys::rotate_api_key(state, Path((tenant, app, key)), caller, request)).await
    }

    /// Creates a signing key; the secret is in the answer, once.
    async fn create_signing_key(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::keys::create_signing_key(state, Path((tenant, app)), caller)).await
    }

    /// Revokes a signing key (and every token it signed).
    async fn revoke_signing_key(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        kid: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::keys::revoke_signing_key(state, Path((tenant, app, kid)), caller)).await
    }

    /// Raises a signing key's generation (revokes every token it signed so far).
    async fn bump_key_generation(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        kid: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::keys::bump_generation(state, Path((tenant, app, kid)), caller)).await
    }

    /// Revokes one token, a client's tokens, or (`all`) the app's.
    async fn revoke(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        token_id: Option<String>,
        client_id: Option<String>,
        all: Option<bool>,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        let mut request = serde_json::Map::new();
        if let Some(token_id) = token_id {
            request.insert("token_id".into(), token_id.into());
        }
        if let Some(client_id) = client_id {
            request.insert("client_id".into(), client_id.into());
        }
        if let Some(all) = all {
            request.insert("all".into(), all.into());
        }
        answer(routes::revocations::revoke_in_app(
            state,
            Path((tenant, app)),
            caller,
            body(Value::Object(request)),
        ))
        .await
    }

    /// Revokes every token of the tenant.
    async fn revoke_tenant_tokens(
        &self,
        ctx: &Context<'_>,
        tenant: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::revocations::revoke_tenant(state, Path(tenant), caller, body(json!({"all": true}))))
            .await
    }

    /// Creates or replaces a namespace of an app.
    async fn set_namespace(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        name: String,
        options: Json<Value>,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::namespaces::set(state, Path((tenant, app, name)), caller, body(options.0))).await
    }

    /// Deletes a namespace of an app.
    async fn delete_namespace(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        name: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::namespaces::delete(state, Path((tenant, app, name)), caller)).await
    }

    /// Creates a management token of the tenant; the secret is in the answer, once.
    async fn create_management_token(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        name: String,
        role: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::tokens::create(state, Path(tenant), caller, body(json!({"name": name, "role": role}))))
            .await
    }

    /// Revokes a management token of the tenant.
    async fn revoke_management_token(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        token: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::tokens::revoke(state, Path((tenant, token)), caller)).await
    }

    /// Removes a member of the tenant.
    async fn remove_member(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        user: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::account::remove_member(state, Path((tenant, user)), caller)).await
    }

    /// Changes a member's role.
    async fn set_member_role(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        user: String,
        role: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::account::set_role(state, Path((tenant, user)), caller, body(json!({"role": role}))))
            .await
    }

    /// Withdraws an invitation.
    async fn withdraw_invitation(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        invitation: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::account::withdraw(state, Path((tenant, invitation)), caller)).await
    }

    /// Invites someone to the tenant; the invitation token is in the answer, once.
    async fn invite(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        email: String,
        role: String,
    ) -> async_graphql::Result<Json<Value>> {
        let (state, caller) = parts(ctx)?;
        answer(routes::account::invite(
            state,
            Path(tenant),
            caller,
            body(json!({"email": email, "role": role})),
        ))
        .await
    }
}

/// `POST /graphql`: runs one GraphQL request as the authenticated caller.
pub(crate) async fn handle(
    State(plane): State<Arc<ControlPlane>>,
    caller: Caller,
    request: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::Json<async_graphql::Response>, ApiError> {
    let request: async_graphql::Request = crate::body::parse(request)?;
    let schema = plane.graphql.clone();
    let response = schema.execute(request.data(plane.clone()).data(caller)).await;
    Ok(axum::Json(response))
}

/// `GET /graphql/schema`: the schema in SDL, for the console's code generation.
pub(crate) async fn sdl(State(plane): State<Arc<ControlPlane>>) -> String {
    plane.graphql.sdl()
}
