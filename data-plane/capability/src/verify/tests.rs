use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use proptest::prelude::*;
use serde_json::json;
use tributary_protocol::ChannelName;

use super::*;
use crate::keys::KeyAlgorithm;
use crate::mint::{TokenRequest, mint};
use crate::rights::Right;

const NOW: u64 = 1_700_000_000;
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn key() -> SigningKey {
    SigningKey::new("app_1", "k1", KeyAlgorithm::Hs256, SECRET.to_vec())
}

fn opts(now_secs: u64) -> VerifyOptions {
    VerifyOptions::new(now_secs)
}

fn minted(request: &TokenRequest) -> String {
    mint(request, &key(), NOW).unwrap().token
}

fn request() -> TokenRequest {
    let grants = ["chat:*=subscribe,publish", "news=subscribe"].map(|s| Capabilities::parse_spec(s).unwrap());
    TokenRequest::new("user-1", "app_1", 3600, grants.to_vec())
}

/// Valid claims for `key()`, for tests that change one thing and sign by hand.
fn claims() -> Value {
    json!({ "sub": "user-1", "app": "app_1", "aud": "tributary:app_1", "exp": NOW + 60, "nbf": NOW })
}

/// Signs `claims` with `alg` and kid `k1` under the test secret, bypassing `mint`'s checks.
fn hand_signed(alg: Algorithm, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some("k1".into());
    encode(&header, claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

fn unsecured(header: &Value, claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!("{}.{}.", part(header), part(claims))
}

#[test]
fn a_minted_token_verifies_with_everything_it_was_given() {
    let req = TokenRequest {
        info: Some(json!({ "name": "Ada" })),
        jti: Some("t-1".into()),
        not_before_secs: Some(NOW - 10),
        ..request()
    };
    let verified = verify(&minted(&req), &key(), &opts(NOW + 1)).unwrap();
    assert_eq!(&*verified.client_id, "user-1");
    assert_eq!((verified.app_id.as_str(), verified.kid.as_str()), ("app_1", "k1"));
    assert_eq!((verified.expires_at, verified.not_before), (NOW + 3600, Some(NOW - 10)));
    assert_eq!(verified.jti.as_deref(), Some("t-1"));
    assert_eq!(verified.info, Some(json!({ "name": "Ada" })));
    assert_eq!(verified.capabilities.grants(), req.grants.as_slice());
    let room = ChannelName::parse("chat:room").unwrap();
    assert!(verified.capabilities.allows(&room, Right::Publish));
    assert!(!verified.capabilities.allows(&room, Right::History));
}

#[test]
fn peek_reads_the_app_and_key_id_without_a_key() {
    let peeked = peek(&minted(&request())).unwrap();
    assert_eq!(peeked, UnverifiedToken { app_id: "app_1".into(), kid: "k1".into() });
}

#[test]
fn a_token_expired_beyond_the_leeway_is_refused() {
    let token = minted(&request());
    let exp = NOW + 3600;
    assert_eq!(verify(&token, &key(), &opts(exp + DEFAULT_LEEWAY_SECS)), Err(TokenError::Expired));
    let strict = VerifyOptions { now_secs: exp, leeway_secs: 0 };
    assert_eq!(verify(&token, &key(), &strict), Err(TokenError::Expired));
}

#[test]
fn a_token_expired_within_the_leeway_is_accepted() {
    let token = minted(&request());
    assert!(verify(&token, &key(), &opts(NOW + 3600 + DEFAULT_LEEWAY_SECS - 1)).is_ok());
}

#[test]
fn a_token_whose_not_before_is_in_the_future_is_refused() {
    let token = minted(&TokenRequest { not_before_secs: Some(NOW + 100), ..request() });
    assert_eq!(verify(&token, &key(), &opts(NOW)), Err(TokenError::NotYetValid));
    assert!(verify(&token, &key(), &opts(NOW + 100 - DEFAULT_LEEWAY_SECS)).is_ok());
}

#[test]
fn a_token_for_another_audience_is_refused() {
    let mut c = claims();
    c["aud"] = json!("tributary:app_2");
    assert_eq!(
        verify(&hand_signed(Algorithm::HS256, &c), &key(), &opts(NOW)),
        Err(TokenError::WrongAudience)
    );
    c["aud"] = json!(["someone-else", "tributary:app_1"]);
    assert!(verify(&hand_signed(Algorithm::HS256, &c), &key(), &opts(NOW)).is_ok());
}

#[test]
fn a_token_naming_another_app_is_refused() {
    let mut c = claims();
    c["app"] = json!("app_2");
    let err = verify(&hand_signed(Algorithm::HS256, &c), &key(), &opts(NOW)).unwrap_err();
    assert_eq!(err, TokenError::WrongApp);
    assert_eq!(err.code(), tributary_protocol::ErrorCode::WrongAudience);
}

#[test]
fn a_token_signed_by_another_key_is_refused() {
    let other =
        SigningKey::new("app_1", "k1", KeyAlgorithm::Hs256, b"another secret of 32 bytes......".to_vec());
    let token = mint(&request(), &other, NOW).unwrap().token;
    assert_eq!(verify(&token, &key(), &opts(NOW)), Err(TokenError::BadSignature));
}

#[test]
fn a_token_with_a_changed_payload_is_refused() {
    let token = minted(&request());
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims();
    c["caps"] = json!([{ "channel": "*", "allow": ["publish"] }]);
    let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(c.to_string()), parts[2]);
    assert_eq!(verify(&forged, &key(), &opts(NOW)), Err(TokenError::BadSignature));
}

#[test]
fn an_unsecured_token_with_alg_none_is_refused() {
    let token = unsecured(&json!({ "alg": "none", "kid": "k1" }), &claims());
    assert_eq!(peek(&token), Err(TokenError::UnsupportedAlgorithm));
    assert_eq!(verify(&token, &key(), &opts(NOW)), Err(TokenError::UnsupportedAlgorithm));
    let bare = unsecured(&json!({ "alg": "none" }), &claims());
    assert!(bare.starts_with("eyJhbGciOiJub25lIn0.") && bare.ends_with('.'));
    assert_eq!(verify(&bare, &key(), &opts(NOW)), Err(TokenError::UnsupportedAlgorithm));
}

#[test]
fn a_token_whose_header_names_hs384_is_refused_by_an_hs256_key() {
    // HS384 is signed with the right secret; only the header's algorithm is wrong. No key can
    // have HS384, so the token is refused as unsupported before the key is even compared.
    let token = hand_signed(Algorithm::HS384, &claims());
    assert_eq!(verify(&token, &key(), &opts(NOW)), Err(TokenError::UnsupportedAlgorithm));
    assert_eq!(peek(&token), Err(TokenError::UnsupportedAlgorithm));
}

#[test]
fn a_token_without_exp_is_refused() {
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    let err = verify(&hand_signed(Algorithm::HS256, &c), &key(), &opts(NOW)).unwrap_err();
    assert_eq!(err, TokenError::MissingClaim("exp"));
}

#[test]
fn a_token_without_sub_or_aud_is_refused() {
    for name in ["sub", "aud"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(name);
        let err = verify(&hand_signed(Algorithm::HS256, &c), &key(), &opts(NOW)).unwrap_err();
        assert_eq!(err, TokenError::MissingClaim(name));
    }
}

#[test]
fn a_token_without_kid_is_refused_by_peek() {
    let token = encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(SECRET)).unwrap();
    assert_eq!(peek(&token), Err(TokenError::MissingClaim("kid")));
    assert_eq!(verify(&token, &key(), &opts(NOW)), Err(TokenError::MissingClaim("kid")));
}

