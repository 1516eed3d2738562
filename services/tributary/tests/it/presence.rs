use std::time::Duration;

use serde_json::json;
use tributary_testkit::{TestServer, WsClient};

/// Returns the next presence event of `kind` about `client_id`, skipping others (such as the
/// watcher's own join).
async fn next_event_of(client: &mut WsClient, kind: &str, client_id: &str) -> serde_json::Value {
    loop {
        let event = client.next_of(kind).await.unwrap();
        if event["member"]["client_id"] == client_id {
            return event;
        }
    }
}

#[tokio::test]
async fn join_leave_and_state_updates_are_seen_and_one_client_is_one_member() {
    let server = TestServer::spawn().await;
    let mut watcher = server.ws(&server.all_rights("watcher").await).await;
    watcher.request(json!({"op": "subscribe", "channel": "room:1"})).await.unwrap();
    let device = server.all_rights("sensor-7").await;
    let mut first = server.ws(&device).await;
    first.request(json!({"op": "subscribe", "channel": "room:1", "state": {"temp": 20.5}})).await.unwrap();
    let join = next_event_of(&mut watcher, "join", "sensor-7").await;
    assert_eq!(join["member"]["state"], json!({"temp": 20.5}));
    let mut second = server.ws(&device).await;
    second.request(json!({"op": "subscribe", "channel": "room:1"})).await.unwrap();
    let reply = first
        .request(json!({"op": "presence_update", "channel": "room:1", "state": {"temp": 22.0}}))
        .await
        .unwrap();
    assert!(reply.get("result").is_some(), "{reply}");
    let update = watcher.next_of("presence").await.unwrap();
    assert_eq!(update["member"]["state"], json!({"temp": 22.0}));
    let presence = watcher.request(json!({"op": "presence", "channel": "room:1"})).await.unwrap();
    assert_eq!(presence["result"]["occupancy"], json!({"members": 2, "connections": 3}), "{presence}");
    drop(first);
    second.request(json!({"op": "unsubscribe", "channel": "room:1"})).await.unwrap();
    next_event_of(&mut watcher, "leave", "sensor-7").await;
    let (status, occupancy) = server.get("/v1/channels/room:1/occupancy").await;
    assert_eq!((status, occupancy), (200, json!({"members": 1, "connections": 1})));
}

#[tokio::test]
async fn a_member_whose_connection_goes_silent_leaves_after_the_timeout() {
    let server = TestServer::spawn_with(|relay| {
        relay.ping_interval_ms = 100;
        relay.idle_timeout_ms = 400;
        relay.presence_timeout_ms = 600;
    })
    .await;
    let mut watcher = server.ws(&server.all_rights("watcher").await).await;
    watcher.request(json!({"op": "subscribe", "channel": "room:2"})).await.unwrap();
    // A socket that subscribes and then never reads or answers pings again; it stays open (the
    // test holds it to the end), so only the server's timeout can make it leave.
    let mut ghost = server.ws(&server.all_rights("ghost").await).await;
    ghost.request(json!({"op": "subscribe", "channel": "room:2"})).await.unwrap();
    let silent_since = tokio::time::Instant::now();
    next_event_of(&mut watcher, "join", "ghost").await;
    // The watcher reads (its client answers the pings while it does), so it stays.
    let leave = next_event_of(&mut watcher, "leave", "ghost").await;
    let after = silent_since.elapsed();
    assert_eq!(leave["member"]["client_id"], "ghost");
    assert!(after >= Duration::from_millis(400), "left before the idle timeout: {after:?}");
    assert!(after < Duration::from_millis(1_400), "left long after the idle timeout: {after:?}");
    assert_eq!(server.relay().connections.closed_with(tributary_protocol::CloseCode::IdleTimeout), 1);
    drop(ghost);
}

#[tokio::test]
async fn presence_needs_the_right_and_a_namespace_that_tracks_it() {
    let server = TestServer::spawn_with(|relay| {
        relay.namespaces.insert(
            "quiet".into(),
            tributary_relay::NamespaceConfig { presence: false, ..Default::default() },
        );
    })
    .await;
    let mut c = server.ws(&server.token("c", &[("*", &["subscribe"])]).await).await;
    let reply = c.request(json!({"op": "presence", "channel": "room:3"})).await.unwrap();
    assert_eq!(reply["error"]["name"], "forbidden");
    let mut d = server.ws(&server.all_rights("d").await).await;
    let reply = d.request(json!({"op": "presence", "channel": "quiet:1"})).await.unwrap();
    assert_eq!(reply["error"]["name"], "disabled_in_namespace");
}
