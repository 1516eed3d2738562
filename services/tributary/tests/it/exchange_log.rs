//! An exchange's log cosigned by both parties with keys each holds itself (`tributary audit
//! cosign --exchange`), the export verified with both cosigners; usage of an exchange counted to
//! the publishing side; an exchange run from GraphQL and from `tributary admin exchange`.

use std::time::Duration;

use serde_json::{Value, json};
use tributary_testkit::{TestServer, eventually};

use crate::audit_cosign::tributary;
use crate::exchanges::{Parties, logged};
use crate::graphql::graphql;
use crate::management_api::admin;

/// Makes a key with `tributary audit keygen` and registers it as `tenant`'s cosigner; returns
/// the key file and the public key.
async fn register_cosigner(
    node: &TestServer,
    tenant: &str,
    token: &str,
    name: &str,
    dir: &std::path::Path,
) -> (std::path::PathBuf, String) {
    let file = dir.join(format!("{tenant}.key"));
    let (code, public) = tributary(&["audit", "keygen", name, file.to_str().expect("utf-8 path")]).await;
    assert_eq!(code, 0, "{public}");
    let public = public.trim().to_owned();
    let path = format!("/v1/tenants/{tenant}/audit/cosigner");
    // The tenant's own log is made by the writer shortly after the tenant's first action.
    eventually("the tenant's log exists", Duration::from_secs(10), || async {
        node.manage("PUT", &path, token, Some(&json!({"public_key": public}))).await.0 == 200
    })
    .await
    .expect("cosigner registered");
    (file, public)
}

