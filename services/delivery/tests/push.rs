//! The push clients against the testkit's fakes of APNs and FCM, which verify the protocols
//! (HTTP/2 over TLS, ES256 provider tokens, the JWT-bearer grant, bearer tokens, VAPID, RFC 8291
//! encryption) independently of the clients.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use tributary_delivery::address::{AddressPolicy, IpRange};
use tributary_delivery::push::apns::{ApnsClient, ApnsKey, ApnsRequest, PushType, http2_client};
use tributary_delivery::push::fcm::{FcmClient, ServiceAccount};
use tributary_delivery::push::webpush::{
    MAX_PLAINTEXT_BYTES, Subscription, VapidKey, WebPushClient, WebPushOptions,
};
use tributary_delivery::push::{PushError, PushOutcome};
use tributary_delivery::sender::{Sender, SenderLimits};
use tributary_testkit::push::{ApnsFake, FakeSubscription, FcmFake, KeyPair, WebPushFake};

const TEAM: &str = "TEAM123456";
const KEY_ID: &str = "KEY7654321";

fn device(n: usize) -> String {
    format!("{n:064x}")
}

fn alert<'a>(token: &'a str, payload: &'a [u8]) -> ApnsRequest<'a> {
    ApnsRequest {
        device_token: token,
        topic: "com.example.shop",
        push_type: PushType::Alert,
        priority: Some(10),
        expiration: Some(1_900_000_000),
        collapse_id: Some("order-42"),
        id: None,
        payload,
    }
}

async fn apns() -> (ApnsFake, ApnsClient, ApnsKey) {
    let keys = KeyPair::p256();
    let fake = ApnsFake::start(TEAM, KEY_ID, &keys.public_pem).await;
    let http = http2_client(std::slice::from_ref(&fake.ca_pem), Duration::from_secs(10)).unwrap();
    let client = ApnsClient::new(&fake.url, http);
    let key = ApnsKey::from_p8(TEAM, KEY_ID, keys.private_pem.as_bytes()).unwrap();
    (fake, client, key)
}

#[tokio::test]
async fn apns_notifications_go_over_one_http2_connection_with_one_provider_token() {
    let (fake, client, key) = apns().await;
    let payload = br#"{"aps":{"alert":{"title":"Order 42","body":"Your driver is here"}},"order":42}"#;
    let tokens: Vec<String> = (0..50).map(device).collect();
    let sends = tokens.iter().map(|token| client.send(&key, alert(token, payload)));
    let outcomes = join_all(sends).await;
    for outcome in &outcomes {
        assert!(matches!(outcome, Ok(PushOutcome::Delivered { id: Some(_) })), "{outcome:?}");
    }
    let received = fake.received();
    assert_eq!(received.len(), 50);
    let mut seen: Vec<&str> = received.iter().map(|r| r.device_token.as_str()).collect();
    seen.sort_unstable();
    assert_eq!(seen, tokens.iter().map(String::as_str).collect::<Vec<_>>());
    let first = &received[0];
    assert_eq!((first.topic.as_str(), first.push_type.as_str()), ("com.example.shop", "alert"));
    assert_eq!(first.priority.as_deref(), Some("10"));
    assert_eq!(first.expiration.as_deref(), Some("1900000000"));
    assert_eq!(first.collapse_id.as_deref(), Some("order-42"));
    assert_eq!(first.payload["aps"]["alert"]["body"], "Your driver is here");
    assert_eq!(fake.connections(), 1, "every notification on one multiplexed connection");
    assert_eq!(fake.provider_tokens(), 1, "one provider token, reused");

    // A background notification goes at priority 5, as APNs requires.
    let quiet = ApnsRequest { push_type: PushType::Background, priority: None, ..alert(&tokens[0], payload) };
    let quiet_payload = br#"{"aps":{"content-available":1}}"#;
    let quiet = ApnsRequest { payload: quiet_payload, ..quiet };
    assert!(matches!(client.send(&key, quiet).await, Ok(PushOutcome::Delivered { .. })));
    assert_eq!(fake.received().last().unwrap().priority.as_deref(), Some("5"));
}

