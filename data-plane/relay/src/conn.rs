//! Connections as the rest of the relay sees them: a bounded outbound queue and a way to close.
//!
//! Every frame for a connection (replies, messages, presence events) goes through its one
//! bounded queue, so their order is the order they were queued in. A full queue never blocks
//! and never grows: the connection is closed as a slow consumer, with a code that tells the
//! client to reconnect and recover its position.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tributary_protocol::{ChannelName, CloseCode};

use crate::policy::{AppPolicy, Credential};

/// A publication's frame, encoded once and shared by every subscriber of this node.
#[derive(Debug)]
pub struct PreparedMessage {
    /// The `message` frame (UTF-8 JSON).
    pub frame: Bytes,
    /// The channel.
    pub channel: ChannelName,
    /// The publication (its payload shared, not copied): what transports other than
    /// `tributary.v1` encode from, and its position.
    pub publication: tributary_protocol::Publication,
}

impl PreparedMessage {
    /// Returns the stream's epoch.
    pub fn epoch(&self) -> &Arc<str> {
        &self.publication.epoch
    }

    /// Returns the publication's offset.
    pub fn offset(&self) -> u64 {
        self.publication.offset
    }
}

/// One item of a connection's outbound queue.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A publication (shared by all subscribers; cloning is a reference count).
    Message(Arc<PreparedMessage>),
    /// Any other frame (UTF-8 JSON): a reply or a presence event. Behind an `Arc` so that an
    /// `Outbound` is two words.
    Frame(Arc<Bytes>),
}

impl Outbound {
    /// Wraps an encoded frame (a reply or an event).
    pub fn frame(encoded: Bytes) -> Self {
        Outbound::Frame(Arc::new(encoded))
    }

    /// Returns the frame's bytes.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Outbound::Message(m) => &m.frame,
            Outbound::Frame(f) => f,
        }
    }

    /// Returns the frame's size in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Returns whether the frame is empty (never, for frames we build).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A queue that went idle with more than this many slots gives its memory back: a connection
/// that was busy once must not keep a big queue for the rest of its idle life.
const IDLE_QUEUE_CAPACITY: usize = 64;

struct Queue {
    items: VecDeque<Outbound>,
    /// Bytes in the queue: a count limit alone would let a few huge replies pin gigabytes.
    bytes: usize,
    /// The connection's task, when it waits for items or for the close.
    waker: Option<Waker>,
}

struct Shared {
    id: Arc<str>,
    app: Arc<str>,
    client: Arc<str>,
    /// The token's facts, replaced when the client refreshes its token.
    credential: Mutex<Credential>,
    queue: Mutex<Queue>,
    max_items: usize,
    max_bytes: usize,
    closed: AtomicBool,
    /// No client reads the queue for now (a parked MQTT session): shared subscriptions pass
    /// it over while another member is online.
    parked: AtomicBool,
    close_code: OnceLock<CloseCode>,
}

impl Queue {
    /// Hands up to `max` frames to `take`, oldest first; returns how many.
    fn take(&mut self, max: usize, mut take: impl FnMut(Outbound)) -> usize {
        let n = self.items.len().min(max);
        for item in self.items.drain(..n) {
            self.bytes -= item.len();
            take(item);
        }
        n
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn wake(&self) {
        let waker = lock(&self.queue).waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A handle to a connection: cheap to clone, safe to use from the hub.
#[derive(Clone)]
pub struct ConnHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle").field("id", &self.shared.id).finish()
    }
}

impl ConnHandle {
    /// Creates a connection whose queue holds at most `queue_len` frames and `max_queued_bytes`
    /// bytes; returns the handle and the [`Outbox`] that the connection's task drains. The queue
    /// allocates nothing until something is queued.
    pub fn new(
        id: Arc<str>,
        app: Arc<str>,
        client: Arc<str>,
        credential: Credential,
        queue_len: usize,
        max_queued_bytes: usize,
    ) -> (Self, Outbox) {
        let shared = Arc::new(Shared {
            id,
            app,
            client,
            credential: Mutex::new(credential),
            queue: Mutex::new(Queue { items: VecDeque::new(), bytes: 0, waker: None }),
            max_items: queue_len,
            max_bytes: max_queued_bytes,
            closed: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            close_code: OnceLock::new(),
        });
        (Self { shared: shared.clone() }, Outbox { shared })
    }

