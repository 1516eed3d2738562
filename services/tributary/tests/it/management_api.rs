//! The management API (`/v1/tenants…`): an operator sets a tenant up, the tenant's own tokens
//! run it, every action is audited, and bad input is refused without writing anything.

use serde_json::{Value, json};
use tributary_testkit::TestServer;

/// Creates a tenant as the operator and an owner token for it; returns (tenant id, token).
pub async fn tenant_with_owner(server: &TestServer, name: &str) -> (String, String) {
    let operator = server.operator_token();
    let (status, tenant) = server.manage("POST", "/v1/tenants", operator, Some(&json!({"name": name}))).await;
    assert_eq!(status, 201, "{tenant}");
    let id = tenant["id"].as_str().unwrap().to_owned();
    let body = json!({"name": "owner", "role": "owner"});
    let (status, token) =
        server.manage("POST", &format!("/v1/tenants/{id}/management-tokens"), operator, Some(&body)).await;
    assert_eq!(status, 201, "{token}");
    (id, token["secret"].as_str().unwrap().to_owned())
}

/// Creates an app with an API key in a tenant; returns (app, signing key, API key secret).
pub async fn app_with_key(
    server: &TestServer,
    tenant: &str,
    token: &str,
    name: &str,
) -> (Value, Value, String) {
    let (status, app) = server
        .manage("POST", &format!("/v1/tenants/{tenant}/apps"), token, Some(&json!({"name": name})))
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap();
    let path = format!("/v1/tenants/{tenant}/apps/{app_id}/api-keys");
    let (status, key) = server.manage("POST", &path, token, Some(&json!({"name": "backend"}))).await;
    assert_eq!(status, 201, "{key}");
    let secret = key["secret"].as_str().unwrap().to_owned();
    let signing_key = app["signing_key"].clone();
    (app, signing_key, secret)
}

