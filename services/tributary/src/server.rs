//! `tributary serve`: bind every listener, report the addresses, then run until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tributary_engine::{Engine, MemoryEngine, MemoryEngineConfig};
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
    /// Serving failed.
    #[error("server: {0}")]
    Serve(#[source] std::io::Error),
}

/// The server, bound and ready to run.
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
    relay: Relay,
    credentials: Credentials,
    store: Store,
}

impl Bound {
    /// Returns the bound HTTP/WebSocket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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
        let Bound { listener, relay, .. } = self;
        let router = relay.router();
        let relay = Arc::new(relay);
        let on_shutdown = relay.clone();
        let signal = async move {
            shutdown.await;
            on_shutdown.shutdown();
            // Give writers a moment to send their close frames.
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Realtime frames are small: without TCP_NODELAY, Nagle's algorithm holds a frame back
        // until the previous one is acknowledged, which with delayed ACKs costs up to 40 ms.
        let listener = listener.tap_io(|stream| {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, router).with_graceful_shutdown(signal).await.map_err(ServeError::Serve)
    }
}

/// Binds the listener (taking an already bound one when given, as tests do), opens storage,
/// bootstraps a fresh data directory, and wires the relay.
pub async fn bind(
    config: TributaryConfig,
    listener: Option<std::net::TcpListener>,
) -> Result<Bound, ServeError> {
    let listener = match listener {
        Some(std) => {
            std.set_nonblocking(true).map_err(|source| ServeError::Bind { addr: config.listen, source })?;
            TcpListener::from_std(std).map_err(|source| ServeError::Bind { addr: config.listen, source })?
        }
        None => TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind { addr: config.listen, source })?,
    };
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let master_key = bootstrap::master_key(config.master_key.as_ref()).ok_or(ServeError::NoMasterKey)??;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| BootstrapError::Io { path: config.data_dir.clone(), source })?;
    let store = Store::open_sqlite(&config.sqlite_path(), &master_key).await?;
    let credentials =
        bootstrap::ensure_credentials(&store, &config.data_dir, &format!("http://{addr}")).await?;
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new(MemoryEngineConfig {
        stream_idle_ttl: Duration::from_secs(config.engine.stream_idle_ttl_secs),
        ..MemoryEngineConfig::default()
    }));
    let relay = Relay::new(config.relay.clone(), engine, Arc::new(StoreDirectory::new(store.clone())));
    Ok(Bound { listener, addr, relay, credentials, store })
}