#[test]
fn a_token_without_app_is_refused_by_peek() {
    let mut c = claims();
    c.as_object_mut().unwrap().remove("app");
    assert_eq!(peek(&hand_signed(Algorithm::HS256, &c)), Err(TokenError::MissingClaim("app")));
}

#[test]
fn a_token_for_another_key_id_is_refused() {
    let rotated = SigningKey { kid: "k2".into(), ..key() };
    assert!(matches!(verify(&minted(&request()), &rotated, &opts(NOW)), Err(TokenError::InvalidClaim(_))));
}

#[test]
fn an_oversized_token_is_refused_before_decoding() {
    let token = format!("{}.{}.sig", "a".repeat(MAX_TOKEN_LEN), "b");
    assert_eq!(peek(&token), Err(TokenError::TooLarge));
    assert_eq!(verify(&token, &key(), &opts(NOW)), Err(TokenError::TooLarge));
}

#[test]
fn errors_never_quote_the_token_or_the_secret() {
    let token = minted(&request());
    let secret = String::from_utf8_lossy(SECRET).into_owned();
    let payload = token.split('.').nth(1).unwrap();
    let cases = [
        verify(&token, &key(), &opts(NOW + 7200)).unwrap_err(),
        verify(&token[..token.len() - 2], &key(), &opts(NOW)).unwrap_err(),
        verify(&format!("{payload}.{payload}.x"), &key(), &opts(NOW)).unwrap_err(),
    ];
    for err in cases {
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(payload) && !shown.contains(&secret), "{shown}");
    }
}

proptest! {
    #[test]
    fn garbage_never_panics(s in ".{0,300}") {
        let _ = peek(&s);
        prop_assert!(verify(&s, &key(), &opts(NOW)).is_err());
    }

    #[test]
    fn dotted_base64_garbage_never_panics(parts in prop::collection::vec("[A-Za-z0-9_-]{0,40}", 1..5)) {
        let token = parts.join(".");
        let _ = peek(&token);
        prop_assert!(verify(&token, &key(), &opts(NOW)).is_err());
    }

    #[test]
    fn changing_any_character_of_a_token_makes_it_fail(index in 0usize..1000, c in "[A-Za-z0-9_.-]") {
        let token = minted(&request());
        let index = index % token.len();
        let mut bytes = token.into_bytes();
        prop_assume!(bytes[index] != c.as_bytes()[0]);
        bytes[index] = c.as_bytes()[0];
        let changed = String::from_utf8(bytes).unwrap();
        prop_assert!(verify(&changed, &key(), &opts(NOW)).is_err());
    }
}

#[test]
fn raising_a_keys_generation_refuses_every_token_signed_before() {
    let old = minted(&request());
    let verified = verify(&old, &key(), &opts(NOW)).unwrap();
    assert_eq!((verified.generation, verified.issued_at), (1, Some(NOW)));
    let bumped = key().with_generation(2);
    assert_eq!(verify(&old, &bumped, &opts(NOW)), Err(TokenError::Revoked));
    assert_eq!(TokenError::Revoked.code(), tributary_protocol::ErrorCode::TokenRevoked);
    // A token without `gen` counts as generation 1: a bump revokes it too.
    let hand = hand_signed(Algorithm::HS256, &claims());
    assert_eq!(verify(&hand, &key(), &opts(NOW)).unwrap().generation, 1);
    assert_eq!(verify(&hand, &bumped, &opts(NOW)), Err(TokenError::Revoked));
    // Tokens signed after the bump carry the new generation and verify.
    let fresh = mint(&request(), &bumped, NOW).unwrap().token;
    assert_eq!(verify(&fresh, &bumped, &opts(NOW)).unwrap().generation, 2);
}
