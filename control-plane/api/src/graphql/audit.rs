//! GraphQL for a tenant's audit log (docs/audit.md), typed: each field calls the REST handler of
//! its operation (`routes::audit_log`) and reads its answer into the type, so scoping, roles and
//! validation are the REST route's.

use async_graphql::{Context, Json, Object, SimpleObject};
use axum::extract::Path;
use serde::Deserialize;
use serde_json::{Value, json};

use super::delivery::typed;
use super::{body, parts, query};
use crate::routes;
use crate::routes::audit_log::LogScope;

/// A log's key: its own signing keys, or a cosigning key the tenant holds.
#[derive(SimpleObject, Deserialize, Clone, Debug)]
pub struct AuditKey {
    /// `<name>+<key id>+<base64>`, Go's `note` format.
    pub public_key: String,
    /// Unix seconds.
    pub created_at: i64,
    /// When it was replaced (its signatures still verify); none for the key in use.
    pub retired_at: Option<i64>,
}

/// A tenant's audit log.
#[derive(SimpleObject, Deserialize, Clone, Debug)]
pub struct AuditLog {
    /// The log's name, the first line of its checkpoints.
    pub origin: String,
    /// Entries appended.
    pub size: u64,
    /// The newest signed checkpoint (a signed note), if any.
    pub checkpoint: Option<String>,
    /// The entries it covers.
    pub checkpoint_size: u64,
    /// The log's signing keys, oldest first.
    pub keys: Vec<AuditKey>,
    /// The tenant's registered cosigning keys, oldest first.
    pub cosigners: Vec<AuditKey>,
    /// The largest checkpoint the tenant cosigned (0: none).
    pub cosigned_size: u64,
}

