//! Configuration: one tree of per-crate sections, loaded with a fixed precedence.
//!
//! Built-in defaults < TOML file < `TRIBUTARY_*` environment < command-line flags. The
//! environment arrives as a map (main reads it once), so tests never touch the process
//! environment. [`load`] reports every problem at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tributary_relay::RelayConfig;

mod audit;
mod billing;
mod delivery;

pub use audit::AuditConfig;
pub use billing::BillingConfig;
pub use delivery::DeliveryConfig;

/// The default configuration file, embedded so `tributary config default` and the docs cannot drift.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../default-config.toml");

/// The top-level keys that `TRIBUTARY_*` variables may set.
const CONFIG_SECTIONS: &[&str] = &[
    "listen",
    "data_dir",
    "master_key",
    "storage",
    "engine",
    "relay",
    "control",
    "delivery",
    "audit",
    "billing",
];

/// `TRIBUTARY_*` variables that belong to the CLI or logging, not to the configuration.
const CLI_VARIABLES: &[&str] = &["config", "log", "log_format", "api_key", "url", "token", "admin_token"];

/// The environment variable prefix.
pub const ENV_PREFIX: &str = "TRIBUTARY_";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TributaryConfig {
    /// Address of the HTTP/WebSocket listener.
    pub listen: SocketAddr,
    /// Directory of the embedded defaults' files.
    pub data_dir: PathBuf,
    /// base64 of the 32-byte master key that encrypts tenant secrets.
    #[serde(skip_serializing)]
    pub master_key: Option<SecretString>,
    /// Storage settings.
    pub storage: StorageConfig,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Relay settings.
    pub relay: RelayConfig,
    /// Control plane settings (console accounts).
    pub control: ControlConfig,
    /// Delivery worker settings (webhooks).
    pub delivery: DeliveryConfig,
    /// Audit log settings.
    pub audit: AuditConfig,
    /// Billing (Stripe) settings.
    pub billing: BillingConfig,
}

/// Control plane settings: the console's accounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Whether anyone may sign a company up at `POST /v1/auth/signup`.
    pub allow_signup: bool,
    /// The plan a company that signs up is put on.
    pub signup_plan: String,
    /// How long a console session lasts, in seconds.
    pub session_ttl_secs: u64,
    /// Whether the session cookie is `Secure` (HTTPS only).
    pub secure_cookies: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            allow_signup: false,
            signup_plan: "free".into(),
            session_ttl_secs: 7 * 24 * 3600,
            secure_cookies: true,
        }
    }
}

impl ControlConfig {
    /// Returns the settings the management API takes.
    pub fn settings(&self) -> tributary_control_plane::ControlSettings {
        tributary_control_plane::ControlSettings {
            allow_signup: self.allow_signup,
            signup_plan: self.signup_plan.clone(),
            session_ttl_secs: i64::try_from(self.session_ttl_secs).unwrap_or(i64::MAX),
            secure_cookies: self.secure_cookies,
            webhook_policy: tributary_delivery::address::AddressPolicy::new(),
            stripe_webhook_secret: None,
            stripe_tolerance_secs: 300,
            stripe_plans: std::collections::HashMap::new(),
            billing_grace_secs: 7 * 24 * 3600,
        }
    }
}

impl Default for TributaryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("tributary-data"),
            master_key: None,
            storage: StorageConfig::default(),
            engine: EngineConfig::default(),
            relay: RelayConfig::default(),
            control: ControlConfig::default(),
            delivery: DeliveryConfig::default(),
            audit: AuditConfig::default(),
            billing: BillingConfig::default(),
        }
    }
}

/// Storage settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// The database: `postgres://…` for PostgreSQL; empty for the SQLite file `sqlite_path`.
    pub database_url: String,
    /// The SQLite file when `database_url` is empty; relative to `data_dir` unless absolute.
    pub sqlite_path: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { database_url: String::new(), sqlite_path: PathBuf::from("tributary.db") }
    }
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The database URL may hold a password.
        f.debug_struct("StorageConfig")
            .field("database_url", &tributary_engine_redis::connection::redacted(&self.database_url))
            .field("sqlite_path", &self.sqlite_path)
            .finish()
    }
}

