//! Idle connections: server memory per authenticated connection that does nothing.

use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::{Target, client, server_stats};

/// Arguments of the idle scenario.
#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
}

/// Runs the scenario and returns its JSON report.
pub async fn run(args: IdleArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.target.server_pid.is_some(), "the idle scenario needs --server-pid");
    let token = client::mint(&args.target, "idle", "bench:*").await?;
    // Warm the server's allocator with one connection, so the baseline is not an empty process.
    let warm = client::connect(&args.target, 0, &token).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server_stats::read(args.target.server_pid);
    let held = client::connect_many(&args.target, args.connections, &token).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server_stats::read(args.target.server_pid);
    drop((warm, held));
    let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
    let delta_kib = after.rss_kib.saturating_sub(before.rss_kib);
    Ok(json!({
        "scenario": "idle",
        "connections": args.connections,
        "server_rss_before_kib": before.rss_kib,
        "server_rss_after_kib": after.rss_kib,
        "bytes_per_connection": delta_kib as f64 * 1024.0 / args.connections.max(1) as f64,
    }))
}
