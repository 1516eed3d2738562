//! The end of a connection: the will published or handed on, the session parked for its
//! expiry or ended.

// The connection's parts share its imports and types: they were one file, split for size.
#[allow(clippy::wildcard_imports)]
use super::*;

/// Ends a connection: the goodbye, the session parked or closed, the will.
pub(super) async fn finish(state: &Arc<RelayState>, mut stream: impl MqttIo, live: Live, ending: Ending) {
    let Live { mut client, link, app, generation, will, mut out, .. } = live;
    let conn = client.session.conn().clone();
    let close_code = conn.close_code();
    let publish_will = !matches!(ending, Ending::Disconnected { will: false });
    let revoked =
        matches!(close_code, Some(CloseCode::Revoked | CloseCode::TenantSuspended | CloseCode::InvalidToken));
    let client_id = client.client_id().clone();
    let key = client.session_key.clone();
    let expiry = client.expiry_secs;
    // Shutting down, the session is copied for the node the client comes back to, and a
    // delayed will is handed to the other nodes rather than published at once: stored before
    // the goodbye, so a client that reconnects at once takes it away.
    let handed = state.shutdown.is_cancelled()
        && expiry > 0
        && !revoked
        && close_code != Some(CloseCode::SessionTakenOver)
        && state.engine.spans_nodes();
    let will = will.filter(|_| publish_will && !revoked);
    let handed_will = match &will {
        Some(will) if handed => {
            let delay = will.properties.will_delay.unwrap_or(0).min(expiry);
            let delay = Duration::from_secs(delay.into());
            (!delay.is_zero() && handoff::store_will(state, &app, &key, &client_id, will, delay).await)
                .then_some(delay)
        }
        _ => None,
    };
    if link.version == Version::V5 {
        let goodbye = match &ending {
            Ending::Closed => {
                Some((close_reason(close_code), close_code.map(|c| c.reason()).unwrap_or_default()))
            }
            Ending::Refused(code, reason) => Some((*code, *reason)),
            Ending::Gone | Ending::Disconnected { .. } => None,
        };
        if let Some((code, reason)) = goodbye {
            let mut properties = Properties::default();
            if link.problem_info {
                properties.reason_string = Some(reason.to_owned());
            }
            out.extend_from_slice(&encode(&Packet::Disconnect(Disconnect { code, properties }), Version::V5));
        }
    }
    if !out.is_empty() {
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, io::write_all(&mut stream, &out)).await;
    }
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, io::shutdown(&mut stream)).await;
    if matches!(ending, Ending::Refused(..)) {
        // A client that is still sending (the acknowledgements of what it was sent before the
        // DISCONNECT) would get a reset and could lose the DISCONNECT: read until it closes too.
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            let mut sink = BytesMut::new();
            while matches!(io::read_into(&mut stream, &mut sink).await, Ok(n) if n > 0) {
                sink.clear();
            }
        })
        .await;
    }
    drop(stream);
    // The count is read, then the session parked, without one lock: at the cap, a few
    // sessions going away at once may all be parked.
    let parked = expiry > 0
        && !revoked
        && !state.shutdown.is_cancelled()
        && state.mqtt_sessions.parked_in(&app) < state.config.mqtt.max_parked_sessions_per_app;
    let delay = will
        .as_ref()
        .map_or(0, |w| w.properties.will_delay.unwrap_or(0).min(if parked { expiry } else { 0 }));
    let will_cancel = (delay > 0).then(CancellationToken::new);
    // Taken over, the session lives on in the connection that took it (here or on another
    // node), which keeps its copy.
    if close_code != Some(CloseCode::SessionTakenOver) {
        if !revoked && (parked || state.shutdown.is_cancelled()) {
            // Where the client is exactly: a node it comes back to resumes from here.
            handoff::save(state, &app, &mut client, generation, false).await;
        } else {
            handoff::forget(state, &app, &client).await;
        }
    }
    if parked {
        conn.set_parked(true);
        client.session.leave_presence().await;
        // Offline, it counts against no connection limit; its queue keeps taking what comes,
        // up to its bound, for the client's return.
        crate::transport::unregister(state, &conn).await;
        let expiry_task = spawn_expiry(state, app.clone(), key.clone(), generation, expiry);
        let parked = state.mqtt_sessions.park(
            &app,
            &key,
            generation,
            client,
            will_cancel.clone(),
            expiry_task.clone(),
        );
        // A newer connection of the client id (which cancels a delayed will) or a revocation
        // came meanwhile: the session is not kept, and its will not published.
        if let Some(client) = parked {
            expiry_task.abort();
            if let Some(cancel) = &will_cancel {
                cancel.cancel();
            }
            end_session(state, client).await;
        }
    } else {
        state.mqtt_sessions.release(&app, &key, generation);
        end_session(state, client).await;
    }
    let Some(will) = will else { return };
    if let Some(delay) = handed_will {
        announce_or_publish(state, &app, &key, &client_id, *will, delay).await;
        return;
    }
    match will_cancel {
        None => publish_will_now(state, &app, &client_id, *will).await,
        Some(cancel) => {
            let state = state.clone();
            // Tracked: at a shutdown it hands the will over before the node stops.
            let tasks = state.tasks.clone();
            tasks.spawn(async move {
                let due = Instant::now() + Duration::from_secs(delay.into());
                tokio::select! {
                    () = sleep_until(due) => {}
                    () = state.shutdown.cancelled() => {
                        let left = due.saturating_duration_since(Instant::now());
                        if !left.is_zero() && handoff::store_will(&state, &app, &key, &client_id, &will, left).await {
                            announce_or_publish(&state, &app, &key, &client_id, *will, left).await;
                            return;
                        }
                    }
                    // MQTT-3.1.3-9: the client came back within the delay.
                    () = cancel.cancelled() => return,
                }
                publish_will_now(&state, &app, &client_id, *will).await;
            });
        }
    }
}

