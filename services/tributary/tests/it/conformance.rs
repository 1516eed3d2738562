//! The engine conformance suite, run for the in-memory engine as the binary configures it: the
//! default sweep (500 ms) and the stream idle TTL of the default configuration, rather than the
//! 50 ms sweep the engine crate's own run uses.

use std::sync::Arc;

use tributary_engine::{Engine, MemoryEngine, MemoryEngineConfig};

async fn memory_engine() -> Arc<dyn Engine> {
    let defaults = tributary::config::TributaryConfig::default();
    let config = MemoryEngineConfig {
        stream_idle_ttl: std::time::Duration::from_secs(defaults.engine.stream_idle_ttl_secs),
        ..MemoryEngineConfig::default()
    };
    Arc::new(MemoryEngine::new(config))
}

tributary_engine::engine_conformance_suite!(memory_engine);
