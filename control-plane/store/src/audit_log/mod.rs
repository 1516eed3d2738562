//! Audit logs: each tenant's transparency log (and the operator's), stored as its entries, the
//! roots of its whole subtrees of 2^8, 2^16, … leaves, its signed checkpoints and its signing
//! keys (docs/audit.md).
//!
//! One writer at a time grows a log, under a lease on the log's row, and
//! [`Store::append_audit`] writes everything one step of it made — the entries, the management
//! events it took marked as taken, the feeds' new positions, the new nodes, the tree's new
//! right edge and maybe a checkpoint — in one transaction, only if the writer still holds the
//! lease and the log is still the size it read. So a writer killed at any moment leaves a step
//! wholly done or not at all, and every event and message is appended exactly once.
//!
//! The store hashes nothing: the writer (`tributary_delivery::audit_log`) does, and a verifier
//! trusts none of this, only the signed checkpoints.

use sqlx::Row as _;

use crate::audit::AuditEvent;
use crate::db::DbRow;
use crate::delivery_batch::{placeholder, values};
use crate::{Store, StoreError};

mod cosign;
mod keys;
mod read;

/// The id of a tenant's log.
pub fn tenant_log_id(tenant_id: &str) -> String {
    format!("tenant:{tenant_id}")
}

/// The id of the operator's log (operator-wide actions, those of no tenant).
pub const OPERATOR_LOG: &str = "operator";

/// A log's state, as its writer reads it before a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLogState {
    /// `tenant:<tenant id>` or `operator`.
    pub id: String,
    /// Its tenant (none for the operator's).
    pub tenant_id: Option<String>,
    /// Its unique name: its checkpoints' first line and its keys' name.
    pub origin: String,
    /// Entries appended.
    pub size: u64,
    /// The tree's right edge (`Frontier::to_bytes`).
    pub frontier: Vec<u8>,
    /// The last entry's leaf hash (zeros before the first).
    pub last_leaf: Vec<u8>,
    /// The newest signed checkpoint's size.
    pub checkpoint_size: u64,
    /// When it was signed, in milliseconds since the Unix epoch.
    pub checkpoint_ms: i64,
    /// Moves on with each rotation of the log's key: a writer holding a key of an older
    /// version reads the new one.
    pub key_version: i64,
}

impl AuditLogState {
    pub(crate) fn from_row(row: &DbRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            origin: row.try_get("origin")?,
            size: row.try_get::<i64, _>("size")? as u64,
            frontier: row.try_get("frontier")?,
            last_leaf: row.try_get("last_leaf")?,
            checkpoint_size: row.try_get::<i64, _>("checkpoint_size")? as u64,
            checkpoint_ms: row.try_get("checkpoint_ms")?,
            key_version: row.try_get("key_version")?,
        })
    }
}

pub(crate) const LOG_COLUMNS: &str =
    "id, tenant_id, origin, size, frontier, last_leaf, checkpoint_size, checkpoint_ms, key_version";

/// An entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// Its index.
    pub index: u64,
    /// The previous entry's leaf hash.
    pub prev: Vec<u8>,
    /// Its canonical JSON.
    pub body: Vec<u8>,
    /// What it records, unique in the log (`ev:<id>`, `msg:<app>:<epoch>:<offset>:<channel>`, …).
    pub source: String,
    /// When it was appended.
    pub at_ms: i64,
}

/// A stored entry.
pub type AuditEntry = NewAuditEntry;

