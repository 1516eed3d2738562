//! What the relay needs to know about apps, asked through a trait so the relay never talks SQL.

use async_trait::async_trait;
use tributary_capability::SigningKey;
use tributary_protocol::ErrorCode;

/// The app an API key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyIdentity {
    /// The tenant id.
    pub tenant_id: String,
    /// The app id.
    pub app_id: String,
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

/// Apps, API keys and signing keys, as the relay sees them. Implementations must scope every
/// lookup by app: a key id of app A is never found for app B.
#[async_trait]
pub trait AppDirectory: Send + Sync + 'static {
    /// Returns the app an API key belongs to.
    async fn authenticate_api_key(&self, presented: &str) -> Result<ApiKeyIdentity, DirectoryError>;

    /// Returns the signing key `kid` of `app_id`.
    async fn signing_key(&self, app_id: &str, kid: &str) -> Result<SigningKey, DirectoryError>;

    /// Returns the key used to mint new tokens for `app_id`.
    async fn minting_key(&self, app_id: &str) -> Result<SigningKey, DirectoryError>;
}
