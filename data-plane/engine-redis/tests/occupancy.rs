//! Channel occupancy across nodes sharing one Redis (`TRIBUTARY_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`): a channel is occupied while any node holds it, and the channels
//! of a node that stopped without letting go are vacated once its lease ends; its presence
//! entries expire into leaves even where no other node serves their channel.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use tributary_engine::conformance::RecordingSink;
use tributary_engine::{ChannelKey, Engine};
use tributary_engine_redis::{RedisEngine, RedisEngineConfig};
use tributary_protocol::ChannelName;

async fn node(prefix: &str) -> Arc<dyn Engine> {
    let url = std::env::var("TRIBUTARY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut config = RedisEngineConfig::new(url);
    config.prefix = prefix.to_owned();
    config.occupancy_tick = Duration::from_millis(100);
    Arc::new(RedisEngine::connect(config).await.expect("Redis on 127.0.0.1:6379 (scripts/test starts one)"))
}

/// The channel events of the app's feed, as `(kind, channel)`.
async fn channel_events(engine: &Arc<dyn Engine>, app: &str) -> Vec<(&'static str, String)> {
    let page = engine.feed_read(app, "", 1_000).await.unwrap();
    page.entries
        .iter()
        .filter(|e| e.record.kind().starts_with("channel."))
        .map(|e| (e.record.kind(), e.channel.as_ref().map(ToString::to_string).unwrap_or_default()))
        .collect()
}

/// Waits (with a deadline) until the app's channel events are `expected`.
async fn wait_for(engine: &Arc<dyn Engine>, app: &str, expected: &[(&'static str, &str)], within: Duration) {
    let want: Vec<(&str, String)> = expected.iter().map(|(k, c)| (*k, (*c).to_owned())).collect();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = channel_events(engine, app).await;
        if seen == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "channel events {seen:?} never became {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_is_occupied_while_any_node_holds_it_and_vacated_when_a_stopped_nodes_lease_ends() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("trbtest-occ-{nanos:x}");
    let (first, second) = (node(&prefix).await, node(&prefix).await);
    let _sinks = (RecordingSink::attach(&first), RecordingSink::attach(&second));
    let key = ChannelKey::new("app_occ", ChannelName::parse("rooms:1").unwrap());
    first.feed_enable("app_occ").await.unwrap();

    first.subscribe(&key).await.unwrap();
    wait_for(&first, "app_occ", &[("channel.occupied", "rooms:1")], Duration::from_secs(5)).await;
    second.subscribe(&key).await.unwrap();
    first.unsubscribe(&key).await.unwrap();
    // Several of the nodes' ticks: the second node still holds the channel.
    let settle = tokio::time::Instant::now() + Duration::from_millis(600);
    while tokio::time::Instant::now() < settle {
        assert_eq!(channel_events(&first, "app_occ").await, [("channel.occupied", "rooms:1".to_owned())]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The second node stops without letting go (as if killed): the reader's upkeep vacates the
    // channel once the node's lease (15 ticks) has ended, and not before.
    drop(second);
    first.feed_upkeep("app_occ").await.unwrap();
    assert_eq!(channel_events(&first, "app_occ").await.len(), 1, "the lease has not ended yet");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        first.feed_upkeep("app_occ").await.unwrap();
        if channel_events(&first, "app_occ").await.len() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stopped node's channel was never vacated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected = [("channel.occupied", "rooms:1"), ("channel.vacated", "rooms:1")];
    wait_for(&first, "app_occ", &expected, Duration::from_secs(1)).await;

    // A feed turned off forgets the occupancy with it; on again, held channels come back.
    first.subscribe(&key).await.unwrap();
    first.feed_disable("app_occ").await.unwrap();
    first.feed_enable("app_occ").await.unwrap();
    wait_for(&first, "app_occ", &[("channel.occupied", "rooms:1")], Duration::from_secs(5)).await;
    first.feed_disable("app_occ").await.unwrap();
}

/// A presence entry of a node that was killed, in a channel no other node serves, still
/// expires into a `presence.leave` in the app's feed: the feed's reader sweeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_presence_leaves_reach_the_feed_when_no_other_node_serves_the_channel() {
    use tributary_engine::PresenceOptions;
    use tributary_protocol::frame::MemberInfo;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("trbtest-exp-{nanos:x}");
    let (killed, reader) = (node(&prefix).await, node(&prefix).await);
    let _sinks = (RecordingSink::attach(&killed), RecordingSink::attach(&reader));
    let key = ChannelKey::new("app_exp", ChannelName::parse("rooms:2").unwrap());
    reader.feed_enable("app_exp").await.unwrap();
    killed.subscribe(&key).await.unwrap();
    let member = MemberInfo { client_id: Arc::from("ghost"), conn_id: Arc::from("g1"), state: None };
    let short = PresenceOptions { ttl: Duration::from_millis(300), announce: true };
    killed.presence_join(&key, member, short).await.unwrap();
    drop(killed);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        reader.feed_upkeep("app_exp").await.unwrap();
        let page = reader.feed_read("app_exp", "", 100).await.unwrap();
        let kinds: Vec<&str> =
            page.entries.iter().map(|e| e.record.kind()).filter(|k| k.starts_with("presence")).collect();
        if kinds == ["presence.join", "presence.leave"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the killed node's member never left: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.feed_disable("app_exp").await.unwrap();
}