/// An entry of the log.
#[derive(SimpleObject, Deserialize, Clone, Debug)]
pub struct AuditEntry {
    /// Its index.
    pub index: u64,
    /// The previous entry's leaf hash, base64.
    pub prev: String,
    /// Its canonical JSON, base64 (what its leaf hashes).
    pub body: String,
    /// Its body, read.
    pub entry: Json<Value>,
    /// When it was appended, milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// A signed checkpoint.
#[derive(SimpleObject, Deserialize, Clone, Debug)]
pub struct AuditCheckpoint {
    /// The entries it covers.
    pub size: u64,
    /// The signed note.
    pub note: String,
    /// When it was signed, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Whether it carries the tenant's own cosignature.
    pub cosigned: bool,
}

/// An entry's inclusion proof in a signed checkpoint (a receipt).
#[derive(SimpleObject, Deserialize, Clone, Debug)]
pub struct AuditInclusionProof {
    /// The entry.
    pub entry: AuditEntry,
    /// Its leaf hash, base64.
    pub leaf_hash: String,
    /// The checkpoint's size.
    pub size: u64,
    /// The proof's hashes, base64, from the leaf up.
    pub proof: Vec<String>,
    /// The checkpoint (signed note).
    pub checkpoint: String,
}

/// The proof that one checkpoint extends another.
#[derive(SimpleObject, Deserialize, Clone, Debug)]
pub struct AuditConsistencyProof {
    /// The older checkpoint's size.
    pub from: u64,
    /// The newer one's.
    pub to: u64,
    /// The proof's hashes, base64.
    pub proof: Vec<String>,
    /// Both checkpoints (signed notes), older first.
    pub checkpoints: Vec<String>,
}

/// Reads of the audit log.
#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// The tenant's audit log (with `exchange`: that exchange's, for either party; so for every
    /// read below): its size, newest checkpoint and keys (admin).
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        exchange: Option<String>,
    ) -> async_graphql::Result<AuditLog> {
        let (state, caller) = parts(ctx)?;
        typed(routes::audit_log::get(state, Path(LogScope::new(tenant, exchange)), caller)).await
    }

    /// Entries of the log from `from` (admin).
    async fn audit_entries(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        exchange: Option<String>,
        from: Option<u64>,
        limit: Option<u32>,
    ) -> async_graphql::Result<Vec<AuditEntry>> {
        let (state, caller) = parts(ctx)?;
        let q = query(&[("from", from.map(|v| v.to_string())), ("limit", limit.map(|v| v.to_string()))]);
        typed(routes::audit_log::entries(state, Path(LogScope::new(tenant, exchange)), q, caller)).await
    }

    /// Signed checkpoints of at least `fromSize` entries, smallest first (admin).
    async fn audit_checkpoints(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        exchange: Option<String>,
        from_size: Option<u64>,
        limit: Option<u32>,
    ) -> async_graphql::Result<Vec<AuditCheckpoint>> {
        let (state, caller) = parts(ctx)?;
        let q = query(&[
            ("from_size", from_size.map(|v| v.to_string())),
            ("limit", limit.map(|v| v.to_string())),
        ]);
        typed(routes::audit_log::checkpoints(state, Path(LogScope::new(tenant, exchange)), q, caller)).await
    }

    /// A receipt: entry `index` (or a message by `app`, `channel`, `epoch`, `offset`) and its
    /// proof in the checkpoint of `size` entries (default: the newest) (admin).
    #[allow(clippy::too_many_arguments)]
    async fn audit_inclusion_proof(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        exchange: Option<String>,
        index: Option<u64>,
        app: Option<String>,
        channel: Option<String>,
        epoch: Option<String>,
        offset: Option<u64>,
        size: Option<u64>,
    ) -> async_graphql::Result<AuditInclusionProof> {
        let (state, caller) = parts(ctx)?;
        let q = query(&[
            ("index", index.map(|v| v.to_string())),
            ("app", app),
            ("channel", channel),
            ("epoch", epoch),
            ("offset", offset.map(|v| v.to_string())),
            ("size", size.map(|v| v.to_string())),
        ]);
        typed(routes::audit_log::inclusion(state, Path(LogScope::new(tenant, exchange)), q, caller)).await
    }

    /// The proof that the checkpoint of `to` entries (default: the newest) extends the one of
    /// `from` (admin).
    async fn audit_consistency_proof(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        exchange: Option<String>,
        from: u64,
        to: Option<u64>,
    ) -> async_graphql::Result<AuditConsistencyProof> {
        let (state, caller) = parts(ctx)?;
        let q = query(&[("from", Some(from.to_string())), ("to", to.map(|v| v.to_string()))]);
        typed(routes::audit_log::consistency(state, Path(LogScope::new(tenant, exchange)), q, caller)).await
    }
}

/// Changes of the audit log's keys and cosignatures.
#[derive(Default)]
pub struct AuditMutation;

#[Object]
impl AuditMutation {
    /// A new key signs the log's checkpoints from now on (admin).
    async fn rotate_audit_key(&self, ctx: &Context<'_>, tenant: String) -> async_graphql::Result<AuditLog> {
        let (state, caller) = parts(ctx)?;
        typed(routes::audit_log::rotate_key(state, Path(tenant), caller)).await
    }

    /// Registers the tenant's own cosigning key (admin).
    async fn set_audit_cosigner(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        public_key: String,
    ) -> async_graphql::Result<AuditLog> {
        let (state, caller) = parts(ctx)?;
        let body = body(json!({ "public_key": public_key }));
        typed(routes::audit_log::set_cosigner(state, Path(tenant), caller, body)).await
    }

    /// Posts a checkpoint cosigned with the tenant's registered key (admin), of the tenant's log
    /// or of `exchange`'s.
    async fn post_audit_cosignature(
        &self,
        ctx: &Context<'_>,
        tenant: String,
        exchange: Option<String>,
        checkpoint: String,
    ) -> async_graphql::Result<AuditCheckpoint> {
        let (state, caller) = parts(ctx)?;
        let body = body(json!({ "checkpoint": checkpoint }));
        typed(routes::audit_log::cosign(state, Path(LogScope::new(tenant, exchange)), caller, body)).await
    }
}
