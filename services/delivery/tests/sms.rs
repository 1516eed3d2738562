//! The Twilio client against the testkit's fake of Twilio's Messages API, and the verification
//! of the status callbacks the fake signs.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tributary_delivery::push::PushError;
use tributary_delivery::sms::{SmsFrom, SmsOutcome, TwilioClient, TwilioCredentials, signature};
use tributary_testkit::sms::TwilioFake;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "auth-token-of-the-account";
const API_KEY: &str = "SKfedcba9876543210fedcba9876543210";
const API_SECRET: &str = "api-key-secret";
const SERVICE: &str = "MG00112233445566778899aabbccddeeff";

fn client(fake: &TwilioFake) -> TwilioClient {
    tributary_delivery::install_tls_provider();
    TwilioClient::new(&fake.url, reqwest::Client::new())
}

fn by_number() -> TwilioCredentials {
    TwilioCredentials::new(ACCOUNT, None, TOKEN, SmsFrom::Number("+15005550006".into())).unwrap()
}

/// A receiver of status callbacks on a loopback port: what each said, and whether its
/// signature verified under `token`.
async fn callbacks(token: &'static str) -> (String, Arc<Mutex<Vec<(String, bool)>>>) {
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/sms/status?app=app_1", listener.local_addr().unwrap());
    let (recording, full_url) = (seen.clone(), url.clone());
    let app = axum::Router::new().route(
        "/v1/sms/status",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let (seen, url) = (recording.clone(), full_url.clone());
            async move {
                let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
                let given =
                    headers.get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
                let status = params.iter().find(|(k, _)| k == "MessageStatus").map(|(_, v)| v.clone());
                let verified = signature::verify(token, &url, &params, given);
                seen.lock().unwrap().push((status.unwrap_or_default(), verified));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

async fn wait_for(seen: &Arc<Mutex<Vec<(String, bool)>>>, count: usize) -> Vec<(String, bool)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = seen.lock().unwrap().clone();
        if now.len() >= count || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_sms_is_sent_and_its_progress_comes_back_signed() {
    let fake = TwilioFake::start(ACCOUNT, TOKEN, Some((API_KEY, API_SECRET))).await;
    let client = client(&fake);
    let (callback, seen) = callbacks(TOKEN).await;
    let body = "Your driver is here: a silver Corolla, plate 7ABC123.";
    let (outcome, sent) = client.send(&by_number(), "+14155550100", body, Some(&callback)).await.unwrap();
    let sent = sent.unwrap();
    assert_eq!(outcome, SmsOutcome::Delivered { id: Some(sent.sid.clone()) });
    assert!(sent.sid.starts_with("SM") && sent.segments == 1, "{sent:?}");
    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!((received[0].to.as_str(), received[0].body.as_str()), ("+14155550100", body));
    assert_eq!((received[0].from.as_deref(), received[0].username.as_str()), (Some("+15005550006"), ACCOUNT));
    let progress = wait_for(&seen, 3).await;
    assert_eq!(
        progress,
        [("queued".into(), true), ("sent".into(), true), ("delivered".into(), true)],
        "every callback verified"
    );

    // An API key and a messaging service; a long message in two segments.
    let keyed =
        TwilioCredentials::new(ACCOUNT, Some(API_KEY), API_SECRET, SmsFrom::MessagingService(SERVICE.into()))
            .unwrap();
    let long = "a".repeat(200);
    let (outcome, sent) = client.send(&keyed, "+442071838750", &long, None).await.unwrap();
    assert!(matches!(outcome, SmsOutcome::Delivered { .. }));
    assert_eq!(sent.unwrap().segments, 2);
    let last = fake.received().pop().unwrap();
    assert_eq!(
        (last.messaging_service.as_deref(), last.from, last.username.as_str()),
        (Some(SERVICE), None, API_KEY)
    );
}

#[tokio::test]
async fn a_callback_signed_with_another_token_does_not_verify() {
    let fake = TwilioFake::start(ACCOUNT, TOKEN, None).await;
    let (callback, seen) = callbacks("a-different-token").await;
    fake.undeliverable("+14155550199");
    let (outcome, _) = client(&fake).send(&by_number(), "+14155550199", "hi", Some(&callback)).await.unwrap();
    assert!(matches!(outcome, SmsOutcome::Delivered { .. }), "accepted by Twilio");
    let progress = wait_for(&seen, 3).await;
    assert_eq!(progress, [("queued".into(), false), ("sent".into(), false), ("undelivered".into(), false)]);
}

#[tokio::test]
async fn twilios_answers_become_what_the_pipeline_does_next() {
    let fake = TwilioFake::start(ACCOUNT, TOKEN, None).await;
    let client = client(&fake);
    fake.opt_out("+14155550101");
    let (outcome, sent) = client.send(&by_number(), "+14155550101", "hi", None).await.unwrap();
    assert!(
        matches!(outcome, SmsOutcome::Unregistered { ref reason } if reason.starts_with("21610")),
        "{outcome:?}"
    );
    assert!(sent.is_none());
    fake.answer_next(429, 20429);
    let (outcome, _) = client.send(&by_number(), "+14155550100", "hi", None).await.unwrap();
    assert!(
        matches!(outcome, SmsOutcome::Retry { after: Some(after), .. } if after == Duration::from_secs(3))
    );
    fake.answer_next(400, 21614);
    let (outcome, _) = client.send(&by_number(), "+14155550100", "hi", None).await.unwrap();
    assert!(matches!(outcome, SmsOutcome::Rejected { status: 400, .. }), "{outcome:?}");
    let wrong =
        TwilioCredentials::new(ACCOUNT, None, "not-the-token", SmsFrom::Number("+15005550006".into()))
            .unwrap();
    let (outcome, _) = client.send(&wrong, "+14155550100", "hi", None).await.unwrap();
    assert!(matches!(outcome, SmsOutcome::CredentialsRejected { ref reason } if reason.starts_with("20003")));
    assert!(fake.received().is_empty());

    // Bad input is refused before anything is sent.
    let before = fake.requests();
    for (to, body) in [("4155550100", "hi"), ("+1 415 555 0100", "hi"), ("+14155550100", "")] {
        assert!(client.send(&by_number(), to, body, None).await.is_err(), "{to:?} {body:?}");
    }
    let over = "b".repeat(1601);
    assert!(matches!(
        client.send(&by_number(), "+14155550100", &over, None).await,
        Err(PushError::PayloadTooLarge { size: 1601, limit: 1600 })
    ));
    assert_eq!(fake.requests(), before, "nothing half-sent");
}
