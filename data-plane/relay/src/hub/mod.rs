//! The channel hub: for each channel with local subscribers, who they are.
//!
//! The engine hands the hub each publication once; the hub encodes it into its frame once and
//! gives every subscriber a reference-counted clone through its bounded queue.
//!
//! A subscriber that is still recovering (its history is being read) gets live items into a
//! side buffer instead of its queue. [`Hub::finish_recovery`] then moves the buffered items
//! that come after what history delivered into the queue, under the channel's lock, so nothing
//! is lost or duplicated at the seam between history and the live stream.
//!
//! A recovery too long for the queue is read from history page by page as the client drains
//! it; between pages the subscriber is catching up and live items are not kept for it at all
//! (history will bring them), so a long recovery never holds a growing buffer.
//!
//! Each subscriber's stream is contiguous: the hub keeps its position (epoch and offset of the
//! last message it was given) and gives it a publication only if it is the next offset in the
//! same epoch. A late copy of one it has (an engine whose live delivery lags its storage, such
//! as Redis: a publication can be in history before its pub/sub message arrives) is skipped.
//! Anything else (publications lost on their way, as across a Redis pub/sub reconnection; a new
//! epoch after Redis lost history) closes the subscriber with "reconnect and recover", and
//! recovery from its last position fills the hole from history or tells it `recovered: false`.
//! A subscriber never silently skips offsets or moves to another epoch.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tributary_engine::{Audience, ChannelKey, EngineSink};
use tributary_protocol::frame::{PresenceEvent, server};
use tributary_protocol::{ChannelName, Publication};

use crate::conn::{ConnHandle, Outbound, PreparedMessage};

mod recovery;

const SHARDS: usize = 32;

/// How a subscriber takes live items.
enum Mode {
    /// Straight into its queue.
    Live,
    /// Into a side buffer, while its history page is read: the seam is settled by
    /// [`Hub::finish_recovery`].
    /// (Boxed: a subscriber is recovering only for a moment, and every subscriber of every
    /// channel would carry the room.)
    #[allow(
        clippy::box_collection,
        reason = "a pointer where a vector would be three words, in every subscriber"
    )]
    Recovering(Box<Vec<Outbound>>),
    /// Not publications: it is between two history pages, far behind, and history will bring
    /// them.
    CatchingUp,
}

struct Subscriber {
    conn: ConnHandle,
    mode: Mode,
    /// The epoch and offset of the last message it was given (set when its recovery ends).
    position: Option<(Arc<str>, u64)>,
    /// Whether it gets the channel's presence events (not a partner that an exchange gives no
    /// presence right).
    presence_events: bool,
}

/// What to do with a message for a subscriber at some position.
enum Next {
    /// It is the next offset: give it.
    Give,
    /// It has it already (a late copy): skip it.
    Skip,
    /// A hole or another epoch: the subscriber must recover.
    Resync,
}

fn next(position: &Option<(Arc<str>, u64)>, message: &PreparedMessage) -> Next {
    match position {
        Some((epoch, offset)) if **epoch == **message.epoch() => {
            if message.offset() <= *offset {
                Next::Skip
            } else if message.offset() == offset + 1 {
                Next::Give
            } else {
                Next::Resync
            }
        }
        Some(_) => Next::Resync,
        // Live without a position does not happen (recovery sets one); give rather than drop.
        None => Next::Give,
    }
}

impl Subscriber {
    /// Gives a live item, keeping the stream contiguous (see the module's doc).
    fn give(&mut self, item: &Outbound) {
        let Outbound::Message(message) = item else {
            self.conn.push(item.clone());
            return;
        };
        match next(&self.position, message) {
            Next::Give => {
                if let Some((_, offset)) = &mut self.position {
                    *offset = message.offset();
                }
                self.conn.push(item.clone());
            }
            Next::Skip => {}
            Next::Resync => self.conn.close(tributary_protocol::CloseCode::SlowConsumer),
        }
    }
}

/// Returns the item, made on first use (a publication is encoded only if someone takes it).
fn encoded<'a>(
    item: &'a mut Option<Outbound>,
    make: &mut Option<impl FnOnce() -> Outbound>,
) -> Option<&'a Outbound> {
    if item.is_none() {
        *item = Some(make.take()?());
    }
    item.as_ref()
}

