//! Namespaces in the control plane: an app's channel options change at runtime, on every node
//! within a second, and only for that app.

use std::time::Duration;

use serde_json::{Value, json};
use tributary_testkit::{TestServer, eventually};

async fn set(node: &TestServer, name: &str, options: Value) -> (u16, Value) {
    let path = format!("/v1/tenants/{}/apps/{}/namespaces/{name}", node.tenant_id(), node.app_id());
    node.manage("POST", &path, node.operator_token(), Some(&options)).await
}

#[tokio::test]
async fn an_apps_namespace_changes_its_channels_on_every_node_and_only_its_own() {
    let nodes = TestServer::spawn_cluster(2, |_| {}).await;
    let (first, second) = (&nodes[0], &nodes[1]);
    let writer = second.all_rights("writer").await;
    let mut ws = second.ws(&writer).await;
    assert_eq!(second.get("/v1/channels/live:scores/history").await.0, 200, "history on by default");

    let (status, shown) =
        set(first, "live", json!({"history_size": 0, "client_publish": false, "max_message_bytes": 16}))
            .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["options"]["presence"], true, "absent options take their defaults");
    eventually("the second node applies it", Duration::from_secs(1), || async {
        second.get("/v1/channels/live:scores/history").await.1["error"]["name"] == "disabled_in_namespace"
    })
    .await
    .unwrap();
    let reply = ws.request(json!({"op": "publish", "channel": "live:scores", "data": 1})).await.unwrap();
    assert_eq!(reply["error"]["name"], "disabled_in_namespace", "{reply}");
    let (status, reply) =
        second.post("/v1/channels/live:scores/messages", &json!({"data": "x".repeat(20)}), None).await;
    assert_eq!((status, reply["error"]["name"].as_str()), (413, Some("message_too_large")), "{reply}");
    // Other namespaces, and another tenant's app with a namespace of the same name, are untouched.
    assert_eq!(second.get("/v1/channels/chat:x/history").await.0, 200);
    let other = first.create_app("neighbour").await;
    let response = second
        .http()
        .get(format!("{}/v1/channels/live:scores/history", second.http_url()))
        .bearer_auth(&other.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The app's default namespace applies to names it does not list.
    let (status, _) = set(first, "_default", json!({"presence": false})).await;
    assert_eq!(status, 200);
    eventually("the default applies", Duration::from_secs(1), || async {
        second.get("/v1/channels/anything:x/presence").await.1["error"]["name"] == "disabled_in_namespace"
    })
    .await
    .unwrap();
    let path = format!("/v1/tenants/{}/apps/{}/namespaces", first.tenant_id(), first.app_id());
    let (_, list) = first.manage("GET", &path, first.operator_token(), None).await;
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["_default", "live"]);

    // Deleted, the file's options apply again.
    let (status, _) = first.manage("DELETE", &format!("{path}/live"), first.operator_token(), None).await;
    assert_eq!(status, 204);
    eventually("history is back", Duration::from_secs(1), || async {
        second.get("/v1/channels/live:scores/history").await.0 == 200
    })
    .await
    .unwrap();

    // Bad input.
    for (name, options, error) in [
        ("a:b", json!({}), "invalid_channel"),
        ("ok", json!({"history_size": 10, "history_ttl_secs": 0}), "invalid_parameter"),
        ("ok", json!({"max_message_bytes": 0}), "invalid_parameter"),
        ("ok", json!({"retention": 5}), "invalid_frame"),
    ] {
        let (status, reply) = set(first, name, options).await;
        assert_eq!((status, reply["error"]["name"].as_str()), (400, Some(error)), "{name}: {reply}");
    }
    let (status, _) = first.manage("DELETE", &format!("{path}/nothing"), first.operator_token(), None).await;
    assert_eq!(status, 404);
}
