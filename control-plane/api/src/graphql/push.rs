//! GraphQL for an app's push and SMS credentials, typed like the webhooks' fields: each field
//! calls the REST handler of its operation and reads its answer into the type.

use async_graphql::{Context, Json, Object, SimpleObject};
use axum::extract::Path;
use serde::Deserialize;
use serde_json::Value;

use super::delivery::typed;
use super::{body, parts};
use crate::routes;

/// An app's credentials for one service (never the secret).
#[derive(SimpleObject, Deserialize, Clone, Debug)]
pub struct PushCredentials {
    /// `apns`, `fcm`, `webpush` or `twilio`.
    pub service: String,
    /// What may be shown (key and team ids, the project, the public key, the sender).
    pub settings: Json<Value>,
    /// Why the service refused them, if it did: the app's sends through it are stopped.
    pub disabled_reason: Option<String>,
    /// Unix seconds.
    pub updated_at: i64,
}

/// Reads of push credentials.
#[derive(Default)]
pub struct PushQuery;

#[Object]
impl PushQuery {
    /// An app's push and SMS credentials.
    async fn push_credentials(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
    ) -> async_graphql::Result<Vec<PushCredentials>> {
        let (state, caller) = parts(ctx)?;
        typed(routes::push::list(state, Path((tenant, app)), caller)).await
    }
}

/// Changes of push credentials.
#[derive(Default)]
pub struct PushMutation;

#[Object]
impl PushMutation {
    /// Sets or replaces an app's credentials for `service`; `credentials` is the REST body of
    /// that service (docs/management-api.md#push-credentials).
    async fn set_push_credentials(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        service: String,
        credentials: Json<Value>,
    ) -> async_graphql::Result<PushCredentials> {
        let (state, caller) = parts(ctx)?;
        typed(routes::push::set(state, Path((tenant, app, service)), caller, body(credentials.0))).await
    }

    /// Deletes an app's credentials for `service`.
    async fn delete_push_credentials(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        app: String,
        service: String,
    ) -> async_graphql::Result<bool> {
        let (state, caller) = parts(ctx)?;
        typed(routes::push::delete(state, Path((tenant, app, service)), caller)).await
    }
}
