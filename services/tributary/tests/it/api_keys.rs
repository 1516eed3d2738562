//! API keys: capabilities limit what a key may do (and which tokens it may mint), rotation
//! keeps the old key working for an overlap, and a checksum lets scanners spot real keys.

use std::time::Duration;

use serde_json::{Value, json};
use tributary_testkit::{TestServer, eventually};

/// Creates an API key of the development app as the operator; returns its secret.
async fn key(server: &TestServer, capabilities: Value) -> String {
    let path = format!("/v1/tenants/{}/apps/{}/api-keys", server.tenant_id(), server.app_id());
    let body = json!({"name": "restricted", "capabilities": capabilities});
    let (status, reply) = server.manage("POST", &path, server.operator_token(), Some(&body)).await;
    assert_eq!(status, 201, "{reply}");
    reply["secret"].as_str().unwrap().to_owned()
}

/// Calls the HTTP API with `key`; returns the status and the error name.
async fn call(
    server: &TestServer,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let url = format!("{}{path}", server.http_url());
    let request = if method == "GET" { server.http().get(url) } else { server.http().post(url) };
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.bearer_auth(key).send().await.unwrap();
    let status = response.status().as_u16();
    let reply: Value = response.json().await.unwrap_or(Value::Null);
    (status, reply["error"]["name"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_restricted_key_may_do_only_what_its_capabilities_say() {
    let server = TestServer::spawn().await;
    let publisher = key(&server, json!({"grants": [{"channel": "news:*", "allow": ["publish"]}]})).await;
    let message = Some(json!({"data": "hi"}));
    assert_eq!(
        call(&server, &publisher, "POST", "/v1/channels/news:today/messages", message.clone()).await.0,
        200
    );
    let refused = (403, "forbidden".to_owned());
    assert_eq!(
        call(&server, &publisher, "POST", "/v1/channels/chat:x/messages", message.clone()).await,
        refused
    );
    assert_eq!(call(&server, &publisher, "GET", "/v1/channels/news:today/history", None).await, refused);
    assert_eq!(call(&server, &publisher, "GET", "/v1/channels/news:today/presence", None).await, refused);
    let mint = json!({"client_id": "a", "capabilities": [{"channel": "news:*", "allow": ["subscribe"]}]});
    assert_eq!(call(&server, &publisher, "POST", "/v1/tokens", Some(mint)).await, refused);
    assert_eq!(call(&server, &publisher, "POST", "/v1/clients/a/disconnect", None).await, refused);
    // A batch: each message on its own.
    let batch = json!({"messages": [{"channel": "news:a", "data": 1}, {"channel": "chat:b", "data": 2}]});
    let response = server
        .http()
        .post(format!("{}/v1/publish", server.http_url()))
        .bearer_auth(&publisher)
        .json(&batch)
        .send()
        .await
        .unwrap();
    let reply: Value = response.json().await.unwrap();
    assert!(reply["results"][0]["offset"].is_u64(), "{reply}");
    assert_eq!(reply["results"][1]["error"]["name"], "forbidden", "{reply}");

    // A minting key mints only within its own grants.
    let minter = key(
        &server,
        json!({"grants": [{"channel": "chat:*", "allow": ["subscribe", "publish"]}], "mint_tokens": true}),
    )
    .await;
    let grant = |channel: &str, allow: Value| json!({"client_id": "u", "capabilities": [{"channel": channel, "allow": allow}]});
    assert_eq!(
        call(&server, &minter, "POST", "/v1/tokens", Some(grant("chat:room-1", json!(["subscribe"]))))
            .await
            .0,
        200
    );
    assert_eq!(
        call(&server, &minter, "POST", "/v1/tokens", Some(grant("chat:room-*", json!(["publish"])))).await.0,
        200
    );
    assert_eq!(
        call(&server, &minter, "POST", "/v1/tokens", Some(grant("*", json!(["subscribe"])))).await,
        refused
    );
    assert_eq!(
        call(&server, &minter, "POST", "/v1/tokens", Some(grant("chat:x", json!(["history"])))).await,
        refused
    );
    assert_eq!(call(&server, &minter, "POST", "/v1/clients/u/disconnect", None).await.0, 200);
    // The unrestricted development key is unaffected.
    assert_eq!(call(&server, server.api_key(), "GET", "/v1/channels/news:today/history", None).await.0, 200);
}

#[tokio::test]
async fn a_rotated_key_works_through_its_overlap_and_not_after() {
    let server = TestServer::spawn().await;
    let keys = format!("/v1/tenants/{}/apps/{}/api-keys", server.tenant_id(), server.app_id());
    let old = key(&server, json!({"grants": [{"channel": "*", "allow": ["publish"]}]})).await;
    let publish = |key: String| {
        let server = &server;
        async move {
            call(server, &key, "POST", "/v1/channels/rotation/messages", Some(json!({"data": 1}))).await.0
        }
    };
    assert_eq!(publish(old.clone()).await, 200, "the old key is in the node's cache now");
    let (_, list) = server.manage("GET", &keys, server.operator_token(), None).await;
    let old_id = list.as_array().unwrap().iter().find(|k| k["name"] == "restricted").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, new) = server
        .manage(
            "POST",
            &format!("{keys}/{old_id}/rotate"),
            server.operator_token(),
            Some(&json!({"overlap_secs": 2})),
        )
        .await;
    assert_eq!(status, 201, "{new}");
    assert_eq!(
        new["capabilities"],
        json!({"grants": [{"channel": "*", "allow": ["publish"]}], "mint_tokens": false})
    );
    let new_secret = new["secret"].as_str().unwrap().to_owned();
    assert_eq!(publish(new_secret.clone()).await, 200);
    assert_eq!(publish(old.clone()).await, 200, "inside the overlap");
    eventually("the old key stops after its overlap", Duration::from_secs(4), || {
        publish(old.clone()).map_eq(401)
    })
    .await
    .unwrap();
    assert_eq!(publish(new_secret.clone()).await, 200);
    let (_, list) = server.manage("GET", &keys, server.operator_token(), None).await;
    let shown = list.as_array().unwrap().iter().find(|k| k["id"] == old_id.as_str()).unwrap();
    assert!(shown["expires_at"].is_i64(), "{shown}");

    // Without an overlap the old key stops at once (within a second, on every node).
    let new_id = new["id"].as_str().unwrap();
    let (status, _) = server
        .manage(
            "POST",
            &format!("{keys}/{new_id}/rotate"),
            server.operator_token(),
            Some(&json!({"overlap_secs": 0})),
        )
        .await;
    assert_eq!(status, 201);
    eventually("no overlap", Duration::from_secs(1), || publish(new_secret.clone()).map_eq(401))
        .await
        .unwrap();
    // A revoked or expired key cannot be rotated; bad overlaps are refused.
    let (status, _) =
        server.manage("POST", &format!("{keys}/{old_id}/rotate"), server.operator_token(), None).await;
    assert_eq!(status, 404);
    let (status, _) = server
        .manage(
            "POST",
            &format!("{keys}/{new_id}/rotate"),
            server.operator_token(),
            Some(&json!({"overlap_secs": 99_999_999})),
        )
        .await;
    assert_eq!(status, 400);
}

/// `future.map_eq(v)`: a future of whether the output equals `v`.
trait MapEq: std::future::Future + Sized {
    fn map_eq(self, expected: Self::Output) -> impl std::future::Future<Output = bool>
    where
        Self::Output: PartialEq,
    {
        async move { self.await == expected }
    }
}

impl<F: std::future::Future> MapEq for F {}

#[tokio::test]
async fn keys_carry_a_checksum_and_bad_capabilities_are_refused() {
    let server = TestServer::spawn().await;
    let secret = key(&server, json!({"grants": [{"channel": "*", "allow": ["publish"]}]})).await;
    let (body, check) = secret.rsplit_once('_').unwrap();
    assert_eq!(check.len(), 8, "{secret}");
    assert!(check.bytes().all(|b| b.is_ascii_hexdigit()));
    let message = Some(json!({"data": 1}));
    assert_eq!(call(&server, &secret, "POST", "/v1/channels/c/messages", message.clone()).await.0, 200);
    let wrong = format!("{body}_{}", if check == "00000000" { "00000001" } else { "00000000" });
    assert_eq!(
        call(&server, &wrong, "POST", "/v1/channels/c/messages", message.clone()).await,
        (401, "invalid_api_key".into())
    );
    assert_eq!(
        call(&server, body, "POST", "/v1/channels/c/messages", message).await.0,
        200,
        "keys made before the checksum still work"
    );

    let path = format!("/v1/tenants/{}/apps/{}/api-keys", server.tenant_id(), server.app_id());
    for (capabilities, name) in [
        (json!({"grants": [{"channel": "bad channel", "allow": ["publish"]}]}), "invalid_channel"),
        (json!({"grants": [{"channel": "x", "allow": ["fly"]}]}), "invalid_frame"),
        (json!({"grants": [], "admin": true}), "invalid_frame"),
    ] {
        let body = json!({"name": "k", "capabilities": capabilities});
        let (status, reply) = server.manage("POST", &path, server.operator_token(), Some(&body)).await;
        assert_eq!((status, reply["error"]["name"].as_str()), (400, Some(name)), "{capabilities}");
    }
}
