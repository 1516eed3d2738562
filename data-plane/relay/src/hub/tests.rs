//! The hub's unit tests: delivery, recovery at the seam, patterns.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::task::noop_waker_ref;
use tributary_engine::{Audience, ChannelKey, EngineSink};
use tributary_protocol::{ChannelName, Payload, Publication};

use super::Hub;
use crate::conn::{ConnHandle, Outbound};

fn publication(offset: u64) -> Publication {
    Publication {
        epoch: Arc::from("E"),
        offset,
        ts_ms: 0,
        client_id: None,
        payload: Payload::Json(Bytes::from_static(b"1")),
        encoding: None,
        meta: None,
    }
}

/// A connection with room for 16 frames.
fn test_conn(id: &str) -> (ConnHandle, crate::conn::Outbox) {
    ConnHandle::new(id.into(), "app".into(), "client".into(), crate::policy::Credential::dummy(), 16, 1 << 20)
}

#[test]
fn a_publication_recovery_already_delivered_is_not_delivered_again_live() {
    let hub = Hub::new(16, Default::default());
    let key = ChannelKey::new("app", ChannelName::parse("chat:floor").unwrap());
    let (conn, mut outbox) = test_conn("c");
    hub.add(&key, &conn);
    // Recovery delivered up to 5 from history; offset 5's pub/sub message arrives late.
    hub.finish_recovery(&key, &conn, &Arc::from("E"), 5);
    hub.on_publication(&key, &publication(5), Audience::All);
    hub.on_publication(&key, &publication(6), Audience::All);
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut offsets = Vec::new();
    let drained = outbox.poll_drain(&mut cx, 10, |item| {
        if let Outbound::Message(m) = item {
            offsets.push(m.offset());
        }
    });
    assert_eq!(drained, Poll::Ready(1));
    assert_eq!(offsets, vec![6]);
}

fn publication_in(epoch: &str, offset: u64) -> Publication {
    Publication { epoch: Arc::from(epoch), ..publication(offset) }
}

fn drain(outbox: &mut crate::conn::Outbox) -> Vec<u64> {
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut offsets = Vec::new();
    let _ = outbox.poll_drain(&mut cx, 100, |item| {
        if let Outbound::Message(m) = item {
            offsets.push(m.offset());
        }
    });
    offsets
}

#[test]
fn a_gap_in_the_live_stream_is_never_delivered_and_its_subscribers_recover() {
    let hub = Hub::new(16, Default::default());
    let key = ChannelKey::new("app", ChannelName::parse("chat:gap").unwrap());
    let (conn, mut outbox) = test_conn("c");
    hub.add(&key, &conn);
    hub.finish_recovery(&key, &conn, &Arc::from("E"), 0);
    hub.on_publication(&key, &publication(1), Audience::All);
    hub.on_publication(&key, &publication(2), Audience::All);
    hub.on_publication(&key, &publication(2), Audience::All);
    assert!(!conn.is_closed());
    // 3 and 4 never came (lost on their way from the engine).
    hub.on_publication(&key, &publication(5), Audience::All);
    assert_eq!(drain(&mut outbox), vec![1, 2], "2's late copy and 5 are not delivered");
    assert!(conn.is_closed(), "told to reconnect and recover from 2");
}

#[test]
fn a_subscriber_never_moves_to_a_new_epoch_silently() {
    let hub = Hub::new(16, Default::default());
    let key = ChannelKey::new("app", ChannelName::parse("chat:epoch").unwrap());
    let (live, mut live_outbox) = test_conn("live");
    let (recovering, mut recovering_outbox) = test_conn("rec");
    hub.add(&key, &live);
    hub.finish_recovery(&key, &live, &Arc::from("E"), 7);
    hub.add(&key, &recovering);
    // Redis lost the channel and started epoch F while the second one read history of E.
    hub.on_publication(&key, &publication_in("F", 1), Audience::All);
    hub.finish_recovery(&key, &recovering, &Arc::from("E"), 7);
    assert_eq!(drain(&mut live_outbox), Vec::<u64>::new());
    assert_eq!(drain(&mut recovering_outbox), Vec::<u64>::new());
    assert!(live.is_closed() && recovering.is_closed(), "both recover and are told recovered: false");
}

fn prefix(prefix: &'static str) -> super::ChannelFilter {
    Arc::new(move |c: &ChannelName| c.as_str().starts_with(prefix))
}

