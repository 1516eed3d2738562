//! The engine conformance suite: one async function per guarantee of [`Engine`], generic over
//! the engine, and [`engine_conformance_suite!`] to run all of them for an engine factory.
//!
//! Every case uses its own random app id, so cases can share one backend (one Redis) safely.

// This module is test code compiled into the library so other crates can run it; a failed
// step must panic the test.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tributary_protocol::frame::{Direction, MemberInfo, PresenceEvent};
use tributary_protocol::{ChannelName, Payload, Publication};

use crate::contract::{
    Audience, ChannelKey, Engine, EngineSink, HistoryQuery, NewMessage, PresenceOptions, PublishOptions,
    StreamOptions,
};

/// What a [`RecordingSink`] saw.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// A publication and whom it was for.
    Publication(ChannelKey, Publication, Audience),
    /// A presence event: kind (`join`, `leave`, `presence`) and client id.
    Presence(ChannelKey, &'static str, String),
    /// A control event.
    Control(Bytes),
}

/// A sink that records everything, for assertions.
#[derive(Default)]
pub struct RecordingSink {
    seen: Mutex<Vec<Recorded>>,
}

impl RecordingSink {
    /// Creates a sink and attaches it to `engine`. Keep the returned `Arc` alive.
    pub fn attach(engine: &Arc<dyn Engine>) -> Arc<Self> {
        let sink = Arc::new(Self::default());
        let weak: Weak<dyn EngineSink> = Arc::downgrade(&(sink.clone() as Arc<dyn EngineSink>));
        engine.set_sink(weak);
        sink
    }

    /// Returns a copy of what was recorded.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Returns the offsets of publications recorded for `key`'s own subscribers, in arrival
    /// order.
    pub fn offsets(&self, key: &ChannelKey) -> Vec<u64> {
        self.offsets_for(key, Audience::channel)
    }

    /// Returns the offsets of publications recorded for the wildcard subscribers of `key`'s
    /// app, in arrival order.
    pub fn pattern_offsets(&self, key: &ChannelKey) -> Vec<u64> {
        self.offsets_for(key, Audience::patterns)
    }

    fn offsets_for(&self, key: &ChannelKey, takes: fn(Audience) -> bool) -> Vec<u64> {
        self.seen()
            .into_iter()
            .filter_map(|r| match r {
                Recorded::Publication(k, p, audience) if &k == key && takes(audience) => Some(p.offset),
                _ => None,
            })
            .collect()
    }

    /// Returns the presence events recorded for `key` as `(kind, client_id)`.
    pub fn presence_events(&self, key: &ChannelKey) -> Vec<(&'static str, String)> {
        self.seen()
            .into_iter()
            .filter_map(|r| match r {
                Recorded::Presence(k, kind, client) if &k == key => Some((kind, client)),
                _ => None,
            })
            .collect()
    }

    fn push(&self, recorded: Recorded) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(recorded);
        }
    }
}

impl EngineSink for RecordingSink {
    fn on_publication(&self, key: &ChannelKey, publication: &Publication, audience: Audience) {
        self.push(Recorded::Publication(key.clone(), publication.clone(), audience));
    }
    fn on_presence(&self, key: &ChannelKey, event: &PresenceEvent) {
        self.push(Recorded::Presence(key.clone(), event.kind(), event.member().client_id.to_string()));
    }
    fn on_control(&self, event: &Bytes) {
        self.push(Recorded::Control(event.clone()));
    }
}

/// Waits until `check` holds, polling, for at most five seconds; panics with `what` otherwise.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn unique_key(channel: &str) -> ChannelKey {
    let app = format!("app_{}", crate::memory::stream_epoch_for_tests());
    ChannelKey::new(app, ChannelName::parse(channel).expect("test channel names are valid"))
}

fn json(n: u64) -> NewMessage {
    NewMessage {
        payload: Payload::Json(Bytes::from(format!("{{\"n\":{n}}}"))),
        client_id: None,
        encoding: None,
        meta: None,
    }
}

fn opts(size: usize) -> PublishOptions {
    PublishOptions {
        stream: stream(size),
        idempotency_key: None,
        idempotency_window: Duration::from_secs(120),
    }
}

fn stream(size: usize) -> StreamOptions {
    StreamOptions { history_size: size, history_ttl: Duration::from_secs(300) }
}

