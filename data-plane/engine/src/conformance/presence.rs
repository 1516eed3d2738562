//! Cases of presence: members, heartbeats, expiry and state.

#[allow(unused_imports)]
use super::*;

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
