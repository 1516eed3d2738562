//! Dev-only test kit: a real Tributary server on port 0 with its own data directory, and the
//! clients tests talk to it with (WebSocket, SSE, long-poll, HTTP), so test bodies read as
//! behaviour. Nothing here is shared between tests.
//!
//! # Layout
//! - [`TestServer`]: spawn, URLs, one helper per HTTP API operation.
//! - [`ws`]: [`WsClient`], a WebSocket client that matches replies to requests.
//! - [`sse`]: [`SseClient`], a Server-Sent Events reader.
//! - [`mqtt`]: [`MqttClient`], a raw MQTT client for conformance tests.
//! - [`eventually`]: wait for a condition instead of sleeping and hoping.
//! - [`seam`]: [`SeamEngine`], which holds a channel's subscribe so a test can publish into the
//!   seam between joining a channel and going live, every run.
//! - [`tls`]: [`tls::TestCertificates`], an authority and a server certificate made with openssl.
//! - [`push`]: fakes of APNs (HTTP/2 over TLS) and FCM (with Google's token endpoint) that
//!   verify the real protocols, and the keys they verify.
//! - [`sms`]: a fake of Twilio's Messages API that sends signed status callbacks.
//! - [`checker`]: [`HistoryChecker`], which finds lost, duplicated, reordered, phantom and
//!   silently skipped messages and reused offsets in what a test published and received.

pub mod checker;
pub mod mqtt;
pub mod push;
pub mod redis;
pub mod seam;
pub mod sms;
pub mod sse;
pub mod tls;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tributary::bootstrap::Credentials;
use tributary::config::TributaryConfig;
use tributary_relay::RelayConfig;

pub use checker::{HistoryChecker, Report};
pub use mqtt::MqttClient;
pub use redis::{ThrowawayCluster, ThrowawayRedis};
pub use seam::{Gate, SeamEngine};
pub use sse::SseClient;
pub use ws::WsClient;

/// Installs a test log subscriber once; silent unless `TEST_LOG=1`.
fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
            let _ = tracing_subscriber::fmt().with_env_filter("debug").with_test_writer().try_init();
        }
    });
}

