//! Usage counted by the relay nodes, per app, per minute and per node, and the time series
//! tenants read.
//!
//! A node flushes what it counted as a batch with a sequence number of its own;
//! [`Store::record_usage`] applies a batch once, so a flush retried after a lost reply is not
//! counted twice.

use sqlx::Row as _;

use crate::db::DbRow;
use crate::{Store, StoreError, id, unix_now};

/// What one node counted for one app in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageRow {
    /// The app.
    pub app_id: String,
    /// The minute, unix seconds (a multiple of 60).
    pub minute: i64,
    /// Messages published.
    pub messages_published: i64,
    /// Messages handed to subscribers (one per subscriber).
    pub messages_delivered: i64,
    /// Payload bytes published.
    pub bytes_published: i64,
    /// Payload bytes handed to subscribers.
    pub bytes_delivered: i64,
    /// The most connections of the app at once on the node.
    pub peak_connections: i64,
    /// Connections times seconds (60 connections for the whole minute: 3,600).
    pub connection_seconds: i64,
}

/// One point of a usage time series.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsagePoint {
    /// The start of the bucket, unix seconds.
    pub start: i64,
    /// Messages published.
    pub messages_published: i64,
    /// Messages delivered.
    pub messages_delivered: i64,
    /// Payload bytes published.
    pub bytes_published: i64,
    /// Payload bytes delivered.
    pub bytes_delivered: i64,
    /// The highest per-minute peak in the bucket (per minute, the nodes' peaks added up: an
    /// upper bound of the true peak, equal to it when the nodes peaked together).
    pub peak_connections: i64,
    /// Connection-minutes.
    pub connection_minutes: i64,
    /// Average concurrent connections over the bucket.
    pub average_connections: i64,
    /// Webhook requests delivered.
    pub webhook_requests: i64,
    /// Events those requests carried (a rule's batch is several).
    pub webhook_events: i64,
    /// Pushes delivered (one per device a push reached and whose service accepted it).
    pub push_deliveries: i64,
    /// Texts Twilio took.
    pub sms_sent: i64,
    /// The segments Twilio billed for them.
    pub sms_segments: i64,
}

/// Returns the start (unix seconds) of the calendar month (UTC) that `unix` is in.
pub fn month_start(unix: i64) -> i64 {
    // Days since 1970-01-01 to a civil date and back (Howard Hinnant's algorithm).
    let days = unix.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day_of_month = doy - (153 * mp + 2) / 5; // 0-based
    (days - day_of_month) * 86_400
}

/// The width of a series' buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One point per minute.
    Minute,
    /// One point per hour.
    Hour,
    /// One point per day (UTC).
    Day,
}

impl Granularity {
    /// Returns the granularity named `minute`, `hour` or `day`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "minute" => Some(Granularity::Minute),
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }

    /// Returns the bucket width in seconds.
    pub const fn seconds(self) -> i64 {
        match self {
            Granularity::Minute => 60,
            Granularity::Hour => 3600,
            Granularity::Day => 86_400,
        }
    }
}

