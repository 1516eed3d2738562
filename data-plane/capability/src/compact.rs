//! Reading the compact JWS form (`header.payload.signature`) before any signature check.
//!
//! Both `peek` and `verify` start here, so both refuse the same things the same way: oversized
//! tokens before any decoding, algorithms Tributary does not accept, `crit` extensions and
//! tokens without a `kid`. Nothing read here is trusted; it only picks the key and refuses
//! early.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::claims::identifier_problem;
use crate::error::TokenError;
use crate::keys::KeyAlgorithm;
use crate::verify::MAX_TOKEN_LEN;

/// The parts of a token that were checked for shape but not for authenticity.
#[derive(Debug)]
pub(crate) struct Unchecked<'a> {
    /// The algorithm named by the header, already known to be one Tributary supports.
    pub alg: KeyAlgorithm,
    /// The key id named by the header.
    pub kid: String,
    /// The base64url payload, still encoded.
    pub payload: &'a str,
}

/// Checks the size and shape of `token` and reads its header.
pub(crate) fn read(token: &str) -> Result<Unchecked<'_>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts".to_owned()));
    };
    let mut header = decode_object(header, "header")?;
    let alg = match header.remove("alg") {
        Some(Value::String(alg)) => KeyAlgorithm::parse(&alg).ok_or(TokenError::UnsupportedAlgorithm)?,
        Some(_) => return Err(TokenError::Malformed("header alg is not a string".to_owned())),
        None => return Err(TokenError::Malformed("header has no alg".to_owned())),
    };
    // RFC 7515 section 4.1.11: a recipient must refuse critical extensions it does not
    // understand, and Tributary understands none.
    if header.contains_key("crit") {
        return Err(TokenError::Malformed("header has critical extensions".to_owned()));
    }
    let kid = match header.remove("kid") {
        Some(Value::String(kid)) => kid,
        Some(_) => return Err(TokenError::InvalidClaim("kid must be a string".to_owned())),
        None => return Err(TokenError::MissingClaim("kid")),
    };
    if let Some(problem) = identifier_problem(&kid) {
        return Err(TokenError::InvalidClaim(format!("kid {problem}")));
    }
    Ok(Unchecked { alg, kid, payload })
}

/// Decodes one base64url part into a JSON object. `what` names the part in the error.
pub(crate) fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(format!("{what} is not base64url")))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(format!("{what} is not a JSON object")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn token(header: &str) -> String {
        format!("{}.{}.sig", b64(header), b64("{}"))
    }

    #[test]
    fn a_well_formed_header_yields_its_algorithm_and_key_id() {
        let t = token(r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
        let read = read(&t).unwrap();
        assert_eq!((read.alg, read.kid.as_str()), (KeyAlgorithm::Hs256, "k1"));
    }

    #[test]
    fn tokens_without_exactly_three_parts_are_malformed() {
        for t in ["", "a", "a.b", "a.b.c.d", "...."] {
            assert!(matches!(read(t), Err(TokenError::Malformed(_))), "{t:?}");
        }
    }

    #[test]
    fn none_and_unknown_algorithms_are_unsupported() {
        for alg in ["none", "None", "HS384", "RS256", "EdDSA", ""] {
            let t = token(&format!(r#"{{"alg":"{alg}","kid":"k1"}}"#));
            assert_eq!(read(&t).unwrap_err(), TokenError::UnsupportedAlgorithm, "{alg}");
        }
    }

    #[test]
    fn a_header_without_kid_is_missing_a_claim() {
        assert_eq!(read(&token(r#"{"alg":"HS256"}"#)).unwrap_err(), TokenError::MissingClaim("kid"));
        assert!(matches!(read(&token(r#"{"alg":"HS256","kid":7}"#)), Err(TokenError::InvalidClaim(_))));
        assert!(matches!(read(&token(r#"{"alg":"HS256","kid":""}"#)), Err(TokenError::InvalidClaim(_))));
    }

    #[test]
    fn critical_extensions_are_refused() {
        let t = token(r#"{"alg":"HS256","kid":"k1","crit":["exp"]}"#);
        assert!(matches!(read(&t), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn an_oversized_token_is_refused_before_decoding() {
        let t = "!".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(read(&t).unwrap_err(), TokenError::TooLarge);
    }

    #[test]
    fn parts_that_are_not_base64url_json_objects_are_malformed_without_echoing_them() {
        for header in ["%%%", &b64("[1,2]"), &b64("not json"), "eyJhbGciOiJIUzI1NiJ9=="] {
            let err = read(&format!("{header}.e30.sig")).unwrap_err();
            assert!(matches!(&err, TokenError::Malformed(m) if !m.contains(header)), "{header}: {err}");
        }
    }
}
