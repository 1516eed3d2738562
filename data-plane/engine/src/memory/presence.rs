//! One channel's presence set: connections, grouped by client id.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;
use tributary_protocol::frame::MemberInfo;

use crate::contract::Occupancy;

struct Entry {
    member: MemberInfo,
    expires_at: Instant,
    announce: bool,
}

/// The connections present on a channel.
#[derive(Default)]
pub(crate) struct PresenceSet {
    by_conn: HashMap<Arc<str>, Entry>,
    /// Connections per client id: join is the first, leave the last.
    per_client: HashMap<Arc<str>, usize>,
}

/// What removing an entry did.
pub(crate) struct Removed {
    pub(crate) member: MemberInfo,
    /// Whether it was the client id's last connection.
    pub(crate) left: bool,
    pub(crate) announce: bool,
}

impl PresenceSet {
    /// Adds or refreshes a connection; returns whether the client id joined.
    pub(crate) fn join(&mut self, member: MemberInfo, expires_at: Instant, announce: bool) -> bool {
        if let Some(entry) = self.by_conn.get_mut(&member.conn_id) {
            entry.expires_at = expires_at;
            if member.state.is_some() {
                entry.member.state = member.state;
            }
            return false;
        }
        let count = self.per_client.entry(member.client_id.clone()).or_insert(0);
        *count += 1;
        let joined = *count == 1;
        self.by_conn.insert(member.conn_id.clone(), Entry { member, expires_at, announce });
        joined
    }

    /// Replaces a connection's state; returns the updated member if it is present.
    pub(crate) fn update(&mut self, member: MemberInfo) -> Option<MemberInfo> {
        let entry = self.by_conn.get_mut(&member.conn_id)?;
        if entry.member.client_id != member.client_id {
            return None;
        }
        entry.member.state = member.state;
        Some(entry.member.clone())
    }

    pub(crate) fn remove(&mut self, conn_id: &str) -> Option<Removed> {
        let entry = self.by_conn.remove(conn_id)?;
        let client_id = entry.member.client_id.clone();
        let left = match self.per_client.get_mut(&client_id) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                self.per_client.remove(&client_id);
                true
            }
        };
        Some(Removed { member: entry.member, left, announce: entry.announce })
    }

    /// Removes entries that expired before `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Removed> {
        let expired: Vec<Arc<str>> =
            self.by_conn.iter().filter(|(_, e)| e.expires_at <= now).map(|(k, _)| k.clone()).collect();
        expired.iter().filter_map(|conn_id| self.remove(conn_id)).collect()
    }

    pub(crate) fn members(&self) -> Vec<MemberInfo> {
        self.by_conn.values().map(|e| e.member.clone()).collect()
    }

    pub(crate) fn occupancy(&self) -> Occupancy {
        Occupancy { members: self.per_client.len(), connections: self.by_conn.len() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }
}
