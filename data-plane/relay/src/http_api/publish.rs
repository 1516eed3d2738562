//! Publishing from backends: one message, or a batch to many channels.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tributary_protocol::ErrorCode;
use tributary_protocol::frame::client::MAX_KEY_LEN;
use tributary_protocol::frame::server::ErrorBody;

use super::{ApiError, authenticate, channel, parse_body};
use crate::ops::{self, OpError, PublishInput, PublishResult, push_sink, queue_push};
use crate::state::RelayState;

/// Most messages in one batch.
pub const MAX_BATCH: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MessageBody {
    data: Box<RawValue>,
    #[serde(default)]
    binary: bool,
    encoding: Option<String>,
    idempotency_key: Option<String>,
    /// A push section: also pushed to the devices subscribed to the channel for push.
    #[serde(default)]
    push: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchItem {
    channel: String,
    data: Box<RawValue>,
    #[serde(default)]
    binary: bool,
    encoding: Option<String>,
    idempotency_key: Option<String>,
    #[serde(default)]
    push: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchBody {
    messages: Vec<BatchItem>,
}

fn idempotency_key(headers: &HeaderMap, body: Option<String>) -> Result<Option<String>, ApiError> {
    let header = headers.get("idempotency-key").map(|v| v.to_str().map(str::to_owned));
    let key = match (header, body) {
        (Some(Err(_)), _) => {
            return Err(OpError::new(ErrorCode::InvalidParameter, "Idempotency-Key must be ASCII").into());
        }
        // Two different keys: whichever won, the other would be forgotten and a retry carrying
        // only that one stored again.
        (Some(Ok(header)), Some(body)) if header != body => {
            return Err(OpError::new(
                ErrorCode::InvalidParameter,
                "the Idempotency-Key header and the idempotency_key field differ: send one key",
            )
            .into());
        }
        (Some(Ok(key)), _) => Some(key),
        (None, body) => body,
    };
    if let Some(key) = &key {
        check_key(key)?;
    }
    Ok(key)
}

fn check_key(key: &str) -> Result<(), OpError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(OpError::new(
            ErrorCode::InvalidParameter,
            format!("idempotency key must be 1 to {MAX_KEY_LEN} bytes"),
        ));
    }
    Ok(())
}

fn check_encoding(encoding: &Option<String>) -> Result<(), OpError> {
    match encoding {
        Some(e) if e.is_empty() || e.len() > MAX_KEY_LEN => Err(OpError::new(
            ErrorCode::InvalidParameter,
            format!("encoding must be 1 to {MAX_KEY_LEN} bytes"),
        )),
        _ => Ok(()),
    }
}

/// `POST /v1/channels/{channel}/messages`.
pub(super) async fn publish_one(
    State(state): State<Arc<RelayState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishResult>, ApiError> {
    let identity = authenticate(&state, &headers).await?;
    let channel = channel(&name)?;
    identity.allow(&channel, tributary_capability::Right::Publish)?;
    let body: MessageBody = parse_body(body)?;
    if body.push.is_some() {
        identity.allow(&channel, tributary_capability::Right::PushPublish)?;
    }
    check_encoding(&body.encoding)?;
    let input = PublishInput {
        channel,
        data: &body.data,
        binary: body.binary,
        encoding: body.encoding,
        idempotency_key: idempotency_key(&headers, body.idempotency_key)?,
        client_id: None,
        api_key: Some(&identity.key_id),
    };
    let sink = push_sink(&state, body.push.as_deref())?;
    let mut result = ops::publish(&state, &Arc::from(identity.app_id.as_str()), input).await?;
    if let (Some(sink), Some(push)) = (sink, body.push.as_deref()) {
        result.push = Some(queue_push(sink, &identity.app_id, &result, push).await?);
    }
    Ok(Json(result))
}

#[derive(Serialize)]
#[serde(untagged)]
enum BatchOutcome<'a> {
    Ok(PublishResult),
    Err { channel: String, error: ErrorBody<'a> },
}

#[derive(Serialize)]
pub(super) struct BatchReply {
    results: Vec<serde_json::Value>,
}

/// `POST /v1/publish`: each message is published on its own; one failing does not stop the
/// others, and each result says how it went. A batch-level `Idempotency-Key` applies to every
/// message (keys are scoped per channel) unless the message has its own.
pub(super) async fn publish_batch(
    State(state): State<Arc<RelayState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchReply>, ApiError> {
    let identity = authenticate(&state, &headers).await?;
    let body: BatchBody = parse_body(body)?;
    if body.messages.is_empty() || body.messages.len() > MAX_BATCH {
        return Err(OpError::new(
            ErrorCode::InvalidParameter,
            format!("a batch has 1 to {MAX_BATCH} messages"),
        )
        .into());
    }
    let batch_key = idempotency_key(&headers, None)?;
    let app: Arc<str> = Arc::from(identity.app_id.as_str());
    let mut results = Vec::with_capacity(body.messages.len());
    for (index, item) in body.messages.into_iter().enumerate() {
        let name = item.channel.clone();
        let outcome = async {
            check_encoding(&item.encoding)?;
            let own_key = item.idempotency_key.map(|k| check_key(&k).map(|()| k)).transpose()?;
            let channel = tributary_protocol::ChannelName::parse(&item.channel)
                .map_err(|e| OpError::new(ErrorCode::InvalidChannel, e.to_string()))?;
            identity.allow(&channel, tributary_capability::Right::Publish)?;
            if item.push.is_some() {
                identity.allow(&channel, tributary_capability::Right::PushPublish)?;
            }
            let input = PublishInput {
                channel,
                data: &item.data,
                binary: item.binary,
                encoding: item.encoding,
                // Keys are scoped per channel, so a batch key is made per item: two messages
                // of one batch to the same channel are two messages, and a retry matches both.
                idempotency_key: own_key.or_else(|| batch_key.as_ref().map(|k| format!("{k}#{index}"))),
                client_id: None,
                api_key: Some(&identity.key_id),
            };
            let sink = push_sink(&state, item.push.as_deref())?;
            let mut result = ops::publish(&state, &app, input).await?;
            if let (Some(sink), Some(push)) = (sink, item.push.as_deref()) {
                result.push = Some(queue_push(sink, &app, &result, push).await?);
            }
            Ok::<_, OpError>(result)
        }
        .await;
        let value = match outcome {
            Ok(result) => serde_json::to_value(BatchOutcome::Ok(result)),
            Err(err) => serde_json::to_value(BatchOutcome::Err {
                channel: name,
                error: ErrorBody::new(err.code, &err.message),
            }),
        };
        results.push(value.unwrap_or(serde_json::Value::Null));
    }
    Ok(Json(BatchReply { results }))
}
