//! The production setup under `kill -9`: PostgreSQL store, a durable Redis (`appendfsync
//! always`), two relay processes without workers and separate `tributary worker` processes. A
//! rule sends an app's messages to a receiver while a publisher publishes; a worker, then a relay
//! (and another worker), then Redis itself are killed with SIGKILL mid-stream. Every message the
//! server acknowledged reaches the receiver, signed; a message that arrives twice arrives under
//! the same `webhook-id` both times. Clients of the killed relay were in presence on channels no
//! other node serves: their joins, their leaves (by expiry) and their channels' occupation and
//! vacancy (by the relay's lease ending) all arrive too.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use tributary_delivery::signature::WebhookSecret;
use tributary_store::MasterKey;
use tributary_testkit::ThrowawayRedis;

/// A child process, killed (SIGKILL) when dropped.
pub(crate) struct Process(Child);

impl Process {
    pub(crate) fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What every process shares: the data directory (credentials), the database, Redis, the key.
pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) database: String,
    pub(crate) redis: String,
    pub(crate) key: MasterKey,
}

impl Setup {
    fn command(&self, role: &str, settings: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tributary"));
        command.arg(role).arg("--data-dir").arg(self.dir.path());
        for setting in [
            "engine.kind=redis".to_owned(),
            format!("engine.redis_url={}", self.redis),
            "engine.redis_trust_restarts=true".to_owned(),
        ]
        .iter()
        .map(String::as_str)
        .chain(settings.iter().copied())
        {
            command.args(["--set", setting]);
        }
        command
            .env("TRIBUTARY_STORAGE__DATABASE_URL", &self.database)
            .env("TRIBUTARY_MASTER_KEY", self.key.to_base64().expose_secret())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Starts a relay without a worker; returns it and its base URL once it answers.
    pub(crate) async fn relay(&self) -> (Process, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("listen=\"127.0.0.1:{port}\"");
        // Presence entries of a killed relay expire two seconds after its last refresh.
        let settings = ["delivery.worker=false", "relay.presence_timeout_ms=2000", &listen];
        let child = self.command("serve", &settings).spawn().expect("the binary starts");
        let process = Process(child);
        let http = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client().get(format!("{http}/readyz")).send().await.map_or(true, |r| !r.status().is_success()) {
            assert!(tokio::time::Instant::now() < deadline, "the relay did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (process, http)
    }

    /// Starts a worker allowed to reach loopback over http, quick to take over.
    pub(crate) fn worker(&self) -> Process {
        let settings = [
            "delivery.allow_http=true",
            r#"delivery.allowed_private_ranges=["127.0.0.0/8"]"#,
            "delivery.lease_secs=1",
            "delivery.poll_interval_ms=20",
            "delivery.feed_poll_interval_ms=20",
            "delivery.retry_schedule=1s,1s,1s,1s,1s,1s,1s,1s,1s,1s",
        ];
        Process(self.command("worker", &settings).spawn().expect("the binary starts"))
    }

    pub(crate) fn credentials(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.path().join("credentials.json")).unwrap())
            .unwrap()
    }
}

pub(crate) fn client() -> reqwest::Client {
    tributary_delivery::install_tls_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap()
}

/// What the receiver saw: for each event (`m<n>` for message `n`, `<kind> <channel>` for the
/// others), the `webhook-id` of every request that held it.
type Seen = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// A receiver that checks each signature and records the messages of each signed request.
async fn receiver(secret: Arc<Mutex<Option<WebhookSecret>>>, seen: Seen) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| async move {
            let header =
                |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let (id, timestamp) =
                (header("webhook-id"), header("webhook-timestamp").parse::<u64>().unwrap_or(0));
            let expected = secret.lock().unwrap().as_ref().map(|s| s.sign(&id, timestamp, &body));
            if expected.is_none_or(|expected| !header("webhook-signature").split(' ').any(|s| s == expected))
            {
                return StatusCode::UNAUTHORIZED;
            }
            let Ok(envelope) = serde_json::from_slice::<Value>(&body) else { return StatusCode::BAD_REQUEST };
            let mut seen = seen.lock().unwrap();
            for event in envelope["events"].as_array().into_iter().flatten() {
                let key = match event["message"]["data"]["n"].as_u64() {
                    Some(n) => format!("m{n}"),
                    None => format!(
                        "{} {}",
                        event["kind"].as_str().unwrap_or("?"),
                        event["channel"].as_str().unwrap_or("")
                    ),
                };
                seen.entry(key).or_default().push(id.clone());
            }
            StatusCode::NO_CONTENT
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Publishes message `n` to `channel` through the first relay that acknowledges it, retrying
/// (with the same idempotency key) until one does.
pub(crate) async fn publish(relays: &[String], api_key: &str, channel: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        for relay in relays {
            let sent = client()
                .post(format!("{relay}/v1/channels/{channel}/messages"))
                .bearer_auth(api_key)
                .header("Idempotency-Key", format!("m{n}"))
                .json(&json!({"data": {"n": n}}))
                .send()
                .await;
            if sent.is_ok_and(|reply| reply.status().is_success()) {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "message {n} was never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_deliver_every_acknowledged_message_across_kill_9_of_worker_relay_and_redis() {
    let mut redis = ThrowawayRedis::start_durable();
    let setup = Setup {
        dir: tempfile::tempdir().unwrap(),
        database: tributary_testkit::fresh_postgres_database().await,
        redis: redis.url(),
        key: MasterKey::generate(),
    };
    let (mut doomed_relay, first) = setup.relay().await;
    let (_relay, second) = setup.relay().await;
    let credentials = setup.credentials();
    let (tenant, app) = (credentials["tenant_id"].as_str().unwrap(), credentials["app_id"].as_str().unwrap());
    let operator = credentials["operator_token"].as_str().unwrap().to_owned();
    let api_key = credentials["api_key"].as_str().unwrap().to_owned();

    let seen: Seen = Arc::default();
    let secret: Arc<Mutex<Option<WebhookSecret>>> = Arc::default();
    let addr = receiver(secret.clone(), seen.clone()).await;
    let manage = |path: &str, body: Value| {
        client()
            .post(format!("{first}/v1/tenants/{tenant}/apps/{app}{path}"))
            .bearer_auth(&operator)
            .json(&body)
            .send()
    };
    // The relays refuse loopback URLs (their address rules are the defaults): the endpoint is
    // made in the store, as an operator who allows loopback would have it.
    let store = tributary_store::Store::open(&setup.database, &setup.key).await.unwrap();
    let new = tributary_store::NewWebhookEndpoint {
        url: format!("http://{addr}/hook"),
        description: "kill test".into(),
        headers: "{}".into(),
    };
    let (endpoint, key) =
        store.create_webhook_endpoint(&tributary_store::Actor::system(), tenant, app, &new).await.unwrap();
    *secret.lock().unwrap() = Some(WebhookSecret::from_bytes(key.expose_secret().to_vec()));
    let rule = json!({"channel_pattern": "orders:*", "events": ["message"], "webhook_id": endpoint.id, "batch_max": 20});
    let reply = manage("/rules", rule).await.unwrap();
    assert_eq!(reply.status().as_u16(), 201, "{}", reply.text().await.unwrap());
    let kinds = ["presence.join", "presence.leave", "channel.occupied", "channel.vacated"];
    let lifecycle =
        json!({"channel_pattern": "rooms:*", "events": kinds, "webhook_id": endpoint.id, "batch_max": 20});
    let reply = manage("/rules", lifecycle).await.unwrap();
    assert_eq!(reply.status().as_u16(), 201, "{}", reply.text().await.unwrap());

    // Clients of the relay that will be killed, each alone in its channel (so no other node
    // serves it) and in its presence.
    const ROOMS: usize = 10;
    let mut clients = Vec::new();
    for room in 0..ROOMS {
        let minted = client()
            .post(format!("{first}/v1/tokens"))
            .bearer_auth(&api_key)
            .json(&json!({"client_id": format!("c{room}"), "capabilities": [{"channel": "*", "allow": ["subscribe", "presence"]}]}))
            .send()
            .await
            .unwrap();
        let token = minted.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
        let ws = first.replace("http://", "ws://") + "/v1/connect";
        let (mut ws, reply) = tributary_testkit::WsClient::connect(&ws, &token).await.unwrap();
        assert!(reply.get("result").is_some(), "{reply}");
        let joined =
            ws.request(json!({"op": "subscribe", "channel": format!("rooms:{room}")})).await.unwrap();
        assert!(joined.get("result").is_some(), "{joined}");
        clients.push(ws);
    }

    let mut workers = vec![setup.worker(), setup.worker()];
    const MESSAGES: u64 = 600;
    let mut relays = vec![first.clone(), second.clone()];
    for n in 0..MESSAGES {
        match n {
            150 => {
                workers[0].kill();
                workers.push(setup.worker());
            }
            300 => {
                workers[1].kill();
                doomed_relay.kill();
                relays.remove(0);
            }
            450 => redis.restart(), // SIGKILL, then up again from its append-only file
            _ => {}
        }
        publish(&relays, &api_key, "orders:1", n).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    // Every message, and each room's four events: the leaves come by expiry, the vacancies once
    // the killed relay's lease ends (15 s).
    let mut expected: Vec<String> = (0..MESSAGES).map(|n| format!("m{n}")).collect();
    let lifecycle: Vec<String> =
        (0..ROOMS).flat_map(|room| kinds.map(|kind| format!("{kind} rooms:{room}"))).collect();
    expected.extend(lifecycle.iter().cloned());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let missing: Vec<String> = {
            let seen = seen.lock().unwrap();
            expected.iter().filter(|key| !seen.contains_key(*key)).cloned().collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} events never arrived: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(clients);
    let seen = seen.lock().unwrap().clone();
    let count = |keys: &[String]| {
        let delivered = keys.iter().filter(|key| seen.contains_key(*key)).count();
        let duplicated: usize = keys.iter().filter_map(|key| seen.get(key)).map(|ids| ids.len() - 1).sum();
        (delivered, duplicated)
    };
    let messages: Vec<String> = (0..MESSAGES).map(|n| format!("m{n}")).collect();
    let (delivered, duplicated) = count(&messages);
    println!(
        "published {MESSAGES} / delivered {delivered} / lost {} / duplicated {duplicated}",
        MESSAGES as usize - delivered
    );
    let (happened, happened_twice) = count(&lifecycle);
    println!(
        "presence and occupancy events {} / delivered {happened} / lost {} / duplicated {happened_twice}",
        lifecycle.len(),
        lifecycle.len() - happened
    );
    assert_eq!(delivered, MESSAGES as usize, "nothing acknowledged is lost");
    for (key, ids) in &seen {
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), 1, "{key} came in requests with different ids: {ids:?}");
    }
    for room in 0..ROOMS {
        let kinds_of_room = seen.keys().filter(|key| key.ends_with(&format!(" rooms:{room}"))).count();
        assert_eq!(kinds_of_room, 4, "room {room}: its four events, nothing else");
    }
}
