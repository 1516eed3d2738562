//! Connect storm: new authenticated connections as fast as they come.

use clap::Args;
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use crate::{Target, client};

/// Arguments of the connect-storm scenario.
#[derive(Debug, Args)]
pub struct StormArgs {
    #[command(flatten)]
    target: Target,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// The server to measure.
    #[arg(long, value_enum, default_value = "tributary")]
    peer: crate::peer::Peer,
    /// Address of a peer server.
    #[arg(long)]
    peer_addr: Option<std::net::SocketAddr>,
}

/// Runs the scenario and returns its JSON report.
pub async fn run(args: StormArgs) -> anyhow::Result<serde_json::Value> {
    let token = match args.peer {
        crate::peer::Peer::Tributary => client::mint(&args.target, "storm", "bench:*").await?,
        _ => String::new(),
    };
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.connections);
    let mut failures = 0usize;
    let mut first_error = None;
    let mut opening = futures::stream::iter(0..args.connections)
        .map(|n| crate::idle::open(&args.target, args.peer, args.peer_addr, n, &token))
        .buffer_unordered(args.target.connect_concurrency.max(1));
    while let Some(result) = opening.next().await {
        match result {
            Ok(ws) => held.push(ws),
            Err(err) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "scenario": "storm",
        "peer": format!("{:?}", args.peer).to_lowercase(),
        "connections": args.connections,
        "connected": held.len(),
        "failures": failures,
        "first_error": first_error,
        "seconds": elapsed,
        "connections_per_sec": held.len() as f64 / elapsed,
    }))
}
