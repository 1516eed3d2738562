//! A tenant's audit log (docs/audit.md): its state and keys, its entries and signed
//! checkpoints, inclusion proofs (receipts, also by a message's channel and offset), consistency
//! proofs, export, the rotation of its signing key, and cosigning with a key the tenant holds.
//! All `admin`. An exchange's log is served the same way to each of its two parties, under
//! `/v1/tenants/{tenant}/exchanges/{exchange}/audit/…`.

mod export;
pub(crate) mod operator;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_audit::checkpoint::Checkpoint;
use tributary_audit::note::{NoteVerifier, open, signature_line_of};
use tributary_delivery::audit_log::proofs::{self, ProofError};
use tributary_delivery::audit_log::{NewLogKey, message_source};
use tributary_protocol::ErrorCode;
use tributary_store::audit_log::{OPERATOR_LOG, tenant_log_id};
use tributary_store::exchange::{Exchange, Side};
use tributary_store::{AuditCheckpoint, AuditEntry, AuditLogState, Role, Store, StoreError};

pub(crate) use export::export;

use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::ApiError;

/// A log's state as the API shows it.
#[derive(Serialize)]
pub(crate) struct LogView {
    origin: String,
    size: u64,
    /// The newest signed checkpoint (a signed note), if any.
    checkpoint: Option<String>,
    checkpoint_size: u64,
    /// The log's keys, oldest first: the newest unretired one signs.
    keys: Vec<KeyView>,
    /// Keys the tenant holds itself, registered to cosign: the unretired one cosigns.
    cosigners: Vec<KeyView>,
    /// The largest checkpoint the tenant cosigned (0: none).
    cosigned_size: u64,
}

#[derive(Serialize)]
pub(crate) struct KeyView {
    public_key: String,
    created_at: i64,
    retired_at: Option<i64>,
}

/// An entry as the API shows it: its stored fields (base64) and its body read as JSON.
#[derive(Serialize)]
pub(crate) struct EntryView {
    index: u64,
    prev: String,
    body: String,
    entry: serde_json::Value,
    at_ms: i64,
}

