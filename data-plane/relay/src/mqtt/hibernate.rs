//! Idle connections without a task.
//!
//! Most devices are idle most of the time, and a task waiting for them was the largest part of
//! what an idle connection costs. A connection with nothing to do hands what it keeps (its
//! stream and session, boxed) to its [`Hibernation`] and its task ends. The hibernation is the
//! waker the socket and the connection's queue were last polled with, so bytes from the client,
//! a queued message or the connection's close wake it; its deadlines (keep-alive, presence
//! heartbeat, the token's expiry) are [`Alarms`], rung by one task per node. Waking spawns a
//! new task that goes on where the last one stopped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::Wake;
use std::time::Duration;

use tokio::time::Instant;

/// How often alarms are rung: deadlines of hibernating connections are kept to this precision
/// (never early).
const TICK: Duration = Duration::from_millis(100);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a connection's state waits while it has no task. One per connection, made when it
/// first goes idle; `T` is what the connection keeps.
pub(super) struct Hibernation<T> {
    slot: Mutex<Slot<T>>,
    /// The tick its alarm is set for, 0 for none (see [`Alarms::set`]).
    alarm: AtomicU64,
    /// Spawns the task that serves the woken connection.
    wake_up: fn(Box<T>, Arc<Hibernation<T>>),
}

struct Slot<T> {
    asleep: Option<Box<T>>,
    /// A wake came while the connection still had its task: it must not go to sleep.
    woken: bool,
}

impl<T: Send + 'static> Hibernation<T> {
    /// A hibernation whose wake calls `wake_up` with what the connection left.
    pub fn new(wake_up: fn(Box<T>, Arc<Hibernation<T>>)) -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(Slot { asleep: None, woken: false }),
            alarm: AtomicU64::new(0),
            wake_up,
        })
    }

    /// Puts the connection to sleep until its waker is woken or `deadline` passes. The caller
    /// polled its stream and queue with this hibernation's waker; a wake that came since then
    /// hands `state` back (`Some`): the task goes on.
    pub fn sleep(self: &Arc<Self>, state: Box<T>, alarms: &Alarms, deadline: Instant) -> Option<Box<T>> {
        {
            let mut slot = lock(&self.slot);
            if std::mem::take(&mut slot.woken) {
                return Some(state);
            }
            slot.asleep = Some(state);
        }
        alarms.set(self, deadline);
        None
    }

    /// Forgets a wake that came while the connection had its task (it is serving anyway).
    pub fn awake(&self) {
        lock(&self.slot).woken = false;
    }

    fn resume(self: &Arc<Self>, force: bool) {
        let asleep = {
            let mut slot = lock(&self.slot);
            let asleep = slot.asleep.take();
            if asleep.is_none() && force {
                slot.woken = true;
            }
            asleep
        };
        if let Some(asleep) = asleep {
            (self.wake_up)(asleep, self.clone());
        }
    }
}

impl<T: Send + 'static> Wake for Hibernation<T> {
    fn wake(self: Arc<Self>) {
        self.resume(true);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.resume(true);
    }
}

/// Something an alarm rings.
trait Alarm: Send + Sync {
    /// The alarm set for `tick` rang.
    fn ring(self: Arc<Self>, tick: u64);
}

impl<T: Send + 'static> Alarm for Hibernation<T> {
    fn ring(self: Arc<Self>, tick: u64) {
        // A later `set` for an earlier tick replaced this alarm; that one wakes it.
        if self.alarm.compare_exchange(tick, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.resume(false);
        }
    }
}

/// The deadlines of a node's hibernating connections, by tick.
pub struct Alarms {
    origin: Instant,
    due: Mutex<BTreeMap<u64, Vec<Arc<dyn Alarm>>>>,
    /// The runtime that connections wake up on when a wake comes from outside it; set when the
    /// task that rings the alarms starts.
    runtime: OnceLock<tokio::runtime::Handle>,
}

