//! What the relay needs to know about apps, asked through a trait so the relay never talks SQL.

use std::sync::Arc;

use async_trait::async_trait;
use tributary_capability::{Capabilities, Grant, Right, SigningKey};
use tributary_protocol::{ChannelName, ErrorCode};

use crate::ops::OpError;

/// The app an API key belongs to, and what it may do there.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyIdentity {
    /// The tenant id.
    pub tenant_id: String,
    /// The app id.
    pub app_id: String,
    /// The key's id (`key_…`), which names it as a publisher in an exchange.
    pub key_id: String,
    /// What the key may do; `None`: everything on every channel of its app.
    pub permissions: Option<Arc<KeyPermissions>>,
}

/// What a restricted API key may do.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPermissions {
    /// The rights it has per channel pattern (publish, subscribe, history, presence).
    pub grants: Capabilities,
    /// Whether it may mint tokens (only within `grants`) and disconnect clients.
    pub mint_tokens: bool,
}

impl ApiKeyIdentity {
    /// Returns an error unless the key may use `right` on `channel`.
    pub fn allow(&self, channel: &ChannelName, right: Right) -> Result<(), OpError> {
        match &self.permissions {
            Some(p) if !p.grants.allows(channel, right) => Err(OpError::new(
                ErrorCode::Forbidden,
                format!("this API key may not {} on {channel}", right.as_str()),
            )),
            _ => Ok(()),
        }
    }

    /// Returns an error unless the key may mint a token with `grants` (and disconnect clients,
    /// when `grants` is empty): each must be within one of the key's own.
    pub fn allow_minting(&self, grants: &[Grant]) -> Result<(), OpError> {
        let Some(p) = &self.permissions else { return Ok(()) };
        if !p.mint_tokens {
            return Err(OpError::new(
                ErrorCode::Forbidden,
                "this API key may not mint tokens or disconnect clients",
            ));
        }
        for wanted in grants {
            let covered = p.grants.grants().iter().any(|own| {
                own.pattern.covers(&wanted.pattern) && wanted.rights.iter().all(|r| own.rights.contains(r))
            });
            if !covered {
                return Err(OpError::new(
                    ErrorCode::Forbidden,
                    format!("this API key may not grant {:?} on {}", wanted.rights, wanted.pattern.as_str()),
                ));
            }
        }
        Ok(())
    }
}

/// Everything that decides whether an app's tokens are admitted, as the directory reads it.
#[derive(Clone)]
pub struct AppRecord {
    /// The app id.
    pub app_id: String,
    /// The tenant that owns it.
    pub tenant_id: String,
    /// Whether the tenant is served (active or past due); a suspended, unpaid or deleted one is
    /// not.
    pub served: bool,
    /// Whether it is cut off for not paying (requests then get 402 `payment_required`).
    pub unpaid: bool,
    /// Every token issued (`iat`) before this unix second is revoked: the later of the app's
    /// and the tenant's "revoke every token" times, 0 if neither was used.
    pub tokens_revoked_before: u64,
    /// The app's unrevoked signing keys with their current generations, newest first.
    pub signing_keys: Vec<SigningKey>,
    /// Revoked token ids.
    pub revoked_tokens: Vec<String>,
    /// Revoked clients: every token of the client issued before the time (unix seconds).
    pub revoked_clients: Vec<(String, u64)>,
    /// The tenant's limits.
    pub limits: crate::quota::Limits,
    /// Messages the tenant published this calendar month (UTC), as the store knows it.
    pub messages_this_month: u64,
    /// The app's own namespaces, which take precedence over the configuration file's.
    pub namespaces: Vec<(String, crate::config::NamespaceConfig)>,
    /// The exchanges that route a namespace of the app (active or suspended).
    pub exchanges: Vec<crate::exchange::ExchangeRoute>,
}

/// A token minted by `POST /v1/tokens`, for the directory to record.
#[derive(Debug, Clone)]
pub struct MintedGrant {
    /// The token id (`jti`).
    pub jti: String,
    /// The tenant.
    pub tenant_id: String,
    /// The app.
    pub app_id: String,
    /// The client id.
    pub client_id: String,
    /// The signing key.
    pub kid: String,
    /// The key generation it was signed under.
    pub generation: u64,
    /// The `caps` claim as JSON.
    pub capabilities: String,
    /// Issued at, unix seconds.
    pub issued_at: u64,
    /// Expires at, unix seconds.
    pub expires_at: u64,
}

/// Why a directory lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The API key is malformed, unknown or revoked.
    #[error("invalid API key")]
    InvalidApiKey,
    /// The key or app does not exist.
    #[error("not found")]
    NotFound,
    /// The backing store failed.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
}

impl DirectoryError {
    /// Returns the client-facing code.
    pub fn code(&self) -> ErrorCode {
        match self {
            DirectoryError::InvalidApiKey => ErrorCode::InvalidApiKey,
            DirectoryError::NotFound => ErrorCode::UnknownKey,
            DirectoryError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

/// Apps and API keys, as the relay sees them. The relay caches what [`AppDirectory::app`]
/// returns and asks again when told an app changed, so implementations need not cache apps;
/// they may cache API keys, and must then drop an app's keys in [`AppDirectory::forget_app`].
#[async_trait]
pub trait AppDirectory: Send + Sync + 'static {
    /// Returns the app an API key belongs to.
    async fn authenticate_api_key(&self, presented: &str) -> Result<ApiKeyIdentity, DirectoryError>;

    /// Returns the app with this id, or `None` if there is none. Implementations must not
    /// find an app by anything but its exact id.
    async fn app(&self, app_id: &str) -> Result<Option<AppRecord>, DirectoryError>;

    /// Drops whatever is cached about `app_id` (it changed).
    fn forget_app(&self, _app_id: &str) {}

    /// Checks cached state against the source of truth (called at every periodic resync).
    async fn resync(&self) {}

    /// Returns a new token id for a minted token.
    fn new_token_id(&self) -> String {
        format!("tok_{}", uuid::Uuid::now_v7().simple())
    }

    /// Stores a batch of usage rows of node `node_id`; a batch with a number it already has
    /// must be ignored (the node retries after a lost reply).
    async fn record_usage(
        &self,
        _node_id: &str,
        _seq: u64,
        _rows: &[crate::usage::UsageRow],
    ) -> Result<(), DirectoryError> {
        Ok(())
    }

    /// Records a minted token. Best effort: a token whose grant could not be recorded still
    /// works and can still be revoked by its id.
    async fn record_grant(&self, _grant: &MintedGrant) -> Result<(), DirectoryError> {
        Ok(())
    }
}
