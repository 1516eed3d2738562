//! Billing driven by Stripe's signed webhooks (docs/billing.md), end to end over HTTP and
//! WebSocket: a checkout links a customer to its tenant; a failed payment makes it past due
//! (still served); Stripe giving up cuts it off — every connection closed with 3505 within a
//! second, requests refused with 402 `payment_required` — and a paid invoice lets it back at
//! once. Events delivered twice are applied once, an older event arriving late changes nothing,
//! and forged, stale, replayed or unsigned requests are refused and change nothing.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::time::Instant;
use tributary_testkit::TestServer;

const SECRET: &str = "whsec_test_secret";

async fn billed_server() -> TestServer {
    TestServer::spawn_configured(|config| {
        config.billing.stripe_webhook_secret = Some(SecretString::from(SECRET));
    })
    .await
}

fn now() -> i64 {
    tributary_store::unix_now_secs()
}

/// Posts `event` as Stripe does, signed at `at` with `secret`.
async fn deliver(node: &TestServer, event: &Value, secret: &str, at: i64) -> (u16, Value) {
    let body = event.to_string();
    let signature = tributary_billing::signature::sign(secret.as_bytes(), at, body.as_bytes());
    post(node, body, Some(format!("t={at},v1={signature}"))).await
}

async fn post(node: &TestServer, body: String, signature: Option<String>) -> (u16, Value) {
    let mut request = node
        .http()
        .post(format!("{}/v1/billing/stripe/webhook", node.http_url()))
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": kind, "created": created, "data": {"object": object}})
}

