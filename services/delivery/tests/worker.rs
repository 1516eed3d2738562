//! The worker against the real queue (SQLite and PostgreSQL) and a real receiver: every event
//! arrives, signed, across a worker killed mid-run; a receiver that keeps failing has its events
//! dead-lettered, and one that answers 410 is disabled.

// Test code: a failed step must panic the test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret as _;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use tributary_delivery::address::{AddressPolicy, IpRange};
use tributary_delivery::schedule::RetrySchedule;
use tributary_delivery::sender::{Sender, SenderLimits};
use tributary_delivery::worker::{Worker, WorkerConfig, now_ms};
use tributary_store::{Actor, DeliveryState, NewDelivery, NewWebhookEndpoint, Store};

mod common;
use common::stores;

/// What the receiver got: per event id, how many signed requests.
#[derive(Default)]
struct Received {
    by_event: Mutex<HashMap<String, usize>>,
    unsigned: Mutex<usize>,
    calls: Mutex<usize>,
}

fn verified(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let signed =
        [get("webhook-id").as_bytes(), b".", get("webhook-timestamp").as_bytes(), b".", body].concat();
    get("webhook-signature").split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|sig| {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
        mac.update(&signed);
        base64::engine::general_purpose::STANDARD.decode(sig).is_ok_and(|sig| mac.verify_slice(&sig).is_ok())
    })
}

