//! A log's export, and its offline verification: nothing but the file and the public keys the
//! reader trusts.
//!
//! An export is JSON lines: a header `{"format": "tributary-audit-export/1", "origin"}`, then
//! entries `{"index", "prev", "body"}` (base64) in order, then checkpoints `{"checkpoint":
//! <signed note>}`. An entry's leaf is `index (8 bytes, big-endian) || prev || body`, where `prev`
//! is the previous entry's leaf hash (zeros for the first): the entries are hash-chained as
//! well as in the Merkle tree, so a verifier names the exact entry that was changed, removed,
//! moved or added, and the signed checkpoints tie the whole to what the log committed to (a
//! changed last entry, a truncated log, or a forked tree).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::merkle::{Frontier, Hash, leaf_hash};
use crate::note::{NoteVerifier, open};

/// The export format's name.
pub const FORMAT: &str = "tributary-audit-export/1";

/// An entry of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the log, from 0.
    pub index: u64,
    /// The previous entry's leaf hash (zeros for the first).
    pub prev: Hash,
    /// What it records (a canonical JSON text, written by the log's writer).
    pub body: Vec<u8>,
}

impl Entry {
    /// The bytes its leaf hashes.
    pub fn leaf_data(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(40 + self.body.len());
        data.extend_from_slice(&self.index.to_be_bytes());
        data.extend_from_slice(&self.prev);
        data.extend_from_slice(&self.body);
        data
    }

    /// Its leaf hash.
    pub fn leaf_hash(&self) -> Hash {
        self.leaf_hash_as(self.index)
    }

    /// The leaf hash it would have at `index` (to find where a renumbered entry was written).
    pub fn leaf_hash_as(&self, index: u64) -> Hash {
        let mut data = Vec::with_capacity(40 + self.body.len());
        data.extend_from_slice(&index.to_be_bytes());
        data.extend_from_slice(&self.prev);
        data.extend_from_slice(&self.body);
        leaf_hash(&data)
    }
}

/// Writes an export: `origin`'s `entries` and its signed checkpoints (notes).
pub fn write(origin: &str, entries: &[Entry], checkpoints: &[String]) -> String {
    let mut out = serde_json::json!({"format": FORMAT, "origin": origin}).to_string();
    out.push('\n');
    for entry in entries {
        let line = serde_json::json!({"index": entry.index, "prev": STANDARD.encode(entry.prev),
                                      "body": STANDARD.encode(&entry.body)});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    for note in checkpoints {
        out.push_str(&serde_json::json!({ "checkpoint": note }).to_string());
        out.push('\n');
    }
    out
}

/// What a verification found wrong, each naming where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The export cannot be read (line, why).
    Unreadable(usize, String),
    /// The entry at this index is not the one the next entry was chained to: changed.
    Changed(u64),
    /// The entry at this index is missing (the next one in the file names a later index, or
    /// was written with one).
    Missing(u64),
    /// The entry at this index was added: no entry after it is chained to it, and the ones after
    /// it were renumbered to make room.
    Inserted(u64),
    /// The entry at this position names another index: moved or added.
    OutOfPlace {
        /// Where it is in the file.
        position: u64,
        /// The index it says it has.
        says: u64,
    },
    /// A checkpoint's signature does not verify with the trusted keys (its tree size).
    Unsigned(u64, String),
    /// A checkpoint covers more entries than the export has: the log was cut after this many.
    Truncated {
        /// Entries in the export.
        entries: u64,
        /// The checkpoint's size.
        checkpoint: u64,
    },
    /// The entries' tree of this size is not the checkpoint's: an entry from `after` (the last
    /// size that matched) up to the size was changed, or the log forked.
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
        /// The largest checkpointed size below it that matched (0: none).
        after: u64,
    },
    /// Two signed checkpoints of the same size with different roots: a fork.
    Fork(u64),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Unreadable(line, why) => write!(f, "line {line}: {why}"),
            Problem::Changed(index) => {
                write!(f, "entry {index} was changed (the next entry is chained to another)")
            }
            Problem::Missing(index) => write!(f, "entry {index} is missing"),
            Problem::Inserted(index) => {
                write!(
                    f,
                    "entry {index} was inserted (nothing is chained to it; the later entries were renumbered)"
                )
            }
            Problem::OutOfPlace { position, says } => {
                write!(f, "entry {position} is out of place: it says it is entry {says} (moved or added)")
            }
            Problem::Unsigned(size, why) => {
                write!(f, "the checkpoint of size {size} is not signed by a trusted key: {why}")
            }
            Problem::Truncated { entries, checkpoint } => {
                write!(
                    f,
                    "the log was cut after entry {}: a checkpoint covers {checkpoint} entries",
                    entries.saturating_sub(1)
                )
            }
            Problem::RootMismatch { size, after } => write!(
                f,
                "the entries {after} to {} are not those checkpointed at size {size}",
                size.saturating_sub(1)
            ),
            Problem::Fork(size) => write!(f, "two signed checkpoints of size {size} differ: the log forked"),
        }
    }
}

