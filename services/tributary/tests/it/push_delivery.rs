//! Direct pushes through the whole server: devices register with their client tokens, a backend
//! pushes to a channel, and the testkit's fakes of APNs, FCM and a Web Push service (which verify
//! the protocols, the browser's copy decrypted) each get their device's copy once.

use std::time::Duration;

use serde_json::{Value, json};
use tributary_delivery::push::webpush::VapidKey;
use tributary_testkit::push::{ApnsFake, FcmFake, KeyPair, WebPushFake};
use tributary_testkit::{TestServer, eventually};

const TEAM: &str = "TEAM123456";
const KEY_ID: &str = "KEY7654321";

async fn call(server: &TestServer, path: &str, bearer: &str, body: Value, key: Option<&str>) -> (u16, Value) {
    let mut request =
        server.http().post(format!("{}{path}", server.http_url())).bearer_auth(bearer).json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The fakes, and a server whose push settings name them.
pub(crate) async fn setup() -> (TestServer, ApnsFake, FcmFake, WebPushFake, tempfile::TempDir) {
    let (apns_key, fcm_key, vapid_key) = (KeyPair::p256(), KeyPair::rsa(), KeyPair::p256());
    let apns = ApnsFake::start(TEAM, KEY_ID, &apns_key.public_pem).await;
    let fcm = FcmFake::start("shop-7", "pusher@shop-7.iam.gserviceaccount.com", &fcm_key.public_pem).await;
    let vapid = VapidKey::from_pem(&vapid_key.private_pem, "mailto:ops@example.com").unwrap();
    let web = WebPushFake::start(vapid.public_key()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("push-ca.pem");
    std::fs::write(&ca, &apns.ca_pem).unwrap();
    let (apns_url, fcm_url, token_url) = (apns.url.clone(), fcm.url.clone(), fcm.token_url.clone());
    // The database in `dir`, where a test can reach it behind the server's back.
    let database = dir.path().join("tributary.db");
    let server = TestServer::spawn_configured(move |config| {
        config.storage.sqlite_path = database;
        config.relay.mqtt.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        config.delivery.apns_url = apns_url.clone();
        config.delivery.apns_sandbox_url = apns_url;
        config.delivery.fcm_url = fcm_url;
        config.delivery.fcm_token_url = token_url;
        config.delivery.push_ca_file = ca.to_string_lossy().into_owned();
        // The Web Push fake is on loopback, over plain HTTP.
        config.delivery.allow_http = true;
        config.delivery.allowed_private_ranges = vec!["127.0.0.0/8".into()];
        config.delivery.poll_interval_ms = 20;
        config.delivery.feed_poll_interval_ms = 20;
        config.delivery.per_endpoint_concurrency = 16;
    })
    .await;
    // Through the management API, as a tenant sets them.
    let base = format!("/v1/tenants/{}/apps/{}/push-credentials", server.tenant_id(), server.app_id());
    let apns_body =
        json!({"team_id": TEAM, "key_id": KEY_ID, "topic": "com.example.shop", "key": apns_key.private_pem});
    let fcm_body = json!({"service_account": serde_json::from_str::<Value>(&fcm_key.service_account("shop-7")).unwrap()});
    let web_body = json!({"subject": "mailto:ops@example.com", "private_key": vapid_key.private_pem});
    for (service, body) in [("apns", apns_body), ("fcm", fcm_body), ("webpush", web_body)] {
        let (status, set) =
            server.manage("PUT", &format!("{base}/{service}"), server.operator_token(), Some(&body)).await;
        assert_eq!(status, 200, "{service}: {set}");
    }
    (server, apns, fcm, web, dir)
}

#[tokio::test]
async fn a_push_to_a_channel_reaches_each_subscribed_device_once_through_its_service() {
    let (server, apns, fcm, web, _dir) = setup().await;
    let grant: &[(&str, &[&str])] = &[("orders:*", &["push_subscribe"])];
    let (alice, bob, carol) = (
        server.token("alice", grant).await,
        server.token("bob", grant).await,
        server.token("carol", grant).await,
    );
    let browser = web.subscribe();
    let registrations = [
        (&alice, json!({"platform": "apns", "token": "a1".repeat(32)})),
        (&bob, json!({"platform": "fcm", "token": "bobs-fcm-token"})),
        (
            &carol,
            json!({"platform": "web", "subscription": {"endpoint": browser.endpoint,
                        "keys": {"p256dh": browser.p256dh, "auth": browser.auth}}}),
        ),
    ];
    for (token, body) in registrations {
        let (status, device) = call(&server, "/v1/push/devices", token, body, None).await;
        assert_eq!(status, 200, "{device}");
        let subscribe = json!({"client_id": device["client_id"]});
        let (status, answer) =
            call(&server, "/v1/push/channels/orders:42/subscriptions", token, subscribe, None).await;
        assert_eq!(status, 204, "{answer}");
    }
    // Dave's device is not subscribed: the push does not reach it.
    let dave = server.token("dave", grant).await;
    call(&server, "/v1/push/devices", &dave, json!({"platform": "apns", "token": "d4".repeat(32)}), None)
        .await;

    let push = json!({"recipient": {"channel": "orders:42"},
                      "push": {"title": "Order 42", "body": "Your driver is here", "data": {"order": 42}}});
    let key = server.api_key().to_owned();
    let (status, answer) =
        call(&server, "/v1/push/publish", &key, push.clone(), Some("order-42-arrived")).await;
    assert_eq!((status, answer["devices"].as_u64()), (202, Some(3)), "{answer}");
    // The backend retries (its connection dropped): the same push, queued once.
    let (status, again) = call(&server, "/v1/push/publish", &key, push, Some("order-42-arrived")).await;
    assert_eq!((status, &again["push_id"]), (202, &answer["push_id"]));

    eventually("each service got its device's push", Duration::from_secs(10), || async {
        !apns.received().is_empty() && !fcm.received().is_empty() && !web.received().is_empty()
    })
    .await
    .unwrap();
    assert_eq!(apns.received()[0].device_token, "a1".repeat(32));
    assert_eq!(apns.received()[0].payload["aps"]["alert"]["title"], "Order 42");
    assert_eq!(fcm.received()[0]["token"], "bobs-fcm-token");
    let shown: Value = serde_json::from_slice(&web.received()[0].plaintext).unwrap();
    assert_eq!(shown["body"], "Your driver is here");
    // Each once: the retried request queued nothing more (each attempt is logged once the
    // worker records its group).
    let (store, tenant, app) = (server.store(), server.tenant_id(), server.app_id());
    eventually("every attempt is logged", Duration::from_secs(10), || async {
        let mut logged = 0;
        for service in ["apns", "fcm", "webpush"] {
            let target = tributary_delivery::push::message::target_id(app, service);
            logged += store.delivery_log(tenant, &target, 10).await.unwrap().len();
        }
        logged >= 3
    })
    .await
    .unwrap();
    for service in ["apns", "fcm", "webpush"] {
        let target = tributary_delivery::push::message::target_id(app, service);
        let log = store.delivery_log(tenant, &target, 10).await.unwrap();
        assert_eq!(
            log.iter().map(|a| a.record.outcome.as_str()).collect::<Vec<_>>(),
            ["delivered"],
            "{service}"
        );
    }
    assert_eq!((apns.received().len(), fcm.received().len(), web.received().len()), (1, 1, 1));
}

#[tokio::test]
async fn bad_direct_pushes_are_refused_with_the_reason_and_queue_nothing() {
    let (server, apns, _fcm, _web, _dir) = setup().await;
    let key = server.api_key().to_owned();
    let alice = server.token("alice", &[("orders:*", &["push_subscribe"])]).await;
    let (_, device) = call(
        &server,
        "/v1/push/devices",
        &alice,
        json!({"platform": "apns", "token": "a1".repeat(32)}),
        None,
    )
    .await;
    let id = device["id"].as_str().unwrap();
    let title = json!({"title": "hi"});
    for (body, why) in [
        (json!({"recipient": {}, "push": title}), "exactly one"),
        (json!({"recipient": {"device_id": id, "client_id": "alice"}, "push": title}), "exactly one"),
        (json!({"recipient": {"device_id": id}, "push": {}}), "no title"),
        (json!({"recipient": {"device_id": id}, "push": {"title": "hi", "priority": "urgent"}}), "priority"),
        (json!({"recipient": {"device_id": id}, "push": {"body": "x".repeat(5000)}}), "over its limit"),
        (json!({"recipient": {"channel": "no spaces"}, "push": title}), ""),
    ] {
        let (status, answer) = call(&server, "/v1/push/publish", &key, body.clone(), None).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap_or_default().contains(why), "{body}: {answer}");
    }
    let (status, _) = call(
        &server,
        "/v1/push/publish",
        &key,
        json!({"recipient": {"device_id": "dev_nope"}, "push": title}),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &server,
        "/v1/push/publish",
        &alice,
        json!({"recipient": {"device_id": id}, "push": title}),
        None,
    )
    .await;
    assert_eq!(status, 403, "a client cannot push");
    let (status, answer) = call(
        &server,
        "/v1/push/publish",
        &key,
        json!({"recipient": {"client_id": "nobody"}, "push": title}),
        None,
    )
    .await;
    assert_eq!((status, answer["devices"].as_u64()), (202, Some(0)), "no device: nothing to queue");
    // Jobs are queued before the answer: a claim of everything due finds none.
    let now = tributary_delivery::worker::now_ms();
    let queued =
        server.store().claim_deliveries("probe", now + 60_000, now + 120_000, 100, 100, "").await.unwrap();
    assert!(queued.is_empty(), "{queued:?}");
    assert_eq!(apns.requests(), 0, "nothing was sent");
}

#[tokio::test]
async fn a_publish_with_a_push_section_reaches_live_subscribers_and_the_channels_devices_once() {
    let (server, apns, _fcm, _web, _dir) = setup().await;
    let alice = server.token("alice", &[("orders:*", &["push_subscribe", "subscribe"])]).await;
    let (status, _) = call(
        &server,
        "/v1/push/devices",
        &alice,
        json!({"platform": "apns", "token": "a1".repeat(32)}),
        None,
    )
    .await;
    assert_eq!(status, 200);
    call(&server, "/v1/push/channels/orders:7/subscriptions", &alice, json!({"client_id": "alice"}), None)
        .await;
    let mut live = server.ws(&alice).await;
    live.request(json!({"op": "subscribe", "channel": "orders:7"})).await.unwrap();

    let key = server.api_key().to_owned();
    let body = json!({"data": {"status": "arriving"}, "push": {"title": "Order 7", "body": "Arriving now"}});
    let (status, published) =
        call(&server, "/v1/channels/orders:7/messages", &key, body.clone(), Some("o7-arriving")).await;
    assert_eq!(status, 200, "{published}");
    assert_eq!(published["push"]["devices"], 1, "{published}");
    let (_, again) = call(&server, "/v1/channels/orders:7/messages", &key, body, Some("o7-arriving")).await;
    assert_eq!(
        (&again["duplicate"], &again["push"]["push_id"]),
        (&json!(true), &published["push"]["push_id"])
    );

    let got = live.messages(1).await.unwrap();
    assert_eq!(
        got[0]["data"],
        json!({"status": "arriving"}),
        "subscribers get the message, not the push section"
    );
    assert!(got[0].get("push").is_none());
    eventually("the push reaches the iPhone", Duration::from_secs(10), || async {
        !apns.received().is_empty()
    })
    .await
    .unwrap();
    assert_eq!(apns.received()[0].payload["aps"]["alert"]["title"], "Order 7");
    // The retried publish queued no second push.
    let target = tributary_delivery::push::message::target_id(server.app_id(), "apns");
    eventually("the push is logged", Duration::from_secs(10), || async {
        !server.store().delivery_log(server.tenant_id(), &target, 10).await.unwrap().is_empty()
    })
    .await
    .unwrap();
    assert_eq!(server.store().delivery_log(server.tenant_id(), &target, 10).await.unwrap().len(), 1);

    // A push section no service would take: refused, and nothing is published.
    let (status, answer) = call(
        &server,
        "/v1/channels/orders:7/messages",
        &key,
        json!({"data": 1, "push": {"title": "x", "priority": "urgent"}}),
        None,
    )
    .await;
    assert_eq!((status, answer["error"]["name"].as_str()), (400, Some("invalid_parameter")), "{answer}");
    let (_, history) = server.get("/v1/channels/orders:7/history").await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(1), "{history}");
}