async fn tenant_status(node: &TestServer) -> String {
    let path = format!("/v1/tenants/{}", node.tenant_id());
    node.manage("GET", &path, node.operator_token(), None).await.1["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_tenant_that_stops_paying_is_cut_off_within_a_second_and_let_back_when_it_pays() {
    let node = billed_server().await;
    let tenant = node.tenant_id().to_owned();
    let t = now();
    let checkout = event(
        "evt_checkout",
        "checkout.session.completed",
        t - 100,
        json!({"id": "cs_1", "customer": "cus_1", "subscription": "sub_1", "client_reference_id": tenant}),
    );
    let (status, reply) = deliver(&node, &checkout, SECRET, t).await;
    assert_eq!((status, reply["outcome"].as_str()), (200, Some("applied")), "{reply}");

    // The tenant's system channel tells it (and its rules on that channel) what billing did.
    let mut watcher = node.ws(&node.token("console", &[("tributary:system", &["subscribe"])]).await).await;
    watcher.request(json!({"op": "subscribe", "channel": "tributary:system"})).await.unwrap();
    // A failed payment: past due, still served.
    let failed = event(
        "evt_failed",
        "invoice.payment_failed",
        t - 90,
        json!({"customer": "cus_1", "subscription": "sub_1"}),
    );
    let (status, reply) = deliver(&node, &failed, SECRET, t).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("past_due")), "{reply}");
    let notice = watcher.next_of("message").await.unwrap();
    assert_eq!(
        (notice["data"]["type"].as_str(), notice["data"]["status"].as_str()),
        (Some("billing.payment_failed"), Some("past_due")),
        "{notice}"
    );
    assert_eq!(notice["data"]["stripe_event"], "evt_failed");
    // The tenant's billing, as its admins (and the operator) read it.
    let billing =
        node.manage("GET", &format!("/v1/tenants/{tenant}/billing"), node.operator_token(), None).await.1;
    assert_eq!(
        (billing["status"].as_str(), billing["customer_id"].as_str()),
        (Some("past_due"), Some("cus_1")),
        "{billing}"
    );
    assert_eq!(billing["subscription_id"], "sub_1");
    assert_eq!(billing["grace_ends_at"].as_i64(), Some(t - 90 + 7 * 24 * 3600), "{billing}");
    assert_eq!(billing["events"][0]["id"], "evt_failed", "newest first: {billing}");
    let (other, other_owner) = crate::management_api::tenant_with_owner(&node, "Other").await;
    let (status, _) = node.manage("GET", &format!("/v1/tenants/{tenant}/billing"), &other_owner, None).await;
    assert!(matches!(status, 403 | 404), "{other} reads nothing of ours: {status}");
    let mut clients = Vec::new();
    for n in 0..20 {
        let mut ws = node.ws(&node.all_rights(&format!("c{n}")).await).await;
        ws.request(json!({"op": "subscribe", "channel": "chat:lobby"})).await.unwrap();
        clients.push(ws);
    }
    assert_eq!(node.post("/v1/channels/chat:lobby/messages", &json!({"data": 1}), None).await.0, 200);

    // Stripe gives up: cut off. Every connection closed with the suspension code, the last
    // within a second of the answer; requests refused with 402.
    let unpaid = event(
        "evt_unpaid",
        "customer.subscription.updated",
        t - 80,
        json!({"id": "sub_1", "customer": "cus_1", "status": "unpaid"}),
    );
    let started = Instant::now();
    let (status, reply) = deliver(&node, &unpaid, SECRET, t).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("unpaid")), "{reply}");
    for ws in &mut clients {
        assert_eq!(ws.closed().await.unwrap().0, 3505);
    }
    let last_closed = started.elapsed();
    println!("billing cut-off: 20 connections closed, the last {last_closed:?} after the event");
    assert!(last_closed < Duration::from_secs(1), "{last_closed:?}");
    let (status, refused) = node.post("/v1/channels/chat:lobby/messages", &json!({"data": 2}), None).await;
    assert_eq!((status, refused["error"]["name"].as_str()), (402, Some("payment_required")), "{refused}");
    assert_eq!(tenant_status(&node).await, "unpaid");

    // The same event again, and an older one arriving late: nothing changes.
    let (status, reply) = deliver(&node, &unpaid, SECRET, t).await;
    assert_eq!((status, reply["outcome"].as_str()), (200, Some("duplicate")), "{reply}");
    let late = event(
        "evt_late",
        "customer.subscription.updated",
        t - 85,
        json!({"id": "sub_1", "customer": "cus_1", "status": "active"}),
    );
    let (status, reply) = deliver(&node, &late, SECRET, t).await;
    assert_eq!(
        (status, reply["status"].clone()),
        (200, Value::Null),
        "an older event undoes nothing: {reply}"
    );
    assert_eq!(tenant_status(&node).await, "unpaid");

    // Paid: back at once.
    let paid =
        event("evt_paid", "invoice.paid", t - 70, json!({"customer": "cus_1", "subscription": "sub_1"}));
    let (status, reply) = deliver(&node, &paid, SECRET, t).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("active")), "{reply}");
    assert_eq!(node.post("/v1/channels/chat:lobby/messages", &json!({"data": 3}), None).await.0, 200);
    let mut ws = node.ws(&node.all_rights("back").await).await;
    assert!(
        ws.request(json!({"op": "subscribe", "channel": "chat:lobby"}))
            .await
            .unwrap()
            .get("result")
            .is_some()
    );

    // Every transition is on the tenant's audit events.
    let path = format!("/v1/tenants/{tenant}/audit-events?limit=50");
    let events = node.manage("GET", &path, node.operator_token(), None).await.1;
    let actions: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for action in [
        "billing.checkout_completed",
        "billing.payment_failed",
        "tenant.status.past_due",
        "tenant.status.unpaid",
        "billing.invoice_paid",
        "tenant.status.active",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[tokio::test]
async fn forged_stale_replayed_and_unsigned_webhooks_are_refused_and_change_nothing() {
    let node = billed_server().await;
    let t = now();
    let tenant = node.tenant_id().to_owned();
    let checkout = event(
        "evt_c",
        "checkout.session.completed",
        t,
        json!({"customer": "cus_9", "subscription": "sub_9", "client_reference_id": tenant}),
    );
    assert_eq!(deliver(&node, &checkout, SECRET, t).await.0, 200);
    let cut_off =
        event("evt_x", "customer.subscription.deleted", t + 1, json!({"id": "sub_9", "customer": "cus_9"}));
    let body = cut_off.to_string();
    let good = tributary_billing::signature::sign(SECRET.as_bytes(), t, body.as_bytes());
    let cases = [
        ("unsigned", None),
        ("malformed", Some("v1=abc".to_owned())),
        (
            "another secret",
            Some(format!(
                "t={t},v1={}",
                tributary_billing::signature::sign(b"whsec_other", t, body.as_bytes())
            )),
        ),
        (
            "stale (a replay)",
            Some(format!(
                "t={},v1={}",
                t - 3600,
                tributary_billing::signature::sign(SECRET.as_bytes(), t - 3600, body.as_bytes())
            )),
        ),
        ("signed for another body", Some(format!("t={t},v1={good}x"))),
    ];
    for (what, signature) in cases {
        let (status, reply) = post(&node, body.clone(), signature).await;
        assert_eq!((status, reply["error"]["name"].as_str()), (401, Some("unauthorized")), "{what}: {reply}");
    }
    assert_eq!(tenant_status(&node).await, "active", "nothing changed");
    // Signed, but not an event; an event about a customer nobody knows; an event of no interest.
    let (status, reply) = deliver(&node, &json!({"hello": "world"}), SECRET, t).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (400, Some("invalid_parameter")), "{reply}");
    let stranger = event("evt_s", "invoice.payment_failed", t, json!({"customer": "cus_unknown"}));
    assert_eq!(deliver(&node, &stranger, SECRET, t).await.1["outcome"], "unknown_customer");
    let other = event("evt_o", "charge.refunded", t, json!({"customer": "cus_9"}));
    assert_eq!(deliver(&node, &other, SECRET, t).await.1["outcome"], "ignored");
    assert_eq!(tenant_status(&node).await, "active");
    // A buyer naming this tenant in another checkout takes nothing over.
    let hijack = event(
        "evt_h",
        "checkout.session.completed",
        t + 2,
        json!({"customer": "cus_attacker", "subscription": "sub_a", "client_reference_id": tenant}),
    );
    assert_eq!(deliver(&node, &hijack, SECRET, t).await.1["outcome"], "conflict");
    let cancel = event(
        "evt_k",
        "customer.subscription.deleted",
        t + 3,
        json!({"id": "sub_a", "customer": "cus_attacker"}),
    );
    assert_eq!(deliver(&node, &cancel, SECRET, t).await.1["outcome"], "unknown_customer");
    assert_eq!(tenant_status(&node).await, "active");
    // An operator's suspension is never lifted by billing.
    let path = format!("/v1/tenants/{tenant}/status");
    node.manage("POST", &path, node.operator_token(), Some(&json!({"status": "suspended"}))).await;
    let paid = event("evt_p", "invoice.paid", t + 5, json!({"customer": "cus_9", "subscription": "sub_9"}));
    assert_eq!(deliver(&node, &paid, SECRET, t).await.0, 200);
    assert_eq!(tenant_status(&node).await, "suspended");
}

