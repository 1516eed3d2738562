//! Sessions and wills across nodes (Redis engine): handed over on shutdown, followed to another
//! node, and wildcard subscriptions on a Redis Cluster.

#[allow(clippy::wildcard_imports)]
use super::*;

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
