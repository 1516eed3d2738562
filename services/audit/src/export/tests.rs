//! An export verified as written, then tampered with each way a database can be: the verifier
//! names the entry.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::checkpoint::Checkpoint;
use crate::merkle::root;
use crate::note::{NoteSigner, sign};

const ORIGIN: &str = "tributary.example/ten_test";

fn log(n: u64) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    for index in 0..n {
        let prev = entries.last().map_or([0; 32], Entry::leaf_hash);
        entries.push(Entry {
            index,
            prev,
            body: format!("{{\"action\":\"message\",\"n\":{index}}}").into_bytes(),
        });
    }
    entries
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[3; 32]).unwrap()
}

/// Signed checkpoints of `entries` at each of `sizes`.
fn checkpoints(entries: &[Entry], sizes: &[u64]) -> Vec<String> {
    let leaves: Vec<Hash> = entries.iter().map(Entry::leaf_hash).collect();
    sizes
        .iter()
        .map(|&size| {
            let checkpoint = Checkpoint {
                origin: ORIGIN.into(),
                size,
                root: root(&leaves[..size as usize]),
                extensions: vec![],
            };
            sign(&checkpoint.to_text(), &[&signer()]).unwrap()
        })
        .collect()
}

fn verified(entries: &[Entry], notes: &[String]) -> Report {
    let trusted = NoteVerifier::parse(&signer().verifier_key()).unwrap();
    verify(&write(ORIGIN, entries, notes), &[trusted])
}

/// Re-chains `entries` from `from` on, as a writer with database access but no key would.
fn rechain(entries: &mut [Entry], from: usize) {
    for p in from.max(1)..entries.len() {
        entries[p].prev = entries[p - 1].leaf_hash();
    }
}

#[test]
fn an_untouched_export_verifies() {
    let entries = log(20);
    let notes = checkpoints(&entries, &[5, 12, 20]);
    let report = verified(&entries, &notes);
    assert_eq!((report.entries, report.checkpoints_verified, report.problems), (20, 3, vec![]));
    assert_eq!(report.origin, ORIGIN);
}

#[test]
fn each_kind_of_tampering_is_named_with_its_entry() {
    let entries = log(20);
    let notes = checkpoints(&entries, &[5, 12, 20]);

    let mut changed = entries.clone();
    changed[7].body = b"{\"action\":\"message\",\"n\":700}".to_vec();
    let report = verified(&changed, &notes);
    assert_eq!(report.problems[0], Problem::Changed(7), "{:?}", report.problems);
    assert!(report.problems.contains(&Problem::RootMismatch { size: 12, after: 5 }));

    // Changed and re-chained from there on: the checkpoints still name the range.
    let mut rechained = changed.clone();
    rechain(&mut rechained, 8);
    let report = verified(&rechained, &notes);
    assert_eq!(
        report.problems,
        [Problem::RootMismatch { size: 12, after: 5 }, Problem::RootMismatch { size: 20, after: 5 }]
    );

    let mut removed = entries.clone();
    removed.remove(9);
    let report = verified(&removed, &notes);
    assert_eq!(report.problems[0], Problem::Missing(9), "{:?}", report.problems);

    let mut moved = entries.clone();
    moved.swap(3, 4);
    let report = verified(&moved, &notes);
    assert_eq!(report.problems[0], Problem::OutOfPlace { position: 3, says: 4 }, "{:?}", report.problems);

    let mut added = entries.clone();
    let forged = Entry { index: 11, prev: added[10].leaf_hash(), body: b"{\"forged\":true}".to_vec() };
    added.insert(11, forged);
    let report = verified(&added, &notes);
    assert_eq!(report.problems[0], Problem::Inserted(11), "{:?}", report.problems);

    // Added, and the later entries renumbered to make room (as rows of a database would be):
    // the added entry is named, not every entry renumbered after it.
    let mut renumbered = entries.clone();
    let forged = Entry { index: 11, prev: renumbered[11].prev, body: b"{\"forged\":true}".to_vec() };
    renumbered.insert(11, forged);
    for entry in &mut renumbered[12..] {
        entry.index += 1;
    }
    let report = verified(&renumbered, &notes);
    let named: Vec<&Problem> =
        report.problems.iter().filter(|p| !matches!(p, Problem::RootMismatch { .. })).collect();
    assert_eq!(named, [&Problem::Inserted(11)], "{:?}", report.problems);

    // Removed, and the later entries renumbered to close the gap.
    let mut closed = entries.clone();
    closed.remove(9);
    for entry in &mut closed[9..] {
        entry.index -= 1;
    }
    let report = verified(&closed, &notes);
    assert_eq!(report.problems[0], Problem::Missing(9), "{:?}", report.problems);
    assert!(!report.problems.iter().any(|p| matches!(p, Problem::Changed(_))), "{:?}", report.problems);

    let truncated = entries[..15].to_vec();
    let report = verified(&truncated, &notes);
    assert_eq!(report.problems, [Problem::Truncated { entries: 15, checkpoint: 20 }]);

    let mut last = entries.clone();
    last[19].body = b"{}".to_vec();
    let report = verified(&last, &notes);
    assert_eq!(
        report.problems,
        [Problem::RootMismatch { size: 20, after: 12 }],
        "the last entry: only the checkpoint"
    );
}

