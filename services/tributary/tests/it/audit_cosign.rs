//! Cosigning a tenant's log with a key the tenant holds: `tributary audit keygen`, the key
//! registered, `tributary audit cosign` run twice (the second checks a consistency proof), the
//! export verified with `--cosigner`; a cosigner whose last cosigned tree differs refuses to
//! cosign; bad cosignatures are refused and change nothing.

use serde_json::json;
use tributary_audit::checkpoint::Checkpoint;
use tributary_audit::note::{NoteSigner, sign};
use tributary_testkit::TestServer;

use crate::audit_log::{checkpointed, export, log_path, log_state};

/// Runs the binary without blocking the runtime the test's server runs on (the binary calls it).
pub(crate) async fn tributary(args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .output()
        .await
        .expect("the binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn a_tenant_cosigns_its_log_with_its_own_key_and_refuses_a_rewritten_one() {
    let node = TestServer::spawn().await;
    let ns = format!("/v1/tenants/{}/apps/{}/namespaces/ledger", node.tenant_id(), node.app_id());
    assert_eq!(node.manage("POST", &ns, node.operator_token(), Some(&json!({"audited": true}))).await.0, 200);
    for n in 0..10 {
        node.publish("ledger:eu", json!({"n": n})).await;
    }
    let log = checkpointed(&node, 10).await;
    let token = node.operator_token();
    let (status, reply) = node
        .manage(
            "POST",
            &log_path(&node, "cosignatures"),
            token,
            Some(&json!({"checkpoint": log["checkpoint"]})),
        )
        .await;
    assert_eq!((status, reply["error"]["name"].as_str()), (409, Some("not_configured")), "{reply}");

    // The tenant's own key, made offline and registered.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("witness.key");
    let (code, public) =
        tributary(&["audit", "keygen", "acme.example/witness", key_file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{public}");
    let public = public.trim().to_owned();
    let (code, again) =
        tributary(&["audit", "keygen", "acme.example/witness", key_file.to_str().unwrap()]).await;
    assert_ne!(code, 0, "a key file is never overwritten: {again}");
    for bad in
        [json!({"public_key": "not a key"}), json!({"public_key": log["keys"][0]["public_key"]}), json!({})]
    {
        let (status, reply) = node.manage("PUT", &log_path(&node, "cosigner"), token, Some(&bad)).await;
        assert_eq!(status, 400, "{bad}: {reply}");
    }
    let (status, shown) =
        node.manage("PUT", &log_path(&node, "cosigner"), token, Some(&json!({"public_key": public}))).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["cosigners"][0]["public_key"], public.as_str());

    // Cosigned from the tenant's side, twice: the second run checks the log grew consistently.
    let state = dir.path().join("state.json");
    let url = node.http_url();
    let cosign = |state: std::path::PathBuf| {
        let args: Vec<String> = [
            "audit",
            "cosign",
            "--url",
            &url,
            "--token",
            token,
            "--tenant",
            node.tenant_id(),
            "--key",
            key_file.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        async move { tributary(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let (code, out) = cosign(state.clone()).await;
    assert_eq!(code, 0, "{out}");
    let first = log_state(&node).await["cosigned_size"].as_u64().unwrap();
    assert!(first >= 10 && out.contains(&format!("cosigned at size {first}")), "{out}");
    for n in 0..300 {
        node.publish("ledger:eu", json!({"n": n})).await;
    }
    let grown = checkpointed(&node, first + 300).await;
    let (code, out) = cosign(state.clone()).await;
    assert_eq!(code, 0, "{out}");
    let second = log_state(&node).await["cosigned_size"].as_u64().unwrap();
    assert_eq!(second, grown["checkpoint_size"].as_u64().unwrap(), "{out}");

    // The export carries the cosigned checkpoints; verified with the tenant's key.
    let file = dir.path().join("log.jsonl");
    std::fs::write(&file, export(&node, "").await).unwrap();
    let log_key = grown["keys"][0]["public_key"].as_str().unwrap();
    let (code, out) = tributary(&[
        "audit",
        "verify",
        file.to_str().unwrap(),
        "--public-key",
        log_key,
        "--cosigner",
        &public,
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("cosigned by acme.example/witness: the entries up to {second}")), "{out}");

    // A cosigner that cosigned another tree (as if the log had been rewritten since) refuses.
    let mut remembered: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    remembered["root"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let forked = dir.path().join("forked.json");
    std::fs::write(&forked, remembered.to_string()).unwrap();
    node.publish("ledger:eu", json!("one more")).await;
    checkpointed(&node, second + 1).await;
    let (code, out) = cosign(forked.clone()).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("NOT CONSISTENT"), "{out}");
    assert_eq!(log_state(&node).await["cosigned_size"].as_u64(), Some(second), "nothing was posted");

    // Bad cosignatures, refused; the cosigned size stays.
    let signer = NoteSigner::parse(std::fs::read_to_string(&key_file).unwrap().trim()).unwrap();
    let stranger = NoteSigner::from_seed("acme.example/witness", &[3; 32]).unwrap();
    let latest = log_state(&node).await;
    let note = latest["checkpoint"].as_str().unwrap();
    let origin = latest["origin"].as_str().unwrap();
    let forged_text =
        Checkpoint { origin: origin.into(), size: second, root: [9; 32], extensions: vec![] }.to_text();
    let older = node.manage("GET", &log_path(&node, "checkpoints?limit=1"), token, None).await.1[0]["note"]
        .as_str()
        .unwrap()
        .to_owned();
    for (what, checkpoint) in [
        ("another key's", tributary_audit::note::cosign(note, &stranger).unwrap()),
        ("a tree the log never signed", sign(&forged_text, &[&signer]).unwrap()),
        ("older than the last cosigned", tributary_audit::note::cosign(&older, &signer).unwrap()),
        ("not a note", "hello".to_owned()),
    ] {
        let body = json!({ "checkpoint": checkpoint });
        let (status, reply) = node.manage("POST", &log_path(&node, "cosignatures"), token, Some(&body)).await;
        assert_eq!(
            (status, reply["error"]["name"].as_str()),
            (400, Some("invalid_parameter")),
            "{what}: {reply}"
        );
    }
    assert_eq!(log_state(&node).await["cosigned_size"].as_u64(), Some(second));
}
