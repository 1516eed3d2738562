//! Web Push: a message encrypted to a browser's subscription (RFC 8291, `aes128gcm` of RFC
//! 8188) and sent to its push service with a VAPID authorisation (RFC 8292).
//!
//! A subscription's endpoint is a URL the browser chose, so it is the tenant's input: it goes
//! through the same [`Sender`] as webhooks (https only unless the operator allows http, no
//! private or metadata addresses, no redirects, capped answers).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::DecodePrivateKey;
use rand::RngCore;
use serde::Serialize;
use sha2::Sha256;
use tokio::time::Instant;

use super::{PushError, PushOutcome, unix_now};
use crate::sender::{SendError, Sender};

/// The record size written in the header: one record holds any message a push service takes.
const RECORD_SIZE: u32 = 4096;
/// Salt (16), record size (4), key id length (1) and the sender's public key (65).
const HEADER_BYTES: usize = 86;
/// AES-GCM's tag.
const TAG_BYTES: usize = 16;
/// The most plaintext one message carries: push services take 4,096 bytes of body, less the
/// header, the tag and the padding delimiter.
pub const MAX_PLAINTEXT_BYTES: usize = 4096 - HEADER_BYTES - TAG_BYTES - 1;
/// How long a VAPID token is valid (RFC 8292 allows 24 hours at most).
const VAPID_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A browser's push subscription (`PushSubscription.toJSON()`): where to send, and the keys to
/// encrypt to.
#[derive(Clone)]
pub struct Subscription {
    endpoint: String,
    /// `keys.p256dh`: an uncompressed P-256 point, checked to be on the curve.
    p256dh: [u8; 65],
    auth: [u8; 16],
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl Subscription {
    /// Reads a subscription: its endpoint and its `keys.p256dh` (an uncompressed P-256 point)
    /// and `keys.auth` (16 bytes), both base64url as browsers give them.
    pub fn parse(endpoint: &str, p256dh: &str, auth: &str) -> Result<Self, PushError> {
        let bad = |what: &str| PushError::DeviceToken(format!("a Web Push subscription's {what}"));
        if endpoint.len() > 2048 || reqwest::Url::parse(endpoint).is_err() {
            return Err(bad("endpoint (a URL)"));
        }
        let point: [u8; 65] =
            decode(p256dh).and_then(|bytes| bytes.try_into().ok()).ok_or_else(|| bad("keys.p256dh"))?;
        p256::PublicKey::from_sec1_bytes(&point).map_err(|_| bad("keys.p256dh (a P-256 point)"))?;
        let p256dh = point;
        let auth: [u8; 16] = decode(auth)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| bad("keys.auth (16 bytes)"))?;
        Ok(Self { endpoint: endpoint.to_owned(), p256dh, auth })
    }

