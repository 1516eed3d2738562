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

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::client::{self, Ws};
use crate::peer::{self, Peer};
use crate::{Target, server_stats};

/// Arguments of the fan-out scenario.
#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    /// Subscribers on the channel.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[command(flatten)]
    load: Load,
    /// The channel (its namespace should have presence off).
    #[arg(long, default_value = "bench:fanout")]
    channel: String,
    /// The server to measure.
    #[arg(long, value_enum, default_value = "tributary")]
    peer: Peer,
    /// Address of a peer server (Redis or NATS), e.g. 127.0.0.1:6380.
    #[arg(long)]
    peer_addr: Option<std::net::SocketAddr>,
    /// Rules active on the app during the run (Tributary only), each sending what
    /// `--rules-pattern` matches to a local receiver in batches of 100.
    #[arg(long, default_value_t = 0)]
    rules: usize,
    /// The channels the rules match.
    #[arg(long, default_value = "bench:*")]
    rules_pattern: String,
    /// The server's `credentials.json`, to make the rules or set the namespace audited.
    #[arg(long, env = "BENCH_CREDENTIALS")]
    credentials: Option<std::path::PathBuf>,
    /// Set the channel's namespace `audited` for the app first (Tributary only): every message
    /// goes on the tenant's audit log as well (its options otherwise those of `scripts/bench`'s
    /// `bench` namespace).
    #[arg(long)]
    audited: bool,
}

/// How a fan-out run publishes and how long it measures.
#[derive(Debug, Args)]
pub struct Load {
    /// Size of each message's data in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Deliveries per second to aim for; 0 means as many as the subscribers keep up with.
    #[arg(long, default_value_t = 0)]
    pub deliveries_per_sec: u64,
    /// Length of the measured window.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Unmeasured time before the window.
    #[arg(long, default_value_t = 1)]
    pub warmup_seconds: u64,
}

/// Deliveries in flight per subscriber in saturated mode: enough to keep the server busy, few
/// enough that latency still means something and no queue overflows.
const WINDOW_PER_SUBSCRIBER: u64 = 32;

pub(crate) struct Shared {
    pub(crate) base: Instant,
    pub(crate) delivered: AtomicU64,
    /// Deliveries owed so far: each publish adds the number of subscribers still connected.
    pub(crate) expected: AtomicU64,
    /// Subscribers still connected.
    pub(crate) active: AtomicU64,
    /// Error replies the server sent the publisher.
    pub(crate) publish_errors: AtomicU64,
    pub(crate) measuring: AtomicBool,
    /// One histogram for every subscriber: per-subscriber copies would cost 139 KiB each.
    pub(crate) histogram: std::sync::Mutex<Histogram<u64>>,
}

impl Shared {
    pub(crate) fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
}

pub(crate) struct SubscriberResult {
    pub(crate) in_window: u64,
    pub(crate) dropped: bool,
}

impl Shared {
    pub(crate) fn record(&self, latency_us: u64) {
        if let Ok(mut histogram) = self.histogram.lock() {
            let _ = histogram.record(latency_us.max(1));
        }
    }

