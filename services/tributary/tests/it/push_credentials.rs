//! An app's push and SMS credentials through the management API: checked as the workers will
//! read them, stored encrypted, never shown again.

use serde_json::{Value, json};
use tributary_delivery::push::webpush::VapidKey;
use tributary_store::PushService;
use tributary_testkit::TestServer;
use tributary_testkit::push::KeyPair;

async fn put(server: &TestServer, service: &str, body: Value) -> (u16, Value) {
    let path =
        format!("/v1/tenants/{}/apps/{}/push-credentials/{service}", server.tenant_id(), server.app_id());
    server.manage("PUT", &path, server.operator_token(), Some(&body)).await
}

#[tokio::test]
async fn credentials_of_each_service_are_checked_kept_secret_and_replaced() {
    let server = TestServer::spawn_configured(|config| config.delivery.worker = false).await;
    let (apns_key, fcm_key, vapid_key) = (KeyPair::p256(), KeyPair::rsa(), KeyPair::p256());
    let (status, apns) = put(
        &server,
        "apns",
        json!({"team_id": "TEAM123456", "key_id": "KEY7654321",
        "topic": "com.example.shop", "environment": "sandbox", "key": apns_key.private_pem}),
    )
    .await;
    assert_eq!(status, 200, "{apns}");
    assert_eq!(
        apns["settings"],
        json!({"team_id": "TEAM123456", "key_id": "KEY7654321",
        "topic": "com.example.shop", "environment": "sandbox"})
    );
    let account: Value = serde_json::from_str(&fcm_key.service_account("shop-7")).unwrap();
    let (status, fcm) = put(&server, "fcm", json!({"service_account": account})).await;
    assert_eq!((status, &fcm["settings"]), (200, &json!({"project_id": "shop-7"})), "{fcm}");
    let (status, web) = put(
        &server,
        "webpush",
        json!({"subject": "mailto:ops@example.com", "private_key": vapid_key.private_pem}),
    )
    .await;
    assert_eq!(status, 200, "{web}");
    let public =
        VapidKey::from_pem(&vapid_key.private_pem, "mailto:ops@example.com").unwrap().public_key().to_owned();
    assert_eq!(web["settings"]["public_key"], public.as_str(), "the applicationServerKey");
    let (status, sms) = put(
        &server,
        "twilio",
        json!({"account_sid": format!("AC{}", "0".repeat(32)),
        "secret": "auth-token", "from": "+15005550006"}),
    )
    .await;
    assert_eq!((status, &sms["settings"]["from"]), (200, &json!("+15005550006")), "{sms}");

    let path = format!("/v1/tenants/{}/apps/{}/push-credentials", server.tenant_id(), server.app_id());
    let (status, listed) = server.manage("GET", &path, server.operator_token(), None).await;
    assert_eq!(status, 200);
    let services: Vec<&str> =
        listed.as_array().unwrap().iter().filter_map(|c| c["service"].as_str()).collect();
    assert_eq!(services, ["apns", "fcm", "webpush", "twilio"]);
    let shown = listed.to_string();
    assert!(!shown.contains("PRIVATE KEY") && !shown.contains("auth-token"), "no secret is shown: {shown}");
    // The workers read exactly what was set.
    let (_, secret) = server.store().push_secret(server.app_id(), PushService::Apns).await.unwrap().unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&secret), apns_key.private_pem.as_bytes());

    let one = format!("{path}/twilio");
    assert_eq!(server.manage("DELETE", &one, server.operator_token(), None).await.0, 204);
    assert_eq!(server.manage("DELETE", &one, server.operator_token(), None).await.0, 404);
}

#[tokio::test]
async fn credentials_that_would_not_work_are_refused_with_the_reason_and_nothing_is_stored() {
    let server = TestServer::spawn_configured(|config| config.delivery.worker = false).await;
    let p256 = KeyPair::p256();
    let cases = [
        (
            "apns",
            json!({"team_id": "TEAM123456", "key_id": "KEY7654321", "topic": "t", "key": "nope"}),
            "P-256",
        ),
        (
            "apns",
            json!({"team_id": "TEAM 12", "key_id": "KEY7654321", "topic": "t", "key": p256.private_pem}),
            "team id",
        ),
        (
            "apns",
            json!({"team_id": "TEAM123456", "key_id": "KEY7654321", "topic": "t", "environment": "staging", "key": p256.private_pem}),
            "environment",
        ),
        ("fcm", json!({"service_account": 5}), "service_account"),
        ("fcm", json!({"service_account": {"type": "service_account"}}), "service-account"),
        ("webpush", json!({"subject": "ops@example.com", "private_key": p256.private_pem}), "subject"),
        (
            "webpush",
            json!({"subject": "mailto:ops@example.com", "private_key": KeyPair::rsa().private_pem}),
            "P-256",
        ),
        ("twilio", json!({"account_sid": "AC1", "secret": "t", "from": "+15005550006"}), "account SID"),
        (
            "twilio",
            json!({"account_sid": format!("AC{}", "0".repeat(32)), "secret": "t", "from": "+15005550006",
                          "messaging_service_sid": format!("MG{}", "0".repeat(32))}),
            "exactly one",
        ),
        (
            "twilio",
            json!({"account_sid": format!("AC{}", "0".repeat(32)), "secret": "t", "from": "5550006"}),
            "E.164",
        ),
        ("pigeon", json!({}), "apns, fcm, webpush or twilio"),
    ];
    for (service, body, why) in cases {
        let (status, answer) = put(&server, service, body.clone()).await;
        assert_eq!(status, 400, "{service} {body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{service} {body}: {message}");
    }
    let (status, answer) = put(&server, "apns", json!({"team_id": "T", "key": "k", "extra": 1})).await;
    assert_eq!((status, answer["error"]["name"].as_str()), (400, Some("invalid_frame")), "{answer}");
    assert!(server.store().push_credentials(server.tenant_id(), server.app_id()).await.unwrap().is_empty());
}

#[tokio::test]
async fn tributary_admin_sets_lists_and_deletes_push_credentials() {
    use crate::management_api::admin;
    let server = TestServer::spawn_configured(|config| config.delivery.worker = false).await;
    let (tenant, app) = (server.tenant_id().to_owned(), server.app_id().to_owned());
    let key = KeyPair::p256();
    let body = json!({"subject": "mailto:ops@example.com", "private_key": key.private_pem}).to_string();
    let (ok, out, err) = admin(&server, &["push-credentials", "set", &tenant, &app, "webpush", &body]).await;
    assert!(ok, "{err}");
    let set: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(set["service"], "webpush", "{out}");
    let (ok, out, _) = admin(&server, &["push-credentials", "list", &tenant, &app]).await;
    assert!(ok && out.contains("\"webpush\"") && !out.contains("PRIVATE KEY"), "{out}");
    // A body the API refuses: the CLI prints its error and fails.
    let (ok, _, err) =
        admin(&server, &["push-credentials", "set", &tenant, &app, "webpush", "{\"subject\": 1}"]).await;
    assert!(!ok && err.contains("invalid_frame"), "{err}");
    let (ok, _, err) = admin(&server, &["push-credentials", "delete", &tenant, &app, "webpush"]).await;
    assert!(ok, "{err}");
    assert!(server.store().push_credentials(&tenant, &app).await.unwrap().is_empty());
}
