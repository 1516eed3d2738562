//! The audit log writer against a real engine feed and a real store (SQLite and PostgreSQL):
//! two writers at once append each management event and each audited message once, in a tree
//! whose checkpoints, receipts and consistency proofs verify; messages of other namespaces, and
//! those from before the namespace was audited, stay off the log.

// Test code: a failed step must panic the test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tributary_audit::checkpoint::Checkpoint;
use tributary_audit::export::{Entry, verify, write};
use tributary_audit::merkle::{Hash, verify_consistency, verify_inclusion};
use tributary_audit::note::{NoteVerifier, open};
use tributary_delivery::audit_log::{AuditWriter, AuditWriterConfig, proofs};
use tributary_engine::{
    ChannelKey, Engine, MemoryEngine, MemoryEngineConfig, NewMessage, PublishOptions, StreamOptions,
};
use tributary_protocol::{ChannelName, Payload};
use tributary_store::audit_log::tenant_log_id;
use tributary_store::{Actor, MasterKey, Store};

mod common;
use common::stores;

async fn publish(engine: &Arc<dyn Engine>, key: &ChannelKey, n: u64) {
    let message = NewMessage {
        payload: Payload::Json(Bytes::from(format!("{{\"n\":{n}}}"))),
        client_id: Some("alice".into()),
        encoding: None,
        meta: None,
    };
    let options = PublishOptions {
        stream: StreamOptions { history_size: 0, history_ttl: Duration::from_secs(60) },
        idempotency_key: None,
        idempotency_window: Duration::from_secs(60),
    };
    engine.publish(key, message, &options).await.unwrap();
}

fn writer(store: &Store, engine: &Arc<dyn Engine>, owner: &str) -> AuditWriter {
    let config = AuditWriterConfig {
        owner: owner.into(),
        origin_prefix: "test.example/audit".into(),
        batch: 37,
        poll_interval: Duration::from_millis(5),
        checkpoint_interval: Duration::from_millis(100),
        ..AuditWriterConfig::default()
    };
    AuditWriter::new(store.clone(), engine.clone(), config)
}

