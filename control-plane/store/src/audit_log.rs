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
use crate::{SecretCipher, Store, StoreError};

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
}

impl AuditLogState {
    fn from_row(row: &DbRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            origin: row.try_get("origin")?,
            size: row.try_get::<i64, _>("size")? as u64,
            frontier: row.try_get("frontier")?,
            last_leaf: row.try_get("last_leaf")?,
            checkpoint_size: row.try_get::<i64, _>("checkpoint_size")? as u64,
            checkpoint_ms: row.try_get("checkpoint_ms")?,
        })
    }
}

const LOG_COLUMNS: &str = "id, tenant_id, origin, size, frontier, last_leaf, checkpoint_size, checkpoint_ms";

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
}

/// Entries inserted by one statement (6 placeholders each).
const ENTRY_GROUP: usize = 500;

impl Store {
    /// Makes the log of each tenant (and the operator's) that has management events waiting or
    /// feeds to read and no log yet, named `<origin_prefix>/<tenant id>` (`<origin_prefix>/operator`).
    pub async fn open_audit_logs(&self, origin_prefix: &str, now: i64) -> Result<(), StoreError> {
        let empty = merkle_empty_frontier();
        sqlx::query(
            "INSERT INTO audit_logs (id, tenant_id, origin, frontier, last_leaf, created_at) \
             SELECT DISTINCT 'tenant:' || tenant_id, tenant_id, $1 || '/' || tenant_id, $2, $3, $4 \
             FROM (SELECT tenant_id FROM audit_events WHERE sequenced = 0 AND tenant_id IS NOT NULL \
                   UNION SELECT tenant_id FROM audit_sources) AS t WHERE true \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(origin_prefix)
        .bind(&empty)
        .bind(&[0u8; 32][..])
        .bind(now)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "INSERT INTO audit_logs (id, tenant_id, origin, frontier, last_leaf, created_at) \
             SELECT DISTINCT 'operator', NULL, $1 || '/operator', $2, $3, $4 \
             FROM audit_events WHERE sequenced = 0 AND tenant_id IS NULL \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(origin_prefix)
        .bind(&empty)
        .bind(&[0u8; 32][..])
        .bind(now)
        .execute(&self.pool)
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
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX));
        sqlx::query(
            "INSERT INTO audit_sources (log_id, app_id, tenant_id, position, created_ms) VALUES ($1, $2, $3, '', $4) \
             ON CONFLICT (log_id, app_id) DO NOTHING",
        )
        .bind(tenant_log_id(tenant_id))
        .bind(app_id)
        .bind(tenant_id)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Leases to `owner` until `lease_until_ms` up to `limit` logs with work (management events
    /// waiting, feeds to read, or entries not yet checkpointed) that nobody else holds, renewing
    /// the ones it holds.
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
               ORDER BY id LIMIT $4\
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
            "SELECT app_id, position, created_ms FROM audit_sources WHERE log_id = $1 ORDER BY app_id",
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

    /// A log's state; [`StoreError::NotFound`] if it has none yet.
    pub async fn audit_log(&self, log_id: &str) -> Result<AuditLogState, StoreError> {
        let sql = format!("SELECT {LOG_COLUMNS} FROM audit_logs WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(log_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("audit log"))?;
        AuditLogState::from_row(&row)
    }

    /// Up to `limit` entries of a log from index `from` on, in order.
    pub async fn audit_entries(
        &self,
        log_id: &str,
        from: u64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT idx, prev, body, source, at_ms FROM audit_entries \
             WHERE log_id = $1 AND idx >= $2 ORDER BY idx LIMIT $3",
        )
        .bind(log_id)
        .bind(from as i64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// The entry of a log recording `source` (such as a message's `msg:…`), if it has one.
    pub async fn audit_entry_by_source(
        &self,
        log_id: &str,
        source: &str,
    ) -> Result<Option<AuditEntry>, StoreError> {
        let row = sqlx::query(
            "SELECT idx, prev, body, source, at_ms FROM audit_entries WHERE log_id = $1 AND source = $2",
        )
        .bind(log_id)
        .bind(source)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    /// The stored roots of the subtrees of `height` numbered `from` to `to` (exclusive), in
    /// order.
    pub async fn audit_nodes(
        &self,
        log_id: &str,
        height: u32,
        from: u64,
        to: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let rows = sqlx::query(
            "SELECT hash FROM audit_nodes WHERE log_id = $1 AND height = $2 AND idx >= $3 AND idx < $4 ORDER BY idx",
        )
        .bind(log_id)
        .bind(height as i32)
        .bind(from as i64)
        .bind(to as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok(row.try_get("hash")?)).collect()
    }

    /// Up to `limit` checkpoints of a log of at least `from_size` entries, smallest first.
    pub async fn audit_checkpoints(
        &self,
        log_id: &str,
        from_size: u64,
        limit: i64,
    ) -> Result<Vec<AuditCheckpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT size, note, at_ms FROM audit_checkpoints WHERE log_id = $1 AND size >= $2 ORDER BY size LIMIT $3",
        )
        .bind(log_id)
        .bind(from_size as i64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    /// A log's newest checkpoint, if it has one.
    pub async fn latest_audit_checkpoint(&self, log_id: &str) -> Result<Option<AuditCheckpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT size, note, at_ms FROM audit_checkpoints WHERE log_id = $1 ORDER BY size DESC LIMIT 1",
        )
        .bind(log_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }

    /// A log's keys, oldest first.
    pub async fn audit_keys(&self, log_id: &str) -> Result<Vec<AuditKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT verifier, created_at, retired_at FROM audit_keys WHERE log_id = $1 ORDER BY created_at, verifier",
        )
        .bind(log_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditKey {
                    verifier: row.try_get("verifier")?,
                    created_at: row.try_get("created_at")?,
                    retired_at: row.try_get("retired_at")?,
                })
            })
            .collect()
    }

    /// The key that signs a log's checkpoints: its verifier key and its secret (the Ed25519
    /// seed, decrypted), or `None` when the log has none yet.
    pub async fn audit_signing_key(
        &self,
        log: &AuditLogState,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let row = sqlx::query(
            "SELECT verifier, secret_ciphertext FROM audit_keys WHERE log_id = $1 AND retired_at IS NULL \
             ORDER BY created_at DESC, verifier LIMIT 1",
        )
        .bind(&log.id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let verifier: String = row.try_get("verifier")?;
        let sealed: Vec<u8> = row.try_get("secret_ciphertext")?;
        let seed = self.open_audit_seed(log, &verifier, &sealed)?;
        Ok(Some((verifier, seed)))
    }

    /// Stores the first signing key of a log (`verifier`, its `seed`), made by its writer.
    /// Does nothing when the log has a key already (another writer made one first).
    pub async fn add_audit_key(
        &self,
        log: &AuditLogState,
        verifier: &str,
        seed: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_keys (verifier, log_id, secret_ciphertext, created_at) \
             SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM audit_keys WHERE log_id = $2 AND retired_at IS NULL) \
             ON CONFLICT (verifier) DO NOTHING",
        )
        .bind(verifier)
        .bind(&log.id)
        .bind(self.seal_audit_seed(log, verifier, seed))
        .bind(crate::unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces the key that signs a tenant's log with a new one (`verifier`, its `seed`): the
    /// old one is retired, still listed; audited as `audit.key.rotate`.
    pub async fn rotate_audit_key(
        &self,
        actor: &crate::Actor,
        log: &AuditLogState,
        verifier: &str,
        seed: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        self.insert_audit_key(&mut tx, log, verifier, seed).await?;
        crate::audit::record(&mut tx, actor, log.tenant_id.as_deref(), "audit.key.rotate", verifier).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_audit_key(
        &self,
        conn: &mut sqlx::AnyConnection,
        log: &AuditLogState,
        verifier: &str,
        seed: &[u8],
    ) -> Result<(), StoreError> {
        let sealed = self.seal_audit_seed(log, verifier, seed);
        let now = crate::unix_now();
        sqlx::query("UPDATE audit_keys SET retired_at = $2 WHERE log_id = $1 AND retired_at IS NULL")
            .bind(&log.id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO audit_keys (verifier, log_id, secret_ciphertext, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (verifier) DO NOTHING",
        )
        .bind(verifier)
        .bind(&log.id)
        .bind(sealed)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    fn seal_audit_seed(&self, log: &AuditLogState, verifier: &str, seed: &[u8]) -> Vec<u8> {
        seal_seed(&self.cipher, &log.id, verifier, seed)
    }

    fn open_audit_seed(
        &self,
        log: &AuditLogState,
        verifier: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        open_seed(&self.cipher, &log.id, verifier, sealed)
    }

    /// Re-encrypts the logs' signing keys under this store's master key, reading each with `old`
    /// or already with this store's key (part of [`Store::reencrypt_secrets`]).
    pub(crate) async fn reencrypt_audit_keys(
        &self,
        tx: &mut sqlx::AnyConnection,
        old: &SecretCipher,
    ) -> Result<u64, StoreError> {
        let rows = sqlx::query("SELECT verifier, log_id, secret_ciphertext FROM audit_keys")
            .fetch_all(&mut *tx)
            .await?;
        let mut rewritten = 0;
        for row in &rows {
            let verifier: String = row.try_get("verifier")?;
            let log_id: String = row.try_get("log_id")?;
            let stored: Vec<u8> = row.try_get("secret_ciphertext")?;
            let seed = secrecy::zeroize::Zeroizing::new(
                open_seed(old, &log_id, &verifier, &stored)
                    .or_else(|_| open_seed(&self.cipher, &log_id, &verifier, &stored))
                    .inspect_err(|_| tracing::error!(log_id, "an audit log key opens with neither key"))?,
            );
            sqlx::query("UPDATE audit_keys SET secret_ciphertext = $1 WHERE verifier = $2")
                .bind(seal_seed(&self.cipher, &log_id, &verifier, &seed))
                .bind(&verifier)
                .execute(&mut *tx)
                .await?;
            rewritten += 1;
        }
        Ok(rewritten)
    }
}

/// A log key's seed sealed under its tenant's data key (the master key for the operator's
/// log), bound to the log and the key.
fn seal_seed(cipher: &SecretCipher, log_id: &str, verifier: &str, seed: &[u8]) -> Vec<u8> {
    let aad = format!("audit-key:{log_id}:{verifier}");
    match log_id.strip_prefix("tenant:") {
        Some(tenant) => cipher.encrypt_for(tenant, seed, aad.as_bytes()),
        None => cipher.encrypt(seed, aad.as_bytes()),
    }
}

fn open_seed(
    cipher: &SecretCipher,
    log_id: &str,
    verifier: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let aad = format!("audit-key:{log_id}:{verifier}");
    match log_id.strip_prefix("tenant:") {
        Some(tenant) => cipher.decrypt_for(tenant, sealed, aad.as_bytes()),
        None => cipher.decrypt(sealed, aad.as_bytes()),
    }
}

/// The empty tree's right edge: size 0, no nodes (`Frontier::to_bytes`).
fn merkle_empty_frontier() -> Vec<u8> {
    0u64.to_be_bytes().to_vec()
}

fn entry_from_row(row: &DbRow) -> Result<AuditEntry, StoreError> {
    Ok(NewAuditEntry {
        index: row.try_get::<i64, _>("idx")? as u64,
        prev: row.try_get("prev")?,
        body: row.try_get("body")?,
        source: row.try_get("source")?,
        at_ms: row.try_get("at_ms")?,
    })
}

fn checkpoint_from_row(row: &DbRow) -> Result<AuditCheckpoint, StoreError> {
    Ok(AuditCheckpoint {
        size: row.try_get::<i64, _>("size")? as u64,
        note: row.try_get("note")?,
        at_ms: row.try_get("at_ms")?,
    })
}
