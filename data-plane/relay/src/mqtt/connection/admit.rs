//! CONNECT: the credential checked, the session started fresh, resumed or taken over from
//! another node, and its subscriptions made.

// The connection's parts share its imports and types: they were one file, split for size.
#[allow(clippy::wildcard_imports)]
use super::*;

/// Reads until the CONNECT packet. `Err(Some(_))`: it was malformed; `Err(None)`: the socket
/// went away.
pub(super) async fn read_connect(
    stream: &mut impl MqttIo,
    input: &mut BytesMut,
    max: usize,
) -> Result<Box<Connect>, Option<DecodeError>> {
    loop {
        match decode(input, None, max) {
            Ok(Some((Packet::Connect(connect), used))) => {
                input.advance(used);
                return Ok(connect);
            }
            Ok(Some(_)) => return Err(Some(DecodeError::Protocol("the first packet must be CONNECT"))),
            Ok(None) => {}
            Err(err) => return Err(Some(err)),
        }
        input.reserve(1024);
        match io::read_into(stream, input).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

/// A CONNACK refusal: the MQTT 5 reason code and the 3.1.1 return code.
pub(super) struct Refusal(pub(super) u8, pub(super) u8, pub(super) String);

impl Refusal {
    fn of(err: &OpError) -> Self {
        let message = err.message.clone();
        match err.code {
            ErrorCode::TokenRevoked
            | ErrorCode::TenantSuspended
            | ErrorCode::PaymentRequired
            | ErrorCode::Forbidden => Self(0x87, 0x05, message),
            ErrorCode::ConnectionLimit | ErrorCode::ChannelLimit | ErrorCode::QuotaExceeded => {
                Self(0x97, 0x03, message)
            }
            code if code.temporary() => Self(0x88, 0x03, message),
            _ => Self(0x86, 0x04, message),
        }
    }
}

/// Sends CONNACK with a refusal, then closes.
pub(super) async fn refuse(stream: &mut impl MqttIo, version: Version, refusal: Refusal) {
    let Refusal(v5, v3, reason) = refusal;
    let mut properties = Properties::default();
    if version == Version::V5 {
        properties.reason_string = Some(reason);
    }
    let code = if version == Version::V5 { v5 } else { v3 };
    let packet = encode(&Packet::ConnAck(ConnAck { session_present: false, code, properties }), version);
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, io::write_all(stream, &packet)).await;
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, io::shutdown(stream)).await;
}

/// Whether a client id or user name holds a character that means "many" somewhere.
pub(super) fn has_wildcard(text: &str) -> bool {
    text.contains(['+', '#', '*'])
}

