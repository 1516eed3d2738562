//! The audit log end to end: management actions and an audited namespace's messages reach the
//! tenant's log, signed checkpoints follow, receipts and consistency proofs verify against
//! them, an export verifies offline, a rotated key keeps old checkpoints verifiable, and bad
//! requests are refused without touching the log.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tributary_audit::checkpoint::Checkpoint;
use tributary_audit::export::verify;
use tributary_audit::merkle::{Hash, verify_consistency, verify_inclusion};
use tributary_audit::note::{NoteVerifier, open};
use tributary_testkit::{TestServer, eventually};

pub(crate) fn log_path(node: &TestServer, rest: &str) -> String {
    format!("/v1/tenants/{}/audit/{rest}", node.tenant_id())
}

pub(crate) async fn log_state(node: &TestServer) -> Value {
    node.manage("GET", &log_path(node, "log"), node.operator_token(), None).await.1
}

/// Waits until the log holds `entries` entries at least, all in a signed checkpoint.
pub(crate) async fn checkpointed(node: &TestServer, entries: u64) -> Value {
    eventually("the log is checkpointed", Duration::from_secs(10), || async {
        let log = log_state(node).await;
        log["size"].as_u64().is_some_and(|size| size >= entries) && log["checkpoint_size"] == log["size"]
    })
    .await
    .expect("checkpointed");
    log_state(node).await
}

/// Waits until the log holds `count` message entries.
async fn messages_logged(node: &TestServer, count: usize) {
    eventually("the messages are on the log", Duration::from_secs(10), || async {
        let url = format!("{}?limit=1000", log_path(node, "entries"));
        let (_, entries) = node.manage("GET", &url, node.operator_token(), None).await;
        entries
            .as_array()
            .is_some_and(|e| e.iter().filter(|e| e["entry"]["kind"] == "message").count() == count)
    })
    .await
    .expect("the messages are on the log");
}

pub(crate) async fn export(node: &TestServer, query: &str) -> String {
    let url = format!("{}{}{query}", node.http_url(), log_path(node, "export"));
    let response = node.http().get(url).bearer_auth(node.operator_token()).send().await.expect("export");
    assert_eq!(response.status(), 200);
    response.text().await.expect("export body")
}

fn key(text: &str) -> NoteVerifier {
    NoteVerifier::parse(text).expect("a verifier key")
}

fn hash(text: &Value) -> Hash {
    STANDARD.decode(text.as_str().expect("base64")).expect("base64").try_into().expect("32 bytes")
}

fn hashes(list: &Value) -> Vec<Hash> {
    list.as_array().expect("a list").iter().map(hash).collect()
}

fn checkpoint(note: &str, keys: &[NoteVerifier]) -> Checkpoint {
    Checkpoint::parse(&open(note, keys).expect("signed by the log's key").text).expect("a checkpoint")
}

