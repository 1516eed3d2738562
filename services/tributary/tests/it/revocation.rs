//! The data plane obeys the control plane: revoked tokens, clients, key generations, keys,
//! apps and suspended tenants are refused on connect with their own codes, and every open
//! connection they cover is closed (3504 revoked, 3505 suspended) within a second, on every
//! node; nodes keep serving from their cache when the database is down.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tributary_testkit::{TestServer, WsClient, eventually};

/// The longest a change may take to reach every open connection.
const WITHIN: Duration = Duration::from_secs(1);

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Mints a token for the development app; returns (token, token id).
async fn mint(server: &TestServer, client: &str) -> (String, String) {
    let body =
        json!({"client_id": client, "capabilities": [{"channel": "*", "allow": ["subscribe", "publish"]}]});
    let (status, reply) = server.post("/v1/tokens", &body, None).await;
    assert_eq!(status, 200, "{reply}");
    (reply["token"].as_str().unwrap().to_owned(), reply["token_id"].as_str().unwrap().to_owned())
}

/// Mints a token for `client`, asserting that the node signs with `kid` (a key just created:
/// the node that answered the change applied it before answering).
async fn signed_by(server: &TestServer, client: &str, kid: &str) -> String {
    let (token, _) = mint(server, client).await;
    assert_eq!(tributary_capability::peek(&token).unwrap().kid, kid, "the node signs with another key");
    token
}

/// Returns the error name a connect with `token` is refused with ("" if accepted).
async fn refusal(server: &TestServer, token: &str) -> String {
    let (_, reply) = WsClient::connect(&server.ws_url(), token).await.unwrap();
    reply["error"]["name"].as_str().unwrap_or_default().to_owned()
}

/// Calls the management API as the operator on the development tenant.
async fn manage(server: &TestServer, path: &str, body: Option<Value>) -> Value {
    let path = path.replace("{tenant}", server.tenant_id()).replace("{app}", server.app_id());
    let (status, reply) = server.manage("POST", &path, server.operator_token(), body.as_ref()).await;
    assert!((200..300).contains(&status), "{path}: {status} {reply}");
    reply
}

