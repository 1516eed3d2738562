//! The delivery worker: claims due webhook deliveries from the store's queue, signs and sends
//! each, and records how it went, moving the job on by the retry schedule.
//!
//! It is a pipeline: up to `batch` attempts are in flight at once, and whenever there is room it
//! claims more, so an attempt waiting on a slow endpoint (up to its timeout) holds only its own
//! slot, never the deliveries to other endpoints. Finished attempts are recorded together, one
//! transaction for whatever finished meanwhile (a group commit).
//!
//! Nothing waits in the worker's memory but the jobs it holds a lease on. A worker that is
//! killed loses nothing: its jobs are claimed again by any worker once their leases run out, and
//! sent again with the same event id (at least once; receivers de-duplicate by `webhook-id`). A
//! finish is recorded only while the worker still holds the job, so a worker that was too slow
//! does not overwrite what the one that took over recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tributary_store::{
    AfterAttempt, AttemptRecord, DeliveryJob, FinishedAttempt, Store, StoreError, WebhookEndpoint,
};

use crate::quota::{Admission, QUOTA_REASON, Quotas};
use crate::schedule::{NextStep, RetrySchedule};
use crate::sender::{SendError, Sender, Verdict};
use crate::signature::{WebhookSecret, sign_request};

/// How a worker works.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's name in leases (unique per process).
    pub owner: String,
    /// How long a claimed job is this worker's alone.
    pub lease: Duration,
    /// Most jobs claimed (and sent concurrently) at once.
    pub batch: i64,
    /// Most jobs of one endpoint in flight at once, over every worker.
    pub per_target: i64,
    /// How long an idle worker waits before looking for due jobs again.
    pub poll_interval: Duration,
    /// When failed deliveries are tried again.
    pub schedule: RetrySchedule,
    /// An endpoint whose every delivery has failed for this long is disabled and its tenant
    /// told; zero: never.
    pub disable_after: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            owner: format!("worker-{}", std::process::id()),
            lease: Duration::from_secs(60),
            batch: 64,
            per_target: 4,
            poll_interval: Duration::from_millis(200),
            schedule: RetrySchedule::default(),
            disable_after: Duration::from_secs(5 * 86_400),
        }
    }
}

/// Least time between two claims that found work (see [`Worker::run`]).
const CLAIM_GATHER: Duration = Duration::from_millis(5);

/// Returns the current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

mod push;
mod sms;

pub use sms::Texting;

/// A target as a batch's deliveries to it need it.
enum Target {
    /// Nothing can be sent to it (deleted or disabled): its deliveries are dead-lettered.
    Unusable(String),
    /// A webhook endpoint and the secrets it signs with (the current one first).
    Ready { endpoint: WebhookEndpoint, signing: Vec<WebhookSecret> },
    /// An app's pushes through one service, with its credentials.
    Push { app_id: String, service: tributary_store::PushService, sender: crate::push::deliver::PushSender },
    /// An app's texts, with its Twilio credentials.
    Sms { app_id: String, twilio: crate::sms::StoredTwilio },
    /// An app's rules' pushes, queued to the devices they reach.
    PushOut,
}

/// A delivery worker.
pub struct Worker {
    inner: Arc<Inner>,
}

/// What a worker's attempts and recordings share (they run as tasks of their own, so that a
/// transaction in progress never waits on the loop that claims).
struct Inner {
    store: Store,
    sender: Sender,
    config: WorkerConfig,
    /// Woken when deliveries were queued in this process, so they need not wait for a poll.
    wake: Arc<Notify>,
    /// The last target the previous claim served.
    cursor: std::sync::Mutex<String>,
    /// Where the tenant is told of an endpoint the worker disabled (its app's system channel).
    notices: Option<Arc<dyn tributary_engine::Engine>>,
    /// The tenants' monthly webhook event quotas.
    quotas: Quotas,
    /// The push services' clients (`None`: this worker sends no push).
    push: Option<Arc<crate::push::deliver::PushClients>>,
    /// Twilio's client (`None`: this worker sends no text).
    texting: Option<Texting>,
    /// The (tenant, notice, minute)s this worker told of refused texts (see `sms.rs`).
    sms_told: std::sync::Mutex<std::collections::HashSet<(String, String, i64)>>,
}

