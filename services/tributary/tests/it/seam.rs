//! The seam between joining a channel and going live: a publication the server reads after a
//! subscribe request reaches that subscriber exactly once, whether the subscription recovers or
//! not, over WebSocket and MQTT, on both engines. The engine's `subscribe` is held open by a
//! [`SeamEngine`](tributary_testkit::SeamEngine) while the test publishes, so the publication
//! lands in the seam on every run, not once in a while.

use std::time::Duration;

use serde_json::{Value, json};
use tributary::config::TributaryConfig;
use tributary_mqtt::{Packet, Properties, QoS, Subscribe, Subscription, Version};
use tributary_testkit::mqtt::ConnectOptions;
use tributary_testkit::{
    Gate, MqttClient, TestServer, WsClient, eventually, use_memory as memory, use_redis as redis,
};

/// How long a test waits for the server to reach the gate.
const ENTER: Duration = Duration::from_secs(5);

/// Rounds per engine: each one publishes into a freshly opened seam.
const ROUNDS: usize = 10;

/// Reads frames until the subscribe reply `id` and then the next `message`; returns both.
async fn reply_then_message(c: &mut WsClient, id: u64) -> (Value, Value) {
    let reply = c.reply_to(id).await.unwrap();
    assert!(reply.get("result").is_some(), "subscribe refused: {reply}");
    (reply, c.next_of("message").await.unwrap())
}

/// Publishes `marker` and checks that it is the very next message: nothing was delivered twice
/// and nothing else is queued.
async fn next_is(server: &TestServer, c: &mut WsClient, channel: &str, marker: &str) {
    server.publish(channel, json!(marker)).await;
    let next = c.next_of("message").await.unwrap();
    assert_eq!(next["data"], marker, "expected the marker next, got {next}");
}

