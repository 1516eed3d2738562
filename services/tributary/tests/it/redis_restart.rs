//! Redis restarts under load, checked with the history checker: two relay nodes on a throwaway
//! `redis-server`, a publisher on one node, a subscriber on the other; Redis is killed with
//! SIGKILL mid-stream and started again.
//!
//! - Durable (AOF, `appendfsync always`, `redis_trust_restarts`): no acknowledged message is
//!   lost; the subscriber recovers across the restart with `recovered: true`.
//! - Without persistence: what Redis lost shows as a new epoch (`recovered: false`), never as a
//!   silent gap or a reused offset.
//!
//! Either way publishes fail while Redis is away (none acknowledged and lost) and service
//! resumes within seconds of Redis returning.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tributary_testkit::{HistoryChecker, Report, TestServer, ThrowawayRedis, WsClient};

const CHANNEL: &str = "chat:restart";

fn record(checker: &HistoryChecker, frame: &Value) -> (String, u64) {
    let position = (frame["epoch"].as_str().unwrap().to_owned(), frame["offset"].as_u64().unwrap());
    checker.delivered("sub", CHANNEL, &position.0, position.1, frame["data"]["id"].as_str().unwrap());
    position
}

/// Subscribes (recovering from `from`), retrying while the node cannot serve yet; records the
/// start; returns the position and whether it recovered.
async fn subscribe(
    node: &TestServer,
    token: &str,
    checker: &HistoryChecker,
    from: Option<&(String, u64)>,
) -> (WsClient, (String, u64), Option<bool>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut ws = node.ws(token).await;
        let mut request = json!({"op": "subscribe", "channel": CHANNEL});
        if let Some((epoch, offset)) = from {
            request["recover"] = json!({"epoch": epoch, "offset": offset});
        }
        let reply = ws.request(request).await.unwrap();
        let result = &reply["result"];
        if result.is_object() {
            let recovered = result["recovered"].as_bool();
            let start = match (from, recovered) {
                (Some(position), Some(true)) => position.clone(),
                _ => (result["epoch"].as_str().unwrap().to_owned(), result["offset"].as_u64().unwrap()),
            };
            checker.started("sub", CHANNEL, &start.0, start.1, recovered);
            return (ws, start, recovered);
        }
        assert!(tokio::time::Instant::now() < deadline, "never subscribed again: {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes through node 0's HTTP API while Redis is killed and restarted;
/// the subscriber on node 1 recovers when told to. Returns the report, whether the subscriber
/// recovered across the restart, and how many publishes failed.
async fn restart_under_load(mut redis: ThrowawayRedis, durable: bool) -> (Report, Option<bool>, usize) {
    let nodes =
        TestServer::spawn_nodes(&redis.url(), 2, |config| config.engine.redis_trust_restarts = durable).await;
    let nodes = Arc::new(nodes);
    let token = nodes[1].all_rights("sub").await;
    let checker = Arc::new(HistoryChecker::new());
    let (mut ws, mut position, _) = subscribe(&nodes[1], &token, &checker, None).await;

    // Publishes until 50 have been acknowledged after Redis came back.
    let back = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (checker, nodes, back) = (checker.clone(), nodes.clone(), back.clone());
        tokio::spawn(async move {
            let (mut failed, mut last, mut after_restart) = (0usize, None, 0);
            for n in 0.. {
                let id = format!("m{n}");
                checker.attempted(&id);
                let (status, reply) = nodes[0]
                    .post(&format!("/v1/channels/{CHANNEL}/messages"), &json!({"data": {"id": id}}), None)
                    .await;
                if status == 200 {
                    let at = (reply["epoch"].as_str().unwrap().to_owned(), reply["offset"].as_u64().unwrap());
                    checker.acknowledged(CHANNEL, &id, &at.0, at.1);
                    last = Some(at);
                    if back.load(std::sync::atomic::Ordering::Relaxed) {
                        after_restart += 1;
                        if after_restart == 50 {
                            break;
                        }
                    }
                } else {
                    assert_eq!(status, 503, "a publish without Redis fails as unavailable: {reply}");
                    failed += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (failed, last)
        })
    };
    for _ in 0..60 {
        position = record(&checker, &ws.next_of("message").await.unwrap());
    }
    redis.kill();
    // Long enough for publishes to fail rather than wait for the reconnection.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.restart();
    back.store(true, std::sync::atomic::Ordering::Relaxed);
    // The node's subscribers are closed with 3001 once its Redis subscription is back.
    loop {
        match ws.next().await {
            Ok(frame) if frame["type"] == "message" => position = record(&checker, &frame),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let (mut ws, _, recovered) = subscribe(&nodes[0], &token, &checker, Some(&position)).await;
    let (failed, last) = publisher.await.unwrap();
    let last = last.expect("publishes succeeded after the restart");
    loop {
        let at = record(&checker, &ws.next_of("message").await.unwrap());
        if at == last {
            break;
        }
    }
    (checker.report(), recovered, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_redis_restarted_under_load_loses_no_acknowledged_message() {
    let (report, recovered, failed) = restart_under_load(ThrowawayRedis::start_durable(), true).await;
    println!("redis restart, AOF always: {report}, publishes refused while down {failed}");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.announced_losses, 0, "nothing acknowledged was lost: {report}");
    assert_eq!(recovered, Some(true), "the epoch survived the restart");
    assert!(failed > 0, "publishes failed while Redis was down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_persistence_restarted_under_load_shows_every_loss_as_a_new_epoch() {
    let (report, recovered, failed) = restart_under_load(ThrowawayRedis::start(), false).await;
    println!("redis restart, no persistence: {report}, publishes refused while down {failed}");
    // The loss is expected here, and must be announced: nothing lost silently.
    assert!(report.is_clean_but_announced(), "no silent gap, no reused offset: {report:?}");
    assert_eq!(recovered, Some(false), "history was lost: the client is told");
    assert_eq!(report.unrecovered, 1, "told once, at the reconnect: {report}");
    assert!(failed > 0, "publishes failed while Redis was down");
}