    /// The push service's URL for this subscription.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// Base64url, with or without padding (browsers differ).
fn decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

/// Encrypts `plaintext` to `subscription` (RFC 8291): a fresh key pair and salt per message, one
/// record. The body a push service takes.
pub fn encrypt(plaintext: &[u8], subscription: &Subscription) -> Result<Vec<u8>, PushError> {
    if plaintext.len() > MAX_PLAINTEXT_BYTES {
        return Err(PushError::PayloadTooLarge { size: plaintext.len(), limit: MAX_PLAINTEXT_BYTES });
    }
    // The key agreement by ring (assembly): the pure-Rust P-256 took about 0.4 ms a message,
    // most of a core at a few thousand messages a second.
    use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
    let random = ring::rand::SystemRandom::new();
    let failed = |what: &str| PushError::Client(format!("Web Push encryption: {what}"));
    let ephemeral = EphemeralPrivateKey::generate(&ECDH_P256, &random).map_err(|_| failed("a key"))?;
    let as_public = ephemeral.compute_public_key().map_err(|_| failed("a public key"))?;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let ua_public = &subscription.p256dh;
    // IKM = HKDF(auth, ecdh_secret, "WebPush: info" 0x00 ua_public as_public, 32)
    let mut info = Vec::with_capacity(14 + 65 + 65);
    info.extend_from_slice(b"WebPush: info\0");
    info.extend_from_slice(ua_public);
    info.extend_from_slice(as_public.as_ref());
    let mut ikm = [0u8; 32];
    agree_ephemeral(ephemeral, &UnparsedPublicKey::new(&ECDH_P256, ua_public), |shared| {
        Hkdf::<Sha256>::new(Some(&subscription.auth), shared).expand(&info, &mut ikm)
    })
    .map_err(|_| failed("the key agreement"))?
    .map_err(|_| failed("HKDF"))?;
    // The content-encryption key and nonce of RFC 8188, from the message's salt.
    let content = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let (mut key, mut nonce) = ([0u8; 16], [0u8; 12]);
    content
        .expand(b"Content-Encoding: aes128gcm\0", &mut key)
        .map_err(|_| PushError::Client("HKDF".into()))?;
    content.expand(b"Content-Encoding: nonce\0", &mut nonce).map_err(|_| PushError::Client("HKDF".into()))?;
    // The last (and only) record ends with the delimiter 0x02.
    let mut padded = Vec::with_capacity(plaintext.len() + 1);
    padded.extend_from_slice(plaintext);
    padded.push(2);
    let cipher = aes_gcm::Aes128Gcm::new(&key.into());
    let sealed = cipher
        .encrypt(&nonce.into(), Payload { msg: &padded, aad: b"" })
        .map_err(|_| PushError::Client("AES-GCM".into()))?;
    let mut body = Vec::with_capacity(HEADER_BYTES + sealed.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_ref());
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// An app's VAPID key (a P-256 key in PKCS#8 PEM) and the contact push services may write to.
pub struct VapidKey {
    key: EncodingKey,
    public_key: String,
    subject: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is a secret: never printed.
        f.debug_struct("VapidKey")
            .field("public_key", &self.public_key)
            .field("subject", &self.subject)
            .finish()
    }
}

impl VapidKey {
    /// Reads the key; `subject` is a `mailto:` or `https:` URL of the app's operator.
    pub fn from_pem(pem: &str, subject: &str) -> Result<Self, PushError> {
        if !(subject.starts_with("mailto:") || subject.starts_with("https://")) || subject.len() > 512 {
            return Err(PushError::Credentials("the VAPID subject is a mailto: or https: URL".into()));
        }
        let secret = p256::SecretKey::from_pkcs8_pem(pem)
            .map_err(|_| PushError::Credentials("the VAPID key is not a P-256 key in PKCS#8 PEM".into()))?;
        let public_key = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes());
        let key = EncodingKey::from_ec_pem(pem.as_bytes())
            .map_err(|_| PushError::Credentials("the VAPID key is not a P-256 key in PKCS#8 PEM".into()))?;
        Ok(Self { key, public_key, subject: subject.to_owned() })
    }

    /// The public key, base64url: the `applicationServerKey` a page subscribes with.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// A token for the push service at `audience` (an origin), valid until `exp`.
    fn token(&self, audience: &str, exp: u64) -> Result<String, PushError> {
        #[derive(Serialize)]
        struct Claims<'a> {
            aud: &'a str,
            exp: u64,
            sub: &'a str,
        }
        let claims = Claims { aud: audience, exp, sub: &self.subject };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)
            .map_err(|err| PushError::Credentials(format!("signing the VAPID token: {err}")))
    }
}

/// What a message asks of the push service besides its body.
#[derive(Debug, Clone, Copy)]
pub struct WebPushOptions<'a> {
    /// How long the push service keeps it for an offline browser, in seconds (`TTL`).
    pub ttl: u32,
    /// `very-low`, `low`, `normal` or `high` (`Urgency`).
    pub urgency: Option<&'a str>,
    /// A newer message with the same topic replaces one not yet delivered (`Topic`: at most 32
    /// base64url characters).
    pub topic: Option<&'a str>,
}

/// A VAPID token and when to stop using it.
struct CachedToken {
    header: String,
    until: Instant,
}

