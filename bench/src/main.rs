//! `tributary-bench`: the load generator behind `scripts/bench`.
//!
//! It talks to a running server over real sockets, as clients would, and prints one JSON object
//! per scenario on stdout. Run it pinned to another core than the server (`taskset`), which is
//! what `scripts/bench` does.
//!
//! # Layout
//! - `client`: WebSocket connections from chosen 127.0.0.x source addresses, `tributary.v1` frames.
//! - `fanout`: one publisher, one channel, N subscribers; saturated or at a fixed rate.
//! - `idle`: N idle authenticated connections; server memory per connection.
//! - `peer`: minimal Redis and NATS clients, so the same fan-out runs against them.
//! - `storm`: N new authenticated connections as fast as they come.
//! - `pairs`: many channels, one publisher and one subscriber each, at a steady rate.
//! - `mqtt`: fan-out at QoS 0 and 1 and idle connections over MQTT, against Tributary's MQTT
//!   listener, Mosquitto and rumqttd.
//! - `recovery`: subscribers leave, messages are published, all come back with their positions.
//! - `webhooks`: rules sending every message of many channels to a local receiver.
//! - `push`: pushes to a channel's devices, sent to fakes of APNs or a Web Push service.
//! - `audit`: the audit log writer alone (audited messages appended per second, on SQLite or
//!   PostgreSQL) and the offline verifier over a large export.
//! - `server_stats`: RSS and CPU time of the server process from `/proc`.

mod audit;
mod client;
mod fanout;
mod idle;
mod mqtt;
mod pairs;
mod peer;
mod push;
mod recovery;
mod server_stats;
mod storm;
mod webhooks;

use clap::{Args, Parser, Subcommand};

/// Load generator for Tributary.
#[derive(Debug, Parser)]
#[command(name = "tributary-bench")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One publisher, one channel, many subscribers.
    Fanout(fanout::FanoutArgs),
    /// Many idle authenticated connections: server memory per connection.
    Idle(idle::IdleArgs),
    /// Many new authenticated connections as fast as they come.
    Storm(storm::StormArgs),
    /// Many channels: connection pairs, one channel each, at a steady rate.
    Pairs(pairs::PairsArgs),
    /// Subscribers leave, messages are published, all reconnect and recover at once.
    Recovery(recovery::RecoveryArgs),
    /// MQTT: one publisher, one topic, many subscribers, at QoS 0 or 1.
    MqttFanout(mqtt::MqttFanoutArgs),
    /// MQTT: many idle connected, subscribed clients: server memory per connection.
    MqttIdle(mqtt::MqttIdleArgs),
    /// Webhooks: rules send every message of many channels to a local receiver.
    Webhooks(webhooks::WebhooksArgs),
    /// Push: pushes to a channel's devices, sent to a fake APNs or Web Push service.
    Push(push::PushArgs),
    /// The audit log writer alone: audited messages appended per second.
    AuditAppend(audit::AppendArgs),
    /// The offline verifier over a large export.
    AuditVerify(audit::VerifyArgs),
    /// Writes the APNs fake's certificate and its authority to a directory (before the server
    /// that must trust it starts).
    PushCerts {
        /// Where to write `ca.pem`, `cert.pem` and `key.pem`.
        dir: std::path::PathBuf,
    },
}

/// Where the server is and how to reach it.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// HTTP base URL of the server; several nodes as a comma-separated list, over which
    /// connections are spread in turn (tokens are minted on the first).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    pub http: String,
    /// API key of the app (to mint the benchmark's token).
    #[arg(long, env = "TRIBUTARY_API_KEY")]
    pub api_key: String,
    /// The server's process id, to read its memory and CPU time.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// How many 127.0.0.x source addresses to spread connections over (about 28,000 ports each).
    #[arg(long, default_value_t = 4)]
    pub source_ips: u8,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Send the token in a `connect` frame after the upgrade (two round trips), rather than in
    /// the upgrade request (one), to measure both ways of connecting.
    #[arg(long)]
    pub token_in_frame: bool,
}

impl Target {
    /// The first node's HTTP base URL.
    pub fn first_node(&self) -> &str {
        self.http.split(',').next().unwrap_or_default().trim()
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // reqwest has TLS without a crypto provider of its own (see DEPENDENCIES.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One thread: the generator gets its own core and never competes with itself.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        match cli.scenario {
            Scenario::Fanout(args) => fanout::run(args).await,
            Scenario::Idle(args) => idle::run(args).await,
            Scenario::Storm(args) => storm::run(args).await,
            Scenario::Pairs(args) => pairs::run(args).await,
            Scenario::Recovery(args) => recovery::run(args).await,
            Scenario::MqttFanout(args) => mqtt::fanout(args).await,
            Scenario::MqttIdle(args) => mqtt::idle(args).await,
            Scenario::Webhooks(args) => webhooks::run(args).await,
            Scenario::Push(args) => push::run(args).await,
            Scenario::AuditAppend(args) => audit::append(args).await,
            Scenario::AuditVerify(args) => audit::verify_export(args).await,
            Scenario::PushCerts { dir } => {
                push::write_certs(&dir).map(|()| serde_json::json!({"certs": dir}))
            }
        }
    })?;
    println!("{report}");
    Ok(())
}