#[tokio::test]
async fn without_a_webhook_secret_billing_is_off() {
    let node = TestServer::spawn().await;
    let t = now();
    let paid = event("evt_p", "invoice.paid", t, json!({"customer": "cus_1"}));
    let (status, reply) = deliver(&node, &paid, SECRET, t).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (404, Some("not_found")), "{reply}");
}

#[tokio::test]
async fn a_subscriptions_price_puts_its_tenant_on_that_plan_and_its_limits_apply_at_once() {
    let node = TestServer::spawn_configured(|config| {
        config.billing.stripe_webhook_secret = Some(SecretString::from(SECRET));
        config.billing.plan_prices = [("free".to_owned(), "price_free".to_owned())].into_iter().collect();
    })
    .await;
    let (t, tenant) = (now(), node.tenant_id().to_owned());
    let checkout = event(
        "evt_c",
        "checkout.session.completed",
        t,
        json!({"customer": "cus_p", "subscription": "sub_p", "client_reference_id": tenant}),
    );
    assert_eq!(deliver(&node, &checkout, SECRET, t).await.0, 200);
    // On the unlimited plan, a burst of publishes all go through.
    assert_eq!(burst(&node, 150).await, None);
    // The subscription moves to the free plan's price (50 publishes a second): the tenant is on
    // it, and its limit applies to the very next burst.
    let updated = event(
        "evt_u",
        "customer.subscription.updated",
        t + 1,
        json!({"id": "sub_p", "customer": "cus_p", "status": "active",
               "items": {"data": [{"price": {"id": "price_free"}}]}}),
    );
    let (status, reply) = deliver(&node, &updated, SECRET, t).await;
    assert_eq!((status, reply["plan"].as_str()), (200, Some("free")), "{reply}");
    assert_eq!(burst(&node, 150).await, Some((429, "rate_limited".to_owned())));
    let shown = node.manage("GET", &format!("/v1/tenants/{tenant}"), node.operator_token(), None).await.1;
    assert_eq!(shown["plan"], "free", "{shown}");
}

