use std::time::Duration;

use serde_json::{Value, json};
use tributary::config::TributaryConfig;
use tributary_testkit::{TestServer, use_memory, use_redis};

fn offsets(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn a_reconnecting_client_gets_exactly_what_it_missed_then_the_live_stream() {
    let server = TestServer::spawn().await;
    let token = server.all_rights("r").await;
    let mut c = server.ws(&token).await;
    c.request(json!({"op": "subscribe", "channel": "chat:r"})).await.unwrap();
    for n in 1..=3 {
        server.publish("chat:r", json!(n)).await;
    }
    let seen = c.messages(3).await.unwrap();
    let (epoch, last) = (seen[2]["epoch"].clone(), seen[2]["offset"].clone());
    drop(c);
    for n in 4..=6 {
        server.publish("chat:r", json!(n)).await;
    }
    let mut c = server.ws(&token).await;
    let reply = c
        .request(json!({"op": "subscribe", "channel": "chat:r", "recover": {"epoch": epoch, "offset": last}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    assert_eq!(reply["result"]["replayed"], 3);
    server.publish("chat:r", json!(7)).await;
    let got = c.messages(4).await.unwrap();
    assert_eq!(offsets(&got), vec![4, 5, 6, 7]);
    assert_eq!(got[0]["data"], 4);
}

/// Reconnects twenty times while a publisher runs, each time recovering from the last message
/// seen; every subscribe is held in the engine for 5 ms (the seam between joining the channel and
/// going live), so publications land in the seam on every reconnect, on a multi-thread runtime.
async fn recovery_at_the_seam_under_concurrent_publishing(configure: fn(&mut TributaryConfig)) {
    let (server, gate) = TestServer::spawn_with_seam(|config| {
        configure(config);
        // The publisher may run far ahead of a reader that reconnects this often: history and
        // recovery hold all of it.
        config.relay.max_recover = 10_000;
        for namespace in config.relay.namespaces.values_mut() {
            namespace.history_size = 10_000;
        }
    })
    .await;
    gate.delay_all(Duration::from_millis(5));
    let token = server.all_rights("seam").await;
    let total = 400u64;
    let publisher = {
        let http = server.http().clone();
        let url = format!("{}/v1/channels/chat:seam/messages", server.http_url());
        let key = server.api_key().to_owned();
        tokio::spawn(async move {
            for n in 1..=total {
                let response =
                    http.post(&url).bearer_auth(&key).json(&json!({"data": n})).send().await.unwrap();
                assert_eq!(response.status(), 200);
            }
        })
    };
    let mut c = server.ws(&token).await;
    let reply = c.request(json!({"op": "subscribe", "channel": "chat:seam", "rewind": 1000})).await.unwrap();
    let mut seen: Vec<u64> = Vec::new();
    let mut epoch = reply["result"]["epoch"].clone();
    for _ in 0..20 {
        for m in c.messages(10).await.unwrap() {
            epoch = m["epoch"].clone();
            seen.push(m["offset"].as_u64().unwrap());
        }
        drop(c);
        c = server.ws(&token).await;
        let last = *seen.last().unwrap();
        let reply = c
            .request(json!({"op": "subscribe", "channel": "chat:seam", "recover": {"epoch": epoch, "offset": last}}))
            .await
            .unwrap();
        assert_eq!(reply["result"]["recovered"], true, "{reply}");
    }
    publisher.await.unwrap();
    while seen.last() != Some(&total) {
        seen.push(c.next_of("message").await.unwrap()["offset"].as_u64().unwrap());
    }
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    // Nothing after the last one either: the next message is the next publish.
    server.publish("chat:seam", json!("after")).await;
    assert_eq!(c.next_of("message").await.unwrap()["offset"], total + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_at_the_seam_under_concurrent_publishing_has_no_gap_and_no_duplicate_memory() {
    recovery_at_the_seam_under_concurrent_publishing(use_memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_at_the_seam_under_concurrent_publishing_has_no_gap_and_no_duplicate_redis() {
    recovery_at_the_seam_under_concurrent_publishing(use_redis).await;
}

#[tokio::test]
async fn a_position_outside_the_window_or_from_another_epoch_is_not_recovered() {
    let server = TestServer::spawn_with(|relay| {
        relay.namespaces.insert(
            "small".into(),
            tributary_relay::NamespaceConfig { history_size: 2, ..Default::default() },
        );
    })
    .await;
    let token = server.all_rights("w").await;
    let mut epoch = Value::Null;
    for n in 1..=5 {
        epoch = server.publish("small:c", json!(n)).await["epoch"].clone();
    }
    let mut c = server.ws(&token).await;
    let reply = c
        .request(json!({"op": "subscribe", "channel": "small:c", "recover": {"epoch": epoch, "offset": 1}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], false, "offsets 2 and 3 were trimmed: {reply}");
    assert_eq!(reply["result"]["replayed"], 0);
    let mut d = server.ws(&token).await;
    let reply = d
        .request(json!({"op": "subscribe", "channel": "small:c", "recover": {"epoch": "gone", "offset": 4}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], false, "{reply}");
    let mut e = server.ws(&token).await;
    let reply = e
        .request(json!({"op": "subscribe", "channel": "small:c", "recover": {"epoch": epoch, "offset": 3}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    server.publish("small:c", json!(6)).await;
    assert_eq!(offsets(&e.messages(3).await.unwrap()), vec![4, 5, 6]);
}

#[tokio::test]
async fn rewind_delivers_the_last_messages_in_order() {
    let server = TestServer::spawn().await;
    for n in 1..=5 {
        server.publish("chat:rw", json!(n)).await;
    }
    let mut c = server.ws(&server.all_rights("rw").await).await;
    let reply = c.request(json!({"op": "subscribe", "channel": "chat:rw", "rewind": 2})).await.unwrap();
    assert_eq!(reply["result"]["replayed"], 2);
    // The two replayed, then the next one published: nothing twice, nothing older.
    server.publish("chat:rw", json!(6)).await;
    assert_eq!(offsets(&c.messages(3).await.unwrap()), vec![4, 5, 6]);
}

#[tokio::test]
async fn a_retried_publish_with_an_idempotency_key_is_stored_and_delivered_once() {
    let server = TestServer::spawn().await;
    let mut c = server.ws(&server.all_rights("i").await).await;
    c.request(json!({"op": "subscribe", "channel": "chat:i"})).await.unwrap();
    let path = "/v1/channels/chat:i/messages";
    let (s1, first) = server.post(path, &json!({"data": "pay"}), Some("order-1")).await;
    let (s2, retry) = server.post(path, &json!({"data": "pay"}), Some("order-1")).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first["offset"], retry["offset"]);
    assert_eq!(retry["duplicate"], true);
    // The same key from a client frame on the same channel is the same message too.
    let reply = c
        .request(json!({"op": "publish", "channel": "chat:i", "data": "x", "idempotency_key": "order-1"}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["duplicate"], true, "{reply}");
    server.publish("chat:i", json!("next")).await;
    let got = c.messages(2).await.unwrap();
    assert_eq!(offsets(&got), vec![1, 2]);
    let (_, history) = server.get("/v1/channels/chat:i/history").await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
}

/// Asserts `got` is exactly the offsets `from..=to`, in order.
fn assert_consecutive(got: &[Value], from: u64, to: u64) {
    let offsets = offsets(got);
    assert_eq!(
        offsets.len() as u64,
        to - from + 1,
        "count: first {:?}, last {:?}",
        offsets.first(),
        offsets.last()
    );
    for (expected, offset) in (from..=to).zip(&offsets) {
        assert_eq!(*offset, expected, "gap or duplicate");
    }
}

#[tokio::test]
async fn a_recovery_longer_than_the_queue_is_streamed_then_goes_live_without_gap_or_duplicate() {
    let server = TestServer::spawn_with(|relay| {
        relay.outbound_queue_len = 40;
        relay.max_recover = 150;
        relay.namespaces.insert(
            "long".into(),
            tributary_relay::NamespaceConfig { history_size: 1000, ..Default::default() },
        );
    })
    .await;
    let mut epoch = Value::Null;
    for n in 1..=200 {
        epoch = server.publish("long:a", json!(n)).await["epoch"].clone();
    }
    let token = server.all_rights("q").await;
    let mut far = server.ws(&token).await;
    let reply = far
        .request(json!({"op": "subscribe", "channel": "long:a", "recover": {"epoch": epoch, "offset": 10}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], false, "190 missed is more than max_recover 150: {reply}");
    assert_eq!(reply["result"]["replayed"], 0);
    // Publishing goes on while the client recovers and catches up through a queue of 40.
    let publisher = {
        let (url, key) = (server.http_url(), server.api_key().to_owned());
        let http = server.http().clone();
        tokio::spawn(async move {
            for n in 201..=300 {
                let response = http
                    .post(format!("{url}/v1/channels/long:a/messages"))
                    .bearer_auth(&key)
                    .json(&json!({ "data": n }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        })
    };
    let mut near = server.ws(&token).await;
    let reply = near
        .request(json!({"op": "subscribe", "channel": "long:a", "recover": {"epoch": epoch, "offset": 60}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    assert!(reply["result"]["replayed"].as_u64().unwrap() >= 140, "{reply}");
    let got = near.messages(240).await.unwrap();
    publisher.await.unwrap();
    assert_consecutive(&got, 61, 300);
    assert!(near.no_message_within(std::time::Duration::from_millis(200)).await, "nothing after the last");
    // The stream is live again: a new message arrives once.
    server.publish("long:a", json!("live")).await;
    let live = near.messages(1).await.unwrap();
    assert_eq!(offsets(&live), vec![301]);
}

#[tokio::test]
async fn a_recovery_larger_than_the_queue_in_bytes_is_streamed() {
    let server = TestServer::spawn_with(|relay| relay.max_queued_bytes = 4 * relay.max_frame_bytes).await;
    let big = "x".repeat(30_000);
    let mut epoch = Value::Null;
    for _ in 0..30 {
        epoch = server.publish("chat:heavy", json!(big)).await["epoch"].clone();
    }
    let token = server.all_rights("b").await;
    let mut c = server.ws(&token).await;
    let reply = c
        .request(
            json!({"op": "subscribe", "channel": "chat:heavy", "recover": {"epoch": epoch, "offset": 0}}),
        )
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], true, "900 KB through a 256 KiB queue: {reply}");
    assert_consecutive(&c.messages(30).await.unwrap(), 1, 30);
}

#[tokio::test]
async fn a_client_that_falls_out_of_history_while_catching_up_is_closed_and_then_told_the_truth() {
    let server = TestServer::spawn_with(|relay| {
        relay.max_queued_bytes = 4 * relay.max_frame_bytes;
        relay.namespaces.insert(
            "big".into(),
            tributary_relay::NamespaceConfig { history_size: 400, ..Default::default() },
        );
    })
    .await;
    let payload = "y".repeat(30_000);
    let mut epoch = Value::Null;
    for _ in 0..400 {
        epoch = server.publish("big:a", json!(payload)).await["epoch"].clone();
    }
    let token = server.all_rights("lagging").await;
    let mut c = server.ws(&token).await;
    let reply = c
        .request(json!({"op": "subscribe", "channel": "big:a", "recover": {"epoch": epoch, "offset": 0}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    // The client reads nothing while 400 more messages push its position out of history: the
    // kernel's socket buffers hold a few megabytes of the 12 MB it missed, not all of it.
    for _ in 0..400 {
        server.publish("big:a", json!(payload)).await;
    }
    let mut got = Vec::new();
    let code = loop {
        match c.next().await {
            Ok(frame) if frame["type"] == "message" => got.push(frame),
            Ok(_) => continue,
            Err(err) => break err.to_string(),
        }
    };
    assert!(code.contains("3001"), "closed as a slow consumer: {code}");
    assert!(!got.is_empty() && got.len() < 400, "part of the recovery arrived: {}", got.len());
    let last = got.len() as u64;
    assert_consecutive(&got, 1, last);
    let mut again = server.ws(&token).await;
    let reply = again
        .request(json!({"op": "subscribe", "channel": "big:a", "recover": {"epoch": epoch, "offset": last}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], false, "the gap is reported, never skipped: {reply}");
}