#[tokio::test]
async fn a_clients_websocket_publish_with_a_push_section_pushes_to_the_channels_devices() {
    let (server, apns, _fcm, _web, _dir) = setup().await;
    let device = json!({"platform": "apns", "token": "c3".repeat(32), "client_id": "courier"});
    let key = server.api_key().to_owned();
    assert_eq!(call(&server, "/v1/push/devices", &key, device, None).await.0, 200);
    let subscribe = json!({"client_id": "courier"});
    assert_eq!(
        call(&server, "/v1/push/channels/orders:42/subscriptions", &key, subscribe, None).await.0,
        204
    );

    // Publishing alone does not allow pushing: the message is not published either.
    let plain = server.token("shop", &[("orders:*", &["publish", "history"])]).await;
    let mut ws = server.ws(&plain).await;
    let frame = json!({"op": "publish", "channel": "orders:42", "data": {"n": 1},
                       "push": {"title": "Order 42", "body": "Picked up"}});
    let refused = ws.request(frame.clone()).await.unwrap();
    assert_eq!(refused["error"]["name"], "forbidden", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("push_publish"), "{refused}");
    // A push no service would take is refused before anything is published.
    let pusher = server.token("shop", &[("orders:*", &["publish", "push_publish", "history"])]).await;
    let mut ws = server.ws(&pusher).await;
    let empty =
        json!({"op": "publish", "channel": "orders:42", "data": {"n": 2}, "push": {"priority": "now"}});
    let refused = ws.request(empty).await.unwrap();
    assert_eq!(refused["error"]["name"], "invalid_parameter", "{refused}");
    let history = ws.request(json!({"op": "history", "channel": "orders:42"})).await.unwrap();
    assert_eq!(history["result"]["messages"], json!([]), "nothing was published: {history}");

    let published = ws.request(frame).await.unwrap();
    assert_eq!(published["result"]["push"]["devices"], 1, "{published}");
    eventually("the courier's phone gets the push", Duration::from_secs(10), || async {
        !apns.received().is_empty()
    })
    .await
    .unwrap();
    assert_eq!(apns.received()[0].payload["aps"]["alert"]["body"], "Picked up");
    assert_eq!(apns.received()[0].device_token, "c3".repeat(32));
}

