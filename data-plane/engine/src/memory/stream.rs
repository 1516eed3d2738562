//! One channel's stream: epoch, offsets, history window and idempotency keys.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::time::Instant;
use tributary_protocol::Publication;
use tributary_protocol::frame::Direction;

use crate::contract::{HistoryPage, HistoryQuery, NewMessage, PublishOptions, PublishOutcome, StreamOptions};

/// Returns a fresh random epoch.
pub(crate) fn new_epoch() -> Arc<str> {
    let s: String = rand::rng().sample_iter(&Alphanumeric).take(10).map(char::from).collect();
    Arc::from(s)
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct Stored {
    publication: Publication,
    expires_at: Instant,
}

/// What a duplicate needs to answer: not the payload, which would pin memory for the window.
struct IdempotencyEntry {
    offset: u64,
    ts_ms: u64,
    expires_at: Instant,
}

/// Most idempotency keys remembered per channel. Beyond it the oldest are forgotten early, so a
/// flood of unique keys shortens the window instead of growing memory.
pub(crate) const MAX_IDEMPOTENCY_KEYS: usize = 10_000;

/// A stream that never had a message is forgotten after this idle time (unless subscribed), so
/// reads of random channel names cannot pile up streams.
const NEVER_PUBLISHED_TTL: Duration = Duration::from_secs(300);

/// A channel's stream. Guarded by its own mutex so that publishes to one channel are ordered
/// without blocking other channels.
pub(crate) struct Stream {
    epoch: Arc<str>,
    top: u64,
    history: VecDeque<Stored>,
    idempotency: HashMap<String, IdempotencyEntry>,
    /// Keys in insertion order, to expire them without scanning the map.
    idempotency_order: VecDeque<(Instant, String)>,
    pub(crate) last_used: Instant,
    /// Nodes subscribed to the channel; a subscribed stream is never forgotten.
    pub(crate) subscribers: usize,
}

impl Stream {
    pub(crate) fn new() -> Self {
        Self {
            epoch: new_epoch(),
            top: 0,
            history: VecDeque::new(),
            idempotency: HashMap::new(),
            idempotency_order: VecDeque::new(),
            last_used: Instant::now(),
            subscribers: 0,
        }
    }

    /// Stores a message and returns it, or returns the original position for a retried
    /// idempotency key (and no publication).
    pub(crate) fn publish(
        &mut self,
        message: NewMessage,
        options: &PublishOptions,
    ) -> (PublishOutcome, Option<Publication>) {
        let now = Instant::now();
        self.last_used = now;
        self.expire_idempotency(now);
        if let Some(key) = &options.idempotency_key
            && let Some(entry) = self.idempotency.get(key)
        {
            let outcome = PublishOutcome {
                epoch: self.epoch.clone(),
                offset: entry.offset,
                ts_ms: entry.ts_ms,
                duplicate: true,
            };
            return (outcome, None);
        }
        self.top += 1;
        let publication = Publication {
            epoch: self.epoch.clone(),
            offset: self.top,
            ts_ms: now_ms(),
            client_id: message.client_id,
            payload: message.payload,
            encoding: message.encoding,
            meta: message.meta,
        };
        if let Some(key) = &options.idempotency_key {
            self.remember(key, &publication, now + options.idempotency_window);
        }
        if options.stream.history_size > 0 {
            self.history.push_back(Stored {
                publication: publication.clone(),
                expires_at: now + options.stream.history_ttl,
            });
        }
        self.trim(options.stream, now);
        let outcome = PublishOutcome {
            epoch: self.epoch.clone(),
            offset: self.top,
            ts_ms: publication.ts_ms,
            duplicate: false,
        };
        (outcome, Some(publication))
    }

    fn remember(&mut self, key: &str, publication: &Publication, expires_at: Instant) {
        while self.idempotency.len() >= MAX_IDEMPOTENCY_KEYS {
            match self.idempotency_order.pop_front() {
                Some((_, oldest)) => {
                    self.idempotency.remove(&oldest);
                }
                None => break,
            }
        }
        let entry = IdempotencyEntry { offset: publication.offset, ts_ms: publication.ts_ms, expires_at };
        self.idempotency.insert(key.to_owned(), entry);
        self.idempotency_order.push_back((expires_at, key.to_owned()));
    }

    fn expire_idempotency(&mut self, now: Instant) {
        while let Some((expires_at, _)) = self.idempotency_order.front() {
            if *expires_at > now {
                break;
            }
            if let Some((_, key)) = self.idempotency_order.pop_front()
                && self.idempotency.get(&key).is_some_and(|e| e.expires_at <= now)
            {
                self.idempotency.remove(&key);
            }
        }
    }

    /// Drops what is beyond the window's size or older than its TTL.
    fn trim(&mut self, options: StreamOptions, now: Instant) {
        while self.history.len() > options.history_size {
            self.history.pop_front();
        }
        while self.history.front().is_some_and(|s| s.expires_at <= now) {
            self.history.pop_front();
        }
    }

    pub(crate) fn history(&mut self, query: HistoryQuery, options: StreamOptions) -> HistoryPage {
        let now = Instant::now();
        self.last_used = now;
        self.trim(options, now);
        let limit = query.limit;
        let publications: Vec<Publication> = match query.direction {
            Direction::Forward => {
                let after = query.since.unwrap_or(0);
                let start = self.history.partition_point(|s| s.publication.offset <= after);
                self.history.range(start..).take(limit).map(|s| s.publication.clone()).collect()
            }
            Direction::Backward => {
                let before = query.since.unwrap_or(u64::MAX);
                let end = self.history.partition_point(|s| s.publication.offset < before);
                self.history.range(..end).rev().take(limit).map(|s| s.publication.clone()).collect()
            }
        };
        HistoryPage {
            epoch: self.epoch.clone(),
            top_offset: self.top,
            oldest_offset: self.history.front().map(|s| s.publication.offset),
            publications,
        }
    }

    /// Returns whether the stream holds nothing worth keeping: no node subscribed, no history,
    /// no idempotency key, and idle for `idle` (or a shorter time if it never had a message).
    pub(crate) fn is_idle(&mut self, now: Instant, idle: Duration) -> bool {
        while self.history.front().is_some_and(|s| s.expires_at <= now) {
            self.history.pop_front();
        }
        self.expire_idempotency(now);
        let idle = if self.top == 0 { idle.min(NEVER_PUBLISHED_TTL) } else { idle };
        self.subscribers == 0
            && self.history.is_empty()
            && self.idempotency.is_empty()
            && now.duration_since(self.last_used) >= idle
    }
}
