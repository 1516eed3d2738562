//! Usage metering: what this node counts per app (messages and bytes published and delivered,
//! connections), rolled into per-minute rows every second and flushed to the directory in
//! numbered batches at least every `relay.usage_flush_secs`.
//!
//! Counting is a relaxed atomic add on the message path. A batch keeps its number until the
//! directory has it, so a flush retried after a lost reply carries the same number and the
//! store applies it once; batches wait (at most [`MAX_PENDING_BATCHES`]) while the store is
//! down.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::state::RelayState;

/// What one node counted for one app in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageRow {
    /// The app.
    pub app_id: Arc<str>,
    /// The minute, unix seconds (a multiple of 60).
    pub minute: u64,
    /// Messages published.
    pub published: u64,
    /// Messages handed to subscribers of this node.
    pub delivered: u64,
    /// Payload bytes published.
    pub bytes_published: u64,
    /// Payload bytes handed to subscribers.
    pub bytes_delivered: u64,
    /// The most connections of the app at once on this node.
    pub peak_connections: u64,
    /// Connections times seconds.
    pub connection_seconds: u64,
}

/// Counters of one app since the last roll.
#[derive(Default)]
pub struct AppCounters {
    published: AtomicU64,
    delivered: AtomicU64,
    bytes_published: AtomicU64,
    bytes_delivered: AtomicU64,
}

impl AppCounters {
    /// Counts one published message of `bytes` payload bytes.
    pub fn published(&self, bytes: usize) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.bytes_published.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a message of `bytes` handed to `subscribers` subscribers.
    pub fn delivered(&self, subscribers: usize, bytes: usize) {
        self.delivered.fetch_add(subscribers as u64, Ordering::Relaxed);
        self.bytes_delivered.fetch_add((subscribers * bytes) as u64, Ordering::Relaxed);
    }

    fn take(&self) -> [u64; 4] {
        [&self.published, &self.delivered, &self.bytes_published, &self.bytes_delivered]
            .map(|counter| counter.swap(0, Ordering::Relaxed))
    }
}

/// Most batches kept while the directory cannot take them (one a flush: an hour at 10 s).
pub const MAX_PENDING_BATCHES: usize = 360;

/// This node's usage.
pub struct Usage {
    /// Identifies this node's batches (random per process).
    node_id: String,
    apps: Mutex<HashMap<Arc<str>, Arc<AppCounters>>>,
    /// Rows of the minutes being counted, by (app, minute).
    rows: Mutex<BTreeMap<(Arc<str>, u64), UsageRow>>,
    /// Batches not yet taken by the directory, oldest first, with their numbers.
    batches: Mutex<VecDeque<(u64, Vec<UsageRow>)>>,
    next_seq: AtomicU64,
    /// Who pays for the deliveries of an exchange's messages (learnt with the policies).
    pub payers: Arc<crate::exchange::Payers>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Usage {
    fn default() -> Self {
        Self {
            node_id: format!("node_{}", uuid::Uuid::now_v7().simple()),
            apps: Mutex::default(),
            rows: Mutex::default(),
            batches: Mutex::default(),
            next_seq: AtomicU64::new(1),
            payers: Arc::default(),
        }
    }
}

impl Usage {
    /// Returns this node's id in its batches.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Returns the counters of `app`.
    pub fn app(&self, app: &Arc<str>) -> Arc<AppCounters> {
        if let Some(counters) = lock(&self.apps).get(app) {
            return counters.clone();
        }
        lock(&self.apps).entry(app.clone()).or_default().clone()
    }