#[tokio::test]
async fn an_operator_sets_up_a_tenant_whose_own_tokens_then_run_it() {
    let server = TestServer::spawn().await;
    let (tenant, owner) = tenant_with_owner(&server, "Acme").await;
    let (status, shown) = server.manage("GET", &format!("/v1/tenants/{tenant}"), &owner, None).await;
    assert_eq!(
        (status, shown["status"].as_str(), shown["name"].as_str()),
        (200, Some("active"), Some("Acme"))
    );

    let (app, signing_key, api_key) = app_with_key(&server, &tenant, &owner, "prod").await;
    let app_id = app["id"].as_str().unwrap();
    assert_eq!(signing_key["generation"], 1);
    assert!(
        signing_key["secret"].as_str().is_some_and(|s| s.len() == 43),
        "the secret is shown once: {signing_key}"
    );
    assert!(api_key.starts_with("trb_key_"));

    // The new app serves clients at once: mint with its API key, connect, publish, receive.
    let http = server.http();
    let minted: Value = http
        .post(format!("{}/v1/tokens", server.http_url()))
        .bearer_auth(&api_key)
        .json(&json!({"client_id": "ada", "capabilities": [{"channel": "room", "allow": ["subscribe"]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(minted["token_id"].as_str().is_some_and(|id| id.starts_with("tok_")), "{minted}");
    let mut ws = server.ws(minted["token"].as_str().unwrap()).await;
    ws.request(json!({"op": "subscribe", "channel": "room"})).await.unwrap();
    let published = http
        .post(format!("{}/v1/channels/room/messages", server.http_url()))
        .bearer_auth(&api_key)
        .json(&json!({"data": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    assert_eq!(ws.messages(1).await.unwrap()[0]["data"], "hello");

    // The grant is on record, and lists show no secrets.
    let (status, grants) = server
        .manage("GET", &format!("/v1/tenants/{tenant}/apps/{app_id}/grants?client_id=ada"), &owner, None)
        .await;
    assert_eq!(status, 200, "{grants}");
    assert_eq!(grants[0]["token_id"], minted["token_id"]);
    assert_eq!(grants[0]["capabilities"], json!([{"channel": "room", "allow": ["subscribe"]}]));
    let (_, keys) =
        server.manage("GET", &format!("/v1/tenants/{tenant}/apps/{app_id}/api-keys"), &owner, None).await;
    let (_, signing) =
        server.manage("GET", &format!("/v1/tenants/{tenant}/apps/{app_id}/signing-keys"), &owner, None).await;
    for list in [&keys, &signing] {
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
        assert!(list[0].get("secret").is_none(), "{list}");
    }

    // Every action is audited with its actor and request id.
    let response = http
        .post(format!("{}/v1/tenants/{tenant}/apps", server.http_url()))
        .bearer_auth(&owner)
        .header("x-request-id", "req-from-ci-42")
        .json(&json!({"name": "staging"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let (status, events) =
        server.manage("GET", &format!("/v1/tenants/{tenant}/audit-events"), &owner, None).await;
    assert_eq!(status, 200, "{events}");
    let actions: Vec<&str> =
        events.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "signing_key.create",
            "app.create",
            "api_key.create",
            "signing_key.create",
            "app.create",
            "management_token.create",
            "tenant.create"
        ],
        "newest first"
    );
    assert_eq!(events[1]["request_id"], "req-from-ci-42");
    assert!(events[1]["actor"].as_str().unwrap().starts_with("token:mt_"), "{events}");
    assert!(events[6]["actor"].as_str().unwrap().starts_with("operator:mt_"), "{events}");
}

#[tokio::test]
async fn roles_limit_what_a_token_may_do_and_cannot_be_escalated() {
    let server = TestServer::spawn().await;
    let (tenant, owner) = tenant_with_owner(&server, "Acme").await;
    let mut tokens = std::collections::HashMap::new();
    for role in ["read_only", "developer", "admin"] {
        let body = json!({"name": role, "role": role});
        let (status, token) = server
            .manage("POST", &format!("/v1/tenants/{tenant}/management-tokens"), &owner, Some(&body))
            .await;
        assert_eq!(status, 201, "{token}");
        tokens.insert(role, token["secret"].as_str().unwrap().to_owned());
    }
    let apps = format!("/v1/tenants/{tenant}/apps");
    let (status, body) =
        server.manage("POST", &apps, &tokens["read_only"], Some(&json!({"name": "x"}))).await;
    assert_eq!((status, body["error"]["name"].as_str()), (403, Some("permission_denied")), "{body}");
    assert_eq!(server.manage("GET", &apps, &tokens["read_only"], None).await.0, 200);
    assert_eq!(server.manage("POST", &apps, &tokens["developer"], Some(&json!({"name": "x"}))).await.0, 201);
    let mgmt = format!("/v1/tenants/{tenant}/management-tokens");
    assert_eq!(server.manage("GET", &mgmt, &tokens["developer"], None).await.0, 403, "admins manage tokens");
    let (status, body) =
        server.manage("POST", &mgmt, &tokens["admin"], Some(&json!({"name": "up", "role": "owner"}))).await;
    assert_eq!(
        (status, body["error"]["name"].as_str()),
        (403, Some("permission_denied")),
        "no escalation: {body}"
    );
    let (status, body) =
        server.manage("POST", &mgmt, &owner, Some(&json!({"name": "op", "role": "operator"}))).await;
    assert_eq!((status, body["error"]["name"].as_str()), (400, Some("invalid_parameter")), "{body}");
    // Tenants cannot list tenants or change their own status.
    assert_eq!(server.manage("GET", "/v1/tenants", &owner, None).await.0, 403);
    let status_path = format!("/v1/tenants/{tenant}/status");
    assert_eq!(server.manage("POST", &status_path, &owner, Some(&json!({"status": "active"}))).await.0, 403);
    // Nor can an admin revoke a token above its own role.
    let (_, list) = server.manage("GET", &mgmt, &owner, None).await;
    let owner_id = list.as_array().unwrap().iter().find(|t| t["role"] == "owner").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) =
        server.manage("POST", &format!("{mgmt}/{owner_id}/revoke"), &tokens["admin"], None).await;
    assert_eq!((status, body["error"]["name"].as_str()), (403, Some("permission_denied")), "{body}");
    assert_eq!(server.manage("GET", &apps, &owner, None).await.0, 200, "the owner token still works");
    // A revoked token stops working at once.
    let admin_id = list.as_array().unwrap().iter().find(|t| t["name"] == "admin").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(server.manage("POST", &format!("{mgmt}/{admin_id}/revoke"), &owner, None).await.0, 204);
    let (status, body) = server.manage("GET", &apps, &tokens["admin"], None).await;
    assert_eq!((status, body["error"]["name"].as_str()), (401, Some("unauthorized")), "{body}");
}

#[tokio::test]
async fn bad_input_on_every_write_gets_a_clear_error_and_writes_nothing() {
    let server = TestServer::spawn().await;
    let (tenant, owner) = tenant_with_owner(&server, "Acme").await;
    let (app, signing_key, _) = app_with_key(&server, &tenant, &owner, "prod").await;
    let app_id = app["id"].as_str().unwrap();
    let kid = signing_key["kid"].as_str().unwrap();
    let audit = format!("/v1/tenants/{tenant}/audit-events?limit=500");
    let before = server.manage("GET", &audit, &owner, None).await.1;
    let a = format!("/v1/tenants/{tenant}/apps/{app_id}");
    let cases: Vec<(String, Value, u16, &str)> = vec![
        (format!("/v1/tenants/{tenant}/apps"), json!({"name": ""}), 400, "invalid_parameter"),
        (format!("/v1/tenants/{tenant}/apps"), json!({"name": "a\u{1}b"}), 400, "invalid_parameter"),
        (format!("/v1/tenants/{tenant}/apps"), json!({"name": "x".repeat(101)}), 400, "invalid_parameter"),
        (format!("/v1/tenants/{tenant}/apps"), json!({"name": "prod"}), 409, "already_exists"),
        (format!("/v1/tenants/{tenant}/apps"), json!({"name": "p", "extra": 1}), 400, "invalid_frame"),
        (format!("/v1/tenants/{tenant}/apps"), json!({"nom": "p"}), 400, "invalid_frame"),
        (format!("{a}/api-keys"), json!({"name": 7}), 400, "invalid_frame"),
        (format!("{a}/api-keys/key_nope/revoke"), Value::Null, 404, "not_found"),
        (format!("{a}/signing-keys/sk_nope/revoke"), Value::Null, 404, "not_found"),
        (format!("{a}/signing-keys/sk_nope/bump-generation"), Value::Null, 404, "not_found"),
        (format!("{a}/revocations"), json!({}), 400, "invalid_parameter"),
        (format!("{a}/revocations"), json!({"token_id": "t", "client_id": "c"}), 400, "invalid_parameter"),
        (format!("{a}/revocations"), json!({"client_id": "bad\u{0}id"}), 400, "invalid_parameter"),
        (format!("{a}/revocations"), json!({"client_id": "x".repeat(200)}), 400, "invalid_parameter"),
        (format!("{a}/revocations"), json!({"all": false}), 400, "invalid_parameter"),
        (format!("/v1/tenants/{tenant}/revocations"), json!({"all": false}), 400, "invalid_parameter"),
        (
            format!("/v1/tenants/{tenant}/management-tokens"),
            json!({"name": "t", "role": "god"}),
            400,
            "invalid_parameter",
        ),
        (format!("/v1/tenants/{tenant}/management-tokens/mt_nope/revoke"), Value::Null, 404, "not_found"),
    ];
    for (path, body, status, name) in &cases {
        let body = (!body.is_null()).then_some(body);
        let (got, reply) = server.manage("POST", path, &owner, body).await;
        assert_eq!(
            (got, reply["error"]["name"].as_str()),
            (*status, Some(*name)),
            "{path} {body:?}: {reply}"
        );
        assert!(reply["error"]["code"].is_u64() && reply["error"]["message"].is_string(), "{reply}");
    }
    // Not JSON at all, and the wrong content.
    let raw = server
        .http()
        .post(format!("{}/v1/tenants/{tenant}/apps", server.http_url()))
        .bearer_auth(&owner)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert_eq!(raw.json::<Value>().await.unwrap()["error"]["name"], "invalid_json");
    let operator = server.operator_token();
    let (status, reply) = server
        .manage("POST", &format!("/v1/tenants/{tenant}/status"), operator, Some(&json!({"status": "paused"})))
        .await;
    assert_eq!((status, reply["error"]["name"].as_str()), (400, Some("invalid_parameter")), "{reply}");
    let (status, _) =
        server.manage("GET", &format!("/v1/tenants/{tenant}/audit-events?limit=0"), &owner, None).await;
    assert_eq!(status, 400);

    // Nothing was written: the same apps, keys and audit trail as before.
    let after = server.manage("GET", &audit, &owner, None).await.1;
    assert_eq!(before, after, "no failed request left an audit event");
    let (_, apps) = server.manage("GET", &format!("/v1/tenants/{tenant}/apps"), &owner, None).await;
    assert_eq!(apps.as_array().map(Vec::len), Some(1), "{apps}");
    let (_, keys) = server.manage("GET", &format!("{a}/signing-keys"), &owner, None).await;
    assert_eq!((keys[0]["kid"].as_str(), keys[0]["generation"].as_i64()), (Some(kid), Some(1)));
}

/// Runs `tributary admin` against `server` as the operator; returns (success, stdout, stderr).
pub(crate) async fn admin(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("admin")
        .args(args)
        .args(["--url", &server.http_url(), "--token", server.operator_token()])
        .env("TRIBUTARY_DATA_DIR", "/nonexistent")
        .output()
        .await
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[tokio::test]
async fn tributary_admin_runs_the_operators_tasks_through_the_api() {
    let server = TestServer::spawn().await;
    let (ok, out, err) = admin(&server, &["tenants", "create", "Globex"]).await;
    assert!(ok, "{err}");
    let tenant: Value = serde_json::from_str(&out).unwrap();
    let id = tenant["id"].as_str().unwrap();
    let (ok, out, err) = admin(&server, &["apps", "create", id, "prod"]).await;
    assert!(ok, "{err}");
    let app: Value = serde_json::from_str(&out).unwrap();
    assert!(app["signing_key"]["secret"].is_string(), "{app}");
    let app_id = app["id"].as_str().unwrap();
    let (ok, out, _) = admin(&server, &["api-key", id, app_id]).await;
    assert!(ok && out.contains("trb_key_"), "{out}");
    let (ok, out, _) = admin(&server, &["revoke", id, "--app", app_id, "--client-id", "bob"]).await;
    assert!(ok && out.contains("\"client\""), "{out}");

    let (ok, out, _) = admin(&server, &["tenants", "suspend", id]).await;
    assert!(ok && out.contains("\"suspended\""), "{out}");
    let (_, shown) = server.manage("GET", &format!("/v1/tenants/{id}"), server.operator_token(), None).await;
    assert_eq!(shown["status"], "suspended");
    let (ok, out, _) = admin(&server, &["tenants", "activate", id]).await;
    assert!(ok && out.contains("\"active\""), "{out}");

    let (ok, out, err) = admin(&server, &["tenants", "plan", id, "free"]).await;
    assert!(ok && out.contains("\"free\""), "{err}");
    let (ok, out, err) =
        admin(&server, &["tenants", "limits", id, "--set", r#"{"max_connections": 7}"#]).await;
    assert!(ok, "{err}");
    let limits: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (limits["limits"]["max_connections"].as_i64(), limits["limits"]["max_publish_rate"].as_i64()),
        (Some(7), Some(50))
    );
    let (ok, out, _) = admin(&server, &["invite", id, "dev@globex.test", "--role", "developer"]).await;
    assert!(ok && out.contains("trbi_inv_"), "{out}");
    let (ok, out, _) = admin(&server, &["operator-token", "create", "ci"]).await;
    assert!(ok && out.contains("trbm_mt_"), "{out}");
    let (ok, out, _) = admin(&server, &["operator-token", "list"]).await;
    assert!(ok && out.contains("\"ci\""), "{out}");
    let (ok, out, _) = admin(&server, &["plans"]).await;
    assert!(ok && out.contains("\"pro\""), "{out}");
    let (ok, out, _) = admin(&server, &["tenants", "usage", id]).await;
    assert!(ok && out.contains("\"granularity\": \"day\""), "{out}");

    let (ok, _, err) = admin(&server, &["tenants", "status", id, "paused"]).await;
    assert!(!ok && err.contains("400") && err.contains("invalid_parameter"), "a clear error: {err}");
    let (ok, out, _) = admin(&server, &["audit", id, "--limit", "3"]).await;
    assert!(ok, "{out}");
    let events: Value = serde_json::from_str(&out).unwrap();
    let actions: Vec<&str> =
        events.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["invitation.create", "tenant.limits", "tenant.plan.free"]);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["admin", "tenants", "list", "--url", &server.http_url(), "--token", "trbm_wrong"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.contains("401") && err.contains("unauthorized"), "{err}");
}

#[tokio::test]
async fn operators_manage_their_own_tokens() {
    let server = TestServer::spawn().await;
    let operator = server.operator_token();
    let (status, created) =
        server.manage("POST", "/v1/operator-tokens", operator, Some(&json!({"name": "ops-2"}))).await;
    assert_eq!(status, 201, "{created}");
    let second = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(created["role"], "operator");
    assert_eq!(server.manage("GET", "/v1/tenants", &second, None).await.0, 200);
    let (_, list) = server.manage("GET", "/v1/operator-tokens", operator, None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        server.manage("POST", &format!("/v1/operator-tokens/{id}/revoke"), operator, None).await.0,
        204
    );
    let (status, reply) = server.manage("GET", "/v1/tenants", &second, None).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (401, Some("unauthorized")));
    // A tenant's token is neither listed nor revocable here.
    let (tenant, owner) = tenant_with_owner(&server, "Acme").await;
    let (_, tokens) =
        server.manage("GET", &format!("/v1/tenants/{tenant}/management-tokens"), &owner, None).await;
    let tenant_token = tokens[0]["id"].as_str().unwrap();
    let path = format!("/v1/operator-tokens/{tenant_token}/revoke");
    assert_eq!(server.manage("POST", &path, operator, None).await.0, 404);
    assert_eq!(server.manage("GET", "/v1/operator-tokens", &owner, None).await.0, 403);
}

#[tokio::test]
async fn the_plans_history_retention_bounds_every_namespace() {
    let server = TestServer::spawn().await;
    server.publish("kept:a", json!("before")).await;
    let path = format!("/v1/tenants/{}/limits", server.tenant_id());
    let (status, _) = server
        .manage("POST", &path, server.operator_token(), Some(&json!({"history_retention_secs": 1})))
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.publish("short:a", json!("gone soon")).await;
    let (_, fresh) = server.get("/v1/channels/short:a/history").await;
    assert_eq!(fresh["messages"].as_array().map(Vec::len), Some(1), "there at first: {fresh}");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, history) = server.get("/v1/channels/short:a/history").await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["messages"], json!([]), "kept at most the plan's second: {history}");
}
