//! Several relay nodes on one Redis (the Redis engine): what is published on one node reaches
//! subscribers on every node, in order; presence is the union over nodes; a client recovers on
//! another node than the one it left.

use serde_json::{Value, json};
use tributary_testkit::{HistoryChecker, TestServer, ThrowawayCluster, ThrowawayRedis};

fn offsets(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn a_message_published_on_one_node_reaches_subscribers_on_every_node_in_order() {
    let nodes = TestServer::spawn_cluster(3, |_| {}).await;
    let token = nodes[0].all_rights("fan").await;
    let mut subscribers = Vec::new();
    for node in &nodes {
        let mut ws = node.ws(&token).await;
        ws.request(json!({"op": "subscribe", "channel": "chat:cluster"})).await.unwrap();
        subscribers.push(ws);
    }
    // Publishes from every node, through the HTTP API and from a client.
    let mut publisher = nodes[2].ws(&token).await;
    for n in 0..30 {
        if n % 3 == 2 {
            publisher.request(json!({"op": "publish", "channel": "chat:cluster", "data": n})).await.unwrap();
        } else {
            nodes[n % 3].publish("chat:cluster", json!(n)).await;
        }
    }
    for ws in &mut subscribers {
        let got = ws.messages(30).await.unwrap();
        assert_eq!(offsets(&got), (1..=30).collect::<Vec<_>>(), "every message once, in offset order");
        let data: Vec<u64> = got.iter().map(|m| m["data"].as_u64().unwrap()).collect();
        assert_eq!(data, (0..30).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_clients_pipelined_publishes_are_stored_in_order_and_answered_in_order() {
    let nodes = TestServer::spawn_cluster(2, |relay| relay.publish_burst = 1000).await;
    let token = nodes[0].all_rights("pipeliner").await;
    let mut subscriber = nodes[1].ws(&token).await;
    subscriber.request(json!({"op": "subscribe", "channel": "chat:pipe"})).await.unwrap();
    let mut publisher = nodes[0].ws(&token).await;
    // 300 publishes in one write, with a refused one, a malformed one and a history request
    // among them: each waits for the publishes before it.
    let frames = (0..300u64).map(|n| match n {
        100 => json!({"op": "publish", "id": n, "channel": "$nope", "data": n}),
        150 => json!({"op": "history", "id": n, "channel": "chat:pipe", "direction": "backward", "limit": 1}),
        200 => json!({"op": "publish", "id": n, "channel": "chat:pipe"}),
        _ => json!({"op": "publish", "id": n, "channel": "chat:pipe", "data": n}),
    });
    publisher.send_all(frames).await.unwrap();
    let mut offset = 0;
    for n in 0..300u64 {
        let reply = publisher.next_of("reply").await.unwrap();
        assert_eq!(reply["id"], n, "replies in the order of the requests: {reply}");
        match n {
            100 | 200 => assert!(reply["error"]["code"].is_u64(), "{reply}"),
            150 => assert_eq!(
                reply["result"]["messages"][0]["data"], 149,
                "history sees the publishes before it: {reply}"
            ),
            _ => {
                offset += 1;
                assert_eq!(
                    reply["result"]["offset"], offset,
                    "offsets in the order of the requests: {reply}"
                );
            }
        }
    }
    let got = subscriber.messages(297).await.unwrap();
    let data: Vec<u64> = got.iter().map(|m| m["data"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (0..300).filter(|n| ![100, 150, 200].contains(n)).collect();
    assert_eq!(data, expected, "delivered in the order published");
}

#[tokio::test]
async fn presence_is_the_union_over_nodes_and_joins_are_announced_once() {
    let nodes = TestServer::spawn_cluster(2, |_| {}).await;
    let mut watcher = nodes[1].ws(&nodes[1].all_rights("watcher").await).await;
    watcher.request(json!({"op": "subscribe", "channel": "chat:room"})).await.unwrap();
    let mut alice = nodes[0].ws(&nodes[0].all_rights("alice").await).await;
    alice.request(json!({"op": "subscribe", "channel": "chat:room"})).await.unwrap();
    let mut alice_again = nodes[1].ws(&nodes[1].all_rights("alice").await).await;
    alice_again.request(json!({"op": "subscribe", "channel": "chat:room"})).await.unwrap();
    let mut joins = Vec::new();
    while joins.len() < 2 {
        let event = watcher.next_of("join").await.unwrap();
        joins.push(event["member"]["client_id"].as_str().unwrap().to_owned());
    }
    joins.sort();
    assert_eq!(joins, vec!["alice", "watcher"], "alice joined once for two connections on two nodes");
    for node in &nodes {
        let (status, presence) = node.get("/v1/channels/chat:room/presence").await;
        assert_eq!(status, 200, "{presence}");
        assert_eq!(presence["occupancy"], json!({"members": 2, "connections": 3}), "{presence}");
    }
}

#[tokio::test]
async fn a_client_that_left_one_node_recovers_on_another_without_gap_or_duplicate() {
    let nodes = TestServer::spawn_cluster(2, |_| {}).await;
    let checker = HistoryChecker::new();
    let token = nodes[0].all_rights("mover").await;
    let mut ws = nodes[0].ws(&token).await;
    let reply = ws.request(json!({"op": "subscribe", "channel": "chat:move"})).await.unwrap();
    let (epoch, start) =
        (reply["result"]["epoch"].as_str().unwrap().to_owned(), reply["result"]["offset"].as_u64().unwrap());
    checker.started("mover", "chat:move", &epoch, start, None);
    let publish = |n: u64| {
        let (node, checker) = (&nodes[(n % 2) as usize], &checker);
        async move {
            let id = format!("m{n}");
            let reply = node.publish("chat:move", json!({"id": id})).await;
            checker.acknowledged(
                "chat:move",
                &id,
                reply["epoch"].as_str().unwrap(),
                reply["offset"].as_u64().unwrap(),
            );
        }
    };
    for n in 0..5 {
        publish(n).await;
    }
    let mut last = start;
    for frame in ws.messages(5).await.unwrap() {
        last = frame["offset"].as_u64().unwrap();
        checker.delivered(
            "mover",
            "chat:move",
            frame["epoch"].as_str().unwrap(),
            last,
            frame["data"]["id"].as_str().unwrap(),
        );
    }
    drop(ws);
    for n in 5..12 {
        publish(n).await;
    }
    let mut moved = nodes[1].ws(&token).await;
    let reply = moved
        .request(
            json!({"op": "subscribe", "channel": "chat:move", "recover": {"epoch": epoch, "offset": last}}),
        )
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    checker.started("mover", "chat:move", &epoch, last, Some(true));
    for n in 12..15 {
        publish(n).await;
    }
    for frame in moved.messages(10).await.unwrap() {
        let offset = frame["offset"].as_u64().unwrap();
        checker.delivered(
            "mover",
            "chat:move",
            frame["epoch"].as_str().unwrap(),
            offset,
            frame["data"]["id"].as_str().unwrap(),
        );
    }
    let report = checker.report();
    println!("cluster recovery: {report}");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.acknowledged, 15);
}

#[tokio::test]
async fn when_the_node_loses_its_redis_subscription_its_subscribers_are_told_to_recover() {
    let redis = ThrowawayRedis::start();
    let nodes = TestServer::spawn_cluster_on(&redis.url(), 1, |_| {}).await;
    let node = &nodes[0];
    let token = node.all_rights("gap").await;
    let mut ws = node.ws(&token).await;
    let reply = ws.request(json!({"op": "subscribe", "channel": "chat:gap"})).await.unwrap();
    let epoch = reply["result"]["epoch"].clone();
    node.publish("chat:gap", json!(1)).await;
    let first = ws.messages(1).await.unwrap();
    // The node's pub/sub connection is cut: what is published until it is back never reaches the
    // node, so its subscriber must not simply go on (that would be a silent gap).
    let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        killed.starts_with(':') && !killed.starts_with(":0"),
        "a pub/sub connection was killed: {killed}"
    );
    let (code, _) = ws.closed().await.unwrap();
    assert_eq!(code, 3001, "told to reconnect and recover");
    node.publish("chat:gap", json!(2)).await;
    let mut again = node.ws(&token).await;
    let reply = again
        .request(json!({"op": "subscribe", "channel": "chat:gap", "recover": {"epoch": epoch, "offset": first[0]["offset"]}}))
        .await
        .unwrap();
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    node.publish("chat:gap", json!(3)).await;
    assert_eq!(offsets(&again.messages(2).await.unwrap()), vec![2, 3]);
}

#[tokio::test]
async fn readyz_reports_the_node_unready_while_redis_is_unreachable() {
    let mut redis = ThrowawayRedis::start();
    let nodes = TestServer::spawn_cluster_on(&redis.url(), 1, |_| {}).await;
    let node = &nodes[0];
    assert_eq!(node.get("/readyz").await.0, 200);
    redis.kill();
    tributary_testkit::eventually("unready without Redis", std::time::Duration::from_secs(15), || async {
        let (status, body) = node.get("/readyz").await;
        status == 503 && body["error"]["name"] == "unavailable"
    })
    .await
    .unwrap();
    assert_eq!(node.get("/healthz").await.0, 200, "alive all the same");
    redis.restart();
    tributary_testkit::eventually("ready again", std::time::Duration::from_secs(15), || async {
        node.get("/readyz").await.0 == 200
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_channels_spread_over_shards_and_every_guarantee_holds() {
    let redis = ThrowawayCluster::start(3);
    let nodes = TestServer::spawn_cluster_on(&redis.url(), 3, |_| {}).await;
    let token = nodes[0].all_rights("sharded").await;
    let channels: Vec<String> = (0..6).map(|n| format!("chat:shard{n}")).collect();
    let mut subscribers = Vec::new();
    for node in &nodes {
        let mut ws = node.ws(&token).await;
        for channel in &channels {
            ws.request(json!({"op": "subscribe", "channel": channel})).await.unwrap();
        }
        subscribers.push(ws);
    }
    for n in 0..30 {
        let channel = &channels[n % channels.len()];
        let reply = nodes[n % 3].publish(channel, json!(n)).await;
        assert_eq!(reply["offset"].as_u64(), Some((n / channels.len() + 1) as u64), "{reply}");
    }
    for ws in &mut subscribers {
        let got = ws.messages(30).await.unwrap();
        for channel in &channels {
            let of_channel: Vec<u64> = got
                .iter()
                .filter(|m| m["channel"] == channel.as_str())
                .map(|m| m["offset"].as_u64().unwrap())
                .collect();
            assert_eq!(of_channel, (1..=5).collect::<Vec<_>>(), "{channel}: every message once, in order");
        }
    }
    // The channels' keys live on more than one shard: the code path is really the cluster's.
    let shards_with_keys =
        redis.nodes().iter().filter(|node| !node.command(&["DBSIZE"]).starts_with(":0")).count();
    assert!(shards_with_keys >= 2, "keys on {shards_with_keys} shard(s)");
    // History and presence are read on another node than the one that wrote them.
    let (status, history) = nodes[2].get("/v1/channels/chat:shard1/history").await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(5), "{history}");
    let (status, presence) = nodes[1].get("/v1/channels/chat:shard0/presence").await;
    assert_eq!(status, 200, "{presence}");
    assert_eq!(presence["occupancy"], json!({"members": 1, "connections": 3}), "{presence}");
    println!(
        "redis cluster: 3 shards ({shards_with_keys} with keys), 3 nodes, 6 channels, 30 published, 90 delivered in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_channels_slot_moves_to_another_shard_only_its_subscribers_recover() {
    let redis = ThrowawayCluster::start(3);
    let nodes = TestServer::spawn_cluster_on(&redis.url(), 1, |_| {}).await;
    let node = &nodes[0];
    let token = node.all_rights("mover").await;
    let slot = |channel: &str| redis.slot_of(&format!("{{{}:{channel}}}", node.app_id()));
    let (moving, staying) = ("chat:moving", "chat:staying");
    assert_ne!(slot(moving), slot(staying));
    let mut subscribers = Vec::new();
    for channel in [moving, staying] {
        let mut ws = node.ws(&token).await;
        let reply = ws.request(json!({"op": "subscribe", "channel": channel})).await.unwrap();
        node.publish(channel, json!(1)).await;
        assert_eq!(offsets(&ws.messages(1).await.unwrap()), vec![1]);
        subscribers.push((ws, reply["result"]["epoch"].clone()));
    }
    let to = (redis.owner_of(slot(moving)) + 1) % 3;
    redis.move_slot(slot(moving), to);

    // Redis dropped the node's subscription with the slot: the node subscribes on the new owner
    // and its subscriber of that channel is told to recover, in case it missed something.
    let (mut ws, epoch) = subscribers.remove(0);
    let (code, _) = ws.closed().await.unwrap();
    assert_eq!(code, 3001, "told to reconnect and recover");
    let mut again = node.ws(&token).await;
    let reply = again
        .request(json!({"op": "subscribe", "channel": moving, "recover": {"epoch": epoch, "offset": 1}}))
        .await
        .unwrap();
    // The keys moved intact, but a script cannot tell a moved channel from one a failover
    // restored from a lagging replica: the epoch changes (unless restarts are trusted), and the
    // client is told rather than shown a gap.
    assert_eq!(reply["result"]["recovered"], false, "{reply}");
    assert_ne!(reply["result"]["epoch"], epoch, "{reply}");
    node.publish(moving, json!(2)).await;
    assert_eq!(offsets(&again.messages(1).await.unwrap()), vec![1], "live again, from the new shard");

    // The other channel's subscriber was left alone.
    let (mut other, _) = subscribers.remove(0);
    node.publish(staying, json!(2)).await;
    assert_eq!(offsets(&other.messages(1).await.unwrap()), vec![2]);
    assert_eq!(node.get("/readyz").await.0, 200, "the node stayed ready");
    println!(
        "redis cluster slot move: the moved channel's subscriber recovered, the other kept its connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_data_directories_of_their_own_share_apps_and_keys_through_postgresql() {
    let url = std::env::var("TRIBUTARY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nodes = TestServer::spawn_nodes_on_postgres(&url, 2).await;
    // A token minted with node 0's app key works on node 1: both read the same store.
    let token = nodes[0].all_rights("shared").await;
    let mut subscriber = nodes[1].ws(&token).await;
    subscriber.request(json!({"op": "subscribe", "channel": "chat:pg"})).await.unwrap();
    let reply = nodes[0].publish("chat:pg", json!("hello")).await;
    assert_eq!(reply["offset"], 1, "{reply}");
    assert_eq!(subscriber.messages(1).await.unwrap()[0]["data"], "hello");
    // And node 1 knows node 0's API key.
    let (status, body) = nodes[1]
        .http()
        .get(format!("{}/v1/channels/chat:pg/history", nodes[1].http_url()))
        .bearer_auth(nodes[0].api_key())
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200, "{:?}", body.text().await);
}