/// Authenticates CONNECT, claims or resumes the session and sends CONNACK.
pub(super) async fn open(
    state: &Arc<RelayState>,
    stream: &mut impl MqttIo,
    connect: Box<Connect>,
) -> Option<Live> {
    let version = connect.version;
    let config = &state.config.mqtt;
    if has_wildcard(&connect.client_id) {
        refuse(stream, version, Refusal(0x85, 0x02, "wildcard characters in the client id".into())).await;
        return None;
    }
    let username = connect.username.as_deref().unwrap_or_default();
    if has_wildcard(username) {
        refuse(stream, version, Refusal(0x86, 0x04, "wildcard characters in the user name".into())).await;
        return None;
    }
    let anonymous = connect.password.is_none() && !config.anonymous_app.is_empty();
    let minted;
    let token = if anonymous {
        if connect.client_id.is_empty() && version == Version::V311 && !connect.clean_start {
            let reason = "an empty client id needs a clean session";
            refuse(stream, version, Refusal(0x85, 0x02, reason.into())).await;
            return None;
        }
        let client = match connect.client_id.as_str() {
            "" => format!("anon-{}", uuid::Uuid::now_v7().simple()),
            client => client.to_owned(),
        };
        minted = match mint_anonymous(state, client).await {
            Ok(token) => token,
            Err(err) => {
                refuse(stream, version, Refusal::of(&err)).await;
                return None;
            }
        };
        minted.as_str()
    } else {
        let Some(token) = connect.password.as_ref().and_then(|p| std::str::from_utf8(p).ok()) else {
            let reason = "the password must be a capability token of the app named by the user name";
            refuse(stream, version, Refusal(0x86, 0x04, reason.into())).await;
            return None;
        };
        token
    };
    let (identity, credential, policy) = match Identity::authenticate(state, token).await {
        Ok(authenticated) => authenticated,
        Err(err) => {
            refuse(stream, version, Refusal::of(&err)).await;
            return None;
        }
    };
    if !anonymous && username != &*identity.app_id && username != &*credential.kid {
        let reason = "the user name must be the token's app id or signing key id";
        refuse(stream, version, Refusal(0x86, 0x04, reason.into())).await;
        return None;
    }
    let assigned = connect.client_id.is_empty();
    if assigned && version == Version::V311 && !connect.clean_start {
        let reason = "an empty client id needs a clean session";
        refuse(stream, version, Refusal(0x85, 0x02, reason.into())).await;
        return None;
    }
    if !assigned && *connect.client_id != *identity.client_id {
        let reason = "the client id must be the token's client id";
        refuse(stream, version, Refusal(0x85, 0x02, reason.into())).await;
        return None;
    }
    if let Some(will) = &connect.will {
        // The checks of a PUBLISH on that topic, made now: the will is published when the
        // client is gone.
        let deny = denied(state, anonymous);
        let allowed = channel_of(&will.topic).is_ok_and(|c| {
            identity.capabilities.allows(&c, Right::Publish)
                && !deny.iter().any(|p| p.matches(&c))
                && state.namespace(&identity.app_id, c.namespace()).client_publish
        });
        if !allowed {
            let reason = format!("no publish right on the will topic {}", will.topic);
            refuse(stream, version, Refusal(0x87, 0x05, reason)).await;
            return None;
        }
    }
    if let Err(err) = state.quotas.admit_connection(&policy) {
        refuse(stream, version, Refusal::of(&err)).await;
        return None;
    }
    let max_keep_alive = config.max_keep_alive_secs;
    let keep_alive = match connect.keep_alive {
        0 => max_keep_alive,
        asked => asked.min(max_keep_alive),
    };
    let expiry_secs = match version {
        Version::V5 => connect.properties.session_expiry.unwrap_or(0).min(config.max_session_expiry_secs),
        Version::V311 if connect.clean_start => 0,
        Version::V311 => config.max_session_expiry_secs,
    };
    let app = identity.app_id.clone();
    let client_id = identity.client_id.clone();
    // Anonymous sessions are kept apart from those of tokens: an anonymous client naming a
    // device's client id must not resume, or take over, the device's session.
    let session_key: Arc<str> =
        if anonymous { Arc::from(format!("anonymous/{client_id}")) } else { client_id.clone() };
    let claim = state.mqtt_sessions.claim(&app, &session_key).await;
    let mut previous = claim.previous;
    // A copy written by another node is the session's latest state (this node's own copy is
    // of the session it holds, if any); a clean start drops both.
    // MQTT-3.1.3-9: back within its will's delay (on whichever node), the will is not sent.
    // Both looked up at once: one round trip of the CONNECT, not two.
    let (taken, _) =
        tokio::join!(handoff::take(state, &app, &session_key), handoff::take_will(state, &app, &session_key));
    let moved = taken.foreign(state).is_some() && !connect.clean_start;
    if (connect.clean_start || moved)
        && let Some(old) = previous.take()
    {
        end_session(state, old).await;
    }
    let session_present = previous.is_some() || moved;
    let expires_at = identity.expires_at;
    let deny = denied(state, anonymous);
    let client = match previous {
        Some(old) => resume(state, old, identity, credential, deny).await,
        None => fresh(state, identity, credential, session_key.clone(), deny).await,
    };
    let mut client = match client {
        Ok(client) => client,
        Err(err) => {
            state.mqtt_sessions.release(&app, &session_key, claim.generation);
            // Refused (a limit, the token): the copy stays for the client's next try.
            handoff::put_back(state, &app, &session_key, &taken).await;
            refuse(stream, version, Refusal::of(&err)).await;
            return None;
        }
    };
    client.expiry_secs = expiry_secs;
    client.copy_version = client.copy_version.max(taken.next_version(state));
    if moved && let Some(copy) = &taken.copy {
        Box::pin(restore(state, &mut client, copy)).await;
    }
    if !state.mqtt_sessions.attach(&app, &session_key, claim.generation, client.session.conn()) {
        // Opening took so long that a newer connection of the client id took over meanwhile.
        end_session(state, client).await;
        handoff::put_back(state, &app, &session_key, &taken).await;
        refuse(stream, version, Refusal(0x89, 0x03, "a newer connection took this client id over".into()))
            .await;
        return None;
    }
    if let Some(copy) = taken.foreign(state) {
        // Also after a clean start: the node that held the session ends it.
        handoff::announce(state, &app, &session_key, copy).await;
    }
    let p = &connect.properties;
    let receive_maximum = p.receive_maximum.unwrap_or(u16::MAX).min(config.max_inflight);
    let max_packet = p.maximum_packet_size.map_or(usize::MAX, |m| m as usize);
    let alias_max = p.topic_alias_maximum.unwrap_or(0).min(config.server_topic_aliases);
    let problem_info = p.request_problem_info != Some(0);
    let mut link = Link::new(version, receive_maximum, max_packet, alias_max, problem_info);
    let mut properties = Properties::default();
    if version == Version::V5 {
        properties.receive_maximum = Some(config.receive_maximum);
        properties.topic_alias_maximum = Some(config.topic_alias_maximum);
        properties.maximum_packet_size = Some(config.max_packet_bytes as u32);
        properties.retain_available = Some(1);
        properties.wildcard_available = Some(1);
        properties.subscription_ids_available = Some(1);
        properties.shared_available = Some(1);
        if keep_alive != connect.keep_alive {
            properties.server_keep_alive = Some(keep_alive);
        }
        if connect.properties.session_expiry.is_some_and(|asked| asked != expiry_secs) {
            properties.session_expiry = Some(expiry_secs);
        }
        if assigned {
            properties.assigned_client_id = Some(client_id.to_string());
        }
    }
    let connack = ConnAck { session_present, code: 0, properties };
    let mut out = encode(&Packet::ConnAck(connack), version);
    if session_present {
        client.resend(&mut link, &mut out);
        // Present again: join the presence of its channels.
        client.session.heartbeat().await;
    }
    handoff::save(state, &app, &mut client, claim.generation, true).await;
    Some(Live {
        client,
        link,
        app,
        generation: claim.generation,
        keep_alive: Duration::from_secs(keep_alive.into()),
        will: connect.will.map(Box::new),
        expires_at,
        out,
    })
}

