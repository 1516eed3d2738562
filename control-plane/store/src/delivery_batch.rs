//! The delivery queue's many-rows-per-statement writes: the feed router's jobs queued a hundred
//! per statement, and a worker's finished attempts recorded with two statements per group (the
//! jobs moved on, their log entries), with the group's delivered requests added to usage in the
//! same transaction. Their SQL is built at run time (a row's placeholders per row), with the
//! placeholders each backend binds fastest. A job's body is a row of its own in
//! `delivery_bodies`, written once (a claim and an attempt rewrite only the job's small row)
//! and deleted with the attempt that delivers it.

use sqlx::Row as _;

use crate::db::DbPool;
use crate::delivery::{AfterAttempt, DeliveryJob, DeliveryState, FinishedAttempt, NewDelivery, clipped};
use crate::{Backend, StoreError, id};

/// Attempts recorded by one pair of statements.
pub(crate) const FINISH_GROUP: usize = 128;

/// Jobs inserted by one statement.
const INSERT_GROUP: usize = 100;

/// Records a group of attempts with two statements (the jobs moved on, then their log
/// entries) and deletes the delivered ones' bodies, inside a transaction; for each, whether `owner` still held its job.
pub(crate) async fn finish_group(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    owner: &str,
    group: &[FinishedAttempt],
) -> Result<Vec<bool>, StoreError> {
    // Four placeholders per row, then the owner's.
    let rows: Vec<String> = (0..group.len())
        .map(|i| {
            let p = |k: usize| placeholder(backend, 4 * i + k);
            format!(
                "(CAST({} AS TEXT), CAST({} AS TEXT), CAST({} AS BIGINT), CAST({} AS BIGINT))",
                p(1),
                p(2),
                p(3),
                p(4)
            )
        })
        .collect();
    let sql = format!(
        "UPDATE delivery_jobs SET state = v.column2, attempts = attempts + 1, tries = tries + 1, \
         next_attempt_ms = COALESCE(v.column3, delivery_jobs.next_attempt_ms), finished_ms = v.column4, \
         lease_owner = NULL, lease_until_ms = NULL FROM (VALUES {}) AS v \
         WHERE delivery_jobs.id = v.column1 AND delivery_jobs.state = 'pending' AND delivery_jobs.lease_owner = {} \
         RETURNING delivery_jobs.id AS id, delivery_jobs.attempts AS attempts, \
         delivery_jobs.tenant_id AS tenant_id, delivery_jobs.target_id AS target_id, \
         delivery_jobs.app_id AS app_id, delivery_jobs.events AS events",
        rows.join(", "),
        placeholder(backend, 4 * group.len() + 1)
    );
    let mut update = sqlx::query(sqlx::AssertSqlSafe(sql));
    for finished in group {
        let at = finished.record.at_ms;
        let (state, next, done) = match finished.after {
            AfterAttempt::Delivered => (DeliveryState::Delivered, None, Some(at)),
            AfterAttempt::RetryAt(next) => (DeliveryState::Pending, Some(next), None),
            AfterAttempt::Dead => (DeliveryState::Dead, None, Some(at)),
        };
        update = update.bind(finished.job_id.as_str()).bind(state.as_str()).bind(next).bind(done);
    }
    let rows = update.bind(owner).fetch_all(&mut *conn).await?;
    let mut moved = std::collections::HashMap::with_capacity(rows.len());
    // Delivered webhook requests and their events, pushes and texts, per app and minute.
    let mut used: std::collections::BTreeMap<(String, i64), (String, Used)> = Default::default();
    for row in &rows {
        let id: String = row.try_get("id")?;
        let attempt: i64 = row.try_get("attempts")?;
        let tenant_id: String = row.try_get("tenant_id")?;
        let target_id: String = row.try_get("target_id")?;
        // A push target's deliveries are pushes, counted per device reached by any attempt
        // (one may reach some of its devices and retry the rest); an SMS target's are texts and
        // their segments: neither is webhook usage, nor the webhook quota's.
        let push = target_id.starts_with("push:");
        let sms = target_id.starts_with("sms:");
        let counted = |f: &&FinishedAttempt| {
            f.job_id == id && if push { f.pushed > 0 } else { f.after == AfterAttempt::Delivered }
        };
        // A rule's push queued to its devices is neither: its pushes are counted as they go.
        let pushout = target_id.starts_with("pushout:");
        if let Some(finished) = group.iter().find(counted).filter(|_| !pushout) {
            let minute = finished.record.at_ms.div_euclid(60_000) * 60;
            let app_id: String = row.try_get("app_id")?;
            let events: i64 = row.try_get("events")?;
            let entry =
                &mut used.entry((app_id, minute)).or_insert_with(|| (tenant_id.clone(), Used::default())).1;
            if push {
                entry.pushes += finished.pushed;
            } else if sms {
                entry.sms += 1;
                entry.sms_segments += finished.segments;
            } else {
                entry.requests += 1;
                entry.events += events;
            }
        }
        moved.insert(id, (attempt, tenant_id, target_id));
    }
    for ((app_id, minute), (tenant_id, add)) in used {
        sqlx::query(
            "INSERT INTO delivery_usage (app_id, minute, tenant_id, requests, events, pushes, sms, sms_segments) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (app_id, minute) DO UPDATE SET requests = delivery_usage.requests + excluded.requests, \
             events = delivery_usage.events + excluded.events, pushes = delivery_usage.pushes + excluded.pushes, \
             sms = delivery_usage.sms + excluded.sms, sms_segments = delivery_usage.sms_segments + excluded.sms_segments",
        )
        .bind(app_id)
        .bind(minute)
        .bind(tenant_id)
        .bind(add.requests)
        .bind(add.events)
        .bind(add.pushes)
        .bind(add.sms)
        .bind(add.sms_segments)
        .execute(&mut *conn)
        .await?;
    }
    // A delivered body is the receiver's now: it costs disk no longer, nor a write when its
    // pages are reused (a retried one and a dead letter keep theirs).
    let delivered: Vec<&str> = group
        .iter()
        .filter(|finished| finished.after == AfterAttempt::Delivered && moved.contains_key(&finished.job_id))
        .map(|finished| finished.job_id.as_str())
        .collect();
    if !delivered.is_empty() {
        let sql = format!(
            "DELETE FROM delivery_bodies WHERE job_id IN ({})",
            placeholders(backend, delivered.len())
        );
        let mut delete = sqlx::query(sqlx::AssertSqlSafe(sql));
        for job_id in delivered {
            delete = delete.bind(job_id);
        }
        delete.execute(&mut *conn).await?;
    }
    // What is left of a job that delivered part of its body (rare: a push some of whose
    // devices are to be tried again) replaces its body, one statement each.
    for finished in
        group.iter().filter(|f| f.after != AfterAttempt::Delivered && moved.contains_key(&f.job_id))
    {
        if let Some(rest) = &finished.rest {
            sqlx::query("UPDATE delivery_bodies SET payload = $1 WHERE job_id = $2")
                .bind(rest.as_slice())
                .bind(finished.job_id.as_str())
                .execute(&mut *conn)
                .await?;
        }
    }
    let logged: Vec<(&FinishedAttempt, &(i64, String, String))> =
        group.iter().filter_map(|finished| moved.get(&finished.job_id).map(|m| (finished, m))).collect();
    if !logged.is_empty() {
        let sql = format!(
            "INSERT INTO delivery_attempts (job_id, attempt, tenant_id, target_id, at_ms, status, latency_ms, \
             outcome, snippet) VALUES {}",
            values(backend, logged.len(), 9)
        );
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (finished, (attempt, tenant_id, target_id)) in &logged {
            let record = &finished.record;
            insert = insert
                .bind(finished.job_id.as_str())
                .bind(*attempt)
                .bind(tenant_id.as_str())
                .bind(target_id.as_str())
                .bind(record.at_ms)
                .bind(record.status)
                .bind(record.latency_ms)
                .bind(record.outcome.as_str())
                .bind(clipped(&record.snippet));
        }
        insert
            .execute(&mut *conn)
            .await
            .map_err(|err| StoreError::from_sqlx(err, "delivery attempt", "delivery"))?;
    }
    Ok(group.iter().map(|finished| moved.contains_key(&finished.job_id)).collect())
}

