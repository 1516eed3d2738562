//! Sessions and their ends: persistent sessions, takeover, wills, keep-alive, parking and its
//! caps, stalled writers, hibernating idle devices.

#[allow(clippy::wildcard_imports)]
use super::*;

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
