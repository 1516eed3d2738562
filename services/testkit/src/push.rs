//! Fakes of the push services that check the real protocols, written from Apple's and Google's
//! documentation independently of the clients under test.
//!
//! - [`ApnsFake`]: HTTP/2 only, over TLS (ALPN `h2`, a test authority's certificate). Every
//!   request's provider token is verified against the team's public key (ES256, `kid`, `iss`,
//!   an `iat` under an hour old), and its path and headers as APNs checks them; answers are
//!   APNs' (`apns-id`, `{"reason": ...}`), with tokens a test unregisters answered 410 and
//!   answers a test queues given first.
//! - [`FcmFake`]: Google's token endpoint (the JWT-bearer grant: an RS256 assertion verified
//!   against the service account's public key, its scope and audience) and FCM's
//!   `messages:send`, which takes only the tokens it issued.
//! - [`KeyPair`]: a fresh P-256 or RSA key made with `openssl`, as the services hand them out.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::tls::{TestCertificates, openssl};

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

/// An answer a test queued for the next request (before any check but the token's).
#[derive(Debug, Clone)]
struct Scripted {
    status: u16,
    reason: &'static str,
    retry_after: Option<u64>,
}

#[derive(Default)]
struct ApnsState {
    team_id: String,
    key_id: String,
    public_pem: String,
    received: Mutex<Vec<ApnsReceived>>,
    unregistered: Mutex<HashSet<String>>,
    scripted: Mutex<VecDeque<Scripted>>,
    tokens: Mutex<HashSet<String>>,
    connections: AtomicUsize,
    requests: AtomicUsize,
}

/// A fake APNs: HTTP/2 over TLS on a loopback port.
pub struct ApnsFake {
    /// Its base URL (`https://localhost:port`).
    pub url: String,
    /// The authority its certificate is signed by (PEM): what its clients trust.
    pub ca_pem: Vec<u8>,
    state: Arc<ApnsState>,
    task: tokio::task::JoinHandle<()>,
    _certificates: TestCertificates,
}

impl Drop for ApnsFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApnsFake {
    /// Starts a fake that takes provider tokens of `team_id`'s key `key_id`, verified with
    /// `public_pem`.
    pub async fn start(team_id: &str, key_id: &str, public_pem: &str) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certificates = TestCertificates::generate();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificates.cert_path())
            .expect("the certificate")
            .collect::<Result<_, _>>()
            .expect("the certificate");
        let key = PrivateKeyDer::from_pem_file(certificates.key_path()).expect("the key");
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
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
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let ca_pem = std::fs::read(certificates.ca_path()).expect("the authority");
        Self {
            url: format!("https://localhost:{}", addr.port()),
            ca_pem,
            state,
            task,
            _certificates: certificates,
        }
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
    state.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(jwt);
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
    let apns_id = uuid::Uuid::new_v4().to_string().to_uppercase();
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
    let iat = claims["iat"].as_u64().ok_or("InvalidProviderToken")?;
    let now = unix_now();
    if iat + 3600 < now {
        return Err("ExpiredProviderToken");
    }
    if iat > now + 60 {
        return Err("InvalidProviderToken");
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Default)]
struct FcmState {
    project_id: String,
    client_email: String,
    public_pem: String,
    token_url: Mutex<String>,
    issued: Mutex<HashSet<String>>,
    token_requests: AtomicUsize,
    revoked: std::sync::atomic::AtomicBool,
    received: Mutex<Vec<Value>>,
    unregistered: Mutex<HashSet<String>>,
    scripted: Mutex<VecDeque<Scripted>>,
}

/// A fake of Google's token endpoint and FCM's `messages:send`, on one loopback port (plain
/// HTTP: the protocol under test is the grant and the API, not TLS).
pub struct FcmFake {
    /// FCM's base URL here.
    pub url: String,
    /// The token endpoint's URL (the assertion's audience).
    pub token_url: String,
    state: Arc<FcmState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FcmFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FcmFake {
    /// Starts a fake of `project_id` that grants tokens to the service account `client_email`
    /// whose key `public_pem` verifies.
    pub async fn start(project_id: &str, client_email: &str, public_pem: &str) -> Self {
        let state = Arc::new(FcmState {
            project_id: project_id.to_owned(),
            client_email: client_email.to_owned(),
            public_pem: public_pem.to_owned(),
            ..Default::default()
        });
        let (token_state, send_state) = (state.clone(), state.clone());
        let app = axum::Router::new()
            .route(
                "/token",
                axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
                    let state = token_state.clone();
                    async move { fcm_token(&state, &headers, &body) }
                }),
            )
            .route(
                "/v1/projects/{project}/{action}",
                axum::routing::post(
                    move |axum::extract::Path((project, action)): axum::extract::Path<(String, String)>,
                          headers: axum::http::HeaderMap,
                          body: Bytes| {
                        let state = send_state.clone();
                        async move { fcm_send(&state, &project, &action, &headers, &body) }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let url = format!("http://{addr}");
        let token_url = format!("{url}/token");
        *state.token_url.lock().unwrap_or_else(|p| p.into_inner()) = token_url.clone();
        Self { url, token_url, state, task }
    }

    /// The messages accepted so far (FCM's `message` objects), in order.
    pub fn received(&self) -> Vec<Value> {
        self.state.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Access tokens asked for so far.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::Relaxed)
    }

    /// From now on `token` is answered `404 UNREGISTERED`.
    pub fn unregister(&self, token: &str) {
        self.state.unregistered.lock().unwrap_or_else(|p| p.into_inner()).insert(token.to_owned());
    }

    /// From now on the account's key is refused (`invalid_grant`) and its tokens too.
    pub fn revoke(&self) {
        self.state.revoked.store(true, Ordering::Relaxed);
        self.state.issued.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The next message (with a valid token) is answered `status` with the error `code`.
    pub fn answer_next(&self, status: u16, code: &'static str, retry_after: Option<u64>) {
        let scripted = Scripted { status, reason: code, retry_after };
        self.state.scripted.lock().unwrap_or_else(|p| p.into_inner()).push_back(scripted);
    }
}

type Answer = (StatusCode, axum::http::HeaderMap, String);

fn answer(status: u16, body: Value) -> Answer {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("a header"));
    (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), headers, body.to_string())
}

