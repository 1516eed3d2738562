//! Delivery services: what the worker role sends on behalf of tenants (webhooks, pushes and
//! texts), built on one pipeline of durable queues, retries and dead letters.
//!
//! This crate starts with the parts every delivery needs and that hold no state:
//! - [`signature`]: Standard Webhooks signing (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature`), secrets and their rotation;
//! - [`address`]: which endpoint URLs and addresses a delivery may reach (no loopback, private,
//!   link-local, multicast or metadata addresses unless the operator allows a range), checked
//!   on the address actually connected to;
//! - [`schedule`]: when a failed delivery is tried again (backoff with jitter, `Retry-After`,
//!   about a day and a half by default) and when it is dead-lettered;
//! - [`sender`]: one HTTP attempt within those rules (the client's resolver drops forbidden
//!   addresses, no redirects, time limits, a capped response), classified for retries;
//! - [`worker`]: the loop that claims due deliveries from the store's queue, signs and sends
//!   them, and records each attempt (retried, delivered or dead-lettered);
//! - [`rules`]: which feed events a rule takes and the requests (batched, enveloped or raw,
//!   with stable event ids) it makes of them;
//! - [`rule_targets`]: a rule's SMS or push target, its templates filled in from each event;
//! - [`router`]: the loop that reads the durable feed of every app with rules and queues the
//!   rules' deliveries, moving its saved position in the same transaction.
//! - [`push`]: the push services' clients (APNs over HTTP/2 with ES256 provider tokens, FCM
//!   HTTP v1 with OAuth2 tokens from a service account, Web Push with RFC 8291 encryption and
//!   VAPID) and what their answers mean;
//! - [`sms`]: Twilio's Messages API, E.164 numbers, segments, and its callbacks' signature;
//! - [`audit_log`]: the writer of the tenants' transparency logs (management events and audited
//!   namespaces' messages, from the durable feeds) and the proofs made from a stored log.

#![forbid(unsafe_code)]

pub mod address;
pub mod audit_log;
pub mod notices;

/// Installs rustls's ring crypto provider for the process (a no-op when one is set). reqwest is
/// built without a provider of its own (no aws-lc), so a process installs this before it makes
/// its first HTTP client.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
pub mod push;
pub mod quota;
pub mod router;
pub mod rule_targets;
pub mod rules;
pub mod schedule;
pub mod sender;
pub mod signature;
pub mod sms;
pub mod worker;
