//! MQTT: the same channels, tokens, presence and history as every other transport, spoken by a
//! raw client that shows every packet (conformance) and by real clients (`mosquitto_pub`,
//! `mosquitto_sub`).

use std::net::SocketAddr;
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

/// Two nodes on one Redis, each with an MQTT listener.
async fn mqtt_cluster() -> Vec<TestServer> {
    TestServer::spawn_cluster(2, |relay| relay.mqtt.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
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
    // stdbuf: line-buffered, so each line comes as it is printed, not when the process exits.
    let mut sub = tokio::process::Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1", "-C", "2", "-v", "-d"])
        .args(["-i", "sensor-sub", "-u", server.app_id(), "-P", &sub_token, "-t", "sensors/+/temp"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // With -d mosquitto_sub says when its SUBACK came: the subscription is live from then on.
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(sub.stdout.take().unwrap()));
    let mut next_line =
        async || tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap();
    while let Some(line) = next_line().await {
        if line.contains("received SUBACK") {
            break;
        }
    }
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
    // Every line that is not mosquitto_sub's own debug output, until it exits after two.
    let mut received = Vec::new();
    while let Some(line) = next_line().await {
        if !line.starts_with("Client ") && !line.starts_with("Subscribed (") {
            received.push(line);
        }
    }
    assert_eq!(received, ["sensors/1/temp 21.5", "sensors/2/temp {\"c\":19}"]);
    let status = tokio::time::timeout(Duration::from_secs(10), sub.wait()).await.unwrap().unwrap();
    assert!(status.success());

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

/// Connects `client_id` with a persistent session.
async fn persistent(
    server: &TestServer,
    version: Version,
    client_id: &str,
) -> (MqttClient, tributary_mqtt::ConnAck) {
    let token = server.token(client_id, &[("*", ALL)]).await;
    let options = ConnectOptions::new(version, client_id, server.app_id(), &token).persistent(300);
    MqttClient::connect(server.mqtt_addr(), options).await.unwrap()
}

#[tokio::test]
async fn a_persistent_session_gets_what_came_while_it_was_away_and_its_unacknowledged_messages_again() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    for version in [Version::V311, Version::V5] {
        let id = format!("truck-{version:?}");
        let (mut truck, ack) = persistent(&server, version, &id).await;
        assert!(!ack.session_present);
        truck.subscribe(&format!("cmd/{id}"), QoS::AtLeastOnce).await.unwrap();
        truck.subscribe("alerts/+", QoS::ExactlyOnce).await.unwrap();
        server.publish(&format!("cmd/{id}"), json!("m1")).await;
        let unacked = truck.recv_publish().await.unwrap();
        assert_eq!((&unacked.payload[..], unacked.dup), (&br#""m1""#[..], false));
        // The truck drives into a tunnel without acknowledging m1; the server parks its session.
        truck.drop_connection();
        let sessions = &server.relay().mqtt_sessions;
        tributary_testkit::eventually("the session parked", Duration::from_secs(5), || async {
            sessions.parked_in(server.app_id()) == 1
        })
        .await
        .unwrap();
        server.publish(&format!("cmd/{id}"), json!("m2")).await;
        server.publish("alerts/storm", json!("m3")).await;

        let (mut truck, ack) = persistent(&server, version, &id).await;
        assert!(ack.session_present, "{version:?}");
        let again = truck.recv_and_ack().await.unwrap();
        assert_eq!(
            (&again.payload[..], again.dup, again.packet_id),
            (&br#""m1""#[..], true, unacked.packet_id)
        );
        let m2 = truck.recv_and_ack().await.unwrap();
        assert_eq!(&m2.payload[..], br#""m2""#);
        let m3 = truck.recv_and_ack().await.unwrap();
        assert_eq!((&m3.payload[..], m3.qos), (&br#""m3""#[..], QoS::ExactlyOnce));
        assert!(truck.quiet_for(Duration::from_millis(300)).await.unwrap(), "nothing twice");
        truck.disconnect().await.unwrap();

        // A clean start throws the session away.
        let token = server.token(&id, &[("*", ALL)]).await;
        let (clean, ack) = MqttClient::connect(
            server.mqtt_addr(),
            ConnectOptions::new(version, &id, server.app_id(), &token),
        )
        .await
        .unwrap();
        assert!(!ack.session_present);
        drop(clean);
    }
}

#[tokio::test]
async fn a_session_whose_queue_overflowed_while_away_recovers_its_channels_from_history() {
    let server = TestServer::spawn_mqtt(|relay| relay.outbound_queue_len = 8).await;
    let (mut meter, _) = persistent(&server, Version::V5, "meter-9").await;
    meter.subscribe("meters/9/config", QoS::AtLeastOnce).await.unwrap();
    meter.disconnect().await.unwrap();
    for n in 0..20 {
        server.publish("meters/9/config", json!(n)).await;
    }
    let (mut meter, ack) = persistent(&server, Version::V5, "meter-9").await;
    assert!(ack.session_present);
    for n in 0..20 {
        let got = meter.recv_and_ack().await.unwrap();
        assert_eq!(got.payload, n.to_string(), "every message, in order, from history");
    }
    assert!(meter.quiet_for(Duration::from_millis(300)).await.unwrap());
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let (mut first, _) = persistent(&server, Version::V5, "pump-3").await;
    first.subscribe("pumps/3/cmd", QoS::AtLeastOnce).await.unwrap();
    let (mut second, ack) = persistent(&server, Version::V5, "pump-3").await;
    assert!(ack.session_present);
    match first.recv().await.unwrap() {
        Packet::Disconnect(d) => assert_eq!(d.code, 0x8E, "session taken over"),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // The testkit does not take a closed connection for a quiet one.
    assert!(first.quiet_for(Duration::from_millis(500)).await.is_err(), "the first connection was closed");
    server.publish("pumps/3/cmd", json!("start")).await;
    assert_eq!(second.recv_and_ack().await.unwrap().payload, r#""start""#);
    // Another app's client with the same client id is another session entirely.
    let other = server.create_app("other").await;
    let token = server.token_for(&other, "pump-3", &[("*", ALL)]).await;
    let (_, ack) = MqttClient::connect(
        server.mqtt_addr(),
        ConnectOptions::new(Version::V5, "pump-3", &other.app_id, &token).persistent(60),
    )
    .await
    .unwrap();
    assert_eq!((ack.code, ack.session_present), (0, false));
    assert!(second.quiet_for(Duration::from_millis(200)).await.unwrap(), "not taken over from another app");
}

#[tokio::test]
async fn a_will_is_published_when_a_device_vanishes_and_not_after_a_disconnect() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let mut watcher = device(&server, Version::V5, "watcher").await;
    watcher.subscribe("status/+", QoS::AtLeastOnce).await.unwrap();
    let token = server.token("lamp", &[("*", ALL)]).await;
    let addr = server.mqtt_addr();
    let with_will = |version| {
        ConnectOptions::new(version, "lamp", server.app_id(), &token).will(
            "status/lamp",
            b"offline",
            QoS::AtLeastOnce,
            true,
            None,
        )
    };
    let lamp = MqttClient::connect_ok(addr, with_will(Version::V311)).await.unwrap();
    lamp.drop_connection();
    let will = watcher.recv_and_ack().await.unwrap();
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("status/lamp", &b"offline"[..]));
    // Retained: a dashboard that opens later sees the lamp offline at once.
    let mut dashboard = device(&server, Version::V5, "dashboard").await;
    dashboard.subscribe("status/lamp", QoS::AtMostOnce).await.unwrap();
    assert!(dashboard.recv_publish().await.unwrap().retain);

    let lamp = MqttClient::connect_ok(addr, with_will(Version::V5)).await.unwrap();
    lamp.disconnect().await.unwrap();
    assert!(
        watcher.quiet_for(Duration::from_millis(500)).await.unwrap(),
        "a clean DISCONNECT drops the will"
    );
}

#[tokio::test]
async fn a_silent_device_is_dropped_after_one_and_a_half_keep_alives_and_leaves_presence() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let token = server.token("sensor-k", &[("*", ALL)]).await;
    let mut options = ConnectOptions::new(Version::V5, "sensor-k", server.app_id(), &token).will(
        "status/sensor-k",
        b"lost",
        QoS::AtMostOnce,
        false,
        None,
    );
    options.connect.keep_alive = 1;
    let mut sensor = MqttClient::connect_ok(server.mqtt_addr(), options).await.unwrap();
    sensor.subscribe("rooms/kitchen", QoS::AtMostOnce).await.unwrap();
    let mut ws = server.ws(&server.all_rights("app").await).await;
    ws.request(json!({"op": "subscribe", "channel": "status/sensor-k"})).await.unwrap();
    let presence = ws.request(json!({"op": "presence", "channel": "rooms/kitchen"})).await.unwrap();
    assert_eq!(presence["result"]["members"][0]["client_id"], "sensor-k", "{presence}");
    let started = tokio::time::Instant::now();
    // The sensor stops sending anything (no PINGREQ).
    match sensor.recv_within(Duration::from_secs(5)).await.unwrap() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.code, 0x8D, "keep alive timeout"),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1400) && waited < Duration::from_millis(3000), "{waited:?}");
    let will = ws.next_of("message").await.unwrap();
    assert_eq!((will["binary"].clone(), will["data"].clone()), (json!(true), json!("bG9zdA==")));
    let presence = ws.request(json!({"op": "presence", "channel": "rooms/kitchen"})).await.unwrap();
    assert_eq!(presence["result"]["members"], json!([]), "{presence}");
}

#[tokio::test]
async fn a_delayed_will_waits_and_a_reconnect_within_the_delay_cancels_it() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let mut watcher = device(&server, Version::V5, "watcher").await;
    watcher.subscribe("status/#", QoS::AtMostOnce).await.unwrap();
    let token = server.token("gw", &[("*", ALL)]).await;
    let options = || {
        ConnectOptions::new(Version::V5, "gw", server.app_id(), &token).persistent(60).will(
            "status/gw",
            b"gone",
            QoS::AtMostOnce,
            false,
            Some(1),
        )
    };
    let gw = MqttClient::connect_ok(server.mqtt_addr(), options()).await.unwrap();
    gw.drop_connection();
    let mut back = MqttClient::connect_ok(server.mqtt_addr(), options()).await.unwrap();
    // Back in time, then gone for good with a clean DISCONNECT that ends the session: neither
    // the first connection's will nor this one's.
    let end = tributary_mqtt::Disconnect {
        code: 0,
        properties: Properties { session_expiry: Some(0), ..Properties::default() },
    };
    back.send(&Packet::Disconnect(end)).await.unwrap();
    assert!(watcher.quiet_for(Duration::from_millis(1500)).await.unwrap(), "back in time: no will");
    let back = MqttClient::connect_ok(server.mqtt_addr(), options()).await.unwrap();
    back.drop_connection();
    let started = tokio::time::Instant::now();
    let will = watcher.recv_publish().await.unwrap();
    assert_eq!(&will.payload[..], b"gone");
    assert!(started.elapsed() >= Duration::from_millis(800), "{:?}", started.elapsed());
}

#[tokio::test]
async fn wildcard_subscriptions_need_the_subscribe_right_on_everything_they_can_match() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let token = server.token("viewer", &[("sensors/*", &["subscribe"])]).await;
    let mut viewer = MqttClient::connect_ok(
        server.mqtt_addr(),
        ConnectOptions::new(Version::V5, "viewer", server.app_id(), &token),
    )
    .await
    .unwrap();
    // `sensors/#` also matches `sensors` itself, which the grant does not cover; `#` matches
    // everything; `secret/x` is simply not granted.
    let subscriptions =
        ["sensors/+", "sensors/#", "#", "secret/x", "+/temp", "sensors/a+", "$share/g/secret/+", "$share/g"];
    let mut codes = Vec::new();
    for filter in subscriptions {
        codes.push(viewer.subscribe(filter, QoS::AtMostOnce).await.unwrap()[0]);
    }
    assert_eq!(codes, [0x00, 0x87, 0x87, 0x87, 0x87, 0x8F, 0x87, 0x8F]);
    for channel in ["secret/x", "sensors", "other/temp", "sensors/1"] {
        server.publish(channel, json!(channel)).await;
    }
    let got = viewer.recv_publish().await.unwrap();
    assert_eq!(got.topic, "sensors/1", "nothing refused was ever delivered");
    assert!(viewer.quiet_for(Duration::from_millis(300)).await.unwrap());
    // A 3.1.1 client hears 0x80 for every refusal.
    let mut old = MqttClient::connect_ok(
        server.mqtt_addr(),
        ConnectOptions::new(Version::V311, "viewer", server.app_id(), &token),
    )
    .await
    .unwrap();
    assert_eq!(old.subscribe("#", QoS::AtLeastOnce).await.unwrap(), vec![0x80]);
    // It may not publish: acknowledged (3.1.1 has no way to say no), not stored, still connected.
    assert_eq!(old.subscribe("sensors/+", QoS::AtMostOnce).await.unwrap(), vec![0]);
    assert_eq!(old.publish("sensors/2", b"forged", QoS::AtLeastOnce, false).await.unwrap(), 0);
    assert_eq!(old.publish("sensors/2", b"forged", QoS::ExactlyOnce, false).await.unwrap(), 0);
    assert!(old.quiet_for(Duration::from_millis(300)).await.unwrap(), "nothing was published");
    server.publish("sensors/3", json!("real")).await;
    assert_eq!(old.recv_publish().await.unwrap().topic, "sensors/3", "still connected");
}

#[tokio::test]
async fn the_members_of_a_shared_subscription_share_the_work() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let mut workers = Vec::new();
    for name in ["worker-1", "worker-2"] {
        let mut worker = device(&server, Version::V5, name).await;
        assert_eq!(worker.subscribe("$share/resize/jobs/+", QoS::AtLeastOnce).await.unwrap(), vec![1]);
        workers.push(worker);
    }
    let mut auditor = device(&server, Version::V311, "auditor").await;
    auditor.subscribe("jobs/+", QoS::AtMostOnce).await.unwrap();
    // Two jobs per channel: a channel's messages go round the group.
    for n in 0..6 {
        server.publish(&format!("jobs/{}", n % 3), json!(n)).await;
    }
    let mut done = Vec::new();
    for worker in &mut workers {
        let mut mine = 0;
        while let Ok(Some(Packet::Publish(job))) = worker.recv_within(Duration::from_millis(500)).await {
            worker.ack(&job).await.unwrap();
            done.push(job.topic);
            mine += 1;
        }
        assert!(mine > 0, "every worker gets a share");
    }
    done.sort();
    let expected: Vec<String> = (0..6).map(|n| format!("jobs/{}", n / 2)).collect();
    assert_eq!(done, expected, "each job once, to one worker");
    for _ in 0..6 {
        auditor.recv_publish().await.unwrap();
    }
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_with_every_identifier_and_the_highest_qos() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let mut d = device(&server, Version::V5, "overlap").await;
    let sub = |filter: &str, qos| tributary_mqtt::Subscription {
        filter: filter.into(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
    };
    let with_id = |id| Properties { subscription_ids: vec![id], ..Properties::default() };
    d.subscribe_with(vec![sub("home/+/temp", QoS::AtMostOnce)], with_id(7)).await.unwrap();
    d.subscribe_with(vec![sub("home/#", QoS::AtLeastOnce)], with_id(9)).await.unwrap();
    d.subscribe_with(vec![sub("home/kitchen/temp", QoS::AtMostOnce)], with_id(11)).await.unwrap();
    let mut publisher = device(&server, Version::V5, "thermo").await;
    publisher.publish("home/kitchen/temp", b"20", QoS::ExactlyOnce, false).await.unwrap();
    let got = d.recv_and_ack().await.unwrap();
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let mut ids = got.properties.subscription_ids.clone();
    ids.sort();
    assert_eq!(ids, vec![7, 9, 11]);
    assert!(d.quiet_for(Duration::from_millis(300)).await.unwrap(), "one delivery, not three");
    assert_eq!(d.unsubscribe("home/#").await.unwrap().codes, vec![0x00]);
    assert_eq!(d.unsubscribe("home/#").await.unwrap().codes, vec![0x11], "no such subscription");
    publisher.publish("home/kitchen/temp", b"21", QoS::AtLeastOnce, false).await.unwrap();
    let got = d.recv_and_ack().await.unwrap();
    assert_eq!((got.qos, got.properties.subscription_ids.len()), (QoS::AtMostOnce, 2));
}

#[tokio::test]
async fn no_local_and_retain_as_published_are_honoured() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let mut d = device(&server, Version::V5, "echo").await;
    let options = |filter: &str, no_local, retain_as_published| tributary_mqtt::Subscription {
        filter: filter.into(),
        qos: QoS::AtMostOnce,
        no_local,
        retain_as_published,
        retain_handling: 2,
    };
    d.subscribe_with(
        vec![options("chat/a", true, false), options("chat/b", false, true)],
        Properties::default(),
    )
    .await
    .unwrap();
    d.publish("chat/a", b"mine", QoS::AtMostOnce, false).await.unwrap();
    d.publish("chat/b", b"kept", QoS::AtMostOnce, true).await.unwrap();
    let got = d.recv_publish().await.unwrap();
    assert_eq!(
        (got.topic.as_str(), got.retain),
        ("chat/b", true),
        "no own message on chat/a; retain as published"
    );
    let mut other = device(&server, Version::V5, "other").await;
    other.publish("chat/a", b"theirs", QoS::AtMostOnce, false).await.unwrap();
    assert_eq!(d.recv_publish().await.unwrap().payload, "theirs");
    // Retain handling 2: a new subscription gets no retained message.
    other.subscribe_with(vec![options("chat/b", false, false)], Properties::default()).await.unwrap();
    assert!(other.quiet_for(Duration::from_millis(300)).await.unwrap());
}

#[tokio::test]
async fn the_server_never_has_more_unacknowledged_messages_out_than_the_clients_receive_maximum() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let token = server.token("slow", &[("*", ALL)]).await;
    let mut options = ConnectOptions::new(Version::V5, "slow", server.app_id(), &token);
    options.connect.properties.receive_maximum = Some(2);
    let mut slow = MqttClient::connect_ok(server.mqtt_addr(), options).await.unwrap();
    slow.subscribe("jobs", QoS::AtLeastOnce).await.unwrap();
    for n in 0..5 {
        server.publish("jobs", json!(n)).await;
    }
    let first = slow.recv_publish().await.unwrap();
    let second = slow.recv_publish().await.unwrap();
    assert!(slow.quiet_for(Duration::from_millis(300)).await.unwrap(), "two in flight, no more");
    // Acknowledged with a reason code and (empty) properties, not the plain two-byte PUBACK the
    // server reads without decoding a packet: both kinds free a slot.
    let id = first.packet_id.unwrap().to_be_bytes();
    slow.send_raw(&[0x40, 0x04, id[0], id[1], 0x10, 0x00]).await.unwrap();
    let third = slow.recv_publish().await.unwrap();
    assert_eq!(third.payload, "2");
    assert!(slow.quiet_for(Duration::from_millis(200)).await.unwrap());
    slow.ack(&second).await.unwrap();
    slow.ack(&third).await.unwrap();
    for n in 3..5 {
        assert_eq!(slow.recv_and_ack().await.unwrap().payload, n.to_string());
    }
}

