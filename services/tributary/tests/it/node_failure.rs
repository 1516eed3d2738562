//! `kill -9` of a relay node while clients publish and subscribe: real `tributary serve`
//! processes on one data directory and one Redis; the killed node's subscriber reconnects to the
//! other node and recovers, and the history checker finds nothing lost or repeated.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tributary_testkit::{HistoryChecker, ThrowawayRedis, WsClient};

const CHANNEL: &str = "chat:failover";

struct Node {
    child: Child,
    http: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_node(dir: &std::path::Path, redis: &str) -> Node {
    start_node_with(dir, redis, &[]).await
}

async fn start_node_with(dir: &std::path::Path, redis: &str, env: &[(&str, &str)]) -> Node {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .envs(env.iter().copied())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--redis-url", redis])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while http_client().get(format!("{http}/healthz")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "node did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Node { child, http }
}

/// Returns the API key the first node wrote into the shared data directory.
fn api_key(dir: &std::path::Path) -> String {
    let credentials: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("credentials.json")).unwrap()).unwrap();
    credentials["api_key"].as_str().unwrap().to_owned()
}

/// Mints a token for `client` with `rights` on every channel, through `node`'s HTTP API.
async fn mint(node: &Node, api_key: &str, client: &str, rights: &[&str]) -> String {
    let body =
        json!({"client_id": client, "ttl_secs": 600, "capabilities": [{"channel": "*", "allow": rights}]});
    let reply: Value = http_client()
        .post(format!("{}/v1/tokens", node.http))
        .bearer_auth(api_key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["token"].as_str().unwrap().to_owned()
}

fn ws_url(node: &Node) -> String {
    format!("{}/v1/connect", node.http.replacen("http", "ws", 1))
}

fn record(checker: &HistoryChecker, who: &str, frame: &Value) -> u64 {
    let offset = frame["offset"].as_u64().unwrap();
    checker.delivered(
        who,
        CHANNEL,
        frame["epoch"].as_str().unwrap(),
        offset,
        frame["data"]["id"].as_str().unwrap(),
    );
    offset
}

async fn subscribe(
    ws: &mut WsClient,
    checker: &HistoryChecker,
    who: &str,
    from: Option<(String, u64)>,
) -> (String, u64) {
    let mut request = json!({"op": "subscribe", "channel": CHANNEL});
    if let Some((epoch, offset)) = &from {
        request["recover"] = json!({"epoch": epoch, "offset": offset});
    }
    let reply = ws.request(request).await.unwrap();
    let result = &reply["result"];
    // History covers every gap here: a recovery that does not recover is a failure.
    if from.is_some() {
        assert_eq!(result["recovered"], true, "{who}: {reply}");
    }
    let start = match from {
        Some(position) if result["recovered"] == true => position,
        _ => (result["epoch"].as_str().unwrap().to_owned(), result["offset"].as_u64().unwrap()),
    };
    checker.started(who, CHANNEL, &start.0, start.1, result["recovered"].as_bool());
    start
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_subscriber_recovers_on_another_node_with_nothing_lost_or_repeated() {
    let redis = ThrowawayRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut doomed = start_node(dir.path(), &redis.url()).await;
    let survivor = start_node(dir.path(), &redis.url()).await;
    let api_key = api_key(dir.path());
    let http = http_client();
    let token = mint(&survivor, &api_key, "mover", &["subscribe"]).await;
    let checker = Arc::new(HistoryChecker::new());

    let (mut moving, _) = WsClient::connect(&ws_url(&doomed), &token).await.unwrap();
    let (mut staying, _) = WsClient::connect(&ws_url(&survivor), &token).await.unwrap();
    let mut position = subscribe(&mut moving, &checker, "moving", None).await;
    subscribe(&mut staying, &checker, "staying", None).await;

    let total = 300u64;
    let publisher = {
        let (checker, url, key, http) =
            (checker.clone(), survivor.http.clone(), api_key.clone(), http.clone());
        tokio::spawn(async move {
            for n in 0..total {
                let id = format!("m{n}");
                checker.attempted(&id);
                let response = http
                    .post(format!("{url}/v1/channels/{CHANNEL}/messages"))
                    .bearer_auth(&key)
                    .json(&json!({"data": {"id": id}}))
                    .send()
                    .await
                    .unwrap();
                if response.status() == 200 {
                    let reply: Value = response.json().await.unwrap();
                    checker.acknowledged(
                        CHANNEL,
                        &id,
                        reply["epoch"].as_str().unwrap(),
                        reply["offset"].as_u64().unwrap(),
                    );
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for _ in 0..50 {
        let frame = moving.next_of("message").await.unwrap();
        position.1 = record(&checker, "moving", &frame);
    }
    // kill -9: no goodbye, no unsubscribe, no presence leave.
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    // Whatever was already in the socket still counts; then the connection is gone.
    while let Ok(frame) = moving.next_of("message").await {
        position.1 = record(&checker, "moving", &frame);
    }
    let (mut moved, _) = WsClient::connect(&ws_url(&survivor), &token).await.unwrap();
    subscribe(&mut moved, &checker, "moving", Some(position)).await;
    publisher.await.unwrap();
    for (who, ws) in [("moving", &mut moved), ("staying", &mut staying)] {
        loop {
            let frame = ws.next_of("message").await.unwrap();
            if record(&checker, who, &frame) >= total {
                break;
            }
        }
    }
    let report = checker.report();
    println!("kill -9 of a relay node: {report}");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.acknowledged as u64, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_leave_within_the_presence_timeout() {
    let redis = ThrowawayRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let timeout = [("TRIBUTARY_RELAY__PRESENCE_TIMEOUT_MS", "1500")];
    let mut doomed = start_node_with(dir.path(), &redis.url(), &timeout).await;
    let survivor = start_node_with(dir.path(), &redis.url(), &timeout).await;
    let api_key = api_key(dir.path());
    let http = http_client();
    let token = |client| mint(&survivor, &api_key, client, &["subscribe", "presence"]);
    let (mut watcher, _) = WsClient::connect(&ws_url(&survivor), &token("watcher").await).await.unwrap();
    watcher.request(json!({"op": "subscribe", "channel": "chat:members"})).await.unwrap();
    let (mut ghost, _) = WsClient::connect(&ws_url(&doomed), &token("ghost").await).await.unwrap();
    ghost.request(json!({"op": "subscribe", "channel": "chat:members"})).await.unwrap();
    loop {
        let join = watcher.next_of("join").await.unwrap();
        if join["member"]["client_id"] == "ghost" {
            break;
        }
    }
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let killed = tokio::time::Instant::now();
    loop {
        let leave = watcher.next_of("leave").await.unwrap();
        if leave["member"]["client_id"] == "ghost" {
            break;
        }
    }
    let after = killed.elapsed();
    let occupancy: Value = http
        .get(format!("{}/v1/channels/chat:members/occupancy", survivor.http))
        .bearer_auth(&api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!(
        "kill -9 of a node: its member left after {after:?} (presence timeout 1.5 s), occupancy {occupancy}"
    );
    assert!(after < Duration::from_millis(1500 + 1500), "left within the timeout and a sweep: {after:?}");
    assert_eq!(occupancy["members"], 1, "only the watcher is left: {occupancy}");
}

/// An HTTP client (after the process's TLS provider is installed).
fn http_client() -> reqwest::Client {
    tributary_delivery::install_tls_provider();
    reqwest::Client::new()
}