#[test]
fn a_fork_and_an_unsigned_checkpoint_are_refused() {
    let entries = log(10);
    let mut notes = checkpoints(&entries, &[4, 10]);
    let mut other = entries.clone();
    other[2].body = b"{\"other\":true}".to_vec();
    rechain(&mut other, 3);
    notes.extend(checkpoints(&other, &[10]));
    let report = verified(&entries, &notes);
    assert!(report.problems.contains(&Problem::Fork(10)), "{:?}", report.problems);

    let stranger = NoteSigner::from_seed(ORIGIN, &[4; 32]).unwrap();
    let leaves: Vec<Hash> = entries.iter().map(Entry::leaf_hash).collect();
    let text =
        Checkpoint { origin: ORIGIN.into(), size: 10, root: root(&leaves), extensions: vec![] }.to_text();
    let report = verified(&entries, &[sign(&text, &[&stranger]).unwrap()]);
    assert!(matches!(report.problems[..], [Problem::Unsigned(10, _)]), "{:?}", report.problems);
    assert!(matches!(verified(&entries, &[]).problems[..], []), "no checkpoint: nothing to hold it to");
    let unreadable = verify("not json\n", &[]);
    assert!(matches!(unreadable.problems[..], [Problem::Unreadable(1, _)]));
}

/// A range export of `entries` from `from` on: the header carries the tree's right edge there.
fn range_export(entries: &[Entry], from: u64, notes: &[String], edge: Option<Frontier>) -> String {
    let mut tree = Frontier::new();
    for entry in &entries[..from as usize] {
        tree.push(entry.leaf_hash());
    }
    let edge = edge.unwrap_or(tree);
    let full = write(ORIGIN, &entries[from as usize..], notes);
    let (_, rest) = full.split_once('\n').unwrap();
    let header = serde_json::json!({"format": FORMAT, "origin": ORIGIN, "from": from,
                                    "frontier": STANDARD.encode(edge.to_bytes())});
    format!("{header}\n{rest}")
}

#[test]
fn a_range_export_verifies_on_its_own_and_names_a_changed_entry_in_it() {
    let entries = log(300);
    let notes = checkpoints(&entries, &[100, 200, 300]);
    let trusted = [NoteVerifier::parse(&signer().verifier_key()).unwrap()];
    // From 137 on: the checkpoints of 200 and 300 are recomputed from the right edge at 137.
    let report = verify(&range_export(&entries, 137, &notes[1..], None), &trusted);
    assert_eq!(report.problems, vec![]);
    assert_eq!((report.first, report.entries, report.checkpoints_verified), (137, 163, 2));
    // From exactly a checkpoint's size: that checkpoint vouches for the right edge itself.
    let report = verify(&range_export(&entries, 200, &notes[1..], None), &trusted);
    assert_eq!((report.problems.clone(), report.checkpoints_verified), (vec![], 2), "{:?}", report.problems);

    // An entry of the range changed (re-chained after it, as a writer without the key would).
    let mut changed = entries.clone();
    changed[150].body = b"{\"action\":\"message\",\"n\":\"forged\"}".to_vec();
    rechain(&mut changed, 151);
    let report = verify(&range_export(&changed, 137, &notes[1..], None), &trusted);
    assert_eq!(
        report.problems,
        vec![
            Problem::RootMismatch { size: 200, after: 137 },
            Problem::RootMismatch { size: 300, after: 137 }
        ]
    );
    // A right edge that is not the log's: no checkpoint's root comes out.
    let mut forged = Frontier::new();
    for _ in 0..137 {
        forged.push(leaf_hash(b"not the log"));
    }
    let report = verify(&range_export(&entries, 137, &notes[1..], Some(forged)), &trusted);
    assert_eq!(report.checkpoints_verified, 0, "{:?}", report.problems);
    // A range without its right edge is unreadable.
    let text = range_export(&entries, 137, &notes[1..], None).replacen("\"frontier\"", "\"edge\"", 1);
    assert_eq!(
        verify(&text, &trusted).problems,
        vec![Problem::Unreadable(1, "a range export without its frontier".into())]
    );
}