/// Mints the token of an anonymous connection: the configured app and grants, the client id
/// the client gave, the longest lifetime a token may have.
pub(super) async fn mint_anonymous(state: &RelayState, client: String) -> Result<String, OpError> {
    let config = &state.config.mqtt;
    let policy = state
        .policies
        .get(&*state.directory, &config.anonymous_app)
        .await
        .map_err(crate::session::unavailable)?
        .ok_or(ErrorCode::UnknownKey)?;
    let key = policy.minting_key().ok_or(ErrorCode::UnknownKey)?;
    let grants = config
        .anonymous_grants
        .iter()
        .filter_map(|g| tributary_capability::Capabilities::parse_spec(g).ok())
        .collect();
    let request = tributary_capability::TokenRequest::new(
        client,
        config.anonymous_app.clone(),
        state.config.max_token_ttl_secs,
        grants,
    );
    let minted = tributary_capability::mint(&request, key, unix_now())
        .map_err(|e| OpError::new(e.code(), e.to_string()))?;
    Ok(minted.token)
}

/// Returns the channel patterns an anonymous connection may not use (none for a token's).
pub(super) fn denied(state: &RelayState, anonymous: bool) -> Arc<Vec<ChannelPattern>> {
    // One empty list for every token's connection, rather than an allocation each.
    static NONE: std::sync::LazyLock<Arc<Vec<ChannelPattern>>> = std::sync::LazyLock::new(Arc::default);
    if !anonymous {
        return NONE.clone();
    }
    Arc::new(state.config.mqtt.anonymous_deny.iter().filter_map(|p| ChannelPattern::parse(p).ok()).collect())
}

