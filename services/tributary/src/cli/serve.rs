//! `tributary serve`.

use std::collections::HashMap;
use std::process::ExitCode;

use tributary::bootstrap;
use tributary::config::{self, TributaryConfig};
use tributary::server;

use super::{ConfigArgs, EXIT_USAGE};

/// The configuration flags of `tributary serve`, which win over the file and the environment.
#[derive(Debug, Default)]
pub struct Flags {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--redis-url`: the Redis engine on that server.
    pub redis_url: Option<String>,
    /// `--mqtt-listen`.
    pub mqtt_listen: Option<String>,
    /// `--set KEY=VALUE`, in order.
    pub set: Vec<String>,
}

/// Loads the configuration for `args`, creating the data directory's file on first use when
/// no file was named. Prints the problems and returns exit code 64 when it is invalid.
pub fn load(
    args: &ConfigArgs,
    given: &Flags,
    env: &HashMap<String, String>,
) -> Result<TributaryConfig, ExitCode> {
    let file = match &args.config {
        Some(path) => path.clone(),
        None => match bootstrap::ensure_config_file(&args.data_dir) {
            Ok(path) => path,
            Err(err) => {
                eprintln!("error: {err}");
                return Err(ExitCode::from(EXIT_USAGE));
            }
        },
    };
    let mut flags = vec![("data_dir".to_owned(), toml_string(&args.data_dir.to_string_lossy()))];
    if let Some(listen) = &given.listen {
        flags.push(("listen".to_owned(), toml_string(listen)));
    }
    if let Some(url) = &given.redis_url {
        flags.push(("engine.kind".to_owned(), toml_string("redis")));
        flags.push(("engine.redis_url".to_owned(), toml_string(url)));
    }
    if let Some(listen) = &given.mqtt_listen {
        flags.push(("relay.mqtt.listen".to_owned(), toml_string(listen)));
    }
    for setting in &given.set {
        let Some((key, value)) = setting.split_once('=') else {
            eprintln!("error: --set {setting}: expected KEY=VALUE, e.g. --set relay.mqtt.anonymous_app=dev");
            return Err(ExitCode::from(EXIT_USAGE));
        };
        flags.push((key.trim().to_owned(), value.to_owned()));
    }
    config::load(Some(&file), env, &flags).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Runs every role until Ctrl-C or SIGTERM.
pub async fn serve(args: ConfigArgs, flags: Flags, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let config = match load(&args, &flags, &env) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let data_dir = config.data_dir.clone();
    let bound = server::bind(config, None).await?;
    let c = bound.credentials();
    if let Some(mqtt) = bound.mqtt_addr() {
        eprintln!("MQTT 3.1.1 and 5.0 on {mqtt} (user name: the app id; password: a token)");
    }
    if let Some(mqtt_tls) = bound.mqtt_tls_addr() {
        eprintln!("MQTT over TLS on {mqtt_tls}");
    }
    if let Some(mqtt_ws) = bound.mqtt_ws_addr() {
        eprintln!("MQTT over WebSocket on ws://{mqtt_ws}/mqtt (subprotocol mqtt)");
    }
    eprintln!(
        "tributary is listening on http://{addr} (WebSocket {ws})\n\
         data directory: {dir}   credentials: {dir}/{file}\n\
         development app: {app}\n\n\
         try it:\n  \
           tributary subscribe chat:demo --position-file /tmp/demo.pos     # terminal 1\n  \
           tributary publish chat:demo '{{\"text\":\"hello\"}}'                 # terminal 2\n  \
           tributary token --client-id alice --grant 'chat:*=subscribe,publish,presence,history'\n",
        addr = bound.addr(),
        ws = c.ws_url,
        dir = data_dir.display(),
        file = bootstrap::CREDENTIALS_FILE,
        app = c.app_id,
    );
    bound.run(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

fn store_backend(config: &TributaryConfig) -> tributary_store::Backend {
    if config.storage.database_url.is_empty() {
        tributary_store::Backend::Sqlite
    } else {
        tributary_store::Backend::of(&config.storage.database_url).unwrap_or(tributary_store::Backend::Sqlite)
    }
}

/// Runs a delivery worker alone until Ctrl-C or SIGTERM.
pub async fn worker(
    args: ConfigArgs,
    flags: Flags,
    env: HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    let config = match load(&args, &flags, &env) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let master_key = bootstrap::master_key(config.master_key.as_ref())
        .ok_or_else(|| anyhow::anyhow!("master_key is not set"))??;
    let store = config.open_store(&master_key).await?;
    let owner = format!("worker-{}", uuid::Uuid::new_v4().simple());
    // The rules read apps' feeds from the engine the relays write them to (on the in-memory
    // engine that is another process's memory: a worker on its own has only the queue).
    let engine = server::open_engine(&config).await?;
    let worker = config.delivery.worker(store.clone(), owner.clone(), None)?.notifying(engine.clone());
    let router = config.delivery.router(store.clone(), engine.clone(), owner.clone()).wakes(worker.waker());
    let audit = config.audit.writer(store, engine, owner.clone(), config.delivery.lease_secs);
    eprintln!("delivery worker {owner} on {:?}, engine {}", store_backend(&config), config.engine.kind);
    let stop = tokio_util::sync::CancellationToken::new();
    let stopping = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopping.cancel();
    });
    tokio::join!(worker.run(stop.clone()), router.run(stop.clone()), audit.run(stop));
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
