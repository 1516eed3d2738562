//! Texts (SMS): each one an app queued, what it costs, how far it got (Twilio's status callbacks),
//! and each tenant's SMS quota.
//!
//! A text costs money, so its quota is taken before it is sent and in the statement that checks
//! the limit (two texts queued at once cannot both take the last segment): a text sent through
//! the HTTP API takes it when it is queued (refused at once, nothing queued), a rule's when a
//! worker first claims it (past the quota it is dead-lettered, replayable, never sent). The
//! quota is a hard limit: `overage_allowed` does not apply to texts.

use sqlx::Row as _;

use crate::db::DbRow;
use crate::delivery::{NewDelivery, insert_delivery};
use crate::{Store, StoreError};

/// A text to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSms {
    /// `sms_` and 24 hex digits: derived from an idempotency key or a rule's event, so a text
    /// queued twice is recorded (and charged) once.
    pub id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The app.
    pub app_id: String,
    /// The recipient, E.164.
    pub to: String,
    /// What it costs, in segments.
    pub segments: i64,
    /// `api`, or the id of the rule that sent it.
    pub origin: String,
}

/// A text as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsRecord {
    /// Its id.
    pub id: String,
    /// The app.
    pub app_id: String,
    /// The recipient.
    pub to: String,
    /// Segments: counted when queued, then as Twilio billed them.
    pub segments: i64,
    /// `api` or a rule id.
    pub origin: String,
    /// `pending` (queued here), Twilio's status (`queued`, `sent`, `delivered`, `undelivered`,
    /// `failed`, …), or `refused` (dead-lettered here).
    pub status: String,
    /// Twilio's message SID, once it took the text.
    pub sid: Option<String>,
    /// Twilio's error code, or this server's reason for refusing it.
    pub error_code: Option<String>,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Unix milliseconds of the last change.
    pub updated_ms: i64,
}

/// Whether a text may be sent under its tenant's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsAdmission {
    /// Yes (its quota is taken).
    Admitted,
    /// A text of this id was recorded already: nothing was taken or queued again.
    Duplicate,
    /// Twilio took this text already (an attempt that was not recorded): not to be sent again.
    AlreadySent,
    /// The month's segments are used up.
    OverMonthlyQuota {
        /// The limit.
        limit: i64,
    },
    /// The tenant sent its most texts this minute.
    OverRate {
        /// The limit, per minute.
        limit: i64,
        /// Seconds until the next minute.
        retry_after_secs: i64,
    },
}

/// The statuses a text may have, ranked: a status callback never moves it back (Twilio's
/// callbacks can arrive out of order), and a final one is never replaced.
const RANK_SQL: &str = "CASE status WHEN 'pending' THEN 0 WHEN 'accepted' THEN 1 WHEN 'scheduled' THEN 1 \
     WHEN 'queued' THEN 1 WHEN 'sending' THEN 2 WHEN 'sent' THEN 3 ELSE 4 END";

/// The rank of `status` (see [`RANK_SQL`]).
fn rank(status: &str) -> i64 {
    match status {
        "pending" => 0,
        "accepted" | "scheduled" | "queued" => 1,
        "sending" => 2,
        "sent" => 3,
        _ => 4,
    }
}