impl From<AuditEntry> for EntryView {
    fn from(e: AuditEntry) -> Self {
        Self {
            index: e.index,
            prev: STANDARD.encode(&e.prev),
            entry: serde_json::from_slice(&e.body).unwrap_or_default(),
            body: STANDARD.encode(&e.body),
            at_ms: e.at_ms,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct CheckpointView {
    size: u64,
    note: String,
    at_ms: i64,
    cosigned: bool,
}

impl From<AuditCheckpoint> for CheckpointView {
    fn from(c: AuditCheckpoint) -> Self {
        Self { size: c.size, note: c.note, at_ms: c.at_ms, cosigned: c.cosigned }
    }
}

/// Which log a request names: the tenant's own (`/v1/tenants/{tenant}/audit/…`), that of an
/// exchange the tenant is a party of (`/v1/tenants/{tenant}/exchanges/{exchange}/audit/…`), or
/// the operator's (`/v1/operator/audit/…`, no tenant).
#[derive(Deserialize)]
pub(crate) struct LogScope {
    tenant: String,
    #[serde(default)]
    exchange: Option<String>,
}

impl LogScope {
    /// The tenant's own log, or an exchange's the tenant is a party of.
    pub(crate) fn new(tenant: String, exchange: Option<String>) -> Self {
        Self { tenant, exchange }
    }

    /// The operator's log.
    pub(crate) fn operator() -> Self {
        Self { tenant: String::new(), exchange: None }
    }

    /// The tenant's own log.
    pub(crate) fn tenant(tenant: String) -> Self {
        Self { tenant, exchange: None }
    }
}

/// A log, once scope and role are checked, with its exchange if it is one's.
pub(crate) struct Scoped {
    pub(crate) log: AuditLogState,
    pub(crate) exchange: Option<Exchange>,
}

/// The log `scope` names, once scope and role are checked (an exchange's only for its parties).
pub(crate) async fn log_of(
    plane: &ControlPlane,
    caller: &Caller,
    scope: &LogScope,
) -> Result<Scoped, ApiError> {
    if scope.tenant.is_empty() {
        // The operator's log: actions of no tenant.
        caller.operator()?;
        let log = plane.store.audit_log(OPERATOR_LOG).await.map_err(|err| match err {
            StoreError::NotFound(_) => {
                ApiError::new(ErrorCode::NotFound, "the operator's log has no entry yet")
            }
            other => other.into(),
        })?;
        return Ok(Scoped { log, exchange: None });
    }
    caller.tenant(&scope.tenant, Role::Admin)?;
    plane.store.tenant(&scope.tenant).await?;
    let Some(exchange_id) = &scope.exchange else {
        return Ok(Scoped {
            log: plane.store.audit_log(&tenant_log_id(&scope.tenant)).await?,
            exchange: None,
        });
    };
    let exchange = plane.store.exchange(&scope.tenant, exchange_id).await?;
    let log = plane.store.audit_log(&exchange.log_id()).await.map_err(|err| match err {
        StoreError::NotFound(_) if exchange.partner_app_id.is_none() => {
            ApiError::new(ErrorCode::NotFound, "the exchange has no log until it is accepted")
        }
        // A delivery worker makes it within a second of the acceptance.
        StoreError::NotFound(_) => {
            ApiError::new(ErrorCode::NotFound, "the exchange's log is being started; try again")
        }
        other => other.into(),
    })?;
    Ok(Scoped { log, exchange: Some(exchange) })
}

/// `GET /v1/tenants/{tenant}/audit/log` (admin).
pub(crate) async fn get(
    State(plane): State<Arc<ControlPlane>>,
    Path(scope): Path<LogScope>,
    caller: Caller,
) -> Result<Json<LogView>, ApiError> {
    let Scoped { log, exchange } = log_of(&plane, &caller, &scope).await?;
    let checkpoint = plane.store.latest_audit_checkpoint(&log.id).await?;
    let keys = plane.store.audit_keys(&log.id).await?;
    let (cosigners, cosigned_size) = match &exchange {
        None => plane.store.audit_cosigners(&log.id).await?,
        // An exchange's log is cosigned by each party's own registered key.
        Some(exchange) => {
            let mut keys = Vec::new();
            for tenant in [&exchange.offerer_tenant_id, &exchange.partner_tenant_id] {
                keys.extend(plane.store.audit_cosigners(&tenant_log_id(tenant)).await?.0);
            }
            (keys, exchange.offerer_cosigned_size.min(exchange.partner_cosigned_size))
        }
    };
    let view = |k: tributary_store::AuditKey| KeyView {
        public_key: k.verifier,
        created_at: k.created_at,
        retired_at: k.retired_at,
    };
    Ok(Json(LogView {
        origin: log.origin,
        size: log.size,
        checkpoint_size: checkpoint.as_ref().map_or(0, |c| c.size),
        checkpoint: checkpoint.map(|c| c.note),
        keys: keys.into_iter().map(view).collect(),
        cosigners: cosigners.into_iter().map(view).collect(),
        cosigned_size,
    }))
}

pub(crate) fn number(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    query
        .get(name)
        .map(|text| {
            text.parse::<u64>()
                .map_err(|_| ApiError::invalid(format!("{name} must be a non-negative integer")))
        })
        .transpose()
}

fn page_limit(query: &HashMap<String, String>, max: u64) -> Result<i64, ApiError> {
    let limit = number(query, "limit")?.unwrap_or(100);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1 to {max}")));
    }
    Ok(i64::try_from(limit).unwrap_or(100))
}

/// `GET …/audit/entries?from=&limit=` (admin): entries in order from `from` (default 0).
pub(crate) async fn entries(
    State(plane): State<Arc<ControlPlane>>,
    Path(scope): Path<LogScope>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<Vec<EntryView>>, ApiError> {
    let log = log_of(&plane, &caller, &scope).await?.log;
    let from = number(&query, "from")?.unwrap_or(0);
    let limit = page_limit(&query, 1000)?;
    let entries = plane.store.audit_entries(&log.id, from, limit).await?;
    Ok(Json(entries.into_iter().map(EntryView::from).collect()))
}

/// `GET …/audit/checkpoints?from_size=&limit=` (admin): signed checkpoints, smallest first.
pub(crate) async fn checkpoints(
    State(plane): State<Arc<ControlPlane>>,
    Path(scope): Path<LogScope>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<Vec<CheckpointView>>, ApiError> {
    let log = log_of(&plane, &caller, &scope).await?.log;
    let from = number(&query, "from_size")?.unwrap_or(0);
    let limit = page_limit(&query, 1000)?;
    let found = plane.store.audit_checkpoints(&log.id, from, limit).await?;
    Ok(Json(found.into_iter().map(CheckpointView::from).collect()))
}

/// A checkpoint of exactly `size` entries, or the newest when `size` is `None`.
async fn checkpoint_at(
    store: &Store,
    log: &AuditLogState,
    size: Option<u64>,
) -> Result<AuditCheckpoint, ApiError> {
    let found = match size {
        None => store.latest_audit_checkpoint(&log.id).await?,
        Some(size) => store.audit_checkpoints(&log.id, size, 1).await?.into_iter().find(|c| c.size == size),
    };
    found.ok_or_else(|| match size {
        None => ApiError::new(ErrorCode::NotFound, "the log has no signed checkpoint yet"),
        Some(size) => ApiError::new(ErrorCode::NotFound, format!("no checkpoint of size {size}")),
    })
}

pub(crate) fn proof_error(err: ProofError) -> ApiError {
    match err {
        ProofError::OutOfRange(why) => ApiError::invalid(why),
        ProofError::Incomplete(what) => {
            tracing::error!(what, "an audit log's stored tree is incomplete");
            ApiError::new(ErrorCode::Internal, format!("the stored log lacks {what}"))
        }
        ProofError::Store(err) => err.into(),
    }
}

/// An inclusion proof, a receipt.
#[derive(Serialize)]
pub(crate) struct InclusionView {
    entry: EntryView,
    leaf_hash: String,
    size: u64,
    proof: Vec<String>,
    checkpoint: String,
}

/// `GET …/audit/proofs/inclusion?index=&size=` or `?app=&channel=&epoch=&offset=` (admin): the
/// entry, its proof in the checkpoint of `size` (default: the newest) and that checkpoint.
pub(crate) async fn inclusion(
    State(plane): State<Arc<ControlPlane>>,
    Path(scope): Path<LogScope>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<InclusionView>, ApiError> {
    let log = log_of(&plane, &caller, &scope).await?.log;
    let entry = match (number(&query, "index")?, query.get("channel")) {
        (Some(index), None) => {
            plane.store.audit_entries(&log.id, index, 1).await?.into_iter().find(|e| e.index == index)
        }
        (None, Some(channel)) => {
            let (Some(app), Some(epoch), Some(offset)) =
                (query.get("app"), query.get("epoch"), number(&query, "offset")?)
            else {
                return Err(ApiError::invalid("a receipt by message names app, channel, epoch and offset"));
            };
            plane.store.audit_entry_by_source(&log.id, &message_source(app, epoch, offset, channel)).await?
        }
        _ => {
            return Err(ApiError::invalid(
                "name an entry by index, or a message by app, channel, epoch and offset",
            ));
        }
    };
    let entry = entry.ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such entry in the log (yet)"))?;
    let checkpoint = checkpoint_at(&plane.store, &log, number(&query, "size")?).await?;
    if entry.index >= checkpoint.size {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("entry {} is not in a signed checkpoint yet (newest: {})", entry.index, checkpoint.size),
        ));
    }
    let proof =
        proofs::inclusion(&plane.store, &log.id, entry.index, checkpoint.size).await.map_err(proof_error)?;
    let leaf = leaf_hash_of(&entry)
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "a stored entry is damaged"))?;
    Ok(Json(InclusionView {
        leaf_hash: STANDARD.encode(leaf),
        size: checkpoint.size,
        proof: proof.iter().map(|h| STANDARD.encode(h)).collect(),
        checkpoint: checkpoint.note,
        entry: entry.into(),
    }))
}

fn leaf_hash_of(entry: &AuditEntry) -> Option<[u8; 32]> {
    let prev = entry.prev.as_slice().try_into().ok()?;
    Some(tributary_audit::export::Entry { index: entry.index, prev, body: entry.body.clone() }.leaf_hash())
}

/// A consistency proof between two checkpoints.
#[derive(Serialize)]
pub(crate) struct ConsistencyView {
    from: u64,
    to: u64,
    proof: Vec<String>,
    checkpoints: [String; 2],
}

/// `GET …/audit/proofs/consistency?from=&to=` (admin): the proof that the checkpoint of `to`
/// entries (default: the newest) extends the one of `from`, and both checkpoints.
pub(crate) async fn consistency(
    State(plane): State<Arc<ControlPlane>>,
    Path(scope): Path<LogScope>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<ConsistencyView>, ApiError> {
    let log = log_of(&plane, &caller, &scope).await?.log;
    let from =
        number(&query, "from")?.ok_or_else(|| ApiError::invalid("from is the older checkpoint's size"))?;
    let newer = checkpoint_at(&plane.store, &log, number(&query, "to")?).await?;
    let older = checkpoint_at(&plane.store, &log, Some(from)).await?;
    let proof =
        proofs::consistency(&plane.store, &log.id, older.size, newer.size).await.map_err(proof_error)?;
    Ok(Json(ConsistencyView {
        from: older.size,
        to: newer.size,
        proof: proof.iter().map(|h| STANDARD.encode(h)).collect(),
        checkpoints: [older.note, newer.note],
    }))
}

/// `POST …/audit/rotate-key` (admin): a new key signs the log's checkpoints from now on; the
/// old one stays listed (retired), so what it signed still verifies.
pub(crate) async fn rotate_key(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
) -> Result<Json<LogView>, ApiError> {
    let log = log_of(&plane, &caller, &LogScope::tenant(tenant.clone())).await?.log;
    let key = NewLogKey::generate(&log.origin)
        .map_err(|err| ApiError::new(ErrorCode::Internal, err.to_string()))?;
    plane.store.rotate_audit_key(&caller.actor, &log, &key.verifier, key.seed()).await?;
    get(State(plane), Path(LogScope::tenant(tenant)), caller).await
}

/// A cosigning key to register.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CosignerBody {
    public_key: String,
}

/// `PUT …/audit/cosigner` (admin): registers a public key the tenant holds the private half of
/// (`<name>+<id>+<base64>`, Ed25519); it cosigns checkpoints from then on, the one before retired.
pub(crate) async fn set_cosigner(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<LogView>, ApiError> {
    let log = log_of(&plane, &caller, &LogScope::tenant(tenant.clone())).await?.log;
    let body: CosignerBody = crate::body::parse(body)?;
    let key = NoteVerifier::parse(&body.public_key)
        .map_err(|err| ApiError::invalid(format!("public_key is not an Ed25519 note key: {err}")))?;
    let material = body.public_key.rsplit('+').next().unwrap_or_default();
    if plane.store.audit_key_in_use(material, &log.id).await? {
        return Err(ApiError::invalid(
            "public_key is a log's key or another tenant's cosigning key: cosign with a key the tenant holds",
        ));
    }
    plane.store.set_audit_cosigner(&caller.actor, &log, &body.public_key).await?;
    tracing::info!(log = log.id, cosigner = key.name(), "audit log cosigner registered");
    get(State(plane), Path(LogScope::tenant(tenant)), caller).await
}

/// A cosigned checkpoint.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CosignatureBody {
    checkpoint: String,
}

/// `POST …/audit/cosignatures` (admin): a checkpoint of the log cosigned with the registered
/// key. The cosignature is checked, the checkpoint must be the one the log signed of that size,
/// no smaller than the last cosigned; the stored checkpoint then carries it (exports too).
pub(crate) async fn cosign(
    State(plane): State<Arc<ControlPlane>>,
    Path(scope): Path<LogScope>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CheckpointView>, ApiError> {
    let Scoped { log, exchange } = log_of(&plane, &caller, &scope).await?;
    let body: CosignatureBody = crate::body::parse(body)?;
    // An exchange's checkpoints are cosigned by each party with the key it registered for its
    // own log.
    let own_log = match &exchange {
        None => log.id.clone(),
        Some(_) => tenant_log_id(&scope.tenant),
    };
    let (cosigners, mut cosigned_size) = plane.store.audit_cosigners(&own_log).await?;
    let side = exchange.as_ref().and_then(|e| e.side_of(&scope.tenant));
    if let (Some(exchange), Some(side)) = (&exchange, side) {
        cosigned_size = match side {
            Side::Offerer => exchange.offerer_cosigned_size,
            Side::Partner => exchange.partner_cosigned_size,
        };
    }
    let registered = cosigners.iter().find(|k| k.retired_at.is_none()).ok_or_else(|| {
        ApiError::new(ErrorCode::NotConfigured, "the tenant has no cosigning key: PUT …/audit/cosigner first")
    })?;
    let key = NoteVerifier::parse(&registered.verifier)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the registered cosigning key does not read"))?;
    let line = signature_line_of(&body.checkpoint, &key).map_err(|err| {
        ApiError::invalid(format!("the checkpoint is not cosigned by the registered key: {err}"))
    })?;
    let text = open(&body.checkpoint, std::slice::from_ref(&key))
        .map_err(|err| ApiError::invalid(err.to_string()))?
        .text;
    let posted =
        Checkpoint::parse(&text).map_err(|err| ApiError::invalid(format!("not a checkpoint: {err}")))?;
    if posted.origin != log.origin {
        return Err(ApiError::invalid("a checkpoint of another log"));
    }
    let stored = checkpoint_at(&plane.store, &log, Some(posted.size)).await?;
    if !stored.note.starts_with(&text) || stored.note.as_bytes().get(text.len()) != Some(&b'\n') {
        return Err(ApiError::invalid(format!("not the checkpoint the log signed at size {}", posted.size)));
    }
    if posted.size < cosigned_size {
        return Err(ApiError::invalid(format!(
            "size {} is older than the last cosigned checkpoint ({cosigned_size})",
            posted.size
        )));
    }
    let note =
        if stored.note.contains(&line) { stored.note.clone() } else { format!("{}{line}", stored.note) };
    let (added, cosigned) = match (&exchange, side) {
        (Some(exchange), Some(side)) => {
            let both = super::exchanges::cosigned_by_both(&plane.store, exchange, &note).await?;
            let added = plane
                .store
                .add_exchange_cosignature(exchange, side, posted.size, &stored.note, &note, both)
                .await?;
            (added, both)
        }
        _ => (plane.store.add_audit_cosignature(&log.id, posted.size, &stored.note, &note).await?, true),
    };
    if !added {
        return Err(ApiError::invalid("a later checkpoint was cosigned meanwhile"));
    }
    Ok(Json(CheckpointView { size: posted.size, note, at_ms: stored.at_ms, cosigned }))
}
