//! Minting capability tokens.
//!
//! The caller (the HTTP API or `tributary token mint`) builds a [`TokenRequest`], picks the key
//! of the request's app and passes the current time; [`mint`] validates the request and signs
//! it. The time is a parameter so this crate never reads a clock and tests can use any "now".

use std::fmt;

use jsonwebtoken::Header;
use serde_json::Value;

use crate::claims::{GrantClaim, OutgoingClaims, audience_for, identifier_problem};
use crate::error::CapabilityError;
use crate::keys::SigningKey;
use crate::rights::Grant;
use crate::verify::MAX_TOKEN_LEN;

/// The longest time to live of a token: 30 days. Tokens are revocable by `jti`, but the
/// revocation list must be kept until the token expires, so the list's size is bounded by this.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 60 * 60;

/// The most grants one token may carry; it bounds the cost of each permission check.
pub const MAX_GRANTS: usize = 64;

/// What a token should allow, for whom and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRequest {
    /// The client id, written as `sub`: 1 to 128 bytes, no control characters.
    pub client_id: String,
    /// The app the token is for; must be the app of the signing key.
    pub app_id: String,
    /// How long the token lives, from `now`: 1 to [`MAX_TTL_SECS`] seconds.
    pub ttl_secs: u64,
    /// What the token allows; at most [`MAX_GRANTS`] grants.
    pub grants: Vec<Grant>,
    /// Client metadata, shown to other clients in presence.
    pub info: Option<Value>,
    /// A token id, so the token can be revoked alone; same rules as the client id.
    pub jti: Option<String>,
    /// When the token starts being valid, in absolute Unix seconds; `None` means now.
    pub not_before_secs: Option<u64>,
}

impl TokenRequest {
    /// Returns a request without info, jti or not-before time.
    pub fn new(
        client_id: impl Into<String>,
        app_id: impl Into<String>,
        ttl_secs: u64,
        grants: Vec<Grant>,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            app_id: app_id.into(),
            ttl_secs,
            grants,
            info: None,
            jti: None,
            not_before_secs: None,
        }
    }
}

/// A signed token and when it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct MintedToken {
    /// The compact JWS, to hand to the client.
    pub token: String,
    /// The `exp` claim, in Unix seconds.
    pub expires_at: u64,
}

impl fmt::Debug for MintedToken {
    /// Shows the expiry only: the token is a credential and must not reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Validates `request` and signs it with `key` at time `now_secs` (Unix seconds).
///
/// The header's `alg` and `kid` come from the key. The token expires at `now_secs + ttl_secs`
/// and is valid from `not_before_secs` (default `now_secs`), which must be before the expiry.
/// A token that would be longer than a verifier accepts is refused rather than handed out.
pub fn mint(request: &TokenRequest, key: &SigningKey, now_secs: u64) -> Result<MintedToken, CapabilityError> {
    let (not_before, expires_at) = validate(request, key, now_secs)?;
    let mut header = Header::new(key.alg.jwt_algorithm());
    header.kid = Some(key.kid.clone());
    let claims = OutgoingClaims {
        sub: &request.client_id,
        app: &request.app_id,
        aud: audience_for(&request.app_id),
        exp: expires_at,
        nbf: not_before,
        iat: now_secs,
        r#gen: key.generation,
        jti: request.jti.as_deref(),
        caps: request.grants.iter().map(GrantClaim::from).collect(),
        info: request.info.as_ref(),
    };
    let token = jsonwebtoken::encode(&header, &claims, &key.encoding_key())
        .map_err(|err| CapabilityError::Signing(err.to_string()))?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(CapabilityError::TokenTooLarge(token.len()));
    }
    Ok(MintedToken { token, expires_at })
}