/// A new session.
pub(super) async fn fresh(
    state: &Arc<RelayState>,
    identity: Identity,
    credential: Credential,
    session_key: Arc<str>,
    deny: Arc<Vec<ChannelPattern>>,
) -> Result<Box<Client>, OpError> {
    let (conn, outbox) = crate::transport::new_connection(state, &identity, credential).await?;
    let session = Session::new(state.clone(), conn, identity, true);
    Ok(Box::new(Client::new(session, outbox, session_key, deny)))
}

/// Resumes a parked session under the new connection's token: subscriptions it no longer
/// grants end. A session whose queue overflowed while it waited (or whose connection was
/// taken over) is rebuilt on a new queue, its exact subscriptions recovering from the last
/// message delivered.
pub(super) async fn resume(
    state: &Arc<RelayState>,
    mut old: Box<Client>,
    identity: Identity,
    credential: Credential,
    deny: Arc<Vec<ChannelPattern>>,
) -> Result<Box<Client>, OpError> {
    old.deny = deny;
    if old.session.conn().is_closed() {
        let filters = std::mem::take(&mut old.filters);
        let (conn, outbox) = match crate::transport::new_connection(state, &identity, credential).await {
            Ok(opened) => opened,
            Err(err) => {
                old.filters = filters;
                end_session(state, old).await;
                return Err(err);
            }
        };
        let session = Session::new(state.clone(), conn, identity, true);
        let stale = std::mem::replace(&mut old.session, session);
        remove_patterns(state, stale.conn(), None).await;
        stale.close().await;
        old.outbox = outbox;
        for filter in filters {
            let recover = filter.recover_from();
            if let Err(err) = add_filter(state, &mut old, filter.clone(), recover).await {
                tracing::debug!(filter = %filter.text, error = %err.message, "subscription not resumed");
            }
        }
        return Ok(old);
    }
    old.session.conn().set_parked(false);
    // The new token first: the parked connection still holds the old one, which may have been
    // revoked meanwhile.
    let mut revoked = old.session.reauthenticate(identity, credential).await;
    if let Err(err) = crate::transport::register(state, old.session.conn()).await {
        end_session(state, old).await;
        return Err(err);
    }
    let denied: Vec<ChannelName> = old
        .filters
        .iter()
        .filter_map(|f| f.exact().cloned())
        .filter(|c| old.deny.iter().any(|p| p.matches(c)))
        .collect();
    for channel in denied {
        let _ = old.session.unsubscribe(&channel).await;
        revoked.push(channel);
    }
    let capabilities = old.session.identity().capabilities.clone();
    let mut uncovered = Vec::new();
    old.filters.retain(|f| match &f.target {
        Target::Channel(channel) => !revoked.contains(channel),
        Target::Pattern(topic) => {
            let kept = covers(&capabilities, topic);
            if !kept {
                uncovered.push(f.text.clone());
            }
            kept
        }
    });
    for text in uncovered {
        remove_patterns(state, old.session.conn(), Some(&text)).await;
    }
    Ok(old)
}

/// Rebuilds the subscriptions of a session another node held: channels recover from history
/// after where the client was.
pub(super) async fn restore(state: &Arc<RelayState>, client: &mut Client, copy: &handoff::Snapshot) {
    for stored in &copy.filters {
        let Ok(mut filter) = parse_filter(&stored.subscription(), stored.id) else { continue };
        let recover = stored.recover_from();
        filter.position =
            stored.position.as_ref().map(|(epoch, offset)| (Arc::from(epoch.as_str()), *offset));
        if let Err(err) = add_filter(state, client, filter, recover).await {
            tracing::debug!(filter = %stored.text, error = %err.message, "subscription not resumed");
        }
    }
    client.awaiting_release.extend(copy.awaiting.iter().copied());
}

