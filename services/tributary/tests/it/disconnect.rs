//! `POST /v1/clients/{client_id}/disconnect`: a backend closes every connection of one of its
//! clients, on every node, through the engine's control channel.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tributary_testkit::TestServer;

#[tokio::test]
async fn a_disconnected_client_loses_every_connection_and_no_one_else_does() {
    let server = TestServer::spawn().await;
    let alice = server.all_rights("alice").await;
    let bob = server.all_rights("bob").await;
    let (mut alice_1, mut alice_2, mut bob_ws) =
        (server.ws(&alice).await, server.ws(&alice).await, server.ws(&bob).await);
    bob_ws.request(json!({"op": "subscribe", "channel": "chat:kick"})).await.unwrap();

    let (status, body) = server.post("/v1/clients/alice/disconnect", &json!({}), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"client_id": "alice"}));
    for ws in [&mut alice_1, &mut alice_2] {
        let (code, _) = ws.closed().await.unwrap();
        assert_eq!(code, 3504, "cut off: do not reconnect");
    }
    server.publish("chat:kick", json!("still here")).await;
    assert_eq!(bob_ws.messages(1).await.unwrap()[0]["data"], "still here", "bob kept his connection");

    // With `reconnect`, the client is told it may come back.
    let mut again = server.ws(&alice).await;
    let (status, _) = server.post("/v1/clients/alice/disconnect", &json!({"reconnect": true}), None).await;
    assert_eq!(status, 200);
    assert_eq!(again.closed().await.unwrap().0, 3007);
}

#[tokio::test]
async fn bad_disconnect_requests_are_refused_and_harm_no_one() {
    let server = TestServer::spawn().await;
    let alice = server.all_rights("alice").await;
    let mut alice_ws = server.ws(&alice).await;
    alice_ws.request(json!({"op": "subscribe", "channel": "chat:safe"})).await.unwrap();

    let (status, body) = server.post("/v1/clients/a%01b/disconnect", &json!({}), None).await;
    assert_eq!((status, body["error"]["name"].as_str()), (400, Some("invalid_parameter")), "{body}");
    let (status, body) =
        server.post("/v1/clients/alice/disconnect", &json!({"reconnect": "yes"}), None).await;
    assert_eq!(status, 400, "{body}");
    let unauthenticated = server
        .http()
        .post(format!("{}/v1/clients/alice/disconnect", server.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    // Another app's key disconnects its own client named alice, not this app's.
    let other = server.create_app("other").await;
    let response = server
        .http()
        .post(format!("{}/v1/clients/alice/disconnect", server.http_url()))
        .bearer_auth(&other.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    server.publish("chat:safe", json!(1)).await;
    assert_eq!(alice_ws.messages(1).await.unwrap()[0]["data"], 1, "alice is still connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_disconnected_on_every_node_within_a_second() {
    let nodes = TestServer::spawn_cluster(3, |_| {}).await;
    let token = nodes[0].all_rights("roamer").await;
    let mut sockets = Vec::new();
    for node in &nodes[1..] {
        for _ in 0..5 {
            sockets.push(node.ws(&token).await);
        }
    }
    let started = Instant::now();
    let (status, body) = nodes[0].post("/v1/clients/roamer/disconnect", &json!({}), None).await;
    assert_eq!(status, 200, "{body}");
    let mut last = Duration::ZERO;
    for ws in &mut sockets {
        assert_eq!(ws.closed().await.unwrap().0, 3504);
        last = last.max(started.elapsed());
    }
    println!("disconnect across 2 other nodes: 10 connections closed, the last after {last:?}");
    assert!(last < Duration::from_secs(1), "closed everywhere within a second: {last:?}");
}
