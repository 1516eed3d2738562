//! `POST /v1/sms`, `GET /v1/sms/{id}`, `GET /v1/sms`: a backend's texts.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tributary_delivery::push::PushError;
use tributary_delivery::rules::stable_id;
use tributary_delivery::sms::TwilioClient;
use tributary_delivery::sms::job::{SmsJob, target_id};
use tributary_protocol::ErrorCode;
use tributary_relay::http_api::{ApiError, parse_body};
use tributary_relay::ops::OpError;
use tributary_store::{NewDelivery, NewSms, PushService, SmsAdmission};

use super::{SmsApi, backend, invalid, stored, view};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendSms {
    to: String,
    body: String,
}

/// `POST /v1/sms` (API key) with `{"to": "+14155550100", "body": "…"}`: checks the text, then
/// records it, charges the tenant's quota and queues it in one transaction; `202` with its id,
/// its segments and `status: pending`. With an `Idempotency-Key` its id is derived from the key:
/// a retried request queues (and charges) nothing twice and answers with the text as it is.
pub(super) async fn send(
    State(api): State<SmsApi>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = backend(&api, &headers).await?;
    let request: SendSms = parse_body(body)?;
    let segments = TwilioClient::check(&request.to, &request.body).map_err(|err| match err {
        PushError::DeviceToken(_) => invalid("to: not an E.164 number (+14155550100)"),
        PushError::Invalid(_) => invalid("body: empty"),
        PushError::PayloadTooLarge { size, .. } => invalid(format!(
            "body: {size} characters; a text is at most 1600 characters and {} segments",
            tributary_delivery::sms::text::MAX_SEGMENTS
        )),
        other => invalid(other.to_string()),
    })?;
    // Nothing is queued for an app whose texts could not be sent.
    match api.store.push_secret(&key.app_id, PushService::Twilio).await.map_err(stored)? {
        None => {
            return Err(not_configured(
                "the app has no Twilio credentials: set them with PUT /v1/tenants/{tenant}/apps/{app}/push-credentials/twilio",
            ));
        }
        Some((credentials, secret)) => {
            if let Some(reason) = credentials.disabled_reason {
                return Err(not_configured(&format!(
                    "the app's Twilio credentials were refused ({reason}): set them again"
                )));
            }
            use secrecy::ExposeSecret as _;
            if let Err(err) = tributary_delivery::sms::StoredTwilio::from_stored(
                &credentials.settings,
                secret.expose_secret(),
            ) {
                return Err(not_configured(&format!(
                    "the app's Twilio credentials cannot be used ({err}): set them again"
                )));
            }
        }
    }
    let sms_id = match headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        Some(idempotency) if !idempotency.is_empty() && idempotency.len() <= 256 => {
            stable_id("sms_", &key.app_id, idempotency)
        }
        Some(_) => return Err(invalid("Idempotency-Key is 1 to 256 characters")),
        None => format!("sms_{}", uuid::Uuid::new_v4().simple()),
    };
    let job = SmsJob {
        sms_id: sms_id.clone(),
        to: request.to.clone(),
        body: request.body,
        origin: "api".into(),
        segments,
    };
    let record = NewSms {
        id: sms_id.clone(),
        tenant_id: key.tenant_id.clone(),
        app_id: key.app_id.clone(),
        to: request.to,
        segments: i64::from(segments),
        origin: "api".into(),
    };
    let delivery = NewDelivery {
        tenant_id: key.tenant_id.clone(),
        app_id: key.app_id.clone(),
        target_id: target_id(&key.app_id),
        event_id: sms_id.clone(),
        events: 1,
        payload: serde_json::to_vec(&job).map_err(|_| ApiError::from(ErrorCode::Internal))?,
        headers: "{}".into(),
    };
    let now = tributary_delivery::worker::now_ms();
    match api.store.queue_sms(&record, &delivery, now).await.map_err(stored)? {
        SmsAdmission::Admitted => {
            let body = json!({"sms_id": sms_id, "segments": segments, "status": "pending"});
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        SmsAdmission::Duplicate | SmsAdmission::AlreadySent => {
            let sms = api.store.sms_message(&key.tenant_id, &key.app_id, &sms_id).await.map_err(stored)?;
            Ok((StatusCode::ACCEPTED, Json(view(&sms))).into_response())
        }
        SmsAdmission::OverMonthlyQuota { limit } => Err(ApiError(OpError::new(
            ErrorCode::SmsQuotaExceeded,
            format!(
                "the account's monthly SMS quota ({limit} segments) is used up; this text needs {segments}"
            ),
        ))),
        SmsAdmission::OverRate { limit, retry_after_secs } => {
            let message = format!(
                "the account sends at most {limit} texts a minute; try again in {retry_after_secs} s"
            );
            let mut response = ApiError(OpError::new(ErrorCode::RateLimited, message)).into_response();
            if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            Ok(response)
        }
    }
}

fn not_configured(message: &str) -> ApiError {
    ApiError(OpError::new(ErrorCode::NotConfigured, message.to_owned()))
}

/// `GET /v1/sms/{sms_id}` (API key): the text and its status.
pub(super) async fn read(
    State(api): State<SmsApi>,
    Path(sms_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = backend(&api, &headers).await?;
    let sms = api.store.sms_message(&key.tenant_id, &key.app_id, &sms_id).await.map_err(stored)?;
    Ok(Json(view(&sms)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// The previous page's `next`: `<created_ms>_<sms_id>`.
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /v1/sms?limit=50&before=<cursor>` (API key): the app's texts, newest first; the
/// answer's `next_before` (a cursor) asks for the page after.
pub(super) async fn list(
    State(api): State<SmsApi>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = backend(&api, &headers).await?;
    let Query(query) = query.map_err(|err| invalid(err.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(invalid("limit: from 1 to 500"));
    }
    let before = match &query.before {
        None => None,
        Some(cursor) => {
            let parsed = cursor.split_once('_').and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id)));
            Some(parsed.ok_or_else(|| invalid("before: the cursor of a previous page's next_before"))?)
        }
    };
    let texts = api.store.sms_messages(&key.tenant_id, &key.app_id, before, limit).await.map_err(stored)?;
    let next = (texts.len() as i64 == limit)
        .then(|| texts.last().map(|t| format!("{}_{}", t.created_ms, t.id)))
        .flatten();
    let items: Vec<serde_json::Value> = texts.iter().map(view).collect();
    Ok(Json(json!({"items": items, "next_before": next})))
}
