//! Token verification for every transport: find the key within the token's own app, verify,
//! then ask the app's policy (tenant status, revocations) whether the token is admitted. Every
//! answer comes from the node's cache of app policies: no database round trip per connection.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tributary_capability::{TokenError, VerifiedToken, VerifyOptions};
use tributary_protocol::ErrorCode;

use crate::directory::DirectoryError;
use crate::ops::OpError;
use crate::policy::{AppPolicy, Credential};
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

/// Translates a failed policy load for a client.
pub(crate) fn unavailable(err: DirectoryError) -> OpError {
    match err {
        DirectoryError::Unavailable(reason) => {
            tracing::error!(%reason, "app lookup failed");
            OpError::from(ErrorCode::Unavailable)
        }
        other => OpError::from(other.code()),
    }
}

/// Verifies a capability token and checks that its app admits it. The key id is looked up only
/// among the keys of the app the token names, and the signature, algorithm, audience, times and
/// key generation are then checked against it; then the tenant's status and the app's
/// revocations.
pub async fn authenticate(
    state: &RelayState,
    token: &str,
) -> Result<(VerifiedToken, Credential, Arc<AppPolicy>), OpError> {
    let unverified = tributary_capability::peek(token)?;
    let unknown = || OpError::new(ErrorCode::UnknownKey, "unknown signing key for this app");
    let (policies, directory) = (&state.policies, &*state.directory);
    let asked = policies.mark();
    let mut policy = policies.get(directory, &unverified.app_id).await.map_err(unavailable)?;
    if policy.as_ref().is_none_or(|policy| policy.key(&unverified.kid).is_none()) {
        // The app or key may have been made on another node a moment ago.
        policy =
            policies.refresh_after_miss(directory, &unverified.app_id, asked).await.map_err(unavailable)?;
    }
    let policy = policy.ok_or_else(unknown)?;
    let (kid, key) = policy.key(&unverified.kid).ok_or_else(unknown)?;
    let options = VerifyOptions { now_secs: unix_now(), leeway_secs: state.config.token_leeway_secs };
    let verified = tributary_capability::verify(token, key, &options)?;
    let credential = Credential::of(&verified, kid.clone());
    policy.admit(&verified.client_id, &credential).map_err(|refusal| OpError::from(refusal.error_code()))?;
    Ok((verified, credential, policy))
}
