//! Pushes under `kill -9`: a relay process takes direct pushes (PostgreSQL store, Redis engine)
//! while separate worker processes send them to the APNs fake, and the workers are killed with
//! SIGKILL mid-stream. Every push the relay acknowledged reaches its device; one sent twice (a
//! killed worker's, taken over after its lease) carries the same `apns-id` both times.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use tributary_store::{DevicePlatform, MasterKey, NewDevice, PushTarget};
use tributary_testkit::ThrowawayRedis;
use tributary_testkit::push::{ApnsFake, KeyPair};

/// A child process, killed (SIGKILL) when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn command(
    dir: &std::path::Path,
    role: &str,
    database: &str,
    redis: &str,
    key: &MasterKey,
    settings: &[String],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tributary"));
    command.arg(role).arg("--data-dir").arg(dir);
    let engine = ["engine.kind=redis".to_owned(), format!("engine.redis_url={redis}")];
    for setting in engine.iter().chain(settings) {
        command.args(["--set", setting]);
    }
    command
        .env("TRIBUTARY_STORAGE__DATABASE_URL", database)
        .env("TRIBUTARY_MASTER_KEY", key.to_base64().expose_secret())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// A relay process (`tributary serve` without a worker) on a free port, started and ready.
pub(crate) struct Relay {
    /// Its base URL.
    pub(crate) http: String,
    /// A client of it.
    pub(crate) client: reqwest::Client,
    /// What it wrote to `credentials.json` (tenant, app, operator token, API key).
    pub(crate) credentials: Value,
    _process: Process,
}

