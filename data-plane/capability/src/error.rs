//! The two error types of this crate: [`TokenError`] for tokens presented by clients and
//! [`CapabilityError`] for requests to mint a token or to parse a grant.
//!
//! Neither type ever carries the token text or a secret: error messages end up in logs and in
//! replies to clients, and a token in a log line is a credential anyone reading the log can use.

use tributary_protocol::{ChannelError, ErrorCode};

use crate::mint::{MAX_GRANTS, MAX_TTL_SECS};
use crate::verify::MAX_TOKEN_LEN;

/// Why a token presented by a client was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is not a compact JWS, or a part of it is not base64url JSON of the right shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token is longer than [`MAX_TOKEN_LEN`]; it was refused before decoding.
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    /// The header names an algorithm Tributary never accepts (`none`, or one it does not know).
    #[error("unsupported token algorithm")]
    UnsupportedAlgorithm,
    /// The header names an algorithm other than the one fixed by the signing key.
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    /// The signature does not verify with the key.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` is in the past, beyond the leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `aud` does not name the app of the key.
    #[error("token audience does not match its app")]
    WrongAudience,
    /// The `app` claim does not name the app of the key.
    #[error("token app does not match its key")]
    WrongApp,
    /// A required claim (or the `kid` header) is absent.
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    /// A claim is present but has the wrong type or an invalid value.
    #[error("invalid token claim: {0}")]
    InvalidClaim(String),
    /// The token was signed under an earlier generation of its key (its `gen` claim is lower
    /// than the key's): every token the key signed before the bump is revoked.
    #[error("token was signed before its key's generation was raised")]
    Revoked,
}

impl TokenError {
    /// Returns the client-visible error code.
    ///
    /// [`TokenError::WrongApp`] maps to [`ErrorCode::WrongAudience`], like a wrong `aud`: both
    /// mean "this token was issued for another app", and `UnknownKey` is kept for the caller's
    /// key lookup failing, which this crate never sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Expired => ErrorCode::TokenExpired,
            Self::NotYetValid => ErrorCode::TokenNotYetValid,
            Self::WrongAudience | Self::WrongApp => ErrorCode::WrongAudience,
            Self::Revoked => ErrorCode::TokenRevoked,
            Self::Malformed(_)
            | Self::TooLarge
            | Self::UnsupportedAlgorithm
            | Self::AlgorithmMismatch
            | Self::BadSignature
            | Self::MissingClaim(_)
            | Self::InvalidClaim(_) => ErrorCode::InvalidToken,
        }
    }
}

/// Why a token could not be minted or a grant could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// The client id is empty, too long or contains control characters.
    #[error("invalid client id: {0}")]
    InvalidClientId(String),
    /// The time to live is zero or longer than [`MAX_TTL_SECS`].
    #[error("token ttl of {0} s is outside 1..={MAX_TTL_SECS} s")]
    InvalidTtl(u64),
    /// The request has more than [`MAX_GRANTS`] grants.
    #[error("a token may carry at most {MAX_GRANTS} grants")]
    TooManyGrants,
    /// A grant's channel pattern is not valid.
    #[error("invalid channel pattern: {0}")]
    InvalidPattern(ChannelError),
    /// A right is not one of `subscribe`, `publish`, `presence`, `history` (or `all` in a spec).
    #[error("unknown right {0:?}, expected subscribe, publish, presence, history or all")]
    UnknownRight(String),
    /// A grant spec is not of the form `<pattern>=<right>,<right>...`.
    #[error("invalid grant spec: {0}")]
    InvalidSpec(String),
    /// The `jti` is empty, too long or contains control characters.
    #[error("invalid jti: {0}")]
    InvalidJti(String),
    /// The requested `nbf` is not before the token's expiry, so the token could never be used.
    #[error("not-before time {0} is not before the token expires")]
    InvalidNotBefore(u64),
    /// The request is for another app than the one the signing key belongs to.
    #[error("signing key belongs to another app")]
    AppMismatch,
    /// The encoded token would be longer than a verifier accepts ([`MAX_TOKEN_LEN`]).
    #[error("token would be {0} bytes, more than {MAX_TOKEN_LEN}; use fewer grants or less info")]
    TokenTooLarge(usize),
    /// Encoding or signing failed; this is a server-side fault.
    #[error("signing failed: {0}")]
    Signing(String),
}

impl CapabilityError {
    /// Returns the client-visible error code: `InvalidChannel` for a bad pattern, `Internal` for
    /// a signing failure and `InvalidParameter` for everything else.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidPattern(_) => ErrorCode::InvalidChannel,
            Self::Signing(_) => ErrorCode::Internal,
            Self::InvalidClientId(_)
            | Self::InvalidTtl(_)
            | Self::TooManyGrants
            | Self::UnknownRight(_)
            | Self::InvalidSpec(_)
            | Self::InvalidJti(_)
            | Self::InvalidNotBefore(_)
            | Self::AppMismatch
            | Self::TokenTooLarge(_) => ErrorCode::InvalidParameter,
        }
    }
}

impl From<ChannelError> for CapabilityError {
    fn from(err: ChannelError) -> Self {
        Self::InvalidPattern(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_errors_have_their_own_codes_and_the_rest_are_invalid_token() {
        assert_eq!(TokenError::Expired.code(), ErrorCode::TokenExpired);
        assert_eq!(TokenError::NotYetValid.code(), ErrorCode::TokenNotYetValid);
        assert_eq!(TokenError::WrongApp.code(), ErrorCode::WrongAudience);
        assert_eq!(TokenError::WrongAudience.code(), ErrorCode::WrongAudience);
        assert_eq!(TokenError::BadSignature.code(), ErrorCode::InvalidToken);
        assert_eq!(TokenError::MissingClaim("exp").code(), ErrorCode::InvalidToken);
    }

    #[test]
    fn signing_failures_are_internal_and_bad_requests_are_invalid_parameters() {
        assert_eq!(CapabilityError::Signing("x".into()).code(), ErrorCode::Internal);
        assert_eq!(CapabilityError::InvalidTtl(0).code(), ErrorCode::InvalidParameter);
        assert_eq!(CapabilityError::AppMismatch.code(), ErrorCode::InvalidParameter);
        assert_eq!(CapabilityError::InvalidPattern(ChannelError::Empty).code(), ErrorCode::InvalidChannel);
    }

    #[test]
    fn messages_are_lowercase_without_a_trailing_period() {
        let messages = [
            TokenError::TooLarge.to_string(),
            TokenError::MissingClaim("exp").to_string(),
            CapabilityError::TooManyGrants.to_string(),
            CapabilityError::InvalidTtl(0).to_string(),
        ];
        for m in messages {
            assert!(m.starts_with(|c: char| c.is_lowercase()), "{m}");
            assert!(!m.ends_with('.'), "{m}");
        }
    }
}
