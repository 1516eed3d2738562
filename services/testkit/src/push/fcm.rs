//! The FCM fake: Google's token endpoint (the JWT-bearer grant) and `messages:send`.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::{Answer, Scripted, answer};

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
