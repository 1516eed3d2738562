//! The Web Push fake: a push service that makes subscriptions, checks VAPID tokens and decrypts
//! each message with the subscription's private key.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{Answer, Scripted, plain, unix_now};

/// A subscription the Web Push fake made: what a browser's `PushSubscription.toJSON()` gives a
/// page.
#[derive(Debug, Clone)]
pub struct FakeSubscription {
    /// The endpoint to send to.
    pub endpoint: String,
    /// `keys.p256dh`, base64url.
    pub p256dh: String,
    /// `keys.auth`, base64url.
    pub auth: String,
}

/// A message the Web Push fake accepted and decrypted.
#[derive(Debug, Clone)]
pub struct WebPushReceived {
    /// The subscription's endpoint.
    pub endpoint: String,
    /// The decrypted message.
    pub plaintext: Vec<u8>,
    /// `TTL`.
    pub ttl: String,
    /// `Urgency`, if sent.
    pub urgency: Option<String>,
    /// `Topic`, if sent.
    pub topic: Option<String>,
}

struct Subscriber {
    secret: p256::SecretKey,
    auth: [u8; 16],
    gone: bool,
}

#[derive(Default)]
struct WebPushState {
    origin: String,
    vapid_public: String,
    subscribers: Mutex<std::collections::HashMap<String, Subscriber>>,
    received: Mutex<Vec<WebPushReceived>>,
    scripted: Mutex<VecDeque<Scripted>>,
    requests: AtomicUsize,
    /// Decrypt one message in this many (0 and 1: every one).
    decrypt_every: AtomicUsize,
    /// VAPID authorizations verified, with their expiry: a token's signature is checked once.
    verified: Mutex<std::collections::HashMap<String, u64>>,
}

/// A fake push service (the browser vendors' Web Push endpoints): it makes subscriptions for an
/// application server key, checks each request's VAPID token (ES256 by that key, audience its
/// origin, an expiry within a day, a contact) and decrypts each message with the
/// subscription's private key (RFC 8291, by web-push-native: not the sender's code).
pub struct WebPushFake {
    /// Its origin (`http://127.0.0.1:port`).
    pub origin: String,
    state: Arc<WebPushState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebPushFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebPushFake {
    /// Starts a push service whose subscriptions are made for `vapid_public` (base64url, the
    /// page's `applicationServerKey`).
    pub async fn start(vapid_public: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let origin = format!("http://{}", listener.local_addr().expect("its address"));
        let state = Arc::new(WebPushState {
            origin: origin.clone(),
            vapid_public: vapid_public.to_owned(),
            ..Default::default()
        });
        let serving = state.clone();
        let app = axum::Router::new().route(
            "/push/{id}",
            axum::routing::post(
                move |axum::extract::Path(id): axum::extract::Path<String>,
                      headers: axum::http::HeaderMap,
                      body: Bytes| {
                    let state = serving.clone();
                    async move { webpush_answer(&state, &id, &headers, body) }
                },
            ),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { origin, state, task }
    }

    /// A new subscription, as a browser makes one.
    pub fn subscribe(&self) -> FakeSubscription {
        use base64::Engine as _;
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use rand::RngCore as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut rng = rand::rng();
        let secret = loop {
            let mut bytes = [0u8; 32];
            rng.fill_bytes(&mut bytes);
            if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
                break secret;
            }
        };
        let mut auth = [0u8; 16];
        rng.fill_bytes(&mut auth);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let subscription = FakeSubscription {
            endpoint: format!("{}/push/{id}", self.origin),
            p256dh: b64.encode(secret.public_key().to_encoded_point(false).as_bytes()),
            auth: b64.encode(auth),
        };
        let subscriber = Subscriber { secret, auth, gone: false };
        self.state.subscribers.lock().unwrap_or_else(|p| p.into_inner()).insert(id, subscriber);
        subscription
    }

    /// The browser unsubscribed: its endpoint answers 410 from now on.
    pub fn unsubscribe(&self, subscription: &FakeSubscription) {
        let id = subscription.endpoint.rsplit('/').next().unwrap_or_default();
        if let Some(subscriber) = self.state.subscribers.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id)
        {
            subscriber.gone = true;
        }
    }

