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
    /// Any other frame: a reply or a presence event.
    Frame(Utf8Bytes),
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
    /// Creates a connection with a queue of `queue_len` frames; returns the handle and the
    /// receiving end for the connection's writer.
    pub fn new(id: Arc<str>, app: Arc<str>, queue_len: usize) -> (Self, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue_len);
        let shared = Shared { id, app, tx, closed: CancellationToken::new(), close_code: OnceLock::new() };
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

    /// Queues a frame without waiting. A full queue closes the connection as a slow consumer;
    /// returns whether the frame was queued.
    pub fn push(&self, item: Outbound) -> bool {
        match self.shared.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(CloseCode::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
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
