//! The entries' indexes and hash chain, read together: which entry was changed, removed, added
//! or moved. Each entry holds the leaf hash of the one before it, and a leaf hash covers the
//! entry's index, so an entry's successor says which index it was written with: rows renumbered
//! in a database after an insertion or a removal are read back to where they were, and the
//! entry added (or the gap left) is named, not every entry after it.

use super::{Entry, Problem};
use crate::merkle::Hash;

/// How far from its index a renumbered entry is looked for.
const RENUMBERED_WITHIN: u64 = 16;

/// The index `entry` was written with, if `next_prev` (its successor's link) is its leaf hash
/// at an index other than the one it says.
fn written_at(entry: &Entry, next_prev: &Hash) -> Option<u64> {
    (1..=RENUMBERED_WITHIN).find_map(|d| {
        [entry.index.checked_sub(d), entry.index.checked_add(d)]
            .into_iter()
            .flatten()
            .find(|&index| entry.leaf_hash_as(index) == *next_prev)
    })
}

/// Checks the entries' indexes, then their chain, naming the entry each break points at. The
/// first should be entry `first` (0, or where a range export starts; its own link then points at
/// an entry the export does not hold, and is left to the checkpoints).
pub(super) fn check_chain(entries: &[Entry], first: u64, problems: &mut Vec<Problem>) {
    let n = entries.len();
    let leaves: Vec<Hash> = entries.iter().map(Entry::leaf_hash).collect();
    // Each entry's index as it was written, and whether its successor is chained to it.
    let mut written: Vec<u64> = entries.iter().map(|e| e.index).collect();
    let mut followed = vec![false; n];
    for p in 0..n.saturating_sub(1) {
        let next_prev = &entries[p + 1].prev;
        if *next_prev == leaves[p] {
            followed[p] = true;
        } else if let Some(index) = written_at(&entries[p], next_prev) {
            written[p] = index;
            followed[p] = true;
        }
    }
    // The last entry has no successor: it was renumbered as the one before it was.
    if n >= 2 && written[n - 2] != entries[n - 2].index {
        let shift = i128::from(written[n - 2]) - i128::from(entries[n - 2].index);
        written[n - 1] =
            u64::try_from(i128::from(entries[n - 1].index) + shift).unwrap_or(entries[n - 1].index);
    }

    // Indexes: each one more than the last. A jump the following entries carry on from is
    // entries missing; a step back is entries added (those nothing is chained to); any other
    // index is an entry out of place (moved).
    let mut expected = first;
    let mut misplaced = vec![false; n];
    for p in 0..n {
        let index = written[p];
        if index == expected {
            expected += 1;
            continue;
        }
        let run_goes_on = written.get(p + 1).is_none_or(|&next| next == index + 1);
        if index > expected && run_goes_on {
            problems.extend((expected..index).map(Problem::Missing));
            expected = index + 1;
            misplaced[p] = true;
            continue;
        }
        if index < expected {
            let back = usize::try_from(expected - index).unwrap_or(usize::MAX);
            let added: Vec<usize> = (p.saturating_sub(back)..p).filter(|&q| !followed[q]).collect();
            if !added.is_empty() {
                for &q in &added {
                    problems.push(Problem::Inserted(entries[q].index));
                    misplaced[q] = true;
                }
                // The entry after the added ones is chained to the one before them.
                misplaced[p] = true;
                expected = index + 1;
                continue;
            }
        }
        problems.push(Problem::OutOfPlace { position: first + p as u64, says: entries[p].index });
        misplaced[p] = true;
    }

    // The chain: entry p holds the leaf hash of entry p - 1. A break at p alone means entry p - 1
    // was changed (p itself still chains on to p + 1); a break at p and p + 1 means entry p
    // was (its own link or content, so its leaf changed too).
    let broken: Vec<bool> = (0..n)
        .map(|p| if p == 0 { first == 0 && entries[0].prev != [0; 32] } else { !followed[p - 1] })
        .collect();
    let mut p = 0;
    while p < n {
        if broken[p] && !misplaced[p] && !(p > 0 && misplaced[p - 1]) {
            if broken.get(p + 1).copied().unwrap_or(false) {
                problems.push(Problem::Changed(entries[p].index));
                p += 2;
                continue;
            }
            problems.push(Problem::Changed(entries[p.saturating_sub(1)].index));
        }
        p += 1;
    }
}