    /// The messages accepted so far, decrypted, in order.
    pub fn received(&self) -> Vec<WebPushReceived> {
        self.state.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes the messages accepted since the last drain (a benchmark's, read as they come
    /// rather than kept).
    pub fn drain(&self) -> Vec<WebPushReceived> {
        std::mem::take(&mut *self.state.received.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// From now on only one message in `n` is decrypted (the others are taken, with an empty
    /// plaintext, once their headers and size are checked): a benchmark's load generator shares
    /// a core with the fake, and a message's decryption costs as much as its encryption.
    pub fn decrypt_one_in(&self, n: usize) {
        self.state.decrypt_every.store(n, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// The next request (with a valid token) is answered `status`.
    pub fn answer_next(&self, status: u16, retry_after: Option<u64>) {
        let scripted = Scripted { status, reason: "scripted", retry_after };
        self.state.scripted.lock().unwrap_or_else(|p| p.into_inner()).push_back(scripted);
    }
}

/// Checks a Web Push request as a push service does, and decrypts it.
fn webpush_answer(state: &WebPushState, id: &str, headers: &axum::http::HeaderMap, body: Bytes) -> Answer {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Err(why) = verify_vapid(state, header("authorization").as_deref()) {
        return plain(403, why);
    }
    if let Some(scripted) = state.scripted.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
        let mut reply = plain(scripted.status, scripted.reason);
        if let Some(after) = scripted.retry_after {
            reply.1.insert("retry-after", after.to_string().parse().expect("a header"));
        }
        return reply;
    }
    let Some(ttl) = header("ttl").filter(|ttl| ttl.parse::<u32>().is_ok()) else {
        return plain(400, "a TTL header is required");
    };
    if header("content-encoding").as_deref() != Some("aes128gcm") {
        return plain(415, "content-encoding must be aes128gcm");
    }
    if body.len() > 4096 {
        return plain(413, "payload too large");
    }
    let subscribers = state.subscribers.lock().unwrap_or_else(|p| p.into_inner());
    let Some(subscriber) = subscribers.get(id) else { return plain(404, "no such subscription") };
    if subscriber.gone {
        return plain(410, "unsubscribed");
    }
    let every = state.decrypt_every.load(Ordering::Relaxed).max(1);
    let plaintext = if state.requests.load(Ordering::Relaxed).is_multiple_of(every) {
        let auth = web_push_native::Auth::clone_from_slice(&subscriber.auth);
        let Ok(plaintext) = web_push_native::decrypt(body.to_vec(), &subscriber.secret, &auth) else {
            return plain(400, "the message does not decrypt");
        };
        plaintext
    } else {
        Vec::new()
    };
    drop(subscribers);
    state.received.lock().unwrap_or_else(|p| p.into_inner()).push(WebPushReceived {
        endpoint: format!("{}/push/{id}", state.origin),
        plaintext,
        ttl,
        urgency: header("urgency"),
        topic: header("topic"),
    });
    let mut reply = plain(201, "");
    reply.1.insert(
        "location",
        format!("{}/message/{}", state.origin, uuid::Uuid::new_v4().simple()).parse().expect("a header"),
    );
    reply
}

/// `vapid t=<jwt>, k=<key>` (RFC 8292): the key the subscriptions were made for, and a token it
/// signed for this origin, expiring within a day, with a contact.
fn verify_vapid(state: &WebPushState, authorization: Option<&str>) -> Result<(), &'static str> {
    let authorization = authorization.ok_or("no VAPID authorization")?;
    let known = state.verified.lock().unwrap_or_else(|p| p.into_inner()).get(authorization).copied();
    let exp = match known {
        Some(exp) => exp,
        None => {
            let exp = verify_vapid_token(state, authorization)?;
            state.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(authorization.to_owned(), exp);
            exp
        }
    };
    if exp <= unix_now() {
        return Err("the token has expired");
    }
    Ok(())
}

/// Checks a VAPID authorization's key, signature and claims; returns its expiry.
fn verify_vapid_token(state: &WebPushState, authorization: &str) -> Result<u64, &'static str> {
    use base64::Engine as _;
    let value = authorization.strip_prefix("vapid ").ok_or("no VAPID authorization")?;
    let mut token = None;
    let mut key = None;
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => token = Some(t),
            Some(("k", k)) => key = Some(k),
            _ => {}
        }
    }
    let (token, key) = (token.ok_or("no t=")?, key.ok_or("no k=")?);
    if key != state.vapid_public {
        return Err("not the key the subscription was made for");
    }
    let point =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key).map_err(|_| "k= is not base64url")?;
    if point.len() != 65 || point[0] != 4 {
        return Err("k= is not an uncompressed P-256 point");
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decoding = DecodingKey::from_ec_components(&b64.encode(&point[1..33]), &b64.encode(&point[33..]))
        .map_err(|_| "k= is not a P-256 key")?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[state.origin.as_str()]);
    validation.required_spec_claims = HashSet::from(["exp".into(), "aud".into(), "sub".into()]);
    let claims = jsonwebtoken::decode::<Value>(token, &decoding, &validation)
        .map_err(|_| "the token does not verify")?
        .claims;
    if claims["exp"].as_u64().unwrap_or(0) > unix_now() + 24 * 3600 {
        return Err("the token expires more than a day from now");
    }
    let sub = claims["sub"].as_str().unwrap_or_default();
    if !(sub.starts_with("mailto:") || sub.starts_with("https://")) {
        return Err("sub is not a contact");
    }
    Ok(claims["exp"].as_u64().unwrap_or(0))
}
