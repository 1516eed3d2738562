//! A tenant's audit log (docs/audit.md): its state and keys, its entries and signed
//! checkpoints, inclusion proofs (receipts, also by a message's channel and offset), consistency
//! proofs, export, the rotation of its signing key, and cosigning with a key the tenant holds.
//! All `admin`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_audit::checkpoint::Checkpoint;
use tributary_audit::note::{NoteVerifier, open, signature_line_of};
use tributary_delivery::audit_log::proofs::{self, ProofError};
use tributary_delivery::audit_log::{NewLogKey, message_source};
use tributary_protocol::ErrorCode;
use tributary_store::audit_log::tenant_log_id;
use tributary_store::{AuditCheckpoint, AuditEntry, AuditLogState, Role, Store};

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

/// The tenant's log, once scope and role are checked.
async fn log_of(plane: &ControlPlane, caller: &Caller, tenant: &str) -> Result<AuditLogState, ApiError> {
    caller.tenant(tenant, Role::Admin)?;
    plane.store.tenant(tenant).await?;
    Ok(plane.store.audit_log(&tenant_log_id(tenant)).await?)
}

/// `GET /v1/tenants/{tenant}/audit/log` (admin).
pub(crate) async fn get(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
) -> Result<Json<LogView>, ApiError> {
    let log = log_of(&plane, &caller, &tenant).await?;
    let checkpoint = plane.store.latest_audit_checkpoint(&log.id).await?;
    let keys = plane.store.audit_keys(&log.id).await?;
    let (cosigners, cosigned_size) = plane.store.audit_cosigners(&log.id).await?;
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

fn number(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
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
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<Vec<EntryView>>, ApiError> {
    let log = log_of(&plane, &caller, &tenant).await?;
    let from = number(&query, "from")?.unwrap_or(0);
    let limit = page_limit(&query, 1000)?;
    let entries = plane.store.audit_entries(&log.id, from, limit).await?;
    Ok(Json(entries.into_iter().map(EntryView::from).collect()))
}

/// `GET …/audit/checkpoints?from_size=&limit=` (admin): signed checkpoints, smallest first.
pub(crate) async fn checkpoints(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<Vec<CheckpointView>>, ApiError> {
    let log = log_of(&plane, &caller, &tenant).await?;
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

fn proof_error(err: ProofError) -> ApiError {
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
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<InclusionView>, ApiError> {
    let log = log_of(&plane, &caller, &tenant).await?;
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
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Json<ConsistencyView>, ApiError> {
    let log = log_of(&plane, &caller, &tenant).await?;
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

/// Entries read per page of an export.
const EXPORT_PAGE: i64 = 10_000;

/// `GET …/audit/export?to=` (admin): the log's entries up to `to` (default: the newest
/// checkpoint's size) and every checkpoint up to it, as the JSON lines `tributary audit verify`
/// reads; streamed a page at a time.
pub(crate) async fn export(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let log = log_of(&plane, &caller, &tenant).await?;
    let to = match number(&query, "to")? {
        Some(to) if to > log.size => {
            return Err(ApiError::invalid(format!("to is past the log's end ({} entries)", log.size)));
        }
        Some(to) => to,
        None => plane.store.latest_audit_checkpoint(&log.id).await?.map_or(0, |c| c.size),
    };
    let header =
        format!("{}\n", serde_json::json!({"format": tributary_audit::export::FORMAT, "origin": log.origin}));
    let store = plane.store.clone();
    let state = Export {
        store,
        log_id: log.id,
        to,
        next: 0,
        checkpoints_from: Some(0),
        kept_up_to: 0,
        skipped: None,
        header: Some(header),
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        match state.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok::<_, std::io::Error>(chunk), state)),
            Ok(None) => None,
            Err(err) => {
                tracing::error!(error = %err, "an audit export stopped");
                Some((Err(std::io::Error::other("the export stopped")), Export::done(state)))
            }
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], Body::from_stream(stream)).into_response())
}

/// Where an export has got to.
struct Export {
    store: Store,
    log_id: String,
    to: u64,
    next: u64,
    /// The next checkpoint size to write from; `None` once all are written.
    checkpoints_from: Option<u64>,
    /// The size of the last checkpoint written.
    kept_up_to: u64,
    /// The last checkpoint left out since (written if it is the last of all).
    skipped: Option<AuditCheckpoint>,
    header: Option<String>,
}

impl Export {
    fn done(mut self) -> Self {
        self.next = self.to;
        self.checkpoints_from = None;
        self.skipped = None;
        self
    }

    async fn next_chunk(&mut self) -> Result<Option<String>, tributary_store::StoreError> {
        if let Some(header) = self.header.take() {
            return Ok(Some(header));
        }
        if self.next < self.to {
            let limit = EXPORT_PAGE.min(i64::try_from(self.to - self.next).unwrap_or(EXPORT_PAGE));
            let entries = self.store.audit_entries(&self.log_id, self.next, limit).await?;
            let mut out = String::with_capacity(entries.len() * 300);
            for entry in &entries {
                let line = serde_json::json!({"index": entry.index, "prev": STANDARD.encode(&entry.prev),
                                              "body": STANDARD.encode(&entry.body)});
                out.push_str(&line.to_string());
                out.push('\n');
            }
            // Rows removed from the store show in the export as missing entries, as they are.
            self.next = entries.last().map_or(self.to, |e| e.index + 1);
            return Ok(Some(out));
        }
        let Some(from) = self.checkpoints_from else { return Ok(None) };
        let found = self.store.audit_checkpoints(&self.log_id, from, 1000).await?;
        let mut out = String::new();
        // A log that got few entries a second has about a checkpoint per entry: the export
        // keeps about a thousand of them, evenly spread, every cosigned one and the last one (what the verifier
        // holds the whole to), so a verification checks a thousand signatures, not a million.
        let spacing = (self.to / 1000).max(1);
        for checkpoint in found.iter().filter(|c| c.size <= self.to) {
            // The tenant's cosigned checkpoints are always kept: they are what binds the operator.
            if checkpoint.size < self.kept_up_to + spacing
                && checkpoint.size != self.to
                && !checkpoint.cosigned
            {
                self.skipped = Some(checkpoint.clone());
                continue;
            }
            self.kept_up_to = checkpoint.size;
            self.skipped = None;
            out.push_str(&serde_json::json!({ "checkpoint": checkpoint.note }).to_string());
            out.push('\n');
        }
        self.checkpoints_from = match found.last() {
            Some(last) if found.len() == 1000 && last.size < self.to => Some(last.size + 1),
            _ => None,
        };
        if self.checkpoints_from.is_none()
            && let Some(last) = self.skipped.take()
        {
            // The largest checkpoint up to `to` is always kept.
            out.push_str(&serde_json::json!({ "checkpoint": last.note }).to_string());
            out.push('\n');
        }
        Ok(Some(out))
    }
}

/// `POST …/audit/rotate-key` (admin): a new key signs the log's checkpoints from now on; the
/// old one stays listed (retired), so what it signed still verifies.
pub(crate) async fn rotate_key(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
) -> Result<Json<LogView>, ApiError> {
    let log = log_of(&plane, &caller, &tenant).await?;
    let key = NewLogKey::generate(&log.origin)
        .map_err(|err| ApiError::new(ErrorCode::Internal, err.to_string()))?;
    plane.store.rotate_audit_key(&caller.actor, &log, &key.verifier, key.seed()).await?;
    get(State(plane), Path(tenant), caller).await
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
    let log = log_of(&plane, &caller, &tenant).await?;
    let body: CosignerBody = crate::body::parse(body)?;
    let key = NoteVerifier::parse(&body.public_key)
        .map_err(|err| ApiError::invalid(format!("public_key is not an Ed25519 note key: {err}")))?;
    if plane.store.audit_keys(&log.id).await?.iter().any(|k| k.verifier == body.public_key) {
        return Err(ApiError::invalid("public_key is the log's own key: cosign with a key the tenant holds"));
    }
    plane.store.set_audit_cosigner(&caller.actor, &log, &body.public_key).await?;
    tracing::info!(log = log.id, cosigner = key.name(), "audit log cosigner registered");
    get(State(plane), Path(tenant), caller).await
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
    Path(tenant): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CheckpointView>, ApiError> {
    let log = log_of(&plane, &caller, &tenant).await?;
    let body: CosignatureBody = crate::body::parse(body)?;
    let (cosigners, cosigned_size) = plane.store.audit_cosigners(&log.id).await?;
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
    if !plane.store.add_audit_cosignature(&log.id, posted.size, &stored.note, &note).await? {
        return Err(ApiError::invalid("a later checkpoint was cosigned meanwhile"));
    }
    Ok(Json(CheckpointView { size: posted.size, note, at_ms: stored.at_ms, cosigned: true }))
}
