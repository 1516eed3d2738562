use serde_json::json;
use tributary_testkit::TestServer;

#[tokio::test]
async fn a_batch_publishes_to_many_channels_and_reports_each_result() {
    let server = TestServer::spawn().await;
    let mut c = server.ws(&server.all_rights("b").await).await;
    c.request(json!({"op": "subscribe", "channel": "a"})).await.unwrap();
    c.request(json!({"op": "subscribe", "channel": "b"})).await.unwrap();
    let body = json!({"messages": [
        {"channel": "a", "data": 1},
        {"channel": "bad name", "data": 2},
        {"channel": "b", "data": 3},
    ]});
    let (status, reply) = server.post("/v1/publish", &body, Some("batch-1")).await;
    assert_eq!(status, 200, "{reply}");
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results[0]["offset"], 1);
    assert_eq!(results[1]["error"]["name"], "invalid_channel");
    assert_eq!(results[2]["offset"], 1);
    let (_, retry) = server.post("/v1/publish", &body, Some("batch-1")).await;
    assert_eq!(retry["results"][0]["duplicate"], true, "{retry}");
    let got = c.messages(2).await.unwrap();
    assert_eq!((got[0]["channel"].clone(), got[1]["channel"].clone()), (json!("a"), json!("b")));
    // A batch key covers each item separately: two messages to one channel are both stored.
    let twice = json!({"messages": [{"channel": "a", "data": "x"}, {"channel": "a", "data": "y"}]});
    let (_, reply) = server.post("/v1/publish", &twice, Some("batch-2")).await;
    assert_eq!(
        (reply["results"][0]["duplicate"].clone(), reply["results"][1]["duplicate"].clone()),
        (json!(false), json!(false))
    );
    let (_, retry) = server.post("/v1/publish", &twice, Some("batch-2")).await;
    assert_eq!(
        (retry["results"][0]["offset"].clone(), retry["results"][1]["offset"].clone()),
        (reply["results"][0]["offset"].clone(), reply["results"][1]["offset"].clone())
    );
    assert_eq!(
        c.messages(2).await.unwrap().iter().map(|m| m["data"].clone()).collect::<Vec<_>>(),
        vec![json!("x"), json!("y")]
    );
    let bad_key = json!({"messages": [{"channel": "a", "data": 1, "idempotency_key": ""}]});
    let (_, reply) = server.post("/v1/publish", &bad_key, None).await;
    assert_eq!(reply["results"][0]["error"]["name"], "invalid_parameter");
    assert!(
        c.quiet_for(std::time::Duration::from_millis(200)).await,
        "the retried batch was not delivered again"
    );
}

#[tokio::test]
async fn history_reads_forwards_and_backwards_with_limits() {
    let server = TestServer::spawn().await;
    for n in 1..=6 {
        server.publish("chat:h", json!(n)).await;
    }
    let (status, page) = server.get("/v1/channels/chat:h/history?since=2&limit=3").await;
    assert_eq!(status, 200);
    let data: Vec<_> = page["messages"].as_array().unwrap().iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, vec![json!(3), json!(4), json!(5)]);
    assert_eq!(page["offset"], 6);
    let (_, page) = server.get("/v1/channels/chat:h/history?direction=backward&limit=2").await;
    let data: Vec<_> = page["messages"].as_array().unwrap().iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, vec![json!(6), json!(5)]);
    let (status, err) = server.get("/v1/channels/chat:h/history?limit=5000").await;
    assert_eq!((status, err["error"]["name"].as_str()), (400, Some("invalid_parameter")));
    let (status, _) = server.get("/v1/channels/chat:h/history?direction=sideways").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn history_ttl_and_size_come_from_the_namespace() {
    let server = TestServer::spawn_with(|relay| {
        relay.namespaces.insert(
            "live".into(),
            tributary_relay::NamespaceConfig { history_size: 0, ..Default::default() },
        );
        relay.namespaces.insert(
            "short".into(),
            tributary_relay::NamespaceConfig { history_size: 3, ..Default::default() },
        );
    })
    .await;
    server.publish("live:a", json!(1)).await;
    let (status, err) = server.get("/v1/channels/live:a/history").await;
    assert_eq!((status, err["error"]["name"].as_str()), (403, Some("disabled_in_namespace")));
    for n in 1..=5 {
        server.publish("short:a", json!(n)).await;
    }
    let (_, page) = server.get("/v1/channels/short:a/history").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn presence_is_readable_by_backends() {
    let server = TestServer::spawn().await;
    let mut c = server.ws(&server.all_rights("dev-1").await).await;
    c.request(json!({"op": "subscribe", "channel": "devices:1", "state": {"lat": 52.5, "lon": 13.4}}))
        .await
        .unwrap();
    let (status, presence) = server.get("/v1/channels/devices:1/presence").await;
    assert_eq!(status, 200);
    assert_eq!(presence["members"][0]["client_id"], "dev-1");
    assert_eq!(presence["members"][0]["state"], json!({"lat": 52.5, "lon": 13.4}));
    assert_eq!(presence["occupancy"]["members"], 1);
}

#[tokio::test]
async fn an_idempotency_key_in_the_header_and_the_body_must_be_one_key() {
    let server = TestServer::spawn().await;
    let path = "/v1/channels/orders/messages";
    // Two different keys: refused, and nothing is stored.
    let (status, reply) =
        server.post(path, &json!({"data": 1, "idempotency_key": "body-key"}), Some("header-key")).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (400, Some("invalid_parameter")), "{reply}");
    let (_, history) = server.get("/v1/channels/orders/history").await;
    assert_eq!(history["offset"], 0, "a refused publish stored nothing: {history}");
    // The same key in both places is one key: a retry with either alone is a duplicate.
    let (status, first) = server.post(path, &json!({"data": 2, "idempotency_key": "k1"}), Some("k1")).await;
    assert_eq!((status, first["duplicate"].as_bool()), (200, Some(false)), "{first}");
    let (_, by_body) = server.post(path, &json!({"data": 2, "idempotency_key": "k1"}), None).await;
    let (_, by_header) = server.post(path, &json!({"data": 2}), Some("k1")).await;
    for retry in [by_body, by_header] {
        assert_eq!(
            (retry["duplicate"].as_bool(), &retry["offset"]),
            (Some(true), &first["offset"]),
            "{retry}"
        );
    }
    let (_, history) = server.get("/v1/channels/orders/history").await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(1), "{history}");
}

#[tokio::test]
async fn a_batch_has_1_to_100_messages() {
    let server = TestServer::spawn().await;
    let batch = |n: usize| json!({"messages": (0..n).map(|i| json!({"channel": "b", "data": i})).collect::<Vec<_>>()});
    for n in [0, 101] {
        let (status, reply) = server.post("/v1/publish", &batch(n), None).await;
        assert_eq!(
            (status, reply["error"]["name"].as_str()),
            (400, Some("invalid_parameter")),
            "{n}: {reply}"
        );
    }
    let (_, history) = server.get("/v1/channels/b/history").await;
    assert_eq!(history["offset"], 0, "a refused batch stores nothing: {history}");
    let (status, reply) = server.post("/v1/publish", &batch(100), None).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["results"].as_array().map(Vec::len), Some(100));
    assert_eq!(reply["results"][99]["offset"], 100);
}
