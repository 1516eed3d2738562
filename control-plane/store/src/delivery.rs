//! The delivery queue: every webhook (later push and SMS) waits here until it is delivered or
//! dead-lettered, never only in a worker's memory.
//!
//! A job is one event for one target (a webhook endpoint), unique by `(target, event id)`, so
//! queuing an event twice (a worker that restarts from a saved position) queues it once.
//! Workers *claim* due jobs under a lease (owner and expiry): a claim skips jobs whose lease is
//! still running, so two workers never hold one job at once, and a killed worker's jobs are
//! claimed again once its lease has run out. A worker finishes a job only while it still owns
//! it; if its lease ran out and another worker took the job, the finish is refused (that other
//! worker delivers again, with the same event id: at least once, de-duplicable).
//!
//! A claim takes at most `per_target` jobs of one target, counting the ones already leased, so a
//! dead or slow endpoint with a long backlog holds back only its own deliveries. It visits the
//! targets that have pending jobs one index seek at a time, from where the worker's last claim
//! stopped, so every target is served in turn and a claim's cost does not grow with any
//! backlog. Under concurrent claims the cap is soft (two claims may count the same leases),
//! never the exclusivity of a job, which each claim re-checks row by row as it takes it: a
//! claim that loses a race for a row skips it and may return fewer jobs than were due (the
//! worker claims again). On PostgreSQL a claim locks the rows it picks and skips those another
//! claim holds (`FOR UPDATE SKIP LOCKED`).
//!
//! Times are Unix milliseconds, given by the caller (the worker's clock).

use sqlx::Row as _;

use crate::db::DbRow;
use crate::delivery_batch::{FINISH_GROUP, finish_group};
use crate::{Backend, Store, StoreError, id};

/// An event to deliver to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The tenant.
    pub tenant_id: String,
    /// The app the event happened in.
    pub app_id: String,
    /// Where it goes (a webhook endpoint's id).
    pub target_id: String,
    /// The event's stable id, sent with every attempt.
    pub event_id: String,
    /// The request body.
    pub payload: Vec<u8>,
    /// Headers of this delivery besides the target's own (a rule's), a JSON object of strings.
    pub headers: String,
    /// How many events it carries (a rule's batch; 1 otherwise), counted in usage once delivered.
    pub events: i64,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for an attempt (or in one).
    Pending,
    /// Delivered.
    Delivered,
    /// Dead-lettered after its last attempt; replayable.
    Dead,
}

impl DeliveryState {
    /// Its name: `pending`, `delivered` or `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "dead" => Ok(DeliveryState::Dead),
            _ => Err(StoreError::NotFound("delivery state")),
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryJob {
    /// The job's id.
    pub id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The app.
    pub app_id: String,
    /// The target.
    pub target_id: String,
    /// The event's stable id.
    pub event_id: String,
    /// The request body (empty when it is no longer kept).
    pub payload: Vec<u8>,
    /// Headers of this delivery besides the target's own, a JSON object of strings.
    pub headers: String,
    /// Whether the body is still kept: a delivered request's body is deleted by the attempt that
    /// delivered it (the receiver has it); its record and attempts stay.
    pub body_kept: bool,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts in all.
    pub attempts: i64,
    /// Attempts since it was queued or last replayed (what the retry schedule counts).
    pub tries: i64,
    /// The events its request carries (what usage and the tenant's quota count).
    pub events: i64,
    /// When the next attempt is due.
    pub next_attempt_ms: i64,
}

/// How an attempt went, as the delivery log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// When it was made.
    pub at_ms: i64,
    /// The HTTP status, if an answer came.
    pub status: Option<i64>,
    /// How long it took.
    pub latency_ms: i64,
    /// `delivered`, `retry`, `gone`, `refused` or `dead`: the worker's verdict.
    pub outcome: String,
    /// The start of the answer, or what went wrong.
    pub snippet: String,
}

/// An attempt in the delivery log, with its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedAttempt {
    /// The job.
    pub job_id: String,
    /// Its number among the job's attempts (from 1).
    pub attempt: i64,
    /// The attempt.
    pub record: AttemptRecord,
}

