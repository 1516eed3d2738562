//! Verifying capability tokens, in two steps so this crate does no I/O.
//!
//! 1. [`peek`] reads the `kid` header and the `app` claim *without* checking anything else, only
//!    so the caller can look up the key of that app with that id (from memory, the store, a
//!    cache: not this crate's business). Nothing it returns may be trusted.
//! 2. [`verify`] checks the token against that key: the algorithm is fixed by the key, the
//!    signature is checked by `jsonwebtoken`, and the claims are checked here, against the
//!    caller's clock. `jsonwebtoken`'s own time, audience and required-claim checks are turned
//!    off because they read the system clock and default to a 60 s leeway; doing them here keeps
//!    one set of rules that tests can drive with any "now".

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode};
use serde_json::{Map, Value};

use crate::claims::{IncomingClaims, audience_for};
use crate::compact::{self, decode_object};
use crate::error::TokenError;
use crate::keys::SigningKey;
use crate::rights::Capabilities;

/// The longest token accepted, in bytes. Tokens travel in URLs and headers, where 8 KiB is a
/// common limit, and refusing longer ones before decoding bounds the work a stranger can cause.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The default clock-skew allowance for `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

/// What [`peek`] read from a token: enough to find its key, and nothing to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedToken {
    /// The `app` claim.
    pub app_id: String,
    /// The `kid` header.
    pub kid: String,
}

/// Reads the `kid` header and the `app` claim of `token` without verifying it.
///
/// Refuses tokens longer than [`MAX_TOKEN_LEN`] before decoding, tokens not in compact form,
/// `alg: none` and algorithms Tributary does not support, and tokens without a `kid`.
pub fn peek(token: &str) -> Result<UnverifiedToken, TokenError> {
    let unchecked = compact::read(token)?;
    let mut payload = decode_object(unchecked.payload, "payload")?;
    match payload.remove("app") {
        Some(Value::String(app_id)) => Ok(UnverifiedToken { app_id, kid: unchecked.kid }),
        None | Some(Value::Null) => Err(TokenError::MissingClaim("app")),
        Some(_) => Err(TokenError::InvalidClaim("app must be a string".to_owned())),
    }
}

/// The clock and the clock-skew allowance [`verify`] checks `exp` and `nbf` against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The current time, in Unix seconds.
    pub now_secs: u64,
    /// How far `exp` may be in the past and `nbf` in the future, in seconds.
    pub leeway_secs: u64,
}

impl VerifyOptions {
    /// Returns options for `now_secs` with the [`DEFAULT_LEEWAY_SECS`] leeway.
    pub fn new(now_secs: u64) -> Self {
        Self { now_secs, leeway_secs: DEFAULT_LEEWAY_SECS }
    }
}

/// A token whose signature, algorithm, app, audience and times have all been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// The client id (`sub`), shared because every session and presence entry holds it.
    pub client_id: Arc<str>,
    /// The app the token is for; equal to the key's app.
    pub app_id: String,
    /// The id of the key that signed it.
    pub kid: String,
    /// The `exp` claim, in Unix seconds; the relay closes the connection after it unless the
    /// client refreshes its token.
    pub expires_at: u64,
    /// The `nbf` claim, in Unix seconds, if the token has one.
    pub not_before: Option<u64>,
    /// The token id, used to revoke one token.
    pub jti: Option<String>,
    /// The `iat` claim, in Unix seconds, if the token has one. Revocations of "every token
    /// issued before" a time treat a token without it as issued at 0.
    pub issued_at: Option<u64>,
    /// The `gen` claim: the generation of its signing key it was signed under (1 if absent).
    pub generation: u64,
    /// What the token allows.
    pub capabilities: Capabilities,
    /// Client metadata from the token.
    pub info: Option<Value>,
}

/// Verifies `token` with `key` at the time given by `opts`.
///
/// Checks, in order: size and shape, that the header `alg` is the key's
/// ([`TokenError::AlgorithmMismatch`] otherwise) and the `kid` is the key's, the signature, the
/// presence and types of `sub`, `app`, `aud` and `exp`, that `app` is the key's app
/// ([`TokenError::WrongApp`]), that `aud` is [`audience_for`] it ([`TokenError::WrongAudience`]),
/// then `exp` and `nbf`, each with `opts.leeway_secs` of slack. A token is expired from the
/// second `exp + leeway` on.
pub fn verify(token: &str, key: &SigningKey, opts: &VerifyOptions) -> Result<VerifiedToken, TokenError> {
    let unchecked = compact::read(token)?;
    if unchecked.alg != key.alg {
        return Err(TokenError::AlgorithmMismatch);
    }
    if unchecked.kid != key.kid {
        return Err(TokenError::InvalidClaim("kid does not name the verifying key".to_owned()));
    }
    let claims = IncomingClaims::from_map(check_signature(token, key)?)?;
    if claims.app != key.app_id {
        return Err(TokenError::WrongApp);
    }
    let audience = audience_for(&key.app_id);
    if !claims.aud.contains(&audience) {
        return Err(TokenError::WrongAudience);
    }
    if opts.now_secs >= claims.exp.saturating_add(opts.leeway_secs) {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > opts.now_secs.saturating_add(opts.leeway_secs)) {
        return Err(TokenError::NotYetValid);
    }
    if claims.r#gen < key.generation {
        return Err(TokenError::Revoked);
    }
    Ok(VerifiedToken {
        client_id: Arc::from(claims.sub),
        app_id: claims.app,
        kid: unchecked.kid,
        expires_at: claims.exp,
        not_before: claims.nbf,
        jti: claims.jti,
        issued_at: claims.iat,
        generation: claims.r#gen,
        capabilities: claims.capabilities,
        info: claims.info,
    })
}

/// Checks the signature with `jsonwebtoken` and returns the payload object.
///
/// Only the algorithm and signature are checked there: every claim rule is off, so that
/// `verify` alone decides about time, audience and required claims.
fn check_signature(token: &str, key: &SigningKey) -> Result<Map<String, Value>, TokenError> {
    let mut validation = Validation::new(key.alg.jwt_algorithm());
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    match decode::<Map<String, Value>>(token, &key.decoding_key(), &validation) {
        Ok(data) => Ok(data.claims),
        Err(err) => Err(match err.into_kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::AlgorithmMismatch,
            ErrorKind::Base64(_) => TokenError::Malformed("a part is not base64url".to_owned()),
            ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                TokenError::Malformed("payload is not a JSON object".to_owned())
            }
            // Any other kind is about keys or providers, which the key's own algorithm rules
            // out; refuse the token without detail rather than guess.
            _ => TokenError::Malformed("token could not be decoded".to_owned()),
        }),
    }
}

#[cfg(test)]
mod tests;
