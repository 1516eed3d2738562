//! The history checker over real sockets: publishers and subscribers that keep dropping and
//! recovering, with everything recorded and checked for lost, duplicated, reordered, phantom and
//! silently skipped messages and reused offsets.

use std::sync::Arc;

use serde_json::{Value, json};
use tributary_testkit::{HistoryChecker, TestServer};

const CHANNEL: &str = "chat:checked";

/// Records a message frame in the checker; returns its offset.
fn record(checker: &HistoryChecker, subscriber: &str, frame: &Value) -> u64 {
    let offset = frame["offset"].as_u64().unwrap();
    let id = frame["data"]["id"].as_str().unwrap_or("?");
    checker.delivered(subscriber, CHANNEL, frame["epoch"].as_str().unwrap(), offset, id);
    offset
}

#[tokio::test]
async fn reconnecting_subscribers_under_concurrent_publishers_lose_and_repeat_nothing() {
    let server = Arc::new(
        TestServer::spawn_with(|relay| {
            relay.outbound_queue_len = 64;
            relay.namespaces.insert(
                "chat".into(),
                tributary_relay::NamespaceConfig { history_size: 10_000, ..Default::default() },
            );
        })
        .await,
    );
    let checker = Arc::new(HistoryChecker::new());
    let (publishers, per_publisher) = (3, 150);
    let mut publishing = Vec::new();
    for p in 0..publishers {
        let (server, checker) = (server.clone(), checker.clone());
        publishing.push(tokio::spawn(async move {
            for n in 0..per_publisher {
                let id = format!("p{p}-{n}");
                checker.attempted(&id);
                let (status, reply) = server
                    .post(&format!("/v1/channels/{CHANNEL}/messages"), &json!({"data": {"id": id}}), None)
                    .await;
                if status == 200 {
                    checker.acknowledged(
                        CHANNEL,
                        &id,
                        reply["epoch"].as_str().unwrap(),
                        reply["offset"].as_u64().unwrap(),
                    );
                }
            }
        }));
    }
    let mut subscribing = Vec::new();
    for s in 0..4 {
        let (server, checker) = (server.clone(), checker.clone());
        subscribing.push(tokio::spawn(async move {
            let name = format!("s{s}");
            let token = server.all_rights(&name).await;
            let mut position: Option<(String, u64)> = None;
            // Each subscriber drops its connection every few messages and recovers.
            for round in 0..6 {
                let mut ws = server.ws(&token).await;
                let mut request = json!({"op": "subscribe", "channel": CHANNEL});
                if let Some((epoch, offset)) = &position {
                    request["recover"] = json!({"epoch": epoch, "offset": offset});
                }
                let reply = ws.request(request).await.unwrap();
                let result = &reply["result"];
                if position.is_some() {
                    assert_eq!(result["recovered"], true, "{name} round {round}: {reply}");
                }
                let (epoch, start) = match &position {
                    Some((epoch, offset)) if result["recovered"] == true => (epoch.clone(), *offset),
                    _ => (result["epoch"].as_str().unwrap().to_owned(), result["offset"].as_u64().unwrap()),
                };
                checker.started(&name, CHANNEL, &epoch, start, result["recovered"].as_bool());
                let mut last = start;
                for _ in 0..(5 + 7 * s + round) {
                    let frame = ws.next_of("message").await.unwrap();
                    last = record(&checker, &name, &frame);
                }
                position = Some((epoch, last));
            }
            // The last connection stays until it has everything.
            let mut ws = server.ws(&token).await;
            let (epoch, offset) = position.unwrap();
            let reply = ws
                .request(json!({"op": "subscribe", "channel": CHANNEL, "recover": {"epoch": epoch, "offset": offset}}))
                .await
                .unwrap();
            assert_eq!(reply["result"]["recovered"], true, "{name}: {reply}");
            checker.started(&name, CHANNEL, &epoch, offset, reply["result"]["recovered"].as_bool());
            (name, ws)
        }));
    }
    for task in publishing {
        task.await.unwrap();
    }
    let total = (publishers * per_publisher) as u64;
    for task in subscribing {
        let (name, mut ws) = task.await.unwrap();
        loop {
            let frame = ws.next_of("message").await.unwrap();
            if record(&checker, &name, &frame) >= total {
                break;
            }
        }
    }
    let report = checker.report();
    println!("checked history: {report}");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.acknowledged as u64, total);
}
