use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tributary_testkit::{TestServer, WsClient};

#[tokio::test]
async fn malformed_frames_get_error_codes_and_the_connection_survives() {
    let server = TestServer::spawn().await;
    let mut c = server.ws(&server.all_rights("bad").await).await;
    let mut bystander = server.ws(&server.all_rights("bystander").await).await;
    bystander.request(json!({"op": "subscribe", "channel": "chat:ok"})).await.unwrap();
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{not json"), "invalid_json"),
        (Message::text(r#"{"id":1,"op":"teleport"}"#), "unknown_op"),
        (Message::text(r#"{"id":2,"op":"subscribe","channel":42}"#), "invalid_frame"),
        (Message::text(r#"{"id":3,"op":"subscribe"}"#), "invalid_frame"),
        (Message::text(r#"{"id":4,"op":"subscribe","channel":"bad name"}"#), "invalid_channel"),
        (Message::text(r#"{"id":5,"op":"connect","token":"x"}"#), "connect_expected"),
        (Message::binary(vec![0xff, 0xfe, 0x00]), "invalid_utf8"),
        (
            Message::text(r#"{"id":6,"op":"publish","channel":"chat:ok","data":"%%","binary":true}"#),
            "invalid_payload",
        ),
        (Message::text(r#"{"id":7,"op":"history","channel":"chat:ok","limit":0}"#), "invalid_parameter"),
    ];
    for (message, expected) in cases {
        c.send_raw(message).await.unwrap();
        let reply = c.next_of("reply").await.unwrap();
        assert_eq!(reply["error"]["name"], expected, "{reply}");
        assert!(reply["error"]["code"].as_u64().unwrap() >= 1000);
    }
    let reply = c.request(json!({"op": "ping"})).await.unwrap();
    assert!(reply.get("result").is_some(), "the connection is still usable");
    server.publish("chat:ok", json!("fine")).await;
    assert_eq!(bystander.next_of("message").await.unwrap()["data"], "fine");
}

#[tokio::test]
async fn an_oversized_frame_closes_only_its_own_connection() {
    let server = TestServer::spawn_with(|relay| {
        relay.max_frame_bytes = 4096;
        for ns in relay.namespaces.values_mut() {
            ns.max_message_bytes = 1024;
        }
    })
    .await;
    let mut c = server.ws(&server.all_rights("big").await).await;
    let mut other = server.ws(&server.all_rights("other").await).await;
    other.request(json!({"op": "subscribe", "channel": "x"})).await.unwrap();
    let reply = c.request(json!({"op": "publish", "channel": "x", "data": "a".repeat(2000)})).await.unwrap();
    assert_eq!(reply["error"]["name"], "message_too_large", "namespace limit applies below the frame limit");
    c.send(json!({"op": "publish", "channel": "x", "data": "a".repeat(10_000)})).await.unwrap();
    let (code, _) = c.closed().await.unwrap();
    assert_eq!(code, 3502);
    server.publish("x", json!("alive")).await;
    assert_eq!(other.next_of("message").await.unwrap()["data"], "alive");
}

#[tokio::test]
async fn a_first_frame_other_than_connect_is_refused() {
    let server = TestServer::spawn().await;
    let mut c = WsClient::open(&server.ws_url()).await.unwrap();
    c.send(json!({"id": 1, "op": "subscribe", "channel": "a"})).await.unwrap();
    let reply = c.next().await.unwrap();
    assert_eq!(reply["error"]["name"], "connect_expected");
    assert_eq!(c.closed().await.unwrap().0, 3500);
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_handshake_timeout() {
    let server = TestServer::spawn_with(|relay| relay.handshake_timeout_ms = 200).await;
    let mut c = WsClient::open(&server.ws_url()).await.unwrap();
    assert_eq!(c.closed().await.unwrap().0, 3006);
}

#[tokio::test]
async fn bad_http_requests_get_json_errors() {
    let server = TestServer::spawn().await;
    let url = format!("{}/v1/channels/chat:a/messages", server.http_url());
    let no_key = server.http().post(&url).json(&json!({"data": 1})).send().await.unwrap();
    assert_eq!(no_key.status(), 401);
    let body: serde_json::Value = no_key.json().await.unwrap();
    assert_eq!(body["error"]["name"], "unauthorized");
    let wrong_key =
        server.http().post(&url).bearer_auth("trb_nope").json(&json!({"data": 1})).send().await.unwrap();
    assert_eq!(wrong_key.status(), 401);
    let broken = server.http().post(&url).bearer_auth(server.api_key()).body("{oops").send().await.unwrap();
    assert_eq!(broken.status(), 400);
    let body: serde_json::Value = broken.json().await.unwrap();
    assert_eq!(body["error"]["name"], "invalid_json");
    let (status, body) = server.post("/v1/channels/bad%20name/messages", &json!({"data": 1}), None).await;
    assert_eq!((status, body["error"]["name"].as_str()), (400, Some("invalid_channel")));
    let (status, body) =
        server.post("/v1/channels/a/messages", &json!({"data": 1, "extra": true}), None).await;
    assert_eq!((status, body["error"]["name"].as_str()), (400, Some("invalid_frame")));
    let (status, body) = server.get("/v1/nowhere").await;
    assert_eq!((status, body["error"]["name"].as_str()), (404, Some("not_found")));
    let huge = server
        .http()
        .post(&url)
        .bearer_auth(server.api_key())
        .body(vec![b' '; 200_000])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
}

#[tokio::test]
async fn a_client_that_closes_gets_the_close_answered() {
    let server = TestServer::spawn().await;
    let mut c = server.ws(&server.all_rights("polite").await).await;
    c.send_raw(Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    assert_eq!(c.closed().await.unwrap().0, 1000);
}

#[tokio::test]
async fn a_client_close_is_answered_with_its_own_code() {
    let server = TestServer::spawn().await;
    for (sent, answered) in [(Some(4001), 4001), (Some(1001), 1001), (None, 1000)] {
        let mut c = server.ws(&server.all_rights("closer").await).await;
        let frame = sent.map(|code: u16| tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: "leaving".into(),
        });
        c.send_raw(Message::Close(frame)).await.unwrap();
        assert_eq!(c.closed().await.unwrap().0, answered, "close sent with {sent:?}");
    }
}

/// Input that is not JSON at all is `invalid_json`, whatever serde meets first; JSON that is not
/// an object is `invalid_frame`; both over WebSocket and HTTP, and nothing else is harmed.
#[tokio::test]
async fn broken_json_and_arrays_get_the_documented_codes_everywhere() {
    let server = TestServer::spawn().await;
    let mut c = server.ws(&server.all_rights("arrays").await).await;
    let mut bystander = server.ws(&server.all_rights("bystander").await).await;
    bystander.request(json!({"op": "subscribe", "channel": "chat:ok"})).await.unwrap();
    let deep = "[".repeat(60_000);
    let not_json = ["[[[[[", deep.as_str(), "{\"id\":9,\"op\":\"ping\"", "{} trailing"];
    let not_objects = [r#"[7,"ping",null]"#, "[]", "7", "\"ping\"", "null"];
    for text in not_json {
        c.send_raw(Message::text(text)).await.unwrap();
        let reply = c.next_of("reply").await.unwrap();
        assert_eq!(reply["error"]["name"], "invalid_json", "{text:.30}: {reply}");
        assert_eq!(reply["error"]["code"], 1001);
    }
    for text in not_objects {
        c.send_raw(Message::text(text)).await.unwrap();
        let reply = c.next_of("reply").await.unwrap();
        assert_eq!(reply["error"]["name"], "invalid_frame", "{text}: {reply}");
        // An array's first element is not taken for an id.
        assert!(reply.get("id").is_none_or(serde_json::Value::is_null), "{reply}");
    }
    // A nested object given as an array (a recovery position) is refused too.
    let nested = json!({"id": 3, "op": "subscribe", "channel": "chat:x", "recover": ["e", 1]});
    let reply = c.request(nested).await.unwrap();
    assert_eq!(reply["error"]["name"], "invalid_frame", "{reply}");

    let http = |path: &str, body: &str| {
        server
            .http()
            .post(format!("{}{path}", server.http_url()))
            .bearer_auth(server.api_key())
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let routes = ["/v1/channels/chat:ok/messages", "/v1/tokens", "/v1/publish"];
    for route in routes {
        for text in not_json {
            let response = http(route, text).await.unwrap();
            assert_eq!(response.status(), 400, "{route} {text:.30}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["name"], "invalid_json", "{route} {text:.30}: {body}");
        }
        for text in [r#"[{"x":1},false,null,null]"#, r#"["arruser",60,[],null]"#, "[]", "42"] {
            let response = http(route, text).await.unwrap();
            assert_eq!(response.status(), 400, "{route} {text}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["name"], "invalid_frame", "{route} {text}: {body}");
        }
    }
    // The management API reads its bodies the same way.
    let (status, body) =
        server.manage("POST", "/v1/tenants", server.operator_token(), Some(&json!(["Array Inc."]))).await;
    assert_eq!((status, body["error"]["name"].as_str()), (400, Some("invalid_frame")), "{body}");
    // Nothing was stored from an array, and the connection and its neighbour still work.
    let (_, history) = server.get("/v1/channels/chat:ok/history").await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(0), "{history}");
    let reply = c.request(json!({"op": "ping"})).await.unwrap();
    assert!(reply.get("result").is_some(), "the connection is still usable: {reply}");
    server.publish("chat:ok", json!("fine")).await;
    assert_eq!(bystander.next_of("message").await.unwrap()["data"], "fine");
}
