use serde_json::json;
use tributary_testkit::TestServer;

#[tokio::test]
async fn a_backend_publish_reaches_every_subscriber_with_its_position() {
    let server = TestServer::spawn().await;
    let token = server.all_rights("alice").await;
    let mut a = server.ws(&token).await;
    let mut b = server.ws(&token).await;
    for client in [&mut a, &mut b] {
        let reply = client.request(json!({"op": "subscribe", "channel": "chat:room"})).await.unwrap();
        assert_eq!(reply["result"]["offset"], 0, "{reply}");
    }
    let published = server.publish("chat:room", json!({"text": "hi"})).await;
    for client in [&mut a, &mut b] {
        let m = client.next_of("message").await.unwrap();
        assert_eq!(m["channel"], "chat:room");
        assert_eq!(m["offset"], 1);
        assert_eq!(m["epoch"], published["epoch"]);
        assert_eq!(m["data"], json!({"text": "hi"}));
        assert!(m["ts"].as_u64().unwrap() > 0);
        assert!(m.get("client_id").is_none(), "backend publishes have no client id");
    }
}

#[tokio::test]
async fn a_client_publish_carries_its_client_id_and_binary_payloads_round_trip() {
    let server = TestServer::spawn().await;
    let mut sub = server.ws(&server.all_rights("reader").await).await;
    sub.request(json!({"op": "subscribe", "channel": "chat:x"})).await.unwrap();
    let mut publisher = server.ws(&server.token("writer", &[("chat:*", &["publish"])]).await).await;
    let reply =
        publisher.request(json!({"op": "publish", "channel": "chat:x", "data": [1, "two"]})).await.unwrap();
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    let reply = publisher
        .request(json!({"op": "publish", "channel": "chat:x", "data": "AP8=", "binary": true, "encoding": "aes-gcm"}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["offset"], 2, "{reply}");
    let m = sub.messages(2).await.unwrap();
    assert_eq!(m[0]["client_id"], "writer");
    assert_eq!(m[0]["data"], json!([1, "two"]));
    assert_eq!(m[1]["binary"], true);
    assert_eq!(m[1]["data"], "AP8=");
    assert_eq!(m[1]["encoding"], "aes-gcm", "the encryption marker passes through untouched");
}

#[tokio::test]
async fn unsubscribed_clients_stop_receiving_and_other_channels_are_separate() {
    let server = TestServer::spawn().await;
    let mut c = server.ws(&server.all_rights("u").await).await;
    c.request(json!({"op": "subscribe", "channel": "a"})).await.unwrap();
    c.request(json!({"op": "subscribe", "channel": "b"})).await.unwrap();
    let reply = c.request(json!({"op": "unsubscribe", "channel": "a"})).await.unwrap();
    assert!(reply.get("result").is_some(), "{reply}");
    server.publish("a", json!(1)).await;
    server.publish("b", json!(2)).await;
    let m = c.next_of("message").await.unwrap();
    assert_eq!((m["channel"].clone(), m["data"].clone()), (json!("b"), json!(2)));
    let again = c.request(json!({"op": "unsubscribe", "channel": "a"})).await.unwrap();
    assert_eq!(again["error"]["name"], "not_subscribed");
}

/// Four publishers at once while subscribers join (each subscribe held 5 ms in the engine, so
/// publications land in its seam): each subscriber sees the offsets after its start in order,
/// once each, on a multi-thread runtime.
async fn concurrent_publishers_in_offset_order(configure: fn(&mut tributary::config::TributaryConfig)) {
    let (server, gate) = TestServer::spawn_with_seam(configure).await;
    gate.delay_all(std::time::Duration::from_millis(5));
    let mut first = server.ws(&server.all_rights("s").await).await;
    first.request(json!({"op": "subscribe", "channel": "chat:load"})).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let http = server.http().clone();
        let url = format!("{}/v1/channels/chat:load/messages", server.http_url());
        let key = server.api_key().to_owned();
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"data": t * 100 + n}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    // Late joiners, each starting wherever the stream stands when it subscribes.
    let mut late = Vec::new();
    for n in 0..5 {
        let mut c = server.ws(&server.all_rights(&format!("late-{n}")).await).await;
        let reply = c.request(json!({"op": "subscribe", "channel": "chat:load"})).await.unwrap();
        late.push((
            c,
            reply["result"]["offset"].as_u64().unwrap() - reply["result"]["replayed"].as_u64().unwrap(),
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
    server.publish("chat:load", json!("end")).await;
    let offsets: Vec<u64> =
        first.messages(201).await.unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=201).collect::<Vec<_>>());
    for (mut c, start) in late {
        let mut offsets = Vec::new();
        while offsets.last() != Some(&201) {
            offsets.push(c.next_of("message").await.unwrap()["offset"].as_u64().unwrap());
        }
        assert_eq!(offsets, (start + 1..=201).collect::<Vec<_>>(), "a late subscriber from {start}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_are_seen_in_offset_order_without_duplicates_memory() {
    concurrent_publishers_in_offset_order(tributary_testkit::use_memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_are_seen_in_offset_order_without_duplicates_redis() {
    concurrent_publishers_in_offset_order(tributary_testkit::use_redis).await;
}

#[tokio::test]
async fn apps_never_see_each_others_channels() {
    let one = TestServer::spawn().await;
    let two = TestServer::spawn().await;
    let token_of_two = two.all_rights("mallory").await;
    // A token of another app (another data directory, other keys) is refused here.
    let (_, reply) = tributary_testkit::WsClient::connect(&one.ws_url(), &token_of_two).await.unwrap();
    assert_eq!(reply["error"]["name"], "unknown_key", "{reply}");
}

#[tokio::test]
async fn two_apps_in_one_server_share_nothing() {
    let server = TestServer::spawn().await;
    let other = server.create_app("other-co").await;
    let mut ours = server.ws(&server.all_rights("ours").await).await;
    ours.request(json!({"op": "subscribe", "channel": "chat:same"})).await.unwrap();
    let theirs_token =
        server.token_for(&other, "theirs", &[("*", &["subscribe", "publish", "presence", "history"])]).await;
    let mut theirs = server.ws(&theirs_token).await;
    theirs.request(json!({"op": "subscribe", "channel": "chat:same"})).await.unwrap();
    // The other app publishes on a channel with the same name: only its own subscriber sees it.
    let reply =
        theirs.request(json!({"op": "publish", "channel": "chat:same", "data": "secret"})).await.unwrap();
    assert_eq!(reply["result"]["offset"], 1);
    assert_eq!(theirs.next_of("message").await.unwrap()["data"], "secret");
    assert!(ours.no_message_within(std::time::Duration::from_millis(300)).await, "nothing crosses apps");
    let (_, history) = server.get("/v1/channels/chat:same/history").await;
    assert!(history["messages"].as_array().unwrap().is_empty(), "{history}");
    let (_, presence) = server.get("/v1/channels/chat:same/presence").await;
    let members: Vec<_> =
        presence["members"].as_array().unwrap().iter().map(|m| m["client_id"].clone()).collect();
    assert_eq!(members, vec![json!("ours")]);
    // Our app's offsets are its own.
    assert_eq!(server.publish("chat:same", json!("mine")).await["offset"], 1);
}
