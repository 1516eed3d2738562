//! Logging: human-readable by default, JSON with `TRIBUTARY_LOG_FORMAT=json`; the filter comes
//! from `TRIBUTARY_LOG` (e.g. `info,tributary_relay=debug`).

use std::collections::HashMap;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls do nothing.
pub fn init(env: &HashMap<String, String>) {
    let filter = env.get("TRIBUTARY_LOG").map(String::as_str).unwrap_or("info");
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if env.get("TRIBUTARY_LOG_FORMAT").is_some_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
