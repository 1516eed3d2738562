//! Notices to a tenant on its apps' system channel (`tributary:system`, where only the server
//! publishes): an endpoint disabled, a quota used up, a billing change. Clients and the console
//! subscribe to it, and rules on it deliver the notices onwards (webhook, SMS).

use std::time::Duration;

use tributary_engine::{ChannelKey, Engine, NewMessage, PublishOptions, StreamOptions};

/// Publishes `notice` on the system channel of `app_id`, with `key` as its idempotency key, so
/// that workers or requests telling the same thing at once store it once. A failure is logged,
/// not returned: the audit log holds what happened either way.
pub async fn publish(engine: &dyn Engine, app_id: &str, notice: &serde_json::Value, key: String) {
    let Ok(channel) = tributary_protocol::ChannelName::parse(tributary_protocol::channel::SYSTEM_CHANNEL)
    else {
        return;
    };
    let message = NewMessage {
        payload: tributary_protocol::Payload::Json(bytes::Bytes::from(notice.to_string())),
        client_id: None,
        encoding: None,
        meta: None,
    };
    // Kept a week, so a console or a client that was away reads what it missed.
    let options = PublishOptions {
        stream: StreamOptions { history_size: 1_000, history_ttl: Duration::from_secs(7 * 86_400) },
        idempotency_key: Some(key),
        idempotency_window: Duration::from_secs(60),
    };
    let channel = ChannelKey::new(app_id, channel);
    if let Err(err) = engine.publish(&channel, message, &options).await {
        tracing::warn!(error = %err, app = app_id, "the tenant was not told on its system channel (the audit log has it)");
    }
}