impl Default for Alarms {
    fn default() -> Self {
        Self { origin: Instant::now(), due: Mutex::new(BTreeMap::new()), runtime: OnceLock::new() }
    }
}

impl Alarms {
    /// Starts ringing alarms (once per node, from a task of the runtime), holding the node
    /// weakly: the task ends with it.
    pub fn start<N: Send + Sync + 'static>(&self, node: &Arc<N>, alarms: fn(&N) -> &Alarms) {
        // The runtime is set once, by the call that starts the ringing (every hibernation
        // calls this, so the common case is one load).
        if self.runtime.get().is_some() || self.runtime.set(tokio::runtime::Handle::current()).is_err() {
            return;
        }
        let node: Weak<N> = Arc::downgrade(node);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(TICK);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(node) = node.upgrade() else { return };
                alarms(&node).ring_due();
            }
        });
    }

    /// The runtime connections are served on.
    pub fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.get()
    }

    /// The tick at or after `at`.
    fn tick_of(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.origin).as_millis() as u64;
        ms.div_ceil(TICK.as_millis() as u64).max(1)
    }

    /// Rings `hibernation` at `deadline`, unless its alarm rings by then anyway.
    fn set<T: Send + 'static>(&self, hibernation: &Arc<Hibernation<T>>, deadline: Instant) {
        let tick = self.tick_of(deadline);
        let set = hibernation.alarm.load(Ordering::Acquire);
        if set != 0 && set <= tick {
            return;
        }
        hibernation.alarm.store(tick, Ordering::Release);
        lock(&self.due).entry(tick).or_default().push(hibernation.clone());
    }

    /// Rings every alarm that is due.
    fn ring_due(&self) {
        // The last tick that has fully passed (alarms are set for the tick at or after their
        // deadline).
        let elapsed = Instant::now().saturating_duration_since(self.origin).as_millis() as u64;
        let now = elapsed / TICK.as_millis() as u64;
        let due = {
            let mut due = lock(&self.due);
            let later = due.split_off(&(now + 1));
            std::mem::replace(&mut *due, later)
        };
        for (tick, alarms) in due {
            for alarm in alarms {
                alarm.ring(tick);
            }
        }
    }

    /// How many alarms are set (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.due).values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicUsize;
    use std::task::Waker;

    use super::*;

    static WOKEN: AtomicUsize = AtomicUsize::new(0);

    #[allow(clippy::boxed_local, reason = "the signature of a wake-up")]
    fn count(state: Box<u32>, _: Arc<Hibernation<u32>>) {
        WOKEN.fetch_add(*state as usize, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleeping_connection_wakes_once_on_its_waker_or_its_alarm_and_never_early() {
        let alarms = Arc::new(Alarms::default());
        alarms.start(&alarms, |a| a);
        let hibernation = Hibernation::new(count);
        let waker = Waker::from(hibernation.clone());
        // A wake while it still has its task: it does not go to sleep.
        waker.wake_by_ref();
        assert_eq!(hibernation.sleep(Box::new(1), &alarms, Instant::now()).map(|b| *b), Some(1));
        hibernation.awake();
        // Asleep: the waker wakes it once.
        assert!(hibernation.sleep(Box::new(10), &alarms, Instant::now() + Duration::from_secs(5)).is_none());
        waker.wake_by_ref();
        waker.wake_by_ref();
        assert_eq!(WOKEN.load(Ordering::SeqCst), 10);
        hibernation.awake();
        // Its alarm (set at the first sleep, still due) rings it at its deadline, not before.
        assert!(hibernation.sleep(Box::new(100), &alarms, Instant::now() + Duration::from_secs(5)).is_none());
        assert_eq!(alarms.len(), 1, "one alarm for both sleeps");
        tokio::time::sleep(Duration::from_millis(4_800)).await;
        assert_eq!(WOKEN.load(Ordering::SeqCst), 10, "not early");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(WOKEN.load(Ordering::SeqCst), 110, "at its deadline");
        assert_eq!(alarms.len(), 0);
    }
}