/// Engine settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `memory` (one node) or `redis` (any number of nodes sharing one Redis).
    pub kind: String,
    /// Idle time after which an empty stream is forgotten, in seconds.
    pub stream_idle_ttl_secs: u64,
    /// The Redis URL (`redis://host:port/db`, or `redis+cluster://host:port,host:port`), for
    /// `kind = "redis"`.
    pub redis_url: String,
    /// Prefix of every Redis key and channel, so that deployments can share one Redis.
    pub redis_prefix: String,
    /// Keep epochs across Redis restarts and failovers (only when Redis cannot lose a write).
    pub redis_trust_restarts: bool,
    /// How many connections carry commands to Redis (a channel always uses the same one).
    pub redis_connections: usize,
    /// For `rediss` URLs: a PEM file of the authority that signed Redis's certificate (empty:
    /// the system's trusted roots).
    pub redis_tls_ca_file: String,
    /// Most entries kept in each app's durable feed (apps with rules); the oldest go first.
    pub feed_max_len: usize,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The Redis URL may hold a password.
        f.debug_struct("EngineConfig")
            .field("kind", &self.kind)
            .field("stream_idle_ttl_secs", &self.stream_idle_ttl_secs)
            .field("redis_url", &tributary_engine_redis::connection::redacted(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("redis_trust_restarts", &self.redis_trust_restarts)
            .field("redis_connections", &self.redis_connections)
            .field("redis_tls_ca_file", &self.redis_tls_ca_file)
            .field("feed_max_len", &self.feed_max_len)
            .finish()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            stream_idle_ttl_secs: 86_400,
            redis_url: String::new(),
            redis_prefix: "trb".into(),
            redis_trust_restarts: false,
            redis_connections: 4,
            redis_tls_ca_file: String::new(),
            feed_max_len: 100_000,
        }
    }
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    /// Every problem, one per line.
    pub problems: Vec<String>,
}

impl TributaryConfig {
    /// Returns the SQLite file path.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join(&self.storage.sqlite_path)
    }

    /// Opens the store: `storage.database_url`, or the SQLite file `sqlite_path`.
    pub async fn open_store(
        &self,
        master_key: &tributary_store::MasterKey,
    ) -> Result<tributary_store::Store, tributary_store::StoreError> {
        if self.storage.database_url.is_empty() {
            tributary_store::Store::open_sqlite(&self.sqlite_path(), master_key).await
        } else {
            tributary_store::Store::open(&self.storage.database_url, master_key).await
        }
    }

    /// Returns every problem with this configuration.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.relay.problems();
        problems.extend(self.delivery.problems());
        problems.extend(self.audit.problems());
        problems.extend(self.billing.problems());
        if self.control.session_ttl_secs == 0 {
            problems.push("control.session_ttl_secs must be greater than 0".into());
        }
        if !self.storage.database_url.is_empty()
            && tributary_store::Backend::of(&self.storage.database_url).is_err()
        {
            // The URL is not repeated: it may hold a password.
            problems.push("storage.database_url must be a postgres:// or sqlite:// URL (or empty)".into());
        }
        match self.engine.kind.as_str() {
            "memory" => {}
            "redis" => {
                // The URL is not repeated: it may hold a password.
                if let Err(problem) =
                    tributary_engine_redis::connection::Target::parse(&self.engine.redis_url)
                {
                    problems.push(format!("engine.redis_url: {problem}"));
                }
                if !(1..=64).contains(&self.engine.redis_connections) {
                    problems.push("engine.redis_connections must be between 1 and 64".into());
                }
                if self.engine.redis_prefix.is_empty() || self.engine.redis_prefix.contains(['{', '}', ' ']) {
                    problems.push("engine.redis_prefix must be non-empty, without braces or spaces".into());
                }
            }
            other => {
                problems.push(format!("engine.kind {other:?} is not an engine: use \"memory\" or \"redis\""))
            }
        }
        if self.engine.stream_idle_ttl_secs == 0 {
            problems.push("engine.stream_idle_ttl_secs must be greater than 0".into());
        }
        problems
    }
}