/// Everything one step of a log's writer made, written together by [`Store::append_audit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditAppend {
    /// The entries, in order, from the log's size on.
    pub entries: Vec<NewAuditEntry>,
    /// The management events they took (marked sequenced).
    pub events: Vec<String>,
    /// Feeds read: app, the position read from, the position read up to.
    pub feeds: Vec<(String, String, String)>,
    /// Roots of whole subtrees completed: height, index, hash.
    pub nodes: Vec<(u32, u64, Vec<u8>)>,
    /// The tree's right edge after the entries.
    pub frontier: Vec<u8>,
    /// The last entry's leaf hash.
    pub last_leaf: Vec<u8>,
    /// A checkpoint signed for the new size, if one is due.
    pub checkpoint: Option<String>,
}

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    /// The tree size it commits to.
    pub size: u64,
    /// The signed note.
    pub note: String,
    /// When it was signed.
    pub at_ms: i64,
    /// Whether the note carries the tenant's own cosignature.
    pub cosigned: bool,
}

/// A log's signing key, as listed (its secret never leaves the store but to the writer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditKey {
    /// The verifier key, in Go's note format.
    pub verifier: String,
    /// When it was made.
    pub created_at: i64,
    /// When it stopped signing, if it did.
    pub retired_at: Option<i64>,
}

/// An app whose audited namespaces' messages a log takes from the app's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSource {
    /// The app.
    pub app_id: String,
    /// Where the log has read the app's feed up to (`""`: not yet read).
    pub position: String,
    /// When the app's first namespace was set audited, in milliseconds: on its first read the
    /// log skips the feed's older messages (and any loss among them).
    pub since_ms: i64,
    /// The one namespace an exchange's log reads (`None`: the app's audited namespaces).
    pub namespace: Option<String>,
    /// When the exchange ended, in milliseconds: later messages are not its log's.
    pub until_ms: Option<i64>,
}

/// Entries inserted by one statement (6 placeholders each).
const ENTRY_GROUP: usize = 500;

