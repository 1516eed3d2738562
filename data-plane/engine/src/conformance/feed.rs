//! Cases of an app's durable feed: what it records, in what order, from when, and reading it on
//! from a saved position.

#[allow(unused_imports)]
use super::*;
use crate::feed::{FeedEntry, FeedRecord};

/// `(kind, channel, detail)` of each entry: a message's offset, a member's client id.
fn described(entries: &[FeedEntry]) -> Vec<(&'static str, String, String)> {
    entries
        .iter()
        .map(|entry| {
            let detail = match &entry.record {
                FeedRecord::Message(publication) => publication.offset.to_string(),
                FeedRecord::PresenceJoin(m)
                | FeedRecord::PresenceLeave(m)
                | FeedRecord::PresenceUpdate(m) => m.client_id.to_string(),
                FeedRecord::ClientConnected(c) | FeedRecord::ClientDisconnected(c) => c.conn_id.to_string(),
                FeedRecord::ChannelOccupied | FeedRecord::ChannelVacated => String::new(),
            };
            let channel = entry.channel.as_ref().map(ToString::to_string).unwrap_or_default();
            (entry.record.kind(), channel, detail)
        })
        .collect()
}

/// Reads the whole feed from `after`, `page` entries at a time; returns the entries and the
/// last position.
async fn read_all(engine: &Arc<dyn Engine>, app: &str, after: &str, page: usize) -> (Vec<FeedEntry>, String) {
    let mut position = after.to_owned();
    let mut entries = Vec::new();
    loop {
        let read = engine.feed_read(app, &position, page).await.unwrap();
        assert!(!read.gap, "nothing was trimmed");
        let Some(last) = read.entries.last() else { return (entries, position) };
        position = last.position.to_string();
        entries.extend(read.entries);
    }
}

/// A feed records, from when it is enabled, every message of every channel of its app (in each
/// channel's order, nothing of other apps) and every presence join, update and leave (announced
/// or not); read in pages from saved positions it gives each entry once; disabled, it is gone.
pub async fn an_app_feed_records_its_messages_and_presence_from_when_it_is_enabled(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let orders = unique_key("orders:1");
    let app = orders.app.to_string();
    let chat = ChannelKey::new(orders.app.clone(), ChannelName::parse("chat:lobby").unwrap());
    let elsewhere = unique_key("orders:1");
    engine.publish(&orders, json(0), &opts(10)).await.unwrap();
    assert!(engine.feed_read(&app, "", 10).await.unwrap().entries.is_empty(), "no feed yet");

    engine.feed_enable(&app).await.unwrap();
    engine.feed_enable(&app).await.unwrap();
    engine.feed_enable(&elsewhere.app).await.unwrap();
    for n in 1..=3 {
        engine.publish(&orders, json(n), &opts(10)).await.unwrap();
        engine.publish(&elsewhere, json(n), &opts(10)).await.unwrap();
    }
    engine.publish(&chat, json(9), &opts(0)).await.unwrap();
    let quiet = PresenceOptions { ttl: Duration::from_secs(60), announce: false };
    engine.presence_join(&chat, member("alice", "c1"), quiet).await.unwrap();
    engine.presence_join(&chat, member("alice", "c2"), quiet).await.unwrap();
    let mut busy = member("alice", "c1");
    busy.state = Some(Arc::from(serde_json::value::RawValue::from_string("{\"busy\":true}".into()).unwrap()));
    engine.presence_update(&chat, busy).await.unwrap();
    engine.presence_leave(&chat, "c1").await.unwrap();
    engine.presence_leave(&chat, "c2").await.unwrap();

    let (entries, last) = read_all(&engine, &app, "", 2).await;
    let expected = [
        ("message", "orders:1", "2"),
        ("message", "orders:1", "3"),
        ("message", "orders:1", "4"),
        ("message", "chat:lobby", "1"),
        ("presence.join", "chat:lobby", "alice"),
        ("presence.update", "chat:lobby", "alice"),
        ("presence.leave", "chat:lobby", "alice"),
    ];
    assert_eq!(described(&entries), expected.map(|(k, c, d)| (k, c.to_owned(), d.to_owned())));
    let FeedRecord::Message(first) = &entries[0].record else { panic!("a message first") };
    assert_eq!(first.payload, Payload::Json(Bytes::from("{\"n\":1}")), "the message as published");
    let FeedRecord::PresenceUpdate(updated) = &entries[5].record else { panic!("an update") };
    assert_eq!(updated.state.as_ref().map(|s| s.get()), Some("{\"busy\":true}"));
    let positions: std::collections::HashSet<_> = entries.iter().map(|e| e.position.clone()).collect();
    assert_eq!(positions.len(), entries.len(), "every entry has its own position");

    // Read on from the saved position: only what came after.
    engine.publish(&orders, json(4), &opts(10)).await.unwrap();
    let (more, _) = read_all(&engine, &app, &last, 10).await;
    assert_eq!(described(&more), vec![("message", "orders:1".to_owned(), "5".to_owned())]);
    let (again, _) = read_all(&engine, &app, &entries[2].position, 100).await;
    assert_eq!(again.len(), 5, "a position can be read from again");

    engine.feed_disable(&app).await.unwrap();
    engine.publish(&orders, json(5), &opts(10)).await.unwrap();
    assert!(engine.feed_read(&app, "", 10).await.unwrap().entries.is_empty(), "a disabled feed is gone");
    let (other, _) = read_all(&engine, &elsewhere.app, "", 100).await;
    assert_eq!(other.len(), 3, "the other app's feed is its own");
}

