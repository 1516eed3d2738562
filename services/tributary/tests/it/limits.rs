use std::time::Duration;

use serde_json::json;
use tributary_protocol::CloseCode;
use tributary_testkit::{TestServer, WsClient};

#[tokio::test]
async fn a_slow_consumer_is_disconnected_with_reconnect_and_recover() {
    let server = TestServer::spawn_with(|relay| {
        relay.outbound_queue_len = 8;
        relay.max_recover = 4;
    })
    .await;
    let mut slow = server.ws(&server.all_rights("slow").await).await;
    slow.request(json!({"op": "subscribe", "channel": "firehose"})).await.unwrap();
    let payload = "x".repeat(30_000);
    // The slow client reads nothing while several megabytes are published.
    for _ in 0..300 {
        server.publish("firehose", json!(payload)).await;
    }
    let (code, reason) = slow.closed().await.unwrap();
    assert_eq!(code, 3001, "{reason}");
    let mut fresh = server.ws(&server.all_rights("fresh").await).await;
    fresh.request(json!({"op": "subscribe", "channel": "firehose"})).await.unwrap();
    server.publish("firehose", json!("after")).await;
    assert_eq!(fresh.next_of("message").await.unwrap()["data"], "after", "the node keeps serving");
}

#[tokio::test]
async fn the_connection_limit_per_app_is_enforced() {
    let server = TestServer::spawn_with(|relay| relay.max_connections_per_app = 2).await;
    let token = server.all_rights("many").await;
    let _a = server.ws(&token).await;
    let _b = server.ws(&token).await;
    let (mut c, reply) = WsClient::connect(&server.ws_url(), &token).await.unwrap();
    assert_eq!(reply["error"]["name"], "connection_limit");
    assert_eq!(c.closed().await.unwrap().0, 3003);
    drop(_a);
    tributary_testkit::eventually("a slot frees up", std::time::Duration::from_secs(5), || async {
        WsClient::connect(&server.ws_url(), &token)
            .await
            .map(|(_, r)| r.get("result").is_some())
            .unwrap_or(false)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn publish_rate_subscription_count_and_client_publish_are_limited() {
    let server = TestServer::spawn_with(|relay| {
        relay.publish_rate_per_second = 1;
        relay.publish_burst = 2;
        relay.max_subscriptions_per_connection = 2;
        relay.namespaces.insert(
            "feed".into(),
            tributary_relay::NamespaceConfig { client_publish: false, ..Default::default() },
        );
    })
    .await;
    let mut c = server.ws(&server.all_rights("lim").await).await;
    let mut names = Vec::new();
    for _ in 0..3 {
        let r = c.request(json!({"op": "publish", "channel": "chat:r", "data": 1})).await.unwrap();
        names.push(r["error"]["name"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(names, vec!["ok", "ok", "rate_limited"]);
    c.request(json!({"op": "subscribe", "channel": "a"})).await.unwrap();
    c.request(json!({"op": "subscribe", "channel": "b"})).await.unwrap();
    let third = c.request(json!({"op": "subscribe", "channel": "c"})).await.unwrap();
    assert_eq!(third["error"]["name"], "too_many_subscriptions");
    let dup = c.request(json!({"op": "subscribe", "channel": "a"})).await.unwrap();
    assert_eq!(dup["error"]["name"], "already_subscribed");
    let feed = c.request(json!({"op": "publish", "channel": "feed:x", "data": 1})).await.unwrap();
    assert_eq!(feed["error"]["name"], "disabled_in_namespace");
}

#[tokio::test]
async fn shutdown_closes_connections_with_a_reconnect_code() {
    let server = TestServer::spawn().await;
    let mut c = server.ws(&server.all_rights("bye").await).await;
    server.stop().await;
    assert_eq!(c.closed().await.unwrap().0, 3000);
}

#[tokio::test]
async fn a_connection_that_queues_too_many_bytes_is_closed_even_with_room_for_more_frames() {
    let server = TestServer::spawn_with(|relay| {
        relay.outbound_queue_len = 100_000;
        relay.max_queued_bytes = 4 * relay.max_frame_bytes;
    })
    .await;
    let mut slow = server.ws(&server.all_rights("slow").await).await;
    slow.request(json!({"op": "subscribe", "channel": "big"})).await.unwrap();
    let payload = "x".repeat(30_000);
    for _ in 0..300 {
        server.publish("big", json!(payload)).await;
    }
    let (code, reason) = slow.closed().await.unwrap();
    assert_eq!(code, 3001, "{reason}");
}

#[tokio::test]
async fn requests_other_than_publish_and_ping_are_rate_limited() {
    let server = TestServer::spawn_with(|relay| {
        relay.request_rate_per_second = 1;
        relay.request_burst = 3;
    })
    .await;
    let mut c = server.ws(&server.all_rights("busy").await).await;
    let mut names = Vec::new();
    for n in 0..4 {
        let r = c.request(json!({"op": "subscribe", "channel": format!("c{n}")})).await.unwrap();
        names.push(r["error"]["name"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(names, vec!["ok", "ok", "ok", "rate_limited"]);
    assert!(
        c.request(json!({"op": "ping"})).await.unwrap().get("result").is_some(),
        "pings are never limited"
    );
}

/// A client that stops reading is closed as a slow consumer (3001) once its writes have stalled
/// for `write_stall_timeout_ms`, although its queue has room; the idle timeout (3002) is far
/// off, and the server's own record says which close it was (the client, whose socket buffers
/// are full, may never read the close frame).
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_3001_even_when_its_queue_has_room() {
    let server = TestServer::spawn_with(|relay| {
        relay.outbound_queue_len = 100_000;
        relay.max_queued_bytes = 1 << 30;
        relay.idle_timeout_ms = 120_000;
        relay.write_stall_timeout_ms = 500;
    })
    .await;
    let mut stuck = server.ws(&server.all_rights("stuck").await).await;
    stuck.request(json!({"op": "subscribe", "channel": "flood"})).await.unwrap();
    let payload = "x".repeat(30_000);
    let start = tokio::time::Instant::now();
    for _ in 0..400 {
        server.publish("flood", json!(payload)).await;
    }
    let connections = &server.relay().connections;
    tributary_testkit::eventually(
        "the stuck connection is closed as a slow consumer",
        Duration::from_secs(10),
        || async { connections.closed_with(CloseCode::SlowConsumer) == 1 },
    )
    .await
    .unwrap();
    assert!(start.elapsed() < Duration::from_secs(10), "long before the idle timeout");
    assert_eq!(connections.closed_with(CloseCode::IdleTimeout), 0);
    let (_, occupancy) = server.get("/v1/channels/flood/occupancy").await;
    assert_eq!(occupancy["connections"], 0, "and let go of: {occupancy}");
    drop(stuck);
}

/// A connection that sends nothing, not even a pong, is closed with 3002 after the idle timeout;
/// one that answers the server's pings stays.
#[tokio::test]
async fn an_idle_connection_is_closed_with_3002_and_a_talking_one_stays() {
    let server = TestServer::spawn_with(|relay| {
        relay.ping_interval_ms = 100;
        relay.idle_timeout_ms = 400;
    })
    .await;
    // The test client answers pings only while it reads: this one does not read.
    let mut silent = server.ws(&server.all_rights("silent").await).await;
    let mut talking = server.ws(&server.all_rights("talking").await).await;
    let start = tokio::time::Instant::now();
    let connections = &server.relay().connections;
    let deadline = start + Duration::from_secs(3);
    // The talking client reads (and so answers pings) until the silent one is closed.
    while connections.closed_with(CloseCode::IdleTimeout) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the silent connection was never closed");
        assert!(talking.quiet_for(Duration::from_millis(50)).await, "nothing to read but pings");
    }
    assert!(start.elapsed() >= Duration::from_millis(400), "closed before the idle timeout");
    assert_eq!(silent.closed().await.unwrap().0, 3002);
    assert!(talking.request(json!({"op": "ping"})).await.unwrap().get("result").is_some(), "it stays");
    assert_eq!(connections.closed_with(CloseCode::IdleTimeout), 1);
}

/// Live publications buffered while a subscription reads history are bounded like its queue: a
/// subscriber whose buffer overflows during recovery is closed with 3001 (and recovers on
/// reconnect), instead of the node holding an unbounded buffer.
#[tokio::test]
async fn a_recovery_buffer_that_overflows_closes_the_subscriber_with_3001() {
    let (server, gate) = TestServer::spawn_with_seam(|config| config.relay.outbound_queue_len = 16).await;
    let token = server.all_rights("buffered").await;
    let first = server.publish("flood:r", json!(0)).await;
    let mut c = server.ws(&token).await;
    gate.arm("flood:r");
    let recover = json!({"epoch": first["epoch"], "offset": 1});
    c.send(json!({"id": 1, "op": "subscribe", "channel": "flood:r", "recover": recover})).await.unwrap();
    gate.entered(Duration::from_secs(5)).await.unwrap();
    // Forty live publications arrive while the subscription is held before going live.
    for n in 1..=40 {
        server.publish("flood:r", json!(n)).await;
    }
    gate.release();
    let connections = &server.relay().connections;
    tributary_testkit::eventually("closed as a slow consumer", Duration::from_secs(5), || async {
        connections.closed_with(CloseCode::SlowConsumer) == 1
    })
    .await
    .unwrap();
    // It recovers everything from where it was, on a new connection.
    let mut again = server.ws(&token).await;
    let reply = again
        .request(json!({"op": "subscribe", "channel": "flood:r", "recover": {"epoch": first["epoch"], "offset": 1}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let offsets: Vec<u64> =
        again.messages(40).await.unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (2..=41).collect::<Vec<_>>());
}

/// The long-poll wait is capped by `long_poll_max_wait_ms`, whatever the client asks for.
#[tokio::test]
async fn a_long_poll_waits_at_most_the_configured_cap() {
    let server = TestServer::spawn_with(|relay| relay.long_poll_max_wait_ms = 500).await;
    let token = server.token("poller", &[("chat:*", &["subscribe"])]).await;
    let (_, first) = server.poll("chat:quiet", &token, None, 100).await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let start = tokio::time::Instant::now();
    let (status, reply) = server.poll("chat:quiet", &token, Some(&cursor), 60_000).await;
    let waited = start.elapsed();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["messages"].as_array().map(Vec::len), Some(0), "{reply}");
    assert!(waited >= Duration::from_millis(450), "answered before the cap: {waited:?}");
    assert!(waited < Duration::from_millis(3_000), "waited past the 500 ms cap: {waited:?}");
}
