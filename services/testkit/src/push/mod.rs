//! Fakes of the push services that check the real protocols, written from Apple's and Google's
//! documentation independently of the clients under test.
//!
//! - [`ApnsFake`]: HTTP/2 only, over TLS (ALPN `h2`, a test authority's certificate). Each
//!   provider token is verified against the team's public key (ES256, `kid`, `iss`; once per
//!   token, as APNs does) and its `iat` on every request (under an hour old), and each
//!   request's path and headers as APNs checks them; answers are
//!   APNs' (`apns-id`, `{"reason": ...}`), with tokens a test unregisters answered 410 and
//!   answers a test queues given first.
//! - [`FcmFake`]: Google's token endpoint (the JWT-bearer grant: an RS256 assertion verified
//!   against the service account's public key, its scope and audience) and FCM's
//!   `messages:send`, which takes only the tokens it issued.
//! - [`WebPushFake`]: a push service that makes subscriptions, checks VAPID tokens and decrypts
//!   each message with the subscription's private key.
//! - [`KeyPair`]: a fresh P-256 or RSA key made with `openssl`, as the services hand them out.

mod apns;
mod fcm;
mod webpush;

pub use apns::{ApnsFake, ApnsReceived};
pub use fcm::FcmFake;
pub use webpush::{FakeSubscription, WebPushFake, WebPushReceived};

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::tls::openssl;

/// A private key (PKCS#8 PEM) and its public key (PEM), made with `openssl`.
pub struct KeyPair {
    /// The private key, as Apple's `.p8` files and Google's service accounts carry it.
    pub private_pem: String,
    /// The public key, for the fake that verifies signatures.
    pub public_pem: String,
}

impl KeyPair {
    /// A P-256 key (APNs' signing keys, VAPID keys).
    pub fn p256() -> Self {
        Self::generate(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
    }

    /// A 2048-bit RSA key (service accounts').
    pub fn rsa() -> Self {
        Self::generate(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
    }

    fn generate(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let private = dir.path().join("key.pem");
        let public = dir.path().join("pub.pem");
        let private_path = private.to_string_lossy().into_owned();
        let public_path = public.to_string_lossy().into_owned();
        openssl(&[args, &["-out", &private_path]].concat());
        openssl(&["pkey", "-in", &private_path, "-pubout", "-out", &public_path]);
        Self {
            private_pem: std::fs::read_to_string(&private).expect("the private key"),
            public_pem: std::fs::read_to_string(&public).expect("the public key"),
        }
    }

    /// A service-account JSON file of `project_id` with this (RSA) key, as Google's console
    /// makes them (its `token_uri` is Google's: the client must not use it).
    pub fn service_account(&self, project_id: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": "0123456789abcdef",
            "private_key": self.private_pem,
            "client_email": format!("pusher@{project_id}.iam.gserviceaccount.com"),
            "client_id": "1234567890",
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string()
    }
}

/// An answer a test queued for the next request (before any check but the token's).
#[derive(Debug, Clone)]
pub(crate) struct Scripted {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
    pub(crate) retry_after: Option<u64>,
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) type Answer = (StatusCode, axum::http::HeaderMap, String);

pub(crate) fn answer(status: u16, body: Value) -> Answer {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("a header"));
    (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), headers, body.to_string())
}

pub(crate) fn plain(status: u16, text: &str) -> Answer {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        axum::http::HeaderMap::new(),
        text.to_owned(),
    )
}
