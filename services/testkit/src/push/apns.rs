//! The APNs fake: HTTP/2 only, over TLS, checking provider tokens, paths and headers as APNs does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::{Scripted, unix_now};
use crate::tls::TestCertificates;

/// A notification the APNs fake accepted.
#[derive(Debug, Clone)]
pub struct ApnsReceived {
    /// The device token of the path.
    pub device_token: String,
    /// `apns-topic`.
    pub topic: String,
    /// `apns-push-type`.
    pub push_type: String,
    /// `apns-priority`, if sent.
    pub priority: Option<String>,
    /// `apns-expiration`, if sent.
    pub expiration: Option<String>,
    /// `apns-collapse-id`, if sent.
    pub collapse_id: Option<String>,
    /// The payload.
    pub payload: Value,
    /// The `apns-id` it was answered with.
    pub apns_id: String,
}

#[derive(Default)]
struct ApnsState {
    team_id: String,
    key_id: String,
    public_pem: String,
    received: Mutex<Vec<ApnsReceived>>,
    unregistered: Mutex<HashSet<String>>,
    scripted: Mutex<VecDeque<Scripted>>,
    /// Provider tokens verified, with their `iat`: as APNs, a token's signature is checked
    /// once, its age on every request.
    tokens: Mutex<HashMap<String, u64>>,
    connections: AtomicUsize,
    requests: AtomicUsize,
    /// How long each answer waits, in milliseconds (a slow service).
    delay_ms: AtomicU64,
}

/// A fake APNs: HTTP/2 over TLS on a loopback port.
pub struct ApnsFake {
    /// Its base URL (`https://localhost:port`).
    pub url: String,
    /// The authority its certificate is signed by (PEM): what its clients trust.
    pub ca_pem: Vec<u8>,
    state: Arc<ApnsState>,
    task: tokio::task::JoinHandle<()>,
    _certificates: Option<TestCertificates>,
}

impl Drop for ApnsFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApnsFake {
    /// Starts a fake that takes provider tokens of `team_id`'s key `key_id`, verified with
    /// `public_pem`, on a loopback port with a fresh test authority's certificate.
    pub async fn start(team_id: &str, key_id: &str, public_pem: &str) -> Self {
        let certificates = TestCertificates::generate();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let files = [certificates.cert_path(), certificates.key_path(), certificates.ca_path()];
        let mut fake = Self::serve(listener, &files, team_id, key_id, public_pem);
        fake._certificates = Some(certificates);
        fake
    }

