//! Apple Push Notification service: token-based connections over HTTP/2.
//!
//! Each request is a `POST /3/device/{token}` on one HTTP/2 connection per client (APNs takes
//! many concurrent streams on one connection and asks providers not to open and close
//! connections per notification), authorised by a provider token: an ES256 JWT whose header names
//! the key (`kid`) and whose claims name the team (`iss`) and the time it was made (`iat`).
//! Apple refuses a token older than an hour and throttles one made more often than every 20
//! minutes, so each key's token is made once and remade after [`TOKEN_LIFETIME`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use tokio::time::Instant;

use super::{PushError, PushOutcome, read_capped, retry_after, unix_now};

/// Apple's production service.
pub const PRODUCTION_URL: &str = "https://api.push.apple.com";
/// Apple's development (sandbox) service, for apps built with a development profile.
pub const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";
/// The largest payload APNs takes (VoIP pushes may have 5 KiB; this client sends no VoIP).
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// How long a provider token is used before a new one is made: under Apple's hour, over its
/// 20 minutes.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);
/// The longest collapse id APNs takes, in bytes.
const MAX_COLLAPSE_ID_BYTES: usize = 64;
/// Most bytes of an answer read (APNs' errors are a short JSON object).
const MAX_ANSWER_BYTES: usize = 4096;

/// An app's APNs signing key (a `.p8` file from Apple's developer account) and who it is.
pub struct ApnsKey {
    team_id: String,
    key_id: String,
    key: EncodingKey,
}

impl std::fmt::Debug for ApnsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key itself is a secret: never printed.
        f.debug_struct("ApnsKey").field("team_id", &self.team_id).field("key_id", &self.key_id).finish()
    }
}

impl ApnsKey {
    /// Reads a `.p8` key (a PKCS#8 PEM P-256 key) of `team_id`'s key `key_id` (both ten
    /// characters in Apple's account).
    pub fn from_p8(team_id: &str, key_id: &str, pem: &[u8]) -> Result<Self, PushError> {
        for (name, value) in [("team id", team_id), ("key id", key_id)] {
            if value.is_empty() || value.len() > 32 || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(PushError::Credentials(format!("the {name} must be letters and digits")));
            }
        }
        let key = EncodingKey::from_ec_pem(pem).map_err(|_| {
            PushError::Credentials("the key is not a PKCS#8 P-256 key in PEM (a .p8 file)".into())
        })?;
        Ok(Self { team_id: team_id.to_owned(), key_id: key_id.to_owned(), key })
    }

    /// A new provider token made at `iat` (Unix seconds).
    fn token(&self, iat: u64) -> Result<String, PushError> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            iat: u64,
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, &Claims { iss: &self.team_id, iat }, &self.key)
            .map_err(|err| PushError::Credentials(format!("signing the provider token: {err}")))
    }
}

/// The kind of notification (`apns-push-type`), which must match the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushType {
    /// Shows something to the user (an `alert`, a sound or a badge).
    Alert,
    /// Wakes the app without telling the user (`content-available`); sent at priority 5.
    Background,
}

impl PushType {
    fn as_str(self) -> &'static str {
        match self {
            PushType::Alert => "alert",
            PushType::Background => "background",
        }
    }
}

/// One notification to one device.
#[derive(Debug, Clone)]
pub struct ApnsRequest<'a> {
    /// The device token, in hex, as the app got it from the system.
    pub device_token: &'a str,
    /// The app's bundle id (`apns-topic`).
    pub topic: &'a str,
    /// The kind of notification.
    pub push_type: PushType,
    /// 10 (at once) or 5 (when it suits the device); APNs' default (10) when `None`.
    pub priority: Option<u8>,
    /// Until when (Unix seconds) APNs keeps trying a device that is offline; `Some(0)`: once.
    pub expiration: Option<u64>,
    /// Notifications with the same collapse id show as one.
    pub collapse_id: Option<&'a str>,
    /// The notification's id (`apns-id`, a UUID), which APNs echoes: the same on every attempt
    /// of one delivery, so a retried notification can be told from a new one.
    pub id: Option<&'a str>,
    /// The JSON payload (`{"aps": {...}, ...}`).
    pub payload: &'a [u8],
}