/// Waits until a cut-off second has passed, so tokens minted afterwards are not covered.
async fn after(cutoff: &Value) {
    let cutoff = cutoff.as_i64().unwrap();
    while unix_now() < cutoff {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `ws` is closed with `code` within [`WITHIN`] of `since`.
async fn closed_with(ws: &mut WsClient, code: u16, since: Instant, what: &str) {
    let (got, _) = ws.closed().await.unwrap();
    assert_eq!(got, code, "{what}");
    assert!(since.elapsed() < WITHIN, "{what}: closed after {:?}", since.elapsed());
}

#[tokio::test]
async fn each_revocation_closes_exactly_what_it_names() {
    let server = TestServer::spawn().await;

    // One token, by its id: that connection only.
    let (first, first_id) = mint(&server, "alice").await;
    let (second, _) = mint(&server, "alice").await;
    let (mut ws_first, mut ws_second) = (server.ws(&first).await, server.ws(&second).await);
    let start = Instant::now();
    manage(&server, "/v1/tenants/{tenant}/apps/{app}/revocations", Some(json!({"token_id": first_id}))).await;
    closed_with(&mut ws_first, 3504, start, "the revoked token's connection").await;
    assert!(
        ws_second.request(json!({"op": "ping"})).await.unwrap().get("result").is_some(),
        "the other token lives"
    );
    assert_eq!(refusal(&server, &first).await, "token_revoked");
    assert_eq!(refusal(&server, &second).await, "");

    // A client: every token it holds, but not the ones minted after.
    let (bob, _) = mint(&server, "bob").await;
    let mut ws_bob = server.ws(&bob).await;
    let start = Instant::now();
    let reply =
        manage(&server, "/v1/tenants/{tenant}/apps/{app}/revocations", Some(json!({"client_id": "bob"})))
            .await;
    closed_with(&mut ws_bob, 3504, start, "the revoked client's connection").await;
    assert!(ws_second.request(json!({"op": "ping"})).await.unwrap().get("result").is_some(), "alice lives");
    assert_eq!(refusal(&server, &bob).await, "token_revoked");
    after(&reply["issued_before"]).await;
    let (bob_again, _) = mint(&server, "bob").await;
    assert_eq!(refusal(&server, &bob_again).await, "", "a token minted after the revocation works");

    // A key generation: every token the key signed so far, and the key keeps signing new ones.
    let kid = server.signing_key(server.app_id()).await.kid;
    let mut ws_bob = server.ws(&bob_again).await;
    let start = Instant::now();
    let reply = manage(
        &server,
        &format!("/v1/tenants/{{tenant}}/apps/{{app}}/signing-keys/{kid}/bump-generation"),
        None,
    )
    .await;
    assert_eq!(reply["generation"], 2);
    closed_with(&mut ws_second, 3504, start, "alice, signed under generation 1").await;
    closed_with(&mut ws_bob, 3504, start, "bob, signed under generation 1").await;
    assert_eq!(refusal(&server, &bob_again).await, "token_revoked");
    let (fresh, _) = mint(&server, "carol").await;
    assert_eq!(refusal(&server, &fresh).await, "", "generation 2 tokens work");

    // A signing key: its tokens stop, tokens of the next key work.
    let mut ws_carol = server.ws(&fresh).await;
    let next = manage(&server, "/v1/tenants/{tenant}/apps/{app}/signing-keys", None).await;
    let newer = signed_by(&server, "dave", next["kid"].as_str().unwrap()).await;
    let mut ws_dave = server.ws(&newer).await;
    let start = Instant::now();
    manage(&server, &format!("/v1/tenants/{{tenant}}/apps/{{app}}/signing-keys/{kid}/revoke"), None).await;
    closed_with(&mut ws_carol, 3504, start, "carol, signed by the revoked key").await;
    assert_eq!(refusal(&server, &fresh).await, "unknown_key");
    assert!(
        ws_dave.request(json!({"op": "ping"})).await.unwrap().get("result").is_some(),
        "the new key's token lives"
    );

    // The whole app, and nothing of another tenant.
    let other = server.create_app("neighbour").await;
    let neighbour = server.token_for(&other, "erin", &[("*", &["subscribe"])]).await;
    let mut ws_neighbour = server.ws(&neighbour).await;
    let start = Instant::now();
    let reply =
        manage(&server, "/v1/tenants/{tenant}/apps/{app}/revocations", Some(json!({"all": true}))).await;
    assert_eq!(reply["revoked"], "app");
    closed_with(&mut ws_dave, 3504, start, "dave, in the revoked app").await;
    assert!(
        ws_neighbour.request(json!({"op": "ping"})).await.unwrap().get("result").is_some(),
        "another tenant lives"
    );
    after(&reply["issued_before"]).await;

    // The whole tenant.
    let (frank, _) = mint(&server, "frank").await;
    let mut ws_frank = server.ws(&frank).await;
    let start = Instant::now();
    manage(&server, "/v1/tenants/{tenant}/revocations", Some(json!({"all": true}))).await;
    closed_with(&mut ws_frank, 3504, start, "frank, in the revoked tenant").await;
    assert!(
        ws_neighbour.request(json!({"op": "ping"})).await.unwrap().get("result").is_some(),
        "another tenant lives"
    );
}

#[tokio::test]
async fn a_revoked_api_key_stops_working_within_a_second() {
    let server = TestServer::spawn().await;
    server.publish("news", json!("works")).await;
    let (_, keys) = server
        .manage(
            "GET",
            &format!("/v1/tenants/{}/apps/{}/api-keys", server.tenant_id(), server.app_id()),
            server.operator_token(),
            None,
        )
        .await;
    let key_id = keys[0]["id"].as_str().unwrap();
    let start = Instant::now();
    manage(&server, &format!("/v1/tenants/{{tenant}}/apps/{{app}}/api-keys/{key_id}/revoke"), None).await;
    eventually("the revoked key is refused", WITHIN, || async {
        server.post("/v1/channels/news/messages", &json!({"data": "x"}), None).await.0 == 401
    })
    .await
    .unwrap();
    println!("revoked API key refused after {:?}", start.elapsed());
    let (status, reply) =
        server.post("/v1/tokens", &json!({"client_id": "a", "capabilities": []}), None).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (401, Some("invalid_api_key")));
}

#[tokio::test]
async fn token_attacks_are_refused() {
    let server = TestServer::spawn().await;
    let other = server.create_app("other").await;
    // A token of app B presented as app A: its own app is checked, it works only for B.
    let theirs = server.token_for(&other, "mallory", &[("*", &["subscribe"])]).await;
    let (mut ws, reply) = WsClient::connect(&server.ws_url(), &theirs).await.unwrap();
    assert!(reply.get("result").is_some(), "{reply}");
    ws.request(json!({"op": "subscribe", "channel": "secret"})).await.unwrap();
    server.publish("secret", json!("ours")).await;
    assert!(ws.no_message_within(Duration::from_millis(300)).await, "B's token never sees A's channel");

    // Signed before a generation bump, and by a revoked key.
    let (old, _) = mint(&server, "alice").await;
    let kid = server.signing_key(server.app_id()).await.kid;
    manage(&server, &format!("/v1/tenants/{{tenant}}/apps/{{app}}/signing-keys/{kid}/bump-generation"), None)
        .await;
    eventually("the bump reaches the node", WITHIN, || async {
        refusal(&server, &old).await == "token_revoked"
    })
    .await
    .unwrap();
    let (current, _) = mint(&server, "alice").await;
    manage(&server, "/v1/tenants/{tenant}/apps/{app}/signing-keys", None).await;
    manage(&server, &format!("/v1/tenants/{{tenant}}/apps/{{app}}/signing-keys/{kid}/revoke"), None).await;
    eventually("the revocation reaches the node", WITHIN, || async {
        refusal(&server, &current).await == "unknown_key"
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_suspended_tenant_is_cut_off_on_every_node_within_a_second() {
    let nodes = TestServer::spawn_cluster(2, |_| {}).await;
    let (first, second) = (&nodes[0], &nodes[1]);
    let other = first.create_app("paying").await;
    let mut ours = Vec::new();
    for node in [first, second] {
        for n in 0..5 {
            ours.push(node.ws(&node.all_rights(&format!("user-{n}")).await).await);
        }
    }
    let paying_token = second.token_for(&other, "payer", &[("*", &["subscribe"])]).await;
    let mut paying = second.ws(&paying_token).await;
    paying.request(json!({"op": "subscribe", "channel": "still-on"})).await.unwrap();

    let token = first.all_rights("late").await;
    let start = Instant::now();
    let path = format!("/v1/tenants/{}/status", first.tenant_id());
    let (status, reply) =
        first.manage("POST", &path, first.operator_token(), Some(&json!({"status": "suspended"}))).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("suspended")), "{reply}");
    for ws in &mut ours {
        closed_with(ws, 3505, start, "a connection of the suspended tenant").await;
    }
    println!("suspension: 10 connections on 2 nodes closed {:?} after the request", start.elapsed());

    // New connections, publishes and token requests are refused with a code that says why.
    assert_eq!(refusal(second, &token).await, "tenant_suspended");
    // A new connection gets the reason in its connect reply and is closed with 3501, as
    // protocol.md's handshake table says (3505 is for connections that were open).
    let (mut refused, _) = WsClient::connect(&second.ws_url(), &token).await.unwrap();
    assert_eq!(refused.closed().await.unwrap().0, 3501);
    let (status, reply) = second.post("/v1/channels/x/messages", &json!({"data": 1}), None).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (403, Some("tenant_suspended")), "{reply}");
    let (status, _) = second.post("/v1/tokens", &json!({"client_id": "a", "capabilities": []}), None).await;
    assert_eq!(status, 403);
    // Another tenant is untouched.
    let response = second
        .http()
        .post(format!("{}/v1/channels/still-on/messages", second.http_url()))
        .bearer_auth(&other.api_key)
        .json(&json!({"data": "on"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(paying.messages(1).await.unwrap()[0]["data"], "on");

    // Reactivated, it is served again on every node.
    let (status, _) =
        first.manage("POST", &path, first.operator_token(), Some(&json!({"status": "active"}))).await;
    assert_eq!(status, 200);
    for node in [first, second] {
        eventually("the tenant is served again", WITHIN, || async { refusal(node, &token).await.is_empty() })
            .await
            .unwrap();
    }
}

/// The Redis the multi-node tests share.
fn redis_url() -> String {
    std::env::var("TRIBUTARY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn nodes_keep_serving_from_their_cache_while_the_database_is_down() {
    let database = tributary_testkit::fresh_postgres_database().await;
    let nodes = TestServer::spawn_nodes_on_database(&database, &redis_url(), 1, |config| {
        // Resyncs run (and fail) while the database is gone: they must not cut anyone off.
        config.relay.control_resync_secs = 1;
    })
    .await;
    let node = &nodes[0];
    let (late, _) = mint(node, "late").await;
    let mut subscriber = node.ws(&node.all_rights("reader").await).await;
    subscriber.request(json!({"op": "subscribe", "channel": "outage"})).await.unwrap();

    tributary_testkit::drop_postgres_database(&database).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Connected clients, new connections, the HTTP API and minting all go on from the cache.
    assert!(subscriber.request(json!({"op": "ping"})).await.unwrap().get("result").is_some());
    assert_eq!(refusal(node, &late).await, "", "a token of a cached app is admitted");
    node.publish("outage", json!("still flowing")).await;
    assert_eq!(subscriber.messages(1).await.unwrap()[0]["data"], "still flowing");
    let (token, _) = mint(node, "newcomer").await;
    assert_eq!(refusal(node, &token).await, "", "tokens minted during the outage work");
    // The management API, which needs the database, says so without details.
    let path = format!("/v1/tenants/{}", node.tenant_id());
    let (status, reply) = node.manage("GET", &path, node.operator_token(), None).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (500, Some("internal")), "{reply}");
}

#[tokio::test]
async fn bumping_a_key_closes_1000_connections_on_two_nodes_within_a_second() {
    const PER_NODE: usize = 500;
    let nodes = TestServer::spawn_nodes_on_postgres(&redis_url(), 2).await;
    let mut clients = Vec::with_capacity(2 * PER_NODE);
    // Every node bootstraps a development app of its own in the shared database: all the
    // connections are of the first node's app.
    let token = nodes[0].all_rights("crowd").await;
    for node in &nodes {
        let url = node.ws_url();
        for batch in 0..PER_NODE / 100 {
            let opened = futures::future::join_all((0..100).map(|_| WsClient::connect(&url, &token))).await;
            for (n, result) in opened.into_iter().enumerate() {
                let (ws, reply) = result.unwrap();
                assert!(reply.get("result").is_some(), "connection {}: {reply}", batch * 100 + n);
                clients.push(ws);
            }
        }
    }
    let kid = nodes[0].signing_key(nodes[0].app_id()).await.kid;
    let path = format!(
        "/v1/tenants/{}/apps/{}/signing-keys/{kid}/bump-generation",
        nodes[0].tenant_id(),
        nodes[0].app_id()
    );
    let start = Instant::now();
    let (status, reply) = nodes[0].manage("POST", &path, nodes[0].operator_token(), None).await;
    assert_eq!(status, 200, "{reply}");
    let closes = futures::future::join_all(clients.iter_mut().map(|ws| async {
        let (code, _) = ws.closed().await.unwrap();
        (code, start.elapsed())
    }))
    .await;
    let mut times: Vec<Duration> = closes
        .iter()
        .map(|(code, elapsed)| {
            assert_eq!(*code, 3504);
            *elapsed
        })
        .collect();
    times.sort();
    let p99 = times[times.len() * 99 / 100 - 1];
    let last = times[times.len() - 1];
    println!(
        "revocation: {} connections on 2 nodes closed; p50 {:?}, p99 {p99:?}, last {last:?} after the request",
        times.len(),
        times[times.len() / 2]
    );
    assert!(p99 < WITHIN, "p99 {p99:?}");
    assert!(last < WITHIN, "last close {last:?}: the guarantee is every connection within a second");
}

/// A change made through the management API is in force on the node that answered it before
/// the answer (read-your-writes): a token signed with a key just created is accepted at once,
/// one of a generation just bumped is refused at once. On Redis, where a node hears its own
/// control events only after a round trip, so a node that waited for them would lag.
#[tokio::test]
async fn the_node_that_answers_a_change_has_already_applied_it() {
    use base64::Engine as _;
    let server = TestServer::spawn_cluster(1, |_| {}).await.remove(0);
    let grant = tributary_capability::Capabilities::parse_spec("*=subscribe").unwrap();
    for round in 0..10 {
        let created = manage(&server, "/v1/tenants/{tenant}/apps/{app}/signing-keys", None).await;
        let kid = created["kid"].as_str().unwrap();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(created["secret"].as_str().unwrap())
            .unwrap();
        let key = tributary_capability::SigningKey::new(
            server.app_id(),
            kid,
            tributary_capability::KeyAlgorithm::Hs256,
            secret,
        );
        let request =
            tributary_capability::TokenRequest::new("rw", server.app_id(), 600, vec![grant.clone()]);
        let token = tributary_capability::mint(&request, &key, unix_now() as u64).unwrap().token;
        assert_eq!(refusal(&server, &token).await, "", "round {round}: a token of the key just created");
        let (minted, _) = mint(&server, "rw").await;
        assert_eq!(
            tributary_capability::peek(&minted).unwrap().kid,
            kid,
            "round {round}: the node signs with it"
        );
        manage(
            &server,
            &format!("/v1/tenants/{{tenant}}/apps/{{app}}/signing-keys/{kid}/bump-generation"),
            None,
        )
        .await;
        assert_eq!(
            refusal(&server, &token).await,
            "token_revoked",
            "round {round}: a generation just bumped"
        );
    }
}

/// Each kind of revocation asked of one node closes what it names on the other node too, within
/// a second of the request, over Redis (where control events really travel between nodes);
/// connections it does not name stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_revocation_reaches_the_other_node_within_a_second() {
    let nodes = TestServer::spawn_cluster(2, |_| {}).await;
    let (asking, other) = (&nodes[0], &nodes[1]);
    let app_path = "/v1/tenants/{tenant}/apps/{app}";
    let mut bystander = other.ws(&other.all_rights("bystander").await).await;
    let mut slowest = Duration::ZERO;

    // One token, by its id.
    let (token, token_id) = mint(asking, "alice").await;
    let mut ws = other.ws(&token).await;
    let start = Instant::now();
    manage(asking, &format!("{app_path}/revocations"), Some(json!({"token_id": token_id}))).await;
    slowest = slowest.max(close_time(&mut ws, start, "a revoked token's connection on the other node").await);
    assert_eq!(refusal(other, &token).await, "token_revoked");

    // A client: every token it holds.
    let (token, _) = mint(asking, "bob").await;
    let mut ws = other.ws(&token).await;
    let start = Instant::now();
    manage(asking, &format!("{app_path}/revocations"), Some(json!({"client_id": "bob"}))).await;
    slowest =
        slowest.max(close_time(&mut ws, start, "a revoked client's connection on the other node").await);
    assert!(alive(&mut bystander).await, "another client stays");

    // A signing key: every token it signed (after a newer key took over signing).
    let old_kid = asking.signing_key(asking.app_id()).await.kid;
    let (old_token, _) = mint(asking, "carol").await;
    let mut ws = other.ws(&old_token).await;
    let newer = manage(asking, &format!("{app_path}/signing-keys"), None).await;
    let (new_token, _) = mint(asking, "dave").await;
    assert_eq!(tributary_capability::peek(&new_token).unwrap().kid, newer["kid"].as_str().unwrap());
    let mut survivor = other.ws(&new_token).await;
    let start = Instant::now();
    manage(asking, &format!("{app_path}/signing-keys/{old_kid}/revoke"), None).await;
    slowest = slowest.max(close_time(&mut ws, start, "a token of a revoked key on the other node").await);
    assert!(alive(&mut survivor).await, "the newer key's token stays");

    // The whole app.
    let start = Instant::now();
    let reply = manage(asking, &format!("{app_path}/revocations"), Some(json!({"all": true}))).await;
    assert_eq!(reply["revoked"], "app");
    for (ws, what) in
        [(&mut survivor, "dave, in the revoked app"), (&mut bystander, "the bystander, in the revoked app")]
    {
        slowest = slowest.max(close_time(ws, start, what).await);
    }
    println!("revocations on another node: the slowest close came {slowest:?} after its request");
}

/// A key made on one node signs tokens that another node admits at once, even before the
/// change's event reaches it: here the nodes share the store but no Redis prefix, so no event
/// ever does, and the other node finds the key by reloading the app when a token names it.
#[tokio::test]
async fn a_key_made_on_one_node_is_admitted_by_another_before_any_event_arrives() {
    let url = std::env::var("TRIBUTARY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nodes = TestServer::spawn_nodes(&url, 2, |config| {
        config.engine.redis_prefix = format!("trbtest-{}", uuid::Uuid::new_v4().simple());
    })
    .await;
    let (making, other) = (&nodes[0], &nodes[1]);
    let (token, _) = mint(making, "erin").await;
    other.ws(&token).await;
    let newer = manage(making, "/v1/tenants/{tenant}/apps/{app}/signing-keys", None).await;
    let token = signed_by(making, "erin", newer["kid"].as_str().unwrap()).await;
    assert_eq!(refusal(other, &token).await, "", "a token of the new key on the other node");
}

/// Whether `ws` still answers a ping.
async fn alive(ws: &mut WsClient) -> bool {
    ws.request(json!({"op": "ping"})).await.unwrap().get("result").is_some()
}

/// Asserts that `ws` is closed with 3504 within [`WITHIN`] of `start`; returns when it was.
async fn close_time(ws: &mut WsClient, start: Instant, what: &str) -> Duration {
    closed_with(ws, 3504, start, what).await;
    start.elapsed()
}
