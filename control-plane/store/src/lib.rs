//! Tributary's control-plane store: tenants, apps, API keys and token signing keys.
//!
//! This crate owns the relational schema (`migrations/sqlite` and `migrations/postgres`),
//! every query against it, the translation of database errors into [`StoreError`], and the
//! encryption of tenant secrets at rest under a [`MasterKey`]. Every query that reads an app's
//! data is scoped by the app id, and by the tenant id where the caller knows it, so one tenant
//! can never read or change another's records through this API.
//!
//! It does not own HTTP handlers, token verification (it only hands out signing keys), the
//! message engine or configuration loading; callers pass the database URL and master key in.
//!
//! [`Store`] is cheap to clone (a connection pool and an `Arc`) and is shared by the control plane
//! and the data plane. It runs on SQLite (the embedded default) or PostgreSQL (production),
//! chosen by the database URL, with the same methods and the same SQL.
//!
//! # Layout
//! - [`error`]: [`StoreError`], its protocol [`ErrorCode`](tributary_protocol::ErrorCode), and the
//!   one place `sqlx` errors are translated (unique → `AlreadyExists`, foreign key → `NotFound`).
//! - [`crypto`]: [`MasterKey`] and [`SecretCipher`], AES-256-GCM with the owning row as AAD.
//! - `id`: prefixed, time-sortable record ids (`ten_…`, `app_…`, `key_…`, `sk_…`), `[a-z0-9_]` only.
//! - [`db`]: the backend chosen by URL ([`Store::open`]), the pool, connection set-up and the
//!   embedded migrations of each backend; the only backend-specific module (apart from one
//!   table lock in `signing_key::reencrypt_secrets` on PostgreSQL).
//! - [`tenant`]: [`Tenant`] and [`App`] records and their queries.
//! - [`api_key`]: [`ApiKey`] records, the `trb_<key_id>_<secret>` format, creation, verification
//!   and revocation.
//! - [`signing_key`]: per-app HS256 [`SigningKeyRecord`]s, encrypted at rest.
//! - [`delivery`]: the delivery queue (jobs claimed under leases, retried, dead-lettered and
//!   replayed) and its delivery log.
//! - [`webhook`]: webhook endpoints and their signing secrets (encrypted, rotated with an
//!   overlap).
//! - [`push_credentials`]: each app's credentials for APNs, FCM, Web Push and Twilio (the
//!   secrets encrypted), disabled when a service refuses them.
//! - [`push_device`]: push's device registry (APNs and FCM tokens, Web Push subscriptions) and
//!   the channels devices and client ids are subscribed to for push.
//! - [`audit_log`]: the tenants' and the operator's transparency logs (entries, subtree roots,
//!   signed checkpoints, signing keys encrypted), grown one transaction per writer step.
//! - [`exchange`]: exchanges of a namespace between two tenants (offer, accept, suspend, end)
//!   and the routes the data plane reads from them.
//! - [`sms`]: the texts apps send (their cost, their status as Twilio reports it) and each
//!   tenant's SMS quota.
#![forbid(unsafe_code)]

pub mod api_key;
pub mod audit;
pub mod audit_log;
pub mod billing;
pub mod crypto;
pub mod db;
pub mod delivery;
mod delivery_batch;
pub mod error;
pub mod exchange;
pub mod feed;
pub mod grant;
mod id;
pub mod management_token;
pub mod namespace;
pub mod plan;
pub mod policy;
pub mod push_credentials;
pub mod push_device;
pub mod revocation;
pub mod rule;
mod secret_token;
pub mod signing_key;
pub mod sms;
pub mod tenant;
pub mod usage;
pub mod user;
pub mod webhook;

use std::sync::Arc;

pub use api_key::{ApiKey, NewApiKey, api_key_id};
pub use audit::{Actor, AuditEvent};
pub use audit_log::{
    AuditAppend, AuditCheckpoint, AuditEntry, AuditKey, AuditLogState, AuditSource, NewAuditEntry,
};
pub use crypto::{MasterKey, SecretCipher};
pub use db::{Backend, create_database};
pub use delivery::{
    AfterAttempt, AttemptRecord, DeliveryJob, DeliveryState, FinishedAttempt, LoggedAttempt, NewDelivery,
};
pub use error::StoreError;
pub use feed::FeedLease;
pub use grant::{TokenGrant, new_token_id};
pub use management_token::{ManagementToken, NewManagementToken, Role};
pub use namespace::Namespace;
pub use plan::{LimitOverrides, Limits, Plan};
pub use policy::AppSnapshot;
pub use push_credentials::{PushCredentials, PushService};
pub use push_device::{Device, DevicePlatform, NewDevice, PushAddress, PushSubscription, PushTarget};
pub use revocation::Revoked;
pub use rule::{NewRule, Rule};
pub use signing_key::SigningKeyRecord;
pub use sms::{NewSms, SmsAdmission, SmsRecord};
pub use tenant::{App, Tenant, TenantStatus};
pub use usage::{Granularity, UsagePoint, UsageRow};
pub use user::{NewInvitation, NewSession, Session, User};
pub use webhook::{NewWebhookEndpoint, SigningSecrets, WebhookEndpoint};

/// Handle to the database of tenants, apps and keys, and the cipher for their secrets.
///
/// Cloning is cheap and clones share the pool. Each method is atomic: a management write is one
/// transaction that also records its audit event.
#[derive(Clone)]
pub struct Store {
    pool: db::DbPool,
    backend: Backend,
    cipher: Arc<SecretCipher>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

/// Returns the current time in unix seconds, the unit of every `created_at` and `revoked_at`
/// (for callers that compare with what the store keeps).
pub fn unix_now_secs() -> i64 {
    unix_now()
}

/// Returns the current time in unix seconds, the unit of every `created_at` and `revoked_at`.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}
