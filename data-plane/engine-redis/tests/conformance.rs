//! The engine conformance suite against a real Redis (`TRIBUTARY_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`), each case under a key prefix of its own.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tributary_engine::Engine;
use tributary_engine_redis::{RedisEngine, RedisEngineConfig};

async fn engine() -> Arc<dyn Engine> {
    let url = std::env::var("TRIBUTARY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut config = RedisEngineConfig::new(url);
    config.prefix = format!("trbtest-{}", uuid_like());
    config.presence_sweep = std::time::Duration::from_millis(100);
    config.occupancy_tick = std::time::Duration::from_millis(100);
    Arc::new(RedisEngine::connect(config).await.expect("Redis on 127.0.0.1:6379 (scripts/test starts one)"))
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{nanos:x}-{:x}", std::process::id())
}

tributary_engine::engine_conformance_suite!(engine);

/// Redis trims a feed approximately (`MAXLEN ~`): a reader whose position was trimmed away is
/// told of the gap (the stream's largest deleted id is past it), a reader after it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_what_redis_trimmed_from_a_feed_is_told_of_the_gap() {
    use std::time::Duration;
    use tributary_engine::{ChannelKey, FeedRetention, NewMessage, PublishOptions, StreamOptions};
    let url = std::env::var("TRIBUTARY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut config = RedisEngineConfig::new(url);
    config.prefix = format!("trbtest-{}", uuid_like());
    config.feed_retention = FeedRetention { max_len: 10 };
    let engine = RedisEngine::connect(config).await.unwrap();
    let key = ChannelKey::new("app_gap", tributary_protocol::ChannelName::parse("orders:1").unwrap());
    engine.feed_enable("app_gap").await.unwrap();
    let options = PublishOptions {
        stream: StreamOptions { history_size: 0, history_ttl: Duration::from_secs(60) },
        idempotency_key: None,
        idempotency_window: Duration::from_secs(60),
    };
    let message = || NewMessage {
        payload: tributary_protocol::Payload::Json(bytes::Bytes::from_static(b"1")),
        client_id: None,
        encoding: None,
        meta: None,
    };
    engine.publish(&key, message(), &options).await.unwrap();
    let first = engine.feed_read("app_gap", "", 10).await.unwrap();
    assert!(!first.gap);
    let saved = first.entries[0].position.to_string();
    // Enough for Redis to drop whole nodes of the stream (a hundred entries each by default).
    for _ in 0..500 {
        engine.publish(&key, message(), &options).await.unwrap();
    }
    let behind = engine.feed_read("app_gap", &saved, 1_000).await.unwrap();
    assert!(behind.gap, "the first entries were trimmed before this reader read them");
    assert!(behind.entries.len() < 500);
    let last = behind.entries.last().unwrap().position.to_string();
    assert!(
        !engine.feed_read("app_gap", &last, 10).await.unwrap().gap,
        "a reader that keeps up misses nothing"
    );
    assert!(engine.feed_read("app_gap", "garbage", 10).await.unwrap().gap, "a position from elsewhere");
    engine.feed_disable("app_gap").await.unwrap();
}
