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
    Arc::new(RedisEngine::connect(config).await.expect("Redis on 127.0.0.1:6379 (scripts/test starts one)"))
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{nanos:x}-{:x}", std::process::id())
}

tributary_engine::engine_conformance_suite!(engine);
