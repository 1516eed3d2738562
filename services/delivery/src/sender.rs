//! Sending one delivery attempt over HTTP, safely: the connection goes only to addresses the
//! [`AddressPolicy`] allows (checked on what a name resolves to, by the client's own resolver,
//! so the address checked is the address connected to), redirects are not followed (a
//! redirect could lead anywhere), connecting and the whole attempt have time limits, and at most
//! a small part of the response body is read. Each attempt is classified for the retry
//! schedule.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::time::Instant;

use crate::address::{AddressError, AddressPolicy};

/// Limits of an attempt.
#[derive(Debug, Clone, Copy)]
pub struct SenderLimits {
    /// Longest wait for the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for the whole attempt, response included.
    pub request_timeout: Duration,
    /// Most bytes of the response body read (and kept in the delivery log).
    pub max_response_bytes: usize,
}

impl Default for SenderLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_response_bytes: 4096,
        }
    }
}

/// Why an attempt could not be made at all.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The endpoint is not one deliveries may reach.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The HTTP client could not be built.
    #[error("the HTTP client could not be built: {0}")]
    Client(String),
}

/// What became of an attempt, for the retry schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx answer: delivered.
    Delivered,
    /// `410 Gone`: the receiver asks for no more deliveries (the endpoint is disabled).
    Gone,
    /// Anything else (a timeout, a connection error, 429, 5xx, another status, a redirect):
    /// try again, no sooner than `after` when the receiver said so (`Retry-After`).
    Retry {
        /// The receiver's `Retry-After`, in seconds, if it gave one.
        after: Option<Duration>,
    },
}

/// One attempt, as the delivery log keeps it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The verdict.
    pub verdict: Verdict,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// From the start of the attempt to its answer (or failure).
    pub latency: Duration,
    /// The start of the response body (at most [`SenderLimits::max_response_bytes`], lossy
    /// UTF-8), or what went wrong.
    pub snippet: String,
}

/// Resolves names for the delivery client, keeping only the addresses the policy allows.
struct CheckedResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed = policy
                .keep_allowed(name.as_str(), found)
                .map_err(|err| Box::new(err) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Sends delivery attempts.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    limits: SenderLimits,
}

impl Sender {
    /// Builds a sender that reaches only what `policy` allows.
    pub fn new(policy: AddressPolicy, limits: SenderLimits) -> Result<Self, SendError> {
        let policy = Arc::new(policy);
        crate::install_tls_provider();
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver { policy: policy.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.request_timeout)
            .user_agent("Tributary-Webhooks/1")
            .build()
            .map_err(|err| SendError::Client(err.to_string()))?;
        Ok(Self { client, policy, limits })
    }

    /// Returns the policy endpoints are checked against.
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// POSTs `body` to `url` with `headers`. The URL is checked first (an address in it never
    /// reaches the resolver); a refused endpoint is an error, every other outcome an
    /// [`Attempt`].
    pub async fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Attempt, SendError> {
        let url: Url = self.policy.check_url(url)?;
        let start = Instant::now();
        let mut request = self.client.post(url).body(body);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                if let Some(refused) = address_refusal(&err) {
                    return Err(SendError::Address(refused));
                }
                let snippet = if err.is_timeout() { "timed out".to_owned() } else { describe(&err) };
                let verdict = Verdict::Retry { after: None };
                return Ok(Attempt { verdict, status: None, latency: start.elapsed(), snippet });
            }
        };
        let status = response.status();
        let after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let snippet = self.read_snippet(response).await;
        let verdict = if status.is_success() {
            Verdict::Delivered
        } else if status == reqwest::StatusCode::GONE {
            Verdict::Gone
        } else {
            Verdict::Retry { after }
        };
        Ok(Attempt { verdict, status: Some(status.as_u16()), latency: start.elapsed(), snippet })
    }

    /// Reads at most the limit of the body, then drops the rest (an endless body costs no more).
    async fn read_snippet(&self, mut response: reqwest::Response) -> String {
        let mut kept = Vec::new();
        while kept.len() < self.limits.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.limits.max_response_bytes - kept.len();
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    }
}

/// The address refusal inside a failed request, if that is why it failed.
fn address_refusal(err: &reqwest::Error) -> Option<AddressError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<AddressError>() {
            return Some(refused.clone());
        }
        source = current.source();
    }
    None
}

/// A failed request in a few words, for the delivery log: the kind, then the innermost cause
/// (never the request error's own text, which names the URL, and a URL may hold a token).
fn describe(err: &reqwest::Error) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    let mut innermost = None;
    while let Some(current) = cause {
        innermost = Some(current.to_string());
        cause = current.source();
    }
    match innermost {
        Some(reason) => format!("{}: {reason}", kind_of(err)),
        None => kind_of(err).to_owned(),
    }
}

fn kind_of(err: &reqwest::Error) -> &'static str {
    if err.is_connect() {
        "could not connect"
    } else if err.is_request() {
        "the request failed"
    } else if err.is_body() || err.is_decode() {
        "the response could not be read"
    } else {
        "the attempt failed"
    }
}
