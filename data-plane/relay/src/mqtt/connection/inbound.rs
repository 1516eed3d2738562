//! The packets a connected client sends: PUBLISH (and its acknowledgements), SUBSCRIBE and
//! UNSUBSCRIBE, and what they are answered with.

// The connection's parts share its imports and types: they were one file, split for size.
#[allow(clippy::wildcard_imports)]
use super::*;

/// Handles one packet of the client; `Some` ends the connection.
pub(super) async fn handle(state: &Arc<RelayState>, live: &mut Live, packet: Packet) -> Option<Ending> {
    let version = live.link.version;
    match packet {
        Packet::PingReq => live.out.extend_from_slice(&[0xD0, 0x00]),
        Packet::Publish(publish) => return on_publish(state, live, publish).await,
        Packet::PubAck(ack) => live.client.on_puback(ack.packet_id),
        Packet::PubRec(ack) => live.client.on_pubrec(&live.link, ack.packet_id, ack.code, &mut live.out),
        Packet::PubComp(ack) => live.client.on_pubcomp(ack.packet_id),
        Packet::PubRel(ack) => {
            let known = live.client.awaiting_release.remove(&ack.packet_id);
            write_ack(&mut live.out, version, 0x70, ack.packet_id, if known { 0 } else { 0x92 });
        }
        Packet::Subscribe(subscribe) => on_subscribe(state, live, subscribe).await,
        Packet::Unsubscribe(unsubscribe) => on_unsubscribe(state, live, unsubscribe).await,
        Packet::Disconnect(disconnect) => {
            if let Some(expiry) = disconnect.properties.session_expiry {
                if live.client.expiry_secs == 0 && expiry > 0 {
                    // MQTT-3.14.2-2.
                    return Some(Ending::Refused(0x82, "a session without expiry cannot be given one"));
                }
                live.client.expiry_secs = expiry.min(state.config.mqtt.max_session_expiry_secs);
            }
            return Some(Ending::Disconnected { will: disconnect.code == 0x04 });
        }
        Packet::Auth(_) => return Some(Ending::Refused(0x8C, "extended authentication is not supported")),
        Packet::Connect(_)
        | Packet::ConnAck(_)
        | Packet::SubAck(_)
        | Packet::UnsubAck(_)
        | Packet::PingResp => return Some(Ending::Refused(0x82, "a packet only a server sends")),
    }
    None
}

/// Maps a refused publish or subscribe to its reason code.
pub(super) fn reason_of(err: &OpError) -> u8 {
    match err.code {
        ErrorCode::Forbidden
        | ErrorCode::DisabledInNamespace
        | ErrorCode::TokenRevoked
        | ErrorCode::TenantSuspended
        | ErrorCode::PaymentRequired => 0x87,
        ErrorCode::RateLimited
        | ErrorCode::QuotaExceeded
        | ErrorCode::ChannelLimit
        | ErrorCode::TooManySubscriptions
        | ErrorCode::MessageTooLarge => 0x97,
        ErrorCode::InvalidChannel => 0x90,
        _ => 0x80,
    }
}

/// The name of the MQTT 5 user property that carries a publish's push section.
pub(crate) const PUSH_PROPERTY: &str = "tributary-push";

/// Takes a publish's push section out of its user properties: `None` without one, an error
/// when it is not JSON.
fn take_push(publish: &mut Publish) -> Option<Result<Box<serde_json::value::RawValue>, OpError>> {
    let at = publish.properties.user.iter().position(|(name, _)| name == PUSH_PROPERTY)?;
    let (_, value) = publish.properties.user.remove(at);
    Some(serde_json::value::RawValue::from_string(value).map_err(|err| {
        OpError::new(ErrorCode::InvalidParameter, format!("{PUSH_PROPERTY}: not JSON ({err})"))
    }))
}

/// The reason code of a refused push section: not allowed (0x87), or not one a service would
/// take (0x99, payload format invalid).
fn push_reason(err: &OpError) -> u8 {
    match err.code {
        ErrorCode::InvalidParameter | ErrorCode::InvalidFrame => 0x99,
        _ => reason_of(err),
    }
}

