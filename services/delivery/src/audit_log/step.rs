//! One step of a log's writer, without I/O: entries in, the [`AuditAppend`] the store writes out
//! (each entry chained to the last, the tree grown, the subtrees it completed, and a checkpoint
//! when one is due).

use tributary_audit::checkpoint::Checkpoint;
use tributary_audit::export::Entry;
use tributary_audit::merkle::{Frontier, Hash};
use tributary_audit::note::{NoteError, NoteSigner, sign};
use tributary_store::{AuditAppend, AuditLogState, NewAuditEntry};

/// The heights whose subtrees' roots are stored: every eighth, so a proof reads at most 255
/// leaves or nodes per level it needs (docs/audit.md#how-proofs-are-made).
pub const STORED_HEIGHT_STEP: u32 = 8;

/// Why a step could not be built: the stored log is not one this writer can grow.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The stored right edge or last leaf do not read (the row was damaged).
    #[error("the stored tree of log {0} does not read")]
    Damaged(String),
    /// The checkpoint could not be signed.
    #[error("signing a checkpoint: {0}")]
    Sign(#[from] NoteError),
}

/// Something to append: what it records (unique in the log) and its canonical body.
#[derive(Debug, Clone)]
pub struct Pending {
    /// `ev:<id>`, `msg:<app>:<epoch>:<offset>:<channel>` or `gap:<app>:<position>`.
    pub source: String,
    /// The entry's body.
    pub body: Vec<u8>,
}

/// Builds the append of `pending` to `log` at `now_ms`, signing a checkpoint with `signer` when
/// `checkpoint` says one is due.
pub fn build(
    log: &AuditLogState,
    pending: Vec<Pending>,
    now_ms: i64,
    checkpoint: bool,
    signer: &NoteSigner,
) -> Result<AuditAppend, StepError> {
    let damaged = || StepError::Damaged(log.id.clone());
    let mut tree = Frontier::from_bytes(&log.frontier).ok_or_else(damaged)?;
    if tree.size() != log.size {
        return Err(damaged());
    }
    let mut prev: Hash = log.last_leaf.as_slice().try_into().map_err(|_| damaged())?;
    let mut append = AuditAppend::default();
    for item in pending {
        let entry = Entry { index: tree.size(), prev, body: item.body };
        let leaf = entry.leaf_hash();
        tree.push_reporting(leaf, |height, index, hash| {
            if height.is_multiple_of(STORED_HEIGHT_STEP) {
                append.nodes.push((height, index, hash.to_vec()));
            }
        });
        append.entries.push(NewAuditEntry {
            index: entry.index,
            prev: entry.prev.to_vec(),
            body: entry.body,
            source: item.source,
            at_ms: now_ms,
        });
        prev = leaf;
    }
    if checkpoint {
        let text = Checkpoint {
            origin: log.origin.clone(),
            size: tree.size(),
            root: tree.root(),
            extensions: Vec::new(),
        }
        .to_text();
        append.checkpoint = Some(sign(&text, &[signer])?);
    }
    append.frontier = tree.to_bytes();
    append.last_leaf = prev.to_vec();
    Ok(append)
}

/// The log as it is once `append` is written.
pub fn after(log: &AuditLogState, append: &AuditAppend, now_ms: i64) -> AuditLogState {
    let size = log.size + append.entries.len() as u64;
    let mut next = log.clone();
    next.size = size;
    next.frontier.clone_from(&append.frontier);
    next.last_leaf.clone_from(&append.last_leaf);
    if append.checkpoint.is_some() {
        next.checkpoint_size = size;
        next.checkpoint_ms = now_ms;
    }
    next
}