/// What happens to a job after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    /// It was delivered.
    Delivered,
    /// Try again at this time.
    RetryAt(i64),
    /// That was the last attempt: dead-letter it.
    Dead,
}

/// Most targets one claim visits.
const CLAIM_TARGETS: i64 = 64;

/// Most bytes of a response kept in the delivery log.
pub const MAX_SNIPPET_BYTES: usize = 4096;

/// The columns of a job's row a [`DeliveryJob`] is read from, as a literal (queries are static
/// strings); its body and headers are in `delivery_bodies`.
macro_rules! job_columns {
    () => {
        "id, tenant_id, app_id, target_id, event_id, state, attempts, tries, events, next_attempt_ms"
    };
}

/// The same columns of the table named by `$t` (`"delivery_jobs."`), where a join makes a bare
/// `id` ambiguous.
macro_rules! job_columns_of {
    ($t:literal) => {
        concat!(
            $t,
            "id AS id, ",
            $t,
            "tenant_id AS tenant_id, ",
            $t,
            "app_id AS app_id, ",
            $t,
            "target_id AS target_id, ",
            $t,
            "event_id AS event_id, ",
            $t,
            "state AS state, ",
            $t,
            "attempts AS attempts, ",
            $t,
            "tries AS tries, ",
            $t,
            "events AS events, ",
            $t,
            "next_attempt_ms AS next_attempt_ms"
        )
    };
}

/// A whole job: its row's columns and its body's if it is kept, from `delivery_jobs` joined to
/// `delivery_bodies` (the query's `FROM`).
macro_rules! whole_job {
    () => {
        concat!(
            job_columns_of!("delivery_jobs."),
            ", delivery_bodies.payload AS payload, delivery_bodies.headers AS headers \
             FROM delivery_jobs LEFT JOIN delivery_bodies ON delivery_bodies.job_id = delivery_jobs.id"
        )
    };
}

/// A job read with [`whole_job`]'s columns.
fn job(row: &DbRow) -> Result<DeliveryJob, StoreError> {
    let mut job = job_row(row)?;
    let payload: Option<Vec<u8>> = row.try_get("payload")?;
    let headers: Option<String> = row.try_get("headers")?;
    if let (Some(payload), Some(headers)) = (payload, headers) {
        (job.payload, job.headers, job.body_kept) = (payload, headers, true);
    }
    Ok(job)
}

/// A job read from its row alone, with an empty body (filled in from `delivery_bodies`).
fn job_row(row: &DbRow) -> Result<DeliveryJob, StoreError> {
    Ok(DeliveryJob {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        app_id: row.try_get("app_id")?,
        target_id: row.try_get("target_id")?,
        event_id: row.try_get("event_id")?,
        payload: Vec::new(),
        headers: String::new(),
        body_kept: false,
        state: DeliveryState::parse(&row.try_get::<String, _>("state")?)?,
        attempts: row.try_get("attempts")?,
        tries: row.try_get("tries")?,
        events: row.try_get("events")?,
        next_attempt_ms: row.try_get("next_attempt_ms")?,
    })
}

/// Cuts a snippet to [`MAX_SNIPPET_BYTES`] at a character boundary.
pub(crate) fn clipped(snippet: &str) -> &str {
    let mut end = snippet.len().min(MAX_SNIPPET_BYTES);
    while !snippet.is_char_boundary(end) {
        end -= 1;
    }
    &snippet[..end]
}

/// An attempt of a job to record, and what happens to the job after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedAttempt {
    /// The job.
    pub job_id: String,
    /// The attempt.
    pub record: AttemptRecord,
    /// What happens to the job.
    pub after: AfterAttempt,
    /// The job's body from now on, when the attempt delivered only part of it (a push job's
    /// devices left to try again); `None`: unchanged.
    pub rest: Option<Vec<u8>>,
    /// Pushes the attempt delivered (a push job's devices reached), counted in usage.
    pub pushed: i64,
    /// The segments Twilio billed for a text the attempt delivered, counted in usage.
    pub segments: i64,
}

