//! A history checker: it records every publish a test attempted and every one that was
//! acknowledged, every position a subscriber (re)started from, and every delivery, then reports
//! what the guarantees forbid.
//!
//! - **lost**: an acknowledged message a subscriber should have received (same epoch, after the
//!   position it started from, not inside a gap it was told about) and never did;
//! - **duplicated**: the same position delivered twice to one subscriber;
//! - **reordered**: a delivery at an offset below the previous one of the same epoch;
//! - **phantom**: a delivery of something never published, or of another message than the one
//!   acknowledged at that position;
//! - **silent gaps**: a subscriber's offsets jump (same epoch) with no `recovered: false` to say so,
//!   or its deliveries move to another epoch than the one it (re)started in;
//! - **reused offsets**: two different messages acknowledged at the same position.
//!
//! Subscribers and channels are plain strings; messages are identified by an id the test puts in
//! the payload. The checker is synchronous and cheap, so tests can feed it from many tasks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

/// A stream position: the epoch and the offset.
type Position = (String, u64);

#[derive(Default)]
struct Subscriber {
    /// Where each subscription (re)started, per channel, in order.
    starts: HashMap<String, Vec<Position>>,
    /// What arrived, per channel, in order: (position, message id).
    deliveries: HashMap<String, Vec<(Position, String)>>,
    /// Gaps the subscriber was told about, per channel: (epoch, after, up to).
    declared_gaps: HashMap<String, Vec<(String, u64, u64)>>,
    /// Deliveries in another epoch than the one the subscription last started in (a move to a
    /// new epoch nobody announced): (channel, offset).
    unannounced_epochs: Vec<(String, u64)>,
    /// Where the subscriber is, per channel: its last delivery or (re)start, whichever is later.
    latest: HashMap<String, Position>,
    /// (Re)starts answered `recovered: false`.
    unrecovered: usize,
}

#[derive(Default)]
struct State {
    attempted: HashSet<String>,
    /// Acknowledged publishes: channel → position → message ids acknowledged there.
    acked: HashMap<String, BTreeMap<Position, Vec<String>>>,
    subscribers: HashMap<String, Subscriber>,
}

/// Records a test's publishes and deliveries; [`HistoryChecker::report`] finds the anomalies.
#[derive(Default)]
pub struct HistoryChecker {
    state: Mutex<State>,
}

/// What [`HistoryChecker::report`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Publishes attempted.
    pub published: usize,
    /// Publishes acknowledged.
    pub acknowledged: usize,
    /// Deliveries, all subscribers together.
    pub delivered: usize,
    /// Acknowledged messages a subscriber should have received and did not: (subscriber, id).
    pub lost: Vec<(String, String)>,
    /// Positions delivered twice to one subscriber: (subscriber, channel, offset).
    pub duplicated: Vec<(String, String, u64)>,
    /// Deliveries below the previous offset of the same epoch: (subscriber, channel, offset).
    pub reordered: Vec<(String, String, u64)>,
    /// Deliveries of something never published there: (subscriber, id).
    pub phantom: Vec<(String, String)>,
    /// Jumps in a subscriber's offsets nobody announced: (subscriber, channel, from, to).
    pub silent_gaps: Vec<(String, String, u64, u64)>,
    /// Positions acknowledged for two different messages: (channel, offset).
    pub reused_offsets: Vec<(String, u64)>,
    /// Acknowledged messages a subscriber did not get but was told it would not (a
    /// `recovered: false`): losses that are announced, which [`Report::is_clean`] still counts
    /// as failures unless the test expects them ([`Report::is_clean_but_announced`]).
    pub announced_losses: usize,
    /// (Re)subscriptions answered `recovered: false`.
    pub unrecovered: usize,
}

impl Report {
    /// Returns whether nothing the guarantees forbid happened and nothing was lost, announced
    /// or not: every recovery recovered. The verdict for tests where history covers every gap.
    pub fn is_clean(&self) -> bool {
        self.is_clean_but_announced() && self.announced_losses == 0 && self.unrecovered == 0
    }

