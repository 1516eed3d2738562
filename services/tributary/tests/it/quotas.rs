//! Plan limits on the message path: message size, publish rate and connections over every
//! node (counted through the engine), and the monthly quota with and without overage.

use std::time::Duration;

use serde_json::{Value, json};
use tributary_testkit::{TestServer, WsClient, eventually};

/// Sets the development tenant's overrides as the operator.
async fn limit(node: &TestServer, overrides: Value) {
    let path = format!("/v1/tenants/{}/limits", node.tenant_id());
    let (status, reply) = node.manage("POST", &path, node.operator_token(), Some(&overrides)).await;
    assert_eq!(status, 200, "{reply}");
}

/// Publishes through the HTTP API; returns the status and the error name (if any).
async fn publish(node: &TestServer, data: Value) -> (u16, String) {
    let (status, reply) = node.post("/v1/channels/quota/messages", &json!({"data": data}), None).await;
    (status, reply["error"]["name"].as_str().unwrap_or_default().to_owned())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Waits for the start of a new second, so a test's publishes share one rate window.
async fn start_of_a_second() {
    tokio::time::sleep(Duration::from_millis(1000 - unix_ms() % 1000 + 20)).await;
}

#[tokio::test]
async fn limits_apply_within_a_second_of_being_set_and_say_which_limit_it_is() {
    let server = TestServer::spawn().await;
    limit(&server, json!({"max_message_bytes": 16})).await;
    eventually("the size limit applies", Duration::from_secs(1), || async {
        publish(&server, json!("x".repeat(40))).await == (413, "message_too_large".to_owned())
    })
    .await
    .unwrap();
    assert_eq!(publish(&server, json!("short")).await.0, 200);

    // The monthly quota: 3 messages, then stop; with overage, go on. (The default plan,
    // `unlimited`, allows overage: this tenant's override says it does not.)
    // In force on this node once the request is answered (read-your-writes): no waiting.
    limit(&server, json!({"max_messages_per_month": 3, "overage_allowed": false})).await;
    let mut refused = None;
    for n in 0..5 {
        let (status, name) = publish(&server, json!(n)).await;
        if status != 200 {
            refused = Some((n, status, name));
            break;
        }
    }
    let (n, status, name) = refused.expect("the quota stops publishing");
    assert_eq!((status, name.as_str()), (429, "quota_exceeded"));
    // Exactly the quota's 3 this month: the "short" message above counts once the usage flush
    // has stored it (then 2 more are accepted here), or not yet (3 more).
    assert!(n == 2 || n == 3, "3 messages this month, then refused: stopped after {n}");
    // Clients publishing over WebSocket are refused too.
    let mut ws = server.ws(&server.all_rights("writer").await).await;
    let reply = ws.request(json!({"op": "publish", "channel": "quota", "data": 1})).await.unwrap();
    assert_eq!(reply["error"]["name"], "quota_exceeded", "{reply}");
    limit(&server, json!({"max_messages_per_month": 3, "overage_allowed": true})).await;
    eventually("overage lets publishing go on", Duration::from_secs(1), || async {
        publish(&server, json!("billed")).await.0 == 200
    })
    .await
    .unwrap();

    // Bad overrides are refused.
    let path = format!("/v1/tenants/{}/limits", server.tenant_id());
    for bad in [json!({"max_connections": -1}), json!({"max_sockets": 1}), json!({"overage_allowed": "yes"})]
    {
        let (status, _) = server.manage("POST", &path, server.operator_token(), Some(&bad)).await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, shown) = server.manage("GET", &path, server.operator_token(), None).await;
    assert_eq!(status, 200);
    assert_eq!(shown["plan"], "unlimited");
    assert_eq!(shown["limits"]["max_messages_per_month"], 3);
    assert_eq!(shown["limits"]["overage_allowed"], true);
    assert_eq!(
        shown["overrides"]["max_message_bytes"],
        Value::Null,
        "the last write replaced every override"
    );
}

#[tokio::test]
async fn the_publish_rate_and_connection_limits_hold_across_two_nodes() {
    let nodes = TestServer::spawn_cluster(2, |_| {}).await;
    let (first, second) = (&nodes[0], &nodes[1]);
    limit(first, json!({"max_publish_rate": 5, "max_connections": 3})).await;

    // Five publishes on the first node use the second; the second node then refuses. A try
    // that spilled over into the next second (a slow machine) is run again.
    let mut tries = 0;
    let (status, reply, headers) = loop {
        tries += 1;
        start_of_a_second().await;
        let second_of_try = unix_ms() / 1000;
        for n in 0..5 {
            let (status, name) = publish(first, json!(n)).await;
            assert!(status == 200 || name == "rate_limited", "publish {n}: {status} {name}");
        }
        // The second node refuses as soon as its counts are synced (every 200 ms) and the
        // override reached it (a control event): publish there until it does, within the second.
        let (status, reply, headers) = loop {
            let response = second
                .http()
                .post(format!("{}/v1/channels/quota/messages", second.http_url()))
                .bearer_auth(second.api_key())
                .json(&json!({"data": "late"}))
                .send()
                .await
                .unwrap();
            let headers = response.headers().clone();
            let status = response.status().as_u16();
            let reply: Value = response.json().await.unwrap();
            if status != 200 || unix_ms() / 1000 != second_of_try {
                break (status, reply, headers);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if unix_ms() / 1000 == second_of_try || tries == 3 {
            break (status, reply, headers);
        }
    };
    assert_eq!((status, reply["error"]["name"].as_str()), (429, Some("rate_limited")), "{reply}");
    assert_eq!(headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert!(reply["error"]["message"].as_str().unwrap().contains("retry after"), "{reply}");
    // The next second is a new window.
    start_of_a_second().await;
    assert_eq!(publish(second, json!("next second")).await.0, 200);

    // Connections: two on the first node and one on the second use the three.
    let token = first.all_rights("crowd").await;
    let _held = [first.ws(&token).await, first.ws(&token).await, second.ws(&token).await];
    // Each node reports its count once a second: within a few seconds both refuse. (A
    // connection let in before that is closed again at once.)
    for node in [first, second] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        let reply = loop {
            let (ws, reply) = WsClient::connect(&node.ws_url(), &token).await.unwrap();
            drop(ws);
            if reply["error"]["name"] == "connection_limit" || tokio::time::Instant::now() > deadline {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(reply["error"]["name"], "connection_limit", "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains("3 connections"), "{reply}");
    }
}

#[tokio::test]
async fn the_channel_limit_counts_channels_with_subscribers_and_frees_quiet_ones() {
    let server = TestServer::spawn().await;
    limit(&server, json!({"max_channels": 2})).await;
    let token = server.all_rights("reader").await;
    let (mut first, mut second) = (server.ws(&token).await, server.ws(&token).await);
    for channel in ["room:a", "room:b"] {
        let reply = first.request(json!({"op": "subscribe", "channel": channel})).await.unwrap();
        assert!(reply.get("result").is_some(), "{reply}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // reported by the node's tick
    // Another subscriber of a counted channel takes nothing more.
    let reply = second.request(json!({"op": "subscribe", "channel": "room:a"})).await.unwrap();
    assert!(reply.get("result").is_some(), "{reply}");
    let reply = second.request(json!({"op": "subscribe", "channel": "room:c"})).await.unwrap();
    assert_eq!(reply["error"]["name"], "channel_limit", "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("2 channels"), "{reply}");
    // A channel nobody subscribes any more stops counting after a few seconds.
    for ws in [&mut first, &mut second] {
        ws.request(json!({"op": "unsubscribe", "channel": "room:a"})).await.unwrap();
    }
    let freed = tokio::time::Instant::now();
    let deadline = freed + Duration::from_secs(6);
    loop {
        let reply = second.request(json!({"op": "subscribe", "channel": "room:c"})).await.unwrap();
        if reply.get("result").is_some() {
            break;
        }
        assert_eq!(reply["error"]["name"], "channel_limit", "{reply}");
        assert!(tokio::time::Instant::now() < deadline, "room:a still counts");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(freed.elapsed() > Duration::from_secs(1), "a reported channel counts for its window");
}