async fn plain_subscribe_gets_what_is_published_in_the_seam(configure: fn(&mut TributaryConfig)) {
    let (server, gate) = TestServer::spawn_with_seam(configure).await;
    let mut c = server.ws(&server.all_rights("seam").await).await;
    for round in 0..ROUNDS {
        let channel = format!("seam:plain-{round}");
        server.publish(&channel, json!("before")).await;
        gate.arm(&channel);
        c.send(json!({"id": 100 + round, "op": "subscribe", "channel": channel})).await.unwrap();
        gate.entered(ENTER).await.unwrap();
        // The request was read (the relay is subscribing in the engine): this comes after it.
        server.publish(&channel, json!("in the seam")).await;
        gate.release();
        let (reply, message) = reply_then_message(&mut c, 100 + round as u64).await;
        assert_eq!(message["data"], "in the seam", "round {round}: {reply} then {message}");
        assert_eq!(message["offset"], 2);
        next_is(&server, &mut c, &channel, "after").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_subscribe_gets_what_is_published_in_the_seam_memory() {
    plain_subscribe_gets_what_is_published_in_the_seam(memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_subscribe_gets_what_is_published_in_the_seam_redis() {
    plain_subscribe_gets_what_is_published_in_the_seam(redis).await;
}

async fn recovery_is_exact_across_the_seam(configure: fn(&mut TributaryConfig)) {
    let (server, gate) = TestServer::spawn_with_seam(configure).await;
    let mut c = server.ws(&server.all_rights("seam").await).await;
    for round in 0..ROUNDS {
        let channel = format!("seam:recover-{round}");
        let first = server.publish(&channel, json!(0)).await;
        for n in 1..=3 {
            server.publish(&channel, json!(n)).await;
        }
        gate.arm(&channel);
        let recover = json!({"epoch": first["epoch"], "offset": 1});
        let id = 200 + round as u64;
        c.send(json!({"id": id, "op": "subscribe", "channel": channel, "recover": recover})).await.unwrap();
        gate.entered(ENTER).await.unwrap();
        for n in 4..=5 {
            server.publish(&channel, json!(n)).await;
        }
        gate.release();
        let reply = c.reply_to(id).await.unwrap();
        assert_eq!(reply["result"]["recovered"], true, "round {round}: {reply}");
        let got: Vec<Value> = c.messages(5).await.unwrap().into_iter().map(|m| m["data"].clone()).collect();
        assert_eq!(got, [1, 2, 3, 4, 5].map(|n| json!(n)), "round {round}: in order, each once");
        next_is(&server, &mut c, &channel, "after").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_exact_across_the_seam_memory() {
    recovery_is_exact_across_the_seam(memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_exact_across_the_seam_redis() {
    recovery_is_exact_across_the_seam(redis).await;
}

/// Connects an MQTT 5 device with every right.
async fn device(server: &TestServer, client_id: &str) -> MqttClient {
    let token = server.all_rights(client_id).await;
    let options = ConnectOptions::new(Version::V5, client_id, server.app_id(), &token);
    MqttClient::connect_ok(server.mqtt_addr(), options).await.unwrap()
}

/// Sends SUBSCRIBE without waiting for the SUBACK; returns its packet id.
async fn send_subscribe(client: &mut MqttClient, filter: &str) -> u16 {
    let packet_id = client.packet_id();
    let subscription = Subscription {
        filter: filter.into(),
        qos: QoS::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
    };
    let subscribe =
        Subscribe { packet_id, properties: Properties::default(), subscriptions: vec![subscription] };
    client.send(&Packet::Subscribe(subscribe)).await.unwrap();
    packet_id
}

/// Reads until both the SUBACK `packet_id` and a PUBLISH have come (in either order); returns
/// the PUBLISH's payload, acknowledged.
async fn suback_and_publish(client: &mut MqttClient, packet_id: u16) -> Vec<u8> {
    let (mut acked, mut payload) = (false, None);
    while !acked || payload.is_none() {
        match client.recv().await.unwrap() {
            Packet::SubAck(ack) if ack.packet_id == packet_id => {
                assert_eq!(ack.codes, vec![1]);
                acked = true;
            }
            Packet::Publish(publish) => {
                assert!(payload.is_none(), "a second PUBLISH: {publish:?}");
                client.ack(&publish).await.unwrap();
                payload = Some(publish.payload.to_vec());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    payload.unwrap_or_default()
}

/// An MQTT server whose subscriptions have no grace: what reaches them is the seam's doing.
async fn spawn_mqtt_with_seam(
    configure: impl FnOnce(&mut TributaryConfig),
) -> (TestServer, std::sync::Arc<Gate>) {
    TestServer::spawn_with_seam(move |config| {
        config.relay.mqtt.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        config.relay.mqtt.subscribe_grace_ms = 0;
        configure(config);
    })
    .await
}

async fn mqtt_subscribe_gets_what_is_published_in_the_seam(configure: fn(&mut TributaryConfig)) {
    let (server, gate) = spawn_mqtt_with_seam(configure).await;
    let mut subscriber = device(&server, "b").await;
    let mut publisher = device(&server, "a").await;
    for round in 0..ROUNDS {
        let topic = format!("seam/{round}");
        gate.arm(&topic);
        let packet_id = send_subscribe(&mut subscriber, &topic).await;
        gate.entered(ENTER).await.unwrap();
        assert_eq!(publisher.publish(&topic, b"in the seam", QoS::AtLeastOnce, false).await.unwrap(), 0);
        gate.release();
        assert_eq!(suback_and_publish(&mut subscriber, packet_id).await, b"in the seam", "round {round}");
        publisher.publish(&topic, b"after", QoS::AtLeastOnce, false).await.unwrap();
        let next = subscriber.recv_and_ack().await.unwrap();
        assert_eq!(&next.payload[..], b"after", "round {round}: nothing twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_subscribe_gets_what_is_published_in_the_seam_memory() {
    mqtt_subscribe_gets_what_is_published_in_the_seam(memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_subscribe_gets_what_is_published_in_the_seam_redis() {
    mqtt_subscribe_gets_what_is_published_in_the_seam(redis).await;
}

/// The race as the Paho suite met it, with nothing held: B subscribes and, without waiting for
/// its SUBACK, A publishes as soon as the server has read the SUBSCRIBE (it is in the engine's
/// subscribe, for as long as the engine takes); B gets the message every time.
async fn a_publish_right_after_a_subscribe_is_delivered_every_time(configure: fn(&mut TributaryConfig)) {
    let (server, gate) = spawn_mqtt_with_seam(move |config| {
        config.relay.request_rate_per_second = 10_000;
        config.relay.request_burst = 10_000;
        configure(config);
    })
    .await;
    let mut subscriber = device(&server, "b").await;
    let mut publisher = device(&server, "a").await;
    for round in 0..100 {
        let topic = format!("race/{round}");
        gate.watch(&topic);
        let packet_id = send_subscribe(&mut subscriber, &topic).await;
        gate.entered(ENTER).await.unwrap();
        publisher.publish(&topic, b"right after", QoS::AtMostOnce, false).await.unwrap();
        assert_eq!(suback_and_publish(&mut subscriber, packet_id).await, b"right after", "round {round}");
        gate.release();
        subscriber.unsubscribe(&topic).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_a_subscribe_is_delivered_every_time_memory() {
    a_publish_right_after_a_subscribe_is_delivered_every_time(memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_a_subscribe_is_delivered_every_time_redis() {
    a_publish_right_after_a_subscribe_is_delivered_every_time(redis).await;
}

/// The same race with two idle devices: B subscribes and, without waiting for its SUBACK, A
/// publishes at once, with nothing held or watched. Both connections hibernate between rounds
/// (no task of their own), so the node wakes both, often in one poll of its I/O driver, and the
/// runtime then often runs A's task first (the task woken last runs first): the PUBLISH is read
/// before the SUBSCRIBE that came before it, and only the subscription's grace
/// (`relay.mqtt.subscribe_grace_ms`) delivers it. Without the grace this fails about one run
/// in three here; `a_new_subscription_gets_what_its_grace_covers` tests the grace itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_an_idle_devices_subscribe_is_delivered() {
    // Heartbeats every 100 ms: a connection hibernates soon after its last packet.
    let server = TestServer::spawn_mqtt(|relay| relay.presence_timeout_ms = 300).await;
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let tokens = (server.all_rights("b").await, server.all_rights("a").await);
    // Every task there is before the devices come: the server's, and the HTTP connections the
    // tokens were minted over.
    let without_devices = tasks();
    let connect = |client_id: &str, token: &str| {
        MqttClient::connect_ok(
            server.mqtt_addr(),
            ConnectOptions::new(Version::V5, client_id, server.app_id(), token),
        )
    };
    let mut subscriber = connect("b", &tokens.0).await.unwrap();
    let mut publisher = connect("a", &tokens.1).await.unwrap();
    // Both asleep: no task of theirs, only the node's alarm ringer.
    let hibernated = || async { tasks() <= without_devices + 1 };
    for round in 0..20 {
        eventually("both connections asleep", Duration::from_secs(5), hibernated).await.unwrap();
        let topic = format!("idle-race/{round}");
        let packet_id = send_subscribe(&mut subscriber, &topic).await;
        publisher.publish(&topic, b"right after", QoS::AtMostOnce, false).await.unwrap();
        assert_eq!(suback_and_publish(&mut subscriber, packet_id).await, b"right after", "round {round}");
        subscriber.unsubscribe(&topic).await.unwrap();
    }
}

/// A subscription by name gets what its channel stored within the grace before its SUBSCRIBE
/// (the newest eight at most), nothing older, and the retained message once, as retained.
#[tokio::test]
async fn a_new_subscription_gets_what_its_grace_covers() {
    // A long grace, so that a loaded machine cannot push the test's steps out of it.
    let server = TestServer::spawn_mqtt(|relay| relay.mqtt.subscribe_grace_ms = 1_500).await;
    let mut publisher = device(&server, "publisher").await;
    // Older than the grace: not delivered (time passing is what is tested).
    publisher.publish("grace/a", b"old", QoS::AtLeastOnce, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    for n in 0..3 {
        publisher.publish("grace/a", format!("{n}").as_bytes(), QoS::AtLeastOnce, false).await.unwrap();
    }
    let mut subscriber = device(&server, "subscriber").await;
    assert_eq!(subscriber.subscribe("grace/a", QoS::AtLeastOnce).await.unwrap(), vec![1]);
    assert_eq!(received(&mut subscriber, 3).await, ["0", "1", "2"], "within the grace, in order");
    assert!(subscriber.quiet_for(Duration::from_millis(300)).await.unwrap(), "not the older one");

    // Within the grace but more than eight: the newest eight.
    for n in 0..10 {
        publisher.publish("grace/b", format!("{n}").as_bytes(), QoS::AtLeastOnce, false).await.unwrap();
    }
    let mut many = device(&server, "many").await;
    assert_eq!(many.subscribe("grace/b", QoS::AtLeastOnce).await.unwrap(), vec![1]);
    let expected: Vec<String> = (2..10).map(|n| n.to_string()).collect();
    assert_eq!(received(&mut many, 8).await, expected, "the newest eight, in order");
    assert!(many.quiet_for(Duration::from_millis(300)).await.unwrap(), "nothing older, nothing twice");

    // A retained message stored just before the SUBSCRIBE comes once, as retained; what came
    // after it within the grace comes as messages.
    publisher.publish("grace/r", b"retained", QoS::AtLeastOnce, true).await.unwrap();
    publisher.publish("grace/r", b"live", QoS::AtLeastOnce, false).await.unwrap();
    let mut late = device(&server, "late").await;
    assert_eq!(late.subscribe("grace/r", QoS::AtLeastOnce).await.unwrap(), vec![1]);
    let mut got = Vec::new();
    for _ in 0..2 {
        let publish = late.recv_and_ack().await.unwrap();
        got.push((String::from_utf8(publish.payload.to_vec()).unwrap(), publish.retain));
    }
    got.sort();
    assert_eq!(got, vec![("live".to_owned(), false), ("retained".to_owned(), true)]);
    assert!(late.quiet_for(Duration::from_millis(300)).await.unwrap(), "the retained message once");
}

/// On a channel whose namespace keeps no history, what lands in the seam is delivered when the
/// node already buffered it (memory engine), and skipped when nothing kept it (Redis, before the
/// node listened): either way the subscription then goes on live, never closed for the hole.
async fn a_plain_subscribe_without_history_goes_live_across_the_seam(
    configure: fn(&mut TributaryConfig),
) -> Vec<Value> {
    let (server, gate) = TestServer::spawn_with_seam(|config| {
        configure(config);
        let live_only = tributary_relay::NamespaceConfig { history_size: 0, ..Default::default() };
        config.relay.namespaces.insert("live".into(), live_only);
    })
    .await;
    let mut c = server.ws(&server.all_rights("live").await).await;
    gate.arm("live:ticker");
    c.send(json!({"id": 1, "op": "subscribe", "channel": "live:ticker"})).await.unwrap();
    gate.entered(ENTER).await.unwrap();
    server.publish("live:ticker", json!("in the seam")).await;
    gate.release();
    assert!(c.reply_to(1).await.unwrap().get("result").is_some());
    server.publish("live:ticker", json!("after")).await;
    let mut got = Vec::new();
    while got.last() != Some(&json!("after")) {
        got.push(c.next_of("message").await.unwrap()["data"].clone());
    }
    assert!(c.request(json!({"op": "ping"})).await.unwrap().get("result").is_some(), "still open");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_subscribe_without_history_goes_live_across_the_seam_memory() {
    let got = a_plain_subscribe_without_history_goes_live_across_the_seam(memory).await;
    assert_eq!(got, [json!("in the seam"), json!("after")], "the node had it buffered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_subscribe_without_history_goes_live_across_the_seam_redis() {
    let got = a_plain_subscribe_without_history_goes_live_across_the_seam(redis).await;
    assert_eq!(got, [json!("after")], "kept nowhere: skipped, and the subscription goes on");
}

/// Receives `n` PUBLISH packets, none retained, acknowledging each; returns their payloads.
async fn received(client: &mut MqttClient, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        let publish = client.recv_and_ack().await.unwrap();
        assert!(!publish.retain);
        got.push(String::from_utf8(publish.payload.to_vec()).unwrap());
    }
    got
}
