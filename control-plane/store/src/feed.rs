//! Where each app's durable feed has been read up to, and who reads it.
//!
//! One worker at a time reads an app's feed, under a lease on the app's row. It reads entries
//! after the saved position, turns the ones its rules match into deliveries, and then
//! [`Store::advance_feed`] queues those deliveries *and* moves the position in one transaction,
//! only if the worker still holds the lease and the position is still the one it read from. So
//! a worker killed at any moment leaves either nothing or everything of a read queued, and a
//! worker whose lease ran out (and whose feed another worker took) cannot queue its read again:
//! every event is queued exactly once, and delivered at least once.

use sqlx::Row as _;

use crate::delivery::NewDelivery;
use crate::delivery_batch::insert_deliveries;
use crate::{Store, StoreError};

/// An app's feed, leased to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedLease {
    /// The app.
    pub app_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// The position read up to (`""`: nothing read yet).
    pub position: String,
}

/// Makes the feed position of an app that now has an enabled rule, read from the feed's start
/// (the feed exists only since its first rule), unless it has one; inside the rule's
/// transaction, so a worker finds the app as soon as the rule exists.
pub(crate) async fn ensure_position(
    conn: &mut sqlx::AnyConnection,
    tenant_id: &str,
    app_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO feed_positions (app_id, tenant_id, position, updated_ms) VALUES ($1, $2, '', 0) \
         ON CONFLICT (app_id) DO NOTHING",
    )
    .bind(app_id)
    .bind(tenant_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// Leases to `owner` until `lease_until_ms` up to `limit` feeds of apps with enabled rules
    /// that nobody else holds (or whose holder's lease ran out), renewing the ones it holds.
    pub async fn claim_feeds(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<FeedLease>, StoreError> {
        let rows = sqlx::query(
            "UPDATE feed_positions SET lease_owner = $1, lease_until_ms = $2 \
             WHERE app_id IN (\
               SELECT app_id FROM feed_positions \
               WHERE (lease_owner = $1 OR lease_until_ms IS NULL OR lease_until_ms < $3) \
               AND app_id IN (SELECT app_id FROM rules WHERE enabled = 1) \
               ORDER BY app_id LIMIT $4\
             ) AND (lease_owner = $1 OR lease_until_ms IS NULL OR lease_until_ms < $3) \
             RETURNING app_id, tenant_id, position",
        )
        .bind(owner)
        .bind(lease_until_ms)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut leases = rows
            .iter()
            .map(|row| {
                Ok(FeedLease {
                    app_id: row.try_get("app_id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    position: row.try_get("position")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        leases.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        Ok(leases)
    }

    /// Queues `deliveries` (each once per target and event id) and moves `lease`'s feed on to
    /// `position`, in one transaction, if `owner` still holds the lease at `now_ms` and the
    /// position is still the one `lease` read from; returns `false` (and changes nothing)
    /// otherwise.
    pub async fn advance_feed(
        &self,
        owner: &str,
        lease: &FeedLease,
        position: &str,
        deliveries: &[NewDelivery],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE feed_positions SET position = $3, updated_ms = $4 \
             WHERE app_id = $1 AND lease_owner = $2 AND lease_until_ms >= $4 AND position = $5",
        )
        .bind(&lease.app_id)
        .bind(owner)
        .bind(position)
        .bind(now_ms)
        .bind(&lease.position)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        insert_deliveries(&mut tx, self.backend, deliveries, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Forgets where an app's feed was read up to (its feed was turned off: a feed turned on
    /// again starts anew, and is read from its start).
    pub async fn forget_feed_position(&self, app_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM feed_positions WHERE app_id = $1 AND app_id NOT IN (SELECT app_id FROM rules WHERE enabled = 1)")
            .bind(app_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives up `owner`'s lease on an app's feed (a worker that stops), so another worker takes
    /// it at once rather than when the lease runs out.
    pub async fn release_feed(&self, owner: &str, app_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE feed_positions SET lease_owner = NULL, lease_until_ms = NULL \
             WHERE app_id = $1 AND lease_owner = $2",
        )
        .bind(app_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