#[tokio::test]
async fn apns_answers_become_what_the_pipeline_does_next() {
    let (fake, client, key) = apns().await;
    let payload = br#"{"aps":{"alert":"hi"}}"#;
    let token = device(7);
    let send = || client.send(&key, alert(&token, payload));

    fake.answer_next(429, "TooManyRequests", Some(7));
    assert_eq!(
        send().await,
        Ok(PushOutcome::Retry { after: Some(Duration::from_secs(7)), reason: "TooManyRequests".into() })
    );
    fake.answer_next(503, "ServiceUnavailable", None);
    assert!(matches!(send().await, Ok(PushOutcome::Retry { after: None, .. })));
    fake.answer_next(400, "BadDeviceToken", None);
    assert_eq!(send().await, Ok(PushOutcome::Unregistered { reason: "BadDeviceToken".into() }));
    fake.answer_next(403, "InvalidProviderToken", None);
    assert_eq!(send().await, Ok(PushOutcome::CredentialsRejected { reason: "InvalidProviderToken".into() }));
    fake.answer_next(400, "DeviceTokenNotForTopic", None);
    assert_eq!(
        send().await,
        Ok(PushOutcome::Rejected { status: 400, reason: "DeviceTokenNotForTopic".into() })
    );
    fake.answer_next(403, "ExpiredProviderToken", None);
    // Retried (the client's unit test shows the token is made anew for the next send).
    assert!(matches!(send().await, Ok(PushOutcome::Retry { .. })));
    assert!(matches!(send().await, Ok(PushOutcome::Delivered { .. })));

    fake.unregister(&token);
    assert_eq!(send().await, Ok(PushOutcome::Unregistered { reason: "Unregistered".into() }));

    // A key of another team's: the fake's signature check refuses it.
    let stranger = KeyPair::p256();
    let wrong = ApnsKey::from_p8("OTHERTEAM1", KEY_ID, stranger.private_pem.as_bytes()).unwrap();
    assert_eq!(
        client.send(&wrong, alert(&device(8), payload)).await,
        Ok(PushOutcome::CredentialsRejected { reason: "InvalidProviderToken".into() })
    );
}

#[tokio::test]
async fn a_notification_apns_would_refuse_is_not_sent() {
    let (fake, client, key) = apns().await;
    let big = format!(r#"{{"aps":{{"alert":"{}"}}}}"#, "x".repeat(4100));
    let token = device(1);
    assert_eq!(
        client.send(&key, alert(&token, big.as_bytes())).await,
        Err(PushError::PayloadTooLarge { size: big.len(), limit: 4096 })
    );
    let payload = br#"{"aps":{}}"#;
    let bad_token = alert("zz-not-a-token-zz", payload);
    assert!(matches!(client.send(&key, bad_token).await, Err(PushError::DeviceToken(_))));
    assert_eq!(fake.requests(), 0, "nothing half-sent");
    // The fake's own checks (what the client prevents) hold too: an oversized body is refused.
    let mut raw = http2_client(std::slice::from_ref(&fake.ca_pem), Duration::from_secs(5))
        .unwrap()
        .post(format!("{}/3/device/{}", fake.url, device(2)));
    raw = raw.header("apns-topic", "t").header("apns-push-type", "alert").body(big.clone());
    assert_eq!(raw.send().await.unwrap().status(), 403, "no provider token: refused first");
}

async fn fcm() -> (FcmFake, FcmClient, ServiceAccount) {
    let keys = KeyPair::rsa();
    let file = keys.service_account("shop-7");
    let fake = FcmFake::start("shop-7", "pusher@shop-7.iam.gserviceaccount.com", &keys.public_pem).await;
    tributary_delivery::install_tls_provider();
    let client = FcmClient::new(&fake.url, &fake.token_url, reqwest::Client::new());
    (fake, client, ServiceAccount::from_json(&file).unwrap())
}

#[tokio::test]
async fn fcm_messages_are_sent_with_one_access_token_got_by_the_jwt_bearer_grant() {
    let (fake, client, account) = fcm().await;
    let messages: Vec<serde_json::Value> = (0..20)
        .map(|n| json!({"token": format!("fcm-token-{n}"), "notification": {"title": "Order 42", "body": "On its way"},
                        "data": {"order": "42"}, "android": {"priority": "high", "collapse_key": "order-42"}}))
        .collect();
    let outcomes = join_all(messages.iter().map(|message| client.send(&account, message))).await;
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Ok(PushOutcome::Delivered { id: Some(id) }) if id.starts_with("projects/shop-7/messages/")),
            "{outcome:?}"
        );
    }
    assert_eq!(fake.token_requests(), 1, "one token for every message, asked for once");
    let mut received = fake.received();
    received.sort_by_key(|m| m["token"].as_str().unwrap_or_default().to_owned());
    let mut sent = messages.clone();
    sent.sort_by_key(|m| m["token"].as_str().unwrap_or_default().to_owned());
    assert_eq!(received, sent, "each message as the app made it");
}