fn forward(since: Option<u64>, limit: usize) -> HistoryQuery {
    HistoryQuery { since, direction: Direction::Forward, limit }
}

fn member(client: &str, conn: &str) -> MemberInfo {
    MemberInfo { client_id: Arc::from(client), conn_id: Arc::from(conn), state: None }
}

/// Offsets start at 1 and increase by one per publish; the epoch stays the same.
pub async fn offsets_increase_within_one_epoch(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:offsets");
    let mut epoch = None;
    for n in 1..=5 {
        let out = engine.publish(&key, json(n), &opts(10)).await.unwrap();
        assert_eq!(out.offset, n);
        assert!(!out.duplicate);
        let e = epoch.get_or_insert_with(|| out.epoch.clone());
        assert_eq!(*e, out.epoch);
    }
}

/// Concurrent publishers on one channel: the sink sees every offset once, in order.
pub async fn delivery_is_ordered_and_complete_under_concurrency(engine: Arc<dyn Engine>) {
    let sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:concurrent");
    engine.subscribe(&key).await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let engine = engine.clone();
            let key = key.clone();
            tokio::spawn(async move {
                for n in 0..50 {
                    engine.publish(&key, json(t * 100 + n), &opts(1000)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    eventually("200 publications delivered", || sink.offsets(&key).len() >= 200).await;
    assert_eq!(sink.offsets(&key), (1..=200).collect::<Vec<_>>());
}

/// History reads forwards and backwards from an offset, with a limit.
pub async fn history_reads_both_ways_with_limits(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:history");
    for n in 1..=10 {
        engine.publish(&key, json(n), &opts(100)).await.unwrap();
    }
    let offsets = |page: crate::HistoryPage| page.publications.iter().map(|p| p.offset).collect::<Vec<_>>();
    let page = engine.history(&key, forward(Some(3), 4), stream(100)).await.unwrap();
    assert_eq!(page.top_offset, 10);
    assert_eq!(offsets(page), vec![4, 5, 6, 7]);
    let all = engine.history(&key, forward(None, 100), stream(100)).await.unwrap();
    assert_eq!(offsets(all), (1..=10).collect::<Vec<_>>());
    let back = HistoryQuery { since: Some(8), direction: Direction::Backward, limit: 3 };
    assert_eq!(offsets(engine.history(&key, back, stream(100)).await.unwrap()), vec![7, 6, 5]);
    let newest = HistoryQuery { since: None, direction: Direction::Backward, limit: 2 };
    assert_eq!(offsets(engine.history(&key, newest, stream(100)).await.unwrap()), vec![10, 9]);
}

/// History keeps only the newest `history_size` messages; offsets keep counting.
pub async fn history_is_trimmed_to_its_size(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:trim");
    for n in 1..=5 {
        engine.publish(&key, json(n), &opts(3)).await.unwrap();
    }
    let page = engine.history(&key, forward(None, 100), stream(3)).await.unwrap();
    assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(page.oldest_offset, Some(3));
    assert!(page.covers(&page.epoch, 2), "offset 2 is followed by 3, still in history");
    assert!(!page.covers(&page.epoch, 1), "offset 2 was trimmed");
    assert!(!page.covers("another-epoch", 4));
}

/// Messages older than the TTL leave history.
pub async fn history_expires_after_its_ttl(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:ttl");
    let short = StreamOptions { history_size: 10, history_ttl: Duration::from_millis(300) };
    let options = PublishOptions { stream: short, ..opts(10) };
    engine.publish(&key, json(1), &options).await.unwrap();
    let page = engine.history(&key, forward(None, 10), short).await.unwrap();
    assert_eq!(page.publications.len(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let page = engine.history(&key, forward(None, 10), short).await.unwrap();
        if page.publications.is_empty() {
            assert_eq!(page.top_offset, 1, "expiry does not rewind offsets");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "message never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A retried publish with the same idempotency key is stored and delivered once.
pub async fn idempotent_retry_is_stored_once(engine: Arc<dyn Engine>) {
    let sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:idem");
    engine.subscribe(&key).await.unwrap();
    let mut options = opts(10);
    options.idempotency_key = Some("order-42".into());
    let first = engine.publish(&key, json(1), &options).await.unwrap();
    let retry = engine.publish(&key, json(1), &options).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.offset, retry.ts_ms), (first.offset, first.ts_ms));
    assert_eq!(retry.epoch, first.epoch);
    let other = engine.publish(&unique_key("chat:idem-other"), json(1), &options).await.unwrap();
    assert!(!other.duplicate, "keys are scoped per channel");
    engine.publish(&key, json(2), &opts(10)).await.unwrap();
    eventually("second message delivered", || sink.offsets(&key).len() >= 2).await;
    assert_eq!(sink.offsets(&key), vec![1, 2]);
    let page = engine.history(&key, forward(None, 10), stream(10)).await.unwrap();
    assert_eq!(page.publications.len(), 2);
}

/// An idempotency key is remembered for its window and no longer: a retry within it is a
/// duplicate, a publish with the same key after it is stored again. (Redis keeps each key to the
/// second: the window is at least one.)
pub async fn idempotency_keys_expire_after_their_window(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:idem-window");
    let mut options = opts(10);
    options.idempotency_key = Some("order-7".into());
    options.idempotency_window = Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    let first = engine.publish(&key, json(1), &options).await.unwrap();
    assert!(!first.duplicate);
    let deadline = started + Duration::from_secs(5);
    let stored_again = loop {
        let retry = engine.publish(&key, json(1), &options).await.unwrap();
        if !retry.duplicate {
            break retry;
        }
        assert_eq!(retry.offset, first.offset, "a duplicate answers the original position");
        assert!(tokio::time::Instant::now() < deadline, "the key was never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "forgotten before its window: {:?}",
        started.elapsed()
    );
    assert_eq!(stored_again.offset, first.offset + 1, "stored again, as a new message");
}

/// The same channel name in two apps is two independent channels.
pub async fn apps_do_not_share_channels(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let a = unique_key("chat:shared-name");
    let b = unique_key("chat:shared-name");
    engine.publish(&a, json(1), &opts(10)).await.unwrap();
    engine.publish(&a, json(2), &opts(10)).await.unwrap();
    let out = engine.publish(&b, json(1), &opts(10)).await.unwrap();
    assert_eq!(out.offset, 1);
    let page = engine.history(&b, forward(None, 10), stream(10)).await.unwrap();
    assert_eq!(page.publications.len(), 1);
}

/// Reading a channel that has no stream yet fixes its epoch for the next publish.
pub async fn history_of_a_new_channel_fixes_the_epoch(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:fresh");
    let page = engine.history(&key, forward(None, 10), stream(10)).await.unwrap();
    assert_eq!(page.top_offset, 0);
    assert!(page.covers(&page.epoch, 0));
    let out = engine.publish(&key, json(1), &opts(10)).await.unwrap();
    assert_eq!(out.epoch, page.epoch);
}

/// Without history, offsets still advance and history stays empty.
pub async fn no_history_still_advances_offsets(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:nohistory");
    engine.publish(&key, json(1), &opts(0)).await.unwrap();
    let out = engine.publish(&key, json(2), &opts(0)).await.unwrap();
    assert_eq!(out.offset, 2);
    let page = engine.history(&key, forward(None, 10), stream(0)).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.top_offset, 2);
    assert!(!page.covers(&page.epoch, 1));
}

/// Two connections of one client are one member: one join, one leave.
pub async fn presence_counts_a_client_once(engine: Arc<dyn Engine>) {
    let sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:presence");
    engine.subscribe(&key).await.unwrap();
    let announce = PresenceOptions { ttl: Duration::from_secs(60), announce: true };
    assert!(engine.presence_join(&key, member("alice", "c1"), announce).await.unwrap());
    assert!(!engine.presence_join(&key, member("alice", "c2"), announce).await.unwrap());
    assert!(engine.presence_join(&key, member("bob", "c3"), announce).await.unwrap());
    let occupancy = engine.occupancy(&key).await.unwrap();
    assert_eq!((occupancy.members, occupancy.connections), (2, 3));
    assert_eq!(engine.presence(&key).await.unwrap().len(), 3);
    assert!(!engine.presence_leave(&key, "c1").await.unwrap());
    assert!(engine.presence_leave(&key, "c2").await.unwrap());
    assert!(!engine.presence_leave(&key, "c2").await.unwrap(), "leaving twice is harmless");
    eventually("join, join, leave", || sink.presence_events(&key).len() >= 3).await;
    assert_eq!(
        sink.presence_events(&key),
        vec![("join", "alice".into()), ("join", "bob".into()), ("leave", "alice".into())]
    );
}

/// An entry that is not refreshed expires and its leave is announced.
pub async fn presence_expires_without_heartbeat(engine: Arc<dyn Engine>) {
    let sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:expire");
    engine.subscribe(&key).await.unwrap();
    let short = PresenceOptions { ttl: Duration::from_millis(200), announce: true };
    engine.presence_join(&key, member("ghost", "g1"), short).await.unwrap();
    eventually("ghost leaves", || sink.presence_events(&key).contains(&("leave", "ghost".into()))).await;
    assert_eq!(engine.occupancy(&key).await.unwrap().connections, 0);
}

/// An entry heartbeated for a while and then abandoned leaves after its last heartbeat's
/// timeout, not its first one's, and its leave is announced without anything else touching the
/// channel.
pub async fn presence_expires_after_the_last_heartbeat(engine: Arc<dyn Engine>) {
    let sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:abandoned");
    engine.subscribe(&key).await.unwrap();
    // Heartbeats at a seventh of the timeout: a loaded machine cannot stretch one past it.
    let short = PresenceOptions { ttl: Duration::from_millis(1_000), announce: true };
    for _ in 0..8 {
        engine.presence_join(&key, member("walker", "w1"), short).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(sink.presence_events(&key).iter().all(|(kind, _)| *kind == "join"), "no leave while heartbeated");
    eventually("walker leaves", || sink.presence_events(&key).contains(&("leave", "walker".into()))).await;
    assert_eq!(engine.occupancy(&key).await.unwrap().connections, 0);
}

/// A refreshed entry does not expire.
pub async fn presence_heartbeat_keeps_a_member(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:heartbeat");
    let short = PresenceOptions { ttl: Duration::from_millis(1_000), announce: true };
    for _ in 0..12 {
        engine.presence_join(&key, member("alive", "a1"), short).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(engine.occupancy(&key).await.unwrap().members, 1);
}

/// Presence updates replace the state and are announced; unknown connections are refused.
pub async fn presence_update_replaces_state(engine: Arc<dyn Engine>) {
    let sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:update");
    engine.subscribe(&key).await.unwrap();
    let quiet = PresenceOptions { ttl: Duration::from_secs(60), announce: false };
    engine.presence_join(&key, member("dev", "d1"), quiet).await.unwrap();
    let state = serde_json::value::RawValue::from_string(r#"{"temp":21.5}"#.into()).unwrap();
    let updated = MemberInfo { state: Some(Arc::from(state)), ..member("dev", "d1") };
    assert!(engine.presence_update(&key, updated).await.unwrap());
    assert!(!engine.presence_update(&key, member("dev", "nope")).await.unwrap());
    let members = engine.presence(&key).await.unwrap();
    assert_eq!(members[0].state.as_ref().map(|s| s.get()), Some(r#"{"temp":21.5}"#));
    eventually("update announced", || !sink.presence_events(&key).is_empty()).await;
    assert_eq!(sink.presence_events(&key), vec![("presence", "dev".into())], "no join when not announcing");
}

/// Reads before the first offset or after the last are empty pages, not errors.
pub async fn history_edges_are_empty_pages(engine: Arc<dyn Engine>) {
    let key = unique_key("chat:edges");
    engine.publish(&key, json(1), &opts(10)).await.unwrap();
    let backward = HistoryQuery { since: Some(0), direction: Direction::Backward, limit: 10 };
    let page = engine.history(&key, backward, stream(10)).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.top_offset, 1);
    let page = engine.history(&key, forward(Some(u64::MAX), 10), stream(10)).await.unwrap();
    assert!(page.publications.is_empty());
}

/// A heartbeat (a join without state) keeps the state a member set; a join with state replaces it.
pub async fn presence_heartbeat_keeps_the_state(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:state");
    let options = PresenceOptions { ttl: Duration::from_secs(60), announce: true };
    let state = |json: &str| Some(Arc::from(serde_json::value::RawValue::from_string(json.into()).unwrap()));
    engine
        .presence_join(&key, MemberInfo { state: state("1"), ..member("dev", "d1") }, options)
        .await
        .unwrap();
    engine.presence_join(&key, member("dev", "d1"), options).await.unwrap();
    let members = engine.presence(&key).await.unwrap();
    assert_eq!(members[0].state.as_ref().map(|s| s.get()), Some("1"), "a heartbeat keeps the state");
    engine
        .presence_join(&key, MemberInfo { state: state("2"), ..member("dev", "d1") }, options)
        .await
        .unwrap();
    let members = engine.presence(&key).await.unwrap();
    assert_eq!(members[0].state.as_ref().map(|s| s.get()), Some("2"));
    assert_eq!(engine.occupancy(&key).await.unwrap().connections, 1);
}

/// Control events reach the sink.
pub async fn control_events_are_delivered(engine: Arc<dyn Engine>) {
    let sink = RecordingSink::attach(&engine);
    // Other cases' engines may share the backend: at least this one heard it.
    assert!(
        engine.publish_control(Bytes::from_static(b"revoke:x")).await.unwrap() >= 1,
        "the sender is a node"
    );
    eventually("control delivered", || {
        sink.seen().iter().any(|r| matches!(r, Recorded::Control(b) if b == "revoke:x"))
    })
    .await;
}

/// Counters add up, start at 0, are shared by name and forget their value after their TTL.
pub async fn counters_add_up_and_expire(engine: Arc<dyn Engine>) {
    let name = format!("test:{}", crate::memory::stream_epoch_for_tests());
    let ttl = Duration::from_millis(1_000);
    assert_eq!(engine.counter_add(&name, 5, ttl).await.unwrap(), 5);
    assert_eq!(engine.counter_add(&name, 2, ttl).await.unwrap(), 7);
    assert_eq!(engine.counter_add(&name, 0, ttl).await.unwrap(), 7, "adding 0 reads it");
    assert_eq!(engine.counter_add(&format!("{name}:other"), 1, ttl).await.unwrap(), 1);
    // Past the TTL (and the memory engine's sweep, every 500 ms).
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(engine.counter_add(&name, 1, ttl).await.unwrap(), 1, "expired, it starts again");
}

/// An active set counts each member once, whoever marked it, and forgets members not marked
/// within its window.
pub async fn active_sets_count_members_once_and_forget_quiet_ones(engine: Arc<dyn Engine>) {
    let name = format!("set:{}", crate::memory::stream_epoch_for_tests());
    // Steps of 600 ms in a window of 1 s: a and b (marked at 0) are out at 1.2 s while c (marked
    // at 0.6 s) is in, with 400 ms to spare either way.
    let window = Duration::from_millis(1_000);
    let marks = |list: &[&str]| list.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>();
    assert_eq!(engine.active_set(&name, &marks(&["a", "b"]), window).await.unwrap(), 2);
    assert_eq!(engine.active_set(&name, &marks(&["b", "c"]), window).await.unwrap(), 3, "b once");
    assert_eq!(engine.active_set(&name, &[], window).await.unwrap(), 3, "an empty mark reads it");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(engine.active_set(&name, &marks(&["c"]), window).await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(engine.active_set(&name, &[], window).await.unwrap(), 1, "a and b went quiet");
}

/// Retained messages are kept per channel until replaced or cleared, with their meta, never
/// cross apps, and of two changes the one of the newer message stays whatever the order.
pub async fn retained_messages_are_kept_per_channel_and_app(engine: Arc<dyn Engine>) {
    let a = unique_key("devices/1/firmware");
    let b = ChannelKey::new(a.app.clone(), ChannelName::parse("devices/2/firmware").unwrap());
    let other_app = unique_key("devices/1/firmware");
    assert_eq!(engine.retained(&a).await.unwrap(), None);
    let mut message = json(1);
    message.meta = Some(Bytes::from_static(b"\x05meta"));
    let first = engine.publish(&a, message.clone(), &opts(10)).await.unwrap();
    let stored = engine.history(&a, forward(Some(0), 10), stream(10)).await.unwrap().publications;
    assert_eq!(stored.len(), 1);
    let epoch = stored[0].epoch.clone();
    assert!(engine.set_retained(&a, &epoch, first.offset, Some(stored[0].clone())).await.unwrap());
    let retained = engine.retained(&a).await.unwrap().unwrap();
    assert_eq!((retained.offset, retained.meta.clone()), (first.offset, message.meta.clone()));
    assert_eq!(retained.payload, message.payload);
    let ninth = Publication { offset: 9, ..stored[0].clone() };
    assert!(engine.set_retained(&b, &epoch, 9, Some(ninth.clone())).await.unwrap());
    let all = engine.retained_in(&a.app, 100).await.unwrap();
    let names: Vec<&str> = all.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(names, ["devices/1/firmware", "devices/2/firmware"]);
    assert_eq!(engine.retained_in(&a.app, 1).await.unwrap().len(), 1, "the limit holds");
    assert_eq!(engine.retained(&other_app).await.unwrap(), None, "apps do not share retained messages");
    assert!(engine.retained_in(&other_app.app, 100).await.unwrap().is_empty());
    // Concurrent publishers: an older change arriving late is ignored, set or clear.
    let eighth = Publication { offset: 8, ..stored[0].clone() };
    assert!(!engine.set_retained(&b, &epoch, 8, Some(eighth)).await.unwrap());
    assert!(!engine.set_retained(&b, &epoch, 8, None).await.unwrap());
    assert_eq!(engine.retained(&b).await.unwrap().map(|p| p.offset), Some(9), "the newest stays");
    assert!(engine.set_retained(&b, &epoch, 10, None).await.unwrap());
    assert!(!engine.set_retained(&b, &epoch, 9, Some(ninth)).await.unwrap(), "a clear is remembered");
    assert_eq!(engine.retained(&b).await.unwrap(), None);
    // A new stream (another epoch) starts over.
    let reset = Publication { offset: 1, epoch: "another-epoch".into(), ..stored[0].clone() };
    assert!(engine.set_retained(&b, "another-epoch", 1, Some(reset)).await.unwrap());
    assert_eq!(engine.retained(&b).await.unwrap().map(|p| p.offset), Some(1));
    assert!(engine.set_retained(&a, &epoch, first.offset + 1, None).await.unwrap());
    assert_eq!(engine.retained(&a).await.unwrap(), None);
    let left: Vec<String> =
        engine.retained_in(&a.app, 100).await.unwrap().iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(left, ["devices/2/firmware"], "cleared channels are not listed");
    // Clearing what is not there is fine.
    assert!(engine.set_retained(&other_app, &epoch, 1, None).await.unwrap());
}

/// After an app subscription, every channel of the app reaches the sink for wildcard
/// subscribers, once per publication and in order, also the channels the node subscribed to by
/// name (whose own subscribers get each publication once too); other apps' channels do not.
pub async fn an_app_subscription_delivers_every_channel_of_the_app_once(engine: Arc<dyn Engine>) {
    let sink = RecordingSink::attach(&engine);
    let named = unique_key("sensors/1");
    let unnamed = ChannelKey::new(named.app.clone(), ChannelName::parse("sensors/2").unwrap());
    let other_app = unique_key("sensors/1");
    engine.subscribe(&named).await.unwrap();
    engine.subscribe_app(&named.app).await.unwrap();
    // Twice, released once below: the count keeps it.
    engine.subscribe_app(&named.app).await.unwrap();
    let publishers: Vec<_> = [named.clone(), unnamed.clone()]
        .into_iter()
        .map(|key| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for n in 1..=40 {
                    engine.publish(&key, json(n), &opts(100)).await.unwrap();
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    engine.publish(&other_app, json(1), &opts(100)).await.unwrap();
    eventually("both channels delivered for patterns", || {
        sink.pattern_offsets(&named).len() >= 40 && sink.pattern_offsets(&unnamed).len() >= 40
    })
    .await;
    eventually("the named channel delivered", || sink.offsets(&named).len() >= 40).await;
    engine.unsubscribe_app(&named.app).await.unwrap();
    engine.publish(&unnamed, json(41), &opts(100)).await.unwrap();
    engine.publish(&named, json(41), &opts(100)).await.unwrap();
    // Each stream delivers in order: once the 41st has come on each, an extra copy of an earlier
    // one would have come before it.
    eventually("still subscribed once, and the 41st on every stream", || {
        sink.pattern_offsets(&unnamed).contains(&41)
            && sink.pattern_offsets(&named).contains(&41)
            && sink.offsets(&named).contains(&41)
    })
    .await;
    let all: Vec<u64> = (1..=41).collect();
    assert_eq!(sink.pattern_offsets(&named), all, "once each, in order");
    assert_eq!(sink.offsets(&named), all, "the channel's own subscribers get each once too");
    assert_eq!(sink.pattern_offsets(&unnamed), (1..=41).collect::<Vec<_>>());
    let other_for_patterns = sink.pattern_offsets(&other_app);
    let other_for_channel = sink.offsets(&other_app);
    // An engine whose sink sees everything (one node) delivers it to all; one that delivers
    // by subscription must not deliver it at all.
    assert!(
        other_for_patterns.is_empty() || other_for_patterns == other_for_channel,
        "another app's channel is not part of the app feed"
    );
    engine.unsubscribe_app(&named.app).await.unwrap();
    engine.unsubscribe(&named).await.unwrap();
}

/// What is put is taken once; a put of an older version than the one stored (or last taken)
/// is refused; everything is gone after its TTL.
pub async fn stored_values_are_taken_once_newest_first_and_expire(engine: Arc<dyn Engine>) {
    let name = format!("kv:{}", crate::memory::stream_epoch_for_tests());
    let minute = Duration::from_secs(60);
    assert_eq!(engine.take(&name).await.unwrap(), (0, None));
    assert!(engine.put(&name, 1, Bytes::from_static(b"first"), minute).await.unwrap());
    assert!(engine.put(&name, 3, Bytes::from_static(b"\0third"), minute).await.unwrap());
    assert!(!engine.put(&name, 2, Bytes::from_static(b"late"), minute).await.unwrap(), "older");
    assert!(!engine.put(&name, 3, Bytes::from_static(b"same"), minute).await.unwrap(), "not newer");
    let (version, value) = engine.take(&name).await.unwrap();
    assert_eq!((version, value.as_deref()), (3, Some(&b"\0third"[..])), "the newest put");
    assert_eq!(engine.take(&name).await.unwrap(), (3, None), "taken once, its version kept");
    assert!(!engine.put(&name, 3, Bytes::from_static(b"stale"), minute).await.unwrap(), "as old as taken");
    assert!(engine.put(&name, 4, Bytes::from_static(b"fourth"), minute).await.unwrap());
    assert_eq!(engine.take(&name).await.unwrap().0, 4);
    let short = format!("{name}:short");
    assert!(engine.put(&short, 1, Bytes::from_static(b"short"), Duration::from_millis(100)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(engine.take(&short).await.unwrap(), (0, None), "expired");
    assert!(engine.put(&short, 1, Bytes::from_static(b"again"), minute).await.unwrap(), "forgotten");
}

/// Stamps out one `#[tokio::test]` per conformance case for an engine factory: an async
/// function returning `Arc<dyn Engine>`, called once per case.
#[macro_export]
macro_rules! engine_conformance_suite {
    ($factory:path) => {
        $crate::engine_conformance_suite!(@cases $factory;
            offsets_increase_within_one_epoch,
            delivery_is_ordered_and_complete_under_concurrency,
            history_reads_both_ways_with_limits,
            history_is_trimmed_to_its_size,
            history_expires_after_its_ttl,
            idempotent_retry_is_stored_once,
            idempotency_keys_expire_after_their_window,
            apps_do_not_share_channels,
            history_of_a_new_channel_fixes_the_epoch,
            no_history_still_advances_offsets,
            presence_counts_a_client_once,
            presence_expires_without_heartbeat,
            presence_expires_after_the_last_heartbeat,
            presence_heartbeat_keeps_a_member,
            presence_update_replaces_state,
            history_edges_are_empty_pages,
            presence_heartbeat_keeps_the_state,
            control_events_are_delivered,
            counters_add_up_and_expire,
            active_sets_count_members_once_and_forget_quiet_ones,
            retained_messages_are_kept_per_channel_and_app,
            an_app_subscription_delivers_every_channel_of_the_app_once,
            stored_values_are_taken_once_newest_first_and_expire,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$case($factory().await).await;
            }
        )*
    };
}
