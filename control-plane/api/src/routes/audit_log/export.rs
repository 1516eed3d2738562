//! Exporting a log: its entries and about a thousand of its checkpoints (every cosigned one
//! and the last), as the JSON lines `tributary audit verify` reads, streamed a page at a time.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tributary_store::{AuditCheckpoint, Store};

use super::{LogScope, log_of, number};
use crate::ControlPlane;
use crate::auth::Caller;
use crate::error::ApiError;
use tributary_delivery::audit_log::proofs;

/// Entries read per page of an export.
const EXPORT_PAGE: i64 = 10_000;

/// `GET …/audit/export?from=&to=` (admin): the log's entries from `from` (default 0) up to
/// `to` (default: the newest checkpoint's size) and its checkpoints from `from` to `to`, as the
/// JSON lines `tributary audit verify` reads; streamed a page at a time. A range that does not
/// start at 0 carries the tree's right edge at `from` in its header, from which the verifier
/// recomputes each checkpoint's root.
pub(crate) async fn export(
    State(plane): State<Arc<ControlPlane>>,
    Path(scope): Path<LogScope>,
    Query(query): Query<HashMap<String, String>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let log = log_of(&plane, &caller, &scope).await?.log;
    let to = match number(&query, "to")? {
        Some(to) if to > log.size => {
            return Err(ApiError::invalid(format!("to is past the log's end ({} entries)", log.size)));
        }
        Some(to) => to,
        None => plane.store.latest_audit_checkpoint(&log.id).await?.map_or(0, |c| c.size),
    };
    let from = number(&query, "from")?.unwrap_or(0);
    if from > to {
        return Err(ApiError::invalid(format!("from is past to ({to})")));
    }
    let mut header = serde_json::json!({"format": tributary_audit::export::FORMAT, "origin": log.origin});
    if from > 0 {
        let edge = proofs::frontier(&plane.store, &log.id, from).await.map_err(super::proof_error)?;
        header["from"] = from.into();
        header["frontier"] = STANDARD.encode(edge).into();
    }
    let header = format!("{header}\n");
    let store = plane.store.clone();
    let state = Export {
        store,
        log_id: log.id,
        to,
        next: from,
        checkpoints_from: Some(from),
        kept_up_to: from,
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
