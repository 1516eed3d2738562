//! Webhooks: rules send every message of many channels to a local receiver; measures events and
//! requests delivered per second, latency from publish to receiver, and the server's memory.
//!
//! The generator makes the endpoint and the rules through the management API (with the operator
//! token of the server's `credentials.json`), runs the receiver itself on a loopback port (it
//! acknowledges at once, or with `--receiver-down` answers 503 to everything), and publishes over
//! one WebSocket connection at a steady rate, round robin over the channels (`hooks:c0` …, a
//! namespace `scripts/bench` configures without history, so the server holds only what the
//! pipeline holds). Every message
//! carries its publish time; the receiver reads it from each event of each request.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use clap::Args;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::{Target, client, server_stats};

/// Arguments of the webhooks scenario.
#[derive(Debug, Args)]
pub struct WebhooksArgs {
    #[command(flatten)]
    target: Target,
    /// The server's `credentials.json` (its operator token, tenant and app).
    #[arg(long, env = "BENCH_CREDENTIALS")]
    credentials: PathBuf,
    /// Channels the messages go to, round robin.
    #[arg(long, default_value_t = 1000)]
    channels: usize,
    /// Messages published per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Most events per request (a rule's `batch_max`; 1: one request per event).
    #[arg(long, default_value_t = 1)]
    batch_max: u32,
    /// How long a rule gathers events for a request (`batch_ms`).
    #[arg(long, default_value_t = 0)]
    batch_ms: u32,
    /// Length of the measured window.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Unmeasured time before the window.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// The receiver answers 503 to everything: deliveries back up in the store.
    #[arg(long)]
    receiver_down: bool,
}

/// The part of the server's `credentials.json` the scenario needs.
pub(crate) struct Management {
    http: String,
    tenant: String,
    app: String,
    token: String,
}

impl Management {
    /// Reads the credentials file.
    pub(crate) fn read(path: &std::path::Path, http: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let credentials: Value = serde_json::from_str(&text)?;
        let field = |name: &str| {
            credentials[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{name} in {}", path.display()))
        };
        Ok(Self {
            http: http.to_owned(),
            tenant: field("tenant_id")?,
            app: field("app_id")?,
            token: field("operator_token")?,
        })
    }

    /// `GET`s `rest` under the tenant; returns the answer.
    pub(crate) async fn get_tenant(&self, rest: &str) -> anyhow::Result<Value> {
        let url = format!("{}/v1/tenants/{}{rest}", self.http, self.tenant);
        let reply = reqwest::Client::new().get(url).bearer_auth(&self.token).send().await?;
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{rest}: {status} {body}");
        Ok(body)
    }

    /// `POST`s `body` to `rest` under the app; returns the answer.
    pub(crate) async fn post(&self, rest: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}/v1/tenants/{}/apps/{}{rest}", self.http, self.tenant, self.app);
        let reply = reqwest::Client::new().post(url).bearer_auth(&self.token).json(&body).send().await?;
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{rest}: {status} {body}");
        Ok(body)
    }

    /// `PUT`s `body` to `rest` under the app; returns the answer.
    pub(crate) async fn put(&self, rest: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}/v1/tenants/{}/apps/{}{rest}", self.http, self.tenant, self.app);
        let reply = reqwest::Client::new().put(url).bearer_auth(&self.token).json(&body).send().await?;
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{rest}: {status} {body}");
        Ok(body)
    }

    /// Makes an endpoint at `url` and `rules` rules on `pattern` sending to it.
    pub(crate) async fn rules_to(
        &self,
        url: &str,
        rules: usize,
        pattern: &str,
        batch_max: u32,
        batch_ms: u32,
    ) -> anyhow::Result<()> {
        let endpoint = self.post("/webhooks", json!({"url": url})).await?;
        let id = endpoint["id"].as_str().context("an endpoint id")?;
        for _ in 0..rules {
            let rule = json!({"channel_pattern": pattern, "events": ["message"], "webhook_id": id,
                              "batch_max": batch_max, "batch_ms": batch_ms});
            self.post("/rules", rule).await?;
        }
        Ok(())
    }
}

/// What the receiver counts.
pub(crate) struct Receiver {
    base: Instant,
    pub(crate) requests: AtomicU64,
    pub(crate) events: AtomicU64,
    measuring: AtomicBool,
    histogram: std::sync::Mutex<Histogram<u64>>,
    down: bool,
}

impl Receiver {
    fn take(&self, body: &[u8]) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Ok(envelope) = serde_json::from_slice::<Value>(body) else { return };
        let now = self.base.elapsed().as_micros() as u64;
        let events = envelope["events"].as_array().map_or(0, Vec::len) as u64;
        self.events.fetch_add(events, Ordering::Relaxed);
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut histogram) = self.histogram.lock() {
            for event in envelope["events"].as_array().into_iter().flatten() {
                if let Some(sent) = event["message"]["data"]["t"].as_u64() {
                    let _ = histogram.record(now.saturating_sub(sent).max(1));
                }
            }
        }
    }
}

