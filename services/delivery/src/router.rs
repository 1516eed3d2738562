//! The feed router: reads the durable feed of every app that has rules, and queues a delivery
//! for each request the rules make of what it read.
//!
//! A worker leases apps' feeds from the store (one worker per app at a time; a dead worker's
//! apps move to another once its lease runs out). For a leased app it reads the feed after the
//! saved position, matches the app's enabled rules, and hands the deliveries and the new
//! position to [`Store::advance_feed`], which queues the one and saves the other in a single
//! transaction, only from the position it read. Killed at any moment, a worker leaves a read
//! either wholly queued or not at all, and a slow worker whose lease moved on cannot queue its
//! read a second time: each event is queued once, and delivered at least once from the queue.
//!
//! An app is read again when its rules' shortest batch window has passed since it was last
//! caught up, so a rule's requests gather the events of that window (up to `batch_max` each).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tributary_engine::{Engine, EngineError, FeedEntry};
use tributary_store::{FeedLease, Store, StoreError};

use crate::rules::CompiledRule;
use crate::worker::now_ms;

/// How the router works.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// This worker's name in leases.
    pub owner: String,
    /// How long a leased feed is this worker's alone (renewed while it works).
    pub lease: Duration,
    /// Most feed entries read at once.
    pub page: usize,
    /// Most apps' feeds one worker leases.
    pub max_feeds: i64,
    /// How long the router waits when nothing was due.
    pub poll_interval: Duration,
    /// How often apps with rules are made sure to have a feed (after an engine lost its data).
    pub reconcile_interval: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            owner: format!("router-{}", std::process::id()),
            lease: Duration::from_secs(30),
            page: 1000,
            max_feeds: 1000,
            poll_interval: Duration::from_millis(50),
            reconcile_interval: Duration::from_secs(5),
        }
    }
}

/// Why a pass of the router failed; it tries again after its poll interval.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What the router knows of an app between passes.
#[derive(Default)]
struct AppState {
    /// When its feed is read next.
    due: Option<Instant>,
    /// Its rules' shortest batch window, in ms, as last read.
    window: i64,
    /// When the engine's upkeep of its feed last ran (see [`Engine::feed_upkeep`]).
    upkept: Option<Instant>,
}

/// How often a router claims its feeds again at most (renewing its leases, taking new apps'
/// and stopped workers'); between claims it reads the feeds it holds, each advance checking in
/// the store that the lease is still its own.
const RECLAIM_EVERY: Duration = Duration::from_millis(100);

/// How often the feed's reader runs the engine's upkeep of it (vacating the channels of
/// stopped relay nodes).
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Counts of what the router did, for tests, the benchmark and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Feed entries read.
    pub entries: u64,
    /// Deliveries queued.
    pub queued: u64,
    /// Reads that found entries lost before they were read (trimmed, or the engine lost them).
    pub gaps: u64,
}

/// The feed router of one worker.
pub struct Router {
    store: Store,
    engine: Arc<dyn Engine>,
    config: RouterConfig,
    apps: Mutex<HashMap<String, AppState>>,
    stats: Mutex<RouterStats>,
    reconciled: Mutex<Option<Instant>>,
    /// The feeds leased at the last claim and when it was made, with the positions read up to
    /// since (see [`RECLAIM_EVERY`]); `None` after a failure, so the next pass claims afresh.
    held: Mutex<Option<(Instant, Vec<FeedLease>)>>,
    /// The worker of this process, poked when deliveries were queued.
    wake: Option<Arc<tokio::sync::Notify>>,
}

impl Router {
    /// A router on `store` reading `engine`'s feeds.
    pub fn new(store: Store, engine: Arc<dyn Engine>, config: RouterConfig) -> Self {
        Self {
            store,
            engine,
            config,
            apps: Mutex::new(HashMap::new()),
            stats: Mutex::new(RouterStats::default()),
            reconciled: Mutex::new(None),
            held: Mutex::new(None),
            wake: None,
        }
    }