/// The `n`th placeholder (from 1) of a statement built at run time: `$n` for PostgreSQL, `?` for
/// SQLite, whose driver binds plain `?` by position but looks every `$n` up by name (a cost
/// that grows with the square of a statement's parameters).
pub(crate) fn placeholder(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Postgres => format!("${n}"),
        Backend::Sqlite => "?".to_owned(),
    }
}

/// `n` placeholders, comma-separated: the list of an `IN (…)`.
fn placeholders(backend: Backend, n: usize) -> String {
    (1..=n).map(|k| placeholder(backend, k)).collect::<Vec<_>>().join(", ")
}

/// `rows` tuples of `width` placeholders: `($1, …, $width), ($width+1, …)`.
pub(crate) fn values(backend: Backend, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|row| {
            let columns: Vec<String> =
                (1..=width).map(|column| placeholder(backend, row * width + column)).collect();
            format!("({})", columns.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts jobs of apps the caller vouches for (the feed router's, whose rules name them),
/// each unless its event is queued for its target already, a hundred per statement; then the
/// bodies of those it inserted.
pub(crate) async fn insert_deliveries(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    deliveries: &[NewDelivery],
    now_ms: i64,
) -> Result<(), StoreError> {
    for group in deliveries.chunks(INSERT_GROUP) {
        let ids: Vec<String> = group.iter().map(|_| id::new(id::DELIVERY)).collect();
        let sql = format!(
            "INSERT INTO delivery_jobs (id, tenant_id, app_id, target_id, event_id, \
             next_attempt_ms, created_ms, events, state, attempts, tries) \
             SELECT column1, column2, column3, column4, column5, column6, column7, column8, \
             'pending', 0, 0 \
             FROM (VALUES {}) AS v WHERE true ON CONFLICT (target_id, event_id) DO NOTHING RETURNING id",
            values(backend, group.len(), 8)
        );
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (delivery, job_id) in group.iter().zip(&ids) {
            insert = insert
                .bind(job_id.as_str())
                .bind(delivery.tenant_id.as_str())
                .bind(delivery.app_id.as_str())
                .bind(delivery.target_id.as_str())
                .bind(delivery.event_id.as_str())
                .bind(now_ms)
                .bind(now_ms)
                .bind(delivery.events);
        }
        let rows = insert
            .fetch_all(&mut *conn)
            .await
            .map_err(|err| StoreError::from_sqlx(err, "delivery", "app"))?;
        let inserted: std::collections::HashSet<String> =
            rows.iter().map(|row| row.try_get("id")).collect::<Result<_, _>>()?;
        let bodies: Vec<(&NewDelivery, &String)> =
            group.iter().zip(&ids).filter(|(_, job_id)| inserted.contains(*job_id)).collect();
        if bodies.is_empty() {
            continue;
        }
        let sql = format!(
            "INSERT INTO delivery_bodies (job_id, payload, headers) VALUES {}",
            values(backend, bodies.len(), 3)
        );
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (delivery, job_id) in bodies {
            insert = insert
                .bind(job_id.as_str())
                .bind(delivery.payload.as_slice())
                .bind(delivery.headers.as_str());
        }
        insert.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Reads the bodies of claimed jobs into `jobs` (one statement per [`INSERT_GROUP`] of them).
/// Every job is queued with its body in one transaction and deleted with it, so a job without a
/// body was deleted since it was claimed (its app with it): it is left out.
pub(crate) async fn fill_bodies(
    pool: &DbPool,
    backend: Backend,
    jobs: &mut Vec<DeliveryJob>,
) -> Result<(), StoreError> {
    let mut bodies = std::collections::HashMap::with_capacity(jobs.len());
    for group in jobs.chunks(INSERT_GROUP) {
        let sql = format!(
            "SELECT job_id, payload, headers FROM delivery_bodies WHERE job_id IN ({})",
            placeholders(backend, group.len())
        );
        let mut select = sqlx::query(sqlx::AssertSqlSafe(sql));
        for job in group {
            select = select.bind(job.id.as_str());
        }
        for row in select.fetch_all(pool).await? {
            let job_id: String = row.try_get("job_id")?;
            bodies.insert(job_id, (row.try_get("payload")?, row.try_get("headers")?));
        }
    }
    jobs.retain_mut(|job| match bodies.remove(&job.id) {
        Some((payload, headers)) => {
            (job.payload, job.headers, job.body_kept) = (payload, headers, true);
            true
        }
        None => false,
    });
    Ok(())
}

/// What one app used in one minute, as the attempts recorded together add it up.
#[derive(Default)]
struct Used {
    requests: i64,
    events: i64,
    pushes: i64,
    sms: i64,
    sms_segments: i64,
}