#[tokio::test]
async fn malformed_and_oversized_packets_end_their_own_connection_only() {
    let server = TestServer::spawn_mqtt(|relay| relay.mqtt.max_packet_bytes = 1024).await;
    let mut bystander = device(&server, Version::V5, "bystander").await;
    bystander.subscribe("ok", QoS::AtMostOnce).await.unwrap();
    let cases: [(&[u8], u8); 4] = [
        // PUBLISH with QoS 3.
        (&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01], 0x81),
        // A plain PUBACK of packet id 0 (the server reads plain PUBACKs without the decoder, but
        // not this one).
        (&[0x40, 0x02, 0x00, 0x00], 0x82),
        // A packet announcing 1 MB: refused from its header, before its body.
        (&[0x30, 0x80, 0x80, 0x40], 0x95),
        // SUBACK from a client.
        (&[0x90, 0x04, 0x00, 0x01, 0x00, 0x00], 0x82),
    ];
    for (bytes, code) in cases {
        let mut bad = device(&server, Version::V5, "bad").await;
        bad.send_raw(bytes).await.unwrap();
        match bad.recv_within(Duration::from_secs(5)).await.unwrap() {
            Some(Packet::Disconnect(d)) => assert_eq!(d.code, code, "{bytes:?}"),
            other => panic!("expected DISCONNECT {code:#x}, got {other:?}"),
        }
        assert!(bad.recv_within(Duration::from_secs(5)).await.unwrap().is_none(), "then closed");
    }
    // A CONNECT that is not MQTT at all, and one of an unknown protocol level.
    let mut raw = tokio::net::TcpStream::connect(server.mqtt_addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(n, 0, "closed without an answer");
    let mut raw = tokio::net::TcpStream::connect(server.mqtt_addr()).await.unwrap();
    let connect_v6 =
        [0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x01, b'x'];
    tokio::io::AsyncWriteExt::write_all(&mut raw, &connect_v6).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut buf),
    )
    .await;
    assert_eq!(buf, [0x20, 0x02, 0x00, 0x01], "unacceptable protocol version");

    server.publish("ok", json!("still here")).await;
    assert_eq!(bystander.recv_publish().await.unwrap().payload, r#""still here""#);
}