/// Finds a connection among a channel's subscribers.
fn find<'a>(subs: &'a mut [Subscriber], conn: &ConnHandle) -> Option<&'a mut Subscriber> {
    subs.iter_mut().find(|s| s.conn.id() == conn.id())
}

type ChannelMap = HashMap<ChannelKey, Vec<Subscriber>>;

/// Which channels a wildcard subscription takes (MQTT's `+` and `#` filters).
pub type ChannelFilter = Arc<dyn Fn(&ChannelName) -> bool + Send + Sync>;

/// A wildcard subscription of a connection: every channel of its app that its filter takes.
struct PatternSubscriber {
    conn: ConnHandle,
    /// Names the subscription within its connection (the filter's text).
    name: Arc<str>,
    filter: ChannelFilter,
    /// A shared subscription: the subscribers of the same name take turns, each publication
    /// going to one of them.
    shared: bool,
}

/// Receives control events (revocations, disconnects) for the node.
pub trait ControlHandler: Send + Sync {
    /// Handles one control event.
    fn on_control(&self, event: &Bytes);
}

/// The channel hub of one node.
pub struct Hub {
    hasher: RandomState,
    shards: Vec<Mutex<ChannelMap>>,
    /// A recovering subscriber may buffer at most this many items, like its queue.
    max_buffer: usize,
    control: Mutex<Option<Arc<dyn ControlHandler>>>,
    /// Counts deliveries per app.
    usage: Arc<crate::usage::Usage>,
    /// Wildcard subscriptions by app. Live only: the publications of a channel reach them in
    /// order, but nothing is recovered for them from history.
    patterns: std::sync::RwLock<HashMap<Arc<str>, Vec<PatternSubscriber>>>,
    /// Whether `patterns` has any, so apps without them pay one atomic load per publication.
    any_patterns: std::sync::atomic::AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    /// Creates an empty hub; recovering subscribers buffer at most `max_buffer` live items.
    pub fn new(max_buffer: usize, usage: Arc<crate::usage::Usage>) -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_buffer,
            control: Mutex::new(None),
            usage,
            patterns: Default::default(),
            any_patterns: Default::default(),
        }
    }

    /// Sets the handler of control events.
    pub fn set_control_handler(&self, handler: Arc<dyn ControlHandler>) {
        *lock(&self.control) = Some(handler);
    }

    fn shard(&self, key: &ChannelKey) -> &Mutex<ChannelMap> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Adds a subscriber in recovering mode. (The engine counts subscriptions itself: every
    /// local subscription subscribes there too.)
    pub fn add(&self, key: &ChannelKey, conn: &ConnHandle) {
        self.add_with(key, conn, true);
    }

    /// Adds a subscriber in recovering mode that gets the channel's presence events only if
    /// `presence_events`.
    pub fn add_with(&self, key: &ChannelKey, conn: &ConnHandle, presence_events: bool) {
        let mut shard = lock(self.shard(key));
        let subs = shard.entry(key.clone()).or_default();
        subs.retain(|s| s.conn.id() != conn.id());
        let mode = Mode::Recovering(Box::default());
        subs.push(Subscriber { conn: conn.clone(), mode, position: None, presence_events });
    }

    fn set_mode(&self, key: &ChannelKey, conn: &ConnHandle, mode: Mode) {
        let mut shard = lock(self.shard(key));
        if let Some(sub) = shard.get_mut(key).and_then(|subs| find(subs, conn)) {
            sub.mode = mode;
        }
    }

    /// Adds a wildcard subscription named `name` for `conn`: live publications of every channel
    /// of its app that `filter` takes. Replaces the connection's subscription of that name. A
    /// `shared` subscription shares each publication with the other shared subscriptions of the
    /// same name in the app: one of them gets it. Returns whether it replaced one.
    pub fn add_pattern(
        &self,
        conn: &ConnHandle,
        name: Arc<str>,
        filter: ChannelFilter,
        shared: bool,
    ) -> bool {
        let mut patterns = self.patterns.write().unwrap_or_else(|p| p.into_inner());
        let subs = patterns.entry(conn.app().clone()).or_default();
        let before = subs.len();
        subs.retain(|s| !(s.conn.id() == conn.id() && s.name == name));
        let replaced = subs.len() < before;
        subs.push(PatternSubscriber { conn: conn.clone(), name, filter, shared });
        self.any_patterns.store(true, std::sync::atomic::Ordering::Release);
        replaced
    }

    /// Removes a connection's wildcard subscription `name`, or all of them with `None`;
    /// returns how many it removed.
    pub fn remove_pattern(&self, conn: &ConnHandle, name: Option<&str>) -> usize {
        let mut patterns = self.patterns.write().unwrap_or_else(|p| p.into_inner());
        let Some(subs) = patterns.get_mut(conn.app()) else { return 0 };
        let before = subs.len();
        subs.retain(|s| !(s.conn.id() == conn.id() && name.is_none_or(|n| *s.name == *n)));
        let removed = before - subs.len();
        if subs.is_empty() {
            patterns.remove(conn.app());
            if patterns.is_empty() {
                self.any_patterns.store(false, std::sync::atomic::Ordering::Release);
            }
        }
        removed
    }

    /// Removes a subscriber.
    pub fn remove(&self, key: &ChannelKey, conn_id: &str) {
        let mut shard = lock(self.shard(key));
        let Some(subs) = shard.get_mut(key) else { return };
        subs.retain(|s| &**s.conn.id() != conn_id);
        if subs.is_empty() {
            shard.remove(key);
        }
    }

    /// Returns the channels of `apps` with subscribers on this node, as `app/channel`.
    pub fn channels_of(&self, apps: &[Arc<str>]) -> Vec<String> {
        let mut names = Vec::new();
        for shard in &self.shards {
            let shard = lock(shard);
            names.extend(
                shard
                    .iter()
                    .filter(|(key, subs)| !subs.is_empty() && apps.contains(&key.app))
                    .map(|(key, _)| format!("{}/{}", key.app, key.channel)),
            );
        }
        names
    }

    /// Closes the connections of app `conn_app` subscribed to a channel of `namespace` of
    /// `app` (an exchange they reached it through was suspended or ended); returns how many.
    pub fn close_subscribers(
        &self,
        app: &str,
        namespace: &str,
        conn_app: &str,
        code: tributary_protocol::CloseCode,
    ) -> usize {
        let mut closed = 0;
        for shard in &self.shards {
            for (key, subs) in lock(shard).iter() {
                if &*key.app != app || key.channel.namespace() != namespace {
                    continue;
                }
                for sub in subs.iter().filter(|s| &**s.conn.app() == conn_app && !s.conn.is_closed()) {
                    sub.conn.close(code);
                    closed += 1;
                }
            }
        }
        closed
    }

    /// Returns how many local subscribers `key` has.
    pub fn subscriber_count(&self, key: &ChannelKey) -> usize {
        lock(self.shard(key)).get(key).map(Vec::len).unwrap_or(0)
    }

    /// Hands a publication to the wildcard subscribers of its app whose filter takes it;
    /// returns how many there were. A connection gets it once: not again for a second filter
    /// that takes it, and not at all if it subscribed to the channel itself (that subscription
    /// delivers it, in order with its recovery). With an app feed the two copies arrive one
    /// after the other: a connection that subscribes to the channel by name (or leaves it)
    /// exactly between them may miss (or get twice) that one publication.
    fn deliver_to_patterns(
        &self,
        key: &ChannelKey,
        offset: u64,
        item: &mut Option<Outbound>,
        make: impl FnOnce() -> Outbound,
    ) -> usize {
        if !self.any_patterns.load(std::sync::atomic::Ordering::Acquire) {
            return 0;
        }
        let patterns = self.patterns.read().unwrap_or_else(|p| p.into_inner());
        let Some(subs) = patterns.get(&key.app) else { return 0 };
        let mut make = Some(make);
        let mut count = 0;
        let matching: Vec<&PatternSubscriber> = subs.iter().filter(|s| (s.filter)(&key.channel)).collect();
        if matching.is_empty() {
            return 0;
        }
        // Shared groups: one member each, in turns by the channel's offset (so every channel's
        // messages go round the group whatever else is published), from a place that differs
        // by channel (so channels with one message each spread over the group too).
        // Members whose client is away (a parked MQTT session) get a turn only when no member
        // is online.
        let mut groups: HashMap<&str, (Vec<&PatternSubscriber>, Vec<&PatternSubscriber>)> = HashMap::new();
        for sub in matching.iter().filter(|s| s.shared && !s.conn.is_closed()) {
            let (online, away) = groups.entry(&sub.name).or_default();
            if sub.conn.is_parked() { away.push(sub) } else { online.push(sub) }
        }
        for (online, away) in groups.values() {
            let members = if online.is_empty() { away } else { online };
            let turn = self.hasher.hash_one(&key.channel).wrapping_add(offset);
            let chosen = members[(turn % members.len() as u64) as usize];
            let Some(item) = encoded(item, &mut make) else { return count };
            chosen.conn.push(item.clone());
            count += 1;
        }
        if matching.iter().all(|s| s.shared) {
            return count;
        }
        // The channel's own subscribers are looked up once, and only when a plain wildcard
        // subscriber wants the publication.
        let shard = lock(self.shard(key));
        let exact: std::collections::HashSet<&str> =
            shard.get(key).map(|subs| subs.iter().map(|s| &**s.conn.id()).collect()).unwrap_or_default();
        let mut given = std::collections::HashSet::new();
        for sub in matching.iter().filter(|s| !s.shared) {
            let id: &str = sub.conn.id();
            if exact.contains(id) || !given.insert(id) {
                continue;
            }
            let Some(item) = encoded(item, &mut make) else { return count };
            sub.conn.push(item.clone());
            count += 1;
        }
        count
    }

    /// Hands an item to every subscriber of `key`; returns how many there were.
    fn deliver(&self, key: &ChannelKey, make: impl FnOnce() -> Outbound) -> usize {
        self.deliver_to(key, |_| true, make)
    }

    /// Gives an item to the subscribers of `key` that `wanted` takes.
    fn deliver_to(
        &self,
        key: &ChannelKey,
        wanted: impl Fn(&Subscriber) -> bool,
        make: impl FnOnce() -> Outbound,
    ) -> usize {
        let mut shard = lock(self.shard(key));
        let Some(subs) = shard.get_mut(key) else { return 0 };
        let item = make();
        for sub in subs.iter_mut().filter(|sub| wanted(sub)) {
            match &mut sub.mode {
                Mode::Live => sub.give(&item),
                Mode::Recovering(buffer) if buffer.len() >= self.max_buffer => {
                    sub.conn.close(tributary_protocol::CloseCode::SlowConsumer)
                }
                Mode::Recovering(buffer) => buffer.push(item.clone()),
                // Presence events are not in history, so they cannot wait for it.
                Mode::CatchingUp if matches!(item, Outbound::Frame(_)) => {
                    sub.conn.push(item.clone());
                }
                Mode::CatchingUp => {}
            }
        }
        subs.len()
    }
}