/// Checks every rule of a request and returns its `(nbf, exp)`.
fn validate(request: &TokenRequest, key: &SigningKey, now_secs: u64) -> Result<(u64, u64), CapabilityError> {
    if request.app_id != key.app_id {
        return Err(CapabilityError::AppMismatch);
    }
    if let Some(problem) = identifier_problem(&request.client_id) {
        return Err(CapabilityError::InvalidClientId(problem));
    }
    if !(1..=MAX_TTL_SECS).contains(&request.ttl_secs) {
        return Err(CapabilityError::InvalidTtl(request.ttl_secs));
    }
    if request.grants.len() > MAX_GRANTS {
        return Err(CapabilityError::TooManyGrants);
    }
    if let Some(problem) = request.jti.as_deref().and_then(identifier_problem) {
        return Err(CapabilityError::InvalidJti(problem));
    }
    let expires_at = now_secs.saturating_add(request.ttl_secs);
    let not_before = request.not_before_secs.unwrap_or(now_secs);
    if not_before >= expires_at {
        return Err(CapabilityError::InvalidNotBefore(not_before));
    }
    Ok((not_before, expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::decode_object;
    use crate::rights::Capabilities;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn key() -> SigningKey {
        SigningKey::generate_hs256("app_1", "k1")
    }

    fn request() -> TokenRequest {
        TokenRequest::new(
            "user-1",
            "app_1",
            3600,
            vec![Capabilities::parse_spec("chat:*=subscribe").unwrap()],
        )
    }

    fn payload(token: &str) -> Value {
        let part = token.split('.').nth(1).unwrap();
        Value::Object(decode_object(part, "payload").unwrap())
    }

    #[test]
    fn a_minted_token_carries_the_documented_claims() {
        let mut req = request();
        req.jti = Some("t-1".into());
        req.info = Some(json!({ "name": "Ada" }));
        let minted = mint(&req, &key(), NOW).unwrap();
        assert_eq!(minted.expires_at, NOW + 3600);
        assert_eq!(
            payload(&minted.token),
            json!({
                "sub": "user-1", "app": "app_1", "aud": "tributary:app_1",
                "exp": NOW + 3600, "nbf": NOW, "iat": NOW, "gen": 1, "jti": "t-1",
                "caps": [{ "channel": "chat:*", "allow": ["subscribe"] }],
                "info": { "name": "Ada" },
            })
        );
    }

    #[test]
    fn the_header_names_the_key_and_its_algorithm() {
        let minted = mint(&request(), &key(), NOW).unwrap();
        let header = decode_object(minted.token.split('.').next().unwrap(), "header").unwrap();
        assert_eq!(header.get("alg"), Some(&json!("HS256")));
        assert_eq!(header.get("kid"), Some(&json!("k1")));
    }

    #[test]
    fn a_key_of_another_app_cannot_mint() {
        let other = SigningKey::generate_hs256("app_2", "k1");
        assert_eq!(mint(&request(), &other, NOW), Err(CapabilityError::AppMismatch));
    }

    #[test]
    fn ttl_must_be_between_one_second_and_thirty_days() {
        for (ttl, ok) in [(0, false), (1, true), (MAX_TTL_SECS, true), (MAX_TTL_SECS + 1, false)] {
            let req = TokenRequest { ttl_secs: ttl, ..request() };
            assert_eq!(mint(&req, &key(), NOW).is_ok(), ok, "ttl {ttl}");
        }
    }

    #[test]
    fn bad_client_ids_and_jtis_are_refused() {
        for id in ["", "a\u{7}b", &"x".repeat(129)] {
            let req = TokenRequest { client_id: id.to_owned(), ..request() };
            assert!(matches!(mint(&req, &key(), NOW), Err(CapabilityError::InvalidClientId(_))));
            let req = TokenRequest { jti: Some(id.to_owned()), ..request() };
            assert!(matches!(mint(&req, &key(), NOW), Err(CapabilityError::InvalidJti(_))));
        }
    }

    #[test]
    fn more_than_sixty_four_grants_are_refused() {
        let grant = Capabilities::parse_spec("a=publish").unwrap();
        let req = TokenRequest { grants: vec![grant; MAX_GRANTS + 1], ..request() };
        assert_eq!(mint(&req, &key(), NOW), Err(CapabilityError::TooManyGrants));
    }

    #[test]
    fn a_not_before_time_at_or_after_expiry_is_refused() {
        let req = TokenRequest { not_before_secs: Some(NOW + 3600), ..request() };
        assert_eq!(mint(&req, &key(), NOW), Err(CapabilityError::InvalidNotBefore(NOW + 3600)));
        let req = TokenRequest { not_before_secs: Some(NOW + 60), ..request() };
        assert!(payload(&mint(&req, &key(), NOW).unwrap().token)["nbf"] == json!(NOW + 60));
    }

    #[test]
    fn a_token_too_large_to_verify_is_not_minted() {
        let req = TokenRequest { info: Some(json!("x".repeat(MAX_TOKEN_LEN))), ..request() };
        assert!(matches!(mint(&req, &key(), NOW), Err(CapabilityError::TokenTooLarge(_))));
    }

    #[test]
    fn debug_output_of_a_minted_token_hides_the_token() {
        let minted = mint(&request(), &key(), NOW).unwrap();
        let shown = format!("{minted:?}");
        assert!(!shown.contains(&minted.token) && shown.contains("expires_at"));
    }
}