/// Loads the configuration: defaults, then `file` (if any), then `TRIBUTARY_*` entries of
/// `env`, then `flags` (dotted keys such as `listen` or `relay.max_frame_bytes`).
pub fn load(
    file: Option<&Path>,
    env: &HashMap<String, String>,
    flags: &[(String, String)],
) -> Result<TributaryConfig, ConfigError> {
    let mut problems = Vec::new();
    let mut tree = toml::Table::new();
    if let Some(path) = file {
        match std::fs::read_to_string(path) {
            Ok(text) => match text.parse::<toml::Table>() {
                Ok(table) => tree = table,
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            },
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    let mut env_keys: Vec<_> = env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    env_keys.sort();
    for (name, value) in env_keys {
        let path: Vec<String> =
            name[ENV_PREFIX.len()..].split("__").map(|part| part.to_ascii_lowercase()).collect();
        let first = path.first().map(String::as_str).unwrap_or_default();
        if CLI_VARIABLES.contains(&first) {
            continue;
        }
        if !CONFIG_SECTIONS.contains(&first) {
            // A typo such as TRIBUTARY_RELAY_PING_INTERVAL_MS (one underscore) must not be
            // silently ignored.
            problems.push(format!("{name}: unknown variable (nested keys are separated by \"__\")"));
            continue;
        }
        set_path(&mut tree, &path, literal(value));
    }
    for (key, value) in flags {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        set_path(&mut tree, &path, literal(value));
    }
    let config = match TributaryConfig::deserialize(toml::Value::Table(tree)) {
        Ok(config) => Some(config),
        Err(e) => {
            problems.push(e.to_string().trim().to_owned());
            None
        }
    };
    if let Some(config) = &config {
        problems.extend(config.problems());
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError { problems }),
    }
}

/// Reads an environment or flag value as a TOML literal (number, boolean, array) when it is
/// one, and as a string otherwise.
fn literal(value: &str) -> toml::Value {
    match format!("v = {value}").parse::<toml::Table>() {
        Ok(mut table) => table.remove("v").unwrap_or_else(|| toml::Value::String(value.to_owned())),
        Err(_) => toml::Value::String(value.to_owned()),
    }
}

fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut node = tree;
    for key in parents {
        let entry = node.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(table) => node = table,
            _ => return,
        }
    }
    node.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_embedded_default_file_is_exactly_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, DEFAULT_CONFIG_TOML).unwrap();
        let loaded = load(Some(&path), &HashMap::new(), &[]).unwrap();
        let defaults = TributaryConfig::default();
        assert_eq!(loaded.listen, defaults.listen);
        assert_eq!(loaded.relay, defaults.relay);
        assert_eq!(loaded.engine, defaults.engine);
        assert_eq!(loaded.storage, defaults.storage);
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\n[relay]\nping_interval_ms = 1000\n").unwrap();
        let env = env(&[
            ("TRIBUTARY_LISTEN", "127.0.0.1:2"),
            ("TRIBUTARY_RELAY__NAMESPACES__CHAT__HISTORY_SIZE", "7"),
            ("TRIBUTARY_API_KEY", "belongs to the CLI"),
            ("TRIBUTARY_LOG_FORMAT", "json"),
            ("OTHER", "x"),
        ]);
        let flags = vec![("listen".to_string(), "127.0.0.1:3".to_string())];
        let config = load(Some(&path), &env, &flags).unwrap();
        assert_eq!(config.listen.port(), 3);
        assert_eq!(config.relay.ping_interval_ms, 1000);
        assert_eq!(config.relay.namespace("chat").history_size, 7);
        let config = load(Some(&path), &env, &[]).unwrap();
        assert_eq!(config.listen.port(), 2);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let env = env(&[
            ("TRIBUTARY_RELAY__IDLE_TIMEOUT_MS", "1"),
            ("TRIBUTARY_RELAY__IDEMPOTENCY_WINDOW_SECS", "5"),
            ("TRIBUTARY_RELAY__TOKEN_LEEWAY_SECS", "600"),
        ]);
        let err = load(None, &env, &[]).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
    }

    #[test]
    fn audit_settings_out_of_range_and_an_audited_namespace_in_the_file_are_refused() {
        let env = env(&[
            ("TRIBUTARY_AUDIT__ORIGIN_PREFIX", "has space"),
            ("TRIBUTARY_AUDIT__CHECKPOINT_INTERVAL_MS", "10"),
            ("TRIBUTARY_AUDIT__BATCH", "0"),
        ]);
        let err = load(None, &env, &[]).unwrap_err().to_string();
        for key in ["audit.origin_prefix", "audit.checkpoint_interval_ms", "audit.batch"] {
            assert!(err.contains(key), "{key}: {err}");
        }
        let mut config = TributaryConfig::default();
        config.relay.namespaces.insert(
            "ledger".into(),
            tributary_relay::NamespaceConfig { audited: true, ..Default::default() },
        );
        let problems = config.problems();
        assert!(problems.iter().any(|p| p.contains("relay.namespaces.ledger.audited")), "{problems:?}");
    }

    #[test]
    fn misspelt_variables_are_refused() {
        let err = load(None, &env(&[("TRIBUTARY_RELAY_PING_INTERVAL_MS", "1")]), &[]).unwrap_err();
        assert!(err.to_string().contains("TRIBUTARY_RELAY_PING_INTERVAL_MS"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = load(None, &env(&[("TRIBUTARY_RELAY__NO_SUCH_KEY", "1")]), &[]).unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
    }

    #[test]
    fn a_bad_redis_url_is_refused_without_repeating_its_password() {
        for url in
            ["http://user:hunter2@h:6379", "redis+cluster://user:hunter2@", "rediss+cluster://user:hunter2@"]
        {
            let env = env(&[("TRIBUTARY_ENGINE__KIND", "redis"), ("TRIBUTARY_ENGINE__REDIS_URL", url)]);
            let err = load(None, &env, &[]).unwrap_err().to_string();
            assert!(err.contains("engine.redis_url"), "{err}");
            assert!(!err.contains("hunter2"), "the password leaked: {err}");
        }
        let env_with_password = env(&[("TRIBUTARY_ENGINE__REDIS_URL", "redis://u:hunter2@h:1")]);
        let config = load(None, &env_with_password, &[]).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"), "Debug shows no password");
        let env = env(&[
            ("TRIBUTARY_ENGINE__KIND", "redis"),
            ("TRIBUTARY_ENGINE__REDIS_URL", "redis+cluster://a:1,b:2"),
        ]);
        assert!(load(None, &env, &[]).is_ok());
    }
}
