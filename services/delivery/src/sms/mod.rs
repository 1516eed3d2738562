//! SMS through Twilio's Messages API.
//!
//! A message is a form POST to `/2010-04-01/Accounts/{AccountSid}/Messages.json` with HTTP Basic
//! authentication (the account SID and auth token, or an API key's SID and secret), naming the
//! recipient (`To`, E.164), the sender (`From` a number, or `MessagingServiceSid`), the `Body`
//! and where Twilio reports the message's progress (`StatusCallback`, signed: [`signature`]).
//! Twilio's answer (or error code) becomes the same outcomes as a push's: a recipient who
//! replied STOP is like a dead token, a refused credential stops the app's SMS.

pub mod job;
pub mod signature;
pub mod text;

use serde::Deserialize;

pub use crate::push::PushOutcome as SmsOutcome;
use crate::push::{PushError, read_capped, retry_after};

/// Twilio's API.
pub const TWILIO_URL: &str = "https://api.twilio.com";
/// The longest body Twilio takes, in characters.
pub const MAX_BODY_CHARS: usize = 1600;
/// Most bytes of an answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Who sends: a number of the account's, or a messaging service (which picks one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmsFrom {
    /// A number, E.164.
    Number(String),
    /// A messaging service's SID (`MG…`).
    MessagingService(String),
}

/// An app's Twilio credentials.
#[derive(Clone)]
pub struct TwilioCredentials {
    account_sid: String,
    username: String,
    secret: String,
    from: SmsFrom,
}

impl std::fmt::Debug for TwilioCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never printed.
        f.debug_struct("TwilioCredentials")
            .field("account_sid", &self.account_sid)
            .field("username", &self.username)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// Whether `sid` is a Twilio SID of `prefix` (two letters and 32 hex digits).