#[tokio::test]
async fn topic_aliases_message_expiry_and_properties_travel_as_mqtt_5_wants() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let token = server.token("reader", &[("*", ALL)]).await;
    let mut options = ConnectOptions::new(Version::V5, "reader", server.app_id(), &token);
    options.connect.properties.topic_alias_maximum = Some(4);
    let mut reader = MqttClient::connect_ok(server.mqtt_addr(), options).await.unwrap();
    reader.subscribe("req/#", QoS::AtMostOnce).await.unwrap();
    let mut writer = device(&server, Version::V5, "writer").await;
    let props = Properties {
        topic_alias: Some(3),
        payload_format: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("resp/writer".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x01\x02")),
        message_expiry: Some(120),
        user: vec![("b".into(), "2".into()), ("a".into(), "1".into())],
        ..Properties::default()
    };
    writer.publish_with("req/lights", b"on", QoS::AtMostOnce, false, props).await.unwrap();
    // The alias alone stands for the topic now.
    let alias_only = Properties { topic_alias: Some(3), ..Properties::default() };
    writer.publish_with("", b"off", QoS::AtMostOnce, false, alias_only).await.unwrap();
    let first = reader.recv_publish().await.unwrap();
    assert_eq!((first.topic.as_str(), first.properties.topic_alias), ("req/lights", Some(1)));
    assert_eq!(first.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(first.properties.response_topic.as_deref(), Some("resp/writer"));
    assert_eq!(first.properties.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(first.properties.payload_format, Some(1));
    assert!(first.properties.message_expiry.is_some_and(|e| (118..=120).contains(&e)));
    let order: Vec<&str> = first.properties.user.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(order, ["b", "a"], "user properties keep their order");
    let second = reader.recv_publish().await.unwrap();
    assert_eq!(
        (second.topic.as_str(), second.properties.topic_alias, &second.payload[..]),
        ("", Some(1), &b"off"[..])
    );
    // An alias beyond the server's maximum is a protocol error.
    let too_far = Properties { topic_alias: Some(1000), ..Properties::default() };
    writer.publish_with("req/x", b"x", QoS::AtMostOnce, false, too_far).await.unwrap();
    match writer.recv().await.unwrap() {
        Packet::Disconnect(d) => assert_eq!(d.code, 0x94),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // An expired message is not delivered to a late subscriber's retained copy.
    let mut keeper = device(&server, Version::V5, "keeper").await;
    let short = Properties { message_expiry: Some(1), ..Properties::default() };
    keeper.publish_with("req/flash", b"soon gone", QoS::AtLeastOnce, true, short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut late = device(&server, Version::V5, "late").await;
    late.subscribe("req/flash", QoS::AtMostOnce).await.unwrap();
    assert!(late.quiet_for(Duration::from_millis(300)).await.unwrap());
}

#[tokio::test]
async fn a_qos_2_publish_retransmitted_before_its_release_is_stored_once() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let mut d = device(&server, Version::V5, "exactly").await;
    let publish = tributary_mqtt::Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "ledger".into(),
        packet_id: Some(42),
        properties: Properties::default(),
        payload: bytes::Bytes::from_static(b"{\"debit\":10}"),
    };
    d.send(&Packet::Publish(publish.clone())).await.unwrap();
    assert!(matches!(d.recv().await.unwrap(), Packet::PubRec(a) if a.packet_id == 42));
    d.send(&Packet::Publish(tributary_mqtt::Publish { dup: true, ..publish })).await.unwrap();
    assert!(matches!(d.recv().await.unwrap(), Packet::PubRec(a) if a.packet_id == 42));
    let release = tributary_mqtt::Ack { packet_id: 42, code: 0, properties: Properties::default() };
    d.send(&Packet::PubRel(release.clone())).await.unwrap();
    assert!(matches!(d.recv().await.unwrap(), Packet::PubComp(a) if a.packet_id == 42 && a.code == 0));
    d.send(&Packet::PubRel(release)).await.unwrap();
    assert!(matches!(d.recv().await.unwrap(), Packet::PubComp(a) if a.code == 0x92), "unknown id now");
    let (_, history) = server.get("/v1/channels/ledger/history").await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(1), "{history}");
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

/// Returns a loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn the_serve_command_opens_mqtt_with_its_flags_and_refuses_a_malformed_setting() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--mqtt-listen", &format!("127.0.0.1:{port}")])
        .args([
            "--set",
            "relay.mqtt.anonymous_app=dev",
            "--set",
            r#"relay.mqtt.anonymous_grants=["demo/*=publish"]"#,
        ])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut options = ConnectOptions::new(Version::V5, "flag-test", "", "");
    options.connect.username = None;
    options.connect.password = None;
    let mut client = None;
    for _ in 0..100 {
        if let Ok(connected) = MqttClient::connect_ok(addr, options.clone()).await {
            client = Some(connected);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = client.expect("the MQTT listener of --mqtt-listen, anonymous access of --set");
    // The grants came from the array literal: publish on demo/*, nothing else.
    assert_eq!(client.publish("demo/1", b"x", QoS::AtLeastOnce, false).await.unwrap(), 0);
    assert_eq!(client.publish("other/1", b"x", QoS::AtLeastOnce, false).await.unwrap(), 0x87);
    server.kill().await.unwrap();

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--set", "relay.mqtt.anonymous_app"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("expected KEY=VALUE"), "{stderr}");
}

/// Reads MQTT packets out of the binary messages of a WebSocket, however they are cut.
struct WsPackets {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    input: bytes::BytesMut,
}

impl WsPackets {
    async fn next(&mut self) -> Option<Packet> {
        use futures::StreamExt;
        loop {
            if let Some((packet, used)) =
                tributary_mqtt::decode(&self.input, Some(Version::V5), 1 << 20).unwrap()
            {
                bytes::Buf::advance(&mut self.input, used);
                return Some(packet);
            }
            let message =
                tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await.unwrap()?.ok()?;
            match message {
                tokio_tungstenite::tungstenite::Message::Binary(data) => self.input.extend_from_slice(&data),
                tokio_tungstenite::tungstenite::Message::Close(_) => return None,
                other => panic!("MQTT comes in binary messages only, got {other:?}"),
            }
        }
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        use futures::SinkExt;
        self.ws.send(tokio_tungstenite::tungstenite::Message::binary(bytes)).await.unwrap();
    }
}

#[tokio::test]
async fn mqtt_over_websocket_takes_packets_split_across_and_joined_in_binary_messages() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let token = server.token("ws-device", &[("*", ALL)]).await;
    let mut request = format!("ws://{}/mqtt", server.mqtt_ws_addr()).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt", "the mqtt subprotocol is selected");
    let mut ws = WsPackets { ws, input: bytes::BytesMut::new() };

    // CONNECT cut in two messages.
    let options = ConnectOptions::new(Version::V5, "ws-device", server.app_id(), &token);
    let connect = tributary_mqtt::encode(&Packet::Connect(Box::new(options.connect)), Version::V5);
    ws.send(connect[..7].to_vec()).await;
    ws.send(connect[7..].to_vec()).await;
    assert!(matches!(ws.next().await, Some(Packet::ConnAck(ack)) if ack.code == 0));

    // SUBSCRIBE and PINGREQ in one message.
    let subscribe = Packet::Subscribe(tributary_mqtt::Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        subscriptions: vec![tributary_mqtt::Subscription {
            filter: "lights/+".into(),
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }],
    });
    let mut joined = tributary_mqtt::encode(&subscribe, Version::V5);
    joined.extend(tributary_mqtt::encode(&Packet::PingReq, Version::V5));
    ws.send(joined).await;
    assert!(matches!(ws.next().await, Some(Packet::SubAck(ack)) if ack.codes == [1]));
    assert!(matches!(ws.next().await, Some(Packet::PingResp)));

    // A message from the HTTP API arrives, as from any other protocol.
    server.publish("lights/kitchen", json!({"on": true})).await;
    let Some(Packet::Publish(publish)) = ws.next().await else { panic!("a PUBLISH") };
    assert_eq!((publish.topic.as_str(), &publish.payload[..]), ("lights/kitchen", &br#"{"on":true}"#[..]));

    // A text message is not MQTT: the connection ends (and the server lives on).
    use futures::SinkExt;
    ws.ws.send(tokio_tungstenite::tungstenite::Message::text("hello")).await.unwrap();
    assert!(ws.next().await.is_none(), "closed after a text message");
    let _ = device(&server, Version::V5, "after").await;
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

#[tokio::test]
async fn paho_clients_over_tcp_and_websocket_reach_each_other() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let sub_token = server.token("paho-sub", &[("plant/*", &["subscribe"])]).await;
    let pub_token = server.token("paho-pub", &[("plant/*", &["publish"])]).await;
    // A subscriber over WebSocket (MQTT 5) and a publisher over TCP (3.1.1), QoS 1 both.
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
app, tcp_port, ws_port, sub_token, pub_token = sys.argv[1:6]
got, subscribed = [], threading.Event()
def on_message(client, userdata, message):
    got.append((message.topic, message.payload.decode(), message.qos))
sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-sub", transport="websockets",
                  protocol=mqtt.MQTTv5)
sub.ws_set_options(path="/mqtt")
sub.username_pw_set(app, sub_token)
sub.on_message = on_message
sub.on_subscribe = lambda *a: subscribed.set()
sub.connect("127.0.0.1", int(ws_port))
sub.loop_start()
sub.subscribe("plant/+/pressure", qos=1)
assert subscribed.wait(10), "no SUBACK"
pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-pub", protocol=mqtt.MQTTv311)
pub.username_pw_set(app, pub_token)
pub.connect("127.0.0.1", int(tcp_port))
pub.loop_start()
for n in range(3):
    pub.publish("plant/7/pressure", "%d bar" % n, qos=1).wait_for_publish(10)
import time
deadline = time.time() + 10
while len(got) < 3 and time.time() < deadline:
    time.sleep(0.05)
pub.disconnect(); sub.disconnect()
print(got)
"#;
    let output = tokio::process::Command::new("python3")
        .args(["-c", script, server.app_id()])
        .arg(server.mqtt_addr().port().to_string())
        .arg(server.mqtt_ws_addr().port().to_string())
        .args([&sub_token, &pub_token])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'paho'"),
        "paho-mqtt is not installed (scripts/test installs it): {stderr}"
    );
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.trim(),
        "[('plant/7/pressure', '0 bar', 1), ('plant/7/pressure', '1 bar', 1), ('plant/7/pressure', '2 bar', 1)]"
    );
}

