//! A session's subscriptions by channel: a vector kept sorted by channel name.
//!
//! Most connections hold one subscription or a few, and an idle connection's memory is the
//! product: a `BTreeMap` allocates a whole node (about 900 bytes) for its first entry, where this
//! holds exactly what it has until it grows past a handful. Lookups are a binary search.

use tributary_protocol::ChannelName;

use super::Subscription;

/// The subscriptions of one session, at most one per channel.
#[derive(Default)]
pub(crate) struct Subscriptions {
    sorted: Vec<Subscription>,
}

/// Entries added one at a time, without spare room, before the vector grows as usual.
const EXACT_UP_TO: usize = 4;

impl Subscriptions {
    fn find(&self, channel: &ChannelName) -> Result<usize, usize> {
        self.sorted.binary_search_by(|s| s.key.channel.cmp(channel))
    }

    /// Returns how many channels are subscribed.
    pub(crate) fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Returns whether `channel` is subscribed.
    pub(crate) fn contains_key(&self, channel: &ChannelName) -> bool {
        self.find(channel).is_ok()
    }

    /// Returns the subscription of `channel`.
    pub(crate) fn get(&self, channel: &ChannelName) -> Option<&Subscription> {
        self.find(channel).ok().map(|i| &self.sorted[i])
    }

    /// Returns the subscription of `channel`, to change it.
    pub(crate) fn get_mut(&mut self, channel: &ChannelName) -> Option<&mut Subscription> {
        self.find(channel).ok().map(|i| &mut self.sorted[i])
    }

    /// Adds a subscription, replacing one of the same channel.
    pub(crate) fn insert(&mut self, subscription: Subscription) {
        match self.find(&subscription.key.channel) {
            Ok(i) => self.sorted[i] = subscription,
            Err(i) => {
                if self.sorted.len() == self.sorted.capacity() && self.sorted.len() < EXACT_UP_TO {
                    self.sorted.reserve_exact(1);
                }
                self.sorted.insert(i, subscription);
            }
        }
    }

    /// Removes and returns the subscription of `channel`.
    pub(crate) fn remove(&mut self, channel: &ChannelName) -> Option<Subscription> {
        let removed = self.find(channel).ok().map(|i| self.sorted.remove(i));
        if self.sorted.is_empty() {
            // A connection that unsubscribed from everything keeps nothing.
            self.sorted = Vec::new();
        }
        removed
    }

    /// Returns the subscriptions in channel order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Subscription> {
        self.sorted.iter()
    }

    /// Removes and returns every subscription.
    pub(crate) fn take_all(&mut self) -> Vec<Subscription> {
        std::mem::take(&mut self.sorted)
    }
}
