//! The GraphQL API: the REST operations through the same handlers, with the same scoping,
//! roles and errors.

use serde_json::{Value, json};
use tributary_testkit::TestServer;

use crate::management_api::tenant_with_owner;

pub(crate) async fn graphql(server: &TestServer, token: &str, query: &str, variables: Value) -> (u16, Value) {
    let body = json!({"query": query, "variables": variables});
    server.manage("POST", "/graphql", token, Some(&body)).await
}

#[tokio::test]
async fn the_console_runs_the_same_operations_with_the_same_rules() {
    let server = TestServer::spawn().await;
    let operator = server.operator_token();
    let (status, reply) = graphql(
        &server,
        operator,
        "mutation($n: String!) { createTenant(name: $n) }",
        json!({"n": "Initech"}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.get("errors").is_none(), "{reply}");
    let tenant = reply["data"]["createTenant"]["id"].as_str().unwrap().to_owned();

    let (_, reply) = graphql(
        &server,
        operator,
        "mutation($t: String!) { app: createApp(tenant: $t, name: \"prod\") }",
        json!({"t": tenant}),
    )
    .await;
    let app = reply["data"]["app"]["id"].as_str().unwrap().to_owned();
    assert!(reply["data"]["app"]["signing_key"]["secret"].is_string(), "{reply}");
    let (_, reply) = graphql(
        &server,
        operator,
        "mutation($t: String!, $a: String!) { createApiKey(tenant: $t, app: $a, name: \"k\", capabilities: {grants: [{channel: \"news:*\", allow: [\"publish\"]}]}) }",
        json!({"t": tenant, "a": app}),
    )
    .await;
    assert_eq!(reply["data"]["createApiKey"]["capabilities"]["grants"][0]["channel"], "news:*", "{reply}");
    let (_, reply) = graphql(
        &server,
        operator,
        "query($t: String!, $a: String!) { tenant(tenant: $t) apps(tenant: $t) apiKeys(tenant: $t, app: $a) auditEvents(tenant: $t, limit: 3) }",
        json!({"t": tenant, "a": app}),
    )
    .await;
    assert_eq!(reply["data"]["tenant"]["name"], "Initech", "{reply}");
    assert_eq!(reply["data"]["apps"][0]["id"], app.as_str());
    assert!(reply["data"]["apiKeys"][0].get("secret").is_none(), "lists show no secrets");
    assert_eq!(reply["data"]["auditEvents"][0]["action"], "api_key.create");

    // Another tenant's owner: not found, with the REST error's code and name.
    let (_, other_owner) = tenant_with_owner(&server, "Other").await;
    let (_, reply) =
        graphql(&server, &other_owner, "query($t: String!) { tenant(tenant: $t) }", json!({"t": tenant}))
            .await;
    assert_eq!(reply["errors"][0]["extensions"]["name"], "not_found", "{reply}");
    assert_eq!(reply["errors"][0]["extensions"]["code"], 1016);
    assert_eq!(reply["data"], Value::Null);
    let (_, reply) =
        graphql(&server, &other_owner, "mutation { createTenant(name: \"mine\") }", json!({})).await;
    assert_eq!(reply["errors"][0]["extensions"]["name"], "permission_denied", "{reply}");
    // Bad input keeps its REST error.
    let (_, reply) = graphql(
        &server,
        operator,
        "mutation($t: String!) { setTenantStatus(tenant: $t, status: \"paused\") }",
        json!({"t": tenant}),
    )
    .await;
    assert_eq!(reply["errors"][0]["extensions"]["name"], "invalid_parameter", "{reply}");
    // No credentials: refused before GraphQL runs.
    let (status, _) = graphql(&server, "", "{ tenants }", json!({})).await;
    assert_eq!(status, 401);
    // A syntax error is a GraphQL error, and the schema is published.
    let (status, reply) = graphql(&server, operator, "{ tenants(", json!({})).await;
    assert_eq!(status, 200);
    assert!(reply["errors"][0]["message"].is_string(), "{reply}");
    let sdl = server
        .http()
        .get(format!("{}/graphql/schema", server.http_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(sdl.contains("createApiKey") && sdl.contains("bumpKeyGeneration"), "{sdl}");
}

#[tokio::test]
async fn push_credentials_through_graphql_are_typed_checked_and_never_show_the_secret() {
    let server = TestServer::spawn_configured(|config| config.delivery.worker = false).await;
    let operator = server.operator_token();
    let vars = |extra: Value| {
        let mut all = json!({"t": server.tenant_id(), "a": server.app_id()});
        all.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        all
    };
    let key = tributary_testkit::push::KeyPair::p256();
    let set = "mutation($t: String!, $a: String!, $s: String!, $c: JSON!) {
        setPushCredentials(tenant: $t, app: $a, service: $s, credentials: $c) { service settings disabledReason } }";
    let credentials = json!({"subject": "mailto:ops@example.com", "private_key": key.private_pem});
    let (status, reply) =
        graphql(&server, operator, set, vars(json!({"s": "webpush", "c": credentials}))).await;
    assert_eq!(status, 200, "{reply}");
    let created = &reply["data"]["setPushCredentials"];
    assert_eq!(
        (created["service"].as_str(), &created["disabledReason"]),
        (Some("webpush"), &Value::Null),
        "{reply}"
    );
    assert!(created["settings"]["public_key"].as_str().is_some_and(|k| k.len() == 87), "{reply}");

    let list =
        "query($t: String!, $a: String!) { pushCredentials(tenant: $t, app: $a) { service settings } }";
    let (_, reply) = graphql(&server, operator, list, vars(json!({}))).await;
    assert_eq!(reply["data"]["pushCredentials"][0]["service"], "webpush");
    assert!(!reply.to_string().contains("PRIVATE KEY"), "{reply}");

    // Refused as REST refuses it, with its error's name.
    let bad = json!({"subject": "ops@example.com", "private_key": key.private_pem});
    let (_, reply) = graphql(&server, operator, set, vars(json!({"s": "webpush", "c": bad}))).await;
    assert_eq!(reply["errors"][0]["extensions"]["name"], "invalid_parameter", "{reply}");
    let delete = "mutation($t: String!, $a: String!, $s: String!) { deletePushCredentials(tenant: $t, app: $a, service: $s) }";
    let (_, reply) = graphql(&server, operator, delete, vars(json!({"s": "webpush"}))).await;
    assert_eq!(reply["data"]["deletePushCredentials"], true, "{reply}");
    let (_, reply) = graphql(&server, operator, delete, vars(json!({"s": "webpush"}))).await;
    assert_eq!(reply["errors"][0]["extensions"]["name"], "not_found", "{reply}");
}