    fn dropped(&self, result: &mut SubscriberResult) {
        result.dropped = true;
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs the scenario and returns its JSON report.
pub async fn run(args: FanoutArgs) -> anyhow::Result<serde_json::Value> {
    let shared = Shared::new(args.subscribers)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let published = Arc::new(AtomicU64::new(0));
    // The namespace is audited (and the log's size read) before anything is published.
    let audit = match (&args.audited, args.peer) {
        (true, Peer::Tributary) => {
            let credentials =
                args.credentials.as_deref().context("--credentials is needed with --audited")?;
            let namespace = args.channel.split_once(':').map_or("_default", |(ns, _)| ns);
            Some(crate::audit::AuditWatch::start(credentials, args.target.first_node(), namespace).await?)
        }
        _ => None,
    };
    let pacer = Pacer::new(args_publish(&args), shared.clone(), published.clone(), stop_rx.clone());
    let (tasks, publishing) = match args.peer {
        Peer::Tributary => start_tributary(&args, &shared, &stop_rx, pacer).await?,
        peer => start_peer(peer, &args, &shared, &stop_rx, pacer).await?,
    };

    let published_total = published.clone();
    let running = Running { shared, published, stop: stop_tx, publishing, tasks };
    let mut report = running.measure(&args.load, args.target.server_pid).await?;
    if let Some(audit) = audit {
        report.extend(json_object(audit.finish(published_total.load(Ordering::Relaxed)).await?));
    }
    report.extend(json_object(json!({
        "scenario": "fanout",
        "peer": format!("{:?}", args.peer).to_lowercase(),
        "subscribers": args.subscribers,
        "rules": args.rules,
        "audited": args.audited,
    })));
    Ok(serde_json::Value::Object(report))
}

/// A fan-out under way: its subscribers and publisher running.
pub(crate) struct Running {
    pub(crate) shared: Arc<Shared>,
    /// Messages published so far.
    pub(crate) published: Arc<AtomicU64>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) publishing: JoinHandle<anyhow::Result<()>>,
    pub(crate) tasks: Vec<JoinHandle<SubscriberResult>>,
}

impl Running {
    /// Warms up, measures the window, stops everything and returns the report's fields.
    pub(crate) async fn measure(
        self,
        load: &Load,
        server_pid: Option<u32>,
    ) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        tokio::time::sleep(Duration::from_secs(load.warmup_seconds)).await;
        let published_before = self.published.load(Ordering::Relaxed);
        let server = self.shared.measure(server_pid, load.seconds).await;
        let published_in_window = self.published.load(Ordering::Relaxed) - published_before;
        let _ = self.stop.send(true);
        self.publishing.await??;
        let mut report = self.shared.report(self.tasks, server, load.seconds).await?;
        report.extend(json_object(json!({
            "payload_bytes": load.payload_bytes,
            "target_deliveries_per_sec": load.deliveries_per_sec,
            "seconds": load.seconds,
            "published_per_sec": published_in_window as f64 / load.seconds as f64,
        })));
        Ok(report)
    }
}

/// Returns the fields of a JSON object (empty for anything else).
pub(crate) fn json_object(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The server's state at both ends of the measured window.
pub(crate) struct Window {
    before: Option<server_stats::Snapshot>,
    after: Option<server_stats::Snapshot>,
}

impl Shared {
    /// Creates the state of a run with `subscribers` subscribers.
    pub(crate) fn new(subscribers: usize) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Shared {
            base: Instant::now(),
            delivered: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            active: AtomicU64::new(subscribers as u64),
            publish_errors: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
            histogram: std::sync::Mutex::new(new_histogram()?),
        }))
    }

    /// Measures for `seconds`, reading the server's stats at both ends.
    pub(crate) async fn measure(&self, server_pid: Option<u32>, seconds: u64) -> Window {
        let before = server_stats::read(server_pid);
        self.measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        self.measuring.store(false, Ordering::Relaxed);
        Window { before, after: server_stats::read(server_pid) }
    }

    /// Waits for the subscribers (after the stop signal) and returns the fields every
    /// delivery scenario reports: rate, latency, drops and server cost.
    pub(crate) async fn report(
        &self,
        tasks: Vec<JoinHandle<SubscriberResult>>,
        server: Window,
        seconds: u64,
    ) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        let (mut in_window, mut dropped) = (0u64, 0usize);
        for task in tasks {
            let result = task.await?;
            in_window += result.in_window;
            dropped += usize::from(result.dropped);
        }
        let histogram =
            self.histogram.lock().map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?.clone();
        let cpu_ms = match (server.before, server.after) {
            (Some(b), Some(a)) => Some(a.cpu_ms.saturating_sub(b.cpu_ms)),
            _ => None,
        };
        Ok(json_object(json!({
            "deliveries_per_sec": in_window as f64 / seconds as f64,
            "latency_us": {
                "p50": histogram.value_at_quantile(0.50),
                "p90": histogram.value_at_quantile(0.90),
                "p99": histogram.value_at_quantile(0.99),
                "p999": histogram.value_at_quantile(0.999),
                "max": histogram.max(),
            },
            "subscribers_dropped": dropped,
            "publish_errors": self.publish_errors.load(Ordering::Relaxed),
            "server_rss_kib": server.after.map(|a| a.rss_kib),
            "server_cpu_ms": cpu_ms,
            "server_cpu_ns_per_delivery": cpu_ms.map(|ms| ms as f64 * 1e6 / in_window.max(1) as f64),
        })))
    }
}

pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

pub(crate) async fn subscriber(ws: Ws, shared: Arc<Shared>, stop: watch::Receiver<bool>) -> SubscriberResult {
    // Subscribed and quiet: nothing is buffered in the WebSocket client, so the socket can be
    // read directly from here on.
    frame_subscriber(ws.into_inner(), shared, stop).await
}

/// What one read of a subscriber's socket brought, for the protocol's parser to fill in.
pub(crate) struct Chunk<'a> {
    shared: &'a Shared,
    result: &'a mut SubscriberResult,
    measuring: bool,
    now: u64,
    delivered: u64,
    /// Bytes to send back (pongs, acknowledgements), written once per read.
    pub(crate) reply: &'a mut Vec<u8>,
    /// The server closed the connection.
    pub(crate) closed: bool,
}

impl Chunk<'_> {
    /// Counts a delivery stamped `sent`, recording its latency inside the measured window.
    pub(crate) fn delivery(&mut self, sent: u64) {
        self.delivered += 1;
        if self.measuring {
            self.result.in_window += 1;
            self.shared.record(self.now.saturating_sub(sent));
        }
    }
}

/// Reads a subscriber's socket until the stop signal, handing every read to `parse` (which
/// keeps its own partial-message state), and writes back what it asks for.
pub(crate) async fn read_deliveries(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut parse: impl FnMut(&[u8], &mut Chunk<'_>),
) -> SubscriberResult {
    let mut result = SubscriberResult { in_window: 0, dropped: false };
    let (mut reader, mut writer) = stream.into_split();
    let mut buffer = vec![0u8; 16 * 1024];
    let mut reply = Vec::new();
    loop {
        let n = tokio::select! {
            biased;
            _ = stop.changed() => break,
            read = reader.read(&mut buffer) => match read {
                Ok(n) if n > 0 => n,
                _ => {
                    shared.dropped(&mut result);
                    break;
                }
            },
        };
        let mut chunk = Chunk {
            shared: &shared,
            result: &mut result,
            measuring: shared.measuring.load(Ordering::Relaxed),
            now: shared.now_us(),
            delivered: 0,
            reply: &mut reply,
            closed: false,
        };
        parse(&buffer[..n], &mut chunk);
        let (delivered, closed) = (chunk.delivered, chunk.closed);
        shared.delivered.fetch_add(delivered, Ordering::Relaxed);
        if closed || (!reply.is_empty() && writer.write_all(&reply).await.is_err()) {
            shared.dropped(&mut result);
            break;
        }
        reply.clear();
    }
    result
}

/// Reads WebSocket frames off a subscribed connection, answering pings (WebSocket ones, and
/// Engine.IO's `2` for Socket.IO).
pub(crate) async fn frame_subscriber(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> SubscriberResult {
    let mut frames = client::ServerFrames::default();
    read_deliveries(stream, shared, stop, |bytes, chunk| {
        frames.feed(bytes, |frame| match frame {
            client::Frame::Data(b"2") => chunk.reply.extend(client::masked(0x1, b"3")),
            client::Frame::Data(payload) => {
                if let Some(sent) = client::stamp(payload) {
                    chunk.delivery(sent);
                }
            }
            client::Frame::Ping(payload) => chunk.reply.extend(client::masked(0xA, payload)),
            client::Frame::Close => chunk.closed = true,
        });
    })
    .await
}

/// What the publisher sends: where, how big, to how many, how fast.
pub(crate) struct PublishPlan {
    pub(crate) channel: String,
    pub(crate) payload_bytes: usize,
    pub(crate) subscribers: u64,
    /// 0: saturated.
    pub(crate) deliveries_per_sec: u64,
}

fn args_publish(args: &FanoutArgs) -> PublishPlan {
    PublishPlan {
        channel: args.channel.clone(),
        payload_bytes: args.load.payload_bytes,
        subscribers: args.subscribers.max(1) as u64,
        deliveries_per_sec: args.load.deliveries_per_sec,
    }
}

type Tasks = (Vec<JoinHandle<SubscriberResult>>, JoinHandle<anyhow::Result<()>>);

async fn start_tributary(
    args: &FanoutArgs,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    pacer: Pacer,
) -> anyhow::Result<Tasks> {
    if args.rules > 0 {
        let credentials = args.credentials.as_deref().context("--credentials is needed with --rules")?;
        let management = crate::webhooks::Management::read(credentials, args.target.first_node())?;
        let (url, _receiver) = crate::webhooks::receiver(shared.base, false).await?;
        management.rules_to(&url, args.rules, &args.rules_pattern, 100, 100).await?;
    }
    let token = client::mint(&args.target, "bench", "bench:*").await?;
    let mut subscribers = client::connect_many(&args.target, args.subscribers, &token).await?;
    let subscribing = futures::stream::iter(subscribers.iter_mut())
        .map(|ws| client::subscribe(ws, &args.channel, None))
        .buffer_unordered(args.target.connect_concurrency.max(1));
    for reply in subscribing.collect::<Vec<_>>().await {
        reply?;
    }
    let publisher = client::connect(&args.target, args.subscribers, &token).await?;
    let tasks = subscribers
        .into_iter()
        .map(|ws| tokio::spawn(subscriber(ws, shared.clone(), stop.clone())))
        .collect();
    Ok((tasks, tokio::spawn(publish(publisher, pacer))))
}

async fn start_peer(
    peer: Peer,
    args: &FanoutArgs,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    pacer: Pacer,
) -> anyhow::Result<Tasks> {
    let addr = args.peer_addr.context("--peer-addr is needed for this peer")?;
    let source_ips = args.target.source_ips;
    let streams: Vec<_> = futures::stream::iter(0..args.subscribers)
        .map(|n| peer::subscriber(peer, addr, n, source_ips, &args.channel))
        .buffer_unordered(args.target.connect_concurrency.max(1))
        .collect()
        .await;
    let mut tasks = Vec::with_capacity(streams.len());
    for stream in streams {
        let (stream, shared, stop) = (stream?, shared.clone(), stop.clone());
        tasks.push(if peer::speaks_websocket(peer) {
            tokio::spawn(frame_subscriber(stream, shared, stop))
        } else {
            tokio::spawn(raw_subscriber(stream, shared, stop))
        });
    }
    let publisher = peer::publisher(peer, addr, args.subscribers, source_ips, &args.channel).await?;
    Ok((tasks, tokio::spawn(raw_publish(peer, publisher, pacer))))
}

/// Decides how many messages to publish next: in saturated mode as many as keep the deliveries
/// in flight under the window, in rate mode what the clock owes.
pub(crate) struct Pacer {
    pub(crate) plan: PublishPlan,
    shared: Arc<Shared>,
    published: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
    /// When the next message is due, in rate mode.
    due_us: Option<f64>,
}

impl Pacer {
    /// Creates the pacer of a run.
    pub(crate) fn new(
        plan: PublishPlan,
        shared: Arc<Shared>,
        published: Arc<AtomicU64>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self { plan, shared, published, stop, due_us: None }
    }

    /// Returns the next burst size, or `None` when the run is over.
    pub(crate) async fn next(&mut self, tick: &mut tokio::time::Interval, owed: &mut f64) -> Option<u64> {
        let subscribers = self.plan.subscribers;
        loop {
            if *self.stop.borrow() {
                return None;
            }
            if self.plan.deliveries_per_sec == 0 {
                let expected = self.shared.expected.load(Ordering::Relaxed);
                let in_flight = expected.saturating_sub(self.shared.delivered.load(Ordering::Relaxed));
                let window = subscribers * WINDOW_PER_SUBSCRIBER;
                if in_flight < window {
                    return Some(((window - in_flight) / subscribers).clamp(1, 64));
                }
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.changed() => return None,
            }
            *owed += self.plan.deliveries_per_sec as f64 / subscribers as f64 / 1000.0;
            let whole = owed.floor();
            *owed -= whole;
            return Some(whole as u64);
        }
    }

    /// Returns the next payload. At a fixed rate it is stamped with the time it was due, not
    /// the time it left: a generator that falls behind must show up as latency.
    pub(crate) fn payload(&mut self, padding: &str) -> String {
        let stamp = if self.plan.deliveries_per_sec == 0 {
            self.shared.now_us()
        } else {
            let per_message_us = 1e6 * self.plan.subscribers as f64 / self.plan.deliveries_per_sec as f64;
            let due = *self.due_us.get_or_insert(self.shared.now_us() as f64);
            self.due_us = Some(due + per_message_us);
            due as u64
        };
        format!(r#"{{"t":{stamp},"p":"{padding}"}}"#)
    }

    /// Records a published burst.
    pub(crate) fn published(&self, burst: u64) {
        self.published.fetch_add(burst, Ordering::Relaxed);
        self.shared.expected.fetch_add(burst * self.shared.active.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

async fn publish(ws: Ws, mut pacer: Pacer) -> anyhow::Result<()> {
    let (mut sink, mut stream) = ws.split();
    // The server answers publishes without an id only when they fail: count those.
    let shared = pacer.shared.clone();
    let drain = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(&message, Message::Text(t) if t.contains("\"error\"")) {
                shared.publish_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let padding = "x".repeat(pacer.plan.payload_bytes.saturating_sub(16));
    let channel = pacer.plan.channel.clone();
    let (mut tick, mut owed) = (tokio::time::interval(Duration::from_millis(1)), 0f64);
    while let Some(burst) = pacer.next(&mut tick, &mut owed).await {
        for _ in 0..burst {
            let data = pacer.payload(&padding);
            let frame = format!(r#"{{"op":"publish","channel":"{channel}","data":{data}}}"#);
            sink.feed(Message::text(frame)).await?;
        }
        sink.flush().await?;
        pacer.published(burst);
    }
    drain.abort();
    Ok(())
}

async fn raw_publish(peer: Peer, stream: tokio::net::TcpStream, mut pacer: Pacer) -> anyhow::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    // Redis answers every PUBLISH with the receiver count; nobody needs it.
    let drain = tokio::spawn(async move {
        let mut sink = [0u8; 4096];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let padding = "x".repeat(pacer.plan.payload_bytes.saturating_sub(16));
    let subject = peer.subject(&pacer.plan.channel);
    let (mut tick, mut owed) = (tokio::time::interval(Duration::from_millis(1)), 0f64);
    let mut out = Vec::new();
    while let Some(burst) = pacer.next(&mut tick, &mut owed).await {
        out.clear();
        for _ in 0..burst {
            peer::publish_command(peer, &subject, &pacer.payload(&padding), &mut out);
        }
        writer.write_all(&out).await?;
        pacer.published(burst);
    }
    drain.abort();
    Ok(())
}

pub(crate) async fn raw_subscriber(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> SubscriberResult {
    let mut scanner = peer::StampScanner::default();
    read_deliveries(stream, shared, stop, |bytes, chunk| {
        let mut pings = 0;
        scanner.feed(bytes, &mut pings, |sent| chunk.delivery(sent));
        for _ in 0..pings {
            chunk.reply.extend_from_slice(b"PONG\r\n");
        }
    })
    .await
}
