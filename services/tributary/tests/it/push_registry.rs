//! Push's device registry over HTTP: devices register with a client token carrying
//! `push_subscribe` (or a backend with the API key) and subscribe to channels' pushes.

use serde_json::{Value, json};
use tributary_testkit::TestServer;

/// A call with `bearer` (an API key or a client token).
async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", server.http_url());
    let request = match method {
        "POST" => server.http().post(url),
        "DELETE" => server.http().delete(url),
        _ => server.http().get(url),
    };
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.bearer_auth(bearer).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn apns(n: u8) -> Value {
    json!({"platform": "apns", "token": format!("{n:02x}").repeat(32), "metadata": {"model": "iPhone 15"}})
}

/// A browser subscription's keys that are a real P-256 point and 16 bytes.
fn web(endpoint: &str) -> Value {
    json!({"platform": "web", "subscription": {"endpoint": endpoint, "expirationTime": null, "keys": {
        "p256dh": "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}})
}

#[tokio::test]
async fn a_device_registers_with_its_client_token_and_subscribes_to_the_channels_its_grants_cover() {
    let server = TestServer::spawn().await;
    let alice = server.token("alice", &[("orders:*", &["push_subscribe"])]).await;
    let bob = server.token("bob", &[("orders:*", &["push_subscribe"])]).await;
    let key = server.api_key().to_owned();

    let (status, device) = call(&server, "POST", "/v1/push/devices", &alice, Some(apns(1))).await;
    assert_eq!(status, 200, "{device}");
    let id = device["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("dev_"));
    assert_eq!((device["client_id"].as_str(), device["platform"].as_str()), (Some("alice"), Some("apns")));
    assert_eq!(device["metadata"]["model"], "iPhone 15");
    let (_, again) = call(&server, "POST", "/v1/push/devices", &alice, Some(apns(1))).await;
    assert_eq!(again["id"], device["id"], "registering on every start keeps one device");

    let subscriptions = "/v1/push/channels/orders:1/subscriptions";
    let (status, body) = call(&server, "POST", subscriptions, &alice, Some(json!({"device_id": id}))).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) =
        call(&server, "POST", "/v1/push/channels/news/subscriptions", &alice, Some(json!({"device_id": id})))
            .await;
    assert_eq!((status, body["error"]["name"].as_str()), (403, Some("forbidden")), "not granted on news");
    let (status, _) = call(
        &server,
        "POST",
        "/v1/push/channels/orders:2/subscriptions",
        &alice,
        Some(json!({"client_id": "alice"})),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        &server,
        "POST",
        "/v1/push/channels/orders:2/subscriptions",
        &alice,
        Some(json!({"client_id": "bob"})),
    )
    .await;
    assert_eq!(status, 403, "only its own client id");
    let (status, _) = call(&server, "POST", subscriptions, &bob, Some(json!({"device_id": id}))).await;
    assert_eq!(status, 404, "bob cannot see alice's device");
    let (status, _) = call(&server, "GET", &format!("/v1/push/devices/{id}"), &bob, None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&server, "GET", "/v1/push/devices", &alice, None).await;
    assert_eq!(status, 403, "listing is for the backend");

    // What the backend sees, and what a push to each channel reaches.
    let (status, listed) = call(&server, "GET", subscriptions, &key, None).await;
    assert_eq!((status, &listed["subscriptions"][0]["device_id"]), (200, &json!(id)), "{listed}");
    let reached = server.store().channel_push_devices(server.app_id(), "orders:2", "", 10).await.unwrap();
    assert_eq!(
        reached.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()],
        "through alice's client id"
    );

    let (status, _) = call(&server, "DELETE", &format!("{subscriptions}?device_id={id}"), &alice, None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&server, "DELETE", &format!("{subscriptions}?device_id={id}"), &alice, None).await;
    assert_eq!(status, 404, "not subscribed any more");
    let (status, _) = call(&server, "DELETE", &format!("/v1/push/devices/{id}"), &alice, None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&server, "GET", &format!("/v1/push/devices/{id}"), &key, None).await;
    assert_eq!(status, 404);
    assert!(
        server.store().channel_push_devices(server.app_id(), "orders:2", "", 10).await.unwrap().is_empty()
    );
}

#[tokio::test]
async fn a_backend_manages_every_device_of_its_app_and_only_of_its_app() {
    let server = TestServer::spawn().await;
    let key = server.api_key().to_owned();
    let mut ids = Vec::new();
    for n in 0..3 {
        let body = json!({"platform": "fcm", "token": format!("fcm-token-{n}"), "client_id": "carol"});
        let (status, device) = call(&server, "POST", "/v1/push/devices", &key, Some(body)).await;
        assert_eq!(status, 200, "{device}");
        ids.push(device["id"].as_str().unwrap().to_owned());
    }
    let (status, browser) =
        call(&server, "POST", "/v1/push/devices", &key, Some(web("https://push.example.com/wpush/v2/abc")))
            .await;
    assert_eq!(status, 200, "{browser}");
    assert_eq!(browser["endpoint"], "https://push.example.com/wpush/v2/abc");
    assert!(
        browser.get("subscription").is_none() && browser.get("keys").is_none(),
        "keys are not shown again"
    );

    let (_, page) = call(&server, "GET", "/v1/push/devices?client_id=carol&limit=2", &key, None).await;
    assert_eq!(page["devices"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    let (_, rest) =
        call(&server, "GET", &format!("/v1/push/devices?client_id=carol&limit=2&after={next}"), &key, None)
            .await;
    assert_eq!((rest["devices"].as_array().unwrap().len(), &rest["next"]), (1, &Value::Null));

    // Another app's key sees none of it and changes nothing.
    let other = server.create_app("other").await;
    let (status, _) =
        call(&server, "GET", &format!("/v1/push/devices/{}", ids[0]), &other.api_key, None).await;
    assert_eq!(status, 404);
    let (status, _) =
        call(&server, "DELETE", &format!("/v1/push/devices/{}", ids[0]), &other.api_key, None).await;
    assert_eq!(status, 404);
    let (_, theirs) = call(&server, "GET", "/v1/push/devices", &other.api_key, None).await;
    assert_eq!(theirs["devices"], json!([]));
    let (status, _) = call(&server, "GET", &format!("/v1/push/devices/{}", ids[0]), &key, None).await;
    assert_eq!(status, 200, "still there");

    // A token without push_subscribe registers nothing.
    let plain = server.all_rights("dave").await;
    let (status, body) = call(&server, "POST", "/v1/push/devices", &plain, Some(apns(9))).await;
    assert_eq!((status, body["error"]["name"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, _) = call(&server, "POST", "/v1/push/devices", "not-a-token", Some(apns(9))).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn bad_registrations_are_refused_with_the_reason_and_register_nothing() {
    let server = TestServer::spawn().await;
    let key = server.api_key().to_owned();
    let alice = server.token("alice", &[("orders:*", &["push_subscribe"])]).await;
    let cases = [
        (json!({"platform": "blackberry", "token": "ab"}), "platform"),
        (json!({"platform": "apns", "token": "not hex at all, sorry"}), "hexadecimal"),
        (json!({"platform": "apns", "token": "abcd"}), "hexadecimal"),
        (json!({"platform": "fcm", "token": "with space"}), "FCM"),
        (json!({"platform": "fcm"}), "token"),
        (json!({"platform": "web", "token": "x"}), "subscription"),
        (web("not a url"), "endpoint"),
        (web("http://push.example.com/x"), "endpoint"),
        (web("https://10.0.0.7/push"), "endpoint"),
        (web("https://169.254.169.254/latest"), "endpoint"),
        (web("https://[::1]/push"), "endpoint"),
        (
            json!({"platform": "web", "subscription": {"endpoint": "https://push.example.com/x", "keys": {"p256dh": "AAAA", "auth": "BTBZMqHH6r4Tts7J_aSIgg"}}}),
            "p256dh",
        ),
        (json!({"platform": "apns", "token": "ab".repeat(32), "client_id": "bad\u{1}id"}), "client_id"),
        (
            json!({"platform": "apns", "token": "ab".repeat(32), "metadata": {"blob": "x".repeat(5000)}}),
            "metadata",
        ),
    ];
    for (body, why) in cases {
        let (status, answer) = call(&server, "POST", "/v1/push/devices", &key, Some(body.clone())).await;
        assert_eq!(
            (status, answer["error"]["name"].as_str()),
            (400, Some("invalid_parameter")),
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{body}: {message}");
    }
    let (status, answer) =
        call(&server, "POST", "/v1/push/devices", &key, Some(json!({"platform": "apns", "tokn": "ab"})))
            .await;
    assert_eq!((status, answer["error"]["name"].as_str()), (400, Some("invalid_frame")), "an unknown field");
    let (status, _) = call(
        &server,
        "POST",
        "/v1/push/devices",
        &alice,
        Some(json!({"platform": "apns", "token": "ab".repeat(32), "client_id": "bob"})),
    )
    .await;
    assert_eq!(status, 403, "a client token registers only its own devices");
    let (status, answer) = call(
        &server,
        "POST",
        "/v1/push/channels/orders:1/subscriptions",
        &key,
        Some(json!({"device_id": "dev_nope", "client_id": "x"})),
    )
    .await;
    assert_eq!((status, answer["error"]["name"].as_str()), (400, Some("invalid_parameter")));
    let (status, _) = call(
        &server,
        "POST",
        "/v1/push/channels/orders:1/subscriptions",
        &key,
        Some(json!({"device_id": "dev_nope"})),
    )
    .await;
    assert_eq!(status, 404);
    let (_, listed) = call(&server, "GET", "/v1/push/devices", &key, None).await;
    assert_eq!(listed["devices"], json!([]), "nothing was registered");
    // And the server still works for everyone else.
    assert_eq!(server.publish("orders:1", json!("fine")).await["offset"], 1);
}