    /// Starts a fake on `listener` with the certificate, key and authority of `files` (PEM
    /// paths, in that order): a benchmark's, whose server was told of them before it started.
    pub fn serve(
        listener: tokio::net::TcpListener,
        files: &[String; 3],
        team_id: &str,
        key_id: &str,
        public_pem: &str,
    ) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files[0])
            .expect("the certificate")
            .collect::<Result<_, _>>()
            .expect("the certificate");
        let key = PrivateKeyDer::from_pem_file(&files[1]).expect("the key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("a server config");
        // APNs speaks HTTP/2 and nothing else.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let addr: SocketAddr = listener.local_addr().expect("its address");
        let state = Arc::new(ApnsState {
            team_id: team_id.to_owned(),
            key_id: key_id.to_owned(),
            public_pem: public_pem.to_owned(),
            ..Default::default()
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (acceptor, state) = (acceptor.clone(), serving.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                        return; // no HTTP/1.1 here
                    }
                    state.connections.fetch_add(1, Ordering::Relaxed);
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(apns_answer(&state, request).await) }
                    });
                    // APNs takes up to a thousand concurrent streams on a connection.
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .max_concurrent_streams(1000)
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let ca_pem = std::fs::read(&files[2]).expect("the authority");
        Self { url: format!("https://localhost:{}", addr.port()), ca_pem, state, task, _certificates: None }
    }

    /// The notifications accepted so far, in order.
    pub fn received(&self) -> Vec<ApnsReceived> {
        self.state.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests answered so far (accepted or not).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// TLS connections clients opened.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Distinct provider tokens seen.
    pub fn provider_tokens(&self) -> usize {
        self.state.tokens.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Takes the notifications accepted since the last drain (a benchmark's, read as they
    /// come rather than kept).
    pub fn drain(&self) -> Vec<ApnsReceived> {
        std::mem::take(&mut *self.state.received.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// From now on every answer waits `delay` (a slow service: requests stay in flight).
    pub fn answer_after(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// From now on `device_token` is answered `410 Unregistered`.
    pub fn unregister(&self, device_token: &str) {
        self.state.unregistered.lock().unwrap_or_else(|p| p.into_inner()).insert(device_token.to_owned());
    }

    /// The next request (with a valid token) is answered `status` with `reason`.
    pub fn answer_next(&self, status: u16, reason: &'static str, retry_after: Option<u64>) {
        let scripted = Scripted { status, reason, retry_after };
        self.state.scripted.lock().unwrap_or_else(|p| p.into_inner()).push_back(scripted);
    }
}

fn apns_error(status: u16, reason: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(json!({ "reason": reason }).to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    response.headers_mut().insert("content-type", "application/json".parse().expect("a header"));
    response
}

/// Checks a request the way APNs does and answers it.
async fn apns_answer(state: &ApnsState, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    if request.version() != hyper::Version::HTTP_2 {
        return apns_error(400, "BadRequest");
    }
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // The provider token first: nothing is looked at for a request that is not the team's.
    // The scheme's case does not matter (RFC 9110); Apple's examples write `bearer`.
    let bearer =
        |v: String| v.get(..7).filter(|s| s.eq_ignore_ascii_case("bearer ")).map(|_| v[7..].to_owned());
    let Some(jwt) = header("authorization").and_then(bearer) else {
        return apns_error(403, "MissingProviderToken");
    };
    if let Err(reason) = verify_provider_token(state, &jwt) {
        return apns_error(403, reason);
    }
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let scripted = state.scripted.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
    if let Some(scripted) = scripted {
        let mut response = apns_error(scripted.status, scripted.reason);
        if let Some(after) = scripted.retry_after {
            response.headers_mut().insert("retry-after", after.to_string().parse().expect("a header"));
        }
        return response;
    }
    if request.method() != hyper::Method::POST {
        return apns_error(405, "MethodNotAllowed");
    }
    let Some(device_token) = request.uri().path().strip_prefix("/3/device/").map(str::to_owned) else {
        return apns_error(404, "BadPath");
    };
    if device_token.is_empty() || !device_token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return apns_error(400, "BadDeviceToken");
    }
    let Some(topic) = header("apns-topic") else { return apns_error(400, "MissingTopic") };
    let Some(push_type) = header("apns-push-type") else { return apns_error(400, "InvalidPushType") };
    if !["alert", "background", "location", "voip", "complication", "fileprovider", "mdm", "liveactivity"]
        .contains(&push_type.as_str())
    {
        return apns_error(400, "InvalidPushType");
    }
    let priority = header("apns-priority");
    match (push_type.as_str(), priority.as_deref()) {
        (_, Some(p)) if p != "5" && p != "10" && p != "1" => return apns_error(400, "BadPriority"),
        // Apple: a background notification must be sent at priority 5.
        ("background", Some("10") | None) => return apns_error(400, "BadPriority"),
        _ => {}
    }
    let expiration = header("apns-expiration");
    if expiration.as_ref().is_some_and(|e| e.parse::<u64>().is_err()) {
        return apns_error(400, "BadExpirationDate");
    }
    let collapse_id = header("apns-collapse-id");
    let requested_id = header("apns-id");
    if collapse_id.as_ref().is_some_and(|c| c.len() > 64) {
        return apns_error(400, "BadCollapseId");
    }
    let Ok(body) = request.into_body().collect().await.map(|b| b.to_bytes()) else {
        return apns_error(400, "BadPayload");
    };
    if body.len() > 4096 {
        return apns_error(413, "PayloadTooLarge");
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(payload @ Value::Object(_)) if payload.get("aps").is_some_and(Value::is_object) => payload,
        _ => return apns_error(400, "PayloadEmpty"),
    };
    if state.unregistered.lock().unwrap_or_else(|p| p.into_inner()).contains(&device_token) {
        return apns_error(410, "Unregistered");
    }
    // APNs answers with the request's own `apns-id` when it names one (a UUID), else its own.
    let apns_id = match requested_id {
        Some(id) if uuid::Uuid::parse_str(&id).is_ok() => id,
        Some(_) => return apns_error(400, "BadMessageId"),
        None => uuid::Uuid::new_v4().to_string().to_uppercase(),
    };
    state.received.lock().unwrap_or_else(|p| p.into_inner()).push(ApnsReceived {
        device_token,
        topic,
        push_type,
        priority,
        expiration,
        collapse_id,
        payload,
        apns_id: apns_id.clone(),
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    response.headers_mut().insert("apns-id", apns_id.parse().expect("a header"));
    response
}

/// Verifies a provider token as APNs does: ES256 by the team's key named in `kid`, `iss` the
/// team, `iat` within the last hour.
fn verify_provider_token(state: &ApnsState, jwt: &str) -> Result<(), &'static str> {
    let known = state.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(jwt).copied();
    let iat = match known {
        Some(iat) => iat,
        None => {
            let iat = verify_signature(state, jwt)?;
            state.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(jwt.to_owned(), iat);
            iat
        }
    };
    let now = unix_now();
    if iat + 3600 < now {
        return Err("ExpiredProviderToken");
    }
    if iat > now + 60 {
        return Err("InvalidProviderToken");
    }
    Ok(())
}

/// Checks a provider token's header and signature; returns its `iat`.
fn verify_signature(state: &ApnsState, jwt: &str) -> Result<u64, &'static str> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| "InvalidProviderToken")?;
    if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(state.key_id.as_str()) {
        return Err("InvalidProviderToken");
    }
    let key = DecodingKey::from_ec_pem(state.public_pem.as_bytes()).map_err(|_| "InvalidProviderToken")?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims = HashSet::from(["iss".to_owned()]);
    validation.validate_exp = false;
    validation.set_issuer(&[state.team_id.as_str()]);
    let claims =
        jsonwebtoken::decode::<Value>(jwt, &key, &validation).map_err(|_| "InvalidProviderToken")?.claims;
    claims["iat"].as_u64().ok_or("InvalidProviderToken")
}