#[tokio::test]
async fn the_web_push_example_page_is_served_and_clients_read_the_apps_vapid_key() {
    let (server, _apns, _fcm, _web, _dir) = setup().await;
    let get = |path: &str, bearer: Option<String>| {
        let mut request = server.http().get(format!("{}{path}", server.http_url()));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        async move { request.send().await.unwrap() }
    };
    let page = get("/examples/web-push.html", None).await;
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    for needed in
        ["/examples/web-push-sw.js", "/v1/push/web-key", "/v1/push/devices", "pushManager.subscribe"]
    {
        assert!(html.contains(needed), "the page uses {needed}");
    }
    let worker = get("/examples/web-push-sw.js", None).await;
    assert_eq!(worker.headers()["service-worker-allowed"], "/examples/");
    assert!(worker.text().await.unwrap().contains("showNotification"));

    // The key a page subscribes with is the one the credentials' answer showed.
    let path = format!("/v1/tenants/{}/apps/{}/push-credentials", server.tenant_id(), server.app_id());
    let (_, listed) = server.manage("GET", &path, server.operator_token(), None).await;
    let web = listed.as_array().unwrap().iter().find(|c| c["service"] == "webpush").unwrap();
    let token = server.token("browser", &[("alerts:*", &["push_subscribe"])]).await;
    let key: Value = get("/v1/push/web-key", Some(token)).await.json().await.unwrap();
    assert_eq!(key["public_key"], web["settings"]["public_key"], "{key}");
    // A token without push_subscribe is refused; an app without Web Push credentials says so.
    let plain = server.token("browser", &[("alerts:*", &["subscribe"])]).await;
    assert_eq!(get("/v1/push/web-key", Some(plain)).await.status().as_u16(), 403);
    let (status, _) =
        server.manage("DELETE", &format!("{path}/webpush"), server.operator_token(), None).await;
    assert_eq!(status, 204);
    let missing = get("/v1/push/web-key", Some(server.api_key().to_owned())).await;
    assert_eq!(missing.status().as_u16(), 409);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["name"], "not_configured", "{error}");
}