    /// Rolls the counters into the rows of the minute of `now` and adds one second of the
    /// connections in `connections` (per app); called every second.
    pub fn tick(&self, now_secs: u64, connections: &[(Arc<str>, usize)]) {
        let minute = now_secs - now_secs % 60;
        let counted: Vec<(Arc<str>, [u64; 4])> = lock(&self.apps)
            .iter()
            .map(|(app, counters)| (app.clone(), counters.take()))
            .filter(|(_, taken)| taken.iter().any(|&n| n > 0))
            .collect();
        let mut rows = lock(&self.rows);
        let rows = &mut *rows;
        fn row<'a>(
            rows: &'a mut BTreeMap<(Arc<str>, u64), UsageRow>,
            app: &Arc<str>,
            minute: u64,
        ) -> &'a mut UsageRow {
            rows.entry((app.clone(), minute)).or_insert_with(|| UsageRow {
                app_id: app.clone(),
                minute,
                ..UsageRow::default()
            })
        }
        for (app, [published, delivered, bytes_published, bytes_delivered]) in counted {
            let row = row(rows, &app, minute);
            row.published += published;
            row.delivered += delivered;
            row.bytes_published += bytes_published;
            row.bytes_delivered += bytes_delivered;
        }
        for (app, count) in connections {
            let row = row(rows, app, minute);
            row.peak_connections = row.peak_connections.max(*count as u64);
            row.connection_seconds += *count as u64;
        }
    }

    /// Closes the rows counted so far into a new batch.
    pub fn seal(&self) {
        let rows: Vec<UsageRow> = std::mem::take(&mut *lock(&self.rows)).into_values().collect();
        if rows.is_empty() {
            return;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut batches = lock(&self.batches);
        batches.push_back((seq, rows));
        if batches.len() > MAX_PENDING_BATCHES {
            batches.pop_front();
            tracing::warn!("usage batch dropped: the directory has not taken one for too long");
        }
    }

    /// Returns the oldest batch not yet taken.
    pub fn oldest(&self) -> Option<(u64, Vec<UsageRow>)> {
        lock(&self.batches).front().cloned()
    }

    /// Forgets batch `seq` (the directory has it).
    pub fn taken(&self, seq: u64) {
        lock(&self.batches).retain(|(s, _)| *s != seq);
    }

    /// Returns how many batches wait.
    pub fn pending(&self) -> usize {
        lock(&self.batches).len()
    }
}

/// Starts the metering: a roll every second, a flush every `relay.usage_flush_secs`. Ends with
/// the relay, after a last flush attempt.
pub fn spawn_metering(state: &Arc<RelayState>) {
    let weak = Arc::downgrade(state);
    let flush_every = state.config.usage_flush_secs.max(1);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seconds = 0u64;
        loop {
            let stopping = tokio::select! {
                _ = ticks.tick() => false,
                _ = shutdown.cancelled() => true,
            };
            let Some(state) = weak.upgrade() else { return };
            let now = crate::session::unix_now();
            state.usage.tick(now, &state.connections.per_app());
            seconds += 1;
            if stopping || seconds.is_multiple_of(flush_every) {
                state.usage.seal();
                flush(&state).await;
            }
            if stopping {
                return;
            }
        }
    });
}

/// Hands waiting batches to the directory, oldest first; stops at the first failure (kept for
/// the next flush, under the same number).
async fn flush(state: &RelayState) {
    while let Some((seq, rows)) = state.usage.oldest() {
        match state.directory.record_usage(state.usage.node_id(), seq, &rows).await {
            Ok(()) => state.usage.taken(seq),
            Err(err) => {
                tracing::warn!(error = %err, pending = state.usage.pending(), "usage flush failed; retrying later");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_roll_into_minutes_and_batches_keep_their_numbers_until_taken() {
        let usage = Usage::default();
        let app: Arc<str> = "app_1".into();
        let counters = usage.app(&app);
        counters.published(10);
        counters.delivered(3, 10);
        usage.tick(120, &[(app.clone(), 2)]);
        counters.published(5);
        usage.tick(121, &[(app.clone(), 4)]);
        usage.tick(180, &[(app.clone(), 1)]);
        usage.seal();
        let (seq, rows) = usage.oldest().unwrap();
        assert_eq!(rows.len(), 2, "two minutes");
        assert_eq!(
            rows[0],
            UsageRow {
                app_id: app.clone(),
                minute: 120,
                published: 2,
                delivered: 3,
                bytes_published: 15,
                bytes_delivered: 30,
                peak_connections: 4,
                connection_seconds: 6,
            }
        );
        assert_eq!((rows[1].minute, rows[1].connection_seconds), (180, 1));
        // Not taken: the same batch, the same number, again.
        usage.seal();
        assert_eq!(usage.oldest().unwrap().0, seq, "an empty seal makes no batch");
        counters.published(1);
        usage.tick(181, &[]);
        usage.seal();
        assert_eq!(usage.pending(), 2);
        usage.taken(seq);
        let (next, rows) = usage.oldest().unwrap();
        assert_eq!((next, rows[0].published), (seq + 1, 1));
    }
}
