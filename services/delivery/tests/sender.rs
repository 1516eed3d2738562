//! The delivery sender against real receivers on port 0: signed requests verified the way a
//! receiver would, and every way a receiver can misbehave.

// Test code: a failed step must panic the test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use futures::StreamExt as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tributary_delivery::address::{AddressError, AddressPolicy, IpRange};
use tributary_delivery::sender::{SendError, Sender, SenderLimits, Verdict};
use tributary_delivery::signature::{WebhookSecret, sign_request};

/// What the receivers saw.
#[derive(Default)]
struct Seen {
    hits: AtomicUsize,
    verified: AtomicUsize,
}

/// A receiver's own check of the signature headers, from the Standard Webhooks spec.
fn verifies(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let signed =
        [get("webhook-id").as_bytes(), b".", get("webhook-timestamp").as_bytes(), b".", body].concat();
    get("webhook-signature").split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|sig| {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(&signed);
        base64::engine::general_purpose::STANDARD.decode(sig).is_ok_and(|sig| mac.verify_slice(&sig).is_ok())
    })
}

async fn receivers(secret: String, seen: Arc<Seen>) -> SocketAddr {
    let hit = |seen: &Arc<Seen>| {
        seen.hits.fetch_add(1, Ordering::SeqCst);
    };
    let app = Router::new()
        .route(
            "/ok",
            post({
                let seen = seen.clone();
                move |headers: HeaderMap, body: axum::body::Bytes| async move {
                    hit(&seen);
                    if verifies(&secret, &headers, &body) {
                        seen.verified.fetch_add(1, Ordering::SeqCst);
                        (StatusCode::NO_CONTENT, "")
                    } else {
                        (StatusCode::UNAUTHORIZED, "bad signature")
                    }
                }
            }),
        )
        .route("/gone", post(|| async { (StatusCode::GONE, "endpoint removed") }))
        .route(
            "/slow-down",
            post(|| async { (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "7")], "later") }),
        )
        .route("/broken", post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }))
        .route(
            "/moved",
            post(|| async { (StatusCode::FOUND, [("location", "http://169.254.169.254/")], "") }),
        )
        .route(
            "/endless",
            post(|| async {
                let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
                let stream = futures::stream::repeat(chunk).map(Ok::<_, std::io::Error>);
                (StatusCode::OK, Body::from_stream(stream))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A local receiver is loopback: the tests allow it as an operator would a private range.
fn local_policy() -> AddressPolicy {
    AddressPolicy::new().with_http(true).allow(IpRange::parse("127.0.0.0/8").unwrap())
}

fn limits() -> SenderLimits {
    SenderLimits {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(700),
        max_response_bytes: 1024,
    }
}

#[tokio::test]
async fn a_signed_delivery_verifies_at_the_receiver_and_misbehaving_receivers_are_classified() {
    let secret = WebhookSecret::generate();
    let seen = Arc::new(Seen::default());
    let addr = receivers(secret.expose(), seen.clone()).await;
    let sender = Sender::new(local_policy(), limits()).unwrap();
    let body = br#"{"type":"message","data":{"n":1}}"#.to_vec();
    let signed = sign_request(&[&secret], "evt_01", 1_700_000_000, &body);
    let headers = vec![
        ("webhook-id".to_owned(), signed.id.clone()),
        ("webhook-timestamp".to_owned(), signed.timestamp.to_string()),
        ("webhook-signature".to_owned(), signed.signature.clone()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    let attempt = sender.post(&format!("http://{addr}/ok"), &headers, body.clone()).await.unwrap();
    assert_eq!((attempt.verdict, attempt.status), (Verdict::Delivered, Some(204)));
    assert_eq!(seen.verified.load(Ordering::SeqCst), 1, "the receiver verified the signature");
    // The same request with another body fails the receiver's check: the signature is real.
    let attempt = sender.post(&format!("http://{addr}/ok"), &headers, b"{}".to_vec()).await.unwrap();
    assert_eq!(attempt.status, Some(401));

    let cases = [
        ("/gone", Verdict::Gone, Some(410)),
        ("/slow-down", Verdict::Retry { after: Some(Duration::from_secs(7)) }, Some(429)),
        ("/broken", Verdict::Retry { after: None }, Some(503)),
        ("/moved", Verdict::Retry { after: None }, Some(302)),
    ];
    for (path, verdict, status) in cases {
        let attempt = sender.post(&format!("http://{addr}{path}"), &[], Vec::new()).await.unwrap();
        assert_eq!((attempt.verdict, attempt.status), (verdict, status), "{path}");
    }
    // https speaks TLS: to a plain-HTTP receiver the handshake fails, and the attempt is retried.
    let attempt = sender.post(&format!("https://{addr}/ok"), &[], Vec::new()).await.unwrap();
    assert_eq!((attempt.verdict, attempt.status), (Verdict::Retry { after: None }, None));
    // (Without TLS in the client the cause would be "scheme is not http".)
    assert!(
        attempt.snippet.starts_with("could not connect: received corrupt message"),
        "{}",
        attempt.snippet
    );
    // An endless body: a kilobyte is kept and the attempt ends.
    let attempt = sender.post(&format!("http://{addr}/endless"), &[], Vec::new()).await.unwrap();
    assert_eq!(attempt.verdict, Verdict::Delivered);
    assert_eq!(attempt.snippet.len(), 1024);
}

#[tokio::test]
async fn a_receiver_that_never_answers_costs_one_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let sender = Sender::new(local_policy(), limits()).unwrap();
    let attempt = sender.post(&format!("http://{addr}/"), &[], b"{}".to_vec()).await.unwrap();
    assert_eq!(attempt.verdict, Verdict::Retry { after: None });
    assert_eq!(attempt.snippet, "timed out");
    assert!(attempt.latency < Duration::from_secs(2), "{:?}", attempt.latency);
}

#[tokio::test]
async fn without_the_operators_range_no_request_reaches_a_local_receiver() {
    let seen = Arc::new(Seen::default());
    let addr = receivers(WebhookSecret::generate().expose(), seen.clone()).await;
    let sender = Sender::new(AddressPolicy::new().with_http(true), limits()).unwrap();
    // By address: refused before any connection.
    let refused = sender.post(&format!("http://{addr}/ok"), &[], Vec::new()).await.unwrap_err();
    assert!(
        matches!(refused, SendError::Address(AddressError::Forbidden { kind: "loopback", .. })),
        "{refused:?}"
    );
    // By a name that resolves to it: refused by the client's resolver, at connect time.
    let refused =
        sender.post(&format!("http://localhost:{}/ok", addr.port()), &[], Vec::new()).await.unwrap_err();
    assert!(matches!(refused, SendError::Address(AddressError::Forbidden { .. })), "{refused:?}");
    assert_eq!(seen.hits.load(Ordering::SeqCst), 0, "nothing reached the receiver");
}