#[tokio::test]
async fn a_publish_whose_pushes_cannot_be_queued_answers_503_and_its_retry_queues_them_once() {
    let (server, apns, _fcm, _web, dir) = setup().await;
    let key = server.api_key().to_owned();
    let device = json!({"platform": "apns", "token": "d5".repeat(32), "client_id": "courier"});
    assert_eq!(call(&server, "/v1/push/devices", &key, device, None).await.0, 200);
    let subscribe = json!({"client_id": "courier"});
    assert_eq!(call(&server, "/v1/push/channels/orders:7/subscriptions", &key, subscribe, None).await.0, 204);
    // The delivery queue goes away behind the server's back (a disk gone read-only, a database
    // failing over): the message is stored, its pushes cannot be queued.
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}", dir.path().join("tributary.db").display());
    let raw = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("ALTER TABLE delivery_jobs RENAME TO delivery_jobs_away").execute(&raw).await.unwrap();
    let message = json!({"data": {"status": "picked up"}, "push": {"title": "Order 7", "body": "Picked up"}});
    let (status, answer) =
        call(&server, "/v1/channels/orders:7/messages", &key, message.clone(), Some("order-7")).await;
    assert_eq!((status, answer["error"]["name"].as_str()), (503, Some("unavailable")), "{answer}");
    sqlx::query("ALTER TABLE delivery_jobs_away RENAME TO delivery_jobs").execute(&raw).await.unwrap();
    // The retry (same key) stores nothing twice and queues the pushes.
    let (status, answer) =
        call(&server, "/v1/channels/orders:7/messages", &key, message, Some("order-7")).await;
    assert_eq!(
        (status, answer["duplicate"].as_bool(), answer["push"]["devices"].as_u64()),
        (200, Some(true), Some(1)),
        "{answer}"
    );
    eventually("the courier's phone gets the push", Duration::from_secs(10), || async {
        !apns.received().is_empty()
    })
    .await
    .unwrap();
    let (_, history) = server.get("/v1/channels/orders:7/history").await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(1), "stored once: {history}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(apns.received().len(), 1, "pushed once");
}

