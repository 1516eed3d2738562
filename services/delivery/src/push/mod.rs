//! Push notification services: Apple's APNs ([`apns`]), Firebase Cloud Messaging ([`fcm`]) and
//! Web Push to browsers ([`webpush`]).
//!
//! Each client speaks its service's protocol (APNs: HTTP/2 with an ES256 provider token; FCM:
//! HTTP v1 with an OAuth2 access token from a service account's RS256 assertion; Web Push: RFC
//! 8291 encryption and a VAPID token), caches its
//! tokens, and reads each answer into a [`PushOutcome`] the delivery pipeline acts on: a dead
//! device token removes the device, a refused credential stops the app's pushes, and the rest
//! is retried or dead-lettered. Base URLs are settings, so tests point them at local fakes.

pub mod apns;
pub mod deliver;
pub mod fcm;
pub mod job;
pub mod message;
pub mod queue;
pub mod webpush;

use std::time::Duration;

/// What a push service said of one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Accepted; the service's id for it, if it gave one.
    Delivered {
        /// APNs' `apns-id`, or FCM's message name.
        id: Option<String>,
    },
    /// The device token is no longer valid (uninstalled app, expired token): remove the device.
    Unregistered {
        /// The service's reason.
        reason: String,
    },
    /// Not now: throttled, the service failed, or it could not be reached.
    Retry {
        /// When the service asked to be tried again (`Retry-After`).
        after: Option<Duration>,
        /// What went wrong.
        reason: String,
    },
    /// The app's credentials were refused: its pushes stop and its tenant is told, rather
    /// than every notification being retried against a key that will not work.
    CredentialsRejected {
        /// The service's reason.
        reason: String,
    },
    /// This notification was refused (a payload or header the service does not take): retrying
    /// it cannot help, so it is dead-lettered.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The service's reason.
        reason: String,
    },
}

/// A push request that cannot be made, found before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// A credential could not be read (a malformed key or service account).
    #[error("invalid credentials: {0}")]
    Credentials(String),
    /// A device token that is not one.
    #[error("invalid device token: {0}")]
    DeviceToken(String),
    /// The payload is over the service's limit.
    #[error("the payload is {size} bytes, over the limit of {limit}")]
    PayloadTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A header value the service would refuse.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// The seconds of a `Retry-After` header, if it has them.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The current Unix time in seconds.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// Reads at most `limit` bytes of an answer's body (a service's error is small; a fake or a
/// proxy's need not be).
pub(crate) async fn read_capped(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk[..chunk.len().min(limit - kept.len())]),
            _ => break,
        }
    }
    kept
}