impl ApnsRequest<'_> {
    /// Checks what APNs would refuse, before it is sent.
    pub fn check(&self) -> Result<(), PushError> {
        let token = self.device_token;
        if token.len() < 16 || token.len() > 400 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PushError::DeviceToken("an APNs device token is hexadecimal".into()));
        }
        if self.topic.is_empty() || self.topic.len() > 255 || self.topic.bytes().any(|b| b.is_ascii_control())
        {
            return Err(PushError::Invalid("topic (the app's bundle id)"));
        }
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(PushError::PayloadTooLarge { size: self.payload.len(), limit: MAX_PAYLOAD_BYTES });
        }
        if let Some(priority) = self.priority
            && !matches!(priority, 5 | 10)
        {
            return Err(PushError::Invalid("priority (5 or 10)"));
        }
        if let Some(id) = self.collapse_id
            && (id.len() > MAX_COLLAPSE_ID_BYTES || id.bytes().any(|b| b.is_ascii_control()))
        {
            return Err(PushError::Invalid("collapse id (at most 64 bytes)"));
        }
        Ok(())
    }
}

/// A provider token and when it was made.
struct CachedToken {
    jwt: String,
    made: Instant,
}

/// Sends notifications to APNs (or to what `base_url` names).
pub struct ApnsClient {
    http: reqwest::Client,
    base_url: String,
    /// Provider tokens by team and key.
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
}

impl ApnsClient {
    /// A client of the service at `base_url` ([`PRODUCTION_URL`], [`SANDBOX_URL`] or a fake)
    /// over `http`, which must speak HTTP/2 ([`http2_client`]).
    pub fn new(base_url: &str, http: reqwest::Client) -> Self {
        Self { http, base_url: base_url.trim_end_matches('/').to_owned(), tokens: Mutex::new(HashMap::new()) }
    }

    /// Sends one notification signed by `key`.
    pub async fn send(&self, key: &ApnsKey, request: ApnsRequest<'_>) -> Result<PushOutcome, PushError> {
        request.check()?;
        let jwt = self.provider_token(key)?;
        let url = format!("{}/3/device/{}", self.base_url, request.device_token);
        let mut post = self
            .http
            .post(url)
            .bearer_auth(jwt)
            .header("apns-topic", request.topic)
            .header("apns-push-type", request.push_type.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.payload.to_vec());
        let priority = request.priority.or((request.push_type == PushType::Background).then_some(5));
        if let Some(priority) = priority {
            post = post.header("apns-priority", priority.to_string());
        }
        if let Some(expiration) = request.expiration {
            post = post.header("apns-expiration", expiration.to_string());
        }
        if let Some(id) = request.collapse_id {
            post = post.header("apns-collapse-id", id);
        }
        if let Some(id) = request.id {
            post = post.header("apns-id", id);
        }
        let response = match post.send().await {
            Ok(response) => response,
            Err(err) => {
                return Ok(PushOutcome::Retry { after: None, reason: format!("APNs unreachable: {err}") });
            }
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers());
        let id = response.headers().get("apns-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if status == 200 {
            return Ok(PushOutcome::Delivered { id });
        }
        let body = read_capped(response, MAX_ANSWER_BYTES).await;
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|answer| answer.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {status}"));
        Ok(self.outcome(key, status, reason, after))
    }

    /// What an error answer means (Apple's "Handling notification responses from APNs").
    fn outcome(&self, key: &ApnsKey, status: u16, reason: String, after: Option<Duration>) -> PushOutcome {
        match (status, reason.as_str()) {
            (410, _) | (400, "BadDeviceToken") => PushOutcome::Unregistered { reason },
            (403, "ExpiredProviderToken") => {
                // Apple thinks the token old (a clock apart): a new one, and again.
                self.forget_token(key);
                PushOutcome::Retry { after: None, reason }
            }
            (
                403,
                "InvalidProviderToken"
                | "MissingProviderToken"
                | "BadCertificate"
                | "BadCertificateEnvironment",
            )
            | (403, "Forbidden") => PushOutcome::CredentialsRejected { reason },
            (429 | 500 | 503, _) => PushOutcome::Retry { after, reason },
            _ => PushOutcome::Rejected { status, reason },
        }
    }

