//! The feed router against a real engine feed and the real queue (SQLite and PostgreSQL): the
//! rules' requests are queued once each, in order, with their batches and bodies, also when two
//! workers route the same app at once; what no rule matches is not queued.

// Test code: a failed step must panic the test.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tributary_delivery::router::{Router, RouterConfig};
use tributary_engine::{
    ChannelKey, Engine, MemoryEngine, MemoryEngineConfig, NewMessage, PublishOptions, StreamOptions,
};
use tributary_protocol::frame::MemberInfo;
use tributary_protocol::{ChannelName, Payload};
use tributary_store::{Actor, NewRule, NewWebhookEndpoint, Store};

mod common;
use common::stores;

fn rule(target: &str, pattern: &str, events: &[&str], batch_max: i64, body: &str) -> NewRule {
    NewRule {
        name: pattern.into(),
        channel_pattern: pattern.into(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        target_id: target.into(),
        target_kind: "webhook".into(),
        target_spec: "{}".into(),
        batch_max,
        batch_ms: 0,
        body: body.into(),
        headers: "{}".into(),
    }
}

fn router(store: &Store, engine: &Arc<dyn Engine>, owner: &str) -> Router {
    let config = RouterConfig {
        owner: owner.into(),
        page: 7,
        poll_interval: Duration::from_millis(5),
        ..RouterConfig::default()
    };
    Router::new(store.clone(), engine.clone(), config)
}

async fn publish(engine: &Arc<dyn Engine>, key: &ChannelKey, n: u64) {
    let message = NewMessage {
        payload: Payload::Json(Bytes::from(format!("{{\"n\":{n}}}"))),
        client_id: None,
        encoding: None,
        meta: None,
    };
    let options = PublishOptions {
        stream: StreamOptions { history_size: 0, history_ttl: Duration::from_secs(60) },
        idempotency_key: None,
        idempotency_window: Duration::from_secs(60),
    };
    engine.publish(key, message, &options).await.unwrap();
}

#[tokio::test]
async fn the_rules_requests_are_queued_once_each_in_order_by_two_routers_at_once() {
    for (store, _dir) in stores().await {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new(MemoryEngineConfig::default()));
        let tenant = store.create_tenant("Acme").await.unwrap();
        let app = store.create_app(&tenant.id, "prod").await.unwrap();
        let new = NewWebhookEndpoint {
            url: "https://example.com/hook".into(),
            description: String::new(),
            headers: "{}".into(),
        };
        let (endpoint, _) =
            store.create_webhook_endpoint(&Actor::system(), &tenant.id, &app.id, &new).await.unwrap();
        let each = rule(&endpoint.id, "orders:*", &["message"], 1, "raw");
        let batched = rule(&endpoint.id, "orders:*", &["message", "presence.join"], 10, "enveloped");
        store.create_rule(&Actor::system(), &tenant.id, &app.id, &each).await.unwrap();
        store.create_rule(&Actor::system(), &tenant.id, &app.id, &batched).await.unwrap();
        engine.feed_enable(&app.id).await.unwrap();

        let orders = ChannelKey::new(app.id.clone(), ChannelName::parse("orders:1").unwrap());
        let other = ChannelKey::new(app.id.clone(), ChannelName::parse("audit:1").unwrap());
        for n in 1..=25 {
            publish(&engine, &orders, n).await;
            publish(&engine, &other, n).await;
        }
        let member = MemberInfo { client_id: Arc::from("alice"), conn_id: Arc::from("c1"), state: None };
        let presence = tributary_engine::PresenceOptions { ttl: Duration::from_secs(60), announce: false };
        engine.presence_join(&orders, member, presence).await.unwrap();

        // Two workers at once, several passes each: the feed is each one's in turn.
        let (a, b) = (router(&store, &engine, "w1"), router(&store, &engine, "w2"));
        for _ in 0..4 {
            let (x, y) = tokio::join!(a.run_once(), b.run_once());
            x.unwrap();
            y.unwrap();
        }
        let now = tributary_delivery::worker::now_ms();
        let jobs = store.claim_deliveries("check", now, now + 60_000, 1_000, 1_000, "").await.unwrap();
        assert_eq!(a.stats().entries + b.stats().entries, 51, "every entry read once: 25 + 25 + 1");
        assert_eq!(jobs.iter().map(|j| &j.event_id).collect::<HashSet<_>>().len(), jobs.len());

        let raw: Vec<String> = jobs
            .iter()
            .filter(|j| !j.payload.starts_with(b"{\"id\""))
            .map(|j| String::from_utf8(j.payload.clone()).unwrap())
            .collect();
        let mut expected: Vec<String> = (1..=25).map(|n| format!("{{\"n\":{n}}}")).collect();
        let mut sorted = raw.clone();
        sorted.sort();
        expected.sort();
        assert_eq!(sorted, expected, "each orders message once, as published");

        let mut batches: Vec<serde_json::Value> = jobs
            .iter()
            .filter(|j| j.payload.starts_with(b"{\"id\""))
            .map(|j| serde_json::from_slice(&j.payload).unwrap())
            .collect();
        batches.sort_by_key(|b| b["events"][0]["message"]["offset"].as_u64().unwrap_or(u64::MAX));
        assert!(batches.len() >= 3);
        // Requests hold up to 10 events of one read of the feed (reads of 7 entries here).
        assert!(batches.iter().all(|b| (1..=10).contains(&b["events"].as_array().unwrap().len())));
        let events: Vec<serde_json::Value> =
            batches.iter().flat_map(|b| b["events"].as_array().unwrap().clone()).collect();
        assert_eq!(events.len(), 26, "every orders event once");
        let offsets: Vec<u64> = events.iter().filter_map(|e| e["message"]["offset"].as_u64()).collect();
        assert_eq!(offsets, (1..=25).collect::<Vec<_>>(), "in the channel's order");
        let last = events.last().unwrap();
        assert_eq!(
            (last["kind"].as_str(), last["member"]["client_id"].as_str()),
            (Some("presence.join"), Some("alice"))
        );
        assert_eq!(raw.len() + batches.len(), jobs.len(), "nothing else was queued");
    }
}