    /// Returns the connection id.
    pub fn id(&self) -> &Arc<str> {
        &self.shared.id
    }

    /// Returns the app id.
    pub fn app(&self) -> &Arc<str> {
        &self.shared.app
    }

    /// Returns the client id (the token's subject).
    pub fn client(&self) -> &Arc<str> {
        &self.shared.client
    }

    /// Marks the connection as parked (its client gone, its queue kept) or back.
    pub fn set_parked(&self, parked: bool) {
        self.shared.parked.store(parked, Ordering::Release);
    }

    /// Returns whether the connection is parked.
    pub fn is_parked(&self) -> bool {
        self.shared.parked.load(Ordering::Acquire)
    }

    /// Returns the facts of the connection's current token.
    pub fn credential(&self) -> Credential {
        lock(&self.shared.credential).clone()
    }

    /// Replaces the token's facts (after a refresh).
    pub fn set_credential(&self, credential: Credential) {
        *lock(&self.shared.credential) = credential;
    }

    /// Closes the connection if `policy` (its app's; `None`: the app is gone) no longer admits
    /// it; returns whether it was closed.
    pub fn close_unless_admitted(&self, policy: Option<&AppPolicy>) -> bool {
        let refusal = match policy {
            Some(policy) => policy.admit(self.client(), &self.credential()).err(),
            None => Some(crate::policy::Refusal::KeyGone),
        };
        match refusal {
            Some(refusal) => {
                self.close(refusal.close_code());
                true
            }
            None => false,
        }
    }

    /// Queues a frame without waiting. A queue full by count or by bytes closes the connection
    /// as a slow consumer. Returns whether the frame was queued; after a close nothing is, so
    /// what a client received before the close is always a gap-free prefix.
    pub fn push(&self, item: Outbound) -> bool {
        if self.is_closed() {
            return false;
        }
        let len = item.len();
        let waker = {
            let mut queue = lock(&self.shared.queue);
            if queue.items.len() >= self.shared.max_items || queue.bytes + len > self.shared.max_bytes {
                drop(queue);
                self.close(CloseCode::SlowConsumer);
                return false;
            }
            queue.bytes += len;
            queue.items.push_back(item);
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Returns how many more bytes the queue can take now.
    pub fn room_bytes(&self) -> usize {
        self.shared.max_bytes.saturating_sub(lock(&self.shared.queue).bytes)
    }

    /// Returns how many more frames the queue can take now.
    pub fn room(&self) -> usize {
        self.shared.max_items.saturating_sub(lock(&self.shared.queue).items.len())
    }

    /// Closes the connection with `code`; the first code wins.
    pub fn close(&self, code: CloseCode) {
        let _ = self.shared.close_code.set(code);
        self.shut();
    }

    /// Marks the connection closed without a code (it is ending on its own): nothing more is
    /// queued.
    pub fn shut(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake();
    }

    /// Returns whether the connection was closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Returns the code the connection was closed with, if it was.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.shared.close_code.get().copied()
    }

    /// Completes when the connection is closed. Only the connection's own task may wait on it
    /// (the connection keeps one waker).
    pub fn closed(&self) -> Closed<'_> {
        Closed { shared: &self.shared }
    }
}

/// The future of [`ConnHandle::closed`].
pub struct Closed<'a> {
    shared: &'a Shared,
}

impl Future for Closed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        lock(&self.shared.queue).waker = Some(cx.waker().clone());
        // A close between the check and the registration found no waker; look again.
        if self.shared.closed.load(Ordering::Acquire) { Poll::Ready(()) } else { Poll::Pending }
    }
}