/// Answers a publish that was refused (and not stored): MQTT 5 acknowledges it with the
/// reason. A 3.1.1 client has no way to hear a reason; MQTT-3.3.5-2 lets the server either close
/// the connection or acknowledge as usual, and it acknowledges, so that one refused topic does
/// not cut a device off from the ones it may use (the refusal is logged).
pub(super) fn refuse_publish(live: &mut Live, publish: &Publish, code: u8) -> Option<Ending> {
    let version = live.link.version;
    if version == Version::V311 {
        tracing::info!(client = %live.client.client_id(), topic = %publish.topic, code, "MQTT 3.1.1 publish refused");
    }
    let code = if version == Version::V5 { code } else { 0 };
    match (publish.qos, publish.packet_id) {
        (QoS::AtLeastOnce, Some(id)) => write_ack(&mut live.out, version, 0x40, id, code),
        (QoS::ExactlyOnce, Some(id)) => {
            if version == Version::V311 {
                // The PUBREL that follows must find its id.
                live.client.awaiting_release.insert(id);
            }
            write_ack(&mut live.out, version, 0x50, id, code);
        }
        _ => {}
    }
    None
}

pub(super) async fn on_publish(
    state: &Arc<RelayState>,
    live: &mut Live,
    mut publish: Publish,
) -> Option<Ending> {
    // Topic aliases set by the client (MQTT 5).
    let channel = match publish.properties.topic_alias.take() {
        Some(alias) if alias == 0 || alias > state.config.mqtt.topic_alias_maximum => {
            return Some(Ending::Refused(0x94, "topic alias out of range"));
        }
        Some(alias) if publish.topic.is_empty() => match live.link.inbound_alias(alias) {
            Some(channel) => Ok(channel.clone()),
            None => return Some(Ending::Refused(0x82, "unknown topic alias")),
        },
        Some(alias) => channel_of(&publish.topic).inspect(|channel| {
            live.link.extras().inbound_aliases.insert(alias, channel.clone());
        }),
        None if publish.topic.is_empty() => return Some(Ending::Refused(0x82, "a PUBLISH without a topic")),
        None => channel_of(&publish.topic),
    };
    let Ok(channel) = channel else { return refuse_publish(live, &publish, 0x90) };
    if publish.topic.is_empty() {
        publish.topic = channel.to_string();
    }
    if let (QoS::ExactlyOnce, Some(id)) = (publish.qos, publish.packet_id) {
        if live.client.awaiting_release.contains(&id) {
            // A retransmission before PUBREL: stored once already (MQTT-4.3.3-9).
            write_ack(&mut live.out, live.link.version, 0x50, id, 0);
            return None;
        }
        // 3.1.1 clients are never told the server's Receive Maximum, so it binds MQTT 5 only.
        if live.link.version == Version::V5
            && live.client.awaiting_release.len() >= usize::from(state.config.mqtt.receive_maximum)
        {
            return Some(Ending::Refused(0x93, "receive maximum exceeded"));
        }
    }
    if publish.properties.payload_format == Some(1) && std::str::from_utf8(&publish.payload).is_err() {
        return refuse_publish(live, &publish, 0x99);
    }
    if live.client.deny.iter().any(|p| p.matches(&channel)) {
        return refuse_publish(live, &publish, 0x80);
    }
    if let Err(err) = live.client.session.may_publish_on(&channel) {
        return refuse_publish(live, &publish, reason_of(&err));
    }
    // MQTT 5: a push section rides in the user property `tributary-push` (docs/push.md). It is
    // taken out of what subscribers get, and checked before anything is published.
    let push = match take_push(&mut publish) {
        None => None,
        Some(push) => {
            let checked = push.and_then(|push| {
                live.client.session.may_push_on(&channel)?;
                let sink = crate::ops::push_sink(state, Some(&push))?;
                Ok(sink.map(|sink| (sink.clone(), push)))
            });
            match checked {
                Ok(push) => push,
                Err(err) => return refuse_publish(live, &publish, push_reason(&err)),
            }
        }
    };
    let client_id = live.client.client_id().clone();
    let published = crate::mqtt::publish::publish(state, &live.app, &client_id, channel, &publish).await;
    let result = match published {
        Ok(result) => result,
        Err(err) => return refuse_publish(live, &publish, reason_of(&err)),
    };
    if let Some((sink, push)) = push
        && let Err(err) = crate::ops::queue_push(&sink, &live.app, &result, &push).await
    {
        // Stored, its pushes not queued: the client is told (MQTT 5) and may publish again.
        tracing::warn!(error = %err.message, "an MQTT publish's pushes were not queued");
        return refuse_publish(live, &publish, reason_of(&err));
    }
    match (publish.qos, publish.packet_id) {
        (QoS::AtLeastOnce, Some(id)) => write_ack(&mut live.out, live.link.version, 0x40, id, 0),
        (QoS::ExactlyOnce, Some(id)) => {
            live.client.awaiting_release.insert(id);
            write_ack(&mut live.out, live.link.version, 0x50, id, 0);
        }
        _ => {}
    }
    None
}