impl FinishedAttempt {
    /// An attempt of `job_id` that leaves its body as it is and delivered no push or text.
    pub fn new(job_id: &str, record: AttemptRecord, after: AfterAttempt) -> Self {
        Self { job_id: job_id.to_owned(), record, after, rest: None, pushed: 0, segments: 0 }
    }
}

/// Inserts a job and its body unless its event is queued for its target already (or its app
/// is not in its tenant); returns whether it did. The caller's transaction keeps the two rows
/// together.
pub(crate) async fn insert_delivery(
    conn: &mut sqlx::AnyConnection,
    delivery: &NewDelivery,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let job_id = id::new(id::DELIVERY);
    let result = sqlx::query(
        "INSERT INTO delivery_jobs (id, tenant_id, app_id, target_id, event_id, state, \
         attempts, tries, next_attempt_ms, created_ms, events) \
         SELECT $1, tenant_id, id, $3, $4, 'pending', 0, 0, $5, $5, $7 FROM apps \
         WHERE id = $2 AND tenant_id = $6 \
         ON CONFLICT (target_id, event_id) DO NOTHING",
    )
    .bind(&job_id)
    .bind(&delivery.app_id)
    .bind(&delivery.target_id)
    .bind(&delivery.event_id)
    .bind(now_ms)
    .bind(&delivery.tenant_id)
    .bind(delivery.events)
    .execute(&mut *conn)
    .await
    .map_err(|err| StoreError::from_sqlx(err, "delivery", "app"))?;
    if result.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query("INSERT INTO delivery_bodies (job_id, payload, headers) VALUES ($1, $2, $3)")
        .bind(&job_id)
        .bind(&delivery.payload)
        .bind(&delivery.headers)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

impl Store {
    /// Queues an event for a target, due at `now_ms`; returns `false` (and changes nothing)
    /// when that event is already queued for that target.
    pub async fn enqueue_delivery(&self, delivery: &NewDelivery, now_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if insert_delivery(&mut tx, delivery, now_ms).await? {
            tx.commit().await?;
            return Ok(true);
        }
        tx.commit().await?;
        let mut conn = self.pool.acquire().await?;
        // Nothing inserted: a duplicate, or no such app in that tenant.
        let known: Option<(String,)> = sqlx::query_as("SELECT id FROM apps WHERE id = $1 AND tenant_id = $2")
            .bind(&delivery.app_id)
            .bind(&delivery.tenant_id)
            .fetch_optional(&mut *conn)
            .await?;
        match known {
            Some(_) => Ok(false),
            None => Err(StoreError::NotFound("app")),
        }
    }

    /// Queues events of apps the caller vouches for (it checked each app is its tenant's), a
    /// hundred per statement in one transaction; an event already queued for its target is
    /// skipped (its id is the de-duplication key).
    pub async fn enqueue_deliveries(
        &self,
        deliveries: &[NewDelivery],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        crate::delivery_batch::insert_deliveries(&mut tx, self.backend, deliveries, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims up to `limit` due jobs for `owner` until `lease_until_ms`, at most `per_target`
    /// of one target in flight (its jobs already leased count). Targets are visited in id order
    /// from the first after `start_after` (wrapping around), so a worker that passes the last
    /// target of its previous claim serves every target in turn; each target's jobs are taken
    /// oldest due first.
    pub async fn claim_deliveries(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
        per_target: i64,
        start_after: &str,
    ) -> Result<Vec<DeliveryJob>, StoreError> {
        let mut jobs = Vec::new();
        let mut targets = self.pending_targets(start_after, CLAIM_TARGETS).await?;
        if (targets.len() as i64) < CLAIM_TARGETS && !start_after.is_empty() {
            let wrapped = self.pending_targets("", CLAIM_TARGETS - targets.len() as i64).await?;
            targets.extend(wrapped.into_iter().filter(|target| target.as_str() <= start_after));
        }
        for target in targets {
            let room = limit - jobs.len() as i64;
            if room <= 0 {
                break;
            }
            let (in_flight,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM delivery_jobs WHERE target_id = $1 AND lease_until_ms >= $2",
            )
            .bind(&target)
            .bind(now_ms)
            .fetch_one(&self.pool)
            .await?;
            let take = room.min(per_target - in_flight);
            if take <= 0 {
                continue;
            }
            // On PostgreSQL the rows are locked as they are picked, skipping any another claim
            // holds (`FOR UPDATE SKIP LOCKED`), so concurrent claims take different jobs rather
            // than queue on each other's rows; SQLite has one writer, and no such clause.
            let sql = match self.backend {
                // The picked rows in a materialised CTE: an `IN (… LIMIT … FOR UPDATE)` subquery
                // may be run again by the planner and take more than its limit.
                Backend::Postgres => concat!(
                    "WITH picked AS MATERIALIZED (\
                       SELECT id FROM delivery_jobs WHERE target_id = $3 AND state = 'pending' \
                       AND next_attempt_ms <= $4 AND (lease_until_ms IS NULL OR lease_until_ms < $4) \
                       ORDER BY next_attempt_ms, id LIMIT $5 FOR UPDATE SKIP LOCKED\
                     ) \
                     UPDATE delivery_jobs SET lease_owner = $1, lease_until_ms = $2 FROM picked \
                     WHERE delivery_jobs.id = picked.id \
                     RETURNING ",
                    job_columns_of!("delivery_jobs.")
                ),
                // `+state`: the picked rows are found by their id (the primary key). With a bare
                // `state` SQLite's planner walked the index on (state, target_id) instead, reading
                // every pending job of the queue on each claim: a backlog slowed its own drain.
                Backend::Sqlite => concat!(
                    "UPDATE delivery_jobs SET lease_owner = $1, lease_until_ms = $2 \
                     WHERE id IN (\
                       SELECT id FROM delivery_jobs WHERE target_id = $3 AND state = 'pending' \
                       AND next_attempt_ms <= $4 AND (lease_until_ms IS NULL OR lease_until_ms < $4) \
                       ORDER BY next_attempt_ms, id LIMIT $5\
                     ) \
                     AND +state = 'pending' AND (lease_until_ms IS NULL OR lease_until_ms < $4) \
                     RETURNING ",
                    job_columns!()
                ),
            };
            let rows = sqlx::query(sql)
                .bind(owner)
                .bind(lease_until_ms)
                .bind(&target)
                .bind(now_ms)
                .bind(take)
                .fetch_all(&self.pool)
                .await?;
            let mut taken = rows.iter().map(job_row).collect::<Result<Vec<_>, _>>()?;
            crate::delivery_batch::fill_bodies(&self.pool, self.backend, &mut taken).await?;
            taken.sort_by(|a, b| (a.next_attempt_ms, &a.id).cmp(&(b.next_attempt_ms, &b.id)));
            jobs.extend(taken);
        }
        Ok(jobs)
    }

    /// Up to `max` targets with pending jobs after `after`, in id order: one index seek each
    /// (a skip scan), however many jobs each target has.
    async fn pending_targets(&self, after: &str, max: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(Option<String>,)> = sqlx::query_as(
            "WITH RECURSIVE targets (target_id, n) AS (\
               SELECT (SELECT MIN(target_id) FROM delivery_jobs WHERE state = 'pending' AND target_id > $1), 1 \
               UNION ALL \
               SELECT (SELECT MIN(target_id) FROM delivery_jobs WHERE state = 'pending' \
                 AND target_id > targets.target_id), n + 1 \
               FROM targets WHERE targets.target_id IS NOT NULL AND n < $2\
             ) SELECT target_id FROM targets WHERE target_id IS NOT NULL",
        )
        .bind(after)
        .bind(max)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().filter_map(|(target,)| target).collect())
    }

    /// Records an attempt of a job `owner` holds and moves the job on (delivered, due again, or
    /// dead); returns `false` (and records nothing) when `owner` no longer
    /// holds it.
    pub async fn finish_delivery_attempt(
        &self,
        job_id: &str,
        owner: &str,
        record: &AttemptRecord,
        after: AfterAttempt,
    ) -> Result<bool, StoreError> {
        let finished = [FinishedAttempt::new(job_id, record.clone(), after)];
        Ok(self.finish_delivery_attempts(owner, &finished).await?[0])
    }

    /// Records several attempts in one transaction (a worker's group commit); returns, for each,
    /// whether `owner` still held its job (an attempt of a job it lost is not recorded). The
    /// bodies of the requests delivered are deleted: they cost disk no longer, nor a write when
    /// their pages are reused.
    pub async fn finish_delivery_attempts(
        &self,
        owner: &str,
        finished: &[FinishedAttempt],
    ) -> Result<Vec<bool>, StoreError> {
        let mut recorded = Vec::with_capacity(finished.len());
        let mut tx = self.pool.begin().await?;
        for group in finished.chunks(FINISH_GROUP) {
            recorded.extend(finish_group(&mut tx, self.backend, owner, group).await?);
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Deletes delivered jobs (and their log) finished before `before_ms`, a batch at a time so
    /// that no delete holds the database for long; returns how many. Pending jobs and dead
    /// letters stay.
    pub async fn purge_delivered(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            let result = sqlx::query(
                "DELETE FROM delivery_jobs WHERE id IN (\
                   SELECT id FROM delivery_jobs WHERE state = 'delivered' AND finished_ms < $1 LIMIT 5000\
                 )",
            )
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
            deleted += result.rows_affected();
            if result.rows_affected() < 5000 {
                return Ok(deleted);
            }
        }
    }

    /// Returns a job of `tenant_id`.
    pub async fn delivery(&self, tenant_id: &str, job_id: &str) -> Result<DeliveryJob, StoreError> {
        let sql =
            concat!("SELECT ", whole_job!(), " WHERE delivery_jobs.id = $1 AND delivery_jobs.tenant_id = $2");
        let row = sqlx::query(sql).bind(job_id).bind(tenant_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(job).transpose()?.ok_or(StoreError::NotFound("delivery"))
    }

    /// Returns the dead letters of a target of `tenant_id`, oldest first, at most `limit`.
    pub async fn dead_deliveries(
        &self,
        tenant_id: &str,
        target_id: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryJob>, StoreError> {
        let sql = concat!(
            "SELECT ",
            whole_job!(),
            " WHERE delivery_jobs.tenant_id = $1 AND delivery_jobs.target_id = $2 \
             AND delivery_jobs.state = 'dead' ORDER BY delivery_jobs.finished_ms, delivery_jobs.id LIMIT $3"
        );
        let rows = sqlx::query(sql).bind(tenant_id).bind(target_id).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(job).collect()
    }

    /// Puts a dead letter of `tenant_id` back in the queue, due at `now_ms`, with a fresh retry
    /// schedule (its event id and its attempts so far stay).
    pub async fn replay_delivery(
        &self,
        tenant_id: &str,
        job_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE delivery_jobs SET state = 'pending', tries = 0, next_attempt_ms = $3, finished_ms = NULL \
             WHERE id = $1 AND tenant_id = $2 AND state = 'dead'",
        )
        .bind(job_id)
        .bind(tenant_id)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 1 { Ok(()) } else { Err(StoreError::NotFound("dead delivery")) }
    }

    /// Returns the delivery log of a target of `tenant_id`, newest first, at most `limit`.
    pub async fn delivery_log(
        &self,
        tenant_id: &str,
        target_id: &str,
        limit: i64,
    ) -> Result<Vec<LoggedAttempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT job_id, attempt, at_ms, status, latency_ms, outcome, snippet FROM delivery_attempts \
             WHERE tenant_id = $1 AND target_id = $2 ORDER BY at_ms DESC, job_id, attempt DESC LIMIT $3",
        )
        .bind(tenant_id)
        .bind(target_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LoggedAttempt {
                    job_id: row.try_get("job_id")?,
                    attempt: row.try_get("attempt")?,
                    record: AttemptRecord {
                        at_ms: row.try_get("at_ms")?,
                        status: row.try_get("status")?,
                        latency_ms: row.try_get("latency_ms")?,
                        outcome: row.try_get("outcome")?,
                        snippet: row.try_get("snippet")?,
                    },
                })
            })
            .collect()
    }
}
