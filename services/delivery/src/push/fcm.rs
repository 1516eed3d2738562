//! Firebase Cloud Messaging, HTTP v1: `POST /v1/projects/{project}/messages:send` with an
//! OAuth2 access token.
//!
//! The token comes from Google's token endpoint by the JWT-bearer grant (RFC 7523): an RS256
//! assertion signed with the service account's private key, naming the account (`iss`), the
//! messaging scope, the token endpoint (`aud`) and an hour's validity. Tokens are cached per
//! account until [`TOKEN_MARGIN`] before they expire. The token endpoint is this client's
//! setting, never the `token_uri` of a tenant's service-account file: a tenant could otherwise
//! send the server's requests anywhere.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{PushError, PushOutcome, read_capped, retry_after, unix_now};

/// FCM's service.
pub const FCM_URL: &str = "https://fcm.googleapis.com";
/// Google's OAuth2 token endpoint.
pub const TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The scope of the messaging API.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The largest message FCM takes (its `message` object, as sent).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// A token is made anew this long before it expires.
pub const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// Most bytes of an answer read.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// A Firebase project's service account (the JSON file of Google Cloud's console).
pub struct ServiceAccount {
    project_id: String,
    client_email: String,
    key: EncodingKey,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is a secret: never printed.
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .finish()
    }
}

impl ServiceAccount {
    /// Reads a service-account JSON file (`type` `service_account`, with `project_id`,
    /// `client_email` and an RSA `private_key` in PEM).
    pub fn from_json(json: &str) -> Result<Self, PushError> {
        #[derive(Deserialize)]
        struct File {
            #[serde(rename = "type")]
            kind: String,
            project_id: String,
            client_email: String,
            private_key: String,
        }
        let file: File = serde_json::from_str(json).map_err(|err| {
            PushError::Credentials(format!(
                "not a service-account file: {}",
                err.to_string().replace('"', "'")
            ))
        })?;
        if file.kind != "service_account" {
            return Err(PushError::Credentials("the file's type is not service_account".into()));
        }
        let project_ok = !file.project_id.is_empty()
            && file.project_id.len() <= 64
            && file
                .project_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b':' || b == b'.');
        if !project_ok {
            return Err(PushError::Credentials("project_id is not a project id".into()));
        }
        if !file.client_email.contains('@') {
            return Err(PushError::Credentials("client_email is not an email address".into()));
        }
        let key = EncodingKey::from_rsa_pem(file.private_key.as_bytes())
            .map_err(|_| PushError::Credentials("private_key is not an RSA key in PEM".into()))?;
        Ok(Self { project_id: file.project_id, client_email: file.client_email, key })
    }

    /// The project messages are sent in.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// The assertion that asks `audience` for an access token, made at `iat`.
    fn assertion(&self, audience: &str, iat: u64) -> Result<String, PushError> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: &'a str,
            aud: &'a str,
            iat: u64,
            exp: u64,
        }
        let claims = Claims { iss: &self.client_email, scope: SCOPE, aud: audience, iat, exp: iat + 3600 };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|err| PushError::Credentials(format!("signing the assertion: {err}")))
    }
}

/// An access token and when to stop using it.
struct CachedToken {
    token: String,
    until: Instant,
}

/// Sends messages to FCM (or to what its URLs name).
pub struct FcmClient {
    http: reqwest::Client,
    send_url: String,
    token_url: String,
    /// Access tokens by service account.
    tokens: tokio::sync::Mutex<HashMap<String, CachedToken>>,
}

/// A failure to get an access token, as the outcome of the message that needed it.
type TokenResult = Result<Result<String, PushOutcome>, PushError>;