fn is_sid(sid: &str, prefix: &str) -> bool {
    sid.len() == 34 && sid.starts_with(prefix) && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl TwilioCredentials {
    /// Credentials of `account_sid` (`AC…`): authenticated as the account itself with its auth
    /// token (`api_key` `None`) or with an API key (`Some("SK…")`) and its secret.
    pub fn new(
        account_sid: &str,
        api_key: Option<&str>,
        secret: &str,
        from: SmsFrom,
    ) -> Result<Self, PushError> {
        if !is_sid(account_sid, "AC") {
            return Err(PushError::Credentials("the account SID is AC and 32 hex digits".into()));
        }
        let username = match api_key {
            Some(key) if is_sid(key, "SK") => key,
            Some(_) => return Err(PushError::Credentials("an API key SID is SK and 32 hex digits".into())),
            None => account_sid,
        };
        if secret.is_empty() || secret.len() > 256 {
            return Err(PushError::Credentials("the auth token or API key secret is missing".into()));
        }
        match &from {
            SmsFrom::Number(number) if !text::is_e164(number) => {
                return Err(PushError::Credentials("the sender's number is not E.164 (+14155550100)".into()));
            }
            SmsFrom::MessagingService(sid) if !is_sid(sid, "MG") => {
                return Err(PushError::Credentials("a messaging service SID is MG and 32 hex digits".into()));
            }
            _ => {}
        }
        Ok(Self {
            account_sid: account_sid.to_owned(),
            username: username.to_owned(),
            secret: secret.to_owned(),
            from,
        })
    }
}

/// An app's Twilio credentials as stored: the settings that may be shown (`account_sid`,
/// `api_key_sid`, `from` or `messaging_service_sid`) and the secret, `{"secret", "auth_token"}`
/// (JSON; the auth token signs Twilio's status callbacks, and is the secret itself when no API
/// key is used).
pub struct StoredTwilio {
    /// What the messages are sent with.
    pub credentials: TwilioCredentials,
    /// The account's auth token, which Twilio signs status callbacks with; `None` when only an
    /// API key was given (no status callbacks are asked for then).
    pub auth_token: Option<String>,
}

impl StoredTwilio {
    /// Reads credentials as the store keeps them.
    pub fn from_stored(settings: &str, secret: &[u8]) -> Result<Self, PushError> {
        let settings: serde_json::Value = serde_json::from_str(settings)
            .map_err(|_| PushError::Credentials("the stored settings are not JSON".into()))?;
        #[derive(Deserialize)]
        struct Secret {
            secret: String,
            #[serde(default)]
            auth_token: Option<String>,
        }
        // Credentials stored before the secret was JSON hold the raw secret.
        let secret: Secret = match serde_json::from_slice(secret) {
            Ok(secret) => secret,
            Err(_) => Secret {
                secret: String::from_utf8(secret.to_vec())
                    .map_err(|_| PushError::Credentials("the stored secret is not readable".into()))?,
                auth_token: None,
            },
        };
        let field = |name: &str| settings[name].as_str().map(str::to_owned);
        let from = match (field("from"), field("messaging_service_sid")) {
            (Some(number), _) => SmsFrom::Number(number),
            (None, Some(sid)) => SmsFrom::MessagingService(sid),
            (None, None) => {
                return Err(PushError::Credentials("no sender (from or messaging_service_sid)".into()));
            }
        };
        let api_key = field("api_key_sid");
        let credentials = TwilioCredentials::new(
            &field("account_sid").unwrap_or_default(),
            api_key.as_deref(),
            &secret.secret,
            from,
        )?;
        let auth_token = match api_key {
            None => Some(secret.secret),
            Some(_) => secret.auth_token.filter(|token| !token.is_empty()),
        };
        Ok(Self { credentials, auth_token })
    }

    /// The secret as the store keeps it.
    pub fn stored_secret(secret: &str, auth_token: Option<&str>) -> Vec<u8> {
        serde_json::json!({"secret": secret, "auth_token": auth_token}).to_string().into_bytes()
    }
}

/// A message sent, as Twilio took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Twilio's message SID (`SM…`), which its status callbacks name.
    pub sid: String,
    /// The segments Twilio bills.
    pub segments: u32,
    /// Its first status (`queued`, or `accepted` through a messaging service).
    pub status: String,
}

/// Sends SMS through Twilio (or what `base_url` names).
pub struct TwilioClient {
    http: reqwest::Client,
    base_url: String,
}

impl TwilioClient {
    /// A client of Twilio at `base_url` ([`TWILIO_URL`]).
    pub fn new(base_url: &str, http: reqwest::Client) -> Self {
        Self { http, base_url: base_url.trim_end_matches('/').to_owned() }
    }

    /// Checks what Twilio would refuse and what this server will not send, before it is sent:
    /// a recipient that is not E.164, an empty body, one over 1,600 characters or
    /// [`text::MAX_SEGMENTS`] segments. Returns the segments it will cost.
    pub fn check(to: &str, body: &str) -> Result<u32, PushError> {
        if !text::is_e164(to) {
            return Err(PushError::DeviceToken("the recipient is not an E.164 number (+14155550100)".into()));
        }
        let chars = body.chars().count();
        if chars == 0 {
            return Err(PushError::Invalid("body (empty)"));
        }
        let segments = text::segments(body);
        if chars > MAX_BODY_CHARS || segments > text::MAX_SEGMENTS {
            return Err(PushError::PayloadTooLarge { size: chars, limit: MAX_BODY_CHARS });
        }
        Ok(segments)
    }