impl EngineSink for Hub {
    fn on_publication(&self, key: &ChannelKey, publication: &Publication, audience: Audience) {
        let make = || {
            let frame = server::encode_message(key.channel.as_str(), publication);
            Outbound::Message(Arc::new(PreparedMessage {
                frame,
                channel: key.channel.clone(),
                publication: publication.clone(),
            }))
        };
        // Encoded once for both kinds of subscriber.
        let mut item = None;
        let mut subscribers = 0;
        if audience.channel() {
            subscribers += self.deliver(key, || item.insert(make()).clone());
        }
        if audience.patterns() {
            subscribers += self.deliver_to_patterns(key, publication.offset, &mut item, make);
        }
        if subscribers > 0 {
            // An exchange's message is paid for by the app that published it.
            let payer = self.usage.payers.payer(&key.app, &key.channel, publication.client_id.as_deref());
            self.usage
                .app(payer.as_ref().unwrap_or(&key.app))
                .delivered(subscribers, publication.payload.len());
        }
    }

    fn on_presence(&self, key: &ChannelKey, event: &PresenceEvent) {
        self.deliver_to(
            key,
            |sub| sub.presence_events,
            || Outbound::frame(event.encode(key.channel.as_str())),
        );
    }

    fn on_gap(&self, key: &ChannelKey) {
        // Closed with "reconnect and recover": history has what the node missed.
        if let Some(subs) = lock(self.shard(key)).get(key) {
            for sub in subs {
                sub.conn.close(tributary_protocol::CloseCode::SlowConsumer);
            }
        }
    }

    fn on_control(&self, event: &Bytes) {
        let handler = lock(&self.control).clone();
        if let Some(handler) = handler {
            handler.on_control(event);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
