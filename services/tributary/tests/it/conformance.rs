//! The engine conformance suite, run for the in-memory engine as the binary configures it.

use std::sync::Arc;

use tributary_engine::{Engine, MemoryEngine, MemoryEngineConfig};

async fn memory_engine() -> Arc<dyn Engine> {
    let config =
        MemoryEngineConfig { sweep_interval: std::time::Duration::from_millis(50), ..Default::default() };
    Arc::new(MemoryEngine::new(config))
}

tributary_engine::engine_conformance_suite!(memory_engine);
