//! RFC 9162 Merkle trees (section 2.1): a leaf's hash is `SHA-256(0x00 || entry)`, an inner
//! node's `SHA-256(0x01 || left || right)`, and the tree of `n` leaves splits at the largest
//! power of two below `n`. Proofs are lists of node hashes, from the leaf's level up.
//!
//! Proofs here are made from the leaf hashes themselves (a log keeps them); verification needs
//! only the proof, the sizes and the roots, and is what an auditor or the other side of an
//! exchange runs.

use sha2::{Digest as _, Sha256};

/// A SHA-256 hash: of a leaf, an inner node, or a whole tree (its root).
pub type Hash = [u8; 32];

/// Why a proof does not prove what it was checked against.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf's index is not in a tree of that size, or the older tree is larger.
    #[error("index {index} is not in a tree of {size} leaves")]
    OutOfRange {
        /// The leaf's index, or the older tree's size.
        index: u64,
        /// The tree's size.
        size: u64,
    },
    /// The proof has too few or too many hashes for these sizes.
    #[error("the proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    /// The proof leads to another root: the entry is not there, or the trees differ.
    #[error("the proof leads to another root hash")]
    Mismatch,
}

/// The hash of a leaf holding `entry`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    Sha256::new().chain_update([0x00]).chain_update(entry).finalize().into()
}

/// The hash of an inner node over `left` and `right`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new().chain_update([0x01]).chain_update(left).chain_update(right).finalize().into()
}

/// The root of the empty tree: the hash of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (`n` > 1): where a tree of `n` leaves splits.
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The root of the tree over `leaves` (leaf hashes, in order): RFC 9162's MTH.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// A run of leaves `[start, end)` whose subtree root is one hash of a proof.
pub type Span = std::ops::Range<u64>;

/// The proof that the leaf at `index` is in the tree over `leaves` (RFC 9162's PATH); `None`
/// when `index` is not in it.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    let spans = inclusion_spans(index as u64, leaves.len() as u64)?;
    Some(spans.into_iter().map(|s| root(&leaves[s.start as usize..s.end as usize])).collect())
}

/// The proof that the tree over `leaves` extends the tree of its first `old_size` leaves
/// (RFC 9162's PROOF); `None` when `old_size` is larger. Empty when `old_size` is 0 or all.
pub fn consistency_proof(leaves: &[Hash], old_size: usize) -> Option<Vec<Hash>> {
    let spans = consistency_spans(old_size as u64, leaves.len() as u64)?;
    Some(spans.into_iter().map(|s| root(&leaves[s.start as usize..s.end as usize])).collect())
}

/// Which subtrees' roots make the inclusion proof of leaf `index` in a tree of `size` leaves,
/// in proof order: a log that keeps its leaves' hashes out of memory (in a database) fetches
/// just those. `None` when `index` is not in the tree.
pub fn inclusion_spans(index: u64, size: u64) -> Option<Vec<Span>> {
    if index >= size {
        return None;
    }
    let mut spans = Vec::new();
    path(index, 0..size, &mut spans);
    Some(spans)
}

/// Which subtrees' roots make the consistency proof from `old_size` to `size` leaves, in proof
/// order; `None` when `old_size` is larger. Empty when `old_size` is 0 or `size`.
pub fn consistency_spans(old_size: u64, size: u64) -> Option<Vec<Span>> {
    if old_size > size {
        return None;
    }
    let mut spans = Vec::new();
    if old_size > 0 {
        subproof(old_size, 0..size, true, &mut spans);
    }
    Some(spans)
}

/// The largest power of two smaller than the span's length, from its start: where it splits.
fn split_span(span: &Span) -> u64 {
    span.start + split((span.end - span.start) as usize) as u64
}

fn path(m: u64, span: Span, proof: &mut Vec<Span>) {
    if span.end - span.start <= 1 {
        return;
    }
    let k = split_span(&span);
    if span.start + m < k {
        path(m, span.start..k, proof);
        proof.push(k..span.end);
    } else {
        path(span.start + m - k, k..span.end, proof);
        proof.push(span.start..k);
    }
}

fn subproof(m: u64, span: Span, whole: bool, proof: &mut Vec<Span>) {
    if span.start + m == span.end {
        if !whole {
            proof.push(span);
        }
        return;
    }
    let k = split_span(&span);
    if span.start + m <= k {
        subproof(m, span.start..k, whole, proof);
        proof.push(k..span.end);
    } else {
        subproof(span.start + m - k, k..span.end, false, proof);
        proof.push(span.start..k);
    }
}

