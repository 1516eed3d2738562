//! MQTT sessions by app and client id, across connections. A client id is only ever looked up
//! within its app (the key is both), so no client id reaches into another app or tenant.
//!
//! A session is *online* while a connection serves it and *offline* (parked, with its
//! subscriptions still in the hub and its queue filling) until its expiry. A new connection
//! with the same client id takes it over: the old connection is closed with
//! [`CloseCode::SessionTakenOver`] and parks the session, which the new one then claims.
//! Generations tell a parked session from a later one of the same client id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tributary_protocol::CloseCode;

use super::client::Client;
use crate::conn::ConnHandle;
use crate::limits::TokenBucket;

type Key = (Arc<str>, Arc<str>);

enum Slot {
    /// A connection serves the session (`conn` is set once it is open).
    Online { generation: u64, conn: Option<ConnHandle> },
    /// No connection; the session waits for its client until it expires. `will` is cancelled
    /// when the client comes back (a delayed will is then not published), and so is `expiry`,
    /// the task that ends the session when its time is up (a device that reconnects often must
    /// not leave a sleeping task behind each time).
    Offline { generation: u64, client: Box<Client>, will: Option<CancellationToken>, expiry: AbortHandle },
}

/// The slots, with how many sessions each app has parked.
#[derive(Default)]
struct Slots {
    map: HashMap<Key, Slot>,
    parked: HashMap<Arc<str>, usize>,
}