#[tokio::test]
async fn fcm_answers_become_what_the_pipeline_does_next() {
    let (fake, client, account) = fcm().await;
    let message = json!({"token": "fcm-token-1", "notification": {"title": "hi"}});
    fake.answer_next(429, "QUOTA_EXCEEDED", Some(30));
    assert!(matches!(
        client.send(&account, &message).await,
        Ok(PushOutcome::Retry { after: Some(after), .. }) if after == Duration::from_secs(30)
    ));
    fake.answer_next(400, "INVALID_ARGUMENT", None);
    assert!(matches!(client.send(&account, &message).await, Ok(PushOutcome::Rejected { status: 400, .. })));
    fake.unregister("fcm-token-1");
    assert!(matches!(client.send(&account, &message).await, Ok(PushOutcome::Unregistered { .. })));

    // The key is revoked: the cached token is refused (a new one is asked for), then the grant.
    fake.revoke();
    let other = json!({"token": "fcm-token-2", "notification": {"title": "hi"}});
    assert!(matches!(client.send(&account, &other).await, Ok(PushOutcome::Retry { .. })));
    assert!(matches!(client.send(&account, &other).await, Ok(PushOutcome::CredentialsRejected { .. })));
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn a_message_fcm_would_refuse_is_not_sent() {
    let (fake, client, account) = fcm().await;
    let big = json!({"token": "t", "data": {"blob": "x".repeat(4096)}});
    assert!(matches!(client.send(&account, &big).await, Err(PushError::PayloadTooLarge { limit: 4096, .. })));
    for token in [json!(null), json!(""), json!("a b")] {
        let message = json!({"token": token, "notification": {"title": "hi"}});
        assert!(matches!(client.send(&account, &message).await, Err(PushError::DeviceToken(_))), "{token}");
    }
    assert_eq!(fake.token_requests(), 0, "nothing half-sent");
}

async fn webpush() -> (WebPushFake, WebPushClient, VapidKey) {
    let keys = KeyPair::p256();
    let vapid = VapidKey::from_pem(&keys.private_pem, "mailto:ops@example.com").unwrap();
    let fake = WebPushFake::start(vapid.public_key()).await;
    (fake, WebPushClient::new(loopback_sender()), vapid)
}

/// A sender allowed to reach the fakes on loopback over plain HTTP.
fn loopback_sender() -> Sender {
    let policy = AddressPolicy::new().with_http(true).allow(IpRange::parse("127.0.0.0/8").unwrap());
    Sender::new(policy, SenderLimits::default()).unwrap()
}

fn subscription(fake: &FakeSubscription) -> Subscription {
    Subscription::parse(&fake.endpoint, &fake.p256dh, &fake.auth).unwrap()
}

const URGENT: WebPushOptions<'static> =
    WebPushOptions { ttl: 60, urgency: Some("high"), topic: Some("order-42") };

#[tokio::test]
async fn web_push_messages_are_encrypted_to_each_subscription_and_authorised_with_vapid() {
    let (fake, client, vapid) = webpush().await;
    let browsers: Vec<FakeSubscription> = (0..10).map(|_| fake.subscribe()).collect();
    let messages: Vec<String> = (0..10).map(|n| format!(r#"{{"title":"Order 42","n":{n}}}"#)).collect();
    let subscriptions: Vec<Subscription> = browsers.iter().map(subscription).collect();
    let sends = subscriptions
        .iter()
        .zip(&messages)
        .map(|(to, text)| client.send(&vapid, to, text.as_bytes(), URGENT));
    for outcome in join_all(sends).await {
        assert_eq!(outcome, Ok(PushOutcome::Delivered { id: None }));
    }
    let received = fake.received();
    assert_eq!(received.len(), 10);
    for (browser, text) in browsers.iter().zip(&messages) {
        let got =
            received.iter().find(|r| r.endpoint == browser.endpoint).expect("each browser got its message");
        assert_eq!(got.plaintext, text.as_bytes(), "decrypted with that browser's private key");
        assert_eq!(
            (got.ttl.as_str(), got.urgency.as_deref(), got.topic.as_deref()),
            ("60", Some("high"), Some("order-42"))
        );
    }
    // The most one message carries, and one byte more.
    let full = vec![b'x'; MAX_PLAINTEXT_BYTES];
    assert_eq!(
        client.send(&vapid, &subscriptions[0], &full, URGENT).await,
        Ok(PushOutcome::Delivered { id: None })
    );
    assert_eq!(fake.received().last().unwrap().plaintext, full);
    let over = vec![b'x'; MAX_PLAINTEXT_BYTES + 1];
    assert_eq!(
        client.send(&vapid, &subscriptions[0], &over, URGENT).await,
        Err(PushError::PayloadTooLarge { size: 3994, limit: 3993 })
    );
    assert_eq!(fake.requests(), 11, "nothing sent of the oversized one");
}

#[tokio::test]
async fn web_push_answers_become_what_the_pipeline_does_next() {
    let (fake, client, vapid) = webpush().await;
    let browser = fake.subscribe();
    let to = subscription(&browser);
    let send = || client.send(&vapid, &to, b"hi", URGENT);
    fake.answer_next(429, Some(9));
    assert!(
        matches!(send().await, Ok(PushOutcome::Retry { after: Some(after), .. }) if after == Duration::from_secs(9))
    );
    fake.answer_next(413, None);
    assert!(matches!(send().await, Ok(PushOutcome::Rejected { status: 413, .. })));
    assert_eq!(send().await, Ok(PushOutcome::Delivered { id: None }));
    fake.unsubscribe(&browser);
    assert!(matches!(send().await, Ok(PushOutcome::Unregistered { .. })));

    // A VAPID key other than the one the browser subscribed with: refused by the push service.
    let other = VapidKey::from_pem(&KeyPair::p256().private_pem, "mailto:ops@example.com").unwrap();
    let fresh = subscription(&fake.subscribe());
    assert!(matches!(
        client.send(&other, &fresh, b"hi", URGENT).await,
        Ok(PushOutcome::CredentialsRejected { .. })
    ));
}

#[tokio::test]
async fn a_subscription_that_is_not_one_or_reaches_a_private_address_is_refused() {
    let (fake, _, vapid) = webpush().await;
    let browser = fake.subscribe();
    for (endpoint, p256dh, auth) in [
        ("not a url", browser.p256dh.as_str(), browser.auth.as_str()),
        (browser.endpoint.as_str(), "AAAA", browser.auth.as_str()),
        (browser.endpoint.as_str(), &browser.auth, browser.auth.as_str()),
        (browser.endpoint.as_str(), browser.p256dh.as_str(), "c2hvcnQ"),
    ] {
        assert!(
            matches!(Subscription::parse(endpoint, p256dh, auth), Err(PushError::DeviceToken(_))),
            "{endpoint} {p256dh} {auth}"
        );
    }
    // The endpoint is the browser's (so the tenant's) input: the operator's address policy applies.
    let strict = WebPushClient::new(Sender::new(AddressPolicy::new(), SenderLimits::default()).unwrap());
    let outcome = strict.send(&vapid, &subscription(&browser), b"hi", URGENT).await;
    assert!(matches!(outcome, Ok(PushOutcome::Rejected { status: 0, .. })), "{outcome:?}");
    assert_eq!(fake.requests(), 0, "nothing reached it");
    let bad = WebPushOptions { urgency: Some("asap"), ..URGENT };
    assert!(matches!(
        strict.send(&vapid, &subscription(&browser), b"hi", bad).await,
        Err(PushError::Invalid(_))
    ));
    let keys = KeyPair::p256();
    assert!(matches!(
        VapidKey::from_pem(&keys.private_pem, "ops@example.com"),
        Err(PushError::Credentials(_))
    ));
    assert!(matches!(VapidKey::from_pem("nope", "mailto:a@b"), Err(PushError::Credentials(_))));
}
