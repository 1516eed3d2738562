//! MQTT: the same channels, tokens, presence and history as every other transport, spoken by a
//! raw client that shows every packet (conformance) and by real clients (`mosquitto_pub`,
//! `mosquitto_sub`).

use std::time::Duration;

use serde_json::json;
use tributary_mqtt::{Packet, Properties, QoS, Version};
use tributary_testkit::mqtt::ConnectOptions;
use tributary_testkit::{MqttClient, TestServer};

const ALL: &[&str] = &["subscribe", "publish", "presence", "history"];

/// Connects `client_id` with every right on every channel.
async fn device(server: &TestServer, version: Version, client_id: &str) -> MqttClient {
    let token = server.token(client_id, &[("*", ALL)]).await;
    MqttClient::connect_ok(
        server.mqtt_addr(),
        ConnectOptions::new(version, client_id, server.app_id(), &token),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn mqtt_clients_publish_and_subscribe_at_every_qos_in_both_versions() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    for version in [Version::V311, Version::V5] {
        let mut sub = device(&server, version, &format!("sub-{version:?}")).await;
        let mut publisher = device(&server, version, &format!("pub-{version:?}")).await;
        let topic = format!("devices/{version:?}/temp");
        assert_eq!(sub.subscribe(&topic, QoS::ExactlyOnce).await.unwrap(), vec![2]);
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let payload = format!("{{\"qos\":{}}}", qos as u8);
            assert_eq!(publisher.publish(&topic, payload.as_bytes(), qos, false).await.unwrap(), 0);
            let got = sub.recv_and_ack().await.unwrap();
            assert_eq!(
                (got.topic.as_str(), &got.payload[..], got.qos),
                (topic.as_str(), payload.as_bytes(), qos)
            );
            assert!(!got.retain && !got.dup);
        }
    }
}

#[tokio::test]
async fn messages_cross_protocols_and_non_json_payloads_arrive_as_binary() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let mut ws = server.ws(&server.all_rights("browser").await).await;
    ws.request(json!({"op": "subscribe", "channel": "devices/7/state"})).await.unwrap();
    let mut device = device(&server, Version::V5, "device-7").await;
    device.subscribe("devices/7/commands", QoS::AtLeastOnce).await.unwrap();

    device.publish("devices/7/state", br#"{"on":true}"#, QoS::AtLeastOnce, false).await.unwrap();
    device.publish("devices/7/state", b"21.5 C", QoS::AtMostOnce, false).await.unwrap();
    let m = ws.messages(2).await.unwrap();
    assert_eq!(m[0]["data"], json!({"on": true}));
    assert_eq!(m[0]["client_id"], "device-7");
    assert_eq!((m[1]["binary"].clone(), m[1]["data"].clone()), (json!(true), json!("MjEuNSBD")));

    ws.request(json!({"op": "publish", "channel": "devices/7/commands", "data": {"reboot": true}}))
        .await
        .unwrap();
    server.publish("devices/7/commands", json!("firmware 2.1")).await;
    let first = device.recv_and_ack().await.unwrap();
    assert_eq!(&first.payload[..], br#"{"reboot":true}"#);
    assert_eq!(first.qos, QoS::AtLeastOnce, "other protocols deliver at the subscription's QoS");
    let second = device.recv_and_ack().await.unwrap();
    assert_eq!(&second.payload[..], br#""firmware 2.1""#);
}

#[tokio::test]
async fn a_retained_message_reaches_a_device_the_moment_it_subscribes_and_an_empty_one_clears_it() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let mut ops = device(&server, Version::V5, "ops").await;
    ops.publish("firmware/latest", b"v2.1", QoS::AtLeastOnce, true).await.unwrap();
    ops.publish("firmware/beta", b"v3.0-rc1", QoS::AtLeastOnce, true).await.unwrap();
    ops.publish("firmware/nightly", b"not retained", QoS::AtLeastOnce, false).await.unwrap();

    let mut d = device(&server, Version::V311, "d1").await;
    d.subscribe("firmware/latest", QoS::AtLeastOnce).await.unwrap();
    let got = d.recv_and_ack().await.unwrap();
    assert_eq!((&got.payload[..], got.retain), (&b"v2.1"[..], true));
    d.subscribe("firmware/+", QoS::AtMostOnce).await.unwrap();
    let mut wildcard = Vec::new();
    for _ in 0..2 {
        let p = d.recv_and_ack().await.unwrap();
        assert!(p.retain);
        wildcard.push(p.topic);
    }
    wildcard.sort();
    assert_eq!(wildcard, ["firmware/beta", "firmware/latest"]);
    assert!(d.quiet_for(Duration::from_millis(300)).await.unwrap(), "non-retained messages are not replayed");

    ops.publish("firmware/beta", b"", QoS::AtLeastOnce, true).await.unwrap();
    let cleared = d.recv_and_ack().await.unwrap();
    assert_eq!((cleared.topic.as_str(), cleared.payload.len(), cleared.retain), ("firmware/beta", 0, false));
    let mut late = device(&server, Version::V5, "late").await;
    late.subscribe("firmware/#", QoS::AtMostOnce).await.unwrap();
    let only = late.recv_publish().await.unwrap();
    assert_eq!(only.topic, "firmware/latest");
    assert!(late.quiet_for(Duration::from_millis(300)).await.unwrap(), "the cleared one is gone");
}

#[tokio::test]
async fn mosquitto_clients_talk_to_tributary_and_to_websocket_clients() {
    if which("mosquitto_pub").is_none() {
        panic!("mosquitto_pub is not installed (scripts/test installs mosquitto-clients)");
    }
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let port = server.mqtt_addr().port().to_string();
    let sub_token = server.token("sensor-sub", &[("sensors/*", &["subscribe"])]).await;
    let pub_token = server.token("sensor-1", &[("sensors/*", &["publish"])]).await;
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1", "-C", "2", "-v"])
        .args(["-i", "sensor-sub", "-u", server.app_id(), "-P", &sub_token, "-t", "sensors/+/temp"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The subscription is live once the server shows it in presence? It has no presence for
    // wildcard filters: wait for the hub instead, through a probe publish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv311", "-q", "1"])
        .args([
            "-i",
            "sensor-1",
            "-u",
            server.app_id(),
            "-P",
            &pub_token,
            "-t",
            "sensors/1/temp",
            "-m",
            "21.5",
        ])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    server.publish("sensors/2/temp", json!({"c": 19})).await;
    let output =
        tokio::time::timeout(Duration::from_secs(10), sub.wait_with_output()).await.unwrap().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().collect::<Vec<_>>(), ["sensors/1/temp 21.5", "sensors/2/temp {\"c\":19}"]);

    // A token without the right is refused with the MQTT 5 reason.
    let output = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1"])
        .args([
            "-i",
            "sensor-sub",
            "-u",
            server.app_id(),
            "-P",
            &sub_token,
            "-t",
            "sensors/1/temp",
            "-m",
            "x",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not authorised") || stderr.contains("Not authorized"), "{stderr}");
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.exists())
}

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
