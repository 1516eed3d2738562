//! Rules through the management API and the server's own worker: an app's messages and
//! presence changes reach a local receiver, batched and enveloped or raw, signed; what no rule
//! matches does not; bad definitions are refused with the reason and change nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tributary_testkit::TestServer;

/// Calls the management API as the operator under the development app's path.
async fn call(server: &TestServer, method: &str, rest: &str, body: Option<Value>) -> (u16, Value) {
    let path = format!("/v1/tenants/{}/apps/{}{rest}", server.tenant_id(), server.app_id());
    server.manage(method, &path, server.operator_token(), body.as_ref()).await
}

/// What a receiver got: each request's headers and body.
pub(crate) type Requests = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A receiver on port 0 that records every request and answers 204.
pub(crate) async fn receiver() -> (std::net::SocketAddr, Requests) {
    let got: Requests = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| async move {
            seen.lock().unwrap().push((headers, body.to_vec()));
            StatusCode::NO_CONTENT
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, got)
}

async fn server() -> TestServer {
    TestServer::spawn_configured(|config| {
        config.delivery.allow_http = true;
        config.delivery.allowed_private_ranges = vec!["127.0.0.0/8".into()];
        config.delivery.poll_interval_ms = 20;
        config.delivery.feed_poll_interval_ms = 20;
    })
    .await
}

/// Makes an endpoint at `addr`; returns its id and its secret's bytes.
async fn endpoint(server: &TestServer, addr: std::net::SocketAddr) -> (String, Vec<u8>) {
    use base64::Engine as _;
    let (status, created) =
        call(server, "POST", "/webhooks", Some(json!({"url": format!("http://{addr}/hook")}))).await;
    assert_eq!(status, 201, "{created}");
    let secret = base64::engine::general_purpose::STANDARD
        .decode(created["secret"].as_str().unwrap().trim_start_matches("whsec_"))
        .unwrap();
    (created["id"].as_str().unwrap().to_owned(), secret)
}