/// The JWT-bearer grant (RFC 7523, Google's service-account flow).
fn fcm_token(state: &FcmState, headers: &axum::http::HeaderMap, body: &[u8]) -> Answer {
    state.token_requests.fetch_add(1, Ordering::Relaxed);
    let invalid = |what: &str| answer(400, json!({"error": "invalid_grant", "error_description": what}));
    let form_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !form_type.starts_with("application/x-www-form-urlencoded") {
        return answer(400, json!({"error": "invalid_request"}));
    }
    let form = String::from_utf8_lossy(body);
    let field = |name: &str| {
        form.split('&').find_map(|pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
    };
    if field("grant_type") != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
        return answer(400, json!({"error": "unsupported_grant_type"}));
    }
    let Some(assertion) = field("assertion") else { return invalid("no assertion") };
    if state.revoked.load(Ordering::Relaxed) {
        return invalid("Invalid JWT Signature.");
    }
    let Ok(key) = DecodingKey::from_rsa_pem(state.public_pem.as_bytes()) else { return invalid("no key") };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[state.token_url.lock().unwrap_or_else(|p| p.into_inner()).as_str()]);
    validation.set_issuer(&[state.client_email.as_str()]);
    validation.required_spec_claims = HashSet::from(["exp".into(), "iat".into(), "aud".into(), "iss".into()]);
    let Ok(claims) = jsonwebtoken::decode::<Value>(assertion, &key, &validation).map(|data| data.claims)
    else {
        return invalid("Invalid JWT Signature.");
    };
    if claims["scope"]
        .as_str()
        .is_none_or(|scope| !scope.split(' ').any(|s| s == tributary_delivery::push::fcm::SCOPE))
    {
        return invalid("no messaging scope");
    }
    let (iat, exp) = (claims["iat"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0));
    if exp <= iat || exp - iat > 3600 {
        return invalid("Invalid JWT: exp and iat more than an hour apart");
    }
    let token = format!("ya29.{}", uuid::Uuid::new_v4().simple());
    state.issued.lock().unwrap_or_else(|p| p.into_inner()).insert(token.clone());
    answer(200, json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}))
}

fn fcm_error(status: u16, code: &str) -> Answer {
    let status_name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let details =
        json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]);
    answer(
        status,
        json!({"error": {"code": status, "message": code, "status": status_name, "details": details}}),
    )
}

/// `messages:send`: a bearer token this fake issued, the project's path, one `message` with a
/// `token` (and nothing of the legacy API).
fn fcm_send(
    state: &FcmState,
    project: &str,
    action: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Answer {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !state.issued.lock().unwrap_or_else(|p| p.into_inner()).contains(bearer) {
        return fcm_error(401, "THIRD_PARTY_AUTH_ERROR");
    }
    if project != state.project_id || action != "messages:send" {
        return fcm_error(404, "NOT_FOUND");
    }
    if let Some(scripted) = state.scripted.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
        let mut reply = fcm_error(scripted.status, scripted.reason);
        if let Some(after) = scripted.retry_after {
            reply.1.insert("retry-after", after.to_string().parse().expect("a header"));
        }
        return reply;
    }
    let Ok(Value::Object(mut envelope)) = serde_json::from_slice::<Value>(body) else {
        return fcm_error(400, "INVALID_ARGUMENT");
    };
    let Some(message) = envelope.remove("message").filter(Value::is_object) else {
        return fcm_error(400, "INVALID_ARGUMENT");
    };
    if !envelope.is_empty() || serde_json::to_vec(&message).map_or(0, |m| m.len()) > 4096 {
        return fcm_error(400, "INVALID_ARGUMENT");
    }
    let Some(token) = message["token"].as_str() else { return fcm_error(400, "INVALID_ARGUMENT") };
    if state.unregistered.lock().unwrap_or_else(|p| p.into_inner()).contains(token) {
        return fcm_error(404, "UNREGISTERED");
    }
    let name = format!("projects/{project}/messages/{}", uuid::Uuid::new_v4().simple());
    state.received.lock().unwrap_or_else(|p| p.into_inner()).push(message);
    answer(200, json!({ "name": name }))
}
