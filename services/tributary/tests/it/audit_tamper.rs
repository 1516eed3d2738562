//! Tampering with a tenant's audit log directly in PostgreSQL, as whoever controls the database
//! could: each kind of change shows in the log's export, and the offline verifier names the
//! exact entry (then the change is undone and the log verifies again).

use serde_json::json;
use tributary_audit::checkpoint::Checkpoint;
use tributary_audit::export::{Entry, Problem, verify, write};
use tributary_audit::merkle::root;
use tributary_audit::note::{NoteSigner, NoteVerifier, sign};
use tributary_testkit::TestServer;

use crate::audit_log::{checkpointed, export};

/// Runs `sql` statements on the database, in one transaction.
async fn run(database: &str, sql: &[String]) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(database).await.expect("the database");
    let mut tx = pool.begin().await.expect("a transaction");
    for statement in sql {
        sqlx::query(sqlx::AssertSqlSafe(statement.clone())).execute(&mut *tx).await.expect(statement);
    }
    tx.commit().await.expect("committed");
    pool.close().await;
}

#[tokio::test]
async fn each_kind_of_tampering_in_the_database_is_named_with_its_entry() {
    let database = tributary_testkit::fresh_postgres_database().await;
    let url = database.clone();
    let node = TestServer::spawn_configured(move |config| config.storage.database_url = url).await;
    let ns = format!("/v1/tenants/{}/apps/{}/namespaces/ledger", node.tenant_id(), node.app_id());
    assert_eq!(node.manage("POST", &ns, node.operator_token(), Some(&json!({"audited": true}))).await.0, 200);
    for n in 0..40 {
        node.publish("ledger:eu", json!({"n": n})).await;
    }
    let log = checkpointed(&node, 40).await;
    let size = log["size"].as_u64().unwrap();
    let keys = vec![NoteVerifier::parse(log["keys"][0]["public_key"].as_str().unwrap()).unwrap()];
    assert!(verify(&export(&node, "").await, &keys).problems.is_empty());
    let log_id = format!("tenant:{}", node.tenant_id());
    let only = format!("log_id = '{log_id}'");
    run(&database, &[format!("CREATE TABLE saved AS SELECT * FROM audit_entries WHERE {only}")]).await;
    let undo = vec![
        format!("DELETE FROM audit_entries WHERE {only}"),
        "INSERT INTO audit_entries SELECT * FROM saved".to_owned(),
    ];
    let forged = "convert_to('{\"kind\":\"message\",\"forged\":true}', 'UTF8')";
    let last = size - 1;
    let cases: Vec<(&str, Vec<String>, Problem)> = vec![
        (
            "an entry's content changed",
            vec![format!("UPDATE audit_entries SET body = {forged} WHERE {only} AND idx = 17")],
            Problem::Changed(17),
        ),
        (
            "the last entry changed",
            vec![format!("UPDATE audit_entries SET body = {forged} WHERE {only} AND idx = {last}")],
            Problem::RootMismatch { size, after: 0 },
        ),
        (
            "an entry deleted",
            vec![format!("DELETE FROM audit_entries WHERE {only} AND idx = 17")],
            Problem::Missing(17),
        ),
        (
            "two entries swapped",
            vec![
                format!("UPDATE audit_entries SET idx = -1 WHERE {only} AND idx = 17"),
                format!("UPDATE audit_entries SET idx = 17 WHERE {only} AND idx = 18"),
                format!("UPDATE audit_entries SET idx = 18 WHERE {only} AND idx = -1"),
            ],
            Problem::Changed(17),
        ),
        (
            "an entry inserted (the later ones renumbered)",
            vec![
                format!("UPDATE audit_entries SET idx = idx + 1001 WHERE {only} AND idx >= 17"),
                format!("UPDATE audit_entries SET idx = idx - 1000 WHERE {only} AND idx > 1000"),
                format!(
                    "INSERT INTO audit_entries (log_id, idx, prev, body, source, at_ms) SELECT log_id, 17, prev, \
                     {forged}, 'forged', at_ms FROM audit_entries WHERE {only} AND idx = 18"
                ),
            ],
            Problem::Inserted(17),
        ),
        (
            "an entry deleted (the later ones renumbered)",
            vec![
                format!("DELETE FROM audit_entries WHERE {only} AND idx = 17"),
                format!("UPDATE audit_entries SET idx = idx + 999 WHERE {only} AND idx > 17"),
                format!("UPDATE audit_entries SET idx = idx - 1000 WHERE {only} AND idx > 999"),
            ],
            Problem::Missing(17),
        ),
        (
            "the log cut short",
            vec![format!("DELETE FROM audit_entries WHERE {only} AND idx >= 30")],
            Problem::Truncated { entries: 30, checkpoint: size },
        ),
    ];
    for (name, tamper, expected) in cases {
        run(&database, &tamper).await;
        let report = verify(&export(&node, &format!("?to={size}")).await, &keys);
        let named = report.problems.iter().any(|problem| match (problem, &expected) {
            // The last entry has no next entry: its checkpoints name it, whatever matched before.
            (Problem::RootMismatch { size: got, .. }, Problem::RootMismatch { size: want, .. }) => {
                got == want
            }
            (got, want) => got == want,
        });
        assert!(named, "{name}: expected {expected:?} in {:?}", report.problems);
        // Where the chain breaks first is where it was changed: nothing before is blamed.
        let blamed_first = report.problems.iter().find_map(|problem| match problem {
            Problem::Changed(n) | Problem::Missing(n) | Problem::Inserted(n) => Some(*n),
            Problem::OutOfPlace { position, .. } => Some(*position),
            _ => None,
        });
        assert!(blamed_first.is_none_or(|n| n >= 17), "{name}: {:?}", report.problems);
        run(&database, &undo).await;
        assert!(verify(&export(&node, "").await, &keys).problems.is_empty(), "{name} undone");
    }

    // A fork: whoever holds the log's key (the operator: the key is the server's) rewrites an
    // entry, chains the rest again and signs new checkpoints. The export alone then verifies —
    // which is why a tenant cosigns with a key of its own — but a checkpoint kept from before
    // shows the fork.
    let before = tributary_store::AuditCheckpoint::clone(
        &node.store().latest_audit_checkpoint(&log_id).await.unwrap().expect("a checkpoint"),
    );
    let state = node.store().audit_log(&log_id).await.unwrap();
    let (_, seed) = node.store().audit_signing_key(&state).await.unwrap().expect("the log's key");
    let signer = NoteSigner::from_seed(&state.origin, &seed.try_into().expect("a seed")).unwrap();
    let stored = node.store().audit_entries(&log_id, 0, 1000).await.unwrap();
    let mut rewritten: Vec<Entry> = Vec::new();
    for entry in &stored {
        let prev = rewritten.last().map_or([0; 32], Entry::leaf_hash);
        let body = if entry.index == 17 {
            b"{\"kind\":\"message\",\"forged\":true}".to_vec()
        } else {
            entry.body.clone()
        };
        rewritten.push(Entry { index: entry.index, prev, body });
    }
    let leaves: Vec<_> = rewritten.iter().map(Entry::leaf_hash).collect();
    let forged_checkpoint = Checkpoint {
        origin: state.origin.clone(),
        size,
        root: root(&leaves[..size as usize]),
        extensions: vec![],
    };
    let note = sign(&forged_checkpoint.to_text(), &[&signer]).unwrap();
    let forged_export = write(&state.origin, &rewritten[..size as usize], &[note]);
    assert!(
        verify(&forged_export, &keys).problems.is_empty(),
        "with the server's key alone, a rewrite passes"
    );
    let kept = format!("{forged_export}{}\n", json!({ "checkpoint": before.note }));
    let report = verify(&kept, &keys);
    assert!(report.problems.contains(&Problem::Fork(size)), "{:?}", report.problems);
}