#[tokio::test]
async fn mqtt_over_tls_serves_the_configured_certificate_and_a_plaintext_client_gets_nothing() {
    let certs = tributary_testkit::tls::TestCertificates::generate();
    let (cert, key) = (certs.cert_path(), certs.key_path());
    let server = TestServer::spawn_mqtt(|relay| {
        relay.mqtt.tls_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        relay.mqtt.tls_cert_file = cert;
        relay.mqtt.tls_key_file = key;
    })
    .await;
    let port = server.mqtt_tls_addr().port().to_string();
    let token = server.token("tls-sub", &[("secure/*", &["subscribe"])]).await;
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &port, "--cafile", &certs.ca_path(), "-V", "mqttv5", "-q", "1"])
        .args(["-C", "1", "-i", "tls-sub", "-u", server.app_id(), "-P", &token, "-t", "secure/door"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Published until the subscription is live (the subscriber takes one and exits).
    let delivered = async {
        loop {
            server.publish("secure/door", json!("open")).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let output = tokio::select! {
        output = sub.wait_with_output() => output.unwrap(),
        () = delivered => unreachable!(),
        () = tokio::time::sleep(Duration::from_secs(15)) => panic!("nothing arrived over TLS"),
    };
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), r#""open""#);

    // Plain MQTT on the TLS port is not a TLS handshake: no CONNACK, and the server lives on.
    let token = server.token("plain", &[("*", ALL)]).await;
    let plain = ConnectOptions::new(Version::V5, "plain", server.app_id(), &token);
    let attempt =
        tokio::time::timeout(Duration::from_secs(10), MqttClient::connect(server.mqtt_tls_addr(), plain));
    assert!(attempt.await.unwrap().is_err(), "a plaintext CONNECT gets no CONNACK");
    let _ = device(&server, Version::V5, "still-serving").await;
}

#[tokio::test]
async fn a_tls_key_that_cannot_be_read_stops_the_server_from_starting() {
    let certs = tributary_testkit::tls::TestCertificates::generate();
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--set", "relay.mqtt.tls_listen=127.0.0.1:0"])
        .arg("--set")
        .arg(format!("relay.mqtt.tls_cert_file={}", certs.cert_path()))
        .args(["--set", "relay.mqtt.tls_key_file=/nonexistent/server.key"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it must not start: {stderr}");
    assert!(stderr.contains("/nonexistent/server.key"), "the error names the file: {stderr}");
}

#[tokio::test]
async fn a_suspended_tenants_parked_sessions_end_and_their_delayed_wills_are_not_published() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let token = server.token("pump", &[("*", ALL)]).await;
    let options = || {
        ConnectOptions::new(Version::V5, "pump", server.app_id(), &token).persistent(300).will(
            "alarms/pump",
            b"pump offline",
            QoS::AtLeastOnce,
            false,
            Some(3),
        )
    };
    let mut pump = MqttClient::connect_ok(server.mqtt_addr(), options()).await.unwrap();
    pump.subscribe("cmd/pump", QoS::AtLeastOnce).await.unwrap();
    let watcher_token = server.all_rights("watcher").await;
    // The pump vanishes: its session is parked, its will due in 3 s.
    pump.drop_connection();
    let vanished = tokio::time::Instant::now();
    let (sessions, app) = (&server.relay().mqtt_sessions, server.app_id());
    let parked = |n: usize| async move { sessions.parked_in(app) == n };
    tributary_testkit::eventually("the session parked", Duration::from_secs(5), || parked(1)).await.unwrap();

    let path = format!("/v1/tenants/{}/status", server.tenant_id());
    let (status, reply) =
        server.manage("POST", &path, server.operator_token(), Some(&json!({"status": "suspended"}))).await;
    assert_eq!(status, 200, "{reply}");
    // Cut off within a second (the guarantee): the parked session ends; then the customer pays
    // again.
    tributary_testkit::eventually("the parked session ended", Duration::from_secs(1), || parked(0))
        .await
        .unwrap();
    let (status, reply) =
        server.manage("POST", &path, server.operator_token(), Some(&json!({"status": "active"}))).await;
    assert_eq!(status, 200, "{reply}");

    // Well past the will's delay: no will (a cut-off customer's devices do not raise alarms),
    // and the session is gone rather than waiting for the pump. (The watcher comes after the
    // suspension, which would have closed it.)
    let mut watcher = server.ws(&watcher_token).await;
    watcher.request(json!({"op": "subscribe", "channel": "alarms/pump"})).await.unwrap();
    let quiet_until = vanished + Duration::from_millis(4_500);
    assert!(
        watcher.no_message_within(quiet_until - tokio::time::Instant::now()).await,
        "no will after the suspension"
    );
    let (_pump, ack) = MqttClient::connect(server.mqtt_addr(), options()).await.unwrap();
    assert_eq!((ack.code, ack.session_present), (0, false), "the parked session ended with the suspension");
}

#[tokio::test]
async fn past_the_parked_session_cap_a_session_whose_client_goes_away_ends() {
    let server = TestServer::spawn_mqtt(|relay| relay.mqtt.max_parked_sessions_per_app = 1).await;
    let mut tokens = Vec::new();
    for name in ["first", "second"] {
        let token = server.token(name, &[("*", ALL)]).await;
        let options = ConnectOptions::new(Version::V5, name, server.app_id(), &token).persistent(300);
        let mut client = MqttClient::connect_ok(server.mqtt_addr(), options.clone()).await.unwrap();
        client.subscribe("cmd", QoS::AtLeastOnce).await.unwrap();
        client.disconnect().await.unwrap();
        tokens.push(options);
    }
    let sessions = &server.relay().mqtt_sessions;
    tributary_testkit::eventually("the first session parked", Duration::from_secs(5), || async {
        sessions.parked_in(server.app_id()) == 1
    })
    .await
    .unwrap();
    let mut present = Vec::new();
    for options in tokens {
        let (_client, ack) = MqttClient::connect(server.mqtt_addr(), options).await.unwrap();
        present.push(ack.session_present);
    }
    assert_eq!(present, [true, false], "the first was parked, the second over the cap was not");
}

#[tokio::test]
async fn a_client_that_stops_reading_gets_a_whole_stream_and_its_disconnect_after_a_stalled_write() {
    // A small queue: once the socket buffers are full, the server closes the slow consumer
    // while a write is under way. What the stream took must not be sent a second time.
    let server = TestServer::spawn_mqtt(|relay| relay.max_queued_bytes = 256 * 1024).await;
    let mut slow = device(&server, Version::V5, "slow").await;
    slow.subscribe("flood", QoS::AtMostOnce).await.unwrap();
    // About 21 MB: loopback socket buffers several times over.
    let (pad, published) = ("x".repeat(30 * 1024), 700);
    for n in 0..published {
        let reply = server.publish("flood", json!({"n": n, "pad": pad})).await;
        assert!(reply["offset"].is_u64(), "{reply}");
    }
    let mut next = 0;
    let ended = loop {
        match slow.recv_within(Duration::from_secs(10)).await.unwrap() {
            Some(Packet::Publish(p)) => {
                let value: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                assert_eq!(value["n"], next, "in order, none twice");
                next += 1;
            }
            Some(Packet::Disconnect(d)) => break d.code,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("closed without DISCONNECT after {next} of {published}"),
        }
    };
    assert_eq!(ended, 0x97, "closed as a slow consumer");
    assert!(next < published, "the queue overflowed before the end");
}

/// A device that stops reading while its queue has room is dropped once a write has stalled for
/// `write_stall_timeout_ms` (its presence leaves), not held for as long as its socket lives.
#[tokio::test]
async fn a_device_whose_writes_stall_is_dropped_after_the_stall_timeout() {
    let server = TestServer::spawn_mqtt(|relay| {
        relay.outbound_queue_len = 100_000;
        relay.max_queued_bytes = 1 << 30;
        relay.write_stall_timeout_ms = 500;
    })
    .await;
    let mut stuck = device(&server, Version::V5, "stuck").await;
    stuck.subscribe("stall", QoS::AtMostOnce).await.unwrap();
    let (_, occupancy) = server.get("/v1/channels/stall/occupancy").await;
    assert_eq!(occupancy["connections"], 1, "{occupancy}");
    let pad = "x".repeat(30 * 1024);
    let start = tokio::time::Instant::now();
    for n in 0..400 {
        server.publish("stall", json!({"n": n, "pad": pad})).await;
    }
    tributary_testkit::eventually("the stalled device is dropped", Duration::from_secs(10), || async {
        let (_, occupancy) = server.get("/v1/channels/stall/occupancy").await;
        occupancy["connections"] == 0
    })
    .await
    .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(500), "dropped before its writes stalled that long");
    drop(stuck);
}

#[tokio::test]
async fn a_device_that_reconnects_often_leaves_no_sleeping_task_behind() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let token = server.token("flappy", &[("*", ALL)]).await;
    let options = ConnectOptions::new(Version::V5, "flappy", server.app_id(), &token).persistent(3600);
    let reconnect = || async {
        let mut client = MqttClient::connect_ok(server.mqtt_addr(), options.clone()).await.unwrap();
        client.subscribe("cmd/flappy", QoS::AtLeastOnce).await.unwrap();
        client.disconnect().await.unwrap();
        // The session parks as the connection ends.
        let sessions = &server.relay().mqtt_sessions;
        tributary_testkit::eventually("the session parked", Duration::from_secs(5), || async {
            sessions.parked_in(server.app_id()) == 1
        })
        .await
        .unwrap();
    };
    reconnect().await;
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let before = tasks();
    for _ in 0..20 {
        reconnect().await;
    }
    let after = tasks();
    // Each park waits for its expiry (an hour) in a task; a client that comes back ends it.
    assert!(after <= before + 2, "{before} tasks before, {after} after 20 reconnects");
}

#[tokio::test]
async fn wildcard_subscribers_get_every_channel_of_their_app_from_every_node_of_a_redis_cluster() {
    let nodes = mqtt_cluster().await;
    // Nobody subscribes to these channels by name: only the app's feed brings them to node 1.
    let mut watcher = device(&nodes[1], Version::V5, "watcher").await;
    assert_eq!(watcher.subscribe("fleet/+/temp", QoS::AtLeastOnce).await.unwrap(), vec![1]);
    // A client on node 1 also subscribed by name and by a wildcard: one copy each.
    let mut both = device(&nodes[1], Version::V5, "both").await;
    both.subscribe("fleet/1/temp", QoS::AtMostOnce).await.unwrap();
    both.subscribe("fleet/#", QoS::AtMostOnce).await.unwrap();
    let mut truck = device(&nodes[0], Version::V311, "truck-2").await;
    for n in 0..10 {
        nodes[0].publish("fleet/1/temp", json!(n)).await;
        truck.publish("fleet/2/temp", format!("{n}").as_bytes(), QoS::AtLeastOnce, false).await.unwrap();
    }
    nodes[0].publish("fleet/1/speed", json!("not for the watcher")).await;
    let mut seen: std::collections::HashMap<String, Vec<String>> = Default::default();
    for _ in 0..20 {
        let got = watcher.recv_and_ack().await.unwrap();
        seen.entry(got.topic.to_string()).or_default().push(String::from_utf8_lossy(&got.payload).into());
    }
    let expected: Vec<String> = (0..10).map(|n| n.to_string()).collect();
    assert_eq!(seen["fleet/1/temp"], expected, "every message once, in order");
    assert_eq!(seen["fleet/2/temp"], expected);
    assert!(watcher.quiet_for(Duration::from_millis(300)).await.unwrap(), "nothing else matches");
    let mut got = Vec::new();
    for _ in 0..21 {
        got.push(both.recv_publish().await.unwrap().topic.to_string());
    }
    assert_eq!(got.iter().filter(|t| *t == "fleet/1/temp").count(), 10, "once, however it subscribed");
    assert_eq!(got.iter().filter(|t| *t == "fleet/2/temp").count(), 10);
    assert!(both.quiet_for(Duration::from_millis(300)).await.unwrap());

    // Unsubscribed: the feed stops for the watcher, the other client still gets its channels.
    watcher.unsubscribe("fleet/+/temp").await.unwrap();
    nodes[0].publish("fleet/2/temp", json!("after")).await;
    assert_eq!(&both.recv_publish().await.unwrap().payload[..], br#""after""#);
    assert!(watcher.quiet_for(Duration::from_millis(300)).await.unwrap());
}

#[tokio::test]
async fn idle_devices_give_up_their_tasks_and_still_get_messages_pings_and_presence() {
    // Presence entries expire after 1.5 s unless the connection's heartbeat (every 500 ms)
    // refreshes them: only a hibernating connection's alarms keep its device present.
    let server = TestServer::spawn_mqtt(|relay| relay.presence_timeout_ms = 1500).await;
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let mut first = device(&server, Version::V5, "idle-0").await;
    first.subscribe("rooms/hall", QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = tasks();
    let mut devices = Vec::new();
    for n in 1..=30 {
        let mut device = device(&server, Version::V311, &format!("idle-{n}")).await;
        device.subscribe("rooms/hall", QoS::AtLeastOnce).await.unwrap();
        devices.push(device);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = tasks();
    assert!(idle <= before + 2, "{before} tasks with one idle device, {idle} with 31");

    // Heartbeats keep them present well past the presence timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut ws = server.ws(&server.all_rights("app").await).await;
    let presence = ws.request(json!({"op": "presence", "channel": "rooms/hall"})).await.unwrap();
    let members = presence["result"]["members"].as_array().map(Vec::len);
    assert_eq!(members, Some(31), "{presence}");

    // A message wakes every one of them; so does a ping.
    server.publish("rooms/hall", json!("lights off")).await;
    for device in &mut devices {
        let got = device.recv_and_ack().await.unwrap();
        assert_eq!(&got.payload[..], br#""lights off""#);
    }
    assert_eq!(&first.recv_and_ack().await.unwrap().payload[..], br#""lights off""#);
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.send(&Packet::PingReq).await.unwrap();
    assert!(matches!(first.recv().await.unwrap(), Packet::PingResp));
}

#[tokio::test]
async fn a_persistent_session_follows_its_client_to_another_node_and_loses_nothing() {
    let nodes = mqtt_cluster().await;
    let payload = |p: &tributary_mqtt::Publish| String::from_utf8_lossy(&p.payload).into_owned();
    let (mut meter, ack) = persistent(&nodes[0], Version::V5, "meter-7").await;
    assert!(!ack.session_present);
    meter.subscribe("meters/7/cmd", QoS::AtLeastOnce).await.unwrap();
    meter.subscribe("fleet/+/all", QoS::AtLeastOnce).await.unwrap();
    nodes[0].publish("meters/7/cmd", json!("c1")).await;
    assert_eq!(payload(&meter.recv_and_ack().await.unwrap()), r#""c1""#);
    meter.disconnect().await.unwrap();
    // The session parks, and its exact copy is written as it does (until then, the copy of its
    // subscribe would bring c1 again: at least once).
    let sessions = &nodes[0].relay().mqtt_sessions;
    tributary_testkit::eventually("the session parked", Duration::from_secs(5), || async {
        sessions.parked_in(nodes[0].app_id()) == 1
    })
    .await
    .unwrap();

    // Away: published on the other node, nobody there subscribed.
    nodes[1].publish("meters/7/cmd", json!("c2")).await;
    nodes[1].publish("meters/7/cmd", json!("c3")).await;
    let (mut meter, ack) = persistent(&nodes[1], Version::V5, "meter-7").await;
    assert!(ack.session_present, "the session came along");
    let got: Vec<String> = [meter.recv_and_ack().await.unwrap(), meter.recv_and_ack().await.unwrap()]
        .iter()
        .map(payload)
        .collect();
    assert_eq!(got, [r#""c2""#, r#""c3""#], "what came while it was away, in order, once");
    meter.subscribe("meters/7/fw", QoS::AtLeastOnce).await.unwrap();

    // A second connection of the client id on the first node takes the session over.
    let (mut again, ack) = persistent(&nodes[0], Version::V5, "meter-7").await;
    assert!(ack.session_present);
    match meter.recv_within(Duration::from_secs(10)).await.unwrap() {
        Some(Packet::Disconnect(d)) => assert_eq!(d.code, 0x8E, "session taken over"),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // With what it became on the other node: its new subscription, and the wildcard one.
    nodes[1].publish("meters/7/fw", json!("v2.1")).await;
    assert_eq!(payload(&again.recv_and_ack().await.unwrap()), r#""v2.1""#);
    nodes[1].publish("fleet/3/all", json!("all hands")).await;
    assert_eq!(payload(&again.recv_and_ack().await.unwrap()), r#""all hands""#);
    assert!(again.quiet_for(Duration::from_millis(300)).await.unwrap(), "nothing twice");
}

#[tokio::test]
async fn a_node_that_shuts_down_hands_its_sessions_to_the_node_their_clients_come_back_to() {
    let mut nodes = mqtt_cluster().await;
    let (mut meter, _) = persistent(&nodes[0], Version::V311, "meter-9").await;
    meter.subscribe("meters/9/cmd", QoS::AtLeastOnce).await.unwrap();
    nodes[1].publish("meters/9/cmd", json!(1)).await;
    // Received and never acknowledged: it comes again.
    let unacknowledged = meter.recv_publish().await.unwrap();
    assert_eq!(&unacknowledged.payload[..], b"1");
    let first = nodes.remove(0);
    first.stop().await;
    nodes[0].publish("meters/9/cmd", json!(2)).await;
    let (mut meter, ack) = persistent(&nodes[0], Version::V311, "meter-9").await;
    assert!(ack.session_present);
    let got: Vec<Vec<u8>> = [meter.recv_and_ack().await.unwrap(), meter.recv_and_ack().await.unwrap()]
        .map(|p| p.payload.to_vec())
        .into();
    assert_eq!(got, [b"1".to_vec(), b"2".to_vec()]);
}

#[tokio::test]
async fn a_client_back_on_another_node_within_its_will_delay_cancels_the_will_there() {
    let nodes = mqtt_cluster().await;
    let mut watcher = device(&nodes[1], Version::V5, "watcher").await;
    watcher.subscribe("status/gw-3", QoS::AtMostOnce).await.unwrap();
    let token = nodes[0].token("gw-3", &[("*", ALL)]).await;
    let options = ConnectOptions::new(Version::V5, "gw-3", nodes[0].app_id(), &token).persistent(300).will(
        "status/gw-3",
        b"offline",
        QoS::AtMostOnce,
        false,
        Some(1),
    );
    let gateway = MqttClient::connect_ok(nodes[0].mqtt_addr(), options.clone()).await.unwrap();
    gateway.drop_connection();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_gateway, ack) = MqttClient::connect(nodes[1].mqtt_addr(), options).await.unwrap();
    assert!(ack.session_present);
    // The first node ended its parked session, and the will with it.
    assert!(watcher.quiet_for(Duration::from_millis(2000)).await.unwrap(), "no will: the client is back");
}

#[tokio::test]
async fn a_node_that_shuts_down_hands_delayed_wills_over_to_the_other_nodes() {
    let mut nodes = mqtt_cluster().await;
    let mut watcher = device(&nodes[1], Version::V5, "watcher").await;
    watcher.subscribe("status/#", QoS::AtMostOnce).await.unwrap();
    let connect = |id: &'static str, token: String| {
        ConnectOptions::new(Version::V5, id, nodes[0].app_id(), &token).persistent(300).will(
            &format!("status/{id}"),
            b"offline",
            QoS::AtMostOnce,
            false,
            Some(2),
        )
    };
    let back = connect("gw-back", nodes[0].token("gw-back", &[("*", ALL)]).await);
    let gone = connect("gw-gone", nodes[0].token("gw-gone", &[("*", ALL)]).await);
    let _back = MqttClient::connect_ok(nodes[0].mqtt_addr(), back.clone()).await.unwrap();
    let _gone = MqttClient::connect_ok(nodes[0].mqtt_addr(), gone).await.unwrap();
    let first = nodes.remove(0);
    first.stop().await;
    let stopped = tokio::time::Instant::now();
    // One client comes back to the other node within its will's delay: no will for it.
    let (_back, ack) = MqttClient::connect(nodes[0].mqtt_addr(), back).await.unwrap();
    assert!(ack.session_present);
    // The other does not: its will comes after the delay, from the node still up.
    let will = watcher.recv_publish().await.unwrap();
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("status/gw-gone", &b"offline"[..]));
    let waited = stopped.elapsed();
    assert!(waited >= Duration::from_millis(1500), "not at the shutdown: {waited:?}");
    assert!(watcher.quiet_for(Duration::from_millis(1500)).await.unwrap(), "once, and none for gw-back");
}

#[tokio::test]
async fn a_handed_over_will_outlives_the_next_node_shutting_down_and_comes_once_after_its_delay() {
    let mut nodes =
        TestServer::spawn_cluster(3, |relay| relay.mqtt.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0))))
            .await;
    let mut watcher = device(&nodes[2], Version::V5, "watcher").await;
    watcher.subscribe("status/#", QoS::AtMostOnce).await.unwrap();
    let token = nodes[0].token("gw-7", &[("*", ALL)]).await;
    let options = ConnectOptions::new(Version::V5, "gw-7", nodes[0].app_id(), &token).persistent(300).will(
        "status/gw-7",
        b"offline",
        QoS::AtLeastOnce,
        false,
        Some(3),
    );
    let _gateway = MqttClient::connect_ok(nodes[0].mqtt_addr(), options).await.unwrap();
    let started = tokio::time::Instant::now();
    nodes.remove(0).stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The next node of a rolling restart goes too, before the delay ends.
    nodes.remove(0).stop().await;
    let will = watcher.recv_publish().await.unwrap();
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("status/gw-7", &b"offline"[..]));
    assert!(started.elapsed() >= Duration::from_millis(2500), "after its delay: {:?}", started.elapsed());
    assert!(watcher.quiet_for(Duration::from_millis(1000)).await.unwrap(), "once");
}