/// The whole subtrees a span of a proof is made of, largest (leftmost) first, each as its first
/// leaf and its height (`2^height` leaves). Spans of proofs start at a multiple of a power of
/// two at least their length, so these are nodes of the tree, and the span's root is
/// [`fold_right`] of their roots.
pub fn whole_subtrees(span: &Span) -> Vec<(u64, u32)> {
    let mut parts = Vec::new();
    let mut start = span.start;
    let mut left = span.end - span.start;
    while left > 0 {
        let height = 63 - left.leading_zeros();
        parts.push((start, height));
        start += 1 << height;
        left -= 1 << height;
    }
    parts
}

/// The root over whole subtrees' roots, largest first (as a frontier's or [`whole_subtrees`]'s).
pub fn fold_right(roots: &[Hash]) -> Hash {
    let mut nodes = roots.iter().rev();
    let Some(last) = nodes.next() else { return empty_root() };
    nodes.fold(*last, |right, left| node_hash(left, &right))
}

/// Checks that `leaf` (a leaf hash) is at `index` of the tree of `size` leaves whose root is
/// `root`, by `proof` (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut hash = *leaf;
    for sibling in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            hash = node_hash(sibling, &hash);
            // A left child at the right edge: climb while this node is its parent's whole.
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if hash != *root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// Checks that the tree of `new_size` leaves with root `new_root` extends the tree of
/// `old_size` leaves with root `old_root`, by `proof` (RFC 9162 section 2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OutOfRange { index: old_size, size: new_size });
    }
    if old_size == new_size {
        // The same tree: nothing to prove but that the roots are the same.
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root { Ok(()) } else { Err(ProofError::Mismatch) };
    }
    if old_size == 0 {
        // Every tree extends the empty one.
        return if proof.is_empty() { Ok(()) } else { Err(ProofError::WrongLength) };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    // An older tree that is a whole subtree is its own first node.
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof);
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut old_hash, mut new_hash) = (*path[0], *path[0]);
    for node in &path[1..] {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            old_hash = node_hash(node, &old_hash);
            new_hash = node_hash(node, &new_hash);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            new_hash = node_hash(&new_hash, node);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if old_hash != *old_root || new_hash != *new_root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// The right edge of a growing tree: the roots of its complete subtrees, largest first (at most
/// one per bit of its size). It gives the tree's root after every append without keeping the
/// leaves, so a log's writer checkpoints in O(log n) memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// The complete subtrees' roots, largest (leftmost) first.
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree's.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tree's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_reporting(leaf, |_, _, _| {});
    }

    /// Appends a leaf hash and calls `completed(height, index, hash)` for each subtree the
    /// leaf completes (height 1 up; `index` counts subtrees of that height from the left): how
    /// a log stores the inner nodes its proofs will need without reading leaves back.
    pub fn push_reporting(&mut self, leaf: Hash, mut completed: impl FnMut(u32, u64, &Hash)) {
        let mut hash = leaf;
        // Each trailing one bit of the old size is a subtree of the new leaf's size that the
        // new leaf completes: merge them, right to left.
        let mut size = self.size;
        let mut height = 0;
        while size & 1 == 1 {
            if let Some(left) = self.nodes.pop() {
                hash = node_hash(&left, &hash);
            }
            size >>= 1;
            height += 1;
            completed(height, ((self.size + 1) >> height) - 1, &hash);
        }
        self.nodes.push(hash);
        self.size += 1;
    }

    /// The frontier as bytes: its size (8 bytes, big-endian), then its nodes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 + 32 * self.nodes.len());
        bytes.extend_from_slice(&self.size.to_be_bytes());
        for node in &self.nodes {
            bytes.extend_from_slice(node);
        }
        bytes
    }

    /// Reads [`Frontier::to_bytes`]; `None` unless it holds one node per one bit of the size.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let size = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let rest = &bytes[8..];
        if !rest.len().is_multiple_of(32) || rest.len() / 32 != size.count_ones() as usize {
            return None;
        }
        let nodes = rest.chunks_exact(32).map(|c| c.try_into().ok()).collect::<Option<Vec<Hash>>>()?;
        Some(Self { size, nodes })
    }

    /// The tree's root.
    pub fn root(&self) -> Hash {
        fold_right(&self.nodes)
    }
}

#[cfg(test)]
mod tests;