    /// Pokes `wake` whenever it queued deliveries (the worker of the same process).
    pub fn wakes(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// What it did so far.
    pub fn stats(&self) -> RouterStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes until `stop` is cancelled, then gives up its leases.
    pub async fn run(&self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let routed = match self.run_once().await {
                Ok(routed) => routed,
                Err(err) => {
                    tracing::warn!(error = %err, "feed router pass failed");
                    0
                }
            };
            // Pages came full: more is waiting, read on at once. Otherwise the feeds are caught
            // up: the next pass is after the poll interval, gathering what came meanwhile (a
            // pass costs the store about the same for one event as for hundreds).
            let pause =
                if routed >= self.config.page as u64 { Duration::ZERO } else { self.config.poll_interval };
            if !pause.is_zero() {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
        self.release().await;
    }

    /// One pass: leases feeds and reads each one that is due until it is caught up; returns
    /// how many entries it read.
    pub async fn run_once(&self) -> Result<u64, RouterError> {
        self.reconcile().await?;
        let mut leases = self.leases().await?;
        let mut read = 0;
        let mut result = Ok(());
        for lease in &mut leases {
            self.upkeep(&lease.app_id).await;
            if self.is_due(&lease.app_id) {
                match self.route_app(lease).await {
                    Ok(routed) => read += routed,
                    Err(err) => {
                        result = Err(err);
                        break;
                    }
                }
            }
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match (result, held.as_mut()) {
            // The positions read up to, for the next pass; a feed taken over is left out.
            (Ok(()), Some((_, kept))) => {
                *kept = leases.into_iter().filter(|lease| !lease.tenant_id.is_empty()).collect();
            }
            (Ok(()), None) => {}
            (Err(err), _) => {
                *held = None;
                return Err(err);
            }
        }
        Ok(read)
    }

    /// The feeds this worker holds: those of the last claim, claimed again (renewed, and any
    /// new app's or stopped worker's taken) when that was [`RECLAIM_EVERY`] ago.
    async fn leases(&self) -> Result<Vec<FeedLease>, RouterError> {
        let every = RECLAIM_EVERY.min(self.config.lease / 4);
        if let Some((at, leases)) = self.held.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && at.elapsed() < every
        {
            return Ok(leases.clone());
        }
        let now = now_ms();
        let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX);
        let leases = self
            .store
            .claim_feeds(&self.config.owner, now, now.saturating_add(lease_ms), self.config.max_feeds)
            .await?;
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), leases.clone()));
        Ok(leases)
    }

    /// Makes sure every app with enabled rules has a feed, now and then: the management API
    /// turns a feed on when it makes a rule, but an engine that lost its data lost that too.
    async fn reconcile(&self) -> Result<(), RouterError> {
        {
            let mut last = self.reconciled.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.config.reconcile_interval) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        for app in self.store.apps_with_rules().await? {
            self.engine.feed_enable(&app).await?;
        }
        Ok(())
    }

    /// Runs the engine's upkeep of a leased app's feed when it is due: only the worker that
    /// holds the lease does, so once a second per app whatever the number of workers.
    async fn upkeep(&self, app: &str) {
        {
            let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
            let state = apps.entry(app.to_owned()).or_default();
            if state.upkept.is_some_and(|at| at.elapsed() < UPKEEP_EVERY) {
                return;
            }
            state.upkept = Some(Instant::now());
        }
        if let Err(err) = self.engine.feed_upkeep(app).await {
            tracing::warn!(app, error = %err, "the upkeep of an app's feed failed");
        }
    }

    fn is_due(&self, app: &str) -> bool {
        let apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        apps.get(app).and_then(|state| state.due).is_none_or(|due| due <= Instant::now())
    }

    /// Reads an app's feed until it is caught up (or half the lease has gone), moving
    /// `lease.position` on; returns how many entries it read. A feed another worker took over
    /// is marked by an empty `lease.tenant_id`.
    async fn route_app(&self, lease: &mut FeedLease) -> Result<u64, RouterError> {
        let started = Instant::now();
        // The rules are read once something new is in the feed (an idle app costs one feed
        // read per pass), and as they are then: a rule disabled before its events are read
        // does not take them.
        let mut rules: Option<Vec<CompiledRule>> = None;
        let mut read = 0u64;
        loop {
            let page = self.engine.feed_read(&lease.app_id, &lease.position, self.config.page).await?;
            if page.gap {
                // Events were lost before they were read: say so loudly; what is left goes on.
                tracing::warn!(
                    app = lease.app_id,
                    after = lease.position,
                    "events of an app's feed were lost before its rules read them"
                );
                self.count(|stats| stats.gaps += 1);
            }
            let Some(last) = page.entries.last() else { break };
            let position = last.position.to_string();
            if rules.is_none() {
                let enabled = self.store.enabled_rules(&lease.app_id).await?;
                rules = Some(enabled.into_iter().filter_map(CompiledRule::compile).collect());
            }
            let deliveries = deliveries(rules.as_deref().unwrap_or_default(), &page.entries);
            let queued = deliveries.len() as u64;
            if !self.store.advance_feed(&self.config.owner, lease, &position, &deliveries, now_ms()).await? {
                // The lease moved to another worker (or the position did): that worker reads on.
                tracing::info!(app = lease.app_id, "an app's feed was taken over by another worker");
                lease.tenant_id.clear();
                return Ok(read);
            }
            let count = page.entries.len() as u64;
            read += count;
            self.count(|stats| {
                stats.entries += count;
                stats.queued += queued;
            });
            if let Some(wake) = self.wake.as_ref().filter(|_| queued > 0) {
                wake.notify_one();
            }
            lease.position = position;
            if page.entries.len() < self.config.page || started.elapsed() > self.config.lease / 2 {
                break;
            }
        }
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        let state = apps.entry(lease.app_id.clone()).or_default();
        if let Some(rules) = &rules {
            state.window = rules.iter().map(|rule| rule.rule.spec.batch_ms).min().unwrap_or(0);
        }
        state.due = Some(Instant::now() + Duration::from_millis(u64::try_from(state.window).unwrap_or(0)));
        Ok(read)
    }

    fn count(&self, change: impl FnOnce(&mut RouterStats)) {
        change(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Gives up this worker's leases (a stopping worker), so others take its apps at once.
    async fn release(&self) {
        let apps: Vec<String> = self.apps.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for app in apps {
            if let Err(err) = self.store.release_feed(&self.config.owner, &app).await {
                tracing::debug!(error = %err, "a feed lease was not released; it runs out instead");
            }
        }
    }
}

/// The deliveries every rule makes of `entries`, rule by rule, each in feed order.
fn deliveries(rules: &[CompiledRule], entries: &[FeedEntry]) -> Vec<tributary_store::NewDelivery> {
    let mut out = Vec::new();
    for rule in rules {
        let matched: Vec<&FeedEntry> = entries.iter().filter(|entry| rule.matches(entry)).collect();
        out.extend(rule.deliveries(&matched));
    }
    out
}
