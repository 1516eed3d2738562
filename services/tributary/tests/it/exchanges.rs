//! Exchanges between two tenants (docs/exchanges.md), end to end over real sockets: offered,
//! accepted, messages both ways within the offered rights (and one outside them refused, with
//! nothing stored), suspended (connections closed with 3507 within a second, new uses refused),
//! resumed only by the side that suspended, the exchange's log exported and verified by each
//! side, ended. Isolation: the partner's credentials reach nothing of the offering tenant beyond
//! the namespace, and a third tenant sees nothing of the exchange.

use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Value, json};
use tributary_testkit::{OtherApp, TestServer, WsClient, eventually};

use crate::management_api::{app_with_key, tenant_with_owner};

/// The offering tenant (the server's own), a partner tenant with an app, and an offer of
/// namespace `orders` made to it.
pub(crate) struct Parties {
    pub(crate) node: TestServer,
    pub(crate) partner: String,
    pub(crate) partner_token: String,
    pub(crate) partner_app: OtherApp,
    pub(crate) exchange: String,
}

impl Parties {
    /// Offers `orders` with `partner_rights` (the offering side gets every right).
    pub(crate) async fn offered(partner_rights: &[&str]) -> Self {
        Self::offered_on(TestServer::spawn().await, partner_rights).await
    }

    /// Offers `orders` of `node`'s app with `partner_rights`.
    pub(crate) async fn offered_on(node: TestServer, partner_rights: &[&str]) -> Self {
        let (partner, partner_token) = tenant_with_owner(&node, "Logistics").await;
        let (app, _, api_key) = app_with_key(&node, &partner, &partner_token, "tracking").await;
        let partner_app = OtherApp { app_id: app["id"].as_str().expect("app id").to_owned(), api_key };
        let offer = json!({
            "app_id": node.app_id(), "namespace": "orders", "partner_tenant_id": partner,
            "offerer_rights": ["publish", "subscribe", "presence", "history"], "partner_rights": partner_rights,
        });
        let path = format!("/v1/tenants/{}/exchanges", node.tenant_id());
        let (status, offered) = node.manage("POST", &path, node.operator_token(), Some(&offer)).await;
        assert_eq!(status, 201, "{offered}");
        assert_eq!(
            (offered["status"].as_str(), offered["side"].as_str()),
            (Some("offered"), Some("offerer"))
        );
        let exchange = offered["id"].as_str().expect("exchange id").to_owned();
        Self { node, partner, partner_token, partner_app, exchange }
    }

    /// Offers and accepts.
    pub(crate) async fn active(partner_rights: &[&str]) -> Self {
        Self::accepted(Self::offered(partner_rights).await).await
    }

    /// Accepts the offer into the partner's app.
    pub(crate) async fn accepted(parties: Self) -> Self {
        let (status, accepted) =
            parties.partner_change("accept", Some(&json!({"app_id": parties.partner_app.app_id}))).await;
        assert_eq!(status, 200, "{accepted}");
        assert_eq!(accepted["status"], "active");
        parties
    }

    pub(crate) fn offerer_path(&self, rest: &str) -> String {
        format!("/v1/tenants/{}/exchanges/{}{rest}", self.node.tenant_id(), self.exchange)
    }

    pub(crate) fn partner_path(&self, rest: &str) -> String {
        format!("/v1/tenants/{}/exchanges/{}{rest}", self.partner, self.exchange)
    }

    pub(crate) async fn partner_change(&self, action: &str, body: Option<&Value>) -> (u16, Value) {
        self.node.manage("POST", &self.partner_path(&format!("/{action}")), &self.partner_token, body).await
    }

    pub(crate) async fn offerer_change(&self, action: &str) -> (u16, Value) {
        self.node
            .manage("POST", &self.offerer_path(&format!("/{action}")), self.node.operator_token(), None)
            .await
    }