    /// Sends `body` to `to`; Twilio posts the message's progress to `status_callback`.
    pub async fn send(
        &self,
        credentials: &TwilioCredentials,
        to: &str,
        body: &str,
        status_callback: Option<&str>,
    ) -> Result<(SmsOutcome, Option<Sent>), PushError> {
        let segments = Self::check(to, body)?;
        let mut form: Vec<(&str, &str)> = vec![("To", to), ("Body", body)];
        match &credentials.from {
            SmsFrom::Number(number) => form.push(("From", number)),
            SmsFrom::MessagingService(sid) => form.push(("MessagingServiceSid", sid)),
        }
        if let Some(callback) = status_callback {
            form.push(("StatusCallback", callback));
        }
        let url = format!("{}/2010-04-01/Accounts/{}/Messages.json", self.base_url, credentials.account_sid);
        let request =
            self.http.post(url).basic_auth(&credentials.username, Some(&credentials.secret)).form(&form);
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                let outcome = SmsOutcome::Retry { after: None, reason: format!("Twilio unreachable: {err}") };
                return Ok((outcome, None));
            }
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers());
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Answer {
            sid: Option<String>,
            num_segments: Option<String>,
            // A message's status (text), or an error's HTTP status (a number).
            status: Option<serde_json::Value>,
            code: Option<u64>,
            message: Option<String>,
        }
        let answer: Answer =
            serde_json::from_slice(&read_capped(response, MAX_ANSWER_BYTES).await).unwrap_or_default();
        if (200..300).contains(&status) {
            let sid = answer.sid.unwrap_or_default();
            let billed = answer.num_segments.and_then(|n| n.parse().ok()).unwrap_or(segments);
            let status = answer.status.as_ref().and_then(|s| s.as_str());
            let status = status.filter(|s| !s.is_empty() && s.len() <= 32).unwrap_or("queued").to_owned();
            let sent = Sent { sid: sid.clone(), segments: billed, status };
            return Ok((SmsOutcome::Delivered { id: Some(sid) }, Some(sent)));
        }
        let code = answer.code.unwrap_or(0);
        let reason = match answer.message {
            Some(message) => format!("{code}: {message}"),
            None => format!("HTTP {status}"),
        };
        // Twilio's error codes: 20003 authentication, 20429 and 14107 throttling, 21610 the
        // recipient replied STOP, 21211/21614 an invalid or landline recipient.
        let outcome = match (status, code) {
            (_, 21610) => SmsOutcome::Unregistered { reason },
            (401 | 403, _) | (_, 20003 | 20005) => SmsOutcome::CredentialsRejected { reason },
            (429, _) | (500..=599, _) | (_, 20429 | 14107) => SmsOutcome::Retry { after, reason },
            _ => SmsOutcome::Rejected { status, reason },
        };
        Ok((outcome, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AC: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn credentials_are_checked_and_the_secret_is_never_printed() {
        let from = SmsFrom::Number("+14155550100".into());
        let ok = TwilioCredentials::new(AC, None, "s3cret-token", from.clone()).unwrap();
        assert!(!format!("{ok:?}").contains("s3cret"));
        assert!(TwilioCredentials::new("AC01", None, "t", from.clone()).is_err());
        assert!(TwilioCredentials::new(AC, Some("SK01"), "t", from.clone()).is_err());
        assert!(TwilioCredentials::new(AC, None, "", from).is_err());
        assert!(TwilioCredentials::new(AC, None, "t", SmsFrom::Number("4155550100".into())).is_err());
        assert!(TwilioCredentials::new(AC, None, "t", SmsFrom::MessagingService("MG1".into())).is_err());
    }

    #[test]
    fn what_twilio_would_refuse_is_refused_before_sending() {
        assert_eq!(TwilioClient::check("+14155550100", "Your driver is here"), Ok(1));
        assert!(matches!(TwilioClient::check("4155550100", "hi"), Err(PushError::DeviceToken(_))));
        assert!(matches!(TwilioClient::check("+14155550100", ""), Err(PushError::Invalid(_))));
        assert_eq!(TwilioClient::check("+14155550100", &"a".repeat(1530)), Ok(10));
        assert!(matches!(
            TwilioClient::check("+14155550100", &"a".repeat(1531)),
            Err(PushError::PayloadTooLarge { .. })
        ));
    }
}