#[tokio::test]
async fn an_mqtt_5_publish_carries_its_push_section_in_a_user_property() {
    use tributary_mqtt::{Properties, QoS, Version};
    use tributary_testkit::MqttClient;
    use tributary_testkit::mqtt::ConnectOptions;
    let (server, apns, _fcm, _web, _dir) = setup().await;
    let key = server.api_key().to_owned();
    let device = json!({"platform": "apns", "token": "e6".repeat(32), "client_id": "courier"});
    assert_eq!(call(&server, "/v1/push/devices", &key, device, None).await.0, 200);
    let subscribe = json!({"client_id": "courier"});
    assert_eq!(
        call(&server, "/v1/push/channels/orders%2F9/subscriptions", &key, subscribe, None).await.0,
        204
    );
    let connect = |client: &'static str, rights: &'static [&'static str]| {
        let server = &server;
        async move {
            let token = server.token(client, &[("orders/*", rights)]).await;
            let options = ConnectOptions::new(Version::V5, client, server.app_id(), &token);
            MqttClient::connect_ok(server.mqtt_addr(), options).await.unwrap()
        }
    };
    let mut watcher = connect("watcher", &["subscribe"]).await;
    watcher.subscribe("orders/9", QoS::AtMostOnce).await.unwrap();
    let with_push = |push: &str| Properties {
        user: vec![("x".into(), "1".into()), ("tributary-push".into(), push.to_owned())],
        ..Properties::default()
    };
    let section = r#"{"title": "Order 9", "body": "On its way"}"#;
    // Publishing alone does not allow pushing: not authorized, nothing published.
    let mut plain = connect("shop", &["publish"]).await;
    assert_eq!(
        plain.publish_with("orders/9", b"1", QoS::AtLeastOnce, false, with_push(section)).await.unwrap(),
        0x87
    );
    // A section that is not JSON, or that no service would take: payload format invalid.
    let mut pusher = connect("pusher", &["publish", "push_publish"]).await;
    assert_eq!(
        pusher.publish_with("orders/9", b"2", QoS::AtLeastOnce, false, with_push("{")).await.unwrap(),
        0x99
    );
    let empty = r#"{"priority": "now"}"#;
    assert_eq!(
        pusher.publish_with("orders/9", b"3", QoS::AtLeastOnce, false, with_push(empty)).await.unwrap(),
        0x99
    );
    assert!(watcher.quiet_for(Duration::from_millis(200)).await.unwrap(), "nothing was published");

    assert_eq!(
        pusher.publish_with("orders/9", b"4", QoS::AtLeastOnce, false, with_push(section)).await.unwrap(),
        0
    );
    let got = watcher.recv_publish().await.unwrap();
    assert_eq!(
        (&got.payload[..], got.properties.user.clone()),
        (&b"4"[..], vec![("x".to_owned(), "1".to_owned())])
    );
    eventually("the courier's phone gets the push", Duration::from_secs(10), || async {
        !apns.received().is_empty()
    })
    .await
    .unwrap();
    assert_eq!(apns.received()[0].payload["aps"]["alert"]["body"], "On its way");
}
