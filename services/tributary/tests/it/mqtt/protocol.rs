//! MQTT itself: publish and subscribe at every QoS, retained messages, wildcards, shared and
//! overlapping subscriptions, MQTT 5's flow control and properties, malformed packets.

#[allow(clippy::wildcard_imports)]
use super::*;

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