impl Relay {
    /// Starts a relay in `dir` with `settings` besides its port's, and waits until it is ready.
    pub(crate) async fn start(
        dir: &std::path::Path,
        database: &str,
        redis: &str,
        key: &MasterKey,
        settings: &[String],
    ) -> Relay {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let http = format!("http://127.0.0.1:{port}");
        let mut all = vec!["delivery.worker=false".to_owned(), format!("listen=\"127.0.0.1:{port}\"")];
        all.extend(settings.iter().map(|s| s.replace("{http}", &http)));
        let process = Process(command(dir, "serve", database, redis, key, &all).spawn().unwrap());
        tributary_delivery::install_tls_provider();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client.get(format!("{http}/readyz")).send().await.map_or(true, |r| !r.status().is_success()) {
            assert!(tokio::time::Instant::now() < deadline, "the relay did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let credentials =
            serde_json::from_str(&std::fs::read_to_string(dir.join("credentials.json")).unwrap()).unwrap();
        Relay { http, client, credentials, _process: process }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_push_reaches_its_device_across_kill_9_of_workers() {
    let redis = ThrowawayRedis::start();
    let (dir, key) = (tempfile::tempdir().unwrap(), MasterKey::generate());
    let database = tributary_testkit::fresh_postgres_database().await;
    let keys = KeyPair::p256();
    let apns = ApnsFake::start("TEAM123456", "KEY7654321", &keys.public_pem).await;
    let ca = dir.path().join("push-ca.pem");
    std::fs::write(&ca, &apns.ca_pem).unwrap();

    let relay = Relay::start(dir.path(), &database, &redis.url(), &key, &[]).await;
    let (http, client, credentials) = (&relay.http, &relay.client, &relay.credentials);
    let (tenant, app) = (credentials["tenant_id"].as_str().unwrap(), credentials["app_id"].as_str().unwrap());
    let (operator, api_key) =
        (credentials["operator_token"].as_str().unwrap(), credentials["api_key"].as_str().unwrap());
    let apns_body = json!({"team_id": "TEAM123456", "key_id": "KEY7654321", "topic": "com.example.shop", "key": keys.private_pem});
    let set = client
        .put(format!("{http}/v1/tenants/{tenant}/apps/{app}/push-credentials/apns"))
        .bearer_auth(operator)
        .json(&apns_body)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status().as_u16(), 200, "{}", set.text().await.unwrap());
    const PUSHES: usize = 300;
    let store = tributary_store::Store::open(&database, &key).await.unwrap();
    let mut devices = Vec::with_capacity(PUSHES);
    for n in 0..PUSHES {
        let new = NewDevice {
            platform: DevicePlatform::Apns,
            token: format!("{n:064x}"),
            web_keys: None,
            client_id: None,
            metadata: "{}".into(),
        };
        devices.push(store.register_device(tenant, app, &new).await.unwrap().id);
    }

    let worker_settings = [
        format!("delivery.apns_url={}", apns.url),
        format!("delivery.push_ca_file={}", ca.display()),
        "delivery.lease_secs=1".to_owned(),
        "delivery.poll_interval_ms=20".to_owned(),
        "delivery.per_endpoint_concurrency=8".to_owned(),
        "delivery.retry_schedule=1s,1s,1s,1s,1s,1s,1s,1s".to_owned(),
    ];
    let worker = || {
        Process(
            command(dir.path(), "worker", &database, &redis.url(), &key, &worker_settings).spawn().unwrap(),
        )
    };
    let mut workers = vec![worker(), worker()];
    for (n, device) in devices.iter().enumerate() {
        match n {
            100 => {
                drop(workers.remove(0)); // SIGKILL
                workers.push(worker());
            }
            200 => drop(workers.remove(0)),
            _ => {}
        }
        let push =
            json!({"recipient": {"device_id": device}, "push": {"title": format!("n{n}"), "data": {"n": n}}});
        let reply = client
            .post(format!("{http}/v1/push/publish"))
            .bearer_auth(api_key)
            .header("idempotency-key", format!("p{n}"))
            .json(&push)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 202, "push {n}: {}", reply.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let by_push = loop {
        let mut by_push: HashMap<u64, Vec<String>> = HashMap::new();
        for received in apns.received() {
            let n = received.payload["n"].as_u64().unwrap();
            by_push.entry(n).or_default().push(received.apns_id.clone());
        }
        if by_push.len() == PUSHES {
            break by_push;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} pushes never arrived", PUSHES - by_push.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let duplicated: usize = by_push.values().map(|ids| ids.len() - 1).sum();
    println!(
        "published {PUSHES} / delivered {} / lost {} / duplicated {duplicated}",
        by_push.len(),
        PUSHES - by_push.len()
    );
    for (n, ids) in &by_push {
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), 1, "push {n} came with different apns-ids: {ids:?}");
    }

    // Then pushes to a channel every device is subscribed to: each is one job of all 300
    // devices, sent over concurrent streams to a slow APNs (every answer takes 20 ms), so a
    // worker killed is killed mid-job, some of its devices answered and some not.
    for device in &devices {
        store.subscribe_push(tenant, app, "alerts", &PushTarget::Device(device.clone())).await.unwrap();
    }
    apns.answer_after(Duration::from_millis(20));
    const CHANNEL_PUSHES: usize = 20;
    for n in 0..CHANNEL_PUSHES {
        match n {
            5 => {
                drop(workers.remove(0)); // SIGKILL, mid-job
                workers.push(worker());
            }
            12 => {
                drop(workers.remove(0));
                workers.push(worker());
            }
            _ => {}
        }
        let push =
            json!({"recipient": {"channel": "alerts"}, "push": {"title": "alert", "data": {"alert": n}}});
        let reply = client
            .post(format!("{http}/v1/push/publish"))
            .bearer_auth(api_key)
            .header("idempotency-key", format!("alert{n}"))
            .json(&push)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 202, "alert {n}: {}", reply.text().await.unwrap());
        assert_eq!(reply.json::<Value>().await.unwrap()["devices"], PUSHES);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let expected = CHANNEL_PUSHES * PUSHES;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let (copies, received) = loop {
        let mut copies: HashMap<(u64, String), Vec<String>> = HashMap::new();
        let mut received = 0;
        for got in apns.received() {
            if let Some(alert) = got.payload["alert"].as_u64() {
                received += 1;
                copies.entry((alert, got.device_token.clone())).or_default().push(got.apns_id.clone());
            }
        }
        if copies.len() == expected {
            break (copies, received);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {expected} never arrived",
            expected - copies.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "channel pushes: published {expected} / delivered {} / lost {} / duplicated {}",
        copies.len(),
        expected - copies.len(),
        received - copies.len()
    );
    for (copy, ids) in &copies {
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), 1, "{copy:?} came with different apns-ids: {ids:?}");
    }
    drop(workers);
}