pub(super) async fn on_subscribe(state: &Arc<RelayState>, live: &mut Live, subscribe: Subscribe) {
    let v5 = live.link.version == Version::V5;
    let id = subscribe.properties.subscription_ids.first().map(|id| *id as u32);
    let mut codes = Vec::with_capacity(subscribe.subscriptions.len());
    let mut retained_for = Vec::new();
    for wanted in subscribe.subscriptions {
        let code = match subscribe_one(state, live, &wanted, id).await {
            Ok(is_new) => {
                // Shared subscriptions get no retained messages (MQTT 5 section 4.8.2).
                let send = !wanted.filter.starts_with("$share/")
                    && match wanted.retain_handling {
                        0 => true,
                        1 => is_new,
                        _ => false,
                    };
                if send {
                    retained_for.push(Arc::<str>::from(wanted.filter.as_str()));
                }
                wanted.qos as u8
            }
            Err(code) if v5 => code,
            Err(_) => 0x80,
        };
        codes.push(code);
    }
    let suback = SubAck { packet_id: subscribe.packet_id, properties: Properties::default(), codes };
    live.out.extend_from_slice(&encode(&Packet::SubAck(suback), live.link.version));
    for filter in retained_for {
        queue_retained(state, live, filter).await;
    }
    handoff::save(state, &live.app, &mut live.client, live.generation, true).await;
}

/// Adds or replaces one subscription; returns whether it is new, or the reason code.
pub(super) async fn subscribe_one(
    state: &Arc<RelayState>,
    live: &mut Live,
    wanted: &tributary_mqtt::Subscription,
    id: Option<u32>,
) -> Result<bool, u8> {
    if !live.client.session.take_request() {
        return Err(0x97);
    }
    let filter = parse_filter(wanted, id)?;
    if let Some(existing) = live.client.filters.iter_mut().find(|f| *f.text == *wanted.filter) {
        // MQTT-3.8.4-3: a subscription to the same filter replaces the options.
        existing.qos = wanted.qos;
        existing.no_local = wanted.no_local;
        existing.retain_as_published = wanted.retain_as_published;
        existing.id = id;
        return Ok(false);
    }
    if live.client.filters.len() >= state.config.max_subscriptions_per_connection {
        return Err(0x97);
    }
    // The channel a filter without wildcards names, shared or not.
    let inner = wanted
        .filter
        .strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
        .map_or(&*wanted.filter, |(_, i)| i);
    if let Ok(channel) = channel_of(inner)
        && live.client.deny.iter().any(|p| p.matches(&channel))
    {
        return Err(0x80);
    }
    add_filter(state, &mut live.client, filter, None).await.map_err(|err| reason_of(&err))?;
    Ok(true)
}

/// Reads a subscription's filter and options; `Err` is the SUBACK reason code.
pub(in crate::mqtt) fn parse_filter(
    wanted: &tributary_mqtt::Subscription,
    id: Option<u32>,
) -> Result<Filter, u8> {
    // `$share/<group>/<filter>`: a shared subscription (MQTT 5 section 4.8.2).
    let (inner, shared) = match wanted.filter.strip_prefix("$share/") {
        Some(rest) => {
            let (group, inner) = rest.split_once('/').ok_or(0x8F)?;
            if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
                return Err(0x8F);
            }
            if wanted.no_local {
                // MQTT-3.8.3-4 calls No Local on a shared subscription a protocol error; it is
                // refused as an invalid filter, which leaves the client's other subscriptions be.
                return Err(0x8F);
            }
            (inner, true)
        }
        None => (wanted.filter.as_str(), false),
    };
    let topic = TopicFilter::parse(inner).map_err(|e| e.reason_code())?;
    // A shared subscription is served by the hub like a wildcard one, even without wildcards.
    let (text, target) = if topic.is_exact() && !shared {
        // The channel name's text serves as the filter's: one string per subscription.
        let channel = channel_of(inner).map_err(|e| e.reason_code())?;
        (channel.shared().clone(), Target::Channel(channel))
    } else {
        (Arc::from(wanted.filter.as_str()), Target::Pattern(Arc::new(topic)))
    };
    Ok(Filter {
        text,
        target,
        qos: wanted.qos,
        no_local: wanted.no_local,
        retain_as_published: wanted.retain_as_published,
        id,
        shared,
        position: None,
    })
}

