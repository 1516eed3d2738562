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
        let mut shard = lock(self.shard(key));
        let subs = shard.entry(key.clone()).or_default();
        subs.retain(|s| s.conn.id() != conn.id());
        subs.push(Subscriber { conn: conn.clone(), mode: Mode::Recovering(Box::default()), position: None });
    }

    fn set_mode(&self, key: &ChannelKey, conn: &ConnHandle, mode: Mode) {
        let mut shard = lock(self.shard(key));
        if let Some(sub) = shard.get_mut(key).and_then(|subs| find(subs, conn)) {
            sub.mode = mode;
        }
    }

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
        let mut shard = lock(self.shard(key));
        let Some(subs) = shard.get_mut(key) else { return 0 };
        let item = make();
        for sub in subs.iter_mut() {
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
            self.usage.app(&key.app).delivered(subscribers, publication.payload.len());
        }
    }

    fn on_presence(&self, key: &ChannelKey, event: &PresenceEvent) {
        self.deliver(key, || Outbound::frame(event.encode(key.channel.as_str())));
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
mod tests {
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
        ConnHandle::new(
            id.into(),
            "app".into(),
            "client".into(),
            crate::policy::Credential::dummy(),
            16,
            1 << 20,
        )
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
        assert_eq!(
            drain(&mut a_outbox).len() + drain(&mut b_outbox).len(),
            1,
            "all away: one of them keeps it"
        );
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
}