/// A presence entry that expires records its leave in the feed, with no client to say so.
pub async fn an_expired_presence_entry_records_its_leave_in_the_feed(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("rooms:1");
    engine.feed_enable(&key.app).await.unwrap();
    engine.subscribe(&key).await.unwrap();
    let short = PresenceOptions { ttl: Duration::from_millis(200), announce: true };
    engine.presence_join(&key, member("ghost", "g1"), short).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let page = engine.feed_read(&key.app, "", 10).await.unwrap();
        let kinds: Vec<_> =
            page.entries.iter().map(|e| e.record.kind()).filter(|k| k.starts_with("presence")).collect();
        if kinds == ["presence.join", "presence.leave"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expiry's leave never reached the feed: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection's lifecycle events go to its app's feed when the app has one, after what came
/// before them and with no channel; without a feed nothing is written.
pub async fn a_connections_events_go_to_its_apps_feed_only_while_it_has_one(engine: Arc<dyn Engine>) {
    use crate::feed::ClientInfo;
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("rooms:1");
    let client = |conn: &str| ClientInfo { client_id: Some(Arc::from("alice")), conn_id: Arc::from(conn) };
    assert!(!engine.feed_client(&key.app, FeedRecord::ClientConnected(client("c0"))).await.unwrap());
    engine.feed_enable(&key.app).await.unwrap();
    engine.publish(&key, json(1), &opts(0)).await.unwrap();
    assert!(engine.feed_client(&key.app, FeedRecord::ClientConnected(client("c1"))).await.unwrap());
    assert!(engine.feed_client(&key.app, FeedRecord::ClientDisconnected(client("c1"))).await.unwrap());
    let (entries, _) = read_all(&engine, &key.app, "", 10).await;
    let expected =
        [("message", "rooms:1", "1"), ("client.connected", "", "c1"), ("client.disconnected", "", "c1")];
    assert_eq!(described(&entries), expected.map(|(k, c, d)| (k, c.to_owned(), d.to_owned())));
    let FeedRecord::ClientConnected(info) = &entries[1].record else { panic!("a connection's event") };
    assert_eq!(info, &client("c1"), "the connection as it was given");
}

/// Waits until the channel events of `app`'s feed are `expected` (kind and channel), and
/// checks that no others come with them.
async fn wait_for_occupancy(engine: &Arc<dyn Engine>, app: &str, expected: &[(&str, &str)]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (entries, _) = read_all(engine, app, "", 100).await;
        let seen: Vec<(&str, String)> = entries
            .iter()
            .filter(|e| e.record.kind().starts_with("channel."))
            .map(|e| (e.record.kind(), e.channel.as_ref().map(ToString::to_string).unwrap_or_default()))
            .collect();
        let want: Vec<(&str, String)> = expected.iter().map(|(k, c)| (*k, (*c).to_owned())).collect();
        if seen == want {
            return;
        }
        assert!(
            seen.len() <= want.len() && seen[..] == want[..seen.len()],
            "unexpected channel events: {seen:?}, expected {want:?}"
        );
        assert!(tokio::time::Instant::now() < deadline, "channel events {seen:?} never became {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A channel is written as occupied when its first subscription is made and as vacated when
/// its last one ends — once each, however many subscriptions it had — and a channel already
/// occupied when its app's feed starts is written as occupied then.
pub async fn a_channels_occupancy_goes_to_its_apps_feed(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let early = unique_key("rooms:early");
    let app = early.app.to_string();
    let busy = ChannelKey::new(early.app.clone(), ChannelName::parse("rooms:busy").unwrap());
    engine.subscribe(&early).await.unwrap();
    engine.feed_enable(&app).await.unwrap();
    wait_for_occupancy(&engine, &app, &[("channel.occupied", "rooms:early")]).await;

    engine.subscribe(&busy).await.unwrap();
    engine.subscribe(&busy).await.unwrap();
    wait_for_occupancy(
        &engine,
        &app,
        &[("channel.occupied", "rooms:early"), ("channel.occupied", "rooms:busy")],
    )
    .await;
    engine.unsubscribe(&busy).await.unwrap();
    engine.unsubscribe(&early).await.unwrap();
    let vacated_early = [
        ("channel.occupied", "rooms:early"),
        ("channel.occupied", "rooms:busy"),
        ("channel.vacated", "rooms:early"),
    ];
    wait_for_occupancy(&engine, &app, &vacated_early).await;
    engine.unsubscribe(&busy).await.unwrap();
    let mut all = vacated_early.to_vec();
    all.push(("channel.vacated", "rooms:busy"));
    wait_for_occupancy(&engine, &app, &all).await;
}