/// A running server, stopped when dropped.
pub struct TestServer {
    addr: std::net::SocketAddr,
    mqtt_addr: Option<std::net::SocketAddr>,
    mqtt_ws_addr: Option<std::net::SocketAddr>,
    mqtt_tls_addr: Option<std::net::SocketAddr>,
    credentials: Credentials,
    http: reqwest::Client,
    store: tributary_store::Store,
    relay: Arc<tributary_relay::state::RelayState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Arc<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server with the default configuration.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts a server after `configure` adjusts its relay settings.
    pub async fn spawn_with(configure: impl FnOnce(&mut RelayConfig)) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let master_key = tributary_store::MasterKey::generate().to_base64();
        Self::spawn_in(dir, master_key, |config| configure(&mut config.relay)).await
    }

    /// Starts a server after `configure` adjusts its whole configuration.
    pub async fn spawn_configured(configure: impl FnOnce(&mut TributaryConfig)) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let master_key = tributary_store::MasterKey::generate().to_base64();
        Self::spawn_in(dir, master_key, configure).await
    }

    /// Starts `nodes` servers that share one data directory (so one store of apps and keys) and
    /// one Redis (`TRIBUTARY_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`) under a key
    /// prefix of their own: a cluster as a load balancer would see it.
    pub async fn spawn_cluster(nodes: usize, configure: impl Fn(&mut RelayConfig)) -> Vec<Self> {
        let url =
            std::env::var("TRIBUTARY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        Self::spawn_cluster_on(&url, nodes, configure).await
    }

    /// Like [`TestServer::spawn_cluster`], on the Redis at `url`.
    pub async fn spawn_cluster_on(
        url: &str,
        nodes: usize,
        configure: impl Fn(&mut RelayConfig),
    ) -> Vec<Self> {
        Self::spawn_nodes(url, nodes, |config| configure(&mut config.relay)).await
    }

    /// Like [`TestServer::spawn_cluster_on`], with the whole configuration to adjust (engine
    /// settings too).
    pub async fn spawn_nodes(url: &str, nodes: usize, configure: impl Fn(&mut TributaryConfig)) -> Vec<Self> {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let master_key = tributary_store::MasterKey::generate().to_base64();
        let prefix = format!("trbtest-{}", uuid::Uuid::new_v4().simple());
        let mut servers = Vec::with_capacity(nodes);
        for _ in 0..nodes {
            let server = Self::spawn_in(dir.clone(), master_key.clone(), |config| {
                config.engine.kind = "redis".into();
                config.engine.redis_url = url.to_owned();
                config.engine.redis_prefix = prefix.clone();
                configure(config);
            })
            .await;
            servers.push(server);
        }
        servers
    }

    /// Starts `nodes` servers as a production deployment runs them: each with a data directory
    /// of its own, all sharing one fresh PostgreSQL database (on the server of
    /// `TRIBUTARY_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`) for
    /// apps and keys, and the Redis at `redis_url` under a prefix of their own.
    pub async fn spawn_nodes_on_postgres(redis_url: &str, nodes: usize) -> Vec<Self> {
        let database_url = fresh_postgres_database().await;
        Self::spawn_nodes_on_database(&database_url, redis_url, nodes, |_| {}).await
    }

    /// Like [`TestServer::spawn_nodes_on_postgres`], on the database at `database_url`, with the
    /// configuration adjusted by `configure`.
    pub async fn spawn_nodes_on_database(
        database_url: &str,
        redis_url: &str,
        nodes: usize,
        configure: impl Fn(&mut TributaryConfig),
    ) -> Vec<Self> {
        let master_key = tributary_store::MasterKey::generate().to_base64();
        let prefix = format!("trbtest-{}", uuid::Uuid::new_v4().simple());
        let mut servers = Vec::with_capacity(nodes);
        for _ in 0..nodes {
            let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
            let server = Self::spawn_in(dir, master_key.clone(), |config| {
                config.storage.database_url = database_url.to_owned();
                config.engine.kind = "redis".into();
                config.engine.redis_url = redis_url.to_owned();
                config.engine.redis_prefix = prefix.clone();
                configure(config);
            })
            .await;
            servers.push(server);
        }
        servers
    }

    /// Starts a server (configured by `configure`) whose engine is a [`SeamEngine`] over the
    /// one the configuration chose, and returns the gate that holds its subscribe calls.
    pub async fn spawn_with_seam(configure: impl FnOnce(&mut TributaryConfig)) -> (Self, Arc<Gate>) {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let master_key = tributary_store::MasterKey::generate().to_base64();
        let gate = Arc::new(Gate::default());
        let held = gate.clone();
        let wrap = move |inner| Arc::new(SeamEngine::new(inner, held)) as Arc<dyn tributary_engine::Engine>;
        (Self::spawn_wrapped(dir, master_key, configure, wrap).await, gate)
    }

    async fn spawn_in(
        dir: Arc<tempfile::TempDir>,
        master_key: secrecy::SecretString,
        configure: impl FnOnce(&mut TributaryConfig),
    ) -> Self {
        Self::spawn_wrapped(dir, master_key, configure, |engine| engine).await
    }

    async fn spawn_wrapped(
        dir: Arc<tempfile::TempDir>,
        master_key: secrecy::SecretString,
        configure: impl FnOnce(&mut TributaryConfig),
        wrap: impl FnOnce(Arc<dyn tributary_engine::Engine>) -> Arc<dyn tributary_engine::Engine>,
    ) -> Self {
        init_tracing();
        let mut config = TributaryConfig {
            data_dir: dir.path().to_owned(),
            master_key: Some(master_key),
            ..TributaryConfig::default()
        };
        configure(&mut config);
        let problems = config.problems();
        assert!(problems.is_empty(), "test configuration is invalid: {problems:?}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let bound =
            tributary::server::bind_wrapped(config, Some(listener), wrap).await.expect("server binds");
        let addr = bound.addr();
        let mqtt_addr = bound.mqtt_addr();
        let mqtt_ws_addr = bound.mqtt_ws_addr();
        let mqtt_tls_addr = bound.mqtt_tls_addr();
        let credentials = bound.credentials().clone();
        let store = bound.store().clone();
        let relay = bound.relay_state().clone();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = bound
                .run(async {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            mqtt_addr,
            mqtt_ws_addr,
            mqtt_tls_addr,
            credentials,
            http: {
                tributary_delivery::install_tls_provider();
                reqwest::Client::new()
            },
            store,
            relay,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Stops the server and waits until it has shut down.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Starts a server with MQTT (over TCP and over WebSocket) on free ports, after
    /// `configure` adjusts its relay settings.
    pub async fn spawn_mqtt(configure: impl FnOnce(&mut RelayConfig)) -> Self {
        Self::spawn_with(|relay| {
            relay.mqtt.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
            relay.mqtt.ws_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
            configure(relay);
        })
        .await
    }

    /// Returns the MQTT address (servers started with [`TestServer::spawn_mqtt`]).
    pub fn mqtt_addr(&self) -> std::net::SocketAddr {
        self.mqtt_addr.expect("the server was started with MQTT on")
    }

    /// Returns the MQTT-over-WebSocket address (servers started with
    /// [`TestServer::spawn_mqtt`]).
    pub fn mqtt_ws_addr(&self) -> std::net::SocketAddr {
        self.mqtt_ws_addr.expect("the server was started with MQTT on")
    }

    /// Returns the MQTT-over-TLS address (servers configured with `relay.mqtt.tls_listen`).
    pub fn mqtt_tls_addr(&self) -> std::net::SocketAddr {
        self.mqtt_tls_addr.expect("the server was started with MQTT over TLS on")
    }

    /// Returns the HTTP base URL.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }

    /// Returns the development app's API key.
    pub fn api_key(&self) -> &str {
        &self.credentials.api_key
    }

    /// Returns the development app's id.
    pub fn app_id(&self) -> &str {
        &self.credentials.app_id
    }

    /// Returns the development tenant's id.
    pub fn tenant_id(&self) -> &str {
        &self.credentials.tenant_id
    }

    /// Returns the data directory's operator token (management API).
    pub fn operator_token(&self) -> &str {
        self.credentials.operator_token.as_deref().expect("first start writes an operator token")
    }

    /// Calls the management API as `token`: `method` (`GET`/`POST`/`PUT`/`DELETE`), `path`, an optional JSON
    /// body; returns the status and the JSON body (`null` when there is none).
    pub async fn manage(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.http_url());
        let mut request = match method {
            "GET" => self.http.get(url),
            "POST" => self.http.post(url),
            "PUT" => self.http.put(url),
            "DELETE" => self.http.delete(url),
            other => panic!("unsupported method {other}"),
        }
        .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates another tenant with one app, a signing key and an API key; returns the app.
    pub async fn create_app(&self, name: &str) -> OtherApp {
        let tenant = self.store.create_tenant(name).await.expect("tenant created");
        let app = self.store.create_app(&tenant.id, name).await.expect("app created");
        self.store.create_signing_key(&tenant.id, &app.id).await.expect("signing key created");
        let key = self.store.create_api_key(&tenant.id, &app.id, name).await.expect("api key created");
        OtherApp { app_id: app.id, api_key: secrecy::ExposeSecret::expose_secret(&key.plaintext).to_owned() }
    }

    /// Returns the newest signing key of `app_id`, to craft tokens by hand.
    pub async fn signing_key(&self, app_id: &str) -> tributary_capability::SigningKey {
        let record =
            self.store.signing_keys(app_id).await.expect("keys listed").into_iter().next().expect("a key");
        tributary::directory::signing_key(record).expect("usable key")
    }

    /// Returns the server's store, for setting up what the API does not make (yet).
    pub fn store(&self) -> &tributary_store::Store {
        &self.store
    }

    /// Returns the relay's state: what the server decided (for example how many connections it
    /// closed with each code), whether or not a client could read it.
    pub fn relay(&self) -> &tributary_relay::state::RelayState {
        &self.relay
    }

    /// Returns an HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Mints a token for another app through the HTTP API with that app's API key.
    pub async fn token_for(&self, app: &OtherApp, client_id: &str, grants: &[(&str, &[&str])]) -> String {
        let capabilities: Vec<Value> =
            grants.iter().map(|(c, a)| json!({"channel": c, "allow": a})).collect();
        let response = self
            .http
            .post(format!("{}/v1/tokens", self.http_url()))
            .bearer_auth(&app.api_key)
            .json(&json!({"client_id": client_id, "capabilities": capabilities}))
            .send()
            .await
            .expect("request sent");
        let reply: Value = response.json().await.expect("json reply");
        reply["token"].as_str().expect("token in reply").to_owned()
    }

    /// Publishes `data` to `channel` after `delay`, from a background task.
    pub fn publish_later(&self, channel: &str, data: Value, delay: Duration) -> tokio::task::JoinHandle<()> {
        let http = self.http.clone();
        let url = format!("{}/v1/channels/{}/messages", self.http_url(), channel.replace('/', "%2F"));
        let key = self.api_key().to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let response = http.post(&url).bearer_auth(&key).json(&json!({"data": data})).send().await;
            assert!(response.is_ok_and(|r| r.status() == 200), "delayed publish failed");
        })
    }

    /// Mints a token through the HTTP API; `grants` are `(pattern, rights)`.
    pub async fn token(&self, client_id: &str, grants: &[(&str, &[&str])]) -> String {
        self.token_ttl(client_id, grants, 3600).await
    }

    /// Mints a token with a lifetime of `ttl_secs`.
    pub async fn token_ttl(&self, client_id: &str, grants: &[(&str, &[&str])], ttl_secs: u64) -> String {
        let capabilities: Vec<Value> =
            grants.iter().map(|(c, a)| json!({"channel": c, "allow": a})).collect();
        let body = json!({"client_id": client_id, "ttl_secs": ttl_secs, "capabilities": capabilities});
        let (status, reply) = self.post("/v1/tokens", &body, None).await;
        assert_eq!(status, 200, "minting failed: {reply}");
        reply["token"].as_str().expect("token in reply").to_owned()
    }

    /// Mints a token with every right on every channel.
    pub async fn all_rights(&self, client_id: &str) -> String {
        self.token(client_id, &[("*", &["subscribe", "publish", "presence", "history"])]).await
    }

    /// POSTs JSON with the API key; returns the status and the JSON body.
    pub async fn post(&self, path: &str, body: &Value, idempotency_key: Option<&str>) -> (u16, Value) {
        let mut request =
            self.http.post(format!("{}{path}", self.http_url())).bearer_auth(self.api_key()).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GETs with the API key; returns the status and the JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.http_url()))
            .bearer_auth(self.api_key())
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Publishes through the HTTP API and returns the reply (panics unless it succeeded).
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let (status, reply) =
            // A channel name may hold `/` (MQTT topics do): one path segment, escaped.
            self.post(&format!("/v1/channels/{}/messages", channel.replace('/', "%2F")), &json!({"data": data}), None).await;
        assert_eq!(status, 200, "publish failed: {reply}");
        reply
    }

    /// Connects over WebSocket and authenticates with `token`; panics if refused.
    pub async fn ws(&self, token: &str) -> WsClient {
        let (client, reply) = WsClient::connect(&self.ws_url(), token).await.expect("websocket connects");
        assert!(reply.get("result").is_some(), "connect refused: {reply}");
        client
    }

    /// Runs one long-poll request; returns the status and the JSON body.
    pub async fn poll(
        &self,
        channels: &str,
        token: &str,
        cursor: Option<&str>,
        timeout_ms: u64,
    ) -> (u16, Value) {
        let mut query = vec![("channels", channels.to_owned()), ("timeout_ms", timeout_ms.to_string())];
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_owned()));
        }
        let response = self
            .http
            .get(format!("{}/v1/poll", self.http_url()))
            .bearer_auth(token)
            .query(&query)
            .send()
            .await
            .expect("poll sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Opens an SSE stream.
    pub async fn sse(
        &self,
        channels: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<SseClient> {
        SseClient::open(&self.http, &format!("{}/v1/sse", self.http_url()), channels, token, last_event_id)
            .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Configures a server for the Redis at `TRIBUTARY_TEST_REDIS_URL` (default
/// `redis://127.0.0.1:6379`) under a key prefix of its own: for tests that run on both engines.
pub fn use_redis(config: &mut TributaryConfig) {
    config.engine.kind = "redis".into();
    config.engine.redis_url =
        std::env::var("TRIBUTARY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    config.engine.redis_prefix = format!("trbtest-{}", uuid::Uuid::new_v4().simple());
}

/// Leaves a server on the in-memory engine (the other half of [`use_redis`]).
pub fn use_memory(_: &mut TributaryConfig) {}

/// Another app in the same server.
#[derive(Debug, Clone)]
pub struct OtherApp {
    /// The app id.
    pub app_id: String,
    /// Its API key.
    pub api_key: String,
}

/// Creates a fresh, empty PostgreSQL database on the server of `TRIBUTARY_TEST_POSTGRES_URL`
/// (default `postgres://postgres@127.0.0.1:5432/postgres`) and returns its URL. Named
/// `trbtest_…`: `scripts/test` drops those of earlier runs.
pub async fn fresh_postgres_database() -> String {
    let server = std::env::var("TRIBUTARY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base);
    let url = format!("{base}/trbtest_{}", uuid::Uuid::new_v4().simple());
    tributary_store::create_database(&url)
        .await
        .expect("PostgreSQL answers on 127.0.0.1:5432 (scripts/test starts it)");
    url
}

/// Drops a PostgreSQL database made by [`fresh_postgres_database`] while servers still use it
/// (their connections are cut): the database is gone, as in an outage.
pub async fn drop_postgres_database(url: &str) {
    use sqlx::Connection as _;
    let (base, name) = url.rsplit_once('/').expect("a database URL ends in its name");
    assert!(name.starts_with("trbtest_"), "only test databases are dropped");
    sqlx::any::install_default_drivers();
    let mut admin =
        sqlx::AnyConnection::connect(&format!("{base}/postgres")).await.expect("PostgreSQL answers");
    let statement = format!("DROP DATABASE \"{name}\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut admin).await.expect("the test database drops");
}

/// Waits until `check` returns true, for at most `timeout`; fails with `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses a JSON text frame.
pub fn parse(text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}
