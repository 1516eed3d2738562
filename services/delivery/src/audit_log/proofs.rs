//! Proofs of a stored log: inclusion of an entry and consistency between two sizes, made from
//! the stored entries and the roots of whole subtrees of 2^8, 2^16, … leaves (never the whole
//! log): each hash of a proof is a span of leaves, which splits into whole subtrees
//! ([`whole_subtrees`]), each the root of at most 128 stored nodes or 255 entries.

use tributary_audit::export::Entry;
use tributary_audit::merkle::{
    self, Hash, Span, consistency_spans, fold_right, inclusion_spans, whole_subtrees,
};
use tributary_store::{Store, StoreError};

use super::step::STORED_HEIGHT_STEP;

/// Why a proof could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The index or sizes are not within the log.
    #[error("{0}")]
    OutOfRange(String),
    /// The stored tree lacks an entry or a node it should have (rows were removed).
    #[error("the stored log lacks {0}")]
    Incomplete(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The inclusion proof of entry `index` in the log's tree of `size` entries.
pub async fn inclusion(store: &Store, log_id: &str, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
    let spans = inclusion_spans(index, size)
        .ok_or_else(|| ProofError::OutOfRange(format!("entry {index} is not in a tree of {size} entries")))?;
    roots(store, log_id, &spans).await
}

/// The consistency proof from the log's tree of `old` entries to its tree of `new` entries.
pub async fn consistency(store: &Store, log_id: &str, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
    let spans = consistency_spans(old, new).ok_or_else(|| {
        ProofError::OutOfRange(format!("a tree of {old} entries is not older than one of {new}"))
    })?;
    roots(store, log_id, &spans).await
}

/// The root of the log's tree of `size` entries, from the store (what a checkpoint of that size
/// must say).
pub async fn root(store: &Store, log_id: &str, size: u64) -> Result<Hash, ProofError> {
    if size == 0 {
        return Ok(merkle::empty_root());
    }
    span_root(store, log_id, &(0..size)).await
}

/// The right edge of the log's tree of `size` entries (`Frontier::to_bytes`): the roots of the
/// whole subtrees left of entry `size`, which a range export starting there carries.
pub async fn frontier(store: &Store, log_id: &str, size: u64) -> Result<Vec<u8>, ProofError> {
    let mut bytes = size.to_be_bytes().to_vec();
    for (start, height) in whole_subtrees(&(0..size)) {
        bytes.extend_from_slice(&span_root(store, log_id, &(start..start + (1u64 << height))).await?);
    }
    Ok(bytes)
}

/// A receipt: an entry, its leaf hash, its inclusion proof in the newest signed checkpoint, and
/// that checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The entry.
    pub entry: tributary_store::AuditEntry,
    /// Its leaf hash.
    pub leaf_hash: Hash,
    /// The checkpoint's size.
    pub size: u64,
    /// The proof's hashes.
    pub proof: Vec<Hash>,
    /// The checkpoint (a signed note).
    pub checkpoint: String,
}

/// Why a receipt cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The log has no such entry (yet).
    #[error("no such entry in the log (yet)")]
    NoEntry,
    /// The entry is on the log but no signed checkpoint covers it yet.
    #[error("entry {index} is not in a signed checkpoint yet (newest: {newest})")]
    NotCheckpointed {
        /// The entry's index.
        index: u64,
        /// The newest checkpoint's size.
        newest: u64,
    },
    /// The proof could not be made.
    #[error(transparent)]
    Proof(#[from] ProofError),
}

impl From<StoreError> for ReceiptError {
    fn from(err: StoreError) -> Self {
        Self::Proof(ProofError::Store(err))
    }
}

/// The receipt of the entry recording `source` (see `message_source`) in the log's newest
/// signed checkpoint.
pub async fn receipt(store: &Store, log_id: &str, source: &str) -> Result<Receipt, ReceiptError> {
    let entry = store.audit_entry_by_source(log_id, source).await?.ok_or(ReceiptError::NoEntry)?;
    let checkpoint = store.latest_audit_checkpoint(log_id).await?;
    let newest = checkpoint.as_ref().map_or(0, |c| c.size);
    let Some(checkpoint) = checkpoint.filter(|c| entry.index < c.size) else {
        return Err(ReceiptError::NotCheckpointed { index: entry.index, newest });
    };
    let proof = inclusion(store, log_id, entry.index, checkpoint.size).await?;
    let prev: Hash = entry
        .prev
        .as_slice()
        .try_into()
        .map_err(|_| ProofError::Incomplete(format!("entry {}'s prev", entry.index)))?;
    let leaf_hash = Entry { index: entry.index, prev, body: entry.body.clone() }.leaf_hash();
    Ok(Receipt { entry, leaf_hash, size: checkpoint.size, proof, checkpoint: checkpoint.note })
}

async fn roots(store: &Store, log_id: &str, spans: &[Span]) -> Result<Vec<Hash>, ProofError> {
    let mut out = Vec::with_capacity(spans.len());
    for span in spans {
        out.push(span_root(store, log_id, span).await?);
    }
    Ok(out)
}

async fn span_root(store: &Store, log_id: &str, span: &Span) -> Result<Hash, ProofError> {
    let mut parts = Vec::new();
    for (start, height) in whole_subtrees(span) {
        let stored = height - height % STORED_HEIGHT_STEP;
        let hashes = if stored == 0 {
            leaf_hashes(store, log_id, start, 1u64 << height).await?
        } else {
            let (from, to) = (start >> stored, (start + (1u64 << height)) >> stored);
            let nodes = store.audit_nodes(log_id, stored, from, to).await?;
            if nodes.len() as u64 != to - from {
                return Err(ProofError::Incomplete(format!("nodes {from} to {} of height {stored}", to - 1)));
            }
            nodes
                .into_iter()
                .map(|node| {
                    node.try_into().map_err(|_| ProofError::Incomplete(format!("a node of height {stored}")))
                })
                .collect::<Result<Vec<Hash>, _>>()?
        };
        parts.push(merkle::root(&hashes));
    }
    Ok(fold_right(&parts))
}

/// The leaf hashes of the `count` entries from `start` on.
async fn leaf_hashes(store: &Store, log_id: &str, start: u64, count: u64) -> Result<Vec<Hash>, ProofError> {
    let limit = i64::try_from(count).unwrap_or(i64::MAX);
    let entries = store.audit_entries(log_id, start, limit).await?;
    let mut hashes = Vec::with_capacity(entries.len());
    for (expected, stored) in (start..start + count).zip(&entries) {
        if stored.index != expected {
            return Err(ProofError::Incomplete(format!("entry {expected}")));
        }
        let prev: Hash = stored
            .prev
            .as_slice()
            .try_into()
            .map_err(|_| ProofError::Incomplete(format!("entry {expected}'s prev")))?;
        hashes.push(Entry { index: stored.index, prev, body: stored.body.clone() }.leaf_hash());
    }
    if hashes.len() as u64 != count {
        return Err(ProofError::Incomplete(format!("entry {}", start + hashes.len() as u64)));
    }
    Ok(hashes)
}