/// Ends a session for good: its wildcard subscriptions leave the hub, its channel
/// subscriptions and presence end, its connection is unregistered.
pub(in crate::mqtt) async fn end_session(state: &RelayState, client: Box<Client>) {
    remove_patterns(state, client.session.conn(), None).await;
    client.session.close().await;
}

/// Adds a wildcard subscription to the hub once the engine delivers every channel of the app
/// to this node (one app subscription per wildcard subscription in the hub).
pub(super) async fn add_pattern(
    state: &RelayState,
    conn: &ConnHandle,
    name: Arc<str>,
    filter: crate::hub::ChannelFilter,
    shared: bool,
) -> Result<(), OpError> {
    state.engine.subscribe_app(conn.app()).await?;
    if state.hub.add_pattern(conn, name, filter, shared) {
        // It replaced one of the same name, whose app subscription is not needed twice.
        release_app(state, conn, 1).await;
    }
    Ok(())
}

/// Removes a connection's wildcard subscription `name` (all of them with `None`) and gives back
/// their app subscriptions.
pub(super) async fn remove_patterns(state: &RelayState, conn: &ConnHandle, name: Option<&str>) {
    let removed = state.hub.remove_pattern(conn, name);
    release_app(state, conn, removed).await;
}

pub(super) async fn release_app(state: &RelayState, conn: &ConnHandle, times: usize) {
    for _ in 0..times {
        if let Err(err) = state.engine.unsubscribe_app(conn.app()).await {
            tracing::warn!(error = %err, "giving back an app subscription failed");
        }
    }
}

/// Returns whether `capabilities` allow subscribing to every channel `filter` can match.
pub(super) fn covers(capabilities: &tributary_capability::Capabilities, filter: &TopicFilter) -> bool {
    filter.patterns().iter().all(|pattern| {
        capabilities.grants().iter().any(|g| g.rights.contains(Right::Subscribe) && g.pattern.covers(pattern))
    })
}

/// Adds a subscription: an exact filter subscribes its channel in the session (recovering from
/// `recover`), a wildcard one goes to the hub.
pub(super) async fn add_filter(
    state: &Arc<RelayState>,
    client: &mut Client,
    mut filter: Filter,
    recover: Option<tributary_protocol::StreamPosition>,
) -> Result<(), OpError> {
    match &filter.target {
        Target::Channel(channel) => {
            let recovering = recover.is_some();
            let request = SubscribeRequest { channel: channel.clone(), recover, rewind: None, state: None };
            let reply = if recovering {
                client.session.subscribe(request, None).await?
            } else {
                let grace = Duration::from_millis(state.config.mqtt.subscribe_grace_ms);
                // The retained message comes as one (or not at all), never as a message too.
                let app = state.routed_app(&client.session.identity().app_id, channel);
                let key = tributary_engine::ChannelKey::new(app, channel.clone());
                let floor = match state.engine.retained(&key).await {
                    Ok(Some(retained)) => Some(tributary_protocol::StreamPosition {
                        epoch: retained.epoch.to_string(),
                        offset: retained.offset,
                    }),
                    _ => None,
                };
                client.session.subscribe_with_grace(request, grace, floor).await?
            };
            // Where a rebuilt session recovers from if nothing of the channel is delivered first.
            filter.position = Some((reply.epoch.clone(), reply.position.offset));
        }
        Target::Pattern(topic) => {
            if !covers(&client.session.identity().capabilities, topic) {
                return Err(OpError::new(
                    ErrorCode::Forbidden,
                    format!("no subscribe right on every channel {} matches", filter.text),
                ));
            }
            let topic = topic.clone();
            let deny = client.deny.clone();
            let matches = Arc::new(move |channel: &ChannelName| {
                topic.matches(channel.as_str()) && !deny.iter().any(|p| p.matches(channel))
            });
            add_pattern(state, client.session.conn(), filter.text.clone(), matches, filter.shared).await?;
        }
    }
    client.add_filter(filter);
    Ok(())
}