/// An attempt made: what to record, its endpoint, and whether it says the endpoint works.
struct Attempted {
    finished: FinishedAttempt,
    target: String,
    /// `Some(true)`: delivered; `Some(false)`: the endpoint failed; `None`: neither (the
    /// endpoint was unusable or answered 410).
    healthy: Option<bool>,
}

impl Worker {
    /// A worker on `store` that sends with `sender`.
    pub fn new(store: Store, sender: Sender, config: WorkerConfig) -> Self {
        let inner = Inner {
            store,
            sender,
            config,
            wake: Arc::new(Notify::new()),
            cursor: std::sync::Mutex::new(String::new()),
            notices: None,
            quotas: Quotas::default(),
            push: None,
            texting: None,
            sms_told: std::sync::Mutex::default(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Tells tenants of the endpoints this worker disables on `engine`: an event on the system
    /// channel of the endpoint's app.
    pub fn notifying(mut self, engine: Arc<dyn tributary_engine::Engine>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.notices = Some(engine);
        }
        self
    }

    /// Sends the apps' pushes (jobs of `push:<app>:<service>` targets) with `clients`.
    pub fn pushing(mut self, clients: crate::push::deliver::PushClients) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.push = Some(Arc::new(clients));
        }
        self
    }

    /// Sends the apps' texts (jobs of `sms:<app>` targets) through Twilio.
    pub fn texting(mut self, texting: Texting) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.texting = Some(texting);
        }
        self
    }

    /// What wakes an idle worker at once (the feed router of its process pokes it).
    pub fn waker(&self) -> Arc<Notify> {
        self.inner.wake.clone()
    }

    /// Works until `stop` is cancelled, then lets the attempts in flight finish and records
    /// them. A store that fails is retried after the poll interval.
    pub async fn run(&self, stop: CancellationToken) {
        let inner = &self.inner;
        let batch = usize::try_from(inner.config.batch).unwrap_or(1).max(1);
        let mut in_flight: tokio::task::JoinSet<Option<Attempted>> = tokio::task::JoinSet::new();
        let mut finished: Vec<Attempted> = Vec::new();
        let mut recording: Option<tokio::task::JoinHandle<()>> = None;
        let mut claim_at = tokio::time::Instant::now();
        let mut claimed_at = claim_at;
        loop {
            let stopping = stop.is_cancelled();
            if !stopping && in_flight.len() < batch && claim_at <= tokio::time::Instant::now() {
                let room = i64::try_from(batch - in_flight.len()).unwrap_or(1);
                claimed_at = tokio::time::Instant::now();
                match inner.claim(room).await {
                    Ok(claimed) => {
                        // Nothing due: look again after the poll interval (or when woken). Else
                        // gather a moment's freed slots before the next claim: a claim costs
                        // the store the same for one job as for dozens, and claiming a slot at
                        // a time as each attempt ended cost more than the attempts under load.
                        let wait = if claimed.is_empty() { inner.config.poll_interval } else { CLAIM_GATHER };
                        claim_at = tokio::time::Instant::now() + wait;
                        for (job, target) in claimed {
                            let inner = inner.clone();
                            in_flight.spawn(async move { inner.attempt(job, target).await });
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "delivery queue unavailable");
                        claim_at = tokio::time::Instant::now() + inner.config.poll_interval;
                    }
                }
            }
            if recording.is_none() && !finished.is_empty() {
                let (inner, finished) = (inner.clone(), std::mem::take(&mut finished));
                recording = Some(tokio::spawn(async move { inner.record(finished).await }));
            }
            if stopping && in_flight.is_empty() && recording.is_none() {
                return;
            }
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    finished.extend(done.ok().flatten());
                }
                _ = async { if let Some(recording) = recording.as_mut() { let _ = recording.await; } }, if recording.is_some() => {
                    recording = None;
                }
                // New jobs: claimed at once, unless a claim just ran (see `CLAIM_GATHER`).
                () = inner.wake.notified(), if !stopping => claim_at = claim_at.min(claimed_at + CLAIM_GATHER),
                () = tokio::time::sleep_until(claim_at), if !stopping && in_flight.len() < batch => {}
                () = stop.cancelled(), if !stopping => {}
            }
        }
    }

    /// Claims one batch of due jobs, makes one attempt of each and records them; returns how
    /// many.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let claimed = inner.claim(inner.config.batch).await?;
        let count = claimed.len();
        let attempts = claimed.into_iter().map(|(job, target)| inner.attempt(job, target));
        let finished: Vec<Attempted> =
            futures::future::join_all(attempts).await.into_iter().flatten().collect();
        inner.try_record(&finished).await?;
        Ok(count)
    }
}