/// What a verification read and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The log's origin.
    pub origin: String,
    /// The first entry's index: 0, or where a range export starts.
    pub first: u64,
    /// Entries read.
    pub entries: u64,
    /// Checkpoints whose signature and root verified.
    pub checkpoints_verified: u64,
    /// What is wrong, in the order found (none: the export is the log its checkpoints signed).
    pub problems: Vec<Problem>,
}

/// Verifies an export with the keys its reader trusts.
pub fn verify(export: &str, trusted: &[NoteVerifier]) -> Report {
    let mut report = Report::default();
    let mut lines = export.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        report.problems.push(Problem::Unreadable(1, "empty".into()));
        return report;
    };
    let header: Value = serde_json::from_str(header).unwrap_or_default();
    if header["format"] != FORMAT {
        report.problems.push(Problem::Unreadable(1, format!("not a {FORMAT} export")));
        return report;
    }
    report.origin = header["origin"].as_str().unwrap_or_default().to_owned();
    // A range export starts at entry `from`, with the tree's right edge at that size: the roots
    // of the subtrees left of it, from which each checkpoint's root is recomputed.
    let mut tree = Frontier::new();
    if let Some(from) = header["from"].as_u64().filter(|&from| from > 0) {
        let edge = header["frontier"].as_str().and_then(|b64| STANDARD.decode(b64).ok());
        match edge.as_deref().and_then(Frontier::from_bytes).filter(|edge| edge.size() == from) {
            Some(edge) => tree = edge,
            None => {
                report.problems.push(Problem::Unreadable(1, "a range export without its frontier".into()));
                return report;
            }
        }
        report.first = from;
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    // Blank lines (an export saved with an extra newline) are not entries.
    for (n, line) in lines.filter(|(_, line)| !line.trim().is_empty()) {
        match read_line(line) {
            Ok(Line::Entry(entry)) if notes.is_empty() => entries.push(entry),
            Ok(Line::Entry(_)) => {
                report.problems.push(Problem::Unreadable(n + 1, "an entry after the checkpoints".into()))
            }
            Ok(Line::Checkpoint(note)) => notes.push(note),
            Err(why) => report.problems.push(Problem::Unreadable(n + 1, why)),
        }
    }
    report.entries = entries.len() as u64;
    check_chain(&entries, report.first, &mut report.problems);

    // Each checkpoint: signed by a trusted key, of this log, and the root of that many entries.
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    for note in &notes {
        let checkpoint = match open(note, trusted).and_then(|opened| Checkpoint::parse(&opened.text)) {
            Ok(checkpoint) => checkpoint,
            Err(err) => {
                let size = note.lines().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                report.problems.push(Problem::Unsigned(size, err.to_string()));
                continue;
            }
        };
        if checkpoint.origin != report.origin {
            report.problems.push(Problem::Unsigned(checkpoint.size, "a checkpoint of another log".into()));
            continue;
        }
        checkpoints.push(checkpoint);
    }
    checkpoints.sort_by_key(|c| c.size);
    for pair in checkpoints.windows(2) {
        if pair[0].size == pair[1].size && pair[0].root != pair[1].root {
            report.problems.push(Problem::Fork(pair[0].size));
        }
    }
    let end = report.first + report.entries;
    let mut leaves = entries.iter().map(Entry::leaf_hash);
    let mut matched = report.first;
    // A checkpoint from before a range export's start says nothing about its entries.
    for checkpoint in checkpoints.iter().filter(|c| c.size >= report.first) {
        if checkpoint.size > end {
            report.problems.push(Problem::Truncated { entries: end, checkpoint: checkpoint.size });
            continue;
        }
        while tree.size() < checkpoint.size {
            if let Some(leaf) = leaves.next() {
                tree.push(leaf);
            }
        }
        if tree.root() == checkpoint.root {
            report.checkpoints_verified += 1;
            matched = checkpoint.size;
        } else {
            report.problems.push(Problem::RootMismatch { size: checkpoint.size, after: matched });
        }
    }
    report
}

enum Line {
    Entry(Entry),
    Checkpoint(String),
}

fn read_line(line: &str) -> Result<Line, String> {
    let value: Value = serde_json::from_str(line).map_err(|err| format!("not JSON: {err}"))?;
    if let Some(note) = value["checkpoint"].as_str() {
        return Ok(Line::Checkpoint(note.to_owned()));
    }
    let index = value["index"].as_u64().ok_or("an entry without an index")?;
    let prev: Hash = value["prev"]
        .as_str()
        .and_then(|p| STANDARD.decode(p).ok())
        .and_then(|p| p.try_into().ok())
        .ok_or("an entry's prev is not 32 bytes of base64")?;
    let body = value["body"]
        .as_str()
        .and_then(|b| STANDARD.decode(b).ok())
        .ok_or("an entry's body is not base64")?;
    Ok(Line::Entry(Entry { index, prev, body }))
}

mod chain;
use chain::check_chain;

#[cfg(test)]
mod tests;
