//! The command line: `serve` and the other roles, `config`, the client helpers `token`,
//! `publish` and `subscribe` that make trying Tributary a matter of two terminals, and `admin`
//! for operators.

mod admin;
mod admin_audit;
mod admin_delivery;
mod audit;
mod audit_cosign;
mod client;
mod serve;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit code for an invalid configuration or usage (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Tributary: realtime pub/sub, presence and history in one binary.
#[derive(Debug, Parser)]
#[command(name = "tributary", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration comes from; shared by every command that needs it.
#[derive(Debug, Args, Clone)]
pub struct ConfigArgs {
    /// Configuration file (default: <data-dir>/tributary.toml, created on first `serve`).
    #[arg(long, env = "TRIBUTARY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory of the embedded defaults.
    #[arg(long, env = "TRIBUTARY_DATA_DIR", default_value = "tributary-data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs every role in one process on the configured storage (embedded defaults: SQLite + memory engine).
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Listen address, e.g. 0.0.0.0:7070 (port 0 picks a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Use the Redis engine with this server (sets engine.kind = "redis" and engine.redis_url).
        #[arg(long)]
        redis_url: Option<String>,
        /// Serve MQTT on this address, e.g. 0.0.0.0:1883 (sets relay.mqtt.listen).
        #[arg(long)]
        mqtt_listen: Option<String>,
        /// Sets any configuration key, e.g. --set relay.mqtt.anonymous_app=dev; the value is read
        /// as a TOML literal (number, boolean, array) when it is one, else as a string. Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Runs only the relay role (not built yet: use `serve`).
    Relay,
    /// Runs only the control-plane role (not built yet: use `serve`).
    ControlPlane,
    /// Runs only the delivery worker role: sends webhook deliveries from the store's queue
    /// (several workers share it; a killed one's deliveries are taken over after its lease).
    Worker {
        #[command(flatten)]
        config: ConfigArgs,
        /// Sets any configuration key, as `serve --set` does. Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Runs the Kubernetes operator (not built yet).
    Operator,
    /// Runs the store's pending database migrations (the server also runs them when it starts).
    Migrate {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Re-encrypts every tenant secret under the configured master key, reading it with the
    /// old one (the second step of a master key rotation; docs/operations.md).
    ReencryptSecrets {
        #[command(flatten)]
        config: ConfigArgs,
        /// A file holding the old master key (base64), which every secret is read with.
        #[arg(long)]
        old_key_file: PathBuf,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Mints a capability token for a client, offline, with the data directory's app key.
    Token(client::TokenArgs),
    /// Publishes a message through the HTTP API.
    Publish(client::PublishArgs),
    /// Subscribes over WebSocket and prints every frame as a JSON line.
    Subscribe(client::SubscribeArgs),
    /// Operator commands through the management API (tenants, apps, keys, revocations, audit).
    Admin(admin::AdminArgs),
    /// Audit logs: `verify` checks an export offline (no server, no database); `cosign` cosigns
    /// the latest checkpoint with the tenant's own key; `keygen` makes such a key.
    Audit(audit::AuditArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Prints the default configuration file, every key with its default.
    Default,
    /// Loads and validates the configuration, then prints it (without secrets).
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// Runs a command; returns the process exit code.
pub async fn run(cli: Cli, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, listen, redis_url, mqtt_listen, set } => {
            let flags = serve::Flags { listen, redis_url, mqtt_listen, set };
            serve::serve(config, flags, env).await
        }
        Command::Worker { config, set } => {
            serve::worker(config, serve::Flags { set, ..Default::default() }, env).await
        }
        Command::Relay | Command::ControlPlane | Command::Operator => {
            eprintln!(
                "this role cannot run on its own yet; `tributary serve` runs the relay, control plane and delivery worker together"
            );
            Ok(ExitCode::from(EXIT_USAGE))
        }
        Command::Config { command: ConfigCommand::Default } => {
            print!("{}", tributary::config::DEFAULT_CONFIG_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { config } => {
            let config = match serve::load(&config, &serve::Flags::default(), &env) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            // Migrations read no secret, so any master key will do.
            let store = config.open_store(&tributary_store::MasterKey::generate()).await?;
            println!("migrations applied ({:?})", store.backend());
            Ok(ExitCode::SUCCESS)
        }
        Command::ReencryptSecrets { config, old_key_file } => {
            let config = match serve::load(&config, &serve::Flags::default(), &env) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            let new_key = tributary::bootstrap::master_key(config.master_key.as_ref())
                .ok_or_else(|| anyhow::anyhow!("master_key is not set"))??;
            let old_text = std::fs::read_to_string(&old_key_file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", old_key_file.display()))?;
            let old_key = tributary_store::MasterKey::from_base64(&old_text)?;
            let store = config.open_store(&new_key).await?;
            let rewritten = store.reencrypt_secrets(&old_key).await?;
            println!("{rewritten} secrets re-encrypted under the configured master key");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::Check { config } } => {
            match serve::load(&config, &serve::Flags::default(), &env) {
                Ok(mut config) => {
                    // URLs may hold passwords.
                    let redact = tributary_engine_redis::connection::redacted;
                    config.storage.database_url = redact(&config.storage.database_url);
                    config.engine.redis_url = redact(&config.engine.redis_url);
                    println!("{}", toml::to_string_pretty(&config)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            }
        }
        Command::Token(args) => client::token(args, env).await,
        Command::Publish(args) => client::publish(args).await,
        Command::Subscribe(args) => client::subscribe(args).await,
        Command::Admin(args) => admin::admin(args).await,
        Command::Audit(args) => audit::audit(args).await,
    }
}