/// Waits until `got` holds at least `n` requests.
async fn requests(got: &Requests, n: usize) -> Vec<(HeaderMap, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = got.lock().unwrap().clone();
        if now.len() >= n {
            return now;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of {n} requests arrived", now.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_apps_messages_and_presence_reach_its_endpoint_batched_enveloped_and_signed() {
    let server = server().await;
    let (addr, got) = receiver().await;
    let (webhook, secret) = endpoint(&server, addr).await;
    let rule = json!({
        "name": "orders",
        "channel_pattern": "orders:*",
        "events": ["message", "presence.join", "presence.leave"],
        "webhook_id": webhook,
        "batch_max": 5,
        "batch_ms": 200,
        "headers": {"x-source": "rules-test"},
    });
    let (status, created) = call(&server, "POST", "/rules", Some(rule)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["batch_max"].as_i64(), created["body"].as_str()), (Some(5), Some("enveloped")));

    for n in 0..12 {
        server.publish("orders:1", json!({"n": n})).await;
        server.publish("billing:1", json!({"n": n})).await;
    }
    let token = server.all_rights("alice").await;
    let mut ws = server.ws(&token).await;
    ws.request(json!({"op": "subscribe", "channel": "orders:1"})).await.unwrap();
    ws.request(json!({"op": "unsubscribe", "channel": "orders:1"})).await.unwrap();

    // 12 messages, a join and a leave: 14 events in requests of at most 5.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let events: Vec<Value> = loop {
        let bodies = got.lock().unwrap().clone();
        let events: Vec<Value> = bodies
            .iter()
            .flat_map(|(_, body)| {
                serde_json::from_slice::<Value>(body).unwrap()["events"].as_array().unwrap().clone()
            })
            .collect();
        if events.len() >= 14 {
            break events;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of 14 events arrived", events.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(events.len(), 14, "nothing twice, nothing of billing:1");
    let data: Vec<Value> =
        events.iter().filter(|e| e["kind"] == "message").map(|e| e["message"]["data"].clone()).collect();
    assert_eq!(data, (0..12).map(|n| json!({"n": n})).collect::<Vec<_>>(), "in order");
    assert_eq!(events[12]["kind"], "presence.join");
    assert_eq!(events[12]["member"]["client_id"], "alice");
    assert_eq!(events[13]["kind"], "presence.leave");

    let requests = got.lock().unwrap().clone();
    for (headers, body) in &requests {
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        let parsed: Value = serde_json::from_slice(body).unwrap();
        assert!(parsed["events"].as_array().unwrap().len() <= 5);
        assert_eq!(parsed["id"], header("webhook-id").as_str(), "the body names its request");
        assert_eq!(header("x-source"), "rules-test");
        assert_eq!(header("content-type"), "application/json");
        let expected = tributary_delivery::signature::WebhookSecret::from_bytes(secret.clone()).sign(
            &header("webhook-id"),
            header("webhook-timestamp").parse().unwrap(),
            body,
        );
        assert!(header("webhook-signature").split(' ').any(|s| s == expected));
    }
}

#[tokio::test]
async fn a_raw_rule_sends_the_payload_as_published_and_a_disabled_one_sends_nothing() {
    let server = server().await;
    let (addr, got) = receiver().await;
    let (webhook, _) = endpoint(&server, addr).await;
    let rule =
        json!({"channel_pattern": "sensors:*", "events": ["message"], "webhook_id": webhook, "body": "raw"});
    let (status, created) = call(&server, "POST", "/rules", Some(rule)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    server.publish("sensors:1", json!({"t": 21.5})).await;
    let first = requests(&got, 1).await;
    assert_eq!(first[0].1, br#"{"t":21.5}"#);

    let (status, disabled) = call(&server, "POST", &format!("/rules/{id}/disable"), None).await;
    assert_eq!((status, disabled["enabled"].as_bool()), (200, Some(false)));
    server.publish("sensors:1", json!({"t": 99})).await;
    let (status, _) = call(&server, "POST", &format!("/rules/{id}/enable"), None).await;
    assert_eq!(status, 200);
    server.publish("sensors:1", json!({"t": 22})).await;
    let now = requests(&got, 2).await;
    assert_eq!(now[1].1, br#"{"t":22}"#, "what was published while the rule was off is not sent");

    let (status, _) = call(&server, "DELETE", &format!("/rules/{id}"), None).await;
    assert_eq!(status, 204);
    let (_, listed) = call(&server, "GET", "/rules", None).await;
    assert_eq!(listed, json!([]));
}

#[tokio::test]
async fn bad_rules_are_refused_with_the_reason_and_nothing_is_made() {
    let server = server().await;
    let (addr, _) = receiver().await;
    let (webhook, _) = endpoint(&server, addr).await;
    // An endpoint of another app of the same tenant: not this app's to send to.
    let other = server.store().create_app(server.tenant_id(), "other").await.unwrap();
    let (status, foreign) = server
        .manage(
            "POST",
            &format!("/v1/tenants/{}/apps/{}/webhooks", server.tenant_id(), other.id),
            server.operator_token(),
            Some(&json!({"url": format!("http://{addr}/hook")})),
        )
        .await;
    assert_eq!(status, 201, "{foreign}");
    let good = json!({"channel_pattern": "orders:*", "events": ["message"], "webhook_id": webhook});
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let cases = [
        (with("channel_pattern", json!("orders:: *")), 400, "channel_pattern"),
        (with("events", json!([])), 400, "events"),
        (with("events", json!(["message", "channel.exploded"])), 400, "events"),
        (with("batch_max", json!(0)), 400, "batch_max"),
        (with("batch_max", json!(1001)), 400, "batch_max"),
        (with("batch_ms", json!(60_001)), 400, "batch_ms"),
        (with("body", json!("xml")), 400, "body"),
        (
            with("body", json!("raw"))
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("batch_max".into(), json!(10));
                    Value::Object(o)
                })
                .unwrap(),
            400,
            "raw body",
        ),
        (with("headers", json!({"webhook-id": "mine"})), 400, "webhook-id"),
        (with("webhook_id", json!("wh_nope")), 404, "not found"),
        (with("webhook_id", foreign["id"].clone()), 404, "not found"),
        (with("surprise", json!(1)), 400, "surprise"),
    ];
    for (body, expected, says) in cases {
        let (status, reply) = call(&server, "POST", "/rules", Some(body.clone())).await;
        assert_eq!(status, expected, "{body} → {reply}");
        assert!(reply.to_string().contains(says), "{body}: {reply} should say {says}");
    }
    let (_, listed) = call(&server, "GET", "/rules", None).await;
    assert_eq!(listed, json!([]), "nothing was made");
    let (status, created) = call(&server, "POST", "/rules", Some(good)).await;
    assert_eq!(status, 201, "the good one still goes in: {created}");
}

#[tokio::test]
async fn only_the_server_publishes_on_the_system_channel() {
    let server = server().await;
    let (status, reply) = server
        .post("/v1/channels/tributary:system/messages", &json!({"data": {"type": "webhook.disabled"}}), None)
        .await;
    assert_eq!(status, 403, "{reply}");
    assert_eq!(reply["error"]["name"], "forbidden");
    assert!(reply["error"]["message"].as_str().unwrap().contains("only the server publishes"), "{reply}");
    let token = server.all_rights("mallory").await;
    let mut ws = server.ws(&token).await;
    let refused =
        ws.request(json!({"op": "publish", "channel": "tributary:notices", "data": 1})).await.unwrap();
    assert_eq!(refused["error"]["name"], "forbidden", "{refused}");
    // Subscribing is allowed (a capability that names the channel), and the connection is fine.
    let subscribed = ws.request(json!({"op": "subscribe", "channel": "tributary:system"})).await.unwrap();
    assert!(subscribed.get("error").is_none(), "{subscribed}");
    let published = ws.request(json!({"op": "publish", "channel": "chat:1", "data": 2})).await.unwrap();
    assert!(published["result"]["offset"].as_u64().is_some(), "{published}");
}

#[tokio::test]
async fn webhooks_and_rules_through_graphql_are_typed_and_refused_the_same_way_as_rest() {
    let server = server().await;
    let (addr, _) = receiver().await;
    let gql = |query: &'static str, variables: Value| {
        let body = json!({"query": query, "variables": variables});
        let server = &server;
        async move { server.manage("POST", "/graphql", server.operator_token(), Some(&body)).await.1 }
    };
    let ids = json!({"t": server.tenant_id(), "a": server.app_id(), "url": format!("http://{addr}/hook")});
    let created = gql(
        "mutation($t: String!, $a: String!, $url: String!) { createWebhook(tenant: $t, app: $a, url: $url, \
         headers: [{name: \"x-team\", value: \"orders\"}]) { secret webhook { id url enabled headers { name value } } } }",
        ids.clone(),
    )
    .await;
    let webhook = &created["data"]["createWebhook"];
    assert!(webhook["secret"].as_str().unwrap().starts_with("whsec_"), "{created}");
    assert_eq!(webhook["webhook"]["headers"], json!([{"name": "x-team", "value": "orders"}]));
    let id = webhook["webhook"]["id"].as_str().unwrap().to_owned();

    let mut vars = ids.clone();
    vars["w"] = json!(id);
    let rule = gql(
        "mutation($t: String!, $a: String!, $w: String!) { createRule(tenant: $t, app: $a, rule: \
         {channelPattern: \"orders:*\", events: [\"message\"], webhookId: $w, batchMax: 10}) \
         { id channelPattern events batchMax body enabled } }",
        vars.clone(),
    )
    .await;
    let made = &rule["data"]["createRule"];
    assert_eq!(
        (made["channelPattern"].as_str(), made["batchMax"].as_i64(), made["body"].as_str()),
        (Some("orders:*"), Some(10), Some("enveloped")),
        "{rule}"
    );
    let refused = gql(
        "mutation($t: String!, $a: String!, $w: String!) { createRule(tenant: $t, app: $a, rule: \
         {channelPattern: \"orders:*\", events: [\"channel.exploded\"], webhookId: $w}) { id } }",
        vars.clone(),
    )
    .await;
    assert_eq!(refused["errors"][0]["extensions"]["name"], "invalid_parameter", "{refused}");
    let listed = gql("query($t: String!, $a: String!) { rules(tenant: $t, app: $a) { id } webhooks(tenant: $t, app: $a) { id } }", ids.clone()).await;
    assert_eq!(
        listed["data"]["rules"].as_array().unwrap().len(),
        1,
        "the refused one was not made: {listed}"
    );
    assert_eq!(listed["data"]["webhooks"][0]["id"], id.as_str());
    let mut delete = ids.clone();
    delete["r"] = made["id"].clone();
    let deleted = gql(
        "mutation($t: String!, $a: String!, $r: String!) { deleteRule(tenant: $t, app: $a, id: $r) }",
        delete,
    )
    .await;
    assert_eq!(deleted["data"]["deleteRule"], true, "{deleted}");
}

#[tokio::test]
async fn tributary_admin_manages_webhooks_and_rules() {
    use crate::management_api::admin;
    let server = server().await;
    let (addr, got) = receiver().await;
    let (tenant, app) = (server.tenant_id().to_owned(), server.app_id().to_owned());
    let url = format!("http://{addr}/hook");
    let (ok, out, err) =
        admin(&server, &["webhooks", "create", &tenant, &app, &url, "--header", "x-team=orders"]).await;
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let webhook = created["id"].as_str().unwrap().to_owned();
    let (ok, out, err) = admin(
        &server,
        &[
            "rules",
            "create",
            &tenant,
            &app,
            "--pattern",
            "orders:*",
            "--events",
            "message,presence.join",
            "--webhook",
            &webhook,
        ],
    )
    .await;
    assert!(ok, "{err}");
    let rule: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rule["events"], json!(["message", "presence.join"]));
    server.publish("orders:9", json!({"via": "admin"})).await;
    let arrived = requests(&got, 1).await;
    assert_eq!(arrived[0].0["x-team"], "orders");

    // A bad rule: the API's reason, a failing exit status, nothing made.
    let (ok, _, err) = admin(
        &server,
        &[
            "rules",
            "create",
            &tenant,
            &app,
            "--pattern",
            "orders:*",
            "--events",
            "nope",
            "--webhook",
            &webhook,
        ],
    )
    .await;
    assert!(!ok && err.contains("events"), "{err}");
    let (ok, out, _) = admin(&server, &["rules", "list", &tenant, &app]).await;
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().len(), 1);
    let (ok, out, _) = admin(&server, &["webhooks", "deliveries", &tenant, &app, &webhook]).await;
    assert!(ok && out.contains("delivered"), "{out}");
    let (ok, _, err) =
        admin(&server, &["rules", "delete", &tenant, &app, rule["id"].as_str().unwrap()]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = admin(&server, &["webhooks", "delete", &tenant, &app, &webhook]).await;
    assert!(ok, "{err}");
    let (_, out, _) = admin(&server, &["webhooks", "list", &tenant, &app]).await;
    assert_eq!(out.trim(), "[]");
}