#[test]
fn a_wildcard_subscriber_gets_each_publication_once_and_never_after_it_leaves() {
    let hub = Hub::new(16, Default::default());
    let key = |name: &str| ChannelKey::new("app", ChannelName::parse(name).unwrap());
    let (both, mut both_outbox) = test_conn("both");
    let (exact, mut exact_outbox) = test_conn("exact");
    // Two filters of one connection that take the same channel.
    hub.add_pattern(&both, "a/+".into(), prefix("a/"), false);
    hub.add_pattern(&both, "a/#".into(), prefix("a"), false);
    // A connection with a filter and a channel subscription of the same channel.
    hub.add_pattern(&exact, "a/+".into(), prefix("a/"), false);
    hub.add(&key("a/1"), &exact);
    hub.finish_recovery(&key("a/1"), &exact, &Arc::from("E"), 0);
    hub.on_publication(&key("a/1"), &publication(1), Audience::All);
    hub.on_publication(&key("b/1"), &publication(1), Audience::All);
    // Another app's channel of the same name is not theirs.
    hub.on_publication(
        &ChannelKey::new("other", ChannelName::parse("a/2").unwrap()),
        &publication(1),
        Audience::All,
    );
    assert_eq!(drain(&mut both_outbox), vec![1], "once, not once per filter");
    assert_eq!(drain(&mut exact_outbox), vec![1], "once, through the channel subscription");
    hub.remove_pattern(&both, None);
    hub.on_publication(&key("a/3"), &publication(1), Audience::All);
    assert_eq!(drain(&mut both_outbox), Vec::<u64>::new(), "gone with its filters");
    assert_eq!(drain(&mut exact_outbox), vec![1]);
    hub.remove_pattern(&exact, Some("a/+"));
    hub.on_publication(&key("a/4"), &publication(1), Audience::All);
    assert_eq!(drain(&mut exact_outbox), Vec::<u64>::new());
    assert!(!hub.any_patterns.load(std::sync::atomic::Ordering::Acquire), "none left");
}

#[test]
fn a_publication_reaches_only_the_audience_it_was_delivered_for() {
    let hub = Hub::new(16, Default::default());
    let key = ChannelKey::new("app", ChannelName::parse("a/1").unwrap());
    let (exact, mut exact_outbox) = test_conn("exact");
    let (wildcard, mut wildcard_outbox) = test_conn("wildcard");
    hub.add(&key, &exact);
    hub.finish_recovery(&key, &exact, &Arc::from("E"), 0);
    assert!(!hub.add_pattern(&wildcard, "a/+".into(), prefix("a/"), false));
    assert!(hub.add_pattern(&wildcard, "a/+".into(), prefix("a/"), false), "replaced");
    // An engine with app feeds delivers each publication twice, once per audience.
    hub.on_publication(&key, &publication(1), Audience::Channel);
    hub.on_publication(&key, &publication(1), Audience::Patterns);
    assert_eq!(drain(&mut exact_outbox), vec![1]);
    assert_eq!(drain(&mut wildcard_outbox), vec![1]);
    assert_eq!(hub.remove_pattern(&wildcard, None), 1, "one subscription, replaced once");
}

#[test]
fn the_members_of_a_shared_subscription_take_turns() {
    let hub = Hub::new(16, Default::default());
    let key = ChannelKey::new("app", ChannelName::parse("jobs/1").unwrap());
    let (a, mut a_outbox) = test_conn("a");
    let (b, mut b_outbox) = test_conn("b");
    let (c, mut c_outbox) = test_conn("c");
    for conn in [&a, &b] {
        hub.add_pattern(conn, "$share/workers/jobs/+".into(), prefix("jobs/"), true);
    }
    hub.add_pattern(&c, "jobs/+".into(), prefix("jobs/"), false);
    for offset in 1..=4 {
        hub.on_publication(&key, &publication(offset), Audience::All);
    }
    let (got_a, got_b) = (drain(&mut a_outbox), drain(&mut b_outbox));
    assert_eq!(got_a.len() + got_b.len(), 4, "each publication to one worker");
    assert_eq!(got_a.len(), 2, "in turns");
    assert_eq!(drain(&mut c_outbox), vec![1, 2, 3, 4], "a plain subscription gets them all");
    b.close(tributary_protocol::CloseCode::Shutdown);
    hub.on_publication(&key, &publication(5), Audience::All);
    assert_eq!(drain(&mut a_outbox), vec![5], "a closed member is passed over");
}

#[test]
fn a_parked_member_of_a_shared_subscription_gets_turns_only_when_no_member_is_online() {
    let hub = Hub::new(16, Default::default());
    let key = ChannelKey::new("app", ChannelName::parse("jobs/1").unwrap());
    let (a, mut a_outbox) = test_conn("a");
    let (b, mut b_outbox) = test_conn("b");
    for conn in [&a, &b] {
        hub.add_pattern(conn, "$share/workers/jobs/+".into(), prefix("jobs/"), true);
    }
    b.set_parked(true);
    for offset in 1..=4 {
        hub.on_publication(&key, &publication(offset), Audience::All);
    }
    assert_eq!((drain(&mut a_outbox), drain(&mut b_outbox)), (vec![1, 2, 3, 4], vec![]));
    a.set_parked(true);
    hub.on_publication(&key, &publication(5), Audience::All);
    assert_eq!(drain(&mut a_outbox).len() + drain(&mut b_outbox).len(), 1, "all away: one of them keeps it");
}

#[test]
fn a_subscriber_whose_history_covers_what_pub_sub_missed_is_not_closed() {
    // The node was unsubscribed in Redis while 9 and 10 were published (its previous
    // subscriber had just left); a late 8 and then 11 arrive while the new subscriber reads
    // history, which covers up to 10.
    let hub = Hub::new(16, Default::default());
    let key = ChannelKey::new("app", ChannelName::parse("chat:rejoin").unwrap());
    let (conn, mut outbox) = test_conn("c");
    hub.add(&key, &conn);
    hub.on_publication(&key, &publication(8), Audience::All);
    hub.on_publication(&key, &publication(11), Audience::All);
    hub.finish_recovery(&key, &conn, &Arc::from("E"), 10);
    hub.on_publication(&key, &publication(12), Audience::All);
    assert_eq!(drain(&mut outbox), vec![11, 12]);
    assert!(!conn.is_closed());
}