/// Publishes `n` messages as fast as it can; the first refusal's status and error name, if any.
async fn burst(node: &TestServer, n: usize) -> Option<(u16, String)> {
    for i in 0..n {
        let (status, reply) = node.post("/v1/channels/feed:1/messages", &json!({"data": i}), None).await;
        if status != 200 {
            return Some((status, reply["error"]["name"].as_str().unwrap_or_default().to_owned()));
        }
    }
    None
}

#[tokio::test]
async fn a_thousand_connections_on_two_nodes_are_all_closed_within_a_second_of_the_cut_off() {
    let redis = std::env::var("TRIBUTARY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let database = tributary_testkit::fresh_postgres_database().await;
    let nodes = TestServer::spawn_nodes_on_database(&database, &redis, 2, |config| {
        config.billing.stripe_webhook_secret = Some(SecretString::from(SECRET));
    })
    .await;
    let (first, t) = (&nodes[0], now());
    let tenant = first.tenant_id().to_owned();
    let checkout = event(
        "evt_c",
        "checkout.session.completed",
        t,
        json!({"customer": "cus_f", "subscription": "sub_f", "client_reference_id": tenant}),
    );
    assert_eq!(deliver(first, &checkout, SECRET, t).await.0, 200);
    let token = first.all_rights("fleet").await;
    let mut clients = Vec::with_capacity(1000);
    for n in 0..1000 {
        clients.push(nodes[n % 2].ws(&token).await);
    }
    // Stripe gives up on the subscription: every one of the 1,000 connections, on both nodes,
    // is closed with 3505; the last one within a second of the event being sent.
    let unpaid = event(
        "evt_u",
        "customer.subscription.updated",
        t + 1,
        json!({"id": "sub_f", "customer": "cus_f", "status": "unpaid"}),
    );
    let started = Instant::now();
    let (status, reply) = deliver(first, &unpaid, SECRET, t).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("unpaid")), "{reply}");
    let closed = futures::future::join_all(clients.iter_mut().map(|ws| ws.closed())).await;
    let last = started.elapsed();
    println!(
        "billing cut-off: 1,000 connections on 2 nodes (Redis), the last closed {last:?} after the event was sent"
    );
    assert!(closed.iter().all(|c| c.as_ref().is_ok_and(|(code, _)| *code == 3505)), "every one with 3505");
    assert!(last < Duration::from_secs(1), "the last closed after {last:?}");
    tributary_testkit::drop_postgres_database(&database).await;
}