#[tokio::test]
async fn a_clients_connection_and_its_end_reach_a_rule_that_asks_for_them() {
    let server = server().await;
    let (addr, got) = receiver().await;
    let (webhook, _) = endpoint(&server, addr).await;
    let rule = json!({"channel_pattern": "*", "events": ["client.connected", "client.disconnected"], "webhook_id": webhook});
    let (status, created) = call(&server, "POST", "/rules", Some(rule)).await;
    assert_eq!(status, 201, "{created}");
    let token = server.all_rights("carol").await;
    let ws = server.ws(&token).await;
    drop(ws);
    let arrived = requests(&got, 2).await;
    let events: Vec<Value> = arrived
        .iter()
        .map(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["events"][0].clone())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["client.connected", "client.disconnected"]);
    assert_eq!(events[0]["client"]["client_id"], "carol");
    assert_eq!(events[0]["client"]["conn_id"], events[1]["client"]["conn_id"], "the same connection");
    assert!(events[0].get("channel").is_none(), "a connection's event has no channel: {}", events[0]);
    // Messages are not what this rule asked for: a message published before another
    // connection's events is not among what arrives (the feed keeps their order).
    server.publish("chat:1", json!({"n": 1})).await;
    drop(server.ws(&token).await);
    let all = requests(&got, 4).await;
    let kinds: Vec<String> = all
        .iter()
        .map(|(_, body)| {
            serde_json::from_slice::<Value>(body).unwrap()["events"][0]["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["client.connected", "client.disconnected", "client.connected", "client.disconnected"]);
}

#[tokio::test]
async fn a_channel_occupied_and_vacated_is_sent_once_each_however_many_subscribe() {
    let server = server().await;
    let (addr, got) = receiver().await;
    let (webhook, _) = endpoint(&server, addr).await;
    let rule = json!({
        "channel_pattern": "rooms:*",
        "events": ["channel.occupied", "channel.vacated"],
        "webhook_id": webhook,
    });
    let (status, created) = call(&server, "POST", "/rules", Some(rule)).await;
    assert_eq!(status, 201, "{created}");

    let token = server.all_rights("alice").await;
    let (mut first, mut second) = (server.ws(&token).await, server.ws(&token).await);
    first.request(json!({"op": "subscribe", "channel": "rooms:1"})).await.unwrap();
    second.request(json!({"op": "subscribe", "channel": "rooms:1"})).await.unwrap();
    first.request(json!({"op": "subscribe", "channel": "lobby:1"})).await.unwrap();
    first.request(json!({"op": "unsubscribe", "channel": "rooms:1"})).await.unwrap();
    first.request(json!({"op": "unsubscribe", "channel": "lobby:1"})).await.unwrap();
    // The last subscriber's connection ends without unsubscribing.
    drop(second);

    let arrived = requests(&got, 2).await;
    let events: Vec<Value> = arrived
        .iter()
        .flat_map(|(_, body)| {
            serde_json::from_slice::<Value>(body).unwrap()["events"].as_array().unwrap().clone()
        })
        .collect();
    let seen: Vec<(&str, &str)> =
        events.iter().map(|e| (e["kind"].as_str().unwrap(), e["channel"].as_str().unwrap())).collect();
    assert_eq!(seen, [("channel.occupied", "rooms:1"), ("channel.vacated", "rooms:1")]);
    assert!(events.iter().all(|e| e.get("message").is_none() && e.get("member").is_none()));
    // Nothing else was written before the next occupation (lobby:1 is not the rule's, rooms:1
    // was occupied once): it is the third event.
    server.publish("rooms:1", json!({"n": 1})).await;
    first.request(json!({"op": "subscribe", "channel": "rooms:2"})).await.unwrap();
    let all = requests(&got, 3).await;
    let last: Value = serde_json::from_slice(&all[2].1).unwrap();
    assert_eq!(
        (last["events"][0]["kind"].as_str(), last["events"][0]["channel"].as_str()),
        (Some("channel.occupied"), Some("rooms:2"))
    );
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn deliveries_past_the_tenants_monthly_quota_are_dead_lettered_with_the_reason_and_replayable() {
    let server = server().await;
    let (addr, got) = receiver().await;
    let (webhook, _) = endpoint(&server, addr).await;
    let limits = format!("/v1/tenants/{}/limits", server.tenant_id());
    // The development tenant's plan (`unlimited`) allows overage: this one must not.
    let quota = json!({"max_webhook_events_per_month": 3, "overage_allowed": false});
    let (status, set) = server.manage("POST", &limits, server.operator_token(), Some(&quota)).await;
    assert_eq!((status, set["limits"]["max_webhook_events_per_month"].as_i64()), (200, Some(3)), "{set}");
    let rule =
        json!({"channel_pattern": "orders:*", "events": ["message"], "webhook_id": webhook, "batch_max": 1});
    assert_eq!(call(&server, "POST", "/rules", Some(rule)).await.0, 201);
    let mut system = server.ws(&server.all_rights("console").await).await;
    let subscribed = system.request(json!({"op": "subscribe", "channel": "tributary:system"})).await.unwrap();
    assert!(subscribed.get("error").is_none(), "{subscribed}");

    for n in 0..5 {
        server.publish("orders:1", json!({"n": n})).await;
    }
    // Three are delivered; the other two wait as dead letters that say why.
    let dead_letters = format!("/webhooks/{webhook}/dead-letters");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let (_, dead) = call(&server, "GET", &dead_letters, None).await;
        if dead.as_array().map_or(0, Vec::len) == 2 {
            break dead;
        }
        let (_, log) = call(&server, "GET", &format!("/webhooks/{webhook}/deliveries"), None).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters: {dead}; got {}; log {log}",
            got.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(got.lock().unwrap().len(), 3, "the quota's three events were sent, no more");
    let (_, log) = call(&server, "GET", &format!("/webhooks/{webhook}/deliveries"), None).await;
    let refused: Vec<&Value> = log.as_array().unwrap().iter().filter(|a| a["outcome"] == "dead").collect();
    assert_eq!(refused.len(), 2, "{log}");
    assert!(refused.iter().all(|a| a["response"] == tributary_delivery::quota::QUOTA_REASON), "{log}");
    let (_, shown) = call(&server, "GET", "/webhooks", None).await;
    assert_eq!(shown[0]["enabled"], true, "the endpoint is not blamed for the tenant's quota");
    // The tenant is told: once on the app's system channel, and in its audit log.
    let notice =
        tokio::time::timeout(Duration::from_secs(10), system.next_of("message")).await.unwrap().unwrap();
    assert_eq!(notice["data"]["type"], "webhook.quota_exceeded", "{notice}");
    assert_eq!(
        (notice["data"]["limit"].as_i64(), notice["data"]["app_id"].as_str()),
        (Some(3), Some(server.app_id()))
    );
    assert!(system.quiet_for(Duration::from_millis(300)).await, "told once, not once per refusal");
    let audit = format!("/v1/tenants/{}/audit-events", server.tenant_id());
    let (_, events) = server.manage("GET", &audit, server.operator_token(), None).await;
    let told: Vec<&Value> =
        events.as_array().unwrap().iter().filter(|e| e["action"] == "webhook.quota_exceeded").collect();
    assert_eq!(told.len(), 1, "{events}");
    assert_eq!(told[0]["actor"], "system");
    // A test event still goes through: it is no channel event.
    let (status, _) = call(&server, "POST", &format!("/webhooks/{webhook}/test"), None).await;
    assert_eq!(status, 202);
    let tested = requests(&got, 4).await;
    let body: Value = serde_json::from_slice(&tested[3].1).unwrap();
    assert_eq!(body["type"], "webhook.test", "{body}");
    got.lock().unwrap().pop();

    // The operator lifts the quota: the dead letters replay and everything arrives once.
    let lifted = json!({"max_webhook_events_per_month": 0});
    assert_eq!(server.manage("POST", &limits, server.operator_token(), Some(&lifted)).await.0, 200);
    let ids: Vec<String> =
        dead.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.lock().unwrap().len() < 5 {
        // A worker reads a tenant's quota once a second: a replay within it may be refused again.
        for id in &ids {
            call(&server, "POST", &format!("{dead_letters}/{id}/replay"), None).await;
        }
        assert!(tokio::time::Instant::now() < deadline, "the replayed deliveries never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut data: Vec<i64> = got
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, body)| {
            serde_json::from_slice::<Value>(body).unwrap()["events"].as_array().unwrap().clone()
        })
        .map(|e| e["message"]["data"]["n"].as_i64().unwrap())
        .collect();
    data.sort_unstable();
    assert_eq!(data, [0, 1, 2, 3, 4]);
}
