//! The claims of a capability token, as serialized.
//!
//! ```json
//! { "sub": "user-42", "app": "app_1", "aud": "tributary:app_1",
//!   "exp": 1700003600, "nbf": 1700000000, "iat": 1700000000, "gen": 1, "jti": "optional",
//!   "caps": [ { "channel": "chat:*", "allow": ["subscribe", "publish"] } ],
//!   "info": { "any": "client metadata" } }
//! ```
//!
//! `sub` is the client id: 1 to [`MAX_CLIENT_ID_LEN`] bytes without control characters, because
//! it shows up in presence lists and log lines. `aud` names the app the token is for (see
//! [`audience_for`]); a verifier also accepts an array that contains it, as RFC 7519 allows.
//! `gen` is the generation of the signing key the token was signed under (1 when absent); a
//! key whose generation was raised refuses every token of a lower one.
//! `caps` may be absent (the token then allows nothing on any channel). Unknown top-level claims
//! are ignored, but unknown fields inside a grant are refused: a future field such as "deny"
//! must not be silently dropped by an older relay, which would grant more than meant.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tributary_protocol::ChannelPattern;

use crate::error::TokenError;
use crate::keys::FIRST_GENERATION;
use crate::mint::MAX_GRANTS;
use crate::rights::{Capabilities, Grant, Rights};

/// The longest client id (and `jti`) accepted, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// The prefix of every token audience.
const AUDIENCE_PREFIX: &str = "tributary:";

/// Returns the audience a token for `app_id` must carry: `"tributary:" + app_id`.
pub fn audience_for(app_id: &str) -> String {
    format!("{AUDIENCE_PREFIX}{app_id}")
}

/// Describes why `id` is not an acceptable client id or `jti`, or returns `None` when it is.
pub fn identifier_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        Some("must not be empty".to_owned())
    } else if id.len() > MAX_CLIENT_ID_LEN {
        Some(format!("must be at most {MAX_CLIENT_ID_LEN} bytes"))
    } else if id.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else {
        None
    }
}

/// One entry of `caps`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantClaim {
    channel: String,
    allow: Rights,
}

impl From<&Grant> for GrantClaim {
    fn from(grant: &Grant) -> Self {
        Self { channel: grant.pattern.as_str().to_owned(), allow: grant.rights }
    }
}

/// The claims written by `mint`, borrowing from the request.
#[derive(Serialize)]
pub(crate) struct OutgoingClaims<'a> {
    pub sub: &'a str,
    pub app: &'a str,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub r#gen: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<&'a str>,
    pub caps: Vec<GrantClaim>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a Value>,
}

/// The claims read from a token whose signature has been checked, with types and shapes
/// validated; time, audience and app are left for `verify` to compare.
#[derive(Debug)]
pub(crate) struct IncomingClaims {
    pub sub: String,
    pub app: String,
    pub aud: Vec<String>,
    pub exp: u64,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
    pub r#gen: u64,
    pub jti: Option<String>,
    pub capabilities: Capabilities,
    pub info: Option<Value>,
}

impl IncomingClaims {
    /// Reads and validates the claims from the decoded payload object.
    pub fn from_map(mut map: Map<String, Value>) -> Result<Self, TokenError> {
        let sub: String = required(&mut map, "sub", "a string")?;
        check_identifier("sub", &sub)?;
        let jti: Option<String> = optional(&mut map, "jti", "a string")?;
        if let Some(jti) = &jti {
            check_identifier("jti", jti)?;
        }
        Ok(Self {
            sub,
            app: required(&mut map, "app", "a string")?,
            aud: audience(&mut map)?,
            exp: required(&mut map, "exp", "a non-negative integer")?,
            nbf: optional(&mut map, "nbf", "a non-negative integer")?,
            iat: optional(&mut map, "iat", "a non-negative integer")?,
            r#gen: optional(&mut map, "gen", "a non-negative integer")?.unwrap_or(FIRST_GENERATION),
            jti,
            capabilities: capabilities(&mut map)?,
            info: optional(&mut map, "info", "JSON")?,
        })
    }
}

fn check_identifier(name: &str, value: &str) -> Result<(), TokenError> {
    match identifier_problem(value) {
        Some(problem) => Err(TokenError::InvalidClaim(format!("{name} {problem}"))),
        None => Ok(()),
    }
}

/// Removes claim `name` and parses it; `null` counts as absent.
fn optional<T: DeserializeOwned>(
    map: &mut Map<String, Value>,
    name: &'static str,
    what: &str,
) -> Result<Option<T>, TokenError> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        // The serde message is dropped: it may quote the claim's value.
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|_| TokenError::InvalidClaim(format!("{name} must be {what}"))),
    }
}