    /// The provider token of `key`, made anew once it is [`TOKEN_LIFETIME`] old.
    fn provider_token(&self, key: &ApnsKey) -> Result<String, PushError> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let id = (key.team_id.clone(), key.key_id.clone());
        if let Some(cached) = tokens.get(&id)
            && cached.made.elapsed() < TOKEN_LIFETIME
        {
            return Ok(cached.jwt.clone());
        }
        let jwt = key.token(unix_now())?;
        tokens.insert(id, CachedToken { jwt: jwt.clone(), made: Instant::now() });
        Ok(jwt)
    }

    fn forget_token(&self, key: &ApnsKey) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.remove(&(key.team_id.clone(), key.key_id.clone()));
    }
}

/// An HTTP client for push services: HTTP/2 only (APNs takes nothing else; FCM is fine with
/// it), rustls on ring with the platform's roots plus `extra_roots` (PEM; a test's authority),
/// and timeouts on connecting and on each request.
pub fn http2_client(
    extra_roots: &[Vec<u8>],
    request_timeout: Duration,
) -> Result<reqwest::Client, PushError> {
    crate::install_tls_provider();
    let mut builder = reqwest::Client::builder()
        .http2_prior_knowledge()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(request_timeout)
        .user_agent("Tributary-Push/1");
    for pem in extra_roots {
        let root = reqwest::Certificate::from_pem(pem).map_err(|err| PushError::Client(err.to_string()))?;
        builder = builder.add_root_certificate(root);
    }
    builder.build().map_err(|err| PushError::Client(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: &str) -> ApnsRequest<'_> {
        ApnsRequest {
            device_token: token,
            topic: "com.example.app",
            push_type: PushType::Alert,
            priority: None,
            expiration: None,
            collapse_id: None,
            id: None,
            payload: br#"{"aps":{"alert":"hi"}}"#,
        }
    }

    #[test]
    fn what_apns_would_refuse_is_refused_before_sending() {
        let token = "a1".repeat(32);
        assert_eq!(request(&token).check(), Ok(()));
        assert!(matches!(request("not-hex-at-all-000").check(), Err(PushError::DeviceToken(_))));
        assert!(matches!(request("abcd").check(), Err(PushError::DeviceToken(_))));
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        let r = ApnsRequest { payload: &big, ..request(&token) };
        assert_eq!(r.check(), Err(PushError::PayloadTooLarge { size: 4097, limit: 4096 }));
        let r = ApnsRequest { priority: Some(7), ..request(&token) };
        assert!(matches!(r.check(), Err(PushError::Invalid(_))));
        let long = "c".repeat(65);
        let r = ApnsRequest { collapse_id: Some(&long), ..request(&token) };
        assert!(matches!(r.check(), Err(PushError::Invalid(_))));
        let r = ApnsRequest { topic: "", ..request(&token) };
        assert!(matches!(r.check(), Err(PushError::Invalid(_))));
    }

    #[test]
    fn a_provider_token_is_reused_until_apple_calls_it_expired_then_made_anew() {
        let keys = tributary_testkit::push::KeyPair::p256();
        let key = ApnsKey::from_p8("TEAM123456", "KEY1234567", keys.private_pem.as_bytes()).unwrap();
        crate::install_tls_provider();
        let client = ApnsClient::new("https://localhost:1", reqwest::Client::new());
        let first = client.provider_token(&key).unwrap();
        assert_eq!(client.provider_token(&key).unwrap(), first);
        let claims = first.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
        )
        .unwrap();
        assert_eq!(claims["iss"], "TEAM123456");
        assert!(claims["iat"].as_u64().unwrap().abs_diff(unix_now()) < 5);
        let outcome = client.outcome(&key, 403, "ExpiredProviderToken".into(), None);
        assert!(matches!(outcome, PushOutcome::Retry { .. }));
        assert!(client.tokens.lock().unwrap().is_empty(), "the next send makes a new token");
        assert!(format!("{key:?}").contains("KEY1234567") && !format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_key_that_is_not_a_p8_key_is_refused_and_never_printed() {
        assert!(matches!(
            ApnsKey::from_p8("TEAM123456", "KEY1234567", b"nope"),
            Err(PushError::Credentials(_))
        ));
        assert!(matches!(ApnsKey::from_p8("TEAM 12", "KEY1234567", b"nope"), Err(PushError::Credentials(_))));
    }
}
