//! Publishing what MQTT clients send: their PUBLISH packets and their wills.

use std::sync::Arc;

use tributary_engine::{ChannelKey, NewMessage};
use tributary_mqtt::{MessageMeta, Publish};
use tributary_protocol::{ChannelName, Payload, Publication};

use crate::ops::{self, OpError, PublishResult};
use crate::state::RelayState;

/// Publishes an MQTT message of `client` in `app` on `channel`: stored and fanned out like any
/// other message, with its MQTT meta. The retain flag makes it the channel's retained message,
/// or clears that with an empty payload (which is still delivered to current subscribers, as
/// MQTT wants).
pub(super) async fn publish(
    state: &RelayState,
    app: &Arc<str>,
    client: &Arc<str>,
    channel: ChannelName,
    publish: &Publish,
) -> Result<PublishResult, OpError> {
    let meta = MessageMeta::of(publish).encode();
    let payload = Payload::from_bytes(publish.payload.clone());
    let message = NewMessage { payload, client_id: Some(client.clone()), encoding: None, meta: Some(meta) };
    let retained = publish.retain.then(|| message.clone());
    let result = ops::publish_message(state, app, channel.clone(), message, None, None).await?;
    if let Some(message) = retained {
        let key = ChannelKey::new(state.routed_app(app, &channel), channel);
        let publication = (!publish.payload.is_empty()).then(|| Publication {
            epoch: result.epoch.clone(),
            offset: result.offset,
            ts_ms: result.ts,
            // As stored: in an exchange's namespace, named by the publishing app.
            client_id: result.stored_client_id.clone(),
            payload: message.payload,
            encoding: None,
            meta: message.meta,
        });
        // Ordered by offset in the engine: of two concurrent retained publishes the newer stays.
        state.engine.set_retained(&key, &result.epoch, result.offset, publication).await?;
    }
    Ok(result)
}