impl Store {
    /// Makes the log of each tenant (and the operator's) that has management events waiting or
    /// feeds to read and no log yet, named `<origin_prefix>/<tenant id>` (`<origin_prefix>/operator`).
    pub async fn open_audit_logs(&self, origin_prefix: &str, now: i64) -> Result<(), StoreError> {
        // One row per log with work: a tenant's (`tenant:<id>`), or the operator's (events of no
        // tenant: `'tenant:' || NULL` is NULL).
        sqlx::query(
            "INSERT INTO audit_logs (id, tenant_id, origin, frontier, last_leaf, created_at) \
             SELECT DISTINCT COALESCE('tenant:' || tenant_id, 'operator'), tenant_id, \
                    $1 || '/' || COALESCE(tenant_id, 'operator'), $2, $3, $4 \
             FROM (SELECT tenant_id FROM audit_events WHERE sequenced = 0 \
                   UNION SELECT tenant_id FROM audit_sources WHERE namespace IS NULL) AS t WHERE true \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(origin_prefix)
        .bind(merkle_empty_frontier())
        .bind(&[0u8; 32][..])
        .bind(now)
        .execute(&self.pool)
        .await?;
        // Each accepted exchange's log (`<origin_prefix>/exchange/<id>`); its key is kept under
        // the offering tenant's key.
        sqlx::query(
            "INSERT INTO audit_logs (id, tenant_id, origin, frontier, last_leaf, created_at) \
             SELECT 'exchange:' || id, offerer_tenant_id, $1 || '/exchange/' || id, $2, $3, $4 \
             FROM exchanges WHERE partner_app_id IS NOT NULL \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(origin_prefix)
        .bind(merkle_empty_frontier())
        .bind(&[0u8; 32][..])
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Has an exchange's log read the offering app's feed (its namespace only) from now on;
    /// called inside the transaction that accepts the exchange.
    pub(crate) async fn add_exchange_source(
        conn: &mut sqlx::AnyConnection,
        exchange: &crate::exchange::Exchange,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_sources (log_id, app_id, tenant_id, position, created_ms, namespace) \
             VALUES ($1, $2, $3, '', $4, $5) ON CONFLICT (log_id, app_id) DO NOTHING",
        )
        .bind(exchange.log_id())
        .bind(&exchange.offerer_app_id)
        .bind(&exchange.offerer_tenant_id)
        .bind(now_ms())
        .bind(&exchange.namespace)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Has `tenant_id`'s log read `app_id`'s feed from now on (an audited namespace was set;
    /// see [`crate::namespace`]); the log itself is made by [`Store::open_audit_logs`]. Called
    /// inside the namespace's transaction.
    pub(crate) async fn add_audit_source(
        conn: &mut sqlx::AnyConnection,
        tenant_id: &str,
        app_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_sources (log_id, app_id, tenant_id, position, created_ms) VALUES ($1, $2, $3, '', $4) \
             ON CONFLICT (log_id, app_id) DO NOTHING",
        )
        .bind(tenant_log_id(tenant_id))
        .bind(app_id)
        .bind(tenant_id)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Leases to `owner` until `lease_until_ms` up to `limit` logs with work (management events
    /// waiting, feeds to read, or entries not yet checkpointed) that nobody else holds, renewing
    /// the ones it holds. The logs whose lease is oldest (or that never had one) come first: with
    /// more logs than `limit`, a worker's own logs fall out of its claim in turn and the others
    /// get their turn, rather than the first `limit` ids forever.
    pub async fn claim_audit_logs(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<AuditLogState>, StoreError> {
        let sql = format!(
            "UPDATE audit_logs SET lease_owner = $1, lease_until_ms = $2 \
             WHERE id IN (\
               SELECT id FROM audit_logs \
               WHERE (lease_owner = $1 OR lease_until_ms IS NULL OR lease_until_ms < $3) \
               AND (size > checkpoint_size \
                    OR id IN (SELECT log_id FROM audit_sources) \
                    OR id IN (SELECT CASE WHEN tenant_id IS NULL THEN 'operator' \
                              ELSE 'tenant:' || tenant_id END FROM audit_events WHERE sequenced = 0)) \
               ORDER BY CASE WHEN lease_until_ms IS NULL THEN 0 ELSE 1 END, lease_until_ms, id LIMIT $4\
             ) AND (lease_owner = $1 OR lease_until_ms IS NULL OR lease_until_ms < $3) \
             RETURNING {LOG_COLUMNS}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease_until_ms)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut logs = rows.iter().map(AuditLogState::from_row).collect::<Result<Vec<_>, _>>()?;
        logs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(logs)
    }

    /// Gives up `owner`'s lease on a log (a writer that stops).
    pub async fn release_audit_log(&self, owner: &str, log_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE audit_logs SET lease_owner = NULL, lease_until_ms = NULL WHERE id = $1 AND lease_owner = $2",
        )
        .bind(log_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The oldest `limit` management events of a log not yet on it.
    pub async fn unsequenced_audit_events(
        &self,
        log: &AuditLogState,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        if log.id.starts_with("exchange:") {
            // An exchange's log holds its messages; the parties' actions are on their own logs.
            return Ok(Vec::new());
        }
        let rows = match &log.tenant_id {
            Some(tenant) => {
                sqlx::query(
                    "SELECT id, tenant_id, actor, action, target, request_id, at FROM audit_events \
                     WHERE tenant_id = $1 AND sequenced = 0 ORDER BY id LIMIT $2",
                )
                .bind(tenant)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, tenant_id, actor, action, target, request_id, at FROM audit_events \
                     WHERE tenant_id IS NULL AND sequenced = 0 ORDER BY id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows.iter().map(AuditEvent::from_row).collect::<Result<_, _>>()?)
    }

    /// Whether an audit log reads `app_id`'s feed (it must then stay on).
    pub async fn is_audit_source(&self, app_id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM audit_sources WHERE app_id = $1 LIMIT 1")
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The apps whose feeds a log reads: each app, where the log has read its feed up to, and
    /// when it became a source (milliseconds).
    pub async fn audit_sources(&self, log_id: &str) -> Result<Vec<AuditSource>, StoreError> {
        let rows = sqlx::query(
            "SELECT app_id, position, created_ms, namespace, until_ms FROM audit_sources WHERE log_id = $1 ORDER BY app_id",
        )
        .bind(log_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditSource {
                    app_id: row.try_get("app_id")?,
                    position: row.try_get("position")?,
                    since_ms: row.try_get("created_ms")?,
                    namespace: row.try_get("namespace")?,
                    until_ms: row.try_get("until_ms")?,
                })
            })
            .collect()
    }

    /// Writes one step of `log`'s writer (see the module's documentation); returns `false`, and
    /// changes nothing, unless `owner` still holds the log's lease at `now_ms` and the log and
    /// each feed read are where `log` and `append` say they were read from.
    pub async fn append_audit(
        &self,
        owner: &str,
        log: &AuditLogState,
        append: &AuditAppend,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let new_size = log.size + append.entries.len() as u64;
        let checkpointed = append.checkpoint.is_some();
        let mut tx = self.pool.begin().await?;
        let grown = sqlx::query(
            "UPDATE audit_logs SET size = $3, frontier = $4, last_leaf = $5, \
             checkpoint_size = CASE WHEN $6 = 1 THEN $3 ELSE checkpoint_size END, \
             checkpoint_ms = CASE WHEN $6 = 1 THEN $7 ELSE checkpoint_ms END \
             WHERE id = $1 AND lease_owner = $2 AND lease_until_ms >= $7 AND size = $8",
        )
        .bind(&log.id)
        .bind(owner)
        .bind(new_size as i64)
        .bind(&append.frontier)
        .bind(&append.last_leaf)
        .bind(i32::from(checkpointed))
        .bind(now_ms)
        .bind(log.size as i64)
        .execute(&mut *tx)
        .await?;
        if grown.rows_affected() == 0 {
            return Ok(false);
        }
        for (app, from, to) in &append.feeds {
            let moved = sqlx::query(
                "UPDATE audit_sources SET position = $3 WHERE log_id = $1 AND app_id = $2 AND position = $4",
            )
            .bind(&log.id)
            .bind(app)
            .bind(to)
            .bind(from)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 0 {
                return Ok(false);
            }
        }
        for group in append.entries.chunks(ENTRY_GROUP) {
            let sql = format!(
                "INSERT INTO audit_entries (log_id, idx, prev, body, source, at_ms) VALUES {}",
                values(self.backend, group.len(), 6)
            );
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
            for entry in group {
                insert = insert
                    .bind(&log.id)
                    .bind(entry.index as i64)
                    .bind(&entry.prev)
                    .bind(&entry.body)
                    .bind(&entry.source)
                    .bind(entry.at_ms);
            }
            insert
                .execute(&mut *tx)
                .await
                .map_err(|err| StoreError::from_sqlx(err, "audit entry", "audit log"))?;
        }
        for group in append.events.chunks(ENTRY_GROUP) {
            let list: Vec<String> = (1..=group.len()).map(|n| placeholder(self.backend, n)).collect();
            let sql = format!("UPDATE audit_events SET sequenced = 1 WHERE id IN ({})", list.join(", "));
            let mut mark = sqlx::query(sqlx::AssertSqlSafe(sql));
            for event in group {
                mark = mark.bind(event);
            }
            mark.execute(&mut *tx).await?;
        }
        for (height, index, hash) in &append.nodes {
            sqlx::query("INSERT INTO audit_nodes (log_id, height, idx, hash) VALUES ($1, $2, $3, $4)")
                .bind(&log.id)
                .bind(*height as i32)
                .bind(*index as i64)
                .bind(hash)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(note) = &append.checkpoint {
            sqlx::query(
                "INSERT INTO audit_checkpoints (log_id, size, note, at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (log_id, size) DO NOTHING",
            )
            .bind(&log.id)
            .bind(new_size as i64)
            .bind(note)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

/// The empty tree's right edge: size 0, no nodes (`Frontier::to_bytes`).
fn merkle_empty_frontier() -> Vec<u8> {
    0u64.to_be_bytes().to_vec()
}