/// Announces a will stored for the other nodes; publishes it now if none of them heard.
pub(super) async fn announce_or_publish(
    state: &Arc<RelayState>,
    app: &Arc<str>,
    key: &str,
    client_id: &Arc<str>,
    will: LastWill,
    delay: Duration,
) {
    match handoff::announce_will(state, app, key, delay).await {
        handoff::Announced::Heard | handoff::Announced::TakenBack(None) => {}
        // Taken back, or unknown: rather twice than never.
        handoff::Announced::TakenBack(Some(_)) | handoff::Announced::Unknown => {
            publish_will_now(state, app, client_id, will).await;
        }
    }
}

/// Publishes a will another node handed over when it shut down, once its delay passed, unless
/// its client came back (see `handoff::store_will`). A node that shuts down first passes it on
/// with the time left (or, the last one, publishes it now).
pub(in crate::mqtt) async fn publish_handed_will(
    state: &Arc<RelayState>,
    app: &str,
    session_key: &str,
    delay: Duration,
) {
    let due = Instant::now() + delay;
    tokio::select! {
        () = sleep_until(due) => {}
        () = state.shutdown.cancelled() => {
            let left = due.saturating_duration_since(Instant::now());
            match handoff::announce_will(state, app, session_key, left).await {
                handoff::Announced::TakenBack(Some(taken)) => {
                    let (client_id, publish) = *taken;
                    publish_handed(state, app, &client_id, &publish).await;
                }
                handoff::Announced::Unknown => tracing::warn!("a handed-over will could not be passed on"),
                handoff::Announced::Heard | handoff::Announced::TakenBack(None) => {}
            }
            return;
        }
    }
    if let Ok(Some((client_id, publish))) = handoff::take_will(state, app, session_key).await {
        publish_handed(state, app, &client_id, &publish).await;
    }
}

pub(super) async fn publish_handed(
    state: &Arc<RelayState>,
    app: &str,
    client_id: &Arc<str>,
    publish: &Publish,
) {
    let Ok(channel) = channel_of(&publish.topic) else { return };
    let app: Arc<str> = Arc::from(app);
    if let Err(err) = crate::mqtt::publish::publish(state, &app, client_id, channel, publish).await {
        tracing::warn!(error = %err.message, "publishing a handed-over will failed");
    }
}

/// Closes a parked session when its expiry comes (or the relay shuts down); aborted when the
/// client comes back first.
pub(super) fn spawn_expiry(
    state: &Arc<RelayState>,
    app: Arc<str>,
    client: Arc<str>,
    generation: u64,
    expiry: u32,
) -> tokio::task::AbortHandle {
    let state = state.clone();
    let task = tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(expiry.into())) => {}
            () = state.shutdown.cancelled() => {}
        }
        if let Some(parked) = state.mqtt_sessions.expire(&app, &client, generation) {
            end_session(&state, parked).await;
        }
    });
    task.abort_handle()
}

pub(super) async fn publish_will_now(
    state: &Arc<RelayState>,
    app: &Arc<str>,
    client: &Arc<str>,
    will: LastWill,
) {
    let Ok(channel) = channel_of(&will.topic) else { return };
    let publish = Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic,
        packet_id: None,
        properties: will.properties,
        payload: will.payload,
    };
    if let Err(err) = crate::mqtt::publish::publish(state, app, client, channel, &publish).await {
        tracing::warn!(error = %err.message, "publishing a will failed");
    }
}