impl Store {
    /// Applies one flushed batch of a node; returns `false` (and changes nothing) if the batch
    /// `(node_id, seq)` was applied before. Rows of apps that do not exist are skipped.
    pub async fn record_usage(&self, node_id: &str, seq: i64, rows: &[UsageRow]) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let first = sqlx::query("INSERT INTO usage_flushes (node_id, seq, at) VALUES ($1, $2, $3)")
            .bind(node_id)
            .bind(seq)
            .bind(unix_now())
            .execute(&mut *tx)
            .await
            .map_err(|err| StoreError::from_sqlx(err, "usage flush", "node"));
        match first {
            Ok(_) => {}
            Err(StoreError::AlreadyExists(_)) => return Ok(false),
            Err(other) => return Err(other),
        }
        for row in rows {
            if !id::is_valid(id::APP, &row.app_id) {
                continue;
            }
            sqlx::query(
                "INSERT INTO usage_minutes (tenant_id, app_id, minute, node_id, messages_published, \
                 messages_delivered, bytes_published, bytes_delivered, peak_connections, connection_seconds) \
                 SELECT tenant_id, id, $2, $3, $4, $5, $6, $7, $8, $9 FROM apps WHERE id = $1 \
                 ON CONFLICT (app_id, minute, node_id) DO UPDATE SET \
                 messages_published = usage_minutes.messages_published + excluded.messages_published, \
                 messages_delivered = usage_minutes.messages_delivered + excluded.messages_delivered, \
                 bytes_published = usage_minutes.bytes_published + excluded.bytes_published, \
                 bytes_delivered = usage_minutes.bytes_delivered + excluded.bytes_delivered, \
                 peak_connections = CASE WHEN excluded.peak_connections > usage_minutes.peak_connections \
                 THEN excluded.peak_connections ELSE usage_minutes.peak_connections END, \
                 connection_seconds = usage_minutes.connection_seconds + excluded.connection_seconds",
            )
            .bind(&row.app_id)
            .bind(row.minute)
            .bind(node_id)
            .bind(row.messages_published)
            .bind(row.messages_delivered)
            .bind(row.bytes_published)
            .bind(row.bytes_delivered)
            .bind(row.peak_connections)
            .bind(row.connection_seconds)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Returns the usage of a tenant (of one of its apps if given) from `from` to `to` (unix
    /// seconds, `to` excluded) in buckets of `granularity`, oldest first; buckets without usage
    /// are left out.
    pub async fn usage(
        &self,
        tenant_id: &str,
        app_id: Option<&str>,
        (from, to): (i64, i64),
        granularity: Granularity,
    ) -> Result<Vec<UsagePoint>, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) || app_id.is_some_and(|app| !id::is_valid(id::APP, app)) {
            return Ok(Vec::new());
        }
        // Per minute first (the nodes' rows of one minute add up), then per bucket.
        let rows = sqlx::query(
            "SELECT minute, CAST(SUM(messages_published) AS BIGINT) AS mp, CAST(SUM(messages_delivered) AS BIGINT) AS md, \
             CAST(SUM(bytes_published) AS BIGINT) AS bp, CAST(SUM(bytes_delivered) AS BIGINT) AS bd, CAST(SUM(peak_connections) AS BIGINT) AS pc, \
             CAST(SUM(connection_seconds) AS BIGINT) AS cs FROM usage_minutes \
             WHERE tenant_id = $1 AND ($2 = '' OR app_id = $2) AND minute >= $3 AND minute < $4 \
             GROUP BY minute ORDER BY minute",
        )
        .bind(tenant_id)
        .bind(app_id.unwrap_or(""))
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let width = granularity.seconds();
        let mut points: Vec<UsagePoint> = Vec::new();
        for row in &rows {
            let minute: i64 = row.try_get("minute")?;
            let start = minute - minute.rem_euclid(width);
            if points.last().is_none_or(|p| p.start != start) {
                points.push(UsagePoint { start, ..UsagePoint::default() });
            }
            if let Some(point) = points.last_mut() {
                add_minute(point, row)?;
            }
        }
        // `add_minute` adds connection-seconds; whole minutes and the average are taken once
        // per bucket, so short connections are not rounded away minute by minute.
        for point in &mut points {
            let seconds = point.connection_minutes;
            point.connection_minutes = seconds / 60;
            point.average_connections = seconds / width;
        }
        // Webhooks, pushes and texts delivered, counted by the delivery workers as they record them.
        let delivered = sqlx::query(
            "SELECT minute, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(events) AS BIGINT) AS events, \
             CAST(SUM(pushes) AS BIGINT) AS pushes, CAST(SUM(sms) AS BIGINT) AS sms, \
             CAST(SUM(sms_segments) AS BIGINT) AS sms_segments FROM delivery_usage WHERE tenant_id = $1 AND ($2 = '' OR app_id = $2) AND minute >= $3 AND minute < $4 \
             GROUP BY minute ORDER BY minute",
        )
        .bind(tenant_id)
        .bind(app_id.unwrap_or(""))
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut by_start: std::collections::BTreeMap<i64, UsagePoint> =
            points.into_iter().map(|point| (point.start, point)).collect();
        for row in &delivered {
            let minute: i64 = row.try_get("minute")?;
            let start = minute - minute.rem_euclid(width);
            let point =
                by_start.entry(start).or_insert_with(|| UsagePoint { start, ..UsagePoint::default() });
            point.webhook_requests += row.try_get::<i64, _>("requests")?;
            point.webhook_events += row.try_get::<i64, _>("events")?;
            point.push_deliveries += row.try_get::<i64, _>("pushes")?;
            point.sms_sent += row.try_get::<i64, _>("sms")?;
            point.sms_segments += row.try_get::<i64, _>("sms_segments")?;
        }
        Ok(by_start.into_values().collect())
    }