/// A receiver that fails every third call with 503 and answers `status` otherwise; it learns
/// the endpoint's secret once the endpoint (which needs its address) exists.
async fn receiver(secret: Arc<Mutex<Vec<u8>>>, received: Arc<Received>, status: StatusCode) -> SocketAddr {
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| async move {
            let call = {
                let mut calls = received.calls.lock().unwrap();
                *calls += 1;
                *calls
            };
            if call % 3 == 0 {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            let secret = secret.lock().unwrap().clone();
            if !verified(&secret, &headers, &body) || headers.get("x-team").is_none() {
                *received.unsigned.lock().unwrap() += 1;
                return StatusCode::UNAUTHORIZED;
            }
            let id = headers["webhook-id"].to_str().unwrap().to_owned();
            *received.by_event.lock().unwrap().entry(id).or_default() += 1;
            status
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn worker(store: &Store, owner: &str, lease: Duration, retries: usize) -> Worker {
    let policy = AddressPolicy::new().with_http(true).allow(IpRange::parse("127.0.0.0/8").unwrap());
    let sender = Sender::new(policy, SenderLimits::default()).unwrap();
    let config = WorkerConfig {
        owner: owner.into(),
        lease,
        batch: 16,
        per_target: 8,
        poll_interval: Duration::from_millis(20),
        schedule: RetrySchedule::new(vec![Duration::from_millis(30); retries]),
        disable_after: Duration::ZERO,
    };
    Worker::new(store.clone(), sender, config)
}

/// Sets up a tenant, an app and an endpoint at `url`; returns their ids and the secret.
async fn endpoint(store: &Store, url: &str) -> (String, String, String, Vec<u8>) {
    let tenant = store.create_tenant("Acme").await.unwrap();
    let app = store.create_app(&tenant.id, "prod").await.unwrap();
    let new = NewWebhookEndpoint {
        url: url.into(),
        description: String::new(),
        headers: r#"{"x-team":"orders"}"#.into(),
    };
    let (endpoint, secret) =
        store.create_webhook_endpoint(&Actor::system(), &tenant.id, &app.id, &new).await.unwrap();
    (tenant.id, app.id, endpoint.id, secret.expose_secret().to_vec())
}

async fn enqueue(store: &Store, tenant: &str, app: &str, target: &str, events: usize) {
    for n in 0..events {
        let event = NewDelivery {
            tenant_id: tenant.into(),
            app_id: app.into(),
            target_id: target.into(),
            event_id: format!("evt_{n:04}"),
            payload: format!(r#"{{"type":"message","n":{n}}}"#).into_bytes(),
            headers: "{}".into(),
            events: 1,
        };
        assert!(store.enqueue_delivery(&event, now_ms()).await.unwrap());
    }
}

/// Waits until `check` holds, for at most `seconds`.
async fn eventually(seconds: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_across_a_worker_killed_mid_run() {
    for (store, _dir) in stores().await {
        let (received, secret) = (Arc::new(Received::default()), Arc::new(Mutex::new(Vec::new())));
        let addr = receiver(secret.clone(), received.clone(), StatusCode::NO_CONTENT).await;
        let (tenant, app, target, key) = endpoint(&store, &format!("http://{addr}/hook")).await;
        *secret.lock().unwrap() = key;
        const EVENTS: usize = 200;
        enqueue(&store, &tenant, &app, &target, EVENTS).await;

        // Worker A runs with a short lease and is killed (its task dropped mid-attempt) once a
        // quarter of the events have arrived; worker B finishes.
        let a = worker(&store, "worker-a", Duration::from_millis(500), 20);
        let a = tokio::spawn(async move { a.run(CancellationToken::new()).await });
        eventually(30, "a quarter delivered", async || received.by_event.lock().unwrap().len() >= EVENTS / 4)
            .await;
        a.abort();
        let stop = CancellationToken::new();
        let b = worker(&store, "worker-b", Duration::from_secs(30), 20);
        let b_stop = stop.clone();
        let b = tokio::spawn(async move { b.run(b_stop).await });
        eventually(60, "every event delivered", async || {
            let n = received.by_event.lock().unwrap().len();
            n == EVENTS
        })
        .await;
        stop.cancel();
        b.await.unwrap();

        let by_event = received.by_event.lock().unwrap().clone();
        let delivered = by_event.len();
        let duplicated: usize = by_event.values().map(|n| n - 1).sum();
        let lost = EVENTS - delivered;
        println!("published {EVENTS} / delivered {delivered} / lost {lost} / duplicated {duplicated}");
        assert_eq!(lost, 0);
        assert_eq!(*received.unsigned.lock().unwrap(), 0, "every request verified");
        let dead = store.dead_deliveries(&tenant, &target, 10).await.unwrap();
        assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
        let log = store.delivery_log(&tenant, &target, 1000).await.unwrap();
        assert!(
            log.iter().any(|a| a.record.outcome == "retry" && a.record.status == Some(503)),
            "503s were retried"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoints_events_are_dead_lettered_and_one_that_is_gone_is_disabled() {
    for (store, _dir) in stores().await {
        // A receiver that answers 410 to every signed request.
        let (received, secret) = (Arc::new(Received::default()), Arc::new(Mutex::new(Vec::new())));
        let addr = receiver(secret.clone(), received.clone(), StatusCode::GONE).await;
        let (tenant, app, target, key) = endpoint(&store, &format!("http://{addr}/hook")).await;
        *secret.lock().unwrap() = key;
        enqueue(&store, &tenant, &app, &target, 3).await;
        let w = worker(&store, "w", Duration::from_secs(30), 1);
        eventually(30, "the endpoint is disabled", async || {
            w.run_once().await.unwrap();
            !store.webhook_endpoint(&tenant, &target).await.unwrap().enabled
        })
        .await;
        let endpoint = store.webhook_endpoint(&tenant, &target).await.unwrap();
        assert_eq!(endpoint.disabled_reason.as_deref(), Some("the endpoint answered 410 Gone"));
        eventually(30, "every event dead-lettered", async || {
            w.run_once().await.unwrap();
            store.dead_deliveries(&tenant, &target, 10).await.unwrap().len() == 3
        })
        .await;
        // Replayed after the endpoint is enabled again, they go out again with their ids.
        store.set_webhook_enabled(&Actor::system(), &tenant, &target, None).await.unwrap();
        for job in store.dead_deliveries(&tenant, &target, 10).await.unwrap() {
            store.replay_delivery(&tenant, &job.id, now_ms()).await.unwrap();
            assert_eq!(store.delivery(&tenant, &job.id).await.unwrap().state, DeliveryState::Pending);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_for_too_long_is_disabled_and_its_tenant_told_and_a_healthy_one_is_not() {
    use tributary_engine::{ChannelKey, Engine, HistoryQuery, MemoryEngine, StreamOptions};
    for (store, _dir) in stores().await {
        // One endpoint answers 503 to everything, the other 204: only the first is disabled.
        let (failing, secret) = (Arc::new(Received::default()), Arc::new(Mutex::new(Vec::new())));
        let down = receiver(secret.clone(), failing.clone(), StatusCode::SERVICE_UNAVAILABLE).await;
        let (tenant, app, target, key) = endpoint(&store, &format!("http://{down}/hook")).await;
        *secret.lock().unwrap() = key;
        let (healthy, healthy_secret) = (Arc::new(Received::default()), Arc::new(Mutex::new(Vec::new())));
        let up = receiver(healthy_secret.clone(), healthy.clone(), StatusCode::NO_CONTENT).await;
        let new = NewWebhookEndpoint {
            url: format!("http://{up}/hook"),
            description: String::new(),
            headers: r#"{"x-team":"orders"}"#.into(),
        };
        let (fine, fine_key) =
            store.create_webhook_endpoint(&Actor::system(), &tenant, &app, &new).await.unwrap();
        *healthy_secret.lock().unwrap() = fine_key.expose_secret().to_vec();
        enqueue(&store, &tenant, &app, &target, 5).await;
        enqueue(&store, &tenant, &app, &fine.id, 5).await;

        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new(Default::default()));
        let policy = AddressPolicy::new().with_http(true).allow(IpRange::parse("127.0.0.0/8").unwrap());
        let config = WorkerConfig {
            owner: "w".into(),
            lease: Duration::from_secs(30),
            batch: 16,
            per_target: 8,
            poll_interval: Duration::from_millis(20),
            schedule: RetrySchedule::new(vec![Duration::from_millis(50); 100]),
            disable_after: Duration::from_millis(400),
        };
        let w = Worker::new(store.clone(), Sender::new(policy, SenderLimits::default()).unwrap(), config)
            .notifying(engine.clone());
        eventually(30, "the failing endpoint is disabled", async || {
            w.run_once().await.unwrap();
            !store.webhook_endpoint(&tenant, &target).await.unwrap().enabled
        })
        .await;
        let disabled = store.webhook_endpoint(&tenant, &target).await.unwrap();
        assert!(
            disabled.disabled_reason.as_deref().unwrap().starts_with("disabled by the server"),
            "{disabled:?}"
        );
        assert!(store.webhook_endpoint(&tenant, &fine.id).await.unwrap().enabled, "the healthy one stays on");
        assert_eq!(healthy.by_event.lock().unwrap().len(), 5);
        let audit = store.audit_events(&tenant, 50).await.unwrap();
        assert!(audit.iter().any(|e| e.action == "webhook.auto_disable" && e.target == target), "{audit:?}");

        let channel =
            tributary_protocol::ChannelName::parse(tributary_protocol::channel::SYSTEM_CHANNEL).unwrap();
        let query = HistoryQuery {
            since: None,
            direction: tributary_protocol::frame::Direction::Backward,
            limit: 10,
        };
        let stream = StreamOptions { history_size: 1_000, history_ttl: Duration::from_secs(600) };
        let page = engine.history(&ChannelKey::new(app.as_str(), channel), query, stream).await.unwrap();
        assert_eq!(page.publications.len(), 1, "told once");
        let tributary_protocol::Payload::Json(json) = &page.publications[0].payload else { panic!("JSON") };
        let notice: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(
            (notice["type"].as_str(), notice["webhook_id"].as_str()),
            (Some("webhook.disabled"), Some(target.as_str()))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_holds_only_its_own_slots_while_another_tenants_deliveries_flow() {
    for (store, _dir) in stores().await {
        // Tenant A's endpoint takes 20 s to answer; tenant B's answers at once.
        let slow = Router::new().route(
            "/hook",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                StatusCode::NO_CONTENT
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let slow_addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, slow).await.unwrap() });
        let (tenant_a, app_a, target_a, _) = endpoint(&store, &format!("http://{slow_addr}/hook")).await;
        let (received, secret) = (Arc::new(Received::default()), Arc::new(Mutex::new(Vec::new())));
        let fast_addr = receiver(secret.clone(), received.clone(), StatusCode::NO_CONTENT).await;
        let (tenant_b, app_b, target_b, key) = endpoint(&store, &format!("http://{fast_addr}/hook")).await;
        *secret.lock().unwrap() = key;
        enqueue(&store, &tenant_a, &app_a, &target_a, 10).await;
        enqueue(&store, &tenant_b, &app_b, &target_b, 30).await;

        // Four attempts in flight at most, two per endpoint: the slow endpoint's two are stuck
        // for 20 s, and B's thirty still arrive meanwhile.
        let policy = AddressPolicy::new().with_http(true).allow(IpRange::parse("127.0.0.0/8").unwrap());
        let limits = SenderLimits { request_timeout: Duration::from_secs(30), ..SenderLimits::default() };
        let config = WorkerConfig {
            owner: "w".into(),
            lease: Duration::from_secs(60),
            batch: 4,
            per_target: 2,
            poll_interval: Duration::from_millis(20),
            schedule: RetrySchedule::new(vec![Duration::from_millis(30); 5]),
            disable_after: Duration::ZERO,
        };
        let w = Worker::new(store.clone(), Sender::new(policy, limits).unwrap(), config);
        let stop = CancellationToken::new();
        let running = tokio::spawn({
            let stop = stop.clone();
            async move { w.run(stop).await }
        });
        let started = tokio::time::Instant::now();
        eventually(10, "tenant B's deliveries, beside the stuck ones", async || {
            received.by_event.lock().unwrap().len() == 30
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(10));
        running.abort();
    }
}
