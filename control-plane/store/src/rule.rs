//! Rules: what an app's events trigger. A rule has a source (a channel pattern and the event
//! kinds it wants) and a target (a webhook endpoint of the same app, texts, or a push), and says how requests are
//! made: up to `batch_max` events each, gathered for up to `batch_ms`, an enveloped or raw body,
//! custom headers. The store keeps rules as given; their fields are checked by the API (which
//! knows channel patterns and event kinds) and read by the delivery workers.

use sqlx::Row as _;

use crate::audit::{self, Actor};
use crate::db::DbRow;
use crate::{Store, StoreError, id, unix_now};

/// A rule as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `rul_` and 26 base32 characters.
    pub id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The app whose events it reads.
    pub app_id: String,
    /// What it is, in the rule's definition.
    pub spec: NewRule,
    /// Whether it queues deliveries.
    pub enabled: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// A rule's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRule {
    /// The tenant's name for it.
    pub name: String,
    /// The channels whose events it reads (a channel pattern).
    pub channel_pattern: String,
    /// The event kinds it reads (`message`, `presence.join`, …).
    pub events: Vec<String>,
    /// The webhook endpoint it sends to (in the same app); for texts `sms:<app>`, for a push
    /// `pushout:<app>` (set by the store).
    pub target_id: String,
    /// `webhook`, `sms` or `push`.
    pub target_kind: String,
    /// An SMS or push target's definition, JSON (`{}` for a webhook).
    pub target_spec: String,
    /// Most events per request (1: one request per event).
    pub batch_max: i64,
    /// Longest an event waits for others to share its request, in milliseconds.
    pub batch_ms: i64,
    /// `enveloped` or `raw`.
    pub body: String,
    /// Custom headers, a JSON object of strings.
    pub headers: String,
}

/// The columns a [`Rule`] is read from.
macro_rules! rule_columns {
    () => {
        "id, tenant_id, app_id, name, channel_pattern, events, target_id, target_kind, target_spec, batch_max, \
         batch_ms, body, headers, enabled, created_at"
    };
}