/// Sends Web Push messages through a checked [`Sender`].
pub struct WebPushClient {
    sender: Sender,
    /// Authorisations by VAPID key and push service origin.
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
}

impl WebPushClient {
    /// A client sending through `sender` (its address policy applies to every endpoint).
    pub fn new(sender: Sender) -> Self {
        Self { sender, tokens: Mutex::new(HashMap::new()) }
    }

    /// Encrypts `plaintext` to `subscription` and sends it with `vapid`'s authorisation.
    pub async fn send(
        &self,
        vapid: &VapidKey,
        subscription: &Subscription,
        plaintext: &[u8],
        options: WebPushOptions<'_>,
    ) -> Result<PushOutcome, PushError> {
        if let Some(urgency) = options.urgency
            && !["very-low", "low", "normal", "high"].contains(&urgency)
        {
            return Err(PushError::Invalid("urgency (very-low, low, normal or high)"));
        }
        if let Some(topic) = options.topic
            && (topic.is_empty()
                || topic.len() > 32
                || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(PushError::Invalid("topic (at most 32 base64url characters)"));
        }
        let body = encrypt(plaintext, subscription)?;
        let authorization = self.authorization(vapid, &subscription.endpoint)?;
        let mut headers = vec![
            ("authorization".to_owned(), authorization),
            ("content-encoding".to_owned(), "aes128gcm".to_owned()),
            ("content-type".to_owned(), "application/octet-stream".to_owned()),
            ("ttl".to_owned(), options.ttl.to_string()),
        ];
        if let Some(urgency) = options.urgency {
            headers.push(("urgency".to_owned(), urgency.to_owned()));
        }
        if let Some(topic) = options.topic {
            headers.push(("topic".to_owned(), topic.to_owned()));
        }
        let attempt = match self.sender.post(&subscription.endpoint, &headers, body).await {
            Ok(attempt) => attempt,
            Err(SendError::Address(refused)) => {
                return Ok(PushOutcome::Rejected {
                    status: 0,
                    reason: format!("endpoint refused: {refused}"),
                });
            }
            Err(err) => return Err(PushError::Client(err.to_string())),
        };
        let reason = |status: u16| match attempt.snippet.trim() {
            "" => format!("HTTP {status}"),
            text => format!("HTTP {status}: {}", text.chars().take(200).collect::<String>()),
        };
        Ok(match attempt.status {
            Some(200..=299) => PushOutcome::Delivered { id: None },
            Some(status @ (404 | 410)) => PushOutcome::Unregistered { reason: reason(status) },
            Some(status @ (401 | 403)) => {
                self.tokens.lock().unwrap_or_else(|p| p.into_inner()).clear();
                PushOutcome::CredentialsRejected { reason: reason(status) }
            }
            Some(status @ (429 | 500..=599)) => {
                let after = match attempt.verdict {
                    crate::sender::Verdict::Retry { after } => after,
                    _ => None,
                };
                PushOutcome::Retry { after, reason: reason(status) }
            }
            Some(status) => PushOutcome::Rejected { status, reason: reason(status) },
            None => PushOutcome::Retry { after: None, reason: attempt.snippet },
        })
    }

    /// `vapid t=<token>, k=<public key>` for the endpoint's origin, cached until an hour before
    /// the token expires.
    fn authorization(&self, vapid: &VapidKey, endpoint: &str) -> Result<String, PushError> {
        let url =
            reqwest::Url::parse(endpoint).map_err(|_| PushError::DeviceToken("an endpoint URL".into()))?;
        let origin = url.origin().ascii_serialization();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let id = (vapid.public_key.clone(), origin.clone());
        if let Some(cached) = tokens.get(&id)
            && Instant::now() < cached.until
        {
            return Ok(cached.header.clone());
        }
        let token = vapid.token(&origin, unix_now() + VAPID_LIFETIME.as_secs())?;
        let header = format!("vapid t={token}, k={}", vapid.public_key);
        let until = Instant::now() + VAPID_LIFETIME - Duration::from_secs(3600);
        tokens.insert(id, CachedToken { header: header.clone(), until });
        Ok(header)
    }
}