#[tokio::test]
async fn management_actions_and_audited_messages_reach_a_signed_log_that_verifies() {
    let node = TestServer::spawn().await;
    let ns = format!("/v1/tenants/{}/apps/{}/namespaces/ledger", node.tenant_id(), node.app_id());
    let (status, shown) =
        node.manage("POST", &ns, node.operator_token(), Some(&json!({"audited": true}))).await;
    assert_eq!((status, &shown["options"]["audited"]), (200, &json!(true)), "{shown}");
    let mut published = Vec::new();
    for n in 0..20 {
        published.push(node.publish("ledger:eu", json!({"n": n})).await);
        node.publish("chat:x", json!({"n": n})).await;
    }
    // Every message of the audited namespace, none of the other.
    messages_logged(&node, 20).await;
    let log = checkpointed(&node, 21).await;
    let url = format!("{}?limit=1000", log_path(&node, "entries"));
    let (_, entries) = node.manage("GET", &url, node.operator_token(), None).await;
    let entries = entries.as_array().unwrap().clone();
    let messages: Vec<&Value> = entries.iter().filter(|e| e["entry"]["kind"] == "message").collect();
    assert!(messages.iter().all(|m| m["entry"]["channel"] == "ledger:eu"), "{messages:?}");
    let offsets: Vec<u64> = messages.iter().map(|m| m["entry"]["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=20).collect::<Vec<_>>());
    let actions: Vec<&str> = entries.iter().filter_map(|e| e["entry"]["action"].as_str()).collect();
    assert!(actions.contains(&"namespace.set") && actions.contains(&"app.create"), "{actions:?}");
    // Who published: the backend, by its API key's id (an audited namespace names it).
    let publisher = messages[3]["entry"]["client_id"].as_str().unwrap_or_default();
    assert!(publisher.starts_with("key:key_"), "{:?}", messages[3]);
    assert_eq!(
        messages[3]["entry"]["payload_sha256"],
        tributary_audit::entry::payload_sha256(br#"{"n":3}"#),
        "the entry holds the payload's hash"
    );

    // The export verifies offline with the published key, and names nothing.
    let keys = vec![key(log["keys"][0]["public_key"].as_str().unwrap())];
    let report = verify(&export(&node, "").await, &keys);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.entries, log["checkpoint_size"].as_u64().unwrap());
    assert!(report.checkpoints_verified >= 1);

    // A receipt for one message, by its channel and offset, verifies against its checkpoint.
    let (epoch, offset) = (published[4]["epoch"].as_str().unwrap(), published[4]["offset"].as_u64().unwrap());
    let query =
        format!("proofs/inclusion?app={}&channel=ledger:eu&epoch={epoch}&offset={offset}", node.app_id());
    let (status, receipt) = node.manage("GET", &log_path(&node, &query), node.operator_token(), None).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["entry"]["entry"]["offset"], offset);
    verify_receipt(&receipt, &keys);

    // More entries, a later checkpoint, and the proof that it extends the first.
    let first = checkpoint(receipt["checkpoint"].as_str().unwrap(), &keys).size;
    for n in 0..300 {
        node.publish("ledger:us", json!({"n": n})).await;
    }
    let later = checkpointed(&node, first + 300).await;
    let query = format!("proofs/consistency?from={first}");
    let (status, proof) = node.manage("GET", &log_path(&node, &query), node.operator_token(), None).await;
    assert_eq!(status, 200, "{proof}");
    let old = checkpoint(proof["checkpoints"][0].as_str().unwrap(), &keys);
    let new = checkpoint(proof["checkpoints"][1].as_str().unwrap(), &keys);
    assert_eq!((old.size, new.size), (first, later["checkpoint_size"].as_u64().unwrap()));
    verify_consistency(old.size, new.size, &old.root, &new.root, &hashes(&proof["proof"]))
        .expect("consistent");
    // Every entry of the larger tree has a receipt (inner nodes of 256 leaves are stored).
    for index in [0, 255, 256, new.size - 1] {
        let query = format!("proofs/inclusion?index={index}");
        let (status, receipt) =
            node.manage("GET", &log_path(&node, &query), node.operator_token(), None).await;
        assert_eq!(status, 200, "{receipt}");
        let signed = checkpoint(receipt["checkpoint"].as_str().unwrap(), &keys);
        verify_inclusion(
            &hash(&receipt["leaf_hash"]),
            index,
            signed.size,
            &hashes(&receipt["proof"]),
            &signed.root,
        )
        .unwrap_or_else(|err| panic!("entry {index}: {err}"));
    }
    // A range of the log verifies on its own: from the first checkpoint on, and from a size no
    // checkpoint has (its right edge made of stored nodes of 256 leaves and entries).
    for from in [first, 263] {
        let range = export(&node, &format!("?from={from}")).await;
        let report = verify(&range, &keys);
        assert!(report.problems.is_empty(), "from {from}: {:?}", report.problems);
        assert_eq!(report.first, from);
        assert!(report.checkpoints_verified >= 1, "from {from}");
    }
    let (status, reply) =
        node.manage("GET", &log_path(&node, "export?from=999999"), node.operator_token(), None).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (400, Some("invalid_parameter")), "{reply}");

    // The key rotated: new checkpoints are signed by the new key; the old one stays listed.
    let (status, rotated) =
        node.manage("POST", &log_path(&node, "rotate-key"), node.operator_token(), None).await;
    assert_eq!(status, 200, "{rotated}");
    let listed = rotated["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0]["retired_at"].is_i64() && listed[1]["retired_at"].is_null(), "{rotated}");
    let new_key = key(listed[1]["public_key"].as_str().unwrap());
    let size = later["size"].as_u64().unwrap();
    node.publish("ledger:eu", json!("after the rotation")).await;
    eventually("a checkpoint by the new key", Duration::from_secs(10), || async {
        let log = log_state(&node).await;
        log["checkpoint_size"].as_u64().is_some_and(|s| s > size + 1)
            && open(log["checkpoint"].as_str().unwrap(), std::slice::from_ref(&new_key)).is_ok()
    })
    .await
    .unwrap();
    let newest = log_state(&node).await;
    assert!(open(newest["checkpoint"].as_str().unwrap(), &keys).is_err(), "not by the retired key");
    let both = vec![keys[0].clone(), new_key];
    let report = verify(&export(&node, "").await, &both);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let actions = report_actions(&node).await;
    assert!(actions.contains(&"audit.key.rotate".to_owned()), "the rotation is on the log: {actions:?}");
}

async fn report_actions(node: &TestServer) -> Vec<String> {
    let url = format!("{}?limit=1000", log_path(node, "entries"));
    let (_, entries) = node.manage("GET", &url, node.operator_token(), None).await;
    entries
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["entry"]["action"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn bad_requests_are_refused_and_another_tenant_sees_nothing() {
    let node = TestServer::spawn().await;
    let log = checkpointed(&node, 1).await;
    for (query, status, name) in [
        ("proofs/inclusion", 400, "invalid_parameter"),
        ("proofs/inclusion?index=x", 400, "invalid_parameter"),
        ("proofs/inclusion?channel=a", 400, "invalid_parameter"),
        ("proofs/inclusion?index=100000", 404, "not_found"),
        ("proofs/inclusion?index=0&size=99999", 404, "not_found"),
        ("proofs/consistency", 400, "invalid_parameter"),
        ("proofs/consistency?from=99999", 404, "not_found"),
        ("entries?limit=0", 400, "invalid_parameter"),
        ("entries?limit=1001", 400, "invalid_parameter"),
        ("export?to=99999", 400, "invalid_parameter"),
    ] {
        let (got, reply) = node.manage("GET", &log_path(&node, query), node.operator_token(), None).await;
        assert_eq!((got, reply["error"]["name"].as_str()), (status, Some(name)), "{query}: {reply}");
    }
    // Another tenant's admin token reaches nothing of this log.
    let other = node.store().create_tenant("other").await.unwrap();
    let (_, token) = node
        .manage(
            "POST",
            &format!("/v1/tenants/{}/management-tokens", other.id),
            node.operator_token(),
            Some(&json!({"name": "t", "role": "admin"})),
        )
        .await;
    let token = token["secret"].as_str().unwrap().to_owned();
    for rest in ["log", "entries", "checkpoints", "export", "proofs/inclusion?index=0"] {
        let (got, reply) = node.manage("GET", &log_path(&node, rest), &token, None).await;
        assert_eq!(got, 404, "{rest}: {reply}");
    }
    let (got, _) = node.manage("POST", &log_path(&node, "rotate-key"), &token, None).await;
    assert_eq!(got, 404);
    // Nothing was harmed: the log is as it was, and still verifies.
    let after = log_state(&node).await;
    assert_eq!(after["keys"], log["keys"]);
    let keys = vec![key(log["keys"][0]["public_key"].as_str().unwrap())];
    assert!(verify(&export(&node, "").await, &keys).problems.is_empty());
}

/// A GraphQL request that must be answered (its errors are in the answer).
async fn graphql(node: &TestServer, token: &str, query: &str, variables: Value) -> Value {
    let (status, reply) = crate::graphql::graphql(node, token, query, variables).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

#[tokio::test]
async fn the_audit_log_through_graphql_is_typed_and_scoped_as_rest() {
    let node = TestServer::spawn().await;
    let ns = format!("/v1/tenants/{}/apps/{}/namespaces/ledger", node.tenant_id(), node.app_id());
    assert_eq!(node.manage("POST", &ns, node.operator_token(), Some(&json!({"audited": true}))).await.0, 200);
    for n in 0..5 {
        node.publish("ledger:eu", json!({"n": n})).await;
    }
    let rest = checkpointed(&node, 5).await;
    let t = json!({"t": node.tenant_id()});
    let token = node.operator_token();
    let reply = graphql(
        &node,
        token,
        "query($t: String!) { auditLog(tenant: $t) { origin size checkpointSize keys { publicKey retiredAt } } }",
        t.clone(),
    )
    .await;
    let log = &reply["data"]["auditLog"];
    assert_eq!(log["origin"], rest["origin"], "{reply}");
    assert_eq!(log["checkpointSize"], rest["checkpoint_size"]);
    assert_eq!(log["keys"][0]["publicKey"], rest["keys"][0]["public_key"]);

    let reply = graphql(
        &node,
        token,
        "query($t: String!) { auditInclusionProof(tenant: $t, index: 2) { size leafHash proof checkpoint entry { index entry } } }",
        t.clone(),
    )
    .await;
    let receipt = &reply["data"]["auditInclusionProof"];
    let keys = vec![key(rest["keys"][0]["public_key"].as_str().unwrap())];
    let signed = checkpoint(receipt["checkpoint"].as_str().unwrap(), &keys);
    verify_inclusion(&hash(&receipt["leafHash"]), 2, signed.size, &hashes(&receipt["proof"]), &signed.root)
        .expect("the receipt verifies");

    // Bad input and another tenant: the REST errors, as GraphQL errors.
    let reply = graphql(
        &node,
        token,
        "query($t: String!) { auditEntries(tenant: $t, limit: 0) { index } }",
        t.clone(),
    )
    .await;
    assert_eq!(reply["errors"][0]["extensions"]["name"], "invalid_parameter", "{reply}");
    let reply = graphql(
        &node,
        token,
        "mutation($t: String!) { setAuditCosigner(tenant: $t, publicKey: \"nope\") { size } }",
        t.clone(),
    )
    .await;
    assert_eq!(reply["errors"][0]["extensions"]["name"], "invalid_parameter", "{reply}");
    let other = node.store().create_tenant("other").await.unwrap();
    let (_, minted) = node
        .manage(
            "POST",
            &format!("/v1/tenants/{}/management-tokens", other.id),
            token,
            Some(&json!({"name": "t", "role": "admin"})),
        )
        .await;
    let stranger = minted["secret"].as_str().unwrap().to_owned();
    let reply =
        graphql(&node, &stranger, "query($t: String!) { auditLog(tenant: $t) { size } }", t.clone()).await;
    assert_eq!(reply["errors"][0]["extensions"]["name"], "not_found", "{reply}");
    let reply =
        graphql(&node, &stranger, "mutation($t: String!) { rotateAuditKey(tenant: $t) { size } }", t.clone())
            .await;
    assert_eq!(reply["errors"][0]["extensions"]["name"], "not_found", "{reply}");

    let reply = graphql(
        &node,
        token,
        "mutation($t: String!) { rotateAuditKey(tenant: $t) { keys { retiredAt } } }",
        t,
    )
    .await;
    let listed = reply["data"]["rotateAuditKey"]["keys"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2, "{reply}");
    assert!(listed[0]["retiredAt"].is_i64() && listed[1]["retiredAt"].is_null());
}

#[tokio::test]
async fn tributary_admin_audit_log_shows_receipts_exports_and_rotates() {
    let node = TestServer::spawn().await;
    let ns = format!("/v1/tenants/{}/apps/{}/namespaces/ledger", node.tenant_id(), node.app_id());
    assert_eq!(node.manage("POST", &ns, node.operator_token(), Some(&json!({"audited": true}))).await.0, 200);
    let published = node.publish("ledger:eu/1", json!({"n": 1})).await;
    let on_log = format!(
        "proofs/inclusion?app={}&channel=ledger%3Aeu%2F1&epoch={}&offset={}",
        node.app_id(),
        published["epoch"].as_str().unwrap(),
        published["offset"]
    );
    eventually("the message is in a signed checkpoint", Duration::from_secs(10), || async {
        node.manage("GET", &log_path(&node, &on_log), node.operator_token(), None).await.0 == 200
    })
    .await
    .unwrap();
    let log = log_state(&node).await;
    let admin = crate::management_api::admin;
    let tenant = node.tenant_id();
    let (ok, out, err) = admin(&node, &["audit-log", "show", tenant]).await;
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["origin"], log["origin"]);
    let offset = published["offset"].to_string();
    let epoch = published["epoch"].as_str().unwrap();
    let receipt = [
        "audit-log",
        "receipt",
        tenant,
        "--app",
        node.app_id(),
        "--channel",
        "ledger:eu/1",
        "--epoch",
        epoch,
        "--offset",
        &offset,
    ];
    let (ok, out, err) = admin(&node, &receipt).await;
    assert!(ok, "{err}");
    let receipt: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(receipt["entry"]["entry"]["channel"], "ledger:eu/1", "{receipt}");
    let (ok, out, err) = admin(&node, &["audit-log", "export", tenant]).await;
    assert!(ok, "{err}");
    let keys = vec![key(log["keys"][0]["public_key"].as_str().unwrap())];
    let report = verify(&out, &keys);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let (ok, out, _) = admin(&node, &["audit-log", "rotate-key", tenant]).await;
    assert!(ok && out.contains("retired_at"), "{out}");
    let (ok, _, err) = admin(&node, &["audit-log", "set-cosigner", tenant, "not-a-key"]).await;
    assert!(!ok && err.contains("invalid_parameter"), "{err}");
}

#[tokio::test]
async fn removing_an_apps_last_rule_leaves_its_feed_on_for_the_audit_log() {
    let node = TestServer::spawn().await;
    let token = node.operator_token();
    let app = format!("/v1/tenants/{}/apps/{}", node.tenant_id(), node.app_id());
    assert_eq!(
        node.manage("POST", &format!("{app}/namespaces/ledger"), token, Some(&json!({"audited": true})))
            .await
            .0,
        200
    );
    let (status, hook) = node
        .manage("POST", &format!("{app}/webhooks"), token, Some(&json!({"url": "https://example.com/hook"})))
        .await;
    assert_eq!(status, 201, "{hook}");
    let rule = json!({"channel_pattern": "other:*", "events": ["message"], "webhook_id": hook["id"]});
    let (status, rule) = node.manage("POST", &format!("{app}/rules"), token, Some(&rule)).await;
    assert_eq!(status, 201, "{rule}");
    let rule_path = format!("{app}/rules/{}", rule["id"].as_str().unwrap());
    assert_eq!(node.manage("DELETE", &rule_path, token, None).await.0, 204);
    // Published at once: had the feed gone with the last rule, these would never be read.
    for n in 0..5 {
        node.publish("ledger:eu", json!({"n": n})).await;
    }
    messages_logged(&node, 5).await;
}

#[tokio::test]
async fn the_operators_log_holds_the_actions_of_no_tenant_and_only_operators_read_it() {
    let node = TestServer::spawn().await;
    let operator = node.operator_token();
    let (status, created) =
        node.manage("POST", "/v1/operator-tokens", operator, Some(&json!({"name": "night-shift"}))).await;
    assert_eq!(status, 201, "{created}");
    let token_id = created["id"].as_str().unwrap().to_owned();
    // The operator's action is on the operator's log, in a signed checkpoint.
    eventually("the operator's action is on its log", Duration::from_secs(10), || async {
        let (_, entries) = node.manage("GET", "/v1/operator/audit/entries?limit=1000", operator, None).await;
        entries.as_array().is_some_and(|entries| {
            entries
                .iter()
                .any(|e| e["entry"]["target"] == token_id.as_str() && e["entry"]["tenant"].is_null())
        })
    })
    .await
    .unwrap();
    let log = crate::exchanges::logged(&node, "/v1/operator/audit/log", operator, 1).await;
    assert!(log["origin"].as_str().unwrap().ends_with("/operator"), "{log}");
    let url = format!("{}/v1/operator/audit/export", node.http_url());
    let text = node.http().get(url).bearer_auth(operator).send().await.unwrap().text().await.unwrap();
    let report = verify(&text, &[key(log["keys"][0]["public_key"].as_str().unwrap())]);
    assert!(report.problems.is_empty() && report.checkpoints_verified >= 1, "{:?}", report.problems);
    // A tenant's token, however high its role, reads none of it.
    let (tenant, owner) = crate::management_api::tenant_with_owner(&node, "Acme").await;
    for path in ["/v1/operator/audit/log", "/v1/operator/audit/entries", "/v1/operator/audit/export"] {
        let (status, reply) = node.manage("GET", path, &owner, None).await;
        assert_eq!(
            (status, reply["error"]["name"].as_str()),
            (403, Some("permission_denied")),
            "{tenant} {path}"
        );
    }
}

/// Checks a receipt: its entry's proof leads to the root of its checkpoint, signed by `keys`.
fn verify_receipt(receipt: &Value, keys: &[NoteVerifier]) {
    let signed = checkpoint(receipt["checkpoint"].as_str().unwrap(), keys);
    let index = receipt["entry"]["index"].as_u64().unwrap();
    verify_inclusion(
        &hash(&receipt["leaf_hash"]),
        index,
        signed.size,
        &hashes(&receipt["proof"]),
        &signed.root,
    )
    .expect("the receipt proves the message is on the signed log");
}

#[tokio::test]
async fn a_backend_gets_the_receipt_of_an_audited_message_from_the_http_api() {
    let node = TestServer::spawn().await;
    let ns = format!("/v1/tenants/{}/apps/{}/namespaces/ledger", node.tenant_id(), node.app_id());
    assert_eq!(node.manage("POST", &ns, node.operator_token(), Some(&json!({"audited": true}))).await.0, 200);
    let published = node.publish("ledger:eu", json!({"amount": 12})).await;
    let path = format!(
        "/v1/channels/ledger:eu/receipt?epoch={}&offset={}",
        published["epoch"].as_str().unwrap(),
        published["offset"]
    );
    eventually("the message is in a signed checkpoint", Duration::from_secs(10), || async {
        node.get(&path).await.0 == 200
    })
    .await
    .unwrap();
    let (_, receipt) = node.get(&path).await;
    assert_eq!(receipt["entry"]["entry"]["channel"], "ledger:eu", "{receipt}");
    assert_eq!(
        receipt["entry"]["entry"]["payload_sha256"],
        tributary_audit::entry::payload_sha256(br#"{"amount":12}"#)
    );
    // It verifies against the log's published key.
    let keys = vec![key(log_state(&node).await["keys"][0]["public_key"].as_str().unwrap())];
    verify_receipt(&receipt, &keys);
    // A message of a namespace nobody audits has none; a bad query is refused.
    let other = node.publish("chat:eu", json!("not audited")).await;
    let path = format!(
        "/v1/channels/chat:eu/receipt?epoch={}&offset={}",
        other["epoch"].as_str().unwrap(),
        other["offset"]
    );
    let (status, reply) = node.get(&path).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (404, Some("not_found")), "{reply}");
    let (status, reply) = node.get("/v1/channels/ledger:eu/receipt?offset=x").await;
    assert_eq!((status, reply["error"]["name"].as_str()), (400, Some("invalid_parameter")), "{reply}");
}