/// The receiving end of a connection's queue, owned by the task that writes to the client.
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// Hands up to `max` queued frames to `take`, in order. Pending while the queue is empty
    /// and the connection open; `Ready(0)` once it is closed and empty.
    pub fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        take: impl FnMut(Outbound),
    ) -> Poll<usize> {
        let mut queue = lock(&self.shared.queue);
        if queue.items.is_empty() {
            if self.shared.closed.load(Ordering::Acquire) {
                return Poll::Ready(0);
            }
            if queue.items.capacity() > IDLE_QUEUE_CAPACITY {
                queue.items = VecDeque::new();
            }
            if !queue.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                queue.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        Poll::Ready(queue.take(max, take))
    }

    /// Moves up to `max` queued frames into `batch`, waiting for the first; returns 0 once the
    /// connection is closed and nothing is left.
    pub async fn recv_many(&mut self, batch: &mut Vec<Outbound>, max: usize) -> usize {
        std::future::poll_fn(|cx| self.poll_drain(cx, max, |item| batch.push(item))).await
    }

    /// Moves up to `max` queued frames into `batch` without waiting.
    pub fn try_recv_many(&mut self, batch: &mut Vec<Outbound>, max: usize) -> usize {
        lock(&self.shared.queue).take(max, |item| batch.push(item))
    }
}

/// Every live connection of this node, with per-app counts for the connection limit.
#[derive(Default)]
pub struct Connections {
    by_id: Mutex<HashMap<Arc<str>, ConnHandle>>,
    per_app: Mutex<HashMap<Arc<str>, usize>>,
    total: AtomicUsize,
    /// How many connections ended with each close code (by its number), since the start.
    closed_with: Mutex<HashMap<u16, u64>>,
}

impl Connections {
    /// Registers a connection unless its app already has `limit` connections.
    pub fn register(&self, conn: &ConnHandle, limit: usize) -> bool {
        {
            let mut per_app = self.per_app.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_app.entry(conn.app().clone()).or_insert(0);
            if *count >= limit {
                return false;
            }
            *count += 1;
        }
        self.by_id.lock().unwrap_or_else(|p| p.into_inner()).insert(conn.id().clone(), conn.clone());
        self.total.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Returns whether `app` has fewer than `limit` connections now (a registration may still
    /// find it full: this lets a handshake be refused before it is answered).
    pub fn has_room(&self, app: &str, limit: usize) -> bool {
        let per_app = self.per_app.lock().unwrap_or_else(|p| p.into_inner());
        per_app.get(app).is_none_or(|&count| count < limit)
    }

    /// Returns how many registered connections ended closed with `code` since the node started
    /// (what the server decided, whether or not the client read the close).
    pub fn closed_with(&self, code: CloseCode) -> u64 {
        lock(&self.closed_with).get(&code.number()).copied().unwrap_or(0)
    }

    /// Removes a registered connection.
    pub fn unregister(&self, conn: &ConnHandle) {
        if self.by_id.lock().unwrap_or_else(|p| p.into_inner()).remove(conn.id()).is_none() {
            return;
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(code) = conn.close_code() {
            *lock(&self.closed_with).entry(code.number()).or_insert(0) += 1;
        }
        let mut per_app = self.per_app.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_app.get_mut(conn.app()) {
            *count -= 1;
            if *count == 0 {
                per_app.remove(conn.app());
            }
        }
    }

    /// Closes every connection of `client` in `app` with `code`; returns how many there were.
    /// A scan of the node's connections: disconnecting is rare, and an index by client would
    /// cost every connection memory.
    pub fn close_client(&self, app: &str, client: &str, code: CloseCode) -> usize {
        let matching: Vec<ConnHandle> = self
            .by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|conn| &**conn.app() == app && &**conn.client() == client)
            .cloned()
            .collect();
        for conn in &matching {
            conn.close(code);
        }
        matching.len()
    }

    /// Closes every connection of `app` that `policy` no longer admits; returns how many.
    pub fn close_unadmitted(&self, app: &str, policy: Option<&AppPolicy>) -> usize {
        let of_app: Vec<ConnHandle> = self
            .by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|conn| &**conn.app() == app)
            .cloned()
            .collect();
        of_app.iter().filter(|conn| conn.close_unless_admitted(policy)).count()
    }

    /// Returns how many connections each app has on this node.
    pub fn per_app(&self) -> Vec<(Arc<str>, usize)> {
        self.per_app
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(app, n)| (app.clone(), *n))
            .collect()
    }

