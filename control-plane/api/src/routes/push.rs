//! An app's credentials for the push and SMS services: set (each checked by reading it the way
//! the workers will: a `.p8` key is a P-256 key, a service account signs, a VAPID key is one),
//! listed without their secrets, deleted. Setting them again enables a service whose
//! credentials were refused.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tributary_delivery::push::apns::ApnsKey;
use tributary_delivery::push::fcm::ServiceAccount;
use tributary_delivery::push::webpush::VapidKey;
use tributary_delivery::sms::{SmsFrom, StoredTwilio, TwilioCredentials};
use tributary_store::{PushCredentials, PushService, Role};

use super::app_of;
use crate::ControlPlane;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApnsBody {
    team_id: String,
    key_id: String,
    /// The app's bundle id.
    topic: String,
    #[serde(default = "production")]
    environment: String,
    /// The `.p8` file's text.
    key: String,
}

fn production() -> String {
    "production".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FcmBody {
    /// The service-account file: its JSON object, or its text.
    service_account: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebPushBody {
    /// `mailto:` or `https:` contact of the app's operator.
    subject: String,
    /// A P-256 key in PKCS#8 PEM.
    private_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TwilioBody {
    account_sid: String,
    #[serde(default)]
    api_key_sid: Option<String>,
    /// The auth token, or the API key's secret.
    secret: String,
    /// With an API key: the account's auth token, which Twilio signs status callbacks with
    /// (without it no status callbacks are asked for).
    #[serde(default)]
    auth_token: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    messaging_service_sid: Option<String>,
}

/// Credentials as the API shows them: never the secret.
fn view(credentials: PushCredentials) -> Value {
    json!({
        "service": credentials.service.as_str(),
        "settings": serde_json::from_str::<Value>(&credentials.settings).unwrap_or_else(|_| json!({})),
        "disabled_reason": credentials.disabled_reason,
        "updated_at": credentials.updated_at,
    })
}

fn invalid(err: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(err.to_string())
}

/// Reads a service's body into the settings that may be shown and the secret, checking the
/// credentials as the workers will read them.
fn checked(service: PushService, body: Result<Bytes, BytesRejection>) -> Result<(Value, Vec<u8>), ApiError> {
    match service {
        PushService::Apns => {
            let b: ApnsBody = body::parse(body)?;
            ApnsKey::from_p8(&b.team_id, &b.key_id, b.key.as_bytes()).map_err(invalid)?;
            if b.topic.is_empty() || b.topic.len() > 255 || b.topic.bytes().any(|c| c.is_ascii_control()) {
                return Err(ApiError::invalid("topic: the app's bundle id".to_owned()));
            }
            if b.environment != "production" && b.environment != "sandbox" {
                return Err(ApiError::invalid("environment: production or sandbox".to_owned()));
            }
            let settings = json!({"team_id": b.team_id, "key_id": b.key_id, "topic": b.topic, "environment": b.environment});
            Ok((settings, b.key.into_bytes()))
        }
        PushService::Fcm => {
            let b: FcmBody = body::parse(body)?;
            let text = match b.service_account {
                Value::String(text) => text,
                object @ Value::Object(_) => object.to_string(),
                _ => return Err(ApiError::invalid("service_account: the service-account file".to_owned())),
            };
            let account = ServiceAccount::from_json(&text).map_err(invalid)?;
            Ok((json!({"project_id": account.project_id()}), text.into_bytes()))
        }
        PushService::WebPush => {
            let b: WebPushBody = body::parse(body)?;
            let key = VapidKey::from_pem(&b.private_key, &b.subject).map_err(invalid)?;
            Ok((json!({"subject": b.subject, "public_key": key.public_key()}), b.private_key.into_bytes()))
        }
        PushService::Twilio => {
            let b: TwilioBody = body::parse(body)?;
            let from = match (b.from, b.messaging_service_sid) {
                (Some(number), None) => SmsFrom::Number(number),
                (None, Some(sid)) => SmsFrom::MessagingService(sid),
                _ => {
                    return Err(ApiError::invalid(
                        "name exactly one of from and messaging_service_sid".to_owned(),
                    ));
                }
            };
            TwilioCredentials::new(&b.account_sid, b.api_key_sid.as_deref(), &b.secret, from.clone())
                .map_err(invalid)?;
            if b.auth_token.is_some() && b.api_key_sid.is_none() {
                return Err(ApiError::invalid(
                    "auth_token goes with api_key_sid (without an API key the secret is the auth token)"
                        .to_owned(),
                ));
            }
            let sender = match from {
                SmsFrom::Number(number) => json!({"from": number}),
                SmsFrom::MessagingService(sid) => json!({"messaging_service_sid": sid}),
            };
            let callbacks = b.api_key_sid.is_none() || b.auth_token.is_some();
            let mut settings = json!({"account_sid": b.account_sid, "api_key_sid": b.api_key_sid,
                                      "status_callbacks": callbacks});
            if let (Some(all), Some(extra)) = (settings.as_object_mut(), sender.as_object()) {
                all.extend(extra.clone());
            }
            Ok((settings, StoredTwilio::stored_secret(&b.secret, b.auth_token.as_deref())))
        }
    }
}

fn service(name: &str) -> Result<PushService, ApiError> {
    PushService::parse(name)
        .ok_or_else(|| ApiError::invalid(format!("no service {name:?}: apns, fcm, webpush or twilio")))
}

/// `PUT …/apps/{app}/push-credentials/{service}` (developer): sets or replaces them; 200 with
/// what may be shown (for `webpush`, the `public_key` pages subscribe with).
pub(crate) async fn set(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, name)): Path<(String, String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    app_of(&plane, &tenant, &app).await?;
    let service = service(&name)?;
    let (settings, secret) = checked(service, body)?;
    let set = plane
        .store
        .set_push_credentials(&caller.actor, &tenant, &app, service, &settings.to_string(), &secret)
        .await?;
    Ok(Json(view(set)))
}

/// `GET …/apps/{app}/push-credentials` (read_only): every service's, without secrets.
pub(crate) async fn list(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<Vec<Value>>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    app_of(&plane, &tenant, &app).await?;
    Ok(Json(plane.store.push_credentials(&tenant, &app).await?.into_iter().map(view).collect()))
}

/// `DELETE …/apps/{app}/push-credentials/{service}` (developer).
pub(crate) async fn delete(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, app, name)): Path<(String, String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    caller.tenant(&tenant, Role::Developer)?;
    app_of(&plane, &tenant, &app).await?;
    plane.store.delete_push_credentials(&caller.actor, &tenant, &app, service(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
