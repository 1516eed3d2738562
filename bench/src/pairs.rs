//! Many channels: N connection pairs on N channels (1:1 chat), each publisher sending at a
//! steady rate. Measures aggregate deliveries, latency and server CPU per message.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::fanout::{self, Shared, SubscriberResult};
use crate::peer::{self, Peer};
use crate::{Target, client};

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
    let shared = Shared::new(args.pairs)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (subscribers, publishers) = match args.peer {
        Peer::Tributary => start_tributary(&args, &shared, &stop_rx).await?,
        peer => start_peer(peer, &args, &shared, &stop_rx).await?,
    };
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let server = shared.measure(args.target.server_pid, args.seconds).await;
    let _ = stop_tx.send(true);
    for publisher in publishers {
        publisher.await??;
    }
    let mut report = shared.report(subscribers, server, args.seconds).await?;
    report.extend(fanout::json_object(json!({
        "scenario": "pairs",
        "peer": format!("{:?}", args.peer).to_lowercase(),
        "pairs": args.pairs,
        "rate_per_pair": args.rate_per_pair,
        "seconds": args.seconds,
        "target_deliveries_per_sec": args.pairs as u64 * args.rate_per_pair,
    })));
    Ok(serde_json::Value::Object(report))
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
            let pairs = args.pairs;
            tokio::spawn(async move {
                let (mut sink, _stream) = ws.split();
                let name = channel(pair);
                let mut steady = Steady::new(period, (pair, pairs), shared, stop);
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
        let (stream, shared, stop) = (stream?, shared.clone(), stop.clone());
        subscribers.push(if peer::speaks_websocket(peer) {
            tokio::spawn(fanout::frame_subscriber(stream, shared, stop))
        } else {
            tokio::spawn(fanout::raw_subscriber(stream, shared, stop))
        });
    }
    // Every publisher connects before any publishes: a server busy with the first ones' traffic
    // would otherwise make the rest connect ever more slowly.
    let streams: Vec<_> = futures::stream::iter(0..args.pairs)
        .map(|pair| async move {
            peer::publisher(peer, addr, args.pairs + pair, source_ips, &channel(pair))
                .await
                .map(|s| (pair, s))
        })
        .buffer_unordered(args.target.connect_concurrency.max(1))
        .collect()
        .await;
    let padding = "x".repeat(args.payload_bytes.saturating_sub(16));
    let mut publishers = Vec::with_capacity(args.pairs);
    for stream in streams {
        let (pair, stream) = stream?;
        let (shared, stop, padding, pairs) = (shared.clone(), stop.clone(), padding.clone(), args.pairs);
        let period = Duration::from_micros(1_000_000 / args.rate_per_pair.max(1));
        publishers.push(tokio::spawn(async move {
            let (_reader, mut writer) = stream.into_split();
            let subject = peer.subject(&channel(pair));
            let mut out = Vec::new();
            let mut steady = Steady::new(period, (pair, pairs), shared, stop);
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
    /// Ticks every `period`, the first after `phase` of it (`index` of `of`): publishers that all
    /// tick at the same instant would send in bursts and measure the bursts, not the servers.
    fn new(
        period: Duration,
        (index, of): (usize, usize),
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let phase = period.mul_f64(index as f64 / of.max(1) as f64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
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
