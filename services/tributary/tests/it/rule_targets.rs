//! Rules whose targets are texts or pushes, through the management API and the server's own
//! worker: a device leaving presence texts the on-call number, an order's message pushes to its
//! customer's phone, a runaway rule is stopped by the tenant's SMS rate (its texts
//! dead-lettered, not sent), and bad definitions are refused with the reason.

use std::time::Duration;

use serde_json::{Value, json};
use tributary_testkit::sms::TwilioFake;
use tributary_testkit::{TestServer, eventually};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token";

/// Calls the management API as the operator under the development app's path.
async fn call(server: &TestServer, method: &str, rest: &str, body: Option<Value>) -> (u16, Value) {
    let path = format!("/v1/tenants/{}/apps/{}{rest}", server.tenant_id(), server.app_id());
    server.manage(method, &path, server.operator_token(), body.as_ref()).await
}

async fn texting() -> (TestServer, TwilioFake) {
    let twilio = TwilioFake::start(ACCOUNT, TOKEN, None).await;
    let url = twilio.url.clone();
    let server = TestServer::spawn_configured(move |config| {
        config.delivery.twilio_url = url;
        config.delivery.poll_interval_ms = 20;
        config.delivery.feed_poll_interval_ms = 20;
    })
    .await;
    let body = json!({"account_sid": ACCOUNT, "secret": TOKEN, "from": "+15005550006"});
    assert_eq!(call(&server, "PUT", "/push-credentials/twilio", Some(body)).await.0, 200);
    (server, twilio)
}

