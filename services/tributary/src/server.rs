//! `tributary serve`: bind every listener, report the addresses, then run until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tributary_control_plane::ControlPlane;
use tributary_engine::{Engine, MemoryEngine, MemoryEngineConfig};
use tributary_engine_redis::{RedisEngine, RedisEngineConfig};
use tributary_relay::Relay;
use tributary_store::Store;

use crate::bootstrap::{self, BootstrapError, Credentials};
use crate::config::TributaryConfig;
use crate::directory::StoreDirectory;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration has no master key.
    #[error("master_key is not set (run `tributary serve` once to generate a configuration)")]
    NoMasterKey,
    /// Storage or first-start setup failed.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] tributary_store::StoreError),
    /// The engine's backend (Redis) could not be reached.
    #[error("engine: {0}")]
    Engine(#[source] tributary_engine::EngineError),
    /// The delivery worker could not be built.
    #[error("delivery worker: {0}")]
    Delivery(#[from] tributary_delivery::sender::SendError),
    /// The MQTT TLS certificate or key cannot be used.
    #[error("relay.mqtt TLS: {0}")]
    MqttTls(#[source] tributary_relay::mqtt::tls::TlsError),
    /// `engine.redis_tls_ca_file` could not be read.
    #[error("cannot read engine.redis_tls_ca_file {path}: {source}")]
    TlsCa {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The server, bound and ready to run.
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
    /// The MQTT listener, when `relay.mqtt.listen` is set.
    mqtt: Option<TcpListener>,
    /// The MQTT-over-WebSocket listener, when `relay.mqtt.ws_listen` is set.
    mqtt_ws: Option<TcpListener>,
    /// The MQTT-over-TLS listener and its acceptor, when `relay.mqtt.tls_listen` is set.
    mqtt_tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    relay: Relay,
    control_plane: Arc<ControlPlane>,
    /// Billing's grace period in seconds, when billing is on (a Stripe webhook secret is set).
    billing_grace: Option<i64>,
    credentials: Credentials,
    store: Store,
    /// The delivery worker, its feed router and the audit log writer, when `delivery.worker` is
    /// on.
    worker: Option<(
        tributary_delivery::worker::Worker,
        tributary_delivery::router::Router,
        tributary_delivery::audit_log::AuditWriter,
    )>,
    /// Push's device registry routes.
    push: crate::push_api::PushApi,
    sms: crate::sms_api::SmsApi,
}

impl Bound {
    /// Returns the bound HTTP/WebSocket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the bound MQTT address, if MQTT is on.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Returns the bound MQTT-over-WebSocket address, if it is on.
    pub fn mqtt_ws_addr(&self) -> Option<SocketAddr> {
        self.mqtt_ws.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Returns the bound MQTT-over-TLS address, if it is on.
    pub fn mqtt_tls_addr(&self) -> Option<SocketAddr> {
        self.mqtt_tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Returns the relay's state (tests read its connection registry).
    pub fn relay_state(&self) -> &Arc<tributary_relay::state::RelayState> {
        self.relay.state()
    }

    /// Returns the store (tests use it to create more tenants and apps).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Returns the development credentials of the data directory.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Serves until `shutdown` completes; then closes every connection with "server shutting
    /// down" and waits (briefly) for requests in flight.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let Bound {
            listener,
            relay,
            control_plane,
            billing_grace,
            store,
            mqtt,
            mqtt_ws,
            mqtt_tls,
            worker,
            push,
            sms,
            ..
        } = self;
        let stop_worker = tokio_util::sync::CancellationToken::new();
        let delivering = worker.map(|(worker, router, audit)| {
            let stop = stop_worker.clone();
            tokio::spawn(async move {
                tokio::join!(worker.run(stop.clone()), router.run(stop.clone()), audit.run(stop))
            })
        });
        if let Some((listener, acceptor)) = mqtt_tls {
            tokio::spawn(tributary_relay::mqtt::tls::serve(listener, acceptor, relay.state().clone()));
        }
        if let Some(mqtt) = mqtt {
            tokio::spawn(tributary_relay::mqtt::serve(mqtt, relay.state().clone()));
        }
        if let Some(mqtt_ws) = mqtt_ws {
            let state = relay.state().clone();
            let router = tributary_relay::mqtt::websocket_router(state.clone());
            let limits = crate::http::Handshakes::of(&state.config);
            tokio::spawn(crate::http::serve(
                mqtt_ws,
                router,
                limits,
                state.shutdown.clone().cancelled_owned(),
            ));
        }
        let housekeeping = tokio::spawn(crate::maintenance::run(store));
        let grace_checks = billing_grace.map(|grace| {
            tokio::spawn(crate::maintenance::expire_billing_grace(control_plane.clone(), grace))
        });
        // The management routes first: the relay's router carries the fallback (404).
        let router = control_plane
            .router()
            .merge(push.router())
            .merge(sms.router())
            .merge(crate::examples::router())
            .merge(relay.router());
        let relay = Arc::new(relay);
        let on_shutdown = relay.clone();
        let signal = async move {
            shutdown.await;
            on_shutdown.shutdown();
            // Give writers a moment to send their close frames.
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        crate::http::serve(listener, router, crate::http::Handshakes::of(&relay.state().config), signal)
            .await;
        housekeeping.abort();
        if let Some(checks) = grace_checks {
            checks.abort();
        }
        stop_worker.cancel();
        if let Some(delivering) = delivering {
            // An attempt in flight finishes (or its lease runs out and another worker redoes it).
            let _ = tokio::time::timeout(crate::http::DRAIN_TIMEOUT, delivering).await;
        }
        // Connections were told to close; give their tasks time to leave presence and say
        // goodbye before the process ends.
        let tasks = &relay.state().tasks;
        tasks.close();
        if tokio::time::timeout(crate::http::DRAIN_TIMEOUT, tasks.wait()).await.is_err() {
            tracing::warn!("connections still closing after the drain timeout; stopping anyway");
        }
        Ok(())
    }
}

/// Connections the kernel may hold for us before we accept them. The usual 128 overflows in a
/// connect storm, and every dropped SYN costs its client a one-second retransmission; the kernel
/// caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds the listener (taking an already bound one when given, as tests do), opens storage,
/// bootstraps a fresh data directory, and wires the relay.
pub async fn bind(
    config: TributaryConfig,
    listener: Option<std::net::TcpListener>,
) -> Result<Bound, ServeError> {
    bind_wrapped(config, listener, |engine| engine).await
}

/// Like [`bind`], with the engine the configuration chose passed through `wrap` first: tests
/// wrap it to hold a call at a seam they want to exercise.
pub async fn bind_wrapped(
    config: TributaryConfig,
    listener: Option<std::net::TcpListener>,
    wrap: impl FnOnce(Arc<dyn Engine>) -> Arc<dyn Engine>,
) -> Result<Bound, ServeError> {
    let listener = match listener {
        Some(std) => {
            std.set_nonblocking(true).map_err(|source| ServeError::Bind { addr: config.listen, source })?;
            TcpListener::from_std(std).map_err(|source| ServeError::Bind { addr: config.listen, source })?
        }
        None => listen(config.listen).map_err(|source| ServeError::Bind { addr: config.listen, source })?,
    };
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let optional = |addr: Option<SocketAddr>| {
        addr.map(|addr| listen(addr).map_err(|source| ServeError::Bind { addr, source })).transpose()
    };
    let mqtt = optional(config.relay.mqtt.listen)?;
    let mqtt_ws = optional(config.relay.mqtt.ws_listen)?;
    let mqtt_tls = match optional(config.relay.mqtt.tls_listen)? {
        Some(listener) => {
            let mqtt = &config.relay.mqtt;
            let acceptor = tributary_relay::mqtt::tls::acceptor(&mqtt.tls_cert_file, &mqtt.tls_key_file)
                .map_err(ServeError::MqttTls)?;
            Some((listener, acceptor))
        }
        None => None,
    };
    let master_key = bootstrap::master_key(config.master_key.as_ref()).ok_or(ServeError::NoMasterKey)??;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| BootstrapError::Io { path: config.data_dir.clone(), source })?;
    let store = config.open_store(&master_key).await?;
    let credentials =
        bootstrap::ensure_credentials(&store, &config.data_dir, &format!("http://{addr}")).await?;
    let mut config = config;
    if config.relay.mqtt.anonymous_app == "dev" {
        config.relay.mqtt.anonymous_app = credentials.app_id.clone();
    }
    let engine = wrap(open_engine(&config).await?);
    let relay =
        Relay::new(config.relay.clone(), engine.clone(), Arc::new(StoreDirectory::new(store.clone())));
    let node = Arc::new(LocalRelay(relay.state().clone()));
    let mut settings = config.control.settings();
    settings.webhook_policy = config.delivery.address_policy();
    settings.stripe_webhook_secret = config.billing.stripe_webhook_secret.clone();
    settings.stripe_tolerance_secs = i64::try_from(config.billing.webhook_tolerance_secs).unwrap_or(300);
    settings.billing_grace_secs = i64::try_from(config.billing.grace_period_secs).unwrap_or(i64::MAX);
    settings.stripe_plans =
        config.billing.plan_prices.iter().map(|(plan, price)| (price.clone(), plan.clone())).collect();
    let push =
        crate::push_api::PushApi::new(relay.state().clone(), store.clone(), config.delivery.address_policy());
    // A publish's push section is queued by the same registry.
    let sink = crate::push_api::PublishedPushes::new(store.clone(), relay.state());
    let _ = relay.state().push.set(Arc::new(sink));
    let _ = relay.state().receipts.set(Arc::new(crate::receipts::StoreReceipts::new(store.clone())));
    // Twilio signs a callback with the URL the workers gave it: the same base.
    let own_url = format!("http://{addr}");
    let callback_base = if config.delivery.public_url.is_empty() {
        own_url.clone()
    } else {
        config.delivery.public_url.clone()
    };
    let sms = crate::sms_api::SmsApi::new(relay.state().clone(), store.clone(), &callback_base);
    let control_plane = ControlPlane::on_node(store.clone(), engine.clone(), settings, node);
    let worker = if config.delivery.worker {
        let owner = format!("serve-{}", uuid::Uuid::new_v4().simple());
        let worker =
            config.delivery.worker(store.clone(), owner.clone(), Some(own_url))?.notifying(engine.clone());
        let router =
            config.delivery.router(store.clone(), engine.clone(), owner.clone()).wakes(worker.waker());
        let audit = config.audit.writer(store.clone(), engine, owner, config.delivery.lease_secs);
        Some((worker, router, audit))
    } else {
        None
    };
    Ok(Bound {
        listener,
        addr,
        mqtt,
        mqtt_ws,
        mqtt_tls,
        relay,
        control_plane,
        billing_grace: config
            .billing
            .stripe_webhook_secret
            .is_some()
            .then(|| i64::try_from(config.billing.grace_period_secs).unwrap_or(i64::MAX)),
        push,
        sms,
        credentials,
        store,
        worker,
    })
}

/// Opens the engine the configuration names: Redis, or the in-memory engine of one process.
pub async fn open_engine(config: &TributaryConfig) -> Result<Arc<dyn Engine>, ServeError> {
    let stream_idle_ttl = Duration::from_secs(config.engine.stream_idle_ttl_secs);
    let feed_retention = tributary_engine::FeedRetention { max_len: config.engine.feed_max_len };
    Ok(match config.engine.kind.as_str() {
        "redis" => {
            let mut redis = RedisEngineConfig::new(config.engine.redis_url.clone());
            redis.prefix = config.engine.redis_prefix.clone();
            redis.stream_idle_ttl = stream_idle_ttl;
            redis.trust_restarts = config.engine.redis_trust_restarts;
            redis.command_connections = config.engine.redis_connections;
            redis.feed_retention = feed_retention;
            let ca = &config.engine.redis_tls_ca_file;
            if !ca.is_empty() {
                let pem =
                    std::fs::read(ca).map_err(|source| ServeError::TlsCa { path: ca.clone(), source })?;
                redis.tls_ca_pem = Some(pem);
            }
            Arc::new(RedisEngine::connect(redis).await.map_err(ServeError::Engine)?)
        }
        _ => Arc::new(MemoryEngine::new(MemoryEngineConfig {
            stream_idle_ttl,
            feed_retention,
            ..MemoryEngineConfig::default()
        })),
    })
}

/// The relay of this process, as the management API applies its changes to it.
struct LocalRelay(Arc<tributary_relay::state::RelayState>);

#[async_trait::async_trait]
impl tributary_control_plane::LocalNode for LocalRelay {
    async fn apply(&self, event: &tributary_protocol::ControlEvent) {
        tributary_relay::control::apply(&self.0, event).await;
    }
}