impl Inner {
    /// Claims up to `limit` due jobs, each with its endpoint (read once per endpoint).
    async fn claim(&self, limit: i64) -> Result<Vec<(DeliveryJob, Arc<Target>)>, StoreError> {
        let now = now_ms();
        let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX);
        let start_after = self.cursor.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let jobs = self
            .store
            .claim_deliveries(
                &self.config.owner,
                now,
                now.saturating_add(lease_ms),
                limit,
                self.config.per_target,
                &start_after,
            )
            .await?;
        // The next claim starts after the last target served: every target gets its turn.
        *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) =
            jobs.iter().map(|job| job.target_id.clone()).max().unwrap_or_default();
        // Each endpoint (and its secrets) is read once per claim, not once per delivery: a claim
        // is mostly a few endpoints' backlogs.
        let mut targets: HashMap<(String, String), Arc<Target>> = HashMap::new();
        let mut claimed = Vec::with_capacity(jobs.len());
        let over_quota = Arc::new(Target::Unusable(QUOTA_REASON.to_owned()));
        for job in jobs {
            let key = (job.tenant_id.clone(), job.target_id.clone());
            let target = match targets.get(&key) {
                Some(target) => target.clone(),
                None => {
                    let target = Arc::new(self.target(&key.0, &key.1, now).await?);
                    targets.insert(key, target.clone());
                    target
                }
            };
            // Past its tenant's quota, a delivery is dead-lettered (replayable), not sent.
            let target = match &*target {
                Target::Ready { .. } => {
                    match self.quotas.admit(&self.store, &job.tenant_id, job.events).await? {
                        Admission::Admitted => target,
                        Admission::Refused { first, limit } => {
                            if first {
                                self.notify_quota(&job, limit).await;
                            }
                            over_quota.clone()
                        }
                    }
                }
                Target::Unusable(_) | Target::Push { .. } | Target::Sms { .. } | Target::PushOut => target,
            };
            claimed.push((job, target));
        }
        Ok(claimed)
    }

    /// Records finished attempts, logging (not returning) a failure: their jobs stay leased and
    /// are attempted again when the leases run out.
    async fn record(&self, finished: Vec<Attempted>) {
        if let Err(err) = self.try_record(&finished).await {
            tracing::warn!(error = %err, attempts = finished.len(), "delivery attempts not recorded; they are retried after their leases");
        }
    }

    async fn try_record(&self, attempted: &[Attempted]) -> Result<(), StoreError> {
        if attempted.is_empty() {
            return Ok(());
        }
        let finished: Vec<FinishedAttempt> = attempted.iter().map(|a| a.finished.clone()).collect();
        let recorded = self.store.finish_delivery_attempts(&self.config.owner, &finished).await?;
        for (attempt, kept) in finished.iter().zip(recorded) {
            if !kept {
                // Our lease ran out and another worker took the job: it records its own attempt.
                tracing::info!(
                    job = attempt.job_id,
                    "a delivery's lease was lost before its attempt was recorded"
                );
            }
        }
        let targets = |healthy: bool| {
            let mut ids: Vec<String> =
                attempted.iter().filter(|a| a.healthy == Some(healthy)).map(|a| a.target.clone()).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let disable_after = i64::try_from(self.config.disable_after.as_millis()).unwrap_or(i64::MAX);
        let disabled =
            self.store.note_endpoint_health(&targets(true), &targets(false), now_ms(), disable_after).await?;
        for endpoint in disabled {
            tracing::warn!(
                webhook = endpoint.id,
                app = endpoint.app_id,
                "an endpoint failing for too long was disabled"
            );
            self.notify_disabled(&endpoint).await;
        }
        Ok(())
    }

    /// Tells the tenant its webhook quota is used up (once per worker and month): an audit
    /// entry, and `webhook.quota_exceeded` on the system channel of the app being refused.
    async fn notify_quota(&self, job: &DeliveryJob, limit: i64) {
        tracing::warn!(tenant = job.tenant_id, limit, "a tenant's monthly webhook event quota is used up");
        if let Err(err) = self.store.audit_system(&job.tenant_id, "webhook.quota_exceeded", &job.app_id).await
        {
            tracing::warn!(error = %err, "the quota's audit entry was not recorded");
        }
        let month = tributary_store::usage::month_start(now_ms() / 1000);
        let notice = serde_json::json!({
            "type": "webhook.quota_exceeded",
            "tenant_id": job.tenant_id,
            "app_id": job.app_id,
            "limit": limit,
            "at": now_ms(),
        });
        let key = format!("webhook.quota_exceeded:{}:{month}", job.tenant_id);
        self.notify(&job.app_id, notice, key).await;
    }

    /// Publishes `webhook.disabled` on the system channel of the endpoint's app.
    async fn notify_disabled(&self, endpoint: &WebhookEndpoint) {
        let notice = serde_json::json!({
            "type": "webhook.disabled",
            "webhook_id": endpoint.id,
            "app_id": endpoint.app_id,
            "url": endpoint.url,
            "reason": endpoint.disabled_reason,
            "at": now_ms(),
        });
        let key = format!("webhook.disabled:{}:{}", endpoint.id, endpoint.created_at);
        self.notify(&endpoint.app_id, notice, key).await;
    }

    /// Publishes `notice` on the system channel of `app_id` (see [`crate::notices`]).
    async fn notify(&self, app_id: &str, notice: serde_json::Value, key: String) {
        if let Some(engine) = &self.notices {
            crate::notices::publish(&**engine, app_id, &notice, key).await;
        }
    }

    /// Reads an endpoint and the secrets it signs with now (or an app's push credentials).
    async fn target(&self, tenant_id: &str, target_id: &str, now: i64) -> Result<Target, StoreError> {
        if let Some((app_id, service)) = crate::push::message::parse_target(target_id) {
            return self.push_target(app_id, service).await;
        }
        if let Some(app_id) = crate::sms::job::parse_target(target_id) {
            return self.sms_target(app_id).await;
        }
        if crate::rule_targets::parse_pushout(target_id).is_some() {
            return Ok(Target::PushOut);
        }
        let endpoint = match self.store.webhook_endpoint(tenant_id, target_id).await {
            Ok(endpoint) => endpoint,
            // Deleted: nothing can be sent, but its events are kept (dead letters), not dropped.
            Err(StoreError::NotFound(_)) => return Ok(Target::Unusable("endpoint deleted".into())),
            Err(other) => return Err(other),
        };
        if !endpoint.enabled {
            return Ok(Target::Unusable("endpoint disabled".into()));
        }
        let secrets = self.store.webhook_signing_secrets(tenant_id, target_id, now).await?;
        let mut signing = vec![WebhookSecret::from_bytes(secrets.current.expose_secret().to_vec())];
        signing.extend(secrets.previous.map(|p| WebhookSecret::from_bytes(p.expose_secret().to_vec())));
        Ok(Target::Ready { endpoint, signing })
    }

    /// Makes one attempt of a claimed job to its target; returns what to record (nothing when
    /// the store failed: the job stays leased and is attempted again after its lease).
    async fn attempt(&self, job: DeliveryJob, target: Arc<Target>) -> Option<Attempted> {
        let started = now_ms();
        let (endpoint, signing) = match &*target {
            Target::Ready { endpoint, signing } => (endpoint, signing),
            Target::Unusable(reason) => {
                if let Some(app_id) = crate::sms::job::parse_target(&job.target_id) {
                    self.sms_unsendable(&job, app_id).await;
                }
                let finished = finished(&job, started, None, reason, "dead", AfterAttempt::Dead);
                return Some(Attempted { finished, target: job.target_id, healthy: None });
            }
            Target::Push { app_id, service, sender } => {
                return self.attempt_push(job, app_id, *service, sender, started).await;
            }
            Target::Sms { app_id, twilio } => return self.attempt_sms(job, app_id, twilio, started).await,
            Target::PushOut => return self.attempt_pushout(job, started).await,
        };
        let signing: Vec<&WebhookSecret> = signing.iter().collect();
        let timestamp = u64::try_from(started / 1000).unwrap_or(0);
        let signed = sign_request(&signing, &job.event_id, timestamp, &job.payload);
        // The rule's headers after the endpoint's: the more specific setting is sent last.
        let mut headers = custom_headers(&endpoint.headers);
        headers.extend(custom_headers(&job.headers));
        // A rule's raw body names its own type; everything else is JSON.
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
            headers.push(("content-type".to_owned(), "application/json".to_owned()));
        }
        headers.extend([
            ("webhook-id".to_owned(), signed.id),
            ("webhook-timestamp".to_owned(), signed.timestamp.to_string()),
            ("webhook-signature".to_owned(), signed.signature),
        ]);
        let (verdict, status, snippet) =
            match self.sender.post(&endpoint.url, &headers, job.payload.clone()).await {
                Ok(attempt) => (attempt.verdict, attempt.status, attempt.snippet),
                Err(SendError::Address(refused)) => {
                    (Verdict::Retry { after: None }, None, refused.to_string())
                }
                Err(SendError::Client(reason)) => (Verdict::Retry { after: None }, None, reason),
            };
        let (outcome, after) = match verdict {
            Verdict::Delivered => ("delivered", AfterAttempt::Delivered),
            Verdict::Gone => {
                let reason = "the endpoint answered 410 Gone";
                let system = tributary_store::Actor::system();
                if let Err(err) = self
                    .store
                    .set_webhook_enabled(&system, &job.tenant_id, &job.target_id, Some(reason))
                    .await
                {
                    tracing::warn!(error = %err, "an endpoint that answered 410 was not disabled");
                    return None;
                }
                ("gone", AfterAttempt::Dead)
            }
            Verdict::Retry { after } => self.after_failure(&job, after),
        };
        let healthy = match outcome {
            "delivered" => Some(true),
            "gone" => None,
            _ => Some(false),
        };
        let finished = finished(&job, started, status, &snippet, outcome, after);
        Some(Attempted { finished, target: job.target_id, healthy })
    }
}

