//! Cosigning a tenant's log with a key the tenant holds itself (docs/audit.md#cosigning): the
//! public key it registers, and the checkpoints it cosigned. The store checks nothing
//! cryptographic: the management API opens the cosigned note with the registered key and
//! compares it with the stored checkpoint before [`Store::add_audit_cosignature`] keeps it.

use sqlx::Row as _;

use super::{AuditKey, AuditLogState};
use crate::audit::{self, Actor};
use crate::{Store, StoreError};

impl Store {
    /// Registers `verifier` (a public key the tenant holds the private half of) as the cosigner
    /// of the tenant's log, retiring the one before; audited as `audit.cosigner.set`.
    pub async fn set_audit_cosigner(
        &self,
        actor: &Actor,
        log: &AuditLogState,
        verifier: &str,
    ) -> Result<(), StoreError> {
        let now = crate::unix_now();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE audit_cosigners SET retired_at = $2 WHERE log_id = $1 AND retired_at IS NULL AND verifier <> $3",
        )
        .bind(&log.id)
        .bind(now)
        .bind(verifier)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO audit_cosigners (verifier, log_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (verifier) DO UPDATE SET retired_at = NULL WHERE audit_cosigners.log_id = excluded.log_id",
        )
        .bind(verifier)
        .bind(&log.id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "cosigner", "audit log"))?;
        audit::record(&mut tx, actor, log.tenant_id.as_deref(), "audit.cosigner.set", verifier).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether the public key `key_material` (the last `+` part of a verifier key) is a key of
    /// any log, or a cosigning key registered for a log other than `log_id`: under another name
    /// it would let one signature count as two.
    pub async fn audit_key_in_use(&self, key_material: &str, log_id: &str) -> Result<bool, StoreError> {
        let pattern = format!("%+{key_material}");
        let found = sqlx::query(
            "SELECT 1 AS one FROM audit_keys WHERE verifier LIKE $1 \
             UNION ALL SELECT 1 AS one FROM audit_cosigners WHERE verifier LIKE $1 AND log_id <> $2",
        )
        .bind(pattern)
        .bind(log_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// A log's cosigning keys, oldest first (the unretired one cosigns), and the largest
    /// checkpoint cosigned so far (0: none).
    pub async fn audit_cosigners(&self, log_id: &str) -> Result<(Vec<AuditKey>, u64), StoreError> {
        let rows = sqlx::query(
            "SELECT verifier, created_at, retired_at FROM audit_cosigners WHERE log_id = $1 \
             ORDER BY CASE WHEN retired_at IS NULL THEN 1 ELSE 0 END, retired_at, created_at, verifier",
        )
        .bind(log_id)
        .fetch_all(&self.pool)
        .await?;
        let keys = rows
            .iter()
            .map(|row| {
                Ok(AuditKey {
                    verifier: row.try_get("verifier")?,
                    created_at: row.try_get("created_at")?,
                    retired_at: row.try_get("retired_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let size: Option<i64> = sqlx::query("SELECT cosigned_size FROM audit_logs WHERE id = $1")
            .bind(log_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| row.try_get("cosigned_size"))
            .transpose()?;
        Ok((keys, size.map_or(0, |s| s as u64)))
    }

    /// Keeps `note` (the stored checkpoint of `size` with the tenant's cosignature added) in
    /// place of the stored one, and moves the log's cosigned size on to `size`; returns `false`
    /// (and changes nothing) if `size` is below the largest cosigned already or the stored
    /// checkpoint is not `stored_note` any more.
    pub async fn add_audit_cosignature(
        &self,
        log_id: &str,
        size: u64,
        stored_note: &str,
        note: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved =
            sqlx::query("UPDATE audit_logs SET cosigned_size = $2 WHERE id = $1 AND cosigned_size <= $2")
                .bind(log_id)
                .bind(size as i64)
                .execute(&mut *tx)
                .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        if !Self::replace_checkpoint_note(&mut tx, log_id, size, stored_note, note, true).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Puts `note` in place of the stored checkpoint of `size` (marked `cosigned` or not) if it
    /// is still `stored_note`; returns whether it was.
    pub(crate) async fn replace_checkpoint_note(
        conn: &mut sqlx::AnyConnection,
        log_id: &str,
        size: u64,
        stored_note: &str,
        note: &str,
        cosigned: bool,
    ) -> Result<bool, StoreError> {
        // Once cosigned, always: a later note (one more cosignature) never clears the mark.
        let kept = sqlx::query(
            "UPDATE audit_checkpoints SET note = $3, cosigned = CASE WHEN cosigned = 1 THEN 1 ELSE $5 END \
             WHERE log_id = $1 AND size = $2 AND note = $4",
        )
        .bind(log_id)
        .bind(size as i64)
        .bind(note)
        .bind(stored_note)
        .bind(i32::from(cosigned))
        .execute(&mut *conn)
        .await?;
        Ok(kept.rows_affected() > 0)
    }
}
