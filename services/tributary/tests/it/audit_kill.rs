//! The audit log in the production setup under `kill -9` (PostgreSQL, a durable Redis, two
//! relays without workers, separate `tributary worker` processes): while a publisher publishes
//! into an audited namespace, a worker, then a relay and another worker, then Redis are killed
//! with SIGKILL. The log ends up holding every acknowledged message exactly once, and its export
//! verifies with the log's key.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tributary_audit::entry::payload_sha256;
use tributary_audit::note::NoteVerifier;
use tributary_store::MasterKey;
use tributary_testkit::ThrowawayRedis;

use crate::rules_kill::{Setup, client, publish};

/// How many times each payload hash is on the log, read from the store.
async fn logged(store: &tributary_store::Store, log_id: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut from = 0;
    loop {
        let page = store.audit_entries(log_id, from, 1000).await.expect("entries read");
        let Some(last) = page.last() else { break };
        from = last.index + 1;
        for entry in &page {
            let body: Value = serde_json::from_slice(&entry.body).expect("an entry is JSON");
            if body["kind"] == "message" {
                *counts.entry(body["payload_sha256"].as_str().unwrap_or_default().to_owned()).or_default() +=
                    1;
            }
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_holds_every_acknowledged_message_once_across_kill_9_of_workers_relay_and_redis() {
    let mut redis = ThrowawayRedis::start_durable();
    let setup = Setup {
        dir: tempfile::tempdir().unwrap(),
        database: tributary_testkit::fresh_postgres_database().await,
        redis: redis.url(),
        key: MasterKey::generate(),
    };
    let (mut doomed_relay, first) = setup.relay().await;
    let (_relay, second) = setup.relay().await;
    let credentials = setup.credentials();
    let (tenant, app) = (credentials["tenant_id"].as_str().unwrap(), credentials["app_id"].as_str().unwrap());
    let operator = credentials["operator_token"].as_str().unwrap().to_owned();
    let api_key = credentials["api_key"].as_str().unwrap().to_owned();
    let reply = client()
        .post(format!("{first}/v1/tenants/{tenant}/apps/{app}/namespaces/ledger"))
        .bearer_auth(&operator)
        .json(&json!({"audited": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200, "{}", reply.text().await.unwrap());

    let mut workers = vec![setup.worker(), setup.worker()];
    const MESSAGES: u64 = 600;
    let mut relays = vec![first.clone(), second.clone()];
    for n in 0..MESSAGES {
        match n {
            150 => {
                workers[0].kill();
                workers.push(setup.worker());
            }
            300 => {
                workers[1].kill();
                doomed_relay.kill();
                relays.remove(0);
            }
            450 => redis.restart(), // SIGKILL, then up again from its append-only file
            _ => {}
        }
        publish(&relays, &api_key, "ledger:1", n).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let store = tributary_store::Store::open(&setup.database, &setup.key).await.unwrap();
    let log_id = tributary_store::audit_log::tenant_log_id(tenant);
    let hashes: Vec<String> =
        (0..MESSAGES).map(|n| payload_sha256(format!("{{\"n\":{n}}}").as_bytes())).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let counts = loop {
        let counts = logged(&store, &log_id).await;
        if hashes.iter().all(|hash| counts.contains_key(hash)) || tokio::time::Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delivered = hashes.iter().filter(|hash| counts.contains_key(*hash)).count();
    let duplicated: usize = hashes.iter().filter_map(|hash| counts.get(hash)).map(|n| n - 1).sum();
    println!(
        "audited messages: published {MESSAGES} / logged {delivered} / lost {} / duplicated {duplicated}",
        MESSAGES as usize - delivered
    );
    assert_eq!(delivered, MESSAGES as usize, "every acknowledged message is on the log");
    assert_eq!(duplicated, 0, "and once");

    // The log as exported verifies with its key, whichever workers signed its checkpoints.
    let log = store.audit_log(&log_id).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.latest_audit_checkpoint(&log_id).await.unwrap().is_none_or(|c| c.size < log.size) {
        assert!(tokio::time::Instant::now() < deadline, "no checkpoint of the whole log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys: Vec<NoteVerifier> = store
        .audit_keys(&log_id)
        .await
        .unwrap()
        .iter()
        .map(|k| NoteVerifier::parse(&k.verifier).unwrap())
        .collect();
    let exported = client()
        .get(format!("{second}/v1/tenants/{tenant}/audit/export"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let report = tributary_audit::export::verify(&exported, &keys);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.entries >= MESSAGES);
}
