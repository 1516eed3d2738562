//! The webhook endpoints of the management API: URLs checked against the address rules, the
//! secret shown once, rotation, enabling and disabling, the delivery log and dead letters.

use serde_json::{Value, json};
use tributary_store::{AfterAttempt, AttemptRecord, NewDelivery};
use tributary_testkit::TestServer;

/// Calls the management API as the operator on the development app's path `rest`.
async fn call(server: &TestServer, method: &str, rest: &str, body: Option<Value>) -> (u16, Value) {
    let path = format!("/v1/tenants/{}/apps/{}/webhooks{rest}", server.tenant_id(), server.app_id());
    server.manage(method, &path, server.operator_token(), body.as_ref()).await
}

#[tokio::test]
async fn endpoint_urls_that_could_reach_the_servers_own_network_are_refused_with_the_reason() {
    let server = TestServer::spawn_configured(|config| config.delivery.worker = false).await;
    let cases = [
        (json!({"url": "http://example.com/hook"}), "https"),
        (json!({"url": "https://127.0.0.1/hook"}), "loopback"),
        (json!({"url": "https://2130706433/hook"}), "loopback"),
        (json!({"url": "https://[::ffff:169.254.169.254]/"}), "cloud metadata"),
        (json!({"url": "https://10.0.0.5/"}), "private"),
        (json!({"url": "https://user:pw@example.com/"}), "credentials"),
        (json!({"url": "not a url"}), "valid URL"),
        (json!({"url": "https://example.com/", "headers": {"webhook-id": "x"}}), "webhook-id"),
        (json!({"url": "https://example.com/", "headers": {"x-ok": "line\nbreak"}}), "printable"),
    ];
    for (body, reason) in cases {
        let (status, reply) = call(&server, "POST", "", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"]["name"], "invalid_parameter", "{body}: {reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(reason), "{body}: {reply}");
    }
    let (status, reply) =
        call(&server, "POST", "", Some(json!({"url": "https://example.com/", "secret": "x"}))).await;
    assert_eq!((status, reply["error"]["name"].clone()), (400, json!("invalid_frame")), "an unknown field");
    // Nothing was made by the refused requests.
    assert_eq!(call(&server, "GET", "", None).await.1, json!([]));
}

#[tokio::test]
async fn an_endpoints_secret_is_shown_once_rotated_and_its_dead_letters_replayed() {
    let server = TestServer::spawn_configured(|config| config.delivery.worker = false).await;
    let body = json!({"url": "https://hooks.example.com/tributary", "description": "orders", "headers": {"x-team": "payments"}});
    let (status, created) = call(&server, "POST", "", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("wh_"));
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    let (status, listed) = call(&server, "GET", "", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        listed[0].get("secret").is_none() && !listed.to_string().contains(&secret[6..]),
        "never shown again"
    );
    assert_eq!(listed[0]["headers"], json!({"x-team": "payments"}));

    let (status, rotated) =
        call(&server, "POST", &format!("/{id}/rotate-secret"), Some(json!({"overlap_secs": 600}))).await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["secret"], json!(secret));
    assert!(rotated["previous_valid_until"].as_i64().unwrap() > 0);
    let (status, _) =
        call(&server, "POST", &format!("/{id}/rotate-secret"), Some(json!({"overlap_secs": 99_999_999})))
            .await;
    assert_eq!(status, 400);

    let (status, disabled) =
        call(&server, "POST", &format!("/{id}/disable"), Some(json!({"reason": "maintenance"}))).await;
    assert_eq!(
        (status, disabled["enabled"].clone(), disabled["disabled_reason"].clone()),
        (200, json!(false), json!("maintenance"))
    );
    let (_, enabled) = call(&server, "POST", &format!("/{id}/enable"), None).await;
    assert_eq!(enabled["enabled"], true);

    // A delivery that failed its last attempt (made through the store: rules come later).
    let store = server.store();
    let event = NewDelivery {
        tenant_id: server.tenant_id().into(),
        app_id: server.app_id().into(),
        target_id: id.clone(),
        event_id: "evt_1".into(),
        payload: br#"{"type":"message"}"#.to_vec(),
        headers: "{}".into(),
        events: 1,
    };
    store.enqueue_delivery(&event, 1_000).await.unwrap();
    let job = store.claim_deliveries("test", 1_000, 60_000, 10, 10, "").await.unwrap().remove(0);
    let last = AttemptRecord {
        at_ms: 1_500,
        status: Some(500),
        latency_ms: 40,
        outcome: "dead".into(),
        snippet: "boom".into(),
    };
    assert!(store.finish_delivery_attempt(&job.id, "test", &last, AfterAttempt::Dead).await.unwrap());

    let (_, log) = call(&server, "GET", &format!("/{id}/deliveries"), None).await;
    assert_eq!(log[0]["status"], 500);
    assert_eq!(log[0]["response"], "boom");
    let (_, dead) = call(&server, "GET", &format!("/{id}/dead-letters"), None).await;
    assert_eq!(
        (dead[0]["event_id"].clone(), dead[0]["payload"]["type"].clone()),
        (json!("evt_1"), json!("message"))
    );
    let (status, replayed) =
        call(&server, "POST", &format!("/{id}/dead-letters/{}/replay", job.id), None).await;
    assert_eq!((status, replayed["state"].clone()), (200, json!("pending")), "{replayed}");
    let (status, _) = call(&server, "POST", &format!("/{id}/dead-letters/{}/replay", job.id), None).await;
    assert_eq!(status, 404, "a delivery that is not dead");
    let (status, _) = call(&server, "GET", "/wh_00000000000000000000000000/deliveries", None).await;
    assert_eq!(status, 404);

    let (status, _) = call(&server, "DELETE", &format!("/{id}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(call(&server, "GET", &format!("/{id}"), None).await.0, 404);
}

/// End to end through the server: an endpoint made with the API, a test event asked of it, and
/// the server's own delivery worker sends it, signed, to a real receiver; the log says so.
#[tokio::test]
async fn a_test_event_reaches_the_receiver_signed_and_the_log_says_delivered() {
    use base64::Engine as _;

    let server = TestServer::spawn_configured(|config| {
        config.delivery.allow_http = true;
        config.delivery.allowed_private_ranges = vec!["127.0.0.0/8".into()];
        config.delivery.poll_interval_ms = 20;
    })
    .await;
    let (addr, got) = crate::rules::receiver().await;

    let body = json!({"url": format!("http://{addr}/hook"), "headers": {"x-team": "payments"}});
    let (status, created) = call(&server, "POST", "", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let key = base64::engine::general_purpose::STANDARD
        .decode(created["secret"].as_str().unwrap().trim_start_matches("whsec_"))
        .unwrap();
    let (status, asked) = call(&server, "POST", &format!("/{id}/test"), None).await;
    assert_eq!(status, 202, "{asked}");
    let event_id = asked["event_id"].as_str().unwrap().to_owned();

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the test event did not arrive");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (headers, body) = got.lock().unwrap()[0].clone();
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("webhook-id"), event_id);
    assert_eq!(header("x-team"), "payments");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["type"], "webhook.test");
    // Signed with the secret the creating reply showed (the signing itself is checked against
    // an independent verifier in tributary-delivery's tests).
    let expected = tributary_delivery::signature::WebhookSecret::from_bytes(key).sign(
        &header("webhook-id"),
        header("webhook-timestamp").parse().unwrap(),
        &body,
    );
    assert!(
        header("webhook-signature").split(' ').any(|s| s == expected),
        "{:?}",
        header("webhook-signature")
    );

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, log) = call(&server, "GET", &format!("/{id}/deliveries"), None).await;
        if log[0]["outcome"] == "delivered" {
            assert_eq!(log[0]["status"], 204);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the log never said delivered: {log}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
