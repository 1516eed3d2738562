//! The delivery worker as its own process (`tributary worker`) on PostgreSQL, killed with
//! SIGKILL mid-run: another worker process takes over, and every event reaches the receiver,
//! signed, the duplicates carrying the event's id.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use secrecy::ExposeSecret as _;
use tributary_delivery::signature::WebhookSecret;
use tributary_store::{Actor, MasterKey, NewDelivery, NewWebhookEndpoint, Store};

/// Starts `tributary worker` on the database at `url`, allowed to reach loopback over http.
fn worker_process(url: &str, key: &MasterKey, dir: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["worker", "--data-dir"])
        .arg(dir)
        .args([
            "--set",
            "delivery.allow_http=true",
            "--set",
            r#"delivery.allowed_private_ranges=["127.0.0.0/8"]"#,
            "--set",
            "delivery.lease_secs=1",
            "--set",
            "delivery.poll_interval_ms=20",
            "--set",
            "delivery.retry_schedule=1s,1s,1s,1s,1s,1s",
        ])
        .env("TRIBUTARY_STORAGE__DATABASE_URL", url)
        .env("TRIBUTARY_MASTER_KEY", key.to_base64().expose_secret())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts")
}

/// Waits until `check` holds, for at most `seconds`.
async fn eventually(seconds: u64, what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_killed_with_sigkill_loses_no_delivery() {
    let url = tributary_testkit::fresh_postgres_database().await;
    let key = MasterKey::generate();
    let store = Store::open(&url, &key).await.unwrap();

    // The receiver: checks each signature with the endpoint's secret and counts event ids.
    let received: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let secret: Arc<Mutex<Option<WebhookSecret>>> = Arc::default();
    let (seen, known) = (received.clone(), secret.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| async move {
            // Slow enough that a kill lands with attempts in flight.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let header =
                |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let (id, timestamp) =
                (header("webhook-id"), header("webhook-timestamp").parse::<u64>().unwrap_or(0));
            let expected = known.lock().unwrap().as_ref().map(|s| s.sign(&id, timestamp, &body));
            if expected.is_none_or(|expected| !header("webhook-signature").split(' ').any(|s| s == expected))
            {
                return StatusCode::UNAUTHORIZED;
            }
            *seen.lock().unwrap().entry(id).or_default() += 1;
            StatusCode::NO_CONTENT
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let tenant = store.create_tenant("Acme").await.unwrap();
    let app = store.create_app(&tenant.id, "prod").await.unwrap();
    let new = NewWebhookEndpoint {
        url: format!("http://{addr}/hook"),
        description: "kill test".into(),
        headers: "{}".into(),
    };
    let (endpoint, key_bytes) =
        store.create_webhook_endpoint(&Actor::system(), &tenant.id, &app.id, &new).await.unwrap();
    *secret.lock().unwrap() = Some(WebhookSecret::from_bytes(key_bytes.expose_secret().to_vec()));
    const EVENTS: usize = 300;
    for n in 0..EVENTS {
        let event = NewDelivery {
            tenant_id: tenant.id.clone(),
            app_id: app.id.clone(),
            target_id: endpoint.id.clone(),
            event_id: format!("evt_{n:04}"),
            payload: format!(r#"{{"type":"message","n":{n}}}"#).into_bytes(),
            headers: "{}".into(),
            events: 1,
        };
        store.enqueue_delivery(&event, tributary_delivery::worker::now_ms()).await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let mut first = worker_process(&url, &key, dir.path());
    eventually(60, "a quarter delivered", || received.lock().unwrap().len() >= EVENTS / 4).await;
    first.start_kill().unwrap(); // SIGKILL
    first.wait().await.unwrap();
    let at_kill = received.lock().unwrap().len();
    let mut second = worker_process(&url, &key, dir.path());
    eventually(90, "every event delivered", || received.lock().unwrap().len() == EVENTS).await;
    second.start_kill().unwrap();
    second.wait().await.unwrap();

    let counts = received.lock().unwrap().clone();
    let delivered = counts.len();
    let duplicated: usize = counts.values().map(|n| n - 1).sum();
    println!(
        "published {EVENTS} / delivered {delivered} / lost {} / duplicated {duplicated} (killed at {at_kill})",
        EVENTS - delivered
    );
    assert_eq!(delivered, EVENTS, "nothing lost");
    assert!(at_kill < EVENTS, "the kill came before the end");
    assert!(store.dead_deliveries(&tenant.id, &endpoint.id, 10).await.unwrap().is_empty());
}