#[tokio::test]
async fn a_device_leaving_presence_texts_the_on_call_number_once() {
    let (server, twilio) = texting().await;
    let rule = json!({
        "name": "device offline",
        "channel_pattern": "devices:*",
        "events": ["presence.leave"],
        "sms": {"to": ["+14155550100", "+14155550101"], "body": "{{member.client_id}} went offline ({{channel}})"},
    });
    let (status, created) = call(&server, "POST", "/rules", Some(rule)).await;
    assert_eq!((status, created["target"].as_str()), (201, Some("sms")), "{created}");
    assert_eq!(
        (created["webhook_id"].clone(), created["sms"]["to"][1].clone()),
        (Value::Null, json!("+14155550101"))
    );

    let mut sensor = server.ws(&server.all_rights("sensor-7").await).await;
    sensor.request(json!({"op": "subscribe", "channel": "devices:hall"})).await.unwrap();
    sensor.request(json!({"op": "unsubscribe", "channel": "devices:hall"})).await.unwrap();
    eventually("both numbers are texted", Duration::from_secs(10), || async { twilio.received().len() >= 2 })
        .await
        .unwrap();
    let mut got: Vec<(String, String)> = twilio.received().into_iter().map(|t| (t.to, t.body)).collect();
    got.sort();
    let body = "sensor-7 went offline (devices:hall)".to_owned();
    assert_eq!(got, [("+14155550100".to_owned(), body.clone()), ("+14155550101".to_owned(), body)]);
    // Recorded as the rule's texts.
    let listed: Value = server
        .http()
        .get(format!("{}/v1/sms", server.http_url()))
        .bearer_auth(server.api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let origins: Vec<&Value> = listed["items"].as_array().unwrap().iter().map(|t| &t["origin"]).collect();
    assert_eq!(origins, [&created["id"], &created["id"]], "{listed}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(twilio.received().len(), 2, "each once");
}

#[tokio::test]
async fn a_runaway_rule_is_stopped_by_the_tenants_sms_rate_and_its_texts_dead_lettered() {
    let (server, twilio) = texting().await;
    let limits = format!("/v1/tenants/{}/limits", server.tenant_id());
    let rate = json!({"max_sms_per_minute": 3});
    assert_eq!(server.manage("POST", &limits, server.operator_token(), Some(&rate)).await.0, 200);
    let rule = json!({"channel_pattern": "alerts:*", "events": ["message"],
                      "sms": {"to": ["+14155550100"], "body": "{{channel}}: {{message.data.temp}} °C"}});
    assert_eq!(call(&server, "POST", "/rules", Some(rule)).await.0, 201);
    let mut system = server.ws(&server.all_rights("console").await).await;
    system.request(json!({"op": "subscribe", "channel": "tributary:system"})).await.unwrap();
    const ALERTS: usize = 20;
    for n in 0..ALERTS {
        server.publish("alerts:boiler", json!({"temp": 90 + n})).await;
    }
    // Every alert is accounted for: sent, or dead-lettered by the rate (at most three a minute;
    // six if the minute turns meanwhile).
    let target = tributary_delivery::sms::job::target_id(server.app_id());
    let store = server.store();
    eventually("every text is sent or dead-lettered", Duration::from_secs(10), || async {
        let log = store.delivery_log(server.tenant_id(), &target, 100).await.unwrap();
        log.len() >= ALERTS
    })
    .await
    .unwrap();
    let log = store.delivery_log(server.tenant_id(), &target, 100).await.unwrap();
    let sent = log.iter().filter(|a| a.record.outcome == "delivered").count();
    let limited = log.iter().filter(|a| a.record.snippet.contains("SMS rate (3 a minute)")).count();
    assert!((3..=6).contains(&sent), "{sent} sent");
    assert_eq!((sent + limited, twilio.received().len()), (ALERTS, sent), "{log:?}");
    assert!(twilio.received()[0].body.starts_with("alerts:boiler: 9"), "{:?}", twilio.received()[0]);
    // The tenant is told on its system channel.
    let notice =
        tokio::time::timeout(Duration::from_secs(10), system.next_of("message")).await.unwrap().unwrap();
    assert_eq!(notice["data"]["type"], "sms.rate_limited", "{notice}");
}

#[tokio::test]
async fn bad_sms_and_push_rules_are_refused_with_the_reason() {
    let (server, _twilio) = texting().await;
    let base = json!({"channel_pattern": "alerts:*", "events": ["message"]});
    let with = |extra: Value| {
        let mut rule = base.clone();
        rule.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        rule
    };
    let cases = [
        (json!({}), "exactly one of webhook_id, sms and push"),
        (json!({"webhook_id": "wh_x", "sms": {"to": ["+14155550100"], "body": "x"}}), "exactly one"),
        (json!({"sms": {"to": ["4155550100"], "body": "x"}}), "E.164"),
        (json!({"sms": {"to": [], "body": "x"}}), "1 to 10 numbers"),
        (json!({"sms": {"to": ["+14155550100"], "body": ""}}), "sms.body"),
        (json!({"sms": {"to": ["+14155550100"], "body": "x"}, "batch_max": 5}), "batch_max must be 1"),
        (json!({"push": {"recipient": {}, "push": {"title": "x"}}}), "exactly one of device_id"),
        (
            json!({"push": {"recipient": {"channel": "a"}, "push": {"title": "x", "priority": "urgent"}}}),
            "priority",
        ),
        (
            json!({"push": {"recipient": {"channel": "a"}, "push": {"priority": "high"}}}),
            "no title, body or data",
        ),
    ];
    for (extra, says) in cases {
        let (status, answer) = call(&server, "POST", "/rules", Some(with(extra.clone()))).await;
        assert_eq!(status, 400, "{extra}: {answer}");
        assert!(answer.to_string().contains(says), "{extra}: {answer}");
    }
    let (_, rules) = call(&server, "GET", "/rules", None).await;
    assert_eq!(rules.as_array().map(Vec::len), Some(0), "nothing was stored: {rules}");
}

#[tokio::test]
async fn an_orders_message_pushes_to_its_customers_phone() {
    let (server, apns, _fcm, _web, _dir) = crate::push_delivery::setup().await;
    let rule = json!({
        "channel_pattern": "orders:*",
        "events": ["message"],
        "push": {"recipient": {"client_id": "{{message.data.customer}}"},
                 "push": {"title": "Order {{message.data.order}}", "body": "{{message.data.status}}",
                          "collapse_id": "order-{{message.data.order}}"}},
    });
    let (status, created) = call(&server, "POST", "/rules", Some(rule)).await;
    assert_eq!((status, created["target"].as_str()), (201, Some("push")), "{created}");
    let device = json!({"platform": "apns", "token": "a1".repeat(32), "client_id": "alice"});
    let registered = server
        .http()
        .post(format!("{}/v1/push/devices", server.http_url()))
        .bearer_auth(server.api_key())
        .json(&device)
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status().as_u16(), 200);

    server
        .publish("orders:42", json!({"customer": "alice", "order": 42, "status": "Your driver is here"}))
        .await;
    // A message for a customer without a device reaches nobody, and is not an error.
    server.publish("orders:43", json!({"customer": "bob", "order": 43, "status": "Packed"})).await;
    eventually("alice's phone gets the push", Duration::from_secs(10), || async {
        !apns.received().is_empty()
    })
    .await
    .unwrap();
    let got = &apns.received()[0];
    assert_eq!(got.payload["aps"]["alert"]["title"], "Order 42");
    assert_eq!(got.payload["aps"]["alert"]["body"], "Your driver is here");
    assert_eq!(got.collapse_id.as_deref(), Some("order-42"));
    let target = tributary_delivery::rule_targets::pushout_target(server.app_id());
    let store = server.store();
    eventually("both messages' pushes are queued", Duration::from_secs(10), || async {
        store.delivery_log(server.tenant_id(), &target, 10).await.unwrap().len() >= 2
    })
    .await
    .unwrap();
    let log = store.delivery_log(server.tenant_id(), &target, 10).await.unwrap();
    let mut snippets: Vec<&str> =
        log.iter().map(|a| a.record.snippet.rsplit(" queued to ").next().unwrap()).collect();
    snippets.sort_unstable();
    assert_eq!(snippets, ["0 devices", "1 devices"], "{log:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(apns.received().len(), 1, "once");
    // A rule's push is usage as the push it sends, not as a webhook (nor the webhook quota's).
    let now = tributary_delivery::worker::now_ms() / 1000;
    let range = (now - 7200, now + 3600);
    let points =
        store.usage(server.tenant_id(), None, range, tributary_store::Granularity::Hour).await.unwrap();
    let webhooks: i64 = points.iter().map(|p| p.webhook_requests + p.webhook_events).sum();
    assert_eq!((webhooks, points.iter().map(|p| p.push_deliveries).sum::<i64>()), (0, 1));
}
