//! Tenant isolation of the management API, route by route: another tenant's token gets
//! `not_found` for every object of ours (as if it did not exist), a token without the role
//! gets `permission_denied`, no token gets `unauthorized`, and nothing of ours changes.

use serde_json::{Value, json};
use tributary_testkit::TestServer;

use crate::management_api::{app_with_key, tenant_with_owner};

/// Every management route: method, path (with `{tenant}`, `{app}`, `{key}`, `{kid}`,
/// `{token}` placeholders), a valid body, and the least role that may call it.
const ROUTES: &[(&str, &str, &str, &str)] = &[
    ("GET", "/v1/tenants/{tenant}", "", "read_only"),
    ("POST", "/v1/tenants/{tenant}/revocations", r#"{"all":true}"#, "admin"),
    ("GET", "/v1/tenants/{tenant}/audit-events", "", "admin"),
    ("GET", "/v1/tenants/{tenant}/usage", "", "read_only"),
    ("GET", "/v1/tenants/{tenant}/limits", "", "read_only"),
    ("GET", "/v1/tenants/{tenant}/apps", "", "read_only"),
    ("POST", "/v1/tenants/{tenant}/apps", r#"{"name":"intruder"}"#, "developer"),
    ("GET", "/v1/tenants/{tenant}/apps/{app}", "", "read_only"),
    ("GET", "/v1/tenants/{tenant}/apps/{app}/api-keys", "", "read_only"),
    ("POST", "/v1/tenants/{tenant}/apps/{app}/api-keys", r#"{"name":"intruder"}"#, "developer"),
    ("POST", "/v1/tenants/{tenant}/apps/{app}/api-keys/{key}/revoke", "", "developer"),
    ("POST", "/v1/tenants/{tenant}/apps/{app}/api-keys/{key}/rotate", r#"{"overlap_secs":0}"#, "developer"),
    ("GET", "/v1/tenants/{tenant}/apps/{app}/signing-keys", "", "read_only"),
    ("POST", "/v1/tenants/{tenant}/apps/{app}/signing-keys", "", "developer"),
    ("POST", "/v1/tenants/{tenant}/apps/{app}/signing-keys/{kid}/revoke", "", "developer"),
    ("POST", "/v1/tenants/{tenant}/apps/{app}/signing-keys/{kid}/bump-generation", "", "developer"),
    ("POST", "/v1/tenants/{tenant}/apps/{app}/revocations", r#"{"all":true}"#, "developer"),
    ("GET", "/v1/tenants/{tenant}/apps/{app}/grants", "", "read_only"),
    ("GET", "/v1/tenants/{tenant}/apps/{app}/namespaces", "", "read_only"),
    ("POST", "/v1/tenants/{tenant}/apps/{app}/namespaces/intruder", r#"{"presence":false}"#, "developer"),
    ("DELETE", "/v1/tenants/{tenant}/apps/{app}/namespaces/chat", "", "developer"),
    ("GET", "/v1/tenants/{tenant}/management-tokens", "", "admin"),
    ("POST", "/v1/tenants/{tenant}/invitations", r#"{"email":"x@y.z","role":"read_only"}"#, "admin"),
    ("GET", "/v1/tenants/{tenant}/members", "", "read_only"),
    (
        "POST",
        "/v1/tenants/{tenant}/members/usr_00000000000000000000000000/role",
        r#"{"role":"read_only"}"#,
        "admin",
    ),
    ("GET", "/v1/tenants/{tenant}/invitations", "", "admin"),
    ("DELETE", "/v1/tenants/{tenant}/invitations/inv_00000000000000000000000000", "", "admin"),
    ("DELETE", "/v1/tenants/{tenant}/members/usr_00000000000000000000000000", "", "admin"),
    ("POST", "/v1/tenants/{tenant}/management-tokens", r#"{"name":"x","role":"read_only"}"#, "admin"),
    ("POST", "/v1/tenants/{tenant}/management-tokens/{token}/revoke", "", "admin"),
];

/// Operator-only routes: a tenant's token gets `permission_denied` whatever its role.
const OPERATOR_ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/v1/tenants", ""),
    ("POST", "/v1/tenants", r#"{"name":"mine"}"#),
    ("POST", "/v1/tenants/{tenant}/status", r#"{"status":"suspended"}"#),
    ("GET", "/v1/plans", ""),
    ("GET", "/v1/operator-tokens", ""),
    ("POST", "/v1/operator-tokens", r#"{"name":"mine"}"#),
    ("POST", "/v1/operator-tokens/{token}/revoke", ""),
    ("POST", "/v1/tenants/{tenant}/plan", r#"{"plan":"free"}"#),
    ("POST", "/v1/tenants/{tenant}/limits", r#"{"max_connections":1}"#),
];

/// One tenant's objects.
#[derive(Clone)]
struct Ids {
    tenant: String,
    app: String,
    key: String,
    kid: String,
    token: String,
}

impl Ids {
    fn fill(&self, path: &str) -> String {
        path.replace("{tenant}", &self.tenant)
            .replace("{app}", &self.app)
            .replace("{key}", &self.key)
            .replace("{kid}", &self.kid)
            .replace("{token}", &self.token)
    }
}

async fn tenant(server: &TestServer, name: &str) -> (Ids, String) {
    let (tenant, owner) = tenant_with_owner(server, name).await;
    let (app, signing_key, _) = app_with_key(server, &tenant, &owner, "prod").await;
    let app_id = app["id"].as_str().unwrap().to_owned();
    let (_, keys) =
        server.manage("GET", &format!("/v1/tenants/{tenant}/apps/{app_id}/api-keys"), &owner, None).await;
    let (_, tokens) =
        server.manage("GET", &format!("/v1/tenants/{tenant}/management-tokens"), &owner, None).await;
    let ids = Ids {
        key: keys[0]["id"].as_str().unwrap().to_owned(),
        kid: signing_key["kid"].as_str().unwrap().to_owned(),
        token: tokens[0]["id"].as_str().unwrap().to_owned(),
        app: app_id,
        tenant,
    };
    (ids, owner)
}

async fn call(server: &TestServer, method: &str, path: &str, body: &str, token: &str) -> (u16, Value) {
    let body: Option<Value> = (!body.is_empty()).then(|| serde_json::from_str(body).unwrap());
    server.manage(method, path, token, body.as_ref()).await
}

/// Everything a tenant has, as its owner sees it (ids, generations, revocations, audit).
async fn snapshot(server: &TestServer, ids: &Ids, owner: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    for path in [
        "/v1/tenants/{tenant}",
        "/v1/tenants/{tenant}/apps",
        "/v1/tenants/{tenant}/apps/{app}/api-keys",
        "/v1/tenants/{tenant}/apps/{app}/signing-keys",
        "/v1/tenants/{tenant}/management-tokens",
        "/v1/tenants/{tenant}/audit-events?limit=500",
    ] {
        let (status, body) = server.manage("GET", &ids.fill(path), owner, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        seen.push(body);
    }
    seen
}

#[tokio::test]
async fn another_tenants_token_finds_nothing_of_ours_on_any_route() {
    let server = TestServer::spawn().await;
    let (ours, our_owner) = tenant(&server, "Ours").await;
    let (theirs, their_owner) = tenant(&server, "Theirs").await;
    let before = snapshot(&server, &ours, &our_owner).await;

    for (method, path, body, _) in ROUTES {
        // Our ids with their token.
        let (status, reply) = call(&server, method, &ours.fill(path), body, &their_owner).await;
        assert_eq!(
            (status, reply["error"]["name"].as_str()),
            (404, Some("not_found")),
            "{method} {path}: {reply}"
        );
        // Their tenant with our app (and our keys): our objects are not theirs either.
        let mixed = Ids { tenant: theirs.tenant.clone(), ..ours.clone() };
        if path.contains("{app}") || path.contains("{token}") {
            let (status, reply) = call(&server, method, &mixed.fill(path), body, &their_owner).await;
            assert_eq!(
                (status, reply["error"]["name"].as_str()),
                (404, Some("not_found")),
                "mixed {method} {path}: {reply}"
            );
        }
        // No credentials, or credentials that are not a management token (an API key).
        let (status, reply) = call(&server, method, &ours.fill(path), body, "").await;
        assert_eq!((status, reply["error"]["name"].as_str()), (401, Some("unauthorized")), "{method} {path}");
        let (status, _) = call(&server, method, &ours.fill(path), body, server.api_key()).await;
        assert_eq!(status, 401, "an API key is not a management token: {method} {path}");
    }
    for (method, path, body) in OPERATOR_ROUTES {
        let (status, reply) = call(&server, method, &ours.fill(path), body, &their_owner).await;
        assert_eq!(
            (status, reply["error"]["name"].as_str()),
            (403, Some("permission_denied")),
            "{method} {path}"
        );
        let (status, _) = call(&server, method, &ours.fill(path), body, &our_owner).await;
        assert_eq!(status, 403, "our own owner is not the operator either: {method} {path}");
    }

    assert_eq!(snapshot(&server, &ours, &our_owner).await, before, "nothing of ours changed");
}

#[tokio::test]
async fn each_route_refuses_roles_below_its_own_and_changes_nothing() {
    let server = TestServer::spawn().await;
    let (ours, owner) = tenant(&server, "Ours").await;
    let order = ["read_only", "developer", "admin", "owner"];
    let mut tokens = std::collections::HashMap::new();
    for role in &order[..3] {
        let body = json!({"name": role, "role": role});
        let (_, token) = server
            .manage("POST", &ours.fill("/v1/tenants/{tenant}/management-tokens"), &owner, Some(&body))
            .await;
        tokens.insert(*role, token["secret"].as_str().unwrap().to_owned());
    }
    let before = snapshot(&server, &ours, &owner).await;
    for (method, path, body, least) in ROUTES {
        let least = order.iter().position(|r| r == least).unwrap();
        for role in &order[..least] {
            let (status, reply) = call(&server, method, &ours.fill(path), body, &tokens[role]).await;
            assert_eq!(
                (status, reply["error"]["name"].as_str()),
                (403, Some("permission_denied")),
                "{role} on {method} {path}: {reply}"
            );
        }
    }
    assert_eq!(snapshot(&server, &ours, &owner).await, before, "refused calls changed nothing");
}
