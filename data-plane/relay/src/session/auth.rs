//! Token verification for every transport: find the key within the token's own app, verify.

use std::time::{SystemTime, UNIX_EPOCH};

use tributary_capability::{TokenError, VerifiedToken, VerifyOptions};
use tributary_protocol::ErrorCode;

use crate::directory::DirectoryError;
use crate::ops::OpError;
use crate::state::RelayState;

/// Returns the current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl From<TokenError> for OpError {
    fn from(err: TokenError) -> Self {
        OpError::new(err.code(), err.to_string())
    }
}

/// Verifies a capability token. The key id is looked up only among the keys of the app the
/// token names, and the signature, algorithm, audience and times are then checked against it.
pub async fn authenticate(state: &RelayState, token: &str) -> Result<VerifiedToken, OpError> {
    let unverified = tributary_capability::peek(token)?;
    let key =
        state.directory.signing_key(&unverified.app_id, &unverified.kid).await.map_err(|err| match err {
            DirectoryError::NotFound => {
                OpError::new(ErrorCode::UnknownKey, "unknown signing key for this app")
            }
            DirectoryError::Unavailable(reason) => {
                tracing::error!(%reason, "signing key lookup failed");
                OpError::from(ErrorCode::Unavailable)
            }
            other => OpError::from(other.code()),
        })?;
    let options = VerifyOptions { now_secs: unix_now(), leeway_secs: state.config.token_leeway_secs };
    Ok(tributary_capability::verify(token, &key, &options)?)
}
