//! Push: pushes published to a channel whose devices are registered with the server, sent by
//! its delivery worker to the testkit's fake of APNs (HTTP/2 over TLS, every provider token
//! checked) or of a Web Push service (every message decrypted, every VAPID token checked);
//! measures pushes received per second, latency from publish to the fake, and the server's
//! CPU and memory.
//!
//! The generator makes the credentials through the management API (the operator token of the
//! server's `credentials.json`), registers `--devices` devices of one client id through the
//! HTTP API and subscribes that client id to the channel, then publishes pushes to the channel
//! at `--rate / --devices` per second: each reaches every device. The APNs fake listens on
//! `--apns-port` with the certificate `scripts/bench` made before the server started (the
//! server trusts its authority); the Web Push fake's endpoints are the devices' subscriptions
//! (it decrypts one message in eight: decrypting costs it what encrypting costs the server).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::Instant;
use tributary_testkit::push::{ApnsFake, KeyPair, WebPushFake};

use crate::{Target, server_stats, webhooks::Management};

const TEAM: &str = "BENCHTEAM1";
const KEY_ID: &str = "BENCHKEY01";
const CHANNEL: &str = "push-bench";

/// Arguments of the push scenario.
#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    target: Target,
    /// The server's `credentials.json` (its operator token, tenant and app).
    #[arg(long, env = "BENCH_CREDENTIALS")]
    credentials: PathBuf,
    /// `apns` or `web`.
    #[arg(long, default_value = "apns")]
    platform: String,
    /// Devices subscribed to the channel: each push reaches them all.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Pushes (to devices) per second offered: a push to the channel every `devices / rate` s.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Length of the measured window.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured time before the window.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// The APNs fake's port (the server's `delivery.apns_url`).
    #[arg(long)]
    apns_port: Option<u16>,
    /// The directory `push-certs` wrote the APNs fake's certificate to.
    #[arg(long)]
    certs: Option<PathBuf>,
}

/// Writes a test authority and a certificate for `localhost` to `dir` (`ca.pem`, `cert.pem`,
/// `key.pem`): the APNs fake's, which the server must trust before the scenario starts it.
pub fn write_certs(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let made = tributary_testkit::tls::TestCertificates::generate();
    for (from, to) in
        [(made.ca_path(), "ca.pem"), (made.cert_path(), "cert.pem"), (made.key_path(), "key.pem")]
    {
        std::fs::copy(&from, dir.join(to)).with_context(|| format!("copying {from}"))?;
    }
    Ok(())
}

/// A fake push service the devices' pushes arrive at.
enum Fake {
    Apns(ApnsFake),
    Web(WebPushFake),
}

impl Fake {
    /// The publish stamps (µs since the generator's start) of the pushes arrived since the
    /// last call.
    fn drain(&self) -> Vec<Option<u64>> {
        match self {
            Fake::Apns(fake) => fake.drain().into_iter().map(|got| got.payload["t"].as_u64()).collect(),
            Fake::Web(fake) => fake
                .drain()
                .into_iter()
                .map(|got| serde_json::from_slice::<Value>(&got.plaintext).ok()?["data"]["t"].as_u64())
                .collect(),
        }
    }
}

/// Starts the fake and sets the app's credentials for it; returns the fake.
async fn fake(args: &PushArgs, management: &Management) -> anyhow::Result<Fake> {
    let key = KeyPair::p256();
    match args.platform.as_str() {
        "apns" => {
            let port = args.apns_port.context("--apns-port")?;
            let dir = args.certs.as_ref().context("--certs")?;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
            let files = [path("cert.pem"), path("key.pem"), path("ca.pem")];
            let fake = ApnsFake::serve(listener, &files, TEAM, KEY_ID, &key.public_pem);
            let body = json!({"team_id": TEAM, "key_id": KEY_ID, "topic": "com.example.bench",
                              "key": key.private_pem});
            management.put("/push-credentials/apns", body).await?;
            Ok(Fake::Apns(fake))
        }
        "web" => {
            let body = json!({"subject": "mailto:bench@example.com", "private_key": key.private_pem});
            let set = management.put("/push-credentials/webpush", body).await?;
            let public = set["settings"]["public_key"].as_str().context("the VAPID public key")?;
            let fake = WebPushFake::start(public).await;
            // The fake shares the generator's core: it decrypts a sample (latency is read
            // from those), and checks every message's token, headers and size.
            fake.decrypt_one_in(8);
            Ok(Fake::Web(fake))
        }
        other => anyhow::bail!("--platform {other}: apns or web"),
    }
}