impl FcmClient {
    /// A client of FCM at `send_url` ([`FCM_URL`]) getting tokens from `token_url`
    /// ([`TOKEN_URL`]).
    pub fn new(send_url: &str, token_url: &str, http: reqwest::Client) -> Self {
        Self {
            http,
            send_url: send_url.trim_end_matches('/').to_owned(),
            token_url: token_url.to_owned(),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Sends `message` (FCM's `message` object: `token` and `notification`, `data`, `android`,
    /// `apns`, `webpush` as the app sets them) with `account`'s credentials.
    pub async fn send(
        &self,
        account: &ServiceAccount,
        message: &serde_json::Value,
    ) -> Result<PushOutcome, PushError> {
        let token = message.get("token").and_then(|t| t.as_str()).unwrap_or_default();
        if token.is_empty()
            || token.len() > 4096
            || token.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(PushError::DeviceToken("an FCM registration token".into()));
        }
        let encoded = serde_json::to_vec(message).map_err(|err| PushError::Client(err.to_string()))?;
        if encoded.len() > MAX_MESSAGE_BYTES {
            return Err(PushError::PayloadTooLarge { size: encoded.len(), limit: MAX_MESSAGE_BYTES });
        }
        let mut body = Vec::with_capacity(encoded.len() + 12);
        body.extend_from_slice(b"{\"message\":");
        body.extend_from_slice(&encoded);
        body.push(b'}');
        let access = match self.access_token(account).await? {
            Ok(access) => access,
            Err(outcome) => return Ok(outcome),
        };
        let url = format!("{}/v1/projects/{}/messages:send", self.send_url, account.project_id);
        let response = match self
            .http
            .post(url)
            .bearer_auth(access)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => {
                return Ok(PushOutcome::Retry { after: None, reason: format!("FCM unreachable: {err}") });
            }
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers());
        let answer: serde_json::Value =
            serde_json::from_slice(&read_capped(response, MAX_ANSWER_BYTES).await).unwrap_or_default();
        if status == 200 {
            return Ok(PushOutcome::Delivered { id: answer["name"].as_str().map(str::to_owned) });
        }
        // FCM's error: `{"error": {"status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}}`.
        let error = &answer["error"];
        let code = error["details"]
            .as_array()
            .and_then(|details| details.iter().find_map(|detail| detail["errorCode"].as_str()))
            .or_else(|| error["status"].as_str())
            .unwrap_or_default()
            .to_owned();
        let reason = match error["message"].as_str() {
            Some(message) if !code.is_empty() => format!("{code}: {message}"),
            _ if !code.is_empty() => code.clone(),
            _ => format!("HTTP {status}"),
        };
        Ok(match (status, code.as_str()) {
            (404, _) | (_, "UNREGISTERED") => PushOutcome::Unregistered { reason },
            (401, _) => {
                // The token was refused before its time: a new one, and again.
                self.tokens.lock().await.remove(&account.client_email);
                PushOutcome::Retry { after: None, reason }
            }
            (403, "SENDER_ID_MISMATCH") => PushOutcome::Rejected { status, reason },
            (403, _) | (_, "THIRD_PARTY_AUTH_ERROR") => PushOutcome::CredentialsRejected { reason },
            (429 | 500 | 503, _) | (_, "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL") => {
                PushOutcome::Retry { after, reason }
            }
            _ => PushOutcome::Rejected { status, reason },
        })
    }

    /// The account's access token: cached, or got from the token endpoint. A refusal there is
    /// the outcome of the message (`invalid_grant`: the key was revoked or the account deleted).
    async fn access_token(&self, account: &ServiceAccount) -> TokenResult {
        // Held across the request on purpose: one token request per account at a time, the
        // others wait for its token rather than ask for their own.
        let mut tokens = self.tokens.lock().await;
        if let Some(cached) = tokens.get(&account.client_email)
            && Instant::now() < cached.until
        {
            return Ok(Ok(cached.token.clone()));
        }
        let assertion = account.assertion(&self.token_url, unix_now())?;
        // The assertion is a JWT (base64url and dots): nothing in it needs escaping.
        let form =
            format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}");
        let response = match self
            .http
            .post(&self.token_url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => {
                return Ok(Err(PushOutcome::Retry {
                    after: None,
                    reason: format!("token endpoint unreachable: {err}"),
                }));
            }
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers());
        let answer: serde_json::Value =
            serde_json::from_slice(&read_capped(response, MAX_ANSWER_BYTES).await).unwrap_or_default();
        let (Some(token), 200) = (answer["access_token"].as_str(), status) else {
            let error = answer["error"].as_str().unwrap_or_default();
            let reason = format!("token endpoint: HTTP {status} {error}").trim_end().to_owned();
            return Ok(Err(match status {
                400 | 401 | 403 => PushOutcome::CredentialsRejected { reason },
                _ => PushOutcome::Retry { after, reason },
            }));
        };
        let lifetime = Duration::from_secs(answer["expires_in"].as_u64().unwrap_or(3600));
        let until = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        tokens.insert(account.client_email.clone(), CachedToken { token: token.to_owned(), until });
        Ok(Ok(token.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_service_account_is_refused_with_the_reason() {
        let cases = [
            ("{", "not a service-account file"),
            (r#"{"type":"authorized_user","project_id":"p","client_email":"a@b","private_key":"x"}"#, "type"),
            (
                r#"{"type":"service_account","project_id":"p q","client_email":"a@b","private_key":"x"}"#,
                "project_id",
            ),
            (
                r#"{"type":"service_account","project_id":"p","client_email":"ab","private_key":"x"}"#,
                "client_email",
            ),
            (
                r#"{"type":"service_account","project_id":"p","client_email":"a@b","private_key":"x"}"#,
                "private_key",
            ),
        ];
        for (json, why) in cases {
            match ServiceAccount::from_json(json) {
                Err(PushError::Credentials(reason)) => assert!(reason.contains(why), "{json}: {reason}"),
                other => panic!("{json}: {other:?}"),
            }
        }
    }
}
