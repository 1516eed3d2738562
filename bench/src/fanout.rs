//! Fan-out: one publisher, one channel, N subscribers.
//!
//! Saturated mode keeps a bounded number of deliveries in flight (published times subscribers,
//! minus delivered), so it measures the most the server sustains without ever making a
//! subscriber a slow consumer. Rate mode publishes at a fixed number of deliveries per second
//! and measures latency. Every payload carries its publish time; latency is deliver minus
//! publish on the generator's one clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};
use crate::{Target, server_stats};

/// Arguments of the fan-out scenario.
#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    /// Subscribers on the channel.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Size of each message's data in bytes.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Deliveries per second to aim for; 0 means as many as the subscribers keep up with.
    #[arg(long, default_value_t = 0)]
    deliveries_per_sec: u64,
    /// Length of the measured window.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Unmeasured time before the window.
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// The channel (its namespace should have presence off).
    #[arg(long, default_value = "bench:fanout")]
    channel: String,
}

/// Deliveries in flight per subscriber in saturated mode: enough to keep the server busy, few
/// enough that latency still means something and no queue overflows.
const WINDOW_PER_SUBSCRIBER: u64 = 32;

struct Shared {
    base: Instant,
    delivered: AtomicU64,
    measuring: AtomicBool,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

struct SubscriberResult {
    histogram: Histogram<u64>,
    in_window: u64,
    dropped: bool,
}

/// Runs the scenario and returns its JSON report.
pub async fn run(args: FanoutArgs) -> anyhow::Result<serde_json::Value> {
    let token = client::mint(&args.target, "bench", "bench:*").await?;
    let mut subscribers = client::connect_many(&args.target, args.subscribers, &token).await?;
    let subscribing = futures::stream::iter(subscribers.iter_mut())
        .map(|ws| client::subscribe(ws, &args.channel, None))
        .buffer_unordered(args.target.connect_concurrency.max(1));
    for reply in subscribing.collect::<Vec<_>>().await {
        reply?;
    }
    let publisher = client::connect(&args.target, args.subscribers, &token).await?;
    let shared = Arc::new(Shared {
        base: Instant::now(),
        delivered: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let empty = new_histogram()?;
    let tasks: Vec<_> = subscribers
        .into_iter()
        .map(|ws| tokio::spawn(subscriber(ws, empty.clone(), shared.clone(), stop_rx.clone())))
        .collect();
    let published = Arc::new(AtomicU64::new(0));
    let publishing =
        tokio::spawn(publish(publisher, args_publish(&args), shared.clone(), published.clone(), stop_rx));

    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let before = server_stats::read(args.target.server_pid);
    let published_before = published.load(Ordering::Relaxed);
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let after = server_stats::read(args.target.server_pid);
    let published_in_window = published.load(Ordering::Relaxed) - published_before;
    let _ = stop_tx.send(true);
    publishing.await??;

    let mut histogram = new_histogram()?;
    let (mut in_window, mut dropped) = (0u64, 0usize);
    for task in tasks {
        let result = task.await?;
        histogram.add(&result.histogram)?;
        in_window += result.in_window;
        dropped += usize::from(result.dropped);
    }
    let per_sec = in_window as f64 / args.seconds as f64;
    let cpu_ms = match (before, after) {
        (Some(b), Some(a)) => Some(a.cpu_ms.saturating_sub(b.cpu_ms)),
        _ => None,
    };
    Ok(json!({
        "scenario": "fanout",
        "subscribers": args.subscribers,
        "payload_bytes": args.payload_bytes,
        "target_deliveries_per_sec": args.deliveries_per_sec,
        "seconds": args.seconds,
        "published_per_sec": published_in_window as f64 / args.seconds as f64,
        "deliveries_per_sec": per_sec,
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

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

async fn subscriber(
    mut ws: Ws,
    histogram: Histogram<u64>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> SubscriberResult {
    let mut result = SubscriberResult { histogram, in_window: 0, dropped: false };
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let Some(sent) = client::timestamp(&text) else { continue };
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                    if shared.measuring.load(Ordering::Relaxed) {
                        result.in_window += 1;
                        let _ = result.histogram.record(shared.now_us().saturating_sub(sent).max(1));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    result.dropped = true;
                    break;
                }
            }
        }
    }
    result
}

struct PublishPlan {
    channel: String,
    payload_bytes: usize,
    subscribers: u64,
    deliveries_per_sec: u64,
}

fn args_publish(args: &FanoutArgs) -> PublishPlan {
    PublishPlan {
        channel: args.channel.clone(),
        payload_bytes: args.payload_bytes,
        subscribers: args.subscribers.max(1) as u64,
        deliveries_per_sec: args.deliveries_per_sec,
    }
}

fn frame(plan: &PublishPlan, now_us: u64, padding: &str) -> Message {
    // `{"t":<20 digits>,"p":"..."}` is about payload_bytes long.
    Message::text(format!(
        r#"{{"op":"publish","channel":"{}","data":{{"t":{now_us},"p":"{padding}"}}}}"#,
        plan.channel
    ))
}

async fn publish(
    ws: Ws,
    plan: PublishPlan,
    shared: Arc<Shared>,
    published: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = ws.split();
    // Drain whatever the server says to the publisher (errors would show up here).
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let padding = "x".repeat(plan.payload_bytes.saturating_sub(16));
    let window = plan.subscribers * WINDOW_PER_SUBSCRIBER;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut owed = 0f64;
    let per_tick = plan.deliveries_per_sec as f64 / plan.subscribers as f64 / 1000.0;
    while !*stop.borrow() {
        let burst = if plan.deliveries_per_sec == 0 {
            let sent = published.load(Ordering::Relaxed) * plan.subscribers;
            let in_flight = sent.saturating_sub(shared.delivered.load(Ordering::Relaxed));
            if in_flight >= window {
                tokio::task::yield_now().await;
                continue;
            }
            ((window - in_flight) / plan.subscribers).clamp(1, 64)
        } else {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            owed += per_tick;
            let whole = owed.floor();
            owed -= whole;
            whole as u64
        };
        for _ in 0..burst {
            sink.feed(frame(&plan, shared.now_us(), &padding)).await?;
        }
        sink.flush().await?;
        published.fetch_add(burst, Ordering::Relaxed);
    }
    drain.abort();
    Ok(())
}
