//! Connections as the rest of the relay sees them: a bounded outbound queue and a way to close.
//!
//! Every frame for a connection (replies, messages, presence events) goes through its one
//! bounded queue, so their order is the order they were queued in. A full queue never blocks
//! and never grows: the connection is closed as a slow consumer, with a code that tells the
//! client to reconnect and recover its position.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary_protocol::{ChannelName, CloseCode};

/// A publication's frame, encoded once and shared by every subscriber of this node.
#[derive(Debug)]
pub struct PreparedMessage {
    /// The `message` frame.
    pub frame: Utf8Bytes,
    /// The channel.
    pub channel: ChannelName,
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The publication's offset.
    pub offset: u64,
}

/// One item of a connection's outbound queue.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A publication (shared by all subscribers; cloning is a reference count).
    Message(Arc<PreparedMessage>),
    /// Any other frame: a reply or a presence event. Behind an `Arc` so that an `Outbound` is
    /// two words: every connection's queue allocates its slots up front.
    Frame(Arc<Utf8Bytes>),
}

impl Outbound {
    /// Wraps an encoded frame (a reply or an event).
    pub fn frame(encoded: bytes::Bytes) -> Self {
        Outbound::Frame(Arc::new(text(encoded)))
    }

    /// Returns the frame's size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Outbound::Message(m) => m.frame.len(),
            Outbound::Frame(f) => f.len(),
        }
    }

    /// Returns whether the frame is empty (never, for frames we build).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Converts an encoded frame to WebSocket text. Our encoders produce UTF-8 JSON, so the check
/// is a formality done once per frame, never per subscriber.
pub fn text(frame: bytes::Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(frame).unwrap_or_else(|_| Utf8Bytes::from(r#"{"type":"error"}"#))
}

struct Shared {
    id: Arc<str>,
    app: Arc<str>,
    tx: mpsc::Sender<Outbound>,
    closed: CancellationToken,
    close_code: OnceLock<CloseCode>,
    /// Bytes in the queue: a count limit alone would let a few huge replies pin gigabytes.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
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
    /// bytes; returns the handle and the receiving end for whatever writes the connection, which must
    /// call [`ConnHandle::dequeued`] for what it takes.
    pub fn new(
        id: Arc<str>,
        app: Arc<str>,
        queue_len: usize,
        max_queued_bytes: usize,
    ) -> (Self, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue_len);
        let shared = Shared {
            id,
            app,
            tx,
            closed: CancellationToken::new(),
            close_code: OnceLock::new(),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
        };
        (Self { shared: Arc::new(shared) }, rx)
    }

    /// Returns the connection id.
    pub fn id(&self) -> &Arc<str> {
        &self.shared.id
    }

    /// Returns the app id.
    pub fn app(&self) -> &Arc<str> {
        &self.shared.app
    }

    /// Queues a frame without waiting. A queue full by count or by bytes closes the connection
    /// as a slow consumer. Returns whether the frame was queued; after a close nothing is, so
    /// what a client received before the close is always a gap-free prefix.
    pub fn push(&self, item: Outbound) -> bool {
        if self.shared.closed.is_cancelled() {
            return false;
        }
        let len = item.len();
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.shared.max_queued_bytes {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.close(CloseCode::SlowConsumer);
            return false;
        }
        match self.shared.tx.try_send(item) {
            Ok(()) => true,
            Err(err) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                if matches!(err, mpsc::error::TrySendError::Full(_)) {
                    self.close(CloseCode::SlowConsumer);
                }
                false
            }
        }
    }

    /// Records that `items` were taken off the queue.
    pub fn dequeued(&self, items: &[Outbound]) {
        let bytes: usize = items.iter().map(Outbound::len).sum();
        self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Returns how many more bytes the queue can take now.
    pub fn room_bytes(&self) -> usize {
        self.shared.max_queued_bytes.saturating_sub(self.shared.queued_bytes.load(Ordering::Acquire))
    }

    /// Returns how many more frames the queue can take now.
    pub fn room(&self) -> usize {
        self.shared.tx.capacity()
    }

    /// Closes the connection with `code`; the first code wins.
    pub fn close(&self, code: CloseCode) {
        let _ = self.shared.close_code.set(code);
        self.shared.closed.cancel();
    }

    /// Returns the code the connection was closed with, if it was.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.shared.close_code.get().copied()
    }

    /// Returns a token cancelled when the connection is closed.
    pub fn closed(&self) -> &CancellationToken {
        &self.shared.closed
    }
}

/// Every live connection of this node, with per-app counts for the connection limit.
#[derive(Default)]
pub struct Connections {
    by_id: Mutex<HashMap<Arc<str>, ConnHandle>>,
    per_app: Mutex<HashMap<Arc<str>, usize>>,
    total: AtomicUsize,
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

    /// Removes a registered connection.
    pub fn unregister(&self, conn: &ConnHandle) {
        if self.by_id.lock().unwrap_or_else(|p| p.into_inner()).remove(conn.id()).is_none() {
            return;
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
        let mut per_app = self.per_app.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_app.get_mut(conn.app()) {
            *count -= 1;
            if *count == 0 {
                per_app.remove(conn.app());
            }
        }
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