#[tokio::test]
async fn two_writers_append_each_event_and_audited_message_once_in_a_tree_that_verifies() {
    for (store, _dir) in stores().await {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new(MemoryEngineConfig::default()));
        let tenant = store.create_tenant("Acme").await.unwrap();
        let app = store.create_app(&tenant.id, "prod").await.unwrap();
        let ledger = ChannelKey::new(app.id.clone(), ChannelName::parse("ledger:1").unwrap());
        let chat = ChannelKey::new(app.id.clone(), ChannelName::parse("chat:1").unwrap());
        // The feed was on before (for rules, say): what it holds from before the namespace
        // was audited is not the log's.
        engine.feed_enable(&app.id).await.unwrap();
        for n in 0..10 {
            publish(&engine, &ledger, 1000 + n).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        store
            .set_namespace(&Actor::system(), &tenant.id, &app.id, "ledger", r#"{"audited":true}"#)
            .await
            .unwrap();
        let (first, second) = (writer(&store, &engine, "w1"), writer(&store, &engine, "w2"));
        let stop = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn({
            let stop = stop.clone();
            async move { tokio::join!(first.run(stop.clone()), second.run(stop)) }
        });
        for n in 0..600 {
            publish(&engine, &ledger, n).await;
            publish(&engine, &chat, n).await;
            if n % 100 == 0 {
                store.create_api_key(&tenant.id, &app.id, &format!("k{n}")).await.unwrap();
            }
        }
        let log_id = tenant_log_id(&tenant.id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let log = loop {
            let log = store.audit_log(&log_id).await.ok();
            let done = log.as_ref().is_some_and(|l| l.size >= 600 + 6 + 3 && l.checkpoint_size == l.size);
            if done || tokio::time::Instant::now() > deadline {
                break log.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        stop.cancel();
        running.await.unwrap();

        let stored = store.audit_entries(&log_id, 0, 10_000).await.unwrap();
        let mut messages: HashMap<u64, usize> = HashMap::new();
        let mut actions = Vec::new();
        for entry in &stored {
            let body: serde_json::Value = serde_json::from_slice(&entry.body).unwrap();
            match body["kind"].as_str() {
                Some("message") => {
                    assert_eq!(body["channel"], "ledger:1", "only the audited namespace");
                    assert_eq!(body["client_id"], "alice");
                    *messages.entry(body["offset"].as_u64().unwrap()).or_default() += 1;
                }
                Some("management") => actions.push(body["action"].as_str().unwrap().to_owned()),
                other => panic!("an unexpected entry {other:?}"),
            }
        }
        assert_eq!(messages.len(), 600, "every audited message");
        assert_eq!(messages.keys().min(), Some(&11), "none from before the namespace was audited");
        assert!(messages.values().all(|&n| n == 1), "each once");
        assert_eq!(actions.iter().filter(|a| *a == "api_key.create").count(), 6, "{actions:?}");
        assert!(
            actions.contains(&"namespace.set".to_owned()) && actions.contains(&"tenant.create".to_owned())
        );
        assert_eq!(log.size, stored.len() as u64);

        // The stored log verifies with its key, checkpoint by checkpoint.
        let keys: Vec<NoteVerifier> = store
            .audit_keys(&log_id)
            .await
            .unwrap()
            .iter()
            .map(|k| NoteVerifier::parse(&k.verifier).unwrap())
            .collect();
        assert_eq!(keys.len(), 1, "the two writers share one key");
        let checkpoints = store.audit_checkpoints(&log_id, 0, 10_000).await.unwrap();
        let entries: Vec<Entry> = stored
            .iter()
            .map(|e| Entry { index: e.index, prev: e.prev.clone().try_into().unwrap(), body: e.body.clone() })
            .collect();
        let notes: Vec<String> = checkpoints.iter().map(|c| c.note.clone()).collect();
        let report = verify(&write(&log.origin, &entries, &notes), &keys);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.checkpoints_verified, checkpoints.len() as u64);

        // Proofs from the stored nodes: every entry in the last checkpoint, and each checkpoint
        // consistent with the last.
        let last = checkpoints.last().unwrap();
        let newest = Checkpoint::parse(&open(&last.note, &keys).unwrap().text).unwrap();
        assert_eq!(proofs::root(&store, &log_id, newest.size).await.unwrap(), newest.root);
        for entry in &entries {
            let proof = proofs::inclusion(&store, &log_id, entry.index, newest.size).await.unwrap();
            verify_inclusion(&entry.leaf_hash(), entry.index, newest.size, &proof, &newest.root)
                .unwrap_or_else(|err| panic!("entry {}: {err}", entry.index));
        }
        for older in &checkpoints {
            let old = Checkpoint::parse(&open(&older.note, &keys).unwrap().text).unwrap();
            let proof: Vec<Hash> = proofs::consistency(&store, &log_id, old.size, newest.size).await.unwrap();
            verify_consistency(old.size, newest.size, &old.root, &newest.root, &proof)
                .unwrap_or_else(|err| panic!("{} to {}: {err}", old.size, newest.size));
        }
        assert!(proofs::inclusion(&store, &log_id, newest.size, newest.size).await.is_err(), "out of range");
    }
}

#[tokio::test]
async fn a_feed_read_again_adds_nothing_twice_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("a.db").display());
    let store = Store::open(&url, &MasterKey::generate()).await.unwrap();
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new(MemoryEngineConfig::default()));
    let tenant = store.create_tenant("Acme").await.unwrap();
    let app = store.create_app(&tenant.id, "prod").await.unwrap();
    engine.feed_enable(&app.id).await.unwrap();
    store
        .set_namespace(&Actor::system(), &tenant.id, &app.id, "ledger", r#"{"audited":true}"#)
        .await
        .unwrap();
    let ledger = ChannelKey::new(app.id.clone(), ChannelName::parse("ledger:1").unwrap());
    let writer = writer(&store, &engine, "w1");
    let log_id = tenant_log_id(&tenant.id);
    let messages_on_log = || async {
        let entries = store.audit_entries(&log_id, 0, 10_000).await.unwrap_or_default();
        let mut offsets: Vec<u64> = entries
            .iter()
            .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&e.body).ok())
            .filter(|body| body["kind"] == "message")
            .filter_map(|body| body["offset"].as_u64())
            .collect();
        offsets.sort_unstable();
        offsets
    };
    let until = |want: usize| {
        let writer = &writer;
        let messages_on_log = &messages_on_log;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while messages_on_log().await.len() < want && tokio::time::Instant::now() < deadline {
                let _ = writer.run_once().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    for n in 0..50 {
        publish(&engine, &ledger, n).await;
    }
    until(50).await;
    // The log's position in the feed is lost: it reads the whole feed again.
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE audit_sources SET position = '', created_ms = 0").execute(&raw).await.unwrap();
    raw.close().await;
    for n in 50..70 {
        publish(&engine, &ledger, n).await;
    }
    until(70).await;
    let offsets = messages_on_log().await;
    assert_eq!(offsets, (1..=70).collect::<Vec<u64>>(), "every message once, and the log went on");
}
