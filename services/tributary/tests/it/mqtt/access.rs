//! Who gets in: CONNECT's refusals and their reason codes, revoked tokens, anonymous access,
//! the connection rate.

#[allow(clippy::wildcard_imports)]
use super::*;

#[tokio::test]
async fn connect_refusals_carry_their_reason_codes() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let addr = server.mqtt_addr();
    let token = server.token("meter-1", &[("meters/*", &["publish"])]).await;
    let cases = [
        (ConnectOptions::new(Version::V5, "meter-1", server.app_id(), "not-a-token"), 0x86),
        (ConnectOptions::new(Version::V5, "meter-2", server.app_id(), &token), 0x85),
        (ConnectOptions::new(Version::V5, "meter-1", "another-app", &token), 0x86),
        (ConnectOptions::new(Version::V5, "meter-#", server.app_id(), &token), 0x85),
        (ConnectOptions::new(Version::V311, "meter-1", server.app_id(), "bad"), 0x04),
        (
            ConnectOptions::new(Version::V5, "meter-1", server.app_id(), &token).will(
                "alarms/x",
                b"gone",
                QoS::AtMostOnce,
                false,
                None,
            ),
            0x87,
        ),
    ];
    for (options, code) in cases {
        let (_, ack) = MqttClient::connect(addr, options.clone()).await.unwrap();
        assert_eq!(ack.code, code, "{options:?}");
    }
    // An empty client id gets the token's.
    let (_, ack) = MqttClient::connect(addr, ConnectOptions::new(Version::V5, "", server.app_id(), &token))
        .await
        .unwrap();
    assert_eq!((ack.code, ack.properties.assigned_client_id.as_deref()), (0, Some("meter-1")));
    let _ = Properties::default();
    let _ = Packet::PingReq;
}

#[tokio::test]
async fn revoking_a_devices_token_disconnects_it_with_not_authorized() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let mut d = device(&server, Version::V5, "stolen").await;
    d.subscribe("cmd", QoS::AtMostOnce).await.unwrap();
    // Another token of the client, issued before the revocation (one minted after it, in the
    // next second, is valid by design: the cut-off is the revocation's second plus one).
    let token = server.token("stolen", &[("*", ALL)]).await;
    let path = format!("/v1/tenants/{}/apps/{}/revocations", server.tenant_id(), server.app_id());
    let (status, reply) =
        server.manage("POST", &path, server.operator_token(), Some(&json!({"client_id": "stolen"}))).await;
    assert!((200..300).contains(&status), "{reply}");
    match d.recv_within(Duration::from_secs(2)).await.unwrap() {
        Some(Packet::Disconnect(dis)) => assert_eq!(dis.code, 0x87),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    let (_, ack) = MqttClient::connect(
        server.mqtt_addr(),
        ConnectOptions::new(Version::V5, "stolen", server.app_id(), &token),
    )
    .await
    .unwrap();
    assert_eq!(ack.code, 0x87, "the revoked client stays out");
}

#[tokio::test]
async fn anonymous_access_when_configured_with_its_grants_and_deny_list() {
    let server = TestServer::spawn_mqtt(|relay| {
        relay.mqtt.anonymous_app = "dev".into();
        relay.mqtt.anonymous_grants = vec!["*=subscribe,publish".into()];
        relay.mqtt.anonymous_deny = vec!["test/nosubscribe".into()];
    })
    .await;
    let addr = server.mqtt_addr();
    let mut options = ConnectOptions::new(Version::V5, "clean retained", "", "");
    options.connect.username = None;
    options.connect.password = None;
    let mut a = MqttClient::connect_ok(addr, options.clone()).await.unwrap();
    assert_eq!(a.subscribe("test/nosubscribe", QoS::AtMostOnce).await.unwrap(), vec![0x80]);
    assert_eq!(a.subscribe("#", QoS::AtLeastOnce).await.unwrap(), vec![1]);
    assert_eq!(a.publish("test/nosubscribe", b"x", QoS::AtLeastOnce, false).await.unwrap(), 0x80);
    server.publish("test/nosubscribe", json!("hidden")).await;
    a.publish("/TopicA", b"hello", QoS::AtLeastOnce, false).await.unwrap();
    let got = a.recv_and_ack().await.unwrap();
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("/TopicA", &b"hello"[..]), "the denied one skipped");
    // An empty client id is assigned one.
    options.connect.client_id = String::new();
    let (_, ack) = MqttClient::connect(addr, options.clone()).await.unwrap();
    assert!(ack.properties.assigned_client_id.is_some_and(|id| id.starts_with("anon-")));
    // A token still works as usual beside anonymous access, and an anonymous client naming a
    // device's client id neither takes its session over nor resumes it.
    let mut d = device(&server, Version::V311, "with-token").await;
    d.subscribe("x", QoS::AtMostOnce).await.unwrap();
    options.connect.client_id = "with-token".into();
    options.connect.clean_start = false;
    options.connect.properties.session_expiry = Some(60);
    let (_, ack) = MqttClient::connect(addr, options).await.unwrap();
    assert_eq!((ack.code, ack.session_present), (0, false));
    server.publish("x", json!("still mine")).await;
    assert_eq!(d.recv_publish().await.unwrap().payload, r#""still mine""#);
}

#[tokio::test]
async fn connections_beyond_the_rate_are_refused_with_0x9f_and_come_in_later() {
    let server = TestServer::spawn_mqtt(|relay| relay.mqtt.max_connections_per_second = 2).await;
    let token = server.token("rated", &[("*", ALL)]).await;
    let options = || ConnectOptions::new(Version::V5, "rated", server.app_id(), &token);
    let mut codes = Vec::new();
    for _ in 0..3 {
        let (_client, ack) = MqttClient::connect(server.mqtt_addr(), options()).await.unwrap();
        codes.push(ack.code);
    }
    assert_eq!(codes, [0, 0, 0x9F], "two at once, the third refused");
    let (_, ack) = MqttClient::connect(
        server.mqtt_addr(),
        ConnectOptions::new(Version::V311, "rated", server.app_id(), &token),
    )
    .await
    .unwrap();
    assert_eq!(ack.code, 0x03, "3.1.1: server unavailable");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, ack) = MqttClient::connect(server.mqtt_addr(), options()).await.unwrap();
    assert_eq!(ack.code, 0, "the rate refills");
}
