//! The in-memory engine's app feeds. A position is `epoch:sequence`: the epoch is new each time
//! a feed is made, so a position saved before this process restarted (or before the feed was
//! disabled) is recognised as one from a lost feed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tributary_protocol::ChannelName;

use super::lock;
use super::stream::new_epoch;
use crate::feed::{FeedEntry, FeedPage, FeedRecord, FeedRetention};

/// One app's feed.
struct AppFeed {
    epoch: Arc<str>,
    /// The sequence number of the next entry (from 1).
    next: u64,
    /// The entries kept, with their sequence numbers, oldest first.
    entries: VecDeque<(u64, FeedEntry)>,
}

/// Every app's feed.
pub(super) struct Feeds {
    /// How many apps have a feed: while none does, a publish does not look further.
    count: AtomicUsize,
    apps: Mutex<HashMap<Arc<str>, AppFeed>>,
    retention: FeedRetention,
}

impl Feeds {
    pub(super) fn new(retention: FeedRetention) -> Self {
        Self { count: AtomicUsize::new(0), apps: Mutex::new(HashMap::new()), retention }
    }

    /// Whether any app has a feed.
    pub(super) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Starts `app`'s feed; returns whether it is new (it had none).
    pub(super) fn enable(&self, app: &str) -> bool {
        let mut apps = lock(&self.apps);
        let before = apps.len();
        apps.entry(Arc::from(app)).or_insert_with(|| AppFeed {
            epoch: new_epoch(),
            next: 1,
            entries: VecDeque::new(),
        });
        self.count.store(apps.len(), Ordering::Release);
        apps.len() > before
    }

    pub(super) fn disable(&self, app: &str) {
        let mut apps = lock(&self.apps);
        apps.remove(app);
        self.count.store(apps.len(), Ordering::Release);
    }

    /// Appends to `app`'s feed, if it has one. Called under the lock that orders the change
    /// (the channel's stream, or presence), so a channel's entries are in the change's order.
    pub(super) fn append(
        &self,
        app: &str,
        channel: Option<&ChannelName>,
        ts_ms: u64,
        record: FeedRecord,
    ) -> bool {
        if !self.any() {
            return false;
        }
        let mut apps = lock(&self.apps);
        let Some(feed) = apps.get_mut(app) else { return false };
        let sequence = feed.next;
        feed.next += 1;
        let position: Arc<str> = Arc::from(format!("{}:{sequence}", feed.epoch));
        feed.entries.push_back((sequence, FeedEntry { position, ts_ms, channel: channel.cloned(), record }));
        while feed.entries.len() > self.retention.max_len.max(1) {
            feed.entries.pop_front();
        }
        true
    }

    pub(super) fn read(&self, app: &str, after: &str, limit: usize) -> FeedPage {
        let apps = lock(&self.apps);
        let Some(feed) = apps.get(app) else {
            return FeedPage { entries: Vec::new(), gap: !after.is_empty() };
        };
        let oldest = feed.entries.front().map_or(feed.next, |(sequence, _)| *sequence);
        // After `after`: its sequence number if it is of this feed; otherwise it is of a feed
        // that was lost, and everything kept is new to the reader.
        let (from, gap) = match after.rsplit_once(':') {
            _ if after.is_empty() => (oldest, oldest > 1),
            Some((epoch, sequence)) if epoch == &*feed.epoch => match sequence.parse::<u64>() {
                Ok(sequence) => (sequence + 1, sequence + 1 < oldest),
                Err(_) => (oldest, true),
            },
            _ => (oldest, true),
        };
        let skip = usize::try_from(from.saturating_sub(oldest)).unwrap_or(usize::MAX);
        let entries = feed.entries.iter().skip(skip).take(limit).map(|(_, entry)| entry.clone()).collect();
        FeedPage { entries, gap }
    }
}

#[cfg(test)]
mod tests {
    use tributary_protocol::frame::MemberInfo;

    use super::*;

    fn join(client: &str) -> FeedRecord {
        FeedRecord::PresenceJoin(MemberInfo {
            client_id: Arc::from(client),
            conn_id: Arc::from("c"),
            state: None,
        })
    }

    #[test]
    fn a_reader_behind_what_was_trimmed_or_on_a_lost_feed_is_told_of_the_gap() {
        let feeds = Feeds::new(FeedRetention { max_len: 3 });
        let channel = ChannelName::parse("rooms:1").unwrap_or_else(|_| unreachable!());
        feeds.enable("app");
        feeds.append("app", Some(&channel), 1, join("a"));
        let first = feeds.read("app", "", 10);
        assert!(!first.gap);
        let saved = first.entries[0].position.to_string();
        for client in ["b", "c", "d", "e"] {
            feeds.append("app", Some(&channel), 2, join(client));
        }
        let behind = feeds.read("app", &saved, 10);
        assert!(behind.gap, "b was trimmed before it was read");
        assert_eq!(behind.entries.len(), 3);
        let caught_up = feeds.read("app", &behind.entries[0].position, 10);
        assert!(!caught_up.gap);
        assert_eq!(caught_up.entries.len(), 2);

        feeds.disable("app");
        feeds.enable("app");
        let lost = feeds.read("app", &saved, 10);
        assert!(lost.gap, "a position of a feed that was lost");
        assert!(lost.entries.is_empty());
        assert!(!feeds.read("app", "", 10).gap, "a new reader of a new feed missed nothing");
    }
}