/// Registers `args.devices` devices of the client `bench` and subscribes the client to the
/// channel, sixteen requests at a time.
async fn register(args: &PushArgs, fake: &Fake) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = args.target.first_node().to_owned();
    let bodies: Vec<Value> = (0..args.devices)
        .map(|n| match fake {
            Fake::Apns(_) => json!({"platform": "apns", "token": format!("{n:064x}"), "client_id": "bench"}),
            Fake::Web(web) => {
                let s = web.subscribe();
                json!({"platform": "web", "client_id": "bench",
                       "subscription": {"endpoint": s.endpoint, "keys": {"p256dh": s.p256dh, "auth": s.auth}}})
            }
        })
        .collect();
    let mut registering = futures::stream::iter(bodies)
        .map(|body| {
            let (http, url) = (http.clone(), format!("{base}/v1/push/devices"));
            async move {
                let reply = http.post(url).bearer_auth(&args.target.api_key).json(&body).send().await?;
                anyhow::ensure!(reply.status().is_success(), "registering a device: {}", reply.status());
                Ok(())
            }
        })
        .buffer_unordered(16);
    while let Some(done) = registering.next().await {
        done?;
    }
    let reply = http
        .post(format!("{base}/v1/push/channels/{CHANNEL}/subscriptions"))
        .bearer_auth(&args.target.api_key)
        .json(&json!({"client_id": "bench"}))
        .send()
        .await?;
    anyhow::ensure!(reply.status().is_success(), "subscribing: {}", reply.status());
    Ok(())
}

/// Runs the scenario and returns its JSON report.
pub async fn run(args: PushArgs) -> anyhow::Result<Value> {
    let management = Management::read(&args.credentials, args.target.first_node())?;
    let fake = fake(&args, &management).await?;
    register(&args, &fake).await?;
    // On stderr, so that a script running another scenario beside this one knows pushes flow.
    eprintln!("push: {} devices registered; pushing", args.devices);

    let base = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let period = Duration::from_secs_f64(args.devices as f64 / args.rate.max(1) as f64);
    let publishing = tokio::spawn(publish(args.target.clone(), period, base, stop_rx));
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut received, mut in_window) = (0u64, 0u64);
    let warmup_end = Instant::now() + Duration::from_secs(args.warmup_seconds);
    let mut started = None;
    let mut server_before = None;
    let (mut rss_kib, mut anon_kib) = (Vec::new(), Vec::new());
    let mut last_sample = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        let stamps = fake.drain();
        received += stamps.len() as u64;
        match started {
            None if now >= warmup_end => {
                started = Some(now);
                server_before = server_stats::read(args.target.server_pid);
            }
            None => {}
            Some(at) => {
                in_window += stamps.len() as u64;
                let micros = now.duration_since(base).as_micros() as u64;
                for sent in stamps.into_iter().flatten() {
                    let _ = histogram.record(micros.saturating_sub(sent).max(1));
                }
                if now.duration_since(last_sample) >= Duration::from_secs(1) {
                    last_sample = now;
                    if let Some(s) = server_stats::read(args.target.server_pid) {
                        rss_kib.push(s.rss_kib);
                        anon_kib.push(s.anon_kib);
                    }
                }
                if now.duration_since(at) >= Duration::from_secs(args.seconds) {
                    break;
                }
            }
        }
    }
    let seconds = started.map_or(0.0, |at| at.elapsed().as_secs_f64());
    let server_after = server_stats::read(args.target.server_pid);
    let _ = stop_tx.send(true);
    let published = publishing.await??;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let cpu = match (server_before, server_after) {
        (Some(before), Some(after)) => json!((after.cpu_ms - before.cpu_ms) as f64 / seconds / 1000.0),
        _ => Value::Null,
    };
    Ok(json!({
        "scenario": "push",
        "peer": "tributary",
        "platform": args.platform,
        "devices": args.devices,
        "offered_per_sec": args.rate,
        "seconds": seconds,
        "channel_pushes_published": published,
        "pushes_received": received,
        "pushes_per_sec": in_window as f64 / seconds,
        "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": histogram.max() as f64 / 1000.0},
        "server_cpu_cores": cpu,
        "server_rss_kib": {"first": rss_kib.first(), "last": rss_kib.last(), "max": rss_kib.iter().max()},
        "server_anon_kib": {"first": anon_kib.first(), "last": anon_kib.last(), "max": anon_kib.iter().max()},
    }))
}

/// Publishes a push to the channel every `period`, each stamped with its due time, until
/// stopped; returns how many.
async fn publish(
    target: Target,
    period: Duration,
    base: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/push/publish", target.first_node());
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = 0u64;
    loop {
        tokio::select! {
            due = tick.tick() => {
                let stamp = due.duration_since(base).as_micros() as u64;
                let body = json!({"recipient": {"channel": CHANNEL},
                                  "push": {"title": "bench", "body": "a push", "data": {"t": stamp}}});
                let reply = http.post(&url).bearer_auth(&target.api_key).json(&body).send().await?;
                anyhow::ensure!(reply.status().is_success(), "publishing a push: {}", reply.status());
                published += 1;
            }
            _ = stop.changed() => break,
        }
    }
    Ok(published)
}
