//! Reading a stored log: its state, entries, subtree roots and checkpoints (what proofs,
//! receipts and exports are made of).

use sqlx::Row as _;

use super::{AuditCheckpoint, AuditEntry, AuditLogState, LOG_COLUMNS, NewAuditEntry};
use crate::db::DbRow;
use crate::delivery_batch::placeholder;
use crate::{Store, StoreError};

impl Store {
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

    /// Which of `sources` a log has entries for already.
    pub async fn audit_sources_present(
        &self,
        log_id: &str,
        sources: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut present = Vec::new();
        for group in sources.chunks(500) {
            let list: Vec<String> = (2..group.len() + 2).map(|n| placeholder(self.backend, n)).collect();
            let sql = format!(
                "SELECT source FROM audit_entries WHERE log_id = {} AND source IN ({})",
                placeholder(self.backend, 1),
                list.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(log_id);
            for source in group {
                query = query.bind(source);
            }
            for row in query.fetch_all(&self.pool).await? {
                present.push(row.try_get("source")?);
            }
        }
        Ok(present)
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
            "SELECT size, note, at_ms, cosigned FROM audit_checkpoints WHERE log_id = $1 AND size >= $2 ORDER BY size LIMIT $3",
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
            "SELECT size, note, at_ms, cosigned FROM audit_checkpoints WHERE log_id = $1 ORDER BY size DESC LIMIT 1",
        )
        .bind(log_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }
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
        cosigned: row.try_get::<i32, _>("cosigned")? == 1,
    })
}