/// Starts a receiver on a loopback port; returns its URL.
pub(crate) async fn receiver(base: Instant, down: bool) -> anyhow::Result<(String, Arc<Receiver>)> {
    let state = Arc::new(Receiver {
        base,
        requests: AtomicU64::new(0),
        events: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        histogram: std::sync::Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        down,
    });
    let counting = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let state = counting.clone();
            async move {
                if state.down {
                    state.requests.fetch_add(1, Ordering::Relaxed);
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                state.take(&body);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}/hook"), state))
}

/// Runs the scenario and returns its JSON report.
pub async fn run(args: WebhooksArgs) -> anyhow::Result<Value> {
    let base = Instant::now();
    let (url, receiver) = receiver(base, args.receiver_down).await?;
    let management = Management::read(&args.credentials, args.target.first_node())?;
    management.rules_to(&url, 1, "hooks:*", args.batch_max, args.batch_ms).await?;

    let token = client::mint(&args.target, "webhooks", "hooks:*").await?;
    let publisher = client::connect(&args.target, 0, &token).await?;
    let published = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let publishing =
        tokio::spawn(publish(publisher, args.rate, args.channels, base, published.clone(), stop_rx));

    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let (events_before, requests_before, published_before) = (
        receiver.events.load(Ordering::Relaxed),
        receiver.requests.load(Ordering::Relaxed),
        published.load(Ordering::Relaxed),
    );
    let server_before = server_stats::read(args.target.server_pid);
    receiver.measuring.store(true, Ordering::Relaxed);
    // Memory is sampled through the window: with the receiver down, the backlog must wait in
    // the store, not in the server's memory.
    let (mut rss_kib, mut anon_kib) = (Vec::new(), Vec::new());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_secs(args.seconds.min(10)).min(Duration::from_millis(1000))).await;
        if let Some(now) = server_stats::read(args.target.server_pid) {
            rss_kib.push(now.rss_kib);
            anon_kib.push(now.anon_kib);
        }
    }
    receiver.measuring.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let server_after = server_stats::read(args.target.server_pid);
    let events = receiver.events.load(Ordering::Relaxed) - events_before;
    let requests = receiver.requests.load(Ordering::Relaxed) - requests_before;
    let published_in_window = published.load(Ordering::Relaxed) - published_before;
    let _ = stop_tx.send(true);
    publishing.await??;

    let histogram = receiver.histogram.lock().map_err(|_| anyhow::anyhow!("histogram poisoned"))?.clone();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let cpu = match (server_before, server_after) {
        (Some(before), Some(after)) => json!((after.cpu_ms - before.cpu_ms) as f64 / seconds / 1000.0),
        _ => Value::Null,
    };
    Ok(json!({
        "scenario": "webhooks",
        "peer": "tributary",
        "channels": args.channels,
        "rate": args.rate,
        "batch_max": args.batch_max,
        "batch_ms": args.batch_ms,
        "receiver_down": args.receiver_down,
        "seconds": seconds,
        "published_per_sec": published_in_window as f64 / seconds,
        "events_per_sec": events as f64 / seconds,
        "requests_per_sec": requests as f64 / seconds,
        "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": histogram.max() as f64 / 1000.0},
        "server_cpu_cores": cpu,
        "server_rss_kib": {"first": rss_kib.first(), "last": rss_kib.last(), "max": rss_kib.iter().max()},
        "server_anon_kib": {"first": anon_kib.first(), "last": anon_kib.last(), "max": anon_kib.iter().max()},
        // Ten samples through the window: whether memory levels off or keeps growing.
        "server_anon_kib_series": anon_kib.iter().step_by((anon_kib.len() / 10).max(1)).collect::<Vec<_>>(),
    }))
}

/// Publishes `rate` messages per second round robin over `channels`, each carrying its due
/// time, until stopped.
async fn publish(
    ws: client::Ws,
    rate: u64,
    channels: usize,
    base: Instant,
    published: Arc<AtomicU64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = ws.split();
    // Replies (there are none without an id) and anything else the server sends are drained.
    tokio::spawn(async move { while stream.next().await.is_some() {} });
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Flushed every message at low rates (latency), every few at high ones (throughput).
    let flush_every = usize::try_from(rate / 5_000).unwrap_or(1).max(1);
    let mut n = 0usize;
    loop {
        tokio::select! {
            due = tick.tick() => {
                let stamp = due.duration_since(base).as_micros() as u64;
                let frame = format!(r#"{{"op":"publish","channel":"hooks:c{}","data":{{"t":{stamp}}}}}"#, n % channels.max(1));
                sink.feed(Message::text(frame)).await?;
                n += 1;
                published.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(flush_every) {
                    sink.flush().await?;
                }
            }
            _ = stop.changed() => break,
        }
    }
    sink.flush().await?;
    Ok(())
}
