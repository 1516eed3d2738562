//! `tributary audit verify`: an export checked offline by the binary alone, untouched and then
//! with an entry changed, with the log's public key (and refused without it).

use std::process::Command;

use tributary_audit::checkpoint::Checkpoint;
use tributary_audit::export::{Entry, write};
use tributary_audit::merkle::{Hash, root};
use tributary_audit::note::{NoteSigner, sign};

const ORIGIN: &str = "tributary.example/ten_cli";

fn export(change: Option<usize>) -> (String, String) {
    let mut entries: Vec<Entry> = Vec::new();
    for index in 0..12u64 {
        let prev = entries.last().map_or([0; 32], Entry::leaf_hash);
        entries.push(Entry { index, prev, body: format!("{{\"n\":{index}}}").into_bytes() });
    }
    let log = NoteSigner::from_seed(ORIGIN, &[5; 32]).unwrap();
    let leaves: Vec<Hash> = entries.iter().map(Entry::leaf_hash).collect();
    let checkpoint = Checkpoint { origin: ORIGIN.into(), size: 12, root: root(&leaves), extensions: vec![] };
    let note = sign(&checkpoint.to_text(), &[&log]).unwrap();
    if let Some(at) = change {
        entries[at].body = b"{\"n\":\"rewritten\"}".to_vec();
    }
    (write(ORIGIN, &entries, &[note]), log.verifier_key())
}

fn verify(export: &str, key: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.jsonl");
    std::fs::write(&path, export).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["audit", "verify"])
        .arg(&path)
        .args(["--public-key", key])
        .output()
        .unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_offline_verifier_accepts_an_untouched_export_and_names_a_changed_entry() {
    let (good, key) = export(None);
    let (code, out) = verify(&good, &key);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("12 entries, 1 checkpoints verified"), "{out}");

    let (bad, key) = export(Some(4));
    let (code, out) = verify(&bad, &key);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("entry 4 was changed"), "{out}");

    // Another key than the log's: nothing is held to a signature.
    let stranger = NoteSigner::from_seed(ORIGIN, &[6; 32]).unwrap().verifier_key();
    let (code, out) = verify(&good, &stranger);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not signed by a trusted key"), "{out}");
}