    /// Returns whether nothing the guarantees forbid happened, allowing losses the subscribers
    /// were told about (`recovered: false`): for tests where a loss is expected (history gone
    /// with a Redis that kept nothing), which should assert that it was announced.
    pub fn is_clean_but_announced(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.reordered.is_empty()
            && self.phantom.is_empty()
            && self.silent_gaps.is_empty()
            && self.reused_offsets.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "published {}, acknowledged {}, delivered {}, lost {}, duplicated {}, reordered {}, phantom {}, \
             silent gaps {}, reused offsets {}, announced losses {}, unrecovered starts {}",
            self.published,
            self.acknowledged,
            self.delivered,
            self.lost.len(),
            self.duplicated.len(),
            self.reordered.len(),
            self.phantom.len(),
            self.silent_gaps.len(),
            self.reused_offsets.len(),
            self.announced_losses,
            self.unrecovered
        )
    }
}

fn lock(mutex: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HistoryChecker {
    /// Creates an empty checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a publish of message `id` was attempted (acknowledged or not).
    pub fn attempted(&self, id: &str) {
        lock(&self.state).attempted.insert(id.to_owned());
    }

    /// Records that message `id` was acknowledged on `channel` at `(epoch, offset)`.
    pub fn acknowledged(&self, channel: &str, id: &str, epoch: &str, offset: u64) {
        let mut state = lock(&self.state);
        state.attempted.insert(id.to_owned());
        let at =
            state.acked.entry(channel.to_owned()).or_default().entry((epoch.to_owned(), offset)).or_default();
        if !at.iter().any(|known| known == id) {
            at.push(id.to_owned());
        }
    }

    /// Records that `subscriber` (re)subscribed to `channel` starting after `(epoch, offset)`.
    /// `recovered: Some(false)` declares that what came between its last delivery and this
    /// position is not coming (the client was told); when the epoch changed, the rest of the old
    /// epoch is not coming either.
    pub fn started(
        &self,
        subscriber: &str,
        channel: &str,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
    ) {
        let mut state = lock(&self.state);
        let sub = state.subscribers.entry(subscriber.to_owned()).or_default();
        if recovered == Some(false) {
            sub.unrecovered += 1;
            let gaps = sub.declared_gaps.entry(channel.to_owned()).or_default();
            let after = match sub.latest.get(channel) {
                Some((e, o)) if e == epoch => *o,
                Some((e, o)) => {
                    gaps.push((e.clone(), *o, u64::MAX));
                    0
                }
                None => 0,
            };
            gaps.push((epoch.to_owned(), after, offset));
        }
        sub.latest.insert(channel.to_owned(), (epoch.to_owned(), offset));
        sub.starts.entry(channel.to_owned()).or_default().push((epoch.to_owned(), offset));
    }

    /// Records that `subscriber` received message `id` on `channel` at `(epoch, offset)`.
    pub fn delivered(&self, subscriber: &str, channel: &str, epoch: &str, offset: u64, id: &str) {
        let mut state = lock(&self.state);
        let sub = state.subscribers.entry(subscriber.to_owned()).or_default();
        if sub.starts.get(channel).and_then(|s| s.last()).is_some_and(|(started, _)| started != epoch) {
            sub.unannounced_epochs.push((channel.to_owned(), offset));
        }
        sub.latest.insert(channel.to_owned(), (epoch.to_owned(), offset));
        sub.deliveries
            .entry(channel.to_owned())
            .or_default()
            .push(((epoch.to_owned(), offset), id.to_owned()));
    }

    /// Checks everything recorded. Call it once the system is quiet: a message still in
    /// flight counts as lost.
    pub fn report(&self) -> Report {
        let state = lock(&self.state);
        let mut report = Report {
            published: state.attempted.len(),
            acknowledged: state
                .acked
                .values()
                .map(|positions| positions.values().map(Vec::len).sum::<usize>())
                .sum(),
            ..Report::default()
        };
        for (channel, positions) in &state.acked {
            for ((_, offset), ids) in positions {
                if ids.len() > 1 {
                    report.reused_offsets.push((channel.clone(), *offset));
                }
            }
        }
        for (name, sub) in &state.subscribers {
            report.unrecovered += sub.unrecovered;
            for (channel, offset) in &sub.unannounced_epochs {
                report.silent_gaps.push((name.clone(), channel.clone(), 0, *offset));
            }
            for (channel, deliveries) in &sub.deliveries {
                report.delivered += deliveries.len();
                check_deliveries(name, channel, deliveries, sub, &state, &mut report);
            }
            for (channel, starts) in &sub.starts {
                check_complete(name, channel, starts, sub, &state, &mut report);
            }
        }
        report
    }
}

/// Duplicates, reordering, phantoms and silent gaps in one subscriber's deliveries.
fn check_deliveries(
    name: &str,
    channel: &str,
    deliveries: &[(Position, String)],
    sub: &Subscriber,
    state: &State,
    report: &mut Report,
) {
    let acked = state.acked.get(channel);
    let declared = sub.declared_gaps.get(channel).map(Vec::as_slice).unwrap_or_default();
    let mut seen = HashSet::new();
    let mut last: Option<&Position> = None;
    for (position, id) in deliveries {
        if !seen.insert(position) {
            report.duplicated.push((name.to_owned(), channel.to_owned(), position.1));
            continue;
        }
        let known = state.attempted.contains(id);
        let matches_ack = acked.and_then(|a| a.get(position)).is_none_or(|ids| ids.contains(id));
        if !known || !matches_ack {
            report.phantom.push((name.to_owned(), id.clone()));
        }
        if let Some(previous) = last
            && previous.0 == position.0
        {
            if position.1 < previous.1 {
                report.reordered.push((name.to_owned(), channel.to_owned(), position.1));
            } else if position.1 > previous.1 + 1 {
                let told = declared.iter().any(|(e, after, upto)| {
                    *e == position.0 && *after <= previous.1 && *upto + 1 >= position.1
                });
                if !told {
                    report.silent_gaps.push((name.to_owned(), channel.to_owned(), previous.1, position.1));
                }
            }
        }
        last = Some(position);
    }
}

/// Acknowledged messages after each start of a subscription that never arrived.
fn check_complete(
    name: &str,
    channel: &str,
    starts: &[Position],
    sub: &Subscriber,
    state: &State,
    report: &mut Report,
) {
    let Some(acked) = state.acked.get(channel) else { return };
    let got: HashSet<&Position> =
        sub.deliveries.get(channel).map(|d| d.iter().map(|(p, _)| p).collect()).unwrap_or_default();
    let declared = sub.declared_gaps.get(channel).map(Vec::as_slice).unwrap_or_default();
    let mut expected = HashSet::new();
    for (epoch, after) in starts {
        for ((e, offset), ids) in acked.range((epoch.clone(), after + 1)..) {
            if e != epoch {
                break;
            }
            let in_gap =
                declared.iter().any(|(ge, from, upto)| ge == e && *from < *offset && *offset <= *upto);
            if !in_gap && expected.insert((e, *offset)) && !got.contains(&(e.clone(), *offset)) {
                for id in ids {
                    report.lost.push((name.to_owned(), id.clone()));
                }
            }
        }
    }
    // What the subscriber was told it would not get, and did not.
    let mut announced = HashSet::new();
    for (epoch, from, upto) in declared {
        for ((e, offset), ids) in acked.range((epoch.clone(), from + 1)..) {
            if e != epoch || offset > upto {
                break;
            }
            if !got.contains(&(e.clone(), *offset)) && announced.insert((e, *offset)) {
                report.announced_losses += ids.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HistoryChecker;

    fn publish(c: &HistoryChecker, id: &str, offset: u64) {
        c.attempted(id);
        c.acknowledged("ch", id, "E", offset);
    }

    #[test]
    fn a_complete_ordered_history_is_clean() {
        let c = HistoryChecker::new();
        c.started("s", "ch", "E", 0, None);
        for n in 1..=3 {
            publish(&c, &format!("m{n}"), n);
            c.delivered("s", "ch", "E", n, &format!("m{n}"));
        }
        let report = c.report();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!((report.published, report.acknowledged, report.delivered), (3, 3, 3));
    }

    #[test]
    fn a_new_epoch_announced_with_recovered_false_excuses_the_rest_of_the_old_one() {
        let c = HistoryChecker::new();
        c.started("s", "ch", "E", 0, None);
        for n in 1..=3 {
            publish(&c, &format!("m{n}"), n);
        }
        c.delivered("s", "ch", "E", 1, "m1");
        c.delivered("s", "ch", "E", 2, "m2");
        for n in 1..=3 {
            c.attempted(&format!("f{n}"));
            c.acknowledged("ch", &format!("f{n}"), "F", n);
        }
        c.started("s", "ch", "F", 2, Some(false));
        c.delivered("s", "ch", "F", 3, "f3");
        let report = c.report();
        assert!(report.is_clean_but_announced(), "{report:?}");
        assert!(!report.is_clean(), "an announced loss is still a loss unless the test expects it");
        assert_eq!(report.announced_losses, 3, "m3, f1 and f2 were missed, and the subscriber was told");
        assert_eq!(report.unrecovered, 1);
        // Two announced epoch changes in a row, the second before anything of the first
        // arrived: both old epochs' tails are excused.
        let c = HistoryChecker::new();
        c.started("s", "ch", "E", 0, None);
        publish(&c, "m1", 1);
        c.acknowledged("ch", "f1", "F", 1);
        c.started("s", "ch", "F", 0, Some(false));
        c.acknowledged("ch", "f2", "F", 2);
        c.started("s", "ch", "G", 0, Some(false));
        let report = c.report();
        assert!(report.lost.is_empty(), "{report:?}");
        assert_eq!(report.announced_losses, 3);
        // Moving to the new epoch without being told is a silent gap.
        let c = HistoryChecker::new();
        c.started("s", "ch", "E", 0, None);
        publish(&c, "m1", 1);
        c.acknowledged("ch", "f1", "F", 1);
        c.delivered("s", "ch", "F", 1, "f1");
        assert_eq!(c.report().silent_gaps.len(), 1);
        // Without the announcement the same loss is a loss.
        let c = HistoryChecker::new();
        c.started("s", "ch", "E", 0, None);
        publish(&c, "m1", 1);
        c.started("s", "ch", "F", 0, None);
        assert_eq!(c.report().lost.len(), 1);
    }

    #[test]
    fn every_kind_of_anomaly_is_reported() {
        let c = HistoryChecker::new();
        c.started("s", "ch", "E", 0, None);
        for n in 1..=6 {
            publish(&c, &format!("m{n}"), n);
        }
        c.acknowledged("ch", "other", "E", 6);
        for (offset, id) in [(1, "m1"), (3, "m3"), (3, "m3"), (2, "m2"), (5, "nobody"), (6, "m6")] {
            c.delivered("s", "ch", "E", offset, id);
        }
        let report = c.report();
        assert_eq!(report.duplicated, vec![("s".into(), "ch".into(), 3)]);
        assert_eq!(report.reordered, vec![("s".into(), "ch".into(), 2)]);
        assert_eq!(report.phantom, vec![("s".into(), "nobody".into())]);
        assert_eq!(report.reused_offsets, vec![("ch".into(), 6)]);
        assert!(report.silent_gaps.contains(&("s".into(), "ch".into(), 1, 3)), "{report:?}");
        assert!(report.silent_gaps.contains(&("s".into(), "ch".into(), 2, 5)), "{report:?}");
        assert_eq!(report.lost, vec![("s".into(), "m4".into())], "5 arrived, though as a phantom");
        assert!(!report.is_clean());
    }

    #[test]
    fn a_gap_the_client_was_told_about_is_neither_lost_nor_silent() {
        let c = HistoryChecker::new();
        c.started("s", "ch", "E", 0, None);
        for n in 1..=5 {
            publish(&c, &format!("m{n}"), n);
        }
        c.delivered("s", "ch", "E", 1, "m1");
        // Reconnects, is told `recovered: false` and goes on live from 4.
        c.started("s", "ch", "E", 4, Some(false));
        c.delivered("s", "ch", "E", 5, "m5");
        let report = c.report();
        assert!(report.is_clean_but_announced(), "{report:?}");
        assert_eq!((report.announced_losses, report.unrecovered), (3, 1), "m2, m3 and m4");
        assert!(!report.is_clean(), "the default verdict refuses announced losses");
    }

    #[test]
    fn a_recovery_that_says_recovered_false_fails_the_default_verdict_even_if_nothing_was_missed() {
        let c = HistoryChecker::new();
        c.started("s", "ch", "E", 0, None);
        publish(&c, "m1", 1);
        c.delivered("s", "ch", "E", 1, "m1");
        c.started("s", "ch", "E", 1, Some(false));
        let report = c.report();
        assert_eq!((report.announced_losses, report.unrecovered), (0, 1));
        assert!(!report.is_clean());
    }

    #[test]
    fn an_unacknowledged_publish_may_be_missing_but_not_invented() {
        let c = HistoryChecker::new();
        c.started("s", "ch", "E", 0, None);
        c.attempted("maybe");
        publish(&c, "m1", 1);
        c.delivered("s", "ch", "E", 1, "m1");
        let report = c.report();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.published, 2);
    }
}