/// Queues the retained messages a new subscription gets.
pub(super) async fn queue_retained(state: &Arc<RelayState>, live: &mut Live, text: Arc<str>) {
    let Some(filter) = live.client.filters.iter().find(|f| f.text == text) else { return };
    let found = match &filter.target {
        Target::Channel(channel) => {
            let key =
                tributary_engine::ChannelKey::new(state.routed_app(&live.app, channel), channel.clone());
            let retained = state.engine.retained(&key).await;
            // A retained message stored after the subscription's start comes as a message
            // anyway (from the seam or the grace): not twice.
            let after_start = |p: &tributary_protocol::Publication| {
                filter
                    .position
                    .as_ref()
                    .is_some_and(|(epoch, offset)| *p.epoch == **epoch && p.offset > *offset)
            };
            retained.map(|p| {
                p.filter(|p| !after_start(p)).map(|p| vec![(channel.clone(), p)]).unwrap_or_default()
            })
        }
        Target::Pattern(topic) => {
            let limit = state.config.mqtt.max_retained_per_subscription;
            let topic = topic.clone();
            let deny = live.client.deny.clone();
            let taken = |c: &ChannelName| topic.matches(c.as_str()) && !deny.iter().any(|p| p.matches(c));
            let all = state.engine.retained_in(&live.app, usize::MAX).await;
            all.map(|all| all.into_iter().filter(|(c, _)| taken(c)).take(limit).collect())
        }
    };
    // A repeated SUBSCRIBE replaces what the last one queued rather than adding to it.
    live.link.drop_retained(&text);
    match found {
        Ok(found) => {
            for (channel, publication) in found {
                let message = PreparedMessage { frame: bytes::Bytes::new(), channel, publication };
                live.link.extras().retained.push_back((Arc::new(message), text.clone()));
            }
        }
        Err(err) => tracing::warn!(error = %err, "reading retained messages failed"),
    }
}

pub(super) async fn on_unsubscribe(state: &Arc<RelayState>, live: &mut Live, unsubscribe: Unsubscribe) {
    let mut codes = Vec::with_capacity(unsubscribe.filters.len());
    for text in &unsubscribe.filters {
        let Some(index) = live.client.filters.iter().position(|f| *f.text == **text) else {
            codes.push(0x11);
            continue;
        };
        let filter = live.client.filters.remove(index);
        match filter.exact() {
            Some(channel) => {
                let _ = live.client.session.unsubscribe(channel).await;
            }
            None => remove_patterns(state, live.client.session.conn(), Some(&filter.text)).await,
        }
        live.link.drop_retained(&filter.text);
        codes.push(0x00);
    }
    let unsuback = UnsubAck { packet_id: unsubscribe.packet_id, properties: Properties::default(), codes };
    live.out.extend_from_slice(&encode(&Packet::UnsubAck(unsuback), live.link.version));
    handoff::save(state, &live.app, &mut live.client, live.generation, true).await;
}

/// The MQTT 5 reason code for a connection the server closed.
pub(super) fn close_reason(code: Option<CloseCode>) -> u8 {
    match code {
        Some(CloseCode::Shutdown) => 0x8B,
        Some(CloseCode::SlowConsumer) => 0x97,
        Some(CloseCode::IdleTimeout) => 0x8D,
        Some(CloseCode::Revoked | CloseCode::TenantSuspended | CloseCode::InvalidToken) => 0x87,
        Some(CloseCode::TokenExpired) => 0xA0,
        Some(CloseCode::Disconnected) => 0x98,
        Some(CloseCode::SessionTakenOver) => 0x8E,
        Some(CloseCode::ConnectionLimit) => 0x97,
        _ => 0x80,
    }
}
