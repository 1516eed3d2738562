//! Cases of what nodes share besides channels: control events, counters, active sets,
//! retained and stored values, and app subscriptions.

#[allow(unused_imports)]
use super::*;

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