impl Inner {
    /// What follows a failed attempt of `job`: another after the schedule's wait (or the
    /// receiver's `Retry-After`), or the dead letters after the last.
    fn after_failure(&self, job: &DeliveryJob, after: Option<Duration>) -> (&'static str, AfterAttempt) {
        let tries = usize::try_from(job.tries + 1).unwrap_or(usize::MAX);
        match self.config.schedule.after_failure(tries, after, rand::random::<f64>()) {
            NextStep::RetryAfter(wait) => {
                let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                ("retry", AfterAttempt::RetryAt(now_ms().saturating_add(wait)))
            }
            NextStep::DeadLetter => ("dead", AfterAttempt::Dead),
        }
    }
}

/// What to record of an attempt that started at `started`.
fn finished(
    job: &DeliveryJob,
    started: i64,
    status: Option<u16>,
    snippet: &str,
    outcome: &str,
    after: AfterAttempt,
) -> FinishedAttempt {
    let record = AttemptRecord {
        at_ms: started,
        status: status.map(i64::from),
        latency_ms: now_ms().saturating_sub(started),
        outcome: outcome.to_owned(),
        snippet: snippet.to_owned(),
    };
    FinishedAttempt::new(&job.id, record, after)
}

/// Reads an endpoint's custom headers (a JSON object of strings); anything else is ignored.
fn custom_headers(json: &str) -> Vec<(String, String)> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json) {
        Ok(map) => map.into_iter().filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned()))).collect(),
        Err(_) => Vec::new(),
    }
}