    /// Returns the messages a tenant published since `since` (unix seconds), as flushed.
    pub async fn messages_published_since(&self, tenant_id: &str, since: i64) -> Result<i64, StoreError> {
        self.tenant_total_since(
            "SELECT CAST(COALESCE(SUM(messages_published), 0) AS BIGINT) AS total FROM usage_minutes \
             WHERE tenant_id = $1 AND minute >= $2",
            tenant_id,
            since,
        )
        .await
    }

    /// Returns the webhook events delivered to a tenant's endpoints since `since` (unix
    /// seconds): what its monthly delivery quota counts.
    pub async fn webhook_events_delivered_since(
        &self,
        tenant_id: &str,
        since: i64,
    ) -> Result<i64, StoreError> {
        self.tenant_total_since(
            "SELECT CAST(COALESCE(SUM(events), 0) AS BIGINT) AS total FROM delivery_usage \
             WHERE tenant_id = $1 AND minute >= $2",
            tenant_id,
            since,
        )
        .await
    }

    /// Runs `sql`, a sum over a tenant's minutes (`$1` the tenant, `$2` the first minute).
    async fn tenant_total_since(
        &self,
        sql: &'static str,
        tenant_id: &str,
        since: i64,
    ) -> Result<i64, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Ok(0);
        }
        let row = sqlx::query(sql).bind(tenant_id).bind(since).fetch_one(&self.pool).await?;
        Ok(sum(&row, "total")?)
    }

    /// Forgets applied flushes older than `keep_secs` (a node retries a flush for minutes, not
    /// days); returns how many.
    pub async fn purge_usage_flushes(&self, keep_secs: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM usage_flushes WHERE at < $1")
            .bind(unix_now() - keep_secs)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// Reads a sum (cast to BIGINT in the query: PostgreSQL sums BIGINT as NUMERIC).
fn sum(row: &DbRow, column: &str) -> Result<i64, sqlx::Error> {
    row.try_get::<i64, _>(column)
}

fn add_minute(point: &mut UsagePoint, row: &DbRow) -> Result<(), sqlx::Error> {
    point.messages_published += sum(row, "mp")?;
    point.messages_delivered += sum(row, "md")?;
    point.bytes_published += sum(row, "bp")?;
    point.bytes_delivered += sum(row, "bd")?;
    point.peak_connections = point.peak_connections.max(sum(row, "pc")?);
    point.connection_minutes += sum(row, "cs")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_starts_are_the_first_of_the_month_utc() {
        // 2026-11-24T23:00:00Z -> 2026-11-01T00:00:00Z
        assert_eq!(month_start(1_795_561_200), 1_793_491_200);
        // The first second of a month is its own start; the last second of February 2024 (leap).
        assert_eq!(month_start(1_793_491_200), 1_793_491_200);
        assert_eq!(month_start(1_709_251_199), 1_706_745_600);
        assert_eq!(month_start(0), 0);
    }
}