impl Slots {
    fn insert(&mut self, key: Key, slot: Slot) {
        if matches!(slot, Slot::Offline { .. }) {
            *self.parked.entry(key.0.clone()).or_default() += 1;
        }
        if let Some(old) = self.map.insert(key.clone(), slot) {
            self.forget(&key.0, &old);
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Slot> {
        let slot = self.map.remove(key)?;
        self.forget(&key.0, &slot);
        Some(slot)
    }

    fn forget(&mut self, app: &Arc<str>, slot: &Slot) {
        if matches!(slot, Slot::Offline { .. })
            && let Some(count) = self.parked.get_mut(app)
        {
            *count -= 1;
            if *count == 0 {
                self.parked.remove(app);
            }
        }
    }
}

/// Every MQTT session of this node.
#[derive(Default)]
pub struct Sessions {
    slots: Mutex<Slots>,
    generations: AtomicU64,
    /// New connections of this node's MQTT listeners (`max_connections_per_second`); made
    /// full on first use.
    connects: Mutex<Option<TokenBucket>>,
    /// The deadlines of this node's hibernating connections.
    pub(super) alarms: super::hibernate::Alarms,
    /// This node, as copies of its sessions name it (see `handoff`).
    node: NodeId,
}

/// A node's random id.
struct NodeId(String);

impl Default for NodeId {
    fn default() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// What a new connection found for its client id.
pub(super) struct Claim {
    /// This connection's generation of the session.
    pub generation: u64,
    /// The session it resumes, if one was parked.
    pub previous: Option<Box<Client>>,
}

/// How long a new connection waits for the connection it takes over to let go.
/// Longer than a connection's goodbye can take (its last write, its shutdown, each at most 2 s),
/// so a connection that stopped reading still parks its session in time.
const TAKEOVER_WAIT: Duration = Duration::from_secs(8);

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node.0
    }

    /// Takes one new connection from the node's connection rate; false when it is spent.
    pub(super) fn admit_connect(&self, per_second: u32) -> bool {
        let mut bucket = self.connects.lock().unwrap_or_else(|p| p.into_inner());
        bucket.get_or_insert_with(|| TokenBucket::new(per_second)).try_take(per_second, per_second)
    }

    /// Returns how many sessions are parked (waiting for their clients).
    pub fn parked(&self) -> usize {
        self.lock().parked.values().sum()
    }

    /// Returns how many sessions of `app` are parked on this node.
    pub fn parked_in(&self, app: &str) -> usize {
        self.lock().parked.get(app).copied().unwrap_or(0)
    }

    /// Claims the session of `client` in `app` for a new connection: a parked one is handed
    /// over, a live one is taken over (its connection closed, then its session parked and
    /// handed over). An old connection that does not let go within [`TAKEOVER_WAIT`] loses its
    /// session: the new connection starts a fresh one.
    pub(super) async fn claim(&self, app: &Arc<str>, client: &Arc<str>) -> Claim {
        let key = (app.clone(), client.clone());
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            {
                let mut slots = self.lock();
                match slots.remove(&key) {
                    None => {
                        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
                        slots.insert(key, Slot::Online { generation, conn: None });
                        return Claim { generation, previous: None };
                    }
                    Some(Slot::Offline { client, will, expiry, .. }) => {
                        // MQTT-3.1.3-9: a client back within its will delay cancels the will.
                        if let Some(will) = will {
                            will.cancel();
                        }
                        expiry.abort();
                        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
                        slots.insert(key.clone(), Slot::Online { generation, conn: None });
                        return Claim { generation, previous: Some(client) };
                    }
                    Some(Slot::Online { generation, conn }) => {
                        if let Some(conn) = &conn {
                            conn.close(CloseCode::SessionTakenOver);
                        }
                        slots.insert(key.clone(), Slot::Online { generation, conn });
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                // The connection was told to close and has not let go: its task is stuck or
                // gone (a panic would leave the slot behind for good). The client id is not
                // held hostage: the new connection takes it, and the old one, should it ever
                // finish, finds itself superseded and ends its session.
                let mut slots = self.lock();
                if matches!(slots.map.get(&key), Some(Slot::Online { .. })) {
                    tracing::warn!(client = %key.1, "the previous connection did not let go; taking its session over");
                    let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
                    slots.insert(key, Slot::Online { generation, conn: None });
                    return Claim { generation, previous: None };
                }
                drop(slots);
                continue;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Takes generation `generation` of a session for ending (another node serves the session
    /// now): parked, it is handed back at once (its delayed will cancelled, as the client came
    /// back); online, its connection is closed as taken over and the session handed back once
    /// it parked. Any other generation (a newer connection here) is left alone.
    pub(super) async fn take_generation(
        &self,
        app: &Arc<str>,
        client: &Arc<str>,
        generation: u64,
    ) -> Option<Box<Client>> {
        let key = (app.clone(), client.clone());
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            {
                let mut slots = self.lock();
                match slots.map.get(&key) {
                    Some(Slot::Offline { generation: g, .. }) if *g == generation => {
                        let Some(Slot::Offline { client, will, expiry, .. }) = slots.remove(&key) else {
                            return None;
                        };
                        if let Some(will) = will {
                            will.cancel();
                        }
                        expiry.abort();
                        return Some(client);
                    }
                    Some(Slot::Online { generation: g, conn }) if *g == generation => {
                        if let Some(conn) = conn {
                            conn.close(CloseCode::SessionTakenOver);
                        }
                    }
                    _ => return None,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Records the connection serving generation `generation`, so a takeover can close it.
    /// Returns false when a newer connection holds the client id now (this one took too long
    /// to open): the caller gives up.
    #[must_use = "a superseded connection must not serve"]
    pub(super) fn attach(
        &self,
        app: &Arc<str>,
        client: &Arc<str>,
        generation: u64,
        conn: &ConnHandle,
    ) -> bool {
        let key = (app.clone(), client.clone());
        match self.lock().map.get_mut(&key) {
            Some(Slot::Online { generation: g, conn: slot }) if *g == generation => {
                *slot = Some(conn.clone());
                true
            }
            _ => false,
        }
    }

    /// Ends generation `generation`'s connection and forgets its session.
    pub(super) fn release(&self, app: &Arc<str>, client: &Arc<str>, generation: u64) {
        let key = (app.clone(), client.clone());
        let mut slots = self.lock();
        if matches!(slots.map.get(&key), Some(Slot::Online { generation: g, .. }) if *g == generation) {
            slots.remove(&key);
        }
    }

    /// Ends generation `generation`'s connection and parks its session, with the token that
    /// cancels its delayed will. A session that cannot be parked because a newer connection
    /// holds the client id now is handed back, to be ended.
    #[must_use = "a session handed back must be ended"]
    pub(super) fn park(
        &self,
        app: &Arc<str>,
        client_id: &Arc<str>,
        generation: u64,
        client: Box<Client>,
        will: Option<CancellationToken>,
        expiry: AbortHandle,
    ) -> Option<Box<Client>> {
        let key = (app.clone(), client_id.clone());
        let mut slots = self.lock();
        if !matches!(slots.map.get(&key), Some(Slot::Online { generation: g, .. }) if *g == generation) {
            return Some(client);
        }
        // Revoked or suspended while the connection said goodbye: not kept (the control event
        // that closed it looked for parked sessions before this one was parked).
        if matches!(
            client.session.conn().close_code(),
            Some(CloseCode::Revoked | CloseCode::TenantSuspended | CloseCode::InvalidToken)
        ) {
            slots.remove(&key);
            return Some(client);
        }
        slots.insert(key, Slot::Offline { generation, client, will, expiry });
        None
    }

    /// Takes out the parked sessions of `app` that `ends` picks (a revoked client, a suspended
    /// tenant), cancelling their delayed wills: they are not waited for any more.
    #[allow(clippy::vec_box, reason = "sessions are boxed in the registry and handed on as they are")]
    pub(super) fn take_parked(&self, app: &str, ends: impl Fn(&Client) -> bool) -> Vec<Box<Client>> {
        let mut slots = self.lock();
        let keys: Vec<Key> = slots
            .map
            .iter()
            .filter(|((a, _), slot)| {
                &**a == app && matches!(slot, Slot::Offline { client, .. } if ends(client))
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut taken = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(Slot::Offline { client, will, expiry, .. }) = slots.remove(&key) {
                if let Some(will) = will {
                    will.cancel();
                }
                expiry.abort();
                taken.push(client);
            }
        }
        taken
    }

    /// Takes generation `generation`'s session out if it is still parked (its expiry came).
    pub(super) fn expire(&self, app: &Arc<str>, client: &Arc<str>, generation: u64) -> Option<Box<Client>> {
        let key = (app.clone(), client.clone());
        let mut slots = self.lock();
        if !matches!(slots.map.get(&key), Some(Slot::Offline { generation: g, .. }) if *g == generation) {
            return None;
        }
        match slots.remove(&key) {
            Some(Slot::Offline { client, .. }) => Some(client),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_lets_go_loses_its_client_id_after_the_wait() {
        let sessions = Sessions::default();
        let (app, client): (Arc<str>, Arc<str>) = (Arc::from("app"), Arc::from("device"));
        // The first connection claims the client id and then never attaches or releases (its
        // task died).
        let first = sessions.claim(&app, &client).await;
        let started = tokio::time::Instant::now();
        let second = sessions.claim(&app, &client).await;
        assert!(started.elapsed() >= TAKEOVER_WAIT, "it waited for the first to let go");
        assert!(second.generation > first.generation && second.previous.is_none());
        // The first, finishing its opening late, is told it was superseded; releasing changes
        // nothing.
        let (conn, _outbox) = ConnHandle::new(
            "c1".into(),
            app.clone(),
            client.clone(),
            crate::policy::Credential::dummy(),
            16,
            1 << 20,
        );
        assert!(!sessions.attach(&app, &client, first.generation, &conn), "superseded");
        sessions.release(&app, &client, first.generation);
        let third = tokio::time::timeout(Duration::from_millis(1), sessions.claim(&app, &client)).await;
        assert!(third.is_err(), "the second still holds the client id");
        sessions.release(&app, &client, second.generation);
        let fourth = tokio::time::timeout(Duration::from_millis(1), sessions.claim(&app, &client)).await;
        assert!(fourth.is_ok(), "released, the client id is free at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_word_that_a_session_moved_leaves_a_newer_connection_alone() {
        let sessions = Sessions::default();
        let (app, client): (Arc<str>, Arc<str>) = (Arc::from("app"), Arc::from("device"));
        let old = sessions.claim(&app, &client).await;
        sessions.release(&app, &client, old.generation);
        // The client came back to this node before the word about its old session arrived.
        let newer = sessions.claim(&app, &client).await;
        let (conn, _outbox) = ConnHandle::new(
            "c2".into(),
            app.clone(),
            client.clone(),
            crate::policy::Credential::dummy(),
            16,
            1 << 20,
        );
        assert!(sessions.attach(&app, &client, newer.generation, &conn));
        let started = tokio::time::Instant::now();
        assert!(sessions.take_generation(&app, &client, old.generation).await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO, "nothing waited for");
        assert!(!conn.is_closed(), "the newer connection stays");
        // The generation it names is closed as taken over.
        let waiting = sessions.take_generation(&app, &client, newer.generation);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiting).await.is_err(),
            "waits for it to park"
        );
        assert_eq!(conn.close_code(), Some(CloseCode::SessionTakenOver));
    }
}