fn rule(row: &DbRow) -> Result<Rule, StoreError> {
    let events: String = row.try_get("events")?;
    Ok(Rule {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        app_id: row.try_get("app_id")?,
        spec: NewRule {
            name: row.try_get("name")?,
            channel_pattern: row.try_get("channel_pattern")?,
            events: events.split(',').filter(|kind| !kind.is_empty()).map(str::to_owned).collect(),
            target_id: row.try_get("target_id")?,
            target_kind: row.try_get("target_kind")?,
            target_spec: row.try_get("target_spec")?,
            batch_max: row.try_get("batch_max")?,
            batch_ms: row.try_get("batch_ms")?,
            body: row.try_get("body")?,
            headers: row.try_get("headers")?,
        },
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

/// The delivery target of a rule of `app_id` in `tenant_id` with `spec`: its webhook endpoint
/// (which must be the app's), or the app's texts' or pushes' target.
async fn rule_target(
    conn: &mut sqlx::AnyConnection,
    tenant_id: &str,
    app_id: &str,
    spec: &NewRule,
) -> Result<String, StoreError> {
    match spec.target_kind.as_str() {
        "sms" => Ok(format!("sms:{app_id}")),
        "push" => Ok(format!("pushout:{app_id}")),
        _ if target_in_app(conn, tenant_id, app_id, &spec.target_id).await? => Ok(spec.target_id.clone()),
        _ => Err(StoreError::NotFound("webhook endpoint")),
    }
}

/// Whether `target_id` is a webhook endpoint of `app_id` in `tenant_id`.
async fn target_in_app(
    conn: &mut sqlx::AnyConnection,
    tenant_id: &str,
    app_id: &str,
    target_id: &str,
) -> Result<bool, StoreError> {
    let found: Option<(String,)> =
        sqlx::query_as("SELECT id FROM webhook_endpoints WHERE id = $1 AND app_id = $2 AND tenant_id = $3")
            .bind(target_id)
            .bind(app_id)
            .bind(tenant_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(found.is_some())
}

impl Store {
    /// Creates a rule for an app of the tenant, sending to one of that app's webhook endpoints.
    /// Audited as `rule.create`.
    pub async fn create_rule(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        spec: &NewRule,
    ) -> Result<Rule, StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) {
            return Err(StoreError::NotFound("app"));
        }
        let rule_id = id::new(id::RULE);
        let mut tx = self.pool.begin().await?;
        let app: Option<(String,)> = sqlx::query_as("SELECT id FROM apps WHERE id = $1 AND tenant_id = $2")
            .bind(app_id)
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
        if app.is_none() {
            return Err(StoreError::NotFound("app"));
        }
        let target_id = rule_target(&mut tx, tenant_id, app_id, spec).await?;
        sqlx::query(
            "INSERT INTO rules (id, tenant_id, app_id, name, channel_pattern, events, target_kind, target_id, \
             batch_max, batch_ms, body, headers, enabled, created_at, target_spec) \
             VALUES ($1, $2, $3, $4, $5, $6, $13, $7, $8, $9, $10, $11, 1, $12, $14)",
        )
        .bind(&rule_id)
        .bind(tenant_id)
        .bind(app_id)
        .bind(&spec.name)
        .bind(&spec.channel_pattern)
        .bind(spec.events.join(","))
        .bind(&target_id)
        .bind(spec.batch_max)
        .bind(spec.batch_ms)
        .bind(&spec.body)
        .bind(&spec.headers)
        .bind(unix_now())
        .bind(&spec.target_kind)
        .bind(&spec.target_spec)
        .execute(&mut *tx)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "rule", "app"))?;
        crate::feed::ensure_position(&mut tx, tenant_id, app_id).await?;
        audit::record(&mut tx, actor, Some(tenant_id), "rule.create", &rule_id).await?;
        tx.commit().await?;
        self.rule(tenant_id, &rule_id).await
    }

    /// Replaces a rule's definition (its id, state and position in the feed stay). Audited as
    /// `rule.update`.
    pub async fn update_rule(
        &self,
        actor: &Actor,
        tenant_id: &str,
        rule_id: &str,
        spec: &NewRule,
    ) -> Result<Rule, StoreError> {
        let current = self.rule(tenant_id, rule_id).await?;
        let mut tx = self.pool.begin().await?;
        let target_id = rule_target(&mut tx, tenant_id, &current.app_id, spec).await?;
        let result = sqlx::query(
            "UPDATE rules SET name = $3, channel_pattern = $4, events = $5, target_id = $6, batch_max = $7, \
             batch_ms = $8, body = $9, headers = $10, target_kind = $11, target_spec = $12 \
             WHERE id = $1 AND tenant_id = $2",
        )
        .bind(rule_id)
        .bind(tenant_id)
        .bind(&spec.name)
        .bind(&spec.channel_pattern)
        .bind(spec.events.join(","))
        .bind(&target_id)
        .bind(spec.batch_max)
        .bind(spec.batch_ms)
        .bind(&spec.body)
        .bind(&spec.headers)
        .bind(&spec.target_kind)
        .bind(&spec.target_spec)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound("rule"));
        }
        audit::record(&mut tx, actor, Some(tenant_id), "rule.update", rule_id).await?;
        tx.commit().await?;
        self.rule(tenant_id, rule_id).await
    }

    /// Returns a rule of the tenant.
    pub async fn rule(&self, tenant_id: &str, rule_id: &str) -> Result<Rule, StoreError> {
        let sql = concat!("SELECT ", rule_columns!(), " FROM rules WHERE id = $1 AND tenant_id = $2");
        let row = sqlx::query(sql).bind(rule_id).bind(tenant_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(rule).transpose()?.ok_or(StoreError::NotFound("rule"))
    }

    /// Returns the rules of an app of the tenant, oldest first.
    pub async fn rules(&self, tenant_id: &str, app_id: &str) -> Result<Vec<Rule>, StoreError> {
        let sql = concat!(
            "SELECT ",
            rule_columns!(),
            " FROM rules WHERE app_id = $1 AND tenant_id = $2 ORDER BY created_at, id"
        );
        let rows = sqlx::query(sql).bind(app_id).bind(tenant_id).fetch_all(&self.pool).await?;
        rows.iter().map(rule).collect()
    }

    /// Returns the enabled rules of an app, for the worker that reads its feed.
    pub async fn enabled_rules(&self, app_id: &str) -> Result<Vec<Rule>, StoreError> {
        let sql = concat!(
            "SELECT ",
            rule_columns!(),
            " FROM rules WHERE app_id = $1 AND enabled = 1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(sql).bind(app_id).fetch_all(&self.pool).await?;
        rows.iter().map(rule).collect()
    }

    /// Returns the apps that have at least one enabled rule: the apps whose events need a
    /// durable feed.
    pub async fn apps_with_rules(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT app_id FROM rules WHERE enabled = 1 ORDER BY app_id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(app,)| app).collect())
    }

    /// Turns a rule on or off. Audited as `rule.enable` or `rule.disable`.
    pub async fn set_rule_enabled(
        &self,
        actor: &Actor,
        tenant_id: &str,
        rule_id: &str,
        enabled: bool,
    ) -> Result<Rule, StoreError> {
        let mut tx = self.pool.begin().await?;
        let app: Option<(String,)> =
            sqlx::query_as("UPDATE rules SET enabled = $3 WHERE id = $1 AND tenant_id = $2 RETURNING app_id")
                .bind(rule_id)
                .bind(tenant_id)
                .bind(i64::from(enabled))
                .fetch_optional(&mut *tx)
                .await?;
        let Some((app_id,)) = app else { return Err(StoreError::NotFound("rule")) };
        if enabled {
            crate::feed::ensure_position(&mut tx, tenant_id, &app_id).await?;
        }
        let action = if enabled { "rule.enable" } else { "rule.disable" };
        audit::record(&mut tx, actor, Some(tenant_id), action, rule_id).await?;
        tx.commit().await?;
        self.rule(tenant_id, rule_id).await
    }

    /// Deletes a rule (what it queued is still delivered). Audited as `rule.delete`.
    pub async fn delete_rule(&self, actor: &Actor, tenant_id: &str, rule_id: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query("DELETE FROM rules WHERE id = $1 AND tenant_id = $2")
            .bind(rule_id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound("rule"));
        }
        audit::record(&mut tx, actor, Some(tenant_id), "rule.delete", rule_id).await?;
        tx.commit().await?;
        Ok(())
    }
}
