//! The engine conformance suite: one async function per guarantee of [`Engine`], generic over
//! the engine, and [`engine_conformance_suite!`] to run all of them for an engine factory.
//!
//! Every case uses its own random app id, so cases can share one backend (one Redis) safely.
//! The cases are grouped by what they exercise: [`stream`] (publishing, offsets, history,
//! idempotency), [`presence`], and [`shared`] (control events, counters, sets, retained and
//! stored values, app subscriptions).

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

mod feed;
mod presence;
mod shared;
mod stream;

pub use feed::*;
pub use presence::*;
pub use shared::*;
pub use stream::*;

/// Stamps out one `#[tokio::test]` per conformance case for an engine factory: an async
/// function returning `Arc<dyn Engine>`, called once per case.
#[macro_export]
macro_rules! engine_conformance_suite {
    ($factory:path) => {
        $crate::engine_conformance_suite!(@cases $factory;
            offsets_increase_within_one_epoch,
            delivery_is_ordered_and_complete_under_concurrency,
            publishes_made_together_are_stored_in_the_order_they_were_made,
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
            an_app_feed_records_its_messages_and_presence_from_when_it_is_enabled,
            an_expired_presence_entry_records_its_leave_in_the_feed,
            a_connections_events_go_to_its_apps_feed_only_while_it_has_one,
            a_channels_occupancy_goes_to_its_apps_feed,
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