    /// A client of the partner's app with every right on `orders:*` and `chat:*` of its app.
    pub(crate) async fn partner_client(&self, client: &str) -> WsClient {
        let all: &[&str] = &["publish", "subscribe", "presence", "history"];
        let token =
            self.node.token_for(&self.partner_app, client, &[("orders:*", all), ("chat:*", all)]).await;
        self.node.ws(&token).await
    }

    /// A client of the offering app with every right.
    pub(crate) async fn offerer_client(&self, client: &str) -> WsClient {
        self.node.ws(&self.node.all_rights(client).await).await
    }
}

fn error_name(reply: &Value) -> Option<&str> {
    reply["error"]["name"].as_str()
}

#[tokio::test]
async fn two_tenants_exchange_messages_both_ways_within_the_offered_rights() {
    let parties = Parties::active(&["publish", "subscribe", "history"]).await;
    let node = &parties.node;
    let mut ours = parties.offerer_client("dispatcher").await;
    let mut theirs = parties.partner_client("driver-7").await;
    for client in [&mut ours, &mut theirs] {
        let reply = client.request(json!({"op": "subscribe", "channel": "orders:42"})).await.unwrap();
        assert!(reply.get("result").is_some(), "{reply}");
    }
    // Without the presence right the partner neither appears in the channel's presence nor sees
    // its events; members are named by their app, as publishers are.
    let mut packer = parties.offerer_client("packer").await;
    packer.request(json!({"op": "subscribe", "channel": "orders:42"})).await.unwrap();
    assert!(theirs.quiet_for(Duration::from_millis(300)).await, "no presence event reaches the partner");
    let reply = ours.request(json!({"op": "presence", "channel": "orders:42"})).await.unwrap();
    let mut members: Vec<String> = reply["result"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["client_id"].as_str().unwrap().to_owned())
        .collect();
    members.sort();
    let app = node.app_id();
    assert_eq!(members, [format!("{app}/dispatcher"), format!("{app}/packer")], "{reply}");

    // The offering side's backend publishes; both sides get it, named by the publishing app
    // and key.
    let published = node.publish("orders:42", json!({"status": "packed"})).await;
    for client in [&mut ours, &mut theirs] {
        let m = client.next_of("message").await.unwrap();
        assert_eq!((m["offset"].clone(), m["data"].clone()), (json!(1), json!({"status": "packed"})));
        assert_eq!(m["epoch"], published["epoch"], "one stream, the offering app's");
        let publisher = m["client_id"].as_str().unwrap();
        assert!(publisher.starts_with(&format!("{}/key:key_", node.app_id())), "{publisher}");
    }
    // The partner's client publishes back, with its own token.
    let reply =
        theirs.request(json!({"op": "publish", "channel": "orders:42", "data": {"eta": 12}})).await.unwrap();
    assert_eq!(reply["result"]["offset"], 2, "{reply}");
    let m = ours.next_of("message").await.unwrap();
    assert_eq!(m["client_id"], format!("{}/driver-7", parties.partner_app.app_id));
    assert_eq!(m["data"], json!({"eta": 12}));
    assert_eq!(theirs.next_of("message").await.unwrap()["offset"], 2);
    // The partner's backend too, with its API key.
    let (status, reply) = node
        .http()
        .post(format!("{}/v1/channels/orders:42/messages", node.http_url()))
        .bearer_auth(&parties.partner_app.api_key)
        .json(&json!({"data": {"eta": 10}}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 200, "{:?}", reply.text().await);
    let m = ours.next_of("message").await.unwrap();
    assert!(m["client_id"].as_str().unwrap().starts_with(&format!("{}/key:", parties.partner_app.app_id)));

    // History is given; presence is not: the offer left it out for the partner.
    let reply = theirs.request(json!({"op": "history", "channel": "orders:42"})).await.unwrap();
    assert_eq!(reply["result"]["messages"].as_array().map(Vec::len), Some(3), "{reply}");
    let reply = theirs.request(json!({"op": "presence", "channel": "orders:42"})).await.unwrap();
    assert_eq!(error_name(&reply), Some("forbidden"), "{reply}");
    let reply = ours.request(json!({"op": "presence", "channel": "orders:42"})).await.unwrap();
    assert!(reply.get("result").is_some(), "the offering side kept presence: {reply}");

    // Either side suspends: every connection subscribed through the exchange is closed within
    // a second, with the documented code; new uses are refused.
    let started = Instant::now();
    let (status, suspended) = parties.partner_change("suspend", None).await;
    assert_eq!((status, suspended["status"].as_str()), (200, Some("suspended")), "{suspended}");
    for client in [&mut theirs, &mut ours] {
        let (code, reason) = client.closed().await.unwrap();
        assert_eq!((code, reason.as_str()), (3507, "exchange suspended or ended"));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "closed after {:?}", started.elapsed());
    let mut theirs = parties.partner_client("driver-7").await;
    let reply = theirs.request(json!({"op": "subscribe", "channel": "orders:42"})).await.unwrap();
    assert_eq!(error_name(&reply), Some("exchange_suspended"), "{reply}");
    let (status, published) = node.post("/v1/channels/orders:42/messages", &json!({"data": 1}), None).await;
    assert_eq!((status, error_name(&published)), (403, Some("exchange_suspended")), "{published}");

    // Only the side that suspended resumes.
    let (status, refused) = parties.offerer_change("resume").await;
    assert_eq!((status, error_name(&refused)), (409, Some("invalid_state")), "{refused}");
    let (status, resumed) = parties.partner_change("resume", None).await;
    assert_eq!((status, resumed["status"].as_str()), (200, Some("active")), "{resumed}");
    let reply = theirs
        .request(
            json!({"op": "subscribe", "channel": "orders:42", "recover": {"epoch": m["epoch"], "offset": 3}}),
        )
        .await
        .unwrap();
    assert!(reply.get("result").is_some(), "{reply}");

    // Each side reads the exchange's log, exports it and verifies it offline.
    let offerer_log = logged(node, &parties.offerer_path("/audit/log"), node.operator_token(), 3).await;
    let partner_log = logged(node, &parties.partner_path("/audit/log"), &parties.partner_token, 3).await;
    assert_eq!(offerer_log["origin"], partner_log["origin"], "one log, seen by both");
    let entries =
        node.manage("GET", &parties.partner_path("/audit/entries"), &parties.partner_token, None).await.1;
    let publishers: Vec<&str> =
        entries.as_array().unwrap().iter().filter_map(|e| e["entry"]["client_id"].as_str()).collect();
    assert_eq!(publishers.len(), 3, "{entries}");
    assert!(publishers[1].starts_with(&parties.partner_app.app_id), "{publishers:?}");
    for (path, token, log) in [
        (parties.offerer_path("/audit/export"), node.operator_token(), &offerer_log),
        (parties.partner_path("/audit/export"), parties.partner_token.as_str(), &partner_log),
    ] {
        let url = format!("{}{path}", node.http_url());
        let text = node.http().get(url).bearer_auth(token).send().await.unwrap().text().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("exchange.jsonl");
        std::fs::write(&file, text).unwrap();
        let key = log["keys"][0]["public_key"].as_str().unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["audit", "verify", file.to_str().unwrap(), "--public-key", key])
            .output()
            .await
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{printed}");
        assert!(printed.contains("entries"), "{printed}");
    }

    // The partner's backend gets a receipt of a message from the exchange's log.
    let path = format!("/v1/channels/orders:42/receipt?epoch={}&offset=2", m["epoch"].as_str().unwrap());
    let response = node
        .http()
        .get(format!("{}{path}", node.http_url()))
        .bearer_auth(&parties.partner_app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let receipt: Value = response.json().await.unwrap();
    assert_eq!(receipt["entry"]["entry"]["client_id"], format!("{}/driver-7", parties.partner_app.app_id));
    assert!(receipt["checkpoint"].as_str().unwrap().starts_with(partner_log["origin"].as_str().unwrap()));

    // Ended by either side: for good.
    let (status, ended) = parties.offerer_change("end").await;
    assert_eq!(
        (status, ended["status"].as_str(), ended["changed_by"].as_str()),
        (200, Some("ended"), Some(node.tenant_id()))
    );
    assert_eq!(theirs.closed().await.unwrap().0, 3507);
    let (status, refused) = parties.partner_change("resume", None).await;
    assert_eq!((status, error_name(&refused)), (409, Some("invalid_state")), "{refused}");
    // The partner's `orders` namespace is its own again: nothing of the offering app's.
    let mut theirs = parties.partner_client("driver-7").await;
    let reply = theirs.request(json!({"op": "history", "channel": "orders:42"})).await.unwrap();
    assert_eq!(reply["result"]["messages"], json!([]), "{reply}");
}

/// Waits until the log read at `path` (an exchange's, the operator's) holds `entries` in a signed checkpoint.
pub(crate) async fn logged(node: &TestServer, path: &str, token: &str, entries: u64) -> Value {
    eventually("the exchange's log is checkpointed", Duration::from_secs(10), || async {
        let log = node.manage("GET", path, token, None).await.1;
        log["checkpoint_size"].as_u64().is_some_and(|size| size >= entries)
    })
    .await
    .expect("checkpointed");
    node.manage("GET", path, token, None).await.1
}

#[tokio::test]
async fn a_message_outside_the_offered_rights_is_refused_and_nothing_is_stored() {
    let parties = Parties::active(&["subscribe"]).await;
    let node = &parties.node;
    let mut theirs = parties.partner_client("viewer").await;
    let reply = theirs.request(json!({"op": "subscribe", "channel": "orders:1"})).await.unwrap();
    assert!(reply.get("result").is_some(), "{reply}");
    for op in [
        json!({"op": "publish", "channel": "orders:1", "data": "forged"}),
        json!({"op": "history", "channel": "orders:1"}),
        json!({"op": "presence", "channel": "orders:1"}),
        // Recovering and rewinding read history too.
        json!({"op": "subscribe", "channel": "orders:2", "rewind": 5}),
        json!({"op": "subscribe", "channel": "orders:3", "recover": {"epoch": "e", "offset": 0}}),
    ] {
        let reply = theirs.request(op.clone()).await.unwrap();
        assert_eq!(error_name(&reply), Some("forbidden"), "{op}: {reply}");
    }
    let response = node
        .http()
        .post(format!("{}/v1/channels/orders:1/messages", node.http_url()))
        .bearer_auth(&parties.partner_app.api_key)
        .json(&json!({"data": "forged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let (status, history) = node.get("/v1/channels/orders:1/history").await;
    assert_eq!((status, history["messages"].clone()), (200, json!([])), "nothing was stored: {history}");
    assert!(theirs.no_message_within(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn an_exchange_exposes_nothing_else_of_either_tenant() {
    let parties = Parties::active(&["publish", "subscribe", "presence", "history"]).await;
    let node = &parties.node;
    // The offering tenant's other channels: published in its app, never reachable by the
    // partner, whose same names are its own app's.
    node.publish("chat:lobby", json!("ours")).await;
    node.publish("lobby", json!("ours")).await;
    let mut theirs = parties.partner_client("snoop").await;
    for channel in ["chat:lobby"] {
        let reply = theirs.request(json!({"op": "history", "channel": channel})).await.unwrap();
        assert_eq!(reply["result"]["messages"], json!([]), "{channel}: {reply}");
        theirs.request(json!({"op": "subscribe", "channel": channel})).await.unwrap();
    }
    node.publish("chat:lobby", json!("ours again")).await;
    assert!(theirs.no_message_within(Duration::from_millis(300)).await, "nothing of the offering app's chat");
    // Each side's idempotency keys are its own, though both publish into one stream.
    let publish = json!({"op": "publish", "channel": "orders:9", "data": 1, "idempotency_key": "k1"});
    let reply = theirs.request(publish).await.unwrap();
    assert_eq!(reply["result"]["duplicate"], false, "{reply}");
    let (status, ours_published) =
        node.post("/v1/channels/orders:9/messages", &json!({"data": 2}), Some("k1")).await;
    assert_eq!(
        (status, ours_published["duplicate"].as_bool(), ours_published["offset"].as_u64()),
        (200, Some(false), Some(2))
    );
    // With the presence right, the partner's client is a member, named by its app.
    theirs.request(json!({"op": "subscribe", "channel": "orders:9"})).await.unwrap();
    let mut ours = parties.offerer_client("watcher").await;
    let reply = ours.request(json!({"op": "presence", "channel": "orders:9"})).await.unwrap();
    assert_eq!(
        reply["result"]["members"][0]["client_id"],
        format!("{}/snoop", parties.partner_app.app_id),
        "{reply}"
    );
    // The partner's API key on the offering app's other channels: its own app's, empty.
    for path in ["/v1/channels/chat:lobby/history", "/v1/channels/lobby/history"] {
        let response = node
            .http()
            .get(format!("{}{path}", node.http_url()))
            .bearer_auth(&parties.partner_app.api_key)
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["messages"], json!([]), "{path}: {body}");
    }
    // The partner's management token on the offering tenant's routes: not found, as if absent.
    let ours = node.tenant_id();
    for (method, path) in [
        ("GET", format!("/v1/tenants/{ours}")),
        ("GET", format!("/v1/tenants/{ours}/apps")),
        ("GET", format!("/v1/tenants/{ours}/apps/{}", node.app_id())),
        ("GET", format!("/v1/tenants/{ours}/apps/{}/namespaces", node.app_id())),
        ("GET", format!("/v1/tenants/{ours}/apps/{}/api-keys", node.app_id())),
        ("GET", format!("/v1/tenants/{ours}/exchanges")),
        ("GET", format!("/v1/tenants/{ours}/exchanges/{}", parties.exchange)),
        ("GET", format!("/v1/tenants/{ours}/exchanges/{}/audit/log", parties.exchange)),
        ("POST", format!("/v1/tenants/{ours}/exchanges/{}/end", parties.exchange)),
        ("GET", format!("/v1/tenants/{ours}/audit/log")),
        ("GET", format!("/v1/tenants/{ours}/usage")),
    ] {
        let (status, reply) = node.manage(method, &path, &parties.partner_token, None).await;
        assert!(matches!(status, 403 | 404), "{method} {path}: {status} {reply}");
    }
    // Each side sees the exchange as the same record, with its own side named.
    let (_, theirs_seen) = node.manage("GET", &parties.partner_path(""), &parties.partner_token, None).await;
    let (_, ours_seen) = node.manage("GET", &parties.offerer_path(""), node.operator_token(), None).await;
    assert_eq!(
        (theirs_seen["side"].as_str(), ours_seen["side"].as_str()),
        (Some("partner"), Some("offerer"))
    );
    assert_eq!(theirs_seen["partner_app_id"], parties.partner_app.app_id.as_str());
    assert_eq!(theirs_seen["offerer_app_id"], ours_seen["offerer_app_id"]);
    // A third tenant sees nothing of the exchange, under its own path or theirs.
    let (third, third_token) = tenant_with_owner(node, "Bystander").await;
    for path in [
        format!("/v1/tenants/{third}/exchanges/{}", parties.exchange),
        format!("/v1/tenants/{third}/exchanges/{}/audit/log", parties.exchange),
        parties.partner_path(""),
    ] {
        let (status, reply) = node.manage("GET", &path, &third_token, None).await;
        assert!(matches!(status, 403 | 404), "{path}: {status} {reply}");
    }
    let (status, listed) =
        node.manage("GET", &format!("/v1/tenants/{third}/exchanges"), &third_token, None).await;
    assert_eq!((status, listed), (200, json!([])));
    // The exchange still works for its parties.
    let (status, shown) = node.manage("GET", &parties.offerer_path(""), node.operator_token(), None).await;
    assert_eq!((status, shown["status"].as_str()), (200, Some("active")));
}

#[tokio::test]
async fn bad_offers_and_changes_are_refused_with_a_clear_error_and_change_nothing() {
    let parties = Parties::offered(&["subscribe"]).await;
    let node = &parties.node;
    let ours = node.tenant_id();
    let path = format!("/v1/tenants/{ours}/exchanges");
    let offer = |patch: Value| {
        let mut body = json!({
            "app_id": node.app_id(), "namespace": "fleet", "partner_tenant_id": parties.partner,
            "offerer_rights": ["publish"], "partner_rights": ["subscribe"],
        });
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for (patch, status, name) in [
        (json!({"partner_rights": ["admin"]}), 400, "invalid_parameter"),
        (json!({"partner_rights": ["push_publish"]}), 400, "invalid_parameter"),
        (json!({"namespace": "a:b"}), 400, "invalid_parameter"),
        (json!({"namespace": ""}), 400, "invalid_parameter"),
        (json!({"namespace": "tributary"}), 400, "invalid_parameter"),
        (json!({"namespace": "orders"}), 409, "already_exists"),
        (json!({"partner_tenant_id": ours}), 404, "not_found"),
        (json!({"partner_tenant_id": "ten_00000000000000000000000000"}), 404, "not_found"),
        (json!({"app_id": parties.partner_app.app_id}), 404, "not_found"),
        (json!({"surprise": true}), 400, "invalid_frame"),
    ] {
        let (got, reply) =
            node.manage("POST", &path, node.operator_token(), Some(&offer(patch.clone()))).await;
        assert_eq!((got, error_name(&reply)), (status, Some(name)), "{patch}: {reply}");
    }
    let (_, listed) = node.manage("GET", &path, node.operator_token(), None).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "only the first offer: {listed}");
    // The offering side cannot accept its own offer; the partner cannot accept into an app not
    // its own; neither can suspend an offer.
    let (status, reply) = node
        .manage(
            "POST",
            &parties.offerer_path("/accept"),
            node.operator_token(),
            Some(&json!({"app_id": node.app_id()})),
        )
        .await;
    assert_eq!((status, error_name(&reply)), (409, Some("invalid_state")), "{reply}");
    let (status, reply) = parties.partner_change("accept", Some(&json!({"app_id": node.app_id()}))).await;
    assert_eq!((status, error_name(&reply)), (404, Some("not_found")), "{reply}");
    let (status, reply) = parties.partner_change("suspend", None).await;
    assert_eq!((status, error_name(&reply)), (409, Some("invalid_state")), "{reply}");
    let (_, shown) = node.manage("GET", &parties.partner_path(""), &parties.partner_token, None).await;
    assert_eq!(shown["status"], "offered", "{shown}");
    // Declined by the partner: ended, and the namespace may be offered again.
    let (status, ended) = parties.partner_change("end", None).await;
    assert_eq!((status, ended["status"].as_str()), (200, Some("ended")), "{ended}");
    let (status, reply) =
        node.manage("POST", &path, node.operator_token(), Some(&offer(json!({"namespace": "orders"})))).await;
    assert_eq!(status, 201, "{reply}");
}

#[tokio::test]
async fn accepting_ends_the_partners_subscriptions_to_its_own_channels_of_the_namespace() {
    let parties = Parties::offered(&["subscribe"]).await;
    let mut theirs = parties.partner_client("early").await;
    let reply = theirs.request(json!({"op": "subscribe", "channel": "orders:1"})).await.unwrap();
    assert!(reply.get("result").is_some(), "its own app's channel, before the exchange: {reply}");
    let accepted = Parties::accepted(parties).await;
    // Its own channel is hidden while the exchange lasts: reconnect, and subscribe through it.
    let (code, _) = theirs.closed().await.unwrap();
    assert_eq!(code, 3007);
    let mut theirs = accepted.partner_client("early").await;
    theirs.request(json!({"op": "subscribe", "channel": "orders:1"})).await.unwrap();
    accepted.node.publish("orders:1", json!("from the offering app")).await;
    assert_eq!(theirs.next_of("message").await.unwrap()["data"], "from the offering app");
}