fn required<T: DeserializeOwned>(
    map: &mut Map<String, Value>,
    name: &'static str,
    what: &str,
) -> Result<T, TokenError> {
    optional(map, name, what)?.ok_or(TokenError::MissingClaim(name))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

fn audience(map: &mut Map<String, Value>) -> Result<Vec<String>, TokenError> {
    match required(map, "aud", "a string or an array of strings")? {
        Audience::One(aud) => Ok(vec![aud]),
        Audience::Many(auds) => Ok(auds),
    }
}

fn capabilities(map: &mut Map<String, Value>) -> Result<Capabilities, TokenError> {
    let caps: Vec<GrantClaim> =
        optional(map, "caps", "an array of {channel, allow} objects with known rights")?.unwrap_or_default();
    if caps.len() > MAX_GRANTS {
        return Err(TokenError::InvalidClaim(format!("caps has more than {MAX_GRANTS} grants")));
    }
    let grants = caps
        .into_iter()
        .enumerate()
        .map(|(i, claim)| match ChannelPattern::parse(&claim.channel) {
            Ok(pattern) => Ok(Grant::new(pattern, claim.allow)),
            Err(err) => Err(TokenError::InvalidClaim(format!("caps[{i}].channel: {err}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Capabilities::new(grants))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rights::Right;
    use serde_json::json;

    fn parse(value: Value) -> Result<IncomingClaims, TokenError> {
        match value {
            Value::Object(map) => IncomingClaims::from_map(map),
            _ => unreachable!("tests pass objects"),
        }
    }

    fn minimal() -> Value {
        json!({ "sub": "u1", "app": "a1", "aud": "tributary:a1", "exp": 10 })
    }

    #[test]
    fn audience_is_the_prefixed_app_id() {
        assert_eq!(audience_for("app_1"), "tributary:app_1");
    }

    #[test]
    fn minimal_claims_parse_with_empty_capabilities() {
        let claims = parse(minimal()).unwrap();
        assert_eq!((claims.sub.as_str(), claims.app.as_str(), claims.exp), ("u1", "a1", 10));
        assert_eq!(claims.aud, vec!["tributary:a1".to_owned()]);
        assert!(claims.capabilities.grants().is_empty());
        assert_eq!((claims.nbf, claims.jti, claims.info), (None, None, None));
    }

    #[test]
    fn each_required_claim_is_reported_by_name_when_missing() {
        for name in ["sub", "app", "aud", "exp"] {
            let mut value = minimal();
            value.as_object_mut().unwrap().remove(name);
            assert_eq!(parse(value).unwrap_err(), TokenError::MissingClaim(name));
        }
    }

    #[test]
    fn wrongly_typed_claims_are_invalid_and_do_not_echo_their_value() {
        let mut value = minimal();
        value["exp"] = json!("secret-looking-value");
        let err = parse(value).unwrap_err();
        assert_eq!(err, TokenError::InvalidClaim("exp must be a non-negative integer".into()));
        let mut value = minimal();
        value["exp"] = json!(-1);
        assert!(matches!(parse(value), Err(TokenError::InvalidClaim(_))));
    }

    #[test]
    fn a_client_id_with_control_characters_is_invalid() {
        let mut value = minimal();
        value["sub"] = json!("evil\nlog line");
        assert!(matches!(parse(value), Err(TokenError::InvalidClaim(m)) if m.starts_with("sub ")));
    }

    #[test]
    fn caps_parse_into_grants_and_refuse_unknown_rights_and_fields() {
        let mut value = minimal();
        value["caps"] = json!([{ "channel": "chat:*", "allow": ["subscribe", "history"] }]);
        let caps = parse(value).unwrap().capabilities;
        assert_eq!(caps.grants().len(), 1);
        assert_eq!(caps.grants()[0].rights, [Right::Subscribe, Right::History].into_iter().collect());

        for bad in [
            json!([{ "channel": "chat:*", "allow": ["admin"] }]),
            json!([{ "channel": "chat:*", "allow": [], "deny": ["publish"] }]),
            json!([{ "channel": "bad channel", "allow": [] }]),
            json!({ "channel": "chat:*" }),
        ] {
            let mut value = minimal();
            value["caps"] = bad;
            assert!(matches!(parse(value), Err(TokenError::InvalidClaim(_))));
        }
    }

    #[test]
    fn an_audience_array_is_accepted_as_a_list() {
        let mut value = minimal();
        value["aud"] = json!(["other", "tributary:a1"]);
        assert_eq!(parse(value).unwrap().aud.len(), 2);
    }
}
