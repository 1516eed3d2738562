//! The seam between a subscriber's history and its live stream: buffering live items while
//! history is read, and settling the buffer against what history delivered (see the module
//! documentation of [`crate::hub`]).

use std::sync::Arc;

use tributary_engine::ChannelKey;

use super::{Hub, Mode, find, lock};
use crate::conn::{ConnHandle, Outbound};

impl Hub {
    /// Puts a subscriber that got one page of a long recovery aside until its next page: live
    /// items are dropped for it meanwhile, because its next history page holds them.
    pub fn pause_recovery(&self, key: &ChannelKey, conn: &ConnHandle) {
        self.set_mode(key, conn, Mode::CatchingUp);
    }

    /// Starts buffering live items again before the next history page is read, so the page
    /// and the buffer overlap and [`Hub::finish_recovery`] can settle the seam if it is the last.
    pub fn resume_recovery(&self, key: &ChannelKey, conn: &ConnHandle) {
        self.set_mode(key, conn, Mode::Recovering(Box::default()));
    }

    /// Ends recovery: queues the buffered items that come after `delivered` (the position
    /// history delivered up to), then switches the subscriber to live delivery.
    pub fn finish_recovery(&self, key: &ChannelKey, conn: &ConnHandle, epoch: &Arc<str>, delivered: u64) {
        let mut shard = lock(self.shard(key));
        let Some(sub) = shard.get_mut(key).and_then(|subs| find(subs, conn)) else { return };
        let Mode::Recovering(buffer) = std::mem::replace(&mut sub.mode, Mode::Live) else { return };
        // The buffer holds what arrived live while history was read: copies of what history
        // delivered, then (with no hole) what came after it.
        // The stream's own epoch, shared: no string per subscriber.
        sub.position = Some((epoch.clone(), delivered));
        for item in *buffer {
            sub.give(&item);
            if sub.conn.is_closed() {
                return;
            }
        }
    }

    /// Ends the start of a plain subscription that history cannot complete (no history kept, or
    /// trimmed): queues what was buffered after `after` (the head when the request was read),
    /// then goes live. A hole before the first buffered publication (published while the
    /// engine subscription was not live yet, and kept nowhere) is skipped, not a resync: the
    /// subscriber starts just before what it can have; with nothing buffered, after `top` (the
    /// head read once the engine subscription was live).
    pub fn finish_from_buffer(
        &self,
        key: &ChannelKey,
        conn: &ConnHandle,
        epoch: &Arc<str>,
        after: u64,
        top: u64,
    ) {
        let mut shard = lock(self.shard(key));
        let Some(sub) = shard.get_mut(key).and_then(|subs| find(subs, conn)) else { return };
        let Mode::Recovering(buffer) = std::mem::replace(&mut sub.mode, Mode::Live) else { return };
        let first = buffer.iter().find_map(|item| match item {
            Outbound::Message(m) if *m.publication.epoch == **epoch && m.offset() > after => Some(m.offset()),
            _ => None,
        });
        let start = first.map_or(top.max(after), |first| first - 1);
        sub.position = Some((epoch.clone(), start));
        for item in *buffer {
            sub.give(&item);
            if sub.conn.is_closed() {
                return;
            }
        }
    }
}
