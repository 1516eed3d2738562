//! `POST /v1/sms/status/{app_id}/{sms_id}`: Twilio's report of a text's progress, verified by
//! `X-Twilio-Signature` (HMAC-SHA1 under the account's auth token of the URL the workers gave
//! Twilio and the form's parameters). Anything else is refused and changes nothing.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use tributary_delivery::sms::StoredTwilio;
use tributary_delivery::sms::job::status_callback;
use tributary_delivery::sms::signature::{form_params, verify};
use tributary_protocol::ErrorCode;
use tributary_relay::http_api::ApiError;
use tributary_relay::ops::OpError;
use tributary_store::PushService;

use super::{SmsApi, invalid, stored};

/// The statuses Twilio reports of a message.
const STATUSES: [&str; 11] = [
    "accepted",
    "scheduled",
    "queued",
    "sending",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "read",
    "canceled",
    "partially_delivered",
];

/// Largest callback body read: Twilio's are a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;

fn forbidden(message: &str) -> ApiError {
    ApiError(OpError::new(ErrorCode::Forbidden, message.to_owned()))
}

/// Records the status Twilio reports, once its signature is verified: `204`. A callback that is
/// not signed by the app's account is `403`; one of a text this app did not send is `404`.
pub(super) async fn callback(
    State(api): State<SmsApi>,
    Path((app_id, sms_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body.map_err(|rejection| invalid(rejection.body_text()))?;
    if body.len() > MAX_BODY {
        return Err(ApiError(OpError::new(ErrorCode::FrameTooLarge, "a status callback is at most 16 KiB")));
    }
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| forbidden("X-Twilio-Signature is missing"))?;
    let not_found = || ApiError(OpError::new(ErrorCode::NotFound, "text not found"));
    let Some((credentials, secret)) =
        api.store.push_secret(&app_id, PushService::Twilio).await.map_err(|err| match err {
            tributary_store::StoreError::NotFound(_) => not_found(),
            other => stored(other),
        })?
    else {
        return Err(not_found());
    };
    use secrecy::ExposeSecret as _;
    let twilio = StoredTwilio::from_stored(&credentials.settings, secret.expose_secret())
        .map_err(|_| forbidden("the app's Twilio credentials cannot verify callbacks"))?;
    let Some(auth_token) = twilio.auth_token.as_deref() else {
        return Err(forbidden("the app's Twilio credentials have no auth token to verify callbacks with"));
    };
    let params = form_params(&body);
    let url = status_callback(&api.callback_base, &app_id, &sms_id);
    if !verify(auth_token, &url, &params, signature) {
        return Err(forbidden("X-Twilio-Signature does not match this callback"));
    }
    let field = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let status = field("MessageStatus").or_else(|| field("SmsStatus")).unwrap_or_default();
    if !STATUSES.contains(&status) {
        return Err(invalid(format!("MessageStatus: {status:?} is not one of Twilio's")));
    }
    let sid = field("MessageSid").or_else(|| field("SmsSid")).unwrap_or_default();
    if sid.is_empty() || sid.len() > 64 {
        return Err(invalid("MessageSid is missing"));
    }
    let error_code = field("ErrorCode").filter(|code| !code.is_empty() && code.len() <= 16);
    let now = tributary_delivery::worker::now_ms();
    let known = api
        .store
        .sms_status(&credentials.tenant_id, &app_id, &sms_id, sid, status, error_code, now)
        .await
        .map_err(stored)?;
    if !known {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}
