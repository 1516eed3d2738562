//! The Redis engine over TLS: two nodes on a throwaway `redis-server` that speaks TLS only, its
//! certificate signed by an authority of the test's own; and a node given the wrong authority,
//! which refuses to start rather than talk to a server it cannot verify.

use serde_json::json;
use tributary_testkit::{TestServer, ThrowawayRedis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_a_redis_over_tls_verified_against_the_configured_authority() {
    let redis = ThrowawayRedis::start_tls();
    assert!(redis.url().starts_with("rediss://"));
    let ca = redis.ca_file().unwrap().to_string_lossy().into_owned();
    let nodes =
        TestServer::spawn_nodes(&redis.url(), 2, |config| config.engine.redis_tls_ca_file = ca.clone()).await;
    let token = nodes[0].all_rights("tls").await;
    let mut subscriber = nodes[1].ws(&token).await;
    subscriber.request(json!({"op": "subscribe", "channel": "chat:tls"})).await.unwrap();
    let reply = nodes[0].publish("chat:tls", json!({"over": "tls"})).await;
    assert_eq!(reply["offset"], 1, "{reply}");
    let got = subscriber.messages(1).await.unwrap();
    assert_eq!(got[0]["data"], json!({"over": "tls"}));
    assert_eq!(nodes[1].get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_verify_redis_refuses_to_start() {
    let redis = ThrowawayRedis::start_tls();
    // Another authority: the server's certificate does not chain to it.
    let other = ThrowawayRedis::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--redis-url", &redis.url()])
        .env("TRIBUTARY_ENGINE__REDIS_TLS_CA_FILE", other.ca_file().unwrap())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), output).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it must not start: {stderr}");
    assert!(stderr.contains("engine"), "the error says what failed: {stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "and why: {stderr}");
}