    /// Returns how many connections are registered.
    pub fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Returns whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection with `code`.
    pub fn close_all(&self, code: CloseCode) {
        let all: Vec<ConnHandle> =
            self.by_id.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for conn in all {
            conn.close(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use futures::task::noop_waker_ref;
    use tributary_protocol::CloseCode;

    use super::{ConnHandle, Credential, Outbound, Outbox};

    fn conn(items: usize, bytes: usize) -> (ConnHandle, Outbox) {
        ConnHandle::new("c1".into(), "app".into(), "client".into(), Credential::dummy(), items, bytes)
    }

    fn drain(outbox: &mut Outbox, max: usize) -> Poll<Vec<Bytes>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut got = Vec::new();
        outbox.poll_drain(&mut cx, max, |item| got.push(item.bytes().clone())).map(|_| got)
    }

    #[test]
    fn frames_come_out_in_order_and_in_bounded_batches() {
        let (conn, mut outbox) = conn(10, 1 << 20);
        for n in 0..5 {
            assert!(conn.push(Outbound::frame(Bytes::from(format!("{n}")))));
        }
        assert_eq!(drain(&mut outbox, 3), Poll::Ready(vec!["0".into(), "1".into(), "2".into()]));
        assert_eq!(drain(&mut outbox, 3), Poll::Ready(vec!["3".into(), "4".into()]));
        assert_eq!(drain(&mut outbox, 3), Poll::Pending, "empty and open: wait");
        assert_eq!(conn.room(), 10);
    }

    #[test]
    fn a_full_queue_closes_the_connection_and_takes_nothing_more() {
        let (conn, mut outbox) = conn(2, 1 << 20);
        assert!(conn.push(Outbound::frame(Bytes::from_static(b"a"))));
        assert!(conn.push(Outbound::frame(Bytes::from_static(b"b"))));
        assert!(!conn.push(Outbound::frame(Bytes::from_static(b"c"))), "the third does not fit");
        assert_eq!(conn.close_code(), Some(CloseCode::SlowConsumer));
        assert!(!conn.push(Outbound::frame(Bytes::from_static(b"d"))), "nothing after the close");
        // What was queued before the close is still a gap-free prefix, then the end.
        assert_eq!(drain(&mut outbox, 10), Poll::Ready(vec!["a".into(), "b".into()]));
        assert_eq!(drain(&mut outbox, 10), Poll::Ready(Vec::new()));
    }

    #[test]
    fn the_byte_limit_counts_what_is_queued_and_frees_what_is_taken() {
        let (conn, mut outbox) = conn(100, 10);
        assert!(conn.push(Outbound::frame(Bytes::from_static(b"123456"))));
        assert_eq!(conn.room_bytes(), 4);
        assert!(drain(&mut outbox, 10).is_ready());
        assert_eq!(conn.room_bytes(), 10);
        assert!(conn.push(Outbound::frame(Bytes::from_static(b"1234567890"))));
        assert!(!conn.push(Outbound::frame(Bytes::from_static(b"x"))));
        assert_eq!(conn.close_code(), Some(CloseCode::SlowConsumer));
    }

    #[test]
    fn the_first_close_code_wins_and_wakes_the_waiting_task() {
        let (conn, mut outbox) = conn(4, 100);
        assert_eq!(drain(&mut outbox, 1), Poll::Pending);
        conn.close(CloseCode::Shutdown);
        conn.close(CloseCode::SlowConsumer);
        assert_eq!(conn.close_code(), Some(CloseCode::Shutdown));
        assert!(conn.is_closed());
        assert_eq!(drain(&mut outbox, 1), Poll::Ready(Vec::new()));
    }
}
