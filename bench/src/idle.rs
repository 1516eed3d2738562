//! Idle connections: server memory per authenticated connection that does nothing.

use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use serde_json::json;

use crate::peer::{self, Peer};
use crate::{Target, client, server_stats};

/// Arguments of the idle scenario.
#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    target: Target,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// The server to measure.
    #[arg(long, value_enum, default_value = "tributary")]
    peer: Peer,
    /// Address of a peer server.
    #[arg(long)]
    peer_addr: Option<std::net::SocketAddr>,
}

/// Opens connection `n`: authenticated for Tributary, subscribed to a channel for peers (their
/// equivalent of a connected client).
pub(crate) async fn open(
    target: &Target,
    peer: Peer,
    peer_addr: Option<std::net::SocketAddr>,
    n: usize,
    token: &str,
) -> anyhow::Result<tokio::net::TcpStream> {
    Ok(match peer {
        // Connected, nothing left to read: the socket alone holds the connection.
        Peer::Tributary => client::connect_stream(target, n, token).await?,
        peer => {
            let addr = peer_addr.ok_or_else(|| anyhow::anyhow!("--peer-addr is needed for this peer"))?;
            let channel = format!("bench:idle-{}", n % 100);
            peer::subscriber(peer, addr, n, target.source_ips, &channel).await?
        }
    })
}

/// Runs the scenario and returns its JSON report.
pub async fn run(args: IdleArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.target.server_pid.is_some(), "the idle scenario needs --server-pid");
    let token = match args.peer {
        Peer::Tributary => client::mint(&args.target, "idle", "bench:*").await?,
        _ => String::new(),
    };
    let target = &args.target;
    let mut report =
        measure(target, args.connections, |n| open(target, args.peer, args.peer_addr, n, &token)).await?;
    report.extend(crate::fanout::json_object(json!({
        "scenario": "idle",
        "peer": format!("{:?}", args.peer).to_lowercase(),
    })));
    Ok(serde_json::Value::Object(report))
}

/// Opens one warming connection and then `connections` more with `open(n)` (`n` from 1),
/// `target.connect_concurrency` at a time, and returns the server's memory growth per
/// connection while they are held.
pub(crate) async fn measure<F, S>(
    target: &Target,
    connections: usize,
    open: impl Fn(usize) -> F,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>>
where
    F: std::future::Future<Output = anyhow::Result<S>>,
{
    // Warm the server's allocator with one connection, so the baseline is not an empty process.
    let warm = open(0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server_stats::read(target.server_pid);
    let held: Vec<S> = futures::stream::iter(1..=connections)
        .map(&open)
        .buffer_unordered(target.connect_concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server_stats::read(target.server_pid);
    drop((warm, held));
    let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
    let delta_kib = after.rss_kib.saturating_sub(before.rss_kib);
    Ok(crate::fanout::json_object(json!({
        "connections": connections,
        "server_rss_before_kib": before.rss_kib,
        "server_rss_after_kib": after.rss_kib,
        "bytes_per_connection": delta_kib as f64 * 1024.0 / connections.max(1) as f64,
    })))
}
