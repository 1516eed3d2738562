//! The delivery worker: claims due webhook deliveries from the store's queue, signs and sends
//! each, and records how it went, moving the job on by the retry schedule.
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
use tributary_store::{AfterAttempt, AttemptRecord, DeliveryJob, Store, StoreError, WebhookEndpoint};

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
        }
    }
}

/// Returns the current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

/// An endpoint as a batch's deliveries to it need it.
enum Target {
    /// Nothing can be sent to it (deleted or disabled): its deliveries are dead-lettered.
    Unusable(&'static str),
    /// It and the secrets it signs with (the current one first).
    Ready { endpoint: WebhookEndpoint, signing: Vec<WebhookSecret> },
}

/// A delivery worker.
pub struct Worker {
    store: Store,
    sender: Sender,
    config: WorkerConfig,
    /// Woken when deliveries were queued in this process, so they need not wait for a poll.
    wake: Arc<Notify>,
}

impl Worker {
    /// A worker on `store` that sends with `sender`.
    pub fn new(store: Store, sender: Sender, config: WorkerConfig) -> Self {
        Self { store, sender, config, wake: Arc::new(Notify::new()) }
    }

    /// What wakes an idle worker at once (the feed router of its process pokes it).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Works until `stop` is cancelled. A store that fails is retried after the poll interval.
    pub async fn run(&self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let worked = match self.run_once().await {
                Ok(worked) => worked,
                Err(err) => {
                    tracing::warn!(error = %err, "delivery queue unavailable");
                    0
                }
            };
            if worked == 0 {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
            }
        }
    }

    /// Claims one batch of due jobs and makes one attempt of each; returns how many.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX);
        let jobs = self
            .store
            .claim_deliveries(
                &self.config.owner,
                now,
                now.saturating_add(lease_ms),
                self.config.batch,
                self.config.per_target,
            )
            .await?;
        let count = jobs.len();
        // Each endpoint (and its secrets) is read once per batch, not once per delivery: a
        // batch is mostly a few endpoints' backlogs.
        let mut targets: HashMap<(String, String), Target> = HashMap::new();
        for job in &jobs {
            let key = (job.tenant_id.clone(), job.target_id.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = targets.entry(key) {
                let target = self.target(&slot.key().0, &slot.key().1, now).await?;
                slot.insert(target);
            }
        }
        let attempts = jobs.iter().map(|job| {
            let target = targets.get(&(job.tenant_id.clone(), job.target_id.clone()));
            self.attempt(job, target)
        });
        for result in futures::future::join_all(attempts).await {
            result?;
        }
        Ok(count)
    }

    /// Reads an endpoint and the secrets it signs with now.
    async fn target(&self, tenant_id: &str, target_id: &str, now: i64) -> Result<Target, StoreError> {
        let endpoint = match self.store.webhook_endpoint(tenant_id, target_id).await {
            Ok(endpoint) => endpoint,
            // Deleted: nothing can be sent, but its events are kept (dead letters), not dropped.
            Err(StoreError::NotFound(_)) => return Ok(Target::Unusable("endpoint deleted")),
            Err(other) => return Err(other),
        };
        if !endpoint.enabled {
            return Ok(Target::Unusable("endpoint disabled"));
        }
        let secrets = self.store.webhook_signing_secrets(tenant_id, target_id, now).await?;
        let mut signing = vec![WebhookSecret::from_bytes(secrets.current.expose_secret().to_vec())];
        signing.extend(secrets.previous.map(|p| WebhookSecret::from_bytes(p.expose_secret().to_vec())));
        Ok(Target::Ready { endpoint, signing })
    }

    /// Makes one attempt of a claimed job to its target and records it.
    async fn attempt(&self, job: &DeliveryJob, target: Option<&Target>) -> Result<(), StoreError> {
        let started = now_ms();
        let (endpoint, signing) = match target {
            Some(Target::Ready { endpoint, signing }) => (endpoint, signing),
            Some(Target::Unusable(reason)) => {
                return self.finish(job, started, None, reason, "dead", AfterAttempt::Dead).await;
            }
            // Every job's target was read above; a job without one stays leased and is retried.
            None => return Ok(()),
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
                self.store.set_webhook_enabled(&system, &job.tenant_id, &job.target_id, Some(reason)).await?;
                ("gone", AfterAttempt::Dead)
            }
            Verdict::Retry { after } => {
                let tries = usize::try_from(job.tries + 1).unwrap_or(usize::MAX);
                match self.config.schedule.after_failure(tries, after, rand::random::<f64>()) {
                    NextStep::RetryAfter(wait) => {
                        let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                        ("retry", AfterAttempt::RetryAt(now_ms().saturating_add(wait)))
                    }
                    NextStep::DeadLetter => ("dead", AfterAttempt::Dead),
                }
            }
        };
        self.finish(job, started, status, &snippet, outcome, after).await
    }

    async fn finish(
        &self,
        job: &DeliveryJob,
        started: i64,
        status: Option<u16>,
        snippet: &str,
        outcome: &str,
        after: AfterAttempt,
    ) -> Result<(), StoreError> {
        let record = AttemptRecord {
            at_ms: started,
            status: status.map(i64::from),
            latency_ms: now_ms().saturating_sub(started),
            outcome: outcome.to_owned(),
            snippet: snippet.to_owned(),
        };
        if !self.store.finish_delivery_attempt(&job.id, &self.config.owner, &record, after).await? {
            // Our lease ran out and another worker took the job: it records its own attempt.
            tracing::info!(job = job.id, "a delivery's lease was lost before its attempt was recorded");
        }
        Ok(())
    }
}

/// Reads an endpoint's custom headers (a JSON object of strings); anything else is ignored.
fn custom_headers(json: &str) -> Vec<(String, String)> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json) {
        Ok(map) => map.into_iter().filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned()))).collect(),
        Err(_) => Vec::new(),
    }
}