fn record(row: &DbRow) -> Result<SmsRecord, sqlx::Error> {
    Ok(SmsRecord {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        to: row.try_get("to_number")?,
        segments: row.try_get("segments")?,
        origin: row.try_get("origin")?,
        status: row.try_get("status")?,
        sid: row.try_get("sid")?,
        error_code: row.try_get("error_code")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

/// Takes `segments` and one text of `tenant_id`'s quota at `now_ms`, if its limits allow.
async fn take_quota(
    conn: &mut sqlx::AnyConnection,
    tenant_id: &str,
    limits: &crate::Limits,
    segments: i64,
    now_ms: i64,
) -> Result<SmsAdmission, StoreError> {
    let now = now_ms.div_euclid(1000);
    let month = crate::usage::month_start(now);
    let minute = now - now.rem_euclid(60);
    sqlx::query(
        "INSERT INTO sms_quota (tenant_id, month, segments, minute, texts) VALUES ($1, $2, 0, $3, 0) \
         ON CONFLICT (tenant_id) DO NOTHING",
    )
    .bind(tenant_id)
    .bind(month)
    .bind(minute)
    .execute(&mut *conn)
    .await?;
    // One statement checks and takes: another text's cannot come between. A node whose clock is
    // behind (a period older than the stored one) counts in the newer period, never resets it.
    let taken = sqlx::query(
        "UPDATE sms_quota SET \
         segments = (CASE WHEN month >= $2 THEN segments ELSE 0 END) + $4, \
         texts = (CASE WHEN minute >= $3 THEN texts ELSE 0 END) + 1, \
         month = (CASE WHEN month > $2 THEN month ELSE $2 END), \
         minute = (CASE WHEN minute > $3 THEN minute ELSE $3 END) \
         WHERE tenant_id = $1 \
         AND ($5 = 0 OR (CASE WHEN month >= $2 THEN segments ELSE 0 END) + $4 <= $5) \
         AND ($6 = 0 OR (CASE WHEN minute >= $3 THEN texts ELSE 0 END) + 1 <= $6)",
    )
    .bind(tenant_id)
    .bind(month)
    .bind(minute)
    .bind(segments)
    .bind(limits.max_sms_segments_per_month)
    .bind(limits.max_sms_per_minute)
    .execute(&mut *conn)
    .await?;
    if taken.rows_affected() == 1 {
        return Ok(SmsAdmission::Admitted);
    }
    let (used_month, used): (i64, i64) =
        sqlx::query_as("SELECT month, segments FROM sms_quota WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(&mut *conn)
            .await?;
    let used = if used_month >= month { used } else { 0 };
    if limits.max_sms_segments_per_month > 0 && used + segments > limits.max_sms_segments_per_month {
        return Ok(SmsAdmission::OverMonthlyQuota { limit: limits.max_sms_segments_per_month });
    }
    Ok(SmsAdmission::OverRate { limit: limits.max_sms_per_minute, retry_after_secs: 60 - now.rem_euclid(60) })
}

impl Store {
    /// Records a text and queues its delivery in one transaction, taking its quota; nothing is
    /// recorded or queued unless it is [`SmsAdmission::Admitted`]. A text whose id is recorded
    /// already is [`SmsAdmission::Duplicate`] (a request retried with its idempotency key).
    pub async fn queue_sms(
        &self,
        sms: &NewSms,
        delivery: &NewDelivery,
        now_ms: i64,
    ) -> Result<SmsAdmission, StoreError> {
        let limits = self.tenant_limits(&sms.tenant_id).await?;
        let mut tx = self.pool.begin().await?;
        if !insert_sms(&mut tx, sms, "pending", now_ms).await? {
            return Ok(SmsAdmission::Duplicate);
        }
        let admission = take_quota(&mut tx, &sms.tenant_id, &limits, sms.segments, now_ms).await?;
        if admission != SmsAdmission::Admitted {
            // Rolled back: neither the record nor any quota is kept.
            return Ok(admission);
        }
        insert_delivery(&mut tx, delivery, now_ms).await?;
        tx.commit().await?;
        Ok(SmsAdmission::Admitted)
    }

    /// Admits a text a worker is about to send. A text new here (a rule's, first claimed) is
    /// recorded and its quota taken; one refused for its quota and replayed takes it again; one
    /// refused for another reason and replayed is `pending` again (its quota was taken once); one
    /// Twilio took already is [`SmsAdmission::AlreadySent`] (its attempt was not recorded: a
    /// worker failed to, or its lease ran out), so it is not texted twice. A text refused by
    /// its quota is recorded `refused` with the reason (`over_monthly_quota`, `over_rate`).
    pub async fn admit_sms(&self, sms: &NewSms, now_ms: i64) -> Result<SmsAdmission, StoreError> {
        let limits = self.tenant_limits(&sms.tenant_id).await?;
        let mut tx = self.pool.begin().await?;
        // Inserted first (or found): on SQLite the write takes the database's lock, on
        // PostgreSQL the row is locked below, so two workers admitting it at once take turns.
        let new = insert_sms(&mut tx, sms, "pending", now_ms).await?;
        let lock = match self.backend {
            crate::Backend::Postgres => " FOR UPDATE",
            crate::Backend::Sqlite => "",
        };
        let (status, code, sid): (String, Option<String>, Option<String>) = sqlx::query_as(sqlx::AssertSqlSafe(
            format!("SELECT status, error_code, sid FROM sms_messages WHERE id = $1 AND app_id = $2 AND tenant_id = $3{lock}"),
        ))
        .bind(&sms.id)
        .bind(&sms.app_id)
        .bind(&sms.tenant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("app"))?;
        let quota_refused =
            status == "refused" && matches!(code.as_deref(), Some("over_monthly_quota" | "over_rate"));
        let admission = if new || quota_refused {
            take_quota(&mut tx, &sms.tenant_id, &limits, sms.segments, now_ms).await?
        } else if sid.is_some() {
            return Ok(SmsAdmission::AlreadySent);
        } else {
            SmsAdmission::Admitted
        };
        let (state, code) = match admission {
            SmsAdmission::OverMonthlyQuota { .. } => ("refused", Some("over_monthly_quota")),
            SmsAdmission::OverRate { .. } => ("refused", Some("over_rate")),
            _ => ("pending", None),
        };
        sqlx::query(
            "UPDATE sms_messages SET status = $1, error_code = $2, updated_ms = $3 \
             WHERE id = $4 AND app_id = $5 AND tenant_id = $6",
        )
        .bind(state)
        .bind(code)
        .bind(now_ms)
        .bind(&sms.id)
        .bind(&sms.app_id)
        .bind(&sms.tenant_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(admission)
    }

    /// Notes that Twilio took a text: its SID, the segments it bills and its first status.
    #[allow(clippy::too_many_arguments)]
    pub async fn sms_sent(
        &self,
        tenant_id: &str,
        app_id: &str,
        sms_id: &str,
        sid: &str,
        segments: i64,
        status: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE sms_messages SET sid = $1, segments = $2, status = $3, error_code = NULL, updated_ms = $4 \
             WHERE id = $5 AND app_id = $6 AND tenant_id = $8 AND {RANK_SQL} <= $7"
        )))
        .bind(sid)
        .bind(segments)
        .bind(status)
        .bind(now_ms)
        .bind(sms_id)
        .bind(app_id)
        .bind(rank(status))
        .bind(tenant_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Notes that a text will not be sent (Twilio refused it, the recipient opted out, the
    /// app's credentials are refused or gone): `refused`, with the reason's code. A replay
    /// makes it `pending` again ([`Store::admit_sms`]).
    pub async fn sms_refused(
        &self,
        tenant_id: &str,
        app_id: &str,
        sms_id: &str,
        code: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sms_messages SET status = 'refused', error_code = $1, updated_ms = $2 \
             WHERE id = $3 AND app_id = $4 AND tenant_id = $5 AND sid IS NULL",
        )
        .bind(code)
        .bind(now_ms)
        .bind(sms_id)
        .bind(app_id)
        .bind(tenant_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a status Twilio reported for a text of `app_id` (verified by the caller): moves
    /// it on unless it went further already. Returns whether the text is known (a callback for
    /// an unknown one, or of another SID, changes nothing).
    #[allow(clippy::too_many_arguments)]
    pub async fn sms_status(
        &self,
        tenant_id: &str,
        app_id: &str,
        sms_id: &str,
        sid: &str,
        status: &str,
        error_code: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let known: Option<(Option<String>,)> =
            sqlx::query_as("SELECT sid FROM sms_messages WHERE id = $1 AND app_id = $2 AND tenant_id = $3")
                .bind(sms_id)
                .bind(app_id)
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?;
        match known {
            None => return Ok(false),
            Some((Some(recorded),)) if recorded != sid => return Ok(false),
            Some(_) => {}
        }
        // Moves forward only; a final status is replaced only by `read` (WhatsApp's, after
        // `delivered`).
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE sms_messages SET sid = $1, status = $2, error_code = $3, updated_ms = $4 \
             WHERE id = $5 AND app_id = $6 AND tenant_id = $9 \
             AND ({RANK_SQL} < $7 OR ($8 = 1 AND status = 'delivered'))"
        )))
        .bind(sid)
        .bind(status)
        .bind(error_code)
        .bind(now_ms)
        .bind(sms_id)
        .bind(app_id)
        .bind(rank(status))
        .bind(i64::from(status == "read"))
        .bind(tenant_id)
        .execute(&self.pool)
        .await?;
        Ok(true)
    }

    /// A text of the tenant's app.
    pub async fn sms_message(
        &self,
        tenant_id: &str,
        app_id: &str,
        sms_id: &str,
    ) -> Result<SmsRecord, StoreError> {
        let row = sqlx::query("SELECT * FROM sms_messages WHERE id = $1 AND app_id = $2 AND tenant_id = $3")
            .bind(sms_id)
            .bind(app_id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("text"))?;
        Ok(record(&row)?)
    }

    /// The app's texts, newest first: up to `limit` of those before `before` (the creation
    /// time and id of the last text of the previous page; `None`: from the newest).
    pub async fn sms_messages(
        &self,
        tenant_id: &str,
        app_id: &str,
        before: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<SmsRecord>, StoreError> {
        let (before_ms, before_id) = before.unwrap_or((i64::MAX, ""));
        let rows = sqlx::query(
            "SELECT * FROM sms_messages WHERE app_id = $1 AND tenant_id = $2 \
             AND (created_ms < $3 OR (created_ms = $3 AND id < $4)) \
             ORDER BY created_ms DESC, id DESC LIMIT $5",
        )
        .bind(app_id)
        .bind(tenant_id)
        .bind(before_ms)
        .bind(before_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(record).collect::<Result<_, _>>()?)
    }
}

/// Inserts a text unless its id is recorded (or its app is not its tenant's); returns whether
/// it did.
async fn insert_sms(
    conn: &mut sqlx::AnyConnection,
    sms: &NewSms,
    status: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO sms_messages (id, tenant_id, app_id, to_number, segments, origin, status, created_ms, updated_ms) \
         SELECT $1, tenant_id, id, $3, $4, $5, $6, $7, $7 FROM apps WHERE id = $2 AND tenant_id = $8 \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&sms.id)
    .bind(&sms.app_id)
    .bind(&sms.to)
    .bind(sms.segments)
    .bind(&sms.origin)
    .bind(status)
    .bind(now_ms)
    .bind(&sms.tenant_id)
    .execute(&mut *conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}