#[tokio::test]
async fn each_party_cosigns_the_exchange_log_with_its_own_key() {
    let parties = Parties::active(&["publish", "subscribe"]).await;
    let node = &parties.node;
    let dir = tempfile::tempdir().expect("a temp dir");
    let (our_key, our_public) = register_cosigner(
        node,
        node.tenant_id(),
        node.operator_token(),
        "retail.example/witness",
        dir.path(),
    )
    .await;
    let (their_key, their_public) = register_cosigner(
        node,
        &parties.partner,
        &parties.partner_token,
        "logistics.example/witness",
        dir.path(),
    )
    .await;
    for n in 0..5 {
        node.publish("orders:9", json!({"n": n})).await;
    }
    let log = logged(node, &parties.offerer_path("/audit/log"), node.operator_token(), 5).await;
    // Neither the log's key nor the other party's key can be a party's cosigner: one signature
    // would count twice.
    let cosigner_path = format!("/v1/tenants/{}/audit/cosigner", parties.partner);
    for stolen in [log["keys"][0]["public_key"].as_str().unwrap(), our_public.as_str()] {
        let body = json!({"public_key": stolen});
        let (status, reply) = node.manage("PUT", &cosigner_path, &parties.partner_token, Some(&body)).await;
        assert_eq!(status, 400, "{stolen}: {reply}");
    }
    let cosign = |tenant: &str, token: &str, key: &std::path::Path, state: &str| {
        let args: Vec<String> = [
            "audit",
            "cosign",
            "--url",
            &node.http_url(),
            "--token",
            token,
            "--tenant",
            tenant,
            "--exchange",
            &parties.exchange,
            "--key",
            key.to_str().expect("utf-8 path"),
            "--state",
            dir.path().join(state).to_str().expect("utf-8 path"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        async move { tributary(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let (code, out) = cosign(node.tenant_id(), node.operator_token(), &our_key, "ours.json").await;
    assert_eq!(code, 0, "{out}");
    let checkpoints = |path: String, token: String| async move {
        node.manage("GET", &path, &token, None).await.1.as_array().cloned().unwrap_or_default()
    };
    let ours =
        checkpoints(parties.offerer_path("/audit/checkpoints"), node.operator_token().to_owned()).await;
    assert!(ours.iter().all(|c| c["cosigned"] == false), "one party is not both: {ours:?}");
    let (code, out) = cosign(&parties.partner, &parties.partner_token, &their_key, "theirs.json").await;
    assert_eq!(code, 0, "{out}");
    let theirs = checkpoints(parties.partner_path("/audit/checkpoints"), parties.partner_token.clone()).await;
    let both: Vec<&Value> = theirs.iter().filter(|c| c["cosigned"] == true).collect();
    assert_eq!(both.len(), 1, "{theirs:?}");
    let shown = node.manage("GET", &parties.partner_path("/audit/log"), &parties.partner_token, None).await.1;
    assert_eq!(shown["cosigned_size"], both[0]["size"], "{shown}");
    assert_eq!(shown["cosigners"].as_array().map(Vec::len), Some(2), "{shown}");

    // Each side exports and verifies on its own, holding the log to both cosignatures.
    let url = format!("{}{}", node.http_url(), parties.partner_path("/audit/export"));
    let text =
        node.http().get(url).bearer_auth(&parties.partner_token).send().await.unwrap().text().await.unwrap();
    let file = dir.path().join("export.jsonl");
    std::fs::write(&file, text).unwrap();
    let log_key = log["keys"][0]["public_key"].as_str().unwrap();
    let file = file.to_str().unwrap();
    let (code, out) = tributary(&[
        "audit",
        "verify",
        file,
        "--public-key",
        log_key,
        "--cosigner",
        &our_public,
        "--cosigner",
        &their_public,
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    for name in ["retail.example/witness", "logistics.example/witness"] {
        assert!(out.contains(&format!("cosigned by {name}: the entries up to")), "{out}");
    }
    // A cosigner's signature never stands in for the log's: a checkpoint carrying only one
    // party's signature (as if that party made it up) is not the log's.
    let export_text = std::fs::read_to_string(file).unwrap();
    let origin = log["origin"].as_str().unwrap();
    let forged: Vec<String> = export_text
        .lines()
        .map(|line| {
            let parsed: Value = serde_json::from_str(line).unwrap();
            match parsed["checkpoint"].as_str() {
                Some(note) => {
                    let kept: String = note
                        .split_inclusive('\n')
                        .filter(|l| !l.starts_with(&format!("\u{2014} {origin} ")))
                        .collect();
                    json!({ "checkpoint": kept }).to_string()
                }
                None => line.to_owned(),
            }
        })
        .collect();
    let forged_file = dir.path().join("forged.jsonl");
    std::fs::write(&forged_file, forged.join("\n") + "\n").unwrap();
    let (code, out) = tributary(&[
        "audit",
        "verify",
        forged_file.to_str().unwrap(),
        "--public-key",
        log_key,
        "--cosigner",
        &our_public,
        "--cosigner",
        &their_public,
    ])
    .await;
    assert_eq!(code, 1, "{out}");
    // A key that cosigned nothing of it fails the verification.
    let stranger = tributary_audit::note::NoteSigner::from_seed("stranger.example/w", &[7; 32]).unwrap();
    let (code, out) = tributary(&[
        "audit",
        "verify",
        file,
        "--public-key",
        log_key,
        "--cosigner",
        &stranger.verifier_key(),
    ])
    .await;
    assert_eq!(code, 1, "{out}");
}

#[tokio::test]
async fn usage_of_an_exchange_is_counted_to_the_publishing_side() {
    let node = TestServer::spawn_configured(|config| config.relay.usage_flush_secs = 1).await;
    let parties = Parties::accepted(Parties::offered_on(node, &["publish", "subscribe"]).await).await;
    let node = &parties.node;
    let mut ours = parties.offerer_client("warehouse").await;
    ours.request(json!({"op": "subscribe", "channel": "orders:5"})).await.unwrap();
    let mut theirs = parties.partner_client("truck").await;
    theirs.request(json!({"op": "subscribe", "channel": "orders:5"})).await.unwrap();
    for n in 0..4 {
        let reply = theirs.request(json!({"op": "publish", "channel": "orders:5", "data": n})).await.unwrap();
        assert!(reply.get("result").is_some(), "{reply}");
    }
    node.publish("orders:5", json!("ours")).await;
    assert_eq!(ours.messages(5).await.unwrap().len(), 5);
    let usage = |tenant: String, token: String| async move {
        let path = format!("/v1/tenants/{tenant}/usage?granularity=hour");
        let series = node.manage("GET", &path, &token, None).await.1;
        let total = |field: &str| {
            series["points"].as_array().map_or(0, |p| p.iter().filter_map(|p| p[field].as_i64()).sum::<i64>())
        };
        (total("messages_published"), total("messages_delivered"))
    };
    // The partner published 4, each delivered to 2 subscribers; the offering side 1 to 2.
    let partner = (parties.partner.clone(), parties.partner_token.clone());
    eventually("usage flushed", Duration::from_secs(10), || async {
        usage(partner.0.clone(), partner.1.clone()).await == (4, 8)
    })
    .await
    .expect("the partner's usage");
    eventually("usage flushed", Duration::from_secs(10), || async {
        usage(node.tenant_id().to_owned(), node.operator_token().to_owned()).await == (1, 2)
    })
    .await
    .expect("the offering side's usage");
}

#[tokio::test]
async fn an_exchange_is_run_from_graphql_and_the_admin_cli() {
    let parties = Parties::offered(&["subscribe"]).await;
    let node = &parties.node;
    let query = r#"query($t: String!) { exchanges(tenant: $t) { id side status namespace partnerRights offererAppId partnerAppId } }"#;
    let (_, data) = graphql(node, &parties.partner_token, query, json!({"t": parties.partner})).await;
    let listed = &data["data"]["exchanges"][0];
    assert_eq!(listed["id"], parties.exchange.as_str(), "{data}");
    assert_eq!((listed["side"].as_str(), listed["status"].as_str()), (Some("partner"), Some("offered")));
    assert_eq!(listed["offererAppId"], node.app_id(), "{data}");
    assert_eq!(listed["partnerAppId"], Value::Null, "not accepted yet: {data}");
    let accept = r#"mutation($t: String!, $id: String!, $app: String!) { acceptExchange(tenant: $t, id: $id, app: $app) { status partnerAppId } }"#;
    let vars = json!({"t": parties.partner, "id": parties.exchange, "app": parties.partner_app.app_id});
    let (_, data) = graphql(node, &parties.partner_token, accept, vars).await;
    assert_eq!(data["data"]["acceptExchange"]["status"], "active", "{data}");
    // Accepting twice is refused with the same code as over REST.
    let (_, data) = graphql(node, &parties.partner_token, accept, vars_of(&parties)).await;
    assert_eq!(data["errors"][0]["extensions"]["name"], "invalid_state", "{data}");

    // The offering side suspends and ends it from the CLI.
    let tenant = node.tenant_id();
    let (ok, out, err) = admin(node, &["exchange", "list", tenant]).await;
    assert!(ok && out.contains(&parties.exchange) && out.contains("\"active\""), "{out}{err}");
    let (ok, out, err) = admin(node, &["exchange", "suspend", tenant, &parties.exchange]).await;
    assert!(ok && out.contains("\"suspended\""), "{out}{err}");
    let (ok, out, err) = admin(node, &["exchange", "end", tenant, &parties.exchange]).await;
    assert!(ok && out.contains("\"ended\""), "{out}{err}");
    let (ok, out, err) = admin(node, &["exchange", "end", tenant, &parties.exchange]).await;
    assert!(!ok && err.contains("invalid_state"), "ending twice is refused: {out}{err}");
    // Its log, which a worker starts within a second of the acceptance.
    eventually("the exchange's log is started", Duration::from_secs(10), || async {
        let (ok, out, _) = admin(node, &["audit-log", "show", tenant, "--exchange", &parties.exchange]).await;
        ok && out.contains("/exchange/")
    })
    .await
    .expect("the exchange's own log, from the CLI");
}

fn vars_of(parties: &Parties) -> Value {
    json!({"t": parties.partner, "id": parties.exchange, "app": parties.partner_app.app_id})
}
