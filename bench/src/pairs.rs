//! Many channels: N connection pairs on N channels (1:1 chat), each publisher sending at a
//! steady rate. Measures aggregate deliveries, latency and server CPU per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::fanout::{self, Shared, SubscriberResult};
use crate::peer::{self, Peer};
use crate::{Target, client, server_stats};

/// Arguments of the many-channels scenario.
#[derive(Debug, Args)]
pub struct PairsArgs {
    #[command(flatten)]
    target: Target,
    /// Connection pairs, one channel each.
    #[arg(long, default_value_t = 2000)]
    pairs: usize,
    /// Messages per second each publisher sends.
    #[arg(long, default_value_t = 10)]
    rate_per_pair: u64,
    /// Size of each message's data in bytes.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Length of the measured window.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Unmeasured time before the window.
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// The server to measure.
    #[arg(long, value_enum, default_value = "tributary")]
    peer: Peer,
    /// Address of a peer server (Redis or NATS).
    #[arg(long)]
    peer_addr: Option<std::net::SocketAddr>,
}

fn channel(pair: usize) -> String {
    format!("bench:pair-{pair}")
}

/// Runs the scenario and returns its JSON report.
pub async fn run(args: PairsArgs) -> anyhow::Result<serde_json::Value> {
    let shared = Arc::new(Shared {
        base: Instant::now(),
        delivered: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        active: AtomicU64::new(args.pairs as u64),
        publish_errors: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        histogram: std::sync::Mutex::new(fanout::new_histogram()?),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (subscribers, publishers) = match args.peer {
        Peer::Tributary => start_tributary(&args, &shared, &stop_rx).await?,
        peer => start_peer(peer, &args, &shared, &stop_rx).await?,
    };
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let before = server_stats::read(args.target.server_pid);
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let after = server_stats::read(args.target.server_pid);
    let _ = stop_tx.send(true);
    for publisher in publishers {
        publisher.await??;
    }
    let (mut in_window, mut dropped) = (0u64, 0usize);
    for task in subscribers {
        let result = task.await?;
        in_window += result.in_window;
        dropped += usize::from(result.dropped);
    }
    let histogram = shared.histogram.lock().map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?.clone();
    let cpu_ms = match (before, after) {
        (Some(b), Some(a)) => Some(a.cpu_ms.saturating_sub(b.cpu_ms)),
        _ => None,
    };
    Ok(json!({
        "scenario": "pairs",
        "peer": format!("{:?}", args.peer).to_lowercase(),
        "pairs": args.pairs,
        "rate_per_pair": args.rate_per_pair,
        "seconds": args.seconds,
        "target_deliveries_per_sec": args.pairs as u64 * args.rate_per_pair,
        "deliveries_per_sec": in_window as f64 / args.seconds as f64,
        "latency_us": {
            "p50": histogram.value_at_quantile(0.50),
            "p90": histogram.value_at_quantile(0.90),
            "p99": histogram.value_at_quantile(0.99),
            "p999": histogram.value_at_quantile(0.999),
            "max": histogram.max(),
        },
        "subscribers_dropped": dropped,
        "server_rss_kib": after.map(|a| a.rss_kib),
        "server_cpu_ms": cpu_ms,
        "server_cpu_ns_per_delivery": cpu_ms.map(|ms| ms as f64 * 1e6 / in_window.max(1) as f64),
    }))
}

type Started = (Vec<JoinHandle<SubscriberResult>>, Vec<JoinHandle<anyhow::Result<()>>>);

async fn start_tributary(
    args: &PairsArgs,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Started> {
    let token = client::mint(&args.target, "pairs", "bench:*").await?;
    let mut connections = client::connect_many(&args.target, args.pairs * 2, &token).await?;
    let publishers_ws = connections.split_off(args.pairs);
    let subscribing = futures::stream::iter(connections.iter_mut().enumerate())
        .map(|(pair, ws)| async move { client::subscribe(ws, &channel(pair), None).await })
        .buffer_unordered(args.target.connect_concurrency.max(1));
    for reply in subscribing.collect::<Vec<_>>().await {
        reply?;
    }
    let subscribers = connections
        .into_iter()
        .map(|ws| tokio::spawn(fanout::subscriber(ws, shared.clone(), stop.clone())))
        .collect();
    let padding = "x".repeat(args.payload_bytes.saturating_sub(16));
    let publishers = publishers_ws
        .into_iter()
        .enumerate()
        .map(|(pair, ws)| {
            let (shared, stop, padding) = (shared.clone(), stop.clone(), padding.clone());
            let period = Duration::from_micros(1_000_000 / args.rate_per_pair.max(1));
            tokio::spawn(async move {
                let (mut sink, _stream) = ws.split();
                let name = channel(pair);
                let mut steady = Steady::new(period, shared, stop);
                while let Some(stamp) = steady.next().await {
                    let frame = format!(
                        r#"{{"op":"publish","channel":"{name}","data":{{"t":{stamp},"p":"{padding}"}}}}"#
                    );
                    sink.send(Message::text(frame)).await?;
                }
                Ok(())
            })
        })
        .collect();
    Ok((subscribers, publishers))
}

async fn start_peer(
    peer: Peer,
    args: &PairsArgs,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Started> {
    let addr = args.peer_addr.context("--peer-addr is needed for this peer")?;
    let source_ips = args.target.source_ips;
    let streams: Vec<_> = futures::stream::iter(0..args.pairs)
        .map(|pair| async move { peer::subscriber(peer, addr, pair, source_ips, &channel(pair)).await })
        .buffer_unordered(args.target.connect_concurrency.max(1))
        .collect()
        .await;
    let mut subscribers = Vec::with_capacity(streams.len());
    for stream in streams {
        subscribers.push(tokio::spawn(fanout::raw_subscriber(stream?, shared.clone(), stop.clone())));
    }
    let padding = "x".repeat(args.payload_bytes.saturating_sub(16));
    let mut publishers = Vec::with_capacity(args.pairs);
    for pair in 0..args.pairs {
        let stream = peer::publisher(peer, addr, args.pairs + pair, source_ips).await?;
        let (shared, stop, padding) = (shared.clone(), stop.clone(), padding.clone());
        let period = Duration::from_micros(1_000_000 / args.rate_per_pair.max(1));
        publishers.push(tokio::spawn(async move {
            let (_reader, mut writer) = stream.into_split();
            let subject = peer.subject(&channel(pair));
            let mut out = Vec::new();
            let mut steady = Steady::new(period, shared, stop);
            while let Some(stamp) = steady.next().await {
                out.clear();
                peer::publish_command(
                    peer,
                    &subject,
                    &format!(r#"{{"t":{stamp},"p":"{padding}"}}"#),
                    &mut out,
                );
                writer.write_all(&out).await?;
            }
            Ok(())
        }));
    }
    Ok((subscribers, publishers))
}

/// Yields the due time of each message, once per period, until the run is stopped.
struct Steady {
    tick: tokio::time::Interval,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

impl Steady {
    fn new(period: Duration, shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        Self { tick, shared, stop }
    }

    /// Returns the next message's stamp: the time it was due, so a late sender shows as latency.
    async fn next(&mut self) -> Option<u64> {
        tokio::select! {
            due = self.tick.tick() => Some(due.duration_since(self.shared.base).as_micros() as u64),
            _ = self.stop.changed() => None,
        }
    }
}
