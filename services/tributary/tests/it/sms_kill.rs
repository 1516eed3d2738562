//! Texts under `kill -9`: a relay process takes texts through the HTTP API (PostgreSQL store,
//! Redis engine) while separate worker processes send them to the Twilio fake, and the workers
//! are killed with SIGKILL mid-stream (Twilio answering slowly, so texts are in flight). Every text the relay acknowledged reaches Twilio; one sent
//! twice (a killed worker's, taken over after its lease) names the same text id both times (in
//! its status callback's URL), and every text ends `delivered` through the signed callbacks.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tributary_store::MasterKey;
use tributary_testkit::ThrowawayRedis;
use tributary_testkit::sms::TwilioFake;

use crate::push_kill::{Process, Relay, command};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_text_reaches_twilio_across_kill_9_of_workers() {
    let redis = ThrowawayRedis::start();
    let (dir, key) = (tempfile::tempdir().unwrap(), MasterKey::generate());
    let database = tributary_testkit::fresh_postgres_database().await;
    let twilio = TwilioFake::start(ACCOUNT, TOKEN, None).await;
    // Every answer takes 30 ms: a worker killed is killed with texts in flight, some taken by
    // Twilio and not yet recorded, some not yet taken.
    twilio.answer_after(Duration::from_millis(30));

    let public_url = ["delivery.public_url={http}".to_owned()];
    let relay = Relay::start(dir.path(), &database, &redis.url(), &key, &public_url).await;
    let (http, client, credentials) = (&relay.http, &relay.client, &relay.credentials);
    let (tenant, app) = (credentials["tenant_id"].as_str().unwrap(), credentials["app_id"].as_str().unwrap());
    let (operator, api_key) =
        (credentials["operator_token"].as_str().unwrap(), credentials["api_key"].as_str().unwrap());
    let set = client
        .put(format!("{http}/v1/tenants/{tenant}/apps/{app}/push-credentials/twilio"))
        .bearer_auth(operator)
        .json(&json!({"account_sid": ACCOUNT, "secret": TOKEN, "messaging_service_sid": format!("MG{}", "0".repeat(32))}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status().as_u16(), 200, "{}", set.text().await.unwrap());

    let worker_settings = [
        format!("delivery.twilio_url={}", twilio.url),
        format!("delivery.public_url={http}"),
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
    const TEXTS: usize = 300;
    let mut workers = vec![worker(), worker()];
    let mut ids = HashMap::new();
    for n in 0..TEXTS {
        match n {
            100 => {
                drop(workers.remove(0)); // SIGKILL
                workers.push(worker());
            }
            200 => {
                drop(workers.remove(0));
                workers.push(worker());
            }
            _ => {}
        }
        let reply = client
            .post(format!("{http}/v1/sms"))
            .bearer_auth(api_key)
            .header("idempotency-key", format!("t{n}"))
            .json(&json!({"to": format!("+1415555{n:04}"), "body": format!("text {n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 202, "text {n}");
        let queued: Value = reply.json().await.unwrap();
        ids.insert(format!("text {n}"), queued["sms_id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let by_text = loop {
        let mut by_text: HashMap<String, Vec<Option<String>>> = HashMap::new();
        for received in twilio.received() {
            by_text.entry(received.body.clone()).or_default().push(received.status_callback.clone());
        }
        if by_text.len() == TEXTS {
            break by_text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} texts never reached Twilio",
            TEXTS - by_text.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let duplicated: usize = by_text.values().map(|copies| copies.len() - 1).sum();
    println!(
        "texts: published {TEXTS} / delivered {} / lost {} / duplicated {duplicated}",
        by_text.len(),
        TEXTS - by_text.len()
    );
    for (body, callbacks) in &by_text {
        let id = &ids[body];
        for callback in callbacks {
            let callback = callback.as_deref().unwrap_or_default();
            assert!(callback.ends_with(&format!("/v1/sms/status/{app}/{id}")), "{body}: {callback}");
        }
    }
    // Twilio's signed callbacks reach the relay: every text ends delivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut pending = 0;
        let mut before = String::new();
        loop {
            let cursor = if before.is_empty() { String::new() } else { format!("&before={before}") };
            let page: Value = client
                .get(format!("{http}/v1/sms?limit=100{cursor}"))
                .bearer_auth(api_key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let items = page["items"].as_array().unwrap();
            pending += items.iter().filter(|t| t["status"] != "delivered").count();
            match page["next_before"].as_str() {
                Some(next) => before = next.to_owned(),
                None => break,
            }
        }
        if pending == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{pending} texts are not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(workers);
}
