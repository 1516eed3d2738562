//! The audit log writer: grows each tenant's transparency log (and the operator's) from what
//! must go on it — the management events waiting in `audit_events`, and the messages of audited
//! namespaces in the durable feeds of the tenant's apps — and signs a checkpoint of it at least
//! every `checkpoint_interval` while entries arrive (docs/audit.md).
//!
//! A worker leases logs from the store (one writer per log; a dead worker's logs move to
//! another when its lease runs out). For a leased log it takes up to `batch` events and feed
//! entries, builds their entries ([`step::build`]: chained, hashed into the tree, a checkpoint
//! signed when due) and hands everything to [`Store::append_audit`], which writes it and moves
//! the events and feed positions on in one transaction, only from the size and positions it
//! read. So each event and message is appended exactly once, whatever is killed when.

pub mod proofs;
pub mod step;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tributary_audit::entry::{self, Gap, Management, Message};
use tributary_audit::note::NoteSigner;
use tributary_engine::{Engine, EngineError, FeedRecord};
use tributary_protocol::Payload;
use tributary_store::{AuditLogState, Store, StoreError};

use crate::worker::now_ms;
use step::{Pending, StepError};

/// How the writer works.
#[derive(Debug, Clone)]
pub struct AuditWriterConfig {
    /// This worker's name in leases.
    pub owner: String,
    /// The logs' names start with this (`<prefix>/<tenant id>`, `<prefix>/operator`); set once,
    /// when a log is made.
    pub origin_prefix: String,
    /// How long a leased log is this worker's alone (renewed while it works).
    pub lease: Duration,
    /// Most entries one step appends.
    pub batch: usize,
    /// Most logs one worker leases.
    pub max_logs: i64,
    /// How long the writer waits when no log had work.
    pub poll_interval: Duration,
    /// How often a log with new entries gets a signed checkpoint, at most.
    pub checkpoint_interval: Duration,
}

impl Default for AuditWriterConfig {
    fn default() -> Self {
        Self {
            owner: format!("audit-{}", std::process::id()),
            origin_prefix: "tributary.local/audit".to_owned(),
            lease: Duration::from_secs(30),
            batch: 5000,
            max_logs: 1000,
            poll_interval: Duration::from_millis(100),
            checkpoint_interval: Duration::from_secs(1),
        }
    }
}

/// Why a pass of the writer failed; it tries again after its poll interval.
#[derive(Debug, thiserror::Error)]
pub enum AuditWriterError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A step could not be built.
    #[error(transparent)]
    Step(#[from] StepError),
}

/// Counts of what the writer did, for tests, the benchmark and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditWriterStats {
    /// Entries appended.
    pub entries: u64,
    /// Checkpoints signed.
    pub checkpoints: u64,
    /// Losses of feed entries found (each also an entry of the log).
    pub gaps: u64,
}

/// How often the writer turns its apps' feeds on again (idempotent; after an engine lost them).
const REENABLE_FEEDS_EVERY: Duration = Duration::from_secs(5);

/// How often the writer claims its logs again at most.
const RECLAIM_EVERY: Duration = Duration::from_millis(250);

/// The audit log writer of one worker.
pub struct AuditWriter {
    store: Store,
    engine: Arc<dyn Engine>,
    config: AuditWriterConfig,
    state: tokio::sync::Mutex<WriterState>,
    stats: std::sync::Mutex<AuditWriterStats>,
}

#[derive(Default)]
struct WriterState {
    /// The logs leased at the last claim, as last written, and when the claim was made.
    held: Option<(Instant, Vec<AuditLogState>)>,
    /// Each log's signing key, once read (or made), with the log's key version it was read at.
    signers: HashMap<String, (i64, Arc<NoteSigner>)>,
    /// The apps whose feeds this worker turned on, and when it last forgot them (every
    /// [`REENABLE_FEEDS_EVERY`], in case the engine lost them).
    fed: HashSet<String>,
    fed_since: Option<Instant>,
}

/// Which namespaces of an app are audited.
#[derive(Debug, Clone, Default)]
struct Audited {
    /// The audited ones.
    names: HashSet<String>,
    /// Every namespace the app sets.
    set: HashSet<String>,
}

impl Audited {
    /// Exactly `namespace` (an exchange's).
    fn only(namespace: &str) -> Self {
        let names = HashSet::from([namespace.to_owned()]);
        Self { set: names.clone(), names }
    }

    /// Whether a channel of `namespace` is audited: its own namespace is, or the app's default
    /// (`""`) is and the app does not set the name.
    fn covers(&self, namespace: &str) -> bool {
        self.names.contains(namespace) || (self.names.contains("") && !self.set.contains(namespace))
    }
}

impl AuditWriter {
    /// A writer on `store`, reading `engine`'s feeds.
    pub fn new(store: Store, engine: Arc<dyn Engine>, config: AuditWriterConfig) -> Self {
        Self {
            store,
            engine,
            config,
            state: tokio::sync::Mutex::new(WriterState::default()),
            stats: std::sync::Mutex::new(AuditWriterStats::default()),
        }
    }

    /// What it did so far.
    pub fn stats(&self) -> AuditWriterStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes until `stop` is cancelled, then gives up its leases.
    pub async fn run(&self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let more = match self.run_once().await {
                Ok(more) => more,
                Err(err) => {
                    tracing::warn!(error = %err, "audit log writer pass failed");
                    self.state.lock().await.held = None;
                    false
                }
            };
            if !more {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
            }
        }
        let held = self.state.lock().await.held.take();
        for log in held.map(|(_, logs)| logs).unwrap_or_default() {
            if let Err(err) = self.store.release_audit_log(&self.config.owner, &log.id).await {
                tracing::debug!(error = %err, "an audit log lease was not released; it runs out instead");
            }
        }
    }

    /// One pass: leases logs and takes one step of each; returns whether more is waiting than a
    /// step took (read on at once). Fails only when the logs cannot be claimed.
    pub async fn run_once(&self) -> Result<bool, AuditWriterError> {
        let mut state = self.state.lock().await;
        let logs = self.leases(&mut state).await?;
        let mut more = false;
        let mut kept = Vec::with_capacity(logs.len());
        for log in logs {
            match self.step(&mut state, &log).await {
                Ok(Some((next, waiting))) => {
                    more |= waiting;
                    kept.push(next);
                }
                // Taken over by another worker (or grown by one): not held any more.
                Ok(None) => {}
                // One log's failure holds back no other log; it is read afresh at the next claim.
                Err(err) => tracing::warn!(log = log.id, error = %err, "an audit log step failed"),
            }
        }
        if let Some((_, held)) = state.held.as_mut() {
            *held = kept;
        }
        Ok(more)
    }

    async fn leases(&self, state: &mut WriterState) -> Result<Vec<AuditLogState>, AuditWriterError> {
        let every = RECLAIM_EVERY.min(self.config.lease / 4);
        if let Some((at, logs)) = &state.held
            && at.elapsed() < every
        {
            return Ok(logs.clone());
        }
        let now = now_ms();
        self.store.open_audit_logs(&self.config.origin_prefix, now / 1000).await?;
        let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX);
        let logs = self
            .store
            .claim_audit_logs(&self.config.owner, now, now.saturating_add(lease_ms), self.config.max_logs)
            .await?;
        state.held = Some((Instant::now(), logs.clone()));
        // An engine that lost its data lost the feeds' markers too: turn them on again now and
        // then (the router does the same for apps with rules).
        if state.fed_since.is_none_or(|since| since.elapsed() >= REENABLE_FEEDS_EVERY) {
            state.fed.clear();
            state.fed_since = Some(Instant::now());
        }
        Ok(logs)
    }

    /// One step of a log: `None` when the log was taken over (nothing written), else the log
    /// as written and whether more was waiting than the step took.
    async fn step(
        &self,
        state: &mut WriterState,
        log: &AuditLogState,
    ) -> Result<Option<(AuditLogState, bool)>, AuditWriterError> {
        let signer = self.signer(state, log).await?;
        let batch = self.config.batch;
        let mut pending: Vec<Pending> = Vec::new();
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let events = self.store.unsequenced_audit_events(log, limit).await?;
        for event in &events {
            let body = entry::body(&Management {
                kind: "management",
                id: &event.id,
                tenant: event.tenant_id.as_deref(),
                actor: &event.actor,
                action: &event.action,
                target: &event.target,
                request_id: &event.request_id,
                at: event.at,
            });
            pending.push(Pending { source: format!("ev:{}", event.id), body });
        }
        let mut feeds = Vec::new();
        let now = now_ms();
        // Whether more is waiting than this step took (a page came full): read on at once.
        let mut read_full = events.len() == batch;
        let sources = self.store.audit_sources(&log.id).await?;
        // Apps are read from a different one each step, so a busy app holds back no other.
        let first = usize::try_from(log.size).unwrap_or(0) % sources.len().max(1);
        for source in sources[first..].iter().chain(&sources[..first]) {
            let room = batch.saturating_sub(pending.len());
            if room == 0 {
                read_full = true;
                break;
            }
            let (app, position) = (&source.app_id, &source.position);
            if state.fed.insert(app.clone()) {
                self.engine.feed_enable(app).await?;
            }
            let page = self.engine.feed_read(app, position, room).await?;
            let Some(last) = page.entries.last() else { continue };
            read_full |= page.entries.len() == room;
            // A source's first read starts at the feed's oldest entry: the messages from before
            // the app's namespace was audited (the rules had the feed on) are not the log's, nor
            // is any loss among them.
            let since = if position.is_empty() { u64::try_from(source.since_ms).unwrap_or(0) } else { 0 };
            if page.gap && !position.is_empty() {
                tracing::warn!(
                    app,
                    after = position,
                    "messages of an app's feed were lost before its audit log read them"
                );
                self.count(|stats| stats.gaps += 1);
                let body = entry::body(&Gap { kind: "gap", app, after: position, at_ms: now });
                pending.push(Pending { source: format!("gap:{app}:{position}"), body });
            }
            // An exchange's log takes its one namespace until the exchange ended; a tenant's,
            // the namespaces audited as they are now: a namespace set audited is honoured from
            // its transaction on, as its app's feed is read from then (one query per page read).
            let audited = match &source.namespace {
                Some(namespace) => Audited::only(namespace),
                None => self.audited(log, app).await?,
            };
            let until = source.until_ms.map_or(u64::MAX, |ms| u64::try_from(ms).unwrap_or(0));
            for item in &page.entries {
                let (Some(channel), FeedRecord::Message(publication)) = (&item.channel, &item.record) else {
                    continue;
                };
                if publication.ts_ms < since
                    || publication.ts_ms > until
                    || !audited.covers(channel.namespace())
                {
                    continue;
                }
                let (Payload::Json(payload) | Payload::Binary(payload)) = &publication.payload;
                let body = entry::body(&Message {
                    kind: "message",
                    app,
                    channel: channel.as_str(),
                    epoch: &publication.epoch,
                    offset: publication.offset,
                    ts_ms: publication.ts_ms,
                    client_id: publication.client_id.as_deref(),
                    payload_sha256: entry::payload_sha256(payload),
                    payload_bytes: payload.len(),
                    binary: publication.payload.is_binary(),
                    encoding: publication.encoding.as_deref(),
                });
                let source = message_source(app, &publication.epoch, publication.offset, channel.as_str());
                pending.push(Pending { source, body });
            }
            feeds.push((app.clone(), position.clone(), last.position.to_string()));
        }
        let appended = pending.len() as u64;
        let interval = i64::try_from(self.config.checkpoint_interval.as_millis()).unwrap_or(i64::MAX);
        let new_size = log.size + appended;
        let checkpoint = new_size > log.checkpoint_size && now.saturating_sub(log.checkpoint_ms) >= interval;
        if pending.is_empty() && feeds.is_empty() && !checkpoint {
            return Ok(Some((log.clone(), false)));
        }
        let mut append = step::build(log, pending, now, checkpoint, &signer)?;
        append.events = events.into_iter().map(|event| event.id).collect();
        append.feeds = feeds;
        let written = match self.store.append_audit(&self.config.owner, log, &append, now).await {
            Err(StoreError::AlreadyExists(_)) => {
                // Something the log holds already was read again (a feed position lost, or a
                // feed replayed): leave those out rather than stop the log, and say so.
                let sources: Vec<String> = append.entries.iter().map(|e| e.source.clone()).collect();
                let present = self.store.audit_sources_present(&log.id, &sources).await?;
                tracing::warn!(
                    log = log.id,
                    again = present.len(),
                    "entries already on the audit log were read again and left out"
                );
                let pending: Vec<Pending> = std::mem::take(&mut append.entries)
                    .into_iter()
                    .filter(|entry| !present.contains(&entry.source))
                    .map(|entry| Pending { source: entry.source, body: entry.body })
                    .collect();
                let (events, feeds) = (std::mem::take(&mut append.events), std::mem::take(&mut append.feeds));
                append = step::build(log, pending, now, checkpoint, &signer)?;
                append.events = events;
                append.feeds = feeds;
                self.store.append_audit(&self.config.owner, log, &append, now).await?
            }
            other => other?,
        };
        if !written {
            tracing::info!(log = log.id, "an audit log was taken over by another worker");
            return Ok(None);
        }
        let appended = append.entries.len() as u64;
        self.count(|stats| {
            stats.entries += appended;
            stats.checkpoints += u64::from(checkpoint);
        });
        Ok(Some((step::after(log, &append, now), read_full)))
    }

    /// The key signing `log`'s checkpoints, made (and stored, encrypted) on the log's first
    /// step.
    async fn signer(
        &self,
        state: &mut WriterState,
        log: &AuditLogState,
    ) -> Result<Arc<NoteSigner>, AuditWriterError> {
        // A rotation moves the log's key version on: the claim that sees it reads the new key.
        if let Some((version, signer)) = state.signers.get(&log.id)
            && *version == log.key_version
        {
            return Ok(signer.clone());
        }
        let signer = match self.store.audit_signing_key(log).await? {
            Some((verifier, seed)) => {
                let seed: [u8; 32] = seed
                    .as_slice()
                    .try_into()
                    .map_err(|_| StepError::Damaged(format!("{} (its key)", log.id)))?;
                let signer = NoteSigner::from_seed(&log.origin, &seed).map_err(StepError::Sign)?;
                if signer.verifier_key() != verifier {
                    return Err(StepError::Damaged(format!("{} (its key)", log.id)).into());
                }
                signer
            }
            None => {
                let key = NewLogKey::generate(&log.origin).map_err(StepError::Sign)?;
                self.store.add_audit_key(log, &key.verifier, key.seed()).await?;
                // Another worker may have made one at the same moment: sign with the stored one.
                return Box::pin(self.signer(state, log)).await;
            }
        };
        let signer = Arc::new(signer);
        state.signers.insert(log.id.clone(), (log.key_version, signer.clone()));
        Ok(signer)
    }

    /// Which namespaces of `app` are audited now.
    async fn audited(&self, log: &AuditLogState, app: &str) -> Result<Audited, StoreError> {
        let mut audited = Audited::default();
        for namespace in self.store.namespaces(log.tenant_id.as_deref(), app).await? {
            audited.set.insert(namespace.name.clone());
            if tributary_store::namespace::is_audited(&namespace.options) {
                audited.names.insert(namespace.name);
            }
        }
        Ok(audited)
    }

    fn count(&self, change: impl FnOnce(&mut AuditWriterStats)) {
        change(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// A new signing key of a log: its verifier key (public) and its seed (secret, zeroed when
/// dropped).
pub struct NewLogKey {
    /// The verifier key, in Go's note format.
    pub verifier: String,
    seed: secrecy::zeroize::Zeroizing<[u8; 32]>,
}

impl NewLogKey {
    /// A random key named `origin` (the log's name).
    pub fn generate(origin: &str) -> Result<Self, tributary_audit::note::NoteError> {
        let seed = secrecy::zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
        let verifier = NoteSigner::from_seed(origin, &seed)?.verifier_key();
        Ok(Self { verifier, seed })
    }

    /// The seed, to store encrypted.
    pub fn seed(&self) -> &[u8] {
        self.seed.as_slice()
    }
}

/// What a message's entry records, unique in its log: `msg:<app>:<epoch>:<offset>:<channel>`.
pub fn message_source(app: &str, epoch: &str, offset: u64, channel: &str) -> String {
    format!("msg:{app}:{epoch}:{offset}:{channel}")
}
