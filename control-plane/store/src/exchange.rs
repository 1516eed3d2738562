//! Exchanges between tenants (docs/exchanges.md): tenant A offers a namespace of one of its
//! apps to tenant B, with the rights each side's clients and keys get on it; B accepts into one
//! of its apps, and from then on that app's channels of the namespace are A's. Either side may
//! suspend (only the suspending side resumes) or end it, alone.
//!
//! Every query is scoped by the acting tenant being one of the two parties; what the other
//! party's records hold (its apps, keys, other namespaces) is never read through here. Each
//! change is recorded in both tenants' audit events, so both their logs hold it.

use sqlx::Row as _;

use crate::audit::{self, Actor};
use crate::db::DbRow;
use crate::{Store, StoreError, id, unix_now};

/// Where an exchange is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeStatus {
    /// Offered, not yet accepted: nothing reaches across.
    Offered,
    /// Accepted: each side's clients reach the namespace within their rights.
    Active,
    /// Suspended by one side: every use of the namespace through it is refused.
    Suspended,
    /// Ended (or declined): for good.
    Ended,
}

impl ExchangeStatus {
    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Ended => "ended",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "offered" => Self::Offered,
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "ended" => Self::Ended,
            _ => return Err(StoreError::InvalidState("an exchange in an unknown state")),
        })
    }
}

/// Which party of an exchange a tenant or app is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The tenant that offered the namespace (whose app holds the channels).
    Offerer,
    /// The tenant it was offered to.
    Partner,
}

impl Side {
    /// `offerer` or `partner`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offerer => "offerer",
            Self::Partner => "partner",
        }
    }
}

/// An exchange as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// `exc_` and 26 base32 characters.
    pub id: String,
    /// The offering tenant.
    pub offerer_tenant_id: String,
    /// The offering tenant's app, whose namespace is shared.
    pub offerer_app_id: String,
    /// The namespace shared (the part of channel names before the first `:`).
    pub namespace: String,
    /// The tenant it is offered to.
    pub partner_tenant_id: String,
    /// The partner's app whose clients reach the namespace, once accepted.
    pub partner_app_id: Option<String>,
    /// What the offering side's clients and keys may do on the namespace.
    pub offerer_rights: Vec<String>,
    /// What the partner's clients and keys may do on it.
    pub partner_rights: Vec<String>,
    /// Where it is in its life.
    pub status: ExchangeStatus,
    /// The tenant that suspended it (only it may resume) or ended it.
    pub changed_by: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// The largest checkpoint of its log the offering side cosigned with its own key.
    pub offerer_cosigned_size: u64,
    /// The largest checkpoint of its log the partner cosigned with its own key.
    pub partner_cosigned_size: u64,
}

impl Exchange {
    /// Which side `tenant_id` is, if it is a party.
    pub fn side_of(&self, tenant_id: &str) -> Option<Side> {
        if self.offerer_tenant_id == tenant_id {
            Some(Side::Offerer)
        } else if self.partner_tenant_id == tenant_id {
            Some(Side::Partner)
        } else {
            None
        }
    }

    /// The tenant of `side`.
    pub fn tenant(&self, side: Side) -> &str {
        match side {
            Side::Offerer => &self.offerer_tenant_id,
            Side::Partner => &self.partner_tenant_id,
        }
    }

    /// The apps of both sides (the partner's once accepted): the ones whose nodes must look
    /// again after a change.
    pub fn apps(&self) -> Vec<String> {
        std::iter::once(self.offerer_app_id.clone()).chain(self.partner_app_id.clone()).collect()
    }

    /// The id of its audit log.
    pub fn log_id(&self) -> String {
        exchange_log_id(&self.id)
    }

    fn from_row(row: &DbRow) -> Result<Self, StoreError> {
        let rights = |column: &str| -> Result<Vec<String>, StoreError> {
            let text: String = row.try_get(column)?;
            serde_json::from_str(&text)
                .map_err(|_| StoreError::InvalidState("an exchange with unreadable rights"))
        };
        Ok(Self {
            id: row.try_get("id")?,
            offerer_tenant_id: row.try_get("offerer_tenant_id")?,
            offerer_app_id: row.try_get("offerer_app_id")?,
            namespace: row.try_get("namespace")?,
            partner_tenant_id: row.try_get("partner_tenant_id")?,
            partner_app_id: row.try_get("partner_app_id")?,
            offerer_rights: rights("offerer_rights")?,
            partner_rights: rights("partner_rights")?,
            status: ExchangeStatus::parse(&row.try_get::<String, _>("status")?)?,
            changed_by: row.try_get("changed_by")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            offerer_cosigned_size: row.try_get::<i64, _>("offerer_cosigned_size")? as u64,
            partner_cosigned_size: row.try_get::<i64, _>("partner_cosigned_size")? as u64,
        })
    }
}

/// The id of an exchange's audit log.
pub fn exchange_log_id(exchange_id: &str) -> String {
    format!("exchange:{exchange_id}")
}

/// What an offer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewExchange {
    /// The offering tenant's app whose namespace is shared.
    pub app_id: String,
    /// The namespace.
    pub namespace: String,
    /// The tenant it is offered to.
    pub partner_tenant_id: String,
    /// What the offering side may do on it (checked by the API).
    pub offerer_rights: Vec<String>,
    /// What the partner may do on it (checked by the API).
    pub partner_rights: Vec<String>,
}

/// A change one party makes to an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeChange {
    /// The partner accepts, into one of its apps.
    Accept {
        /// The partner's app.
        app_id: String,
    },
    /// Either side stops it for now.
    Suspend,
    /// The side that suspended it starts it again.
    Resume,
    /// Either side ends it (the partner may end an offer: it declines).
    End,
}

impl ExchangeChange {
    fn action(&self) -> &'static str {
        match self {
            Self::Accept { .. } => "exchange.accept",
            Self::Suspend => "exchange.suspend",
            Self::Resume => "exchange.resume",
            Self::End => "exchange.end",
        }
    }
}

/// What an app's node needs to route a namespace through an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRoute {
    /// The exchange.
    pub exchange_id: String,
    /// The namespace.
    pub namespace: String,
    /// Which side the app is.
    pub side: Side,
    /// The app that holds the channels (the offering one).
    pub offerer_app_id: String,
    /// The partner's app.
    pub partner_app_id: String,
    /// What this side may do on the namespace.
    pub rights: Vec<String>,
    /// Active or suspended.
    pub status: ExchangeStatus,
}

const COLUMNS: &str = "id, offerer_tenant_id, offerer_app_id, namespace, partner_tenant_id, partner_app_id, \
     offerer_rights, partner_rights, status, changed_by, created_at, updated_at, offerer_cosigned_size, \
     partner_cosigned_size";

impl Store {
    /// Offers a namespace of the tenant's app to another tenant; audited as `exchange.offer`
    /// in both tenants' events.
    ///
    /// [`StoreError::NotFound`] if the app is not the tenant's or the partner does not exist
    /// (or is the tenant itself); [`StoreError::AlreadyExists`] if the namespace is in an
    /// exchange that has not ended.
    pub async fn offer_exchange(
        &self,
        actor: &Actor,
        tenant_id: &str,
        offer: &NewExchange,
    ) -> Result<Exchange, StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, &offer.app_id)) {
            return Err(StoreError::NotFound("app"));
        }
        if !id::is_valid(id::TENANT, &offer.partner_tenant_id) || offer.partner_tenant_id == tenant_id {
            return Err(StoreError::NotFound("partner tenant"));
        }
        let now = unix_now();
        let exchange_id = id::new(id::EXCHANGE);
        let rights = |r: &Vec<String>| serde_json::to_string(r).unwrap_or_else(|_| "[]".to_owned());
        let mut tx = self.pool.begin().await?;
        Self::own_app(&mut tx, tenant_id, &offer.app_id).await?;
        // An app routes a namespace through one exchange at most, on either side.
        Self::refuse_taken_namespace(&mut tx, &offer.app_id, &offer.namespace).await?;
        // The app must be the tenant's and the partner must exist: the SELECT names both, so a
        // missing one inserts nothing.
        let done = sqlx::query(
            "INSERT INTO exchanges (id, offerer_tenant_id, offerer_app_id, namespace, partner_tenant_id, \
             offerer_rights, partner_rights, status, created_at, updated_at) \
             SELECT $1, apps.tenant_id, apps.id, $4, tenants.id, $5, $6, 'offered', $7, $7 \
             FROM apps, tenants WHERE apps.id = $3 AND apps.tenant_id = $2 AND tenants.id = $8",
        )
        .bind(&exchange_id)
        .bind(tenant_id)
        .bind(&offer.app_id)
        .bind(&offer.namespace)
        .bind(rights(&offer.offerer_rights))
        .bind(rights(&offer.partner_rights))
        .bind(now)
        .bind(&offer.partner_tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "exchange of this namespace", "app"))?;
        if done.rows_affected() == 0 {
            // The app was checked above: the partner does not exist.
            return Err(StoreError::NotFound("partner tenant"));
        }
        for party in [tenant_id, offer.partner_tenant_id.as_str()] {
            audit::record(&mut tx, actor, Some(party), "exchange.offer", &exchange_id).await?;
        }
        tx.commit().await?;
        self.exchange(tenant_id, &exchange_id).await
    }

    /// Returns an exchange the tenant is a party of.
    pub async fn exchange(&self, tenant_id: &str, exchange_id: &str) -> Result<Exchange, StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::EXCHANGE, exchange_id)) {
            return Err(StoreError::NotFound("exchange"));
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM exchanges WHERE id = $1 AND (offerer_tenant_id = $2 OR partner_tenant_id = $2)"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(exchange_id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("exchange"))?;
        Exchange::from_row(&row)
    }

    /// Returns the exchanges the tenant offered or was offered, newest first.
    pub async fn exchanges(&self, tenant_id: &str) -> Result<Vec<Exchange>, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM exchanges WHERE offerer_tenant_id = $1 OR partner_tenant_id = $1 ORDER BY id DESC"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant_id).fetch_all(&self.pool).await?;
        rows.iter().map(Exchange::from_row).collect()
    }

    /// One party changes an exchange (see [`ExchangeChange`]); audited in both tenants' events.
    /// An accepted exchange's log starts reading the offering app's feed in the same
    /// transaction, so no message of the namespace falls before it.
    ///
    /// [`StoreError::NotFound`] unless the tenant is a party (and, to accept, the partner and
    /// the app its own); [`StoreError::InvalidState`] if the exchange is not in a state that
    /// allows the change; [`StoreError::AlreadyExists`] if the partner's app already takes the
    /// namespace from another exchange.
    pub async fn change_exchange(
        &self,
        actor: &Actor,
        tenant_id: &str,
        exchange_id: &str,
        change: &ExchangeChange,
    ) -> Result<Exchange, StoreError> {
        let exchange = self.exchange(tenant_id, exchange_id).await?;
        let side = exchange.side_of(tenant_id).ok_or(StoreError::NotFound("exchange"))?;
        let now = unix_now();
        let mut tx = self.pool.begin().await?;
        let (to, from): (&str, &[&str]) = match change {
            ExchangeChange::Accept { .. } if side != Side::Partner => {
                return Err(StoreError::InvalidState(
                    "only the tenant it was offered to accepts an exchange",
                ));
            }
            ExchangeChange::Accept { .. } => ("active", &["offered"]),
            ExchangeChange::Suspend => ("suspended", &["active"]),
            ExchangeChange::Resume if exchange.changed_by.as_deref() != Some(tenant_id) => {
                return Err(StoreError::InvalidState("only the side that suspended an exchange resumes it"));
            }
            ExchangeChange::Resume => ("active", &["suspended"]),
            ExchangeChange::End => ("ended", &["offered", "active", "suspended"]),
        };
        if !from.contains(&exchange.status.as_str()) {
            return Err(StoreError::InvalidState(match exchange.status {
                ExchangeStatus::Offered => "the exchange has not been accepted",
                ExchangeStatus::Active => "the exchange is active",
                ExchangeStatus::Suspended => "the exchange is suspended",
                ExchangeStatus::Ended => "the exchange has ended",
            }));
        }
        let changed = match change {
            ExchangeChange::Accept { app_id } => {
                if !id::is_valid(id::APP, app_id) {
                    return Err(StoreError::NotFound("app"));
                }
                Self::own_app(&mut tx, tenant_id, app_id).await?;
                Self::refuse_taken_namespace(&mut tx, app_id, &exchange.namespace).await?;
                sqlx::query(
                    "UPDATE exchanges SET status = 'active', partner_app_id = $2, updated_at = $3 \
                     WHERE id = $1 AND status = 'offered' AND partner_tenant_id = $4 \
                     AND EXISTS (SELECT 1 FROM apps WHERE apps.id = $2 AND apps.tenant_id = $4)",
                )
                .bind(exchange_id)
                .bind(app_id)
                .bind(now)
                .bind(tenant_id)
                .execute(&mut *tx)
                .await
                .map_err(|err| StoreError::from_sqlx(err, "exchange of this namespace", "app"))?
            }
            _ => {
                // The status (and, to resume, who suspended it) read is the one changed: a change
                // racing this one makes it touch nothing.
                sqlx::query(
                    "UPDATE exchanges SET status = $2, changed_by = $3, updated_at = $4 \
                     WHERE id = $1 AND status = $5 AND ($6 = 0 OR changed_by = $3)",
                )
                .bind(exchange_id)
                .bind(to)
                .bind(tenant_id)
                .bind(now)
                .bind(exchange.status.as_str())
                .bind(i32::from(matches!(change, ExchangeChange::Resume)))
                .execute(&mut *tx)
                .await?
            }
        };
        if changed.rows_affected() == 0 {
            return Err(match change {
                ExchangeChange::Accept { .. } => StoreError::NotFound("app"),
                _ => StoreError::InvalidState("the exchange changed meanwhile; read it again"),
            });
        }
        match change {
            ExchangeChange::Accept { .. } => Self::add_exchange_source(&mut tx, &exchange).await?,
            ExchangeChange::End => {
                sqlx::query("UPDATE audit_sources SET until_ms = $2 WHERE log_id = $1")
                    .bind(exchange.log_id())
                    .bind(crate::audit_log::now_ms())
                    .execute(&mut *tx)
                    .await?;
            }
            _ => {}
        }
        for party in [exchange.offerer_tenant_id.as_str(), exchange.partner_tenant_id.as_str()] {
            audit::record(&mut tx, actor, Some(party), change.action(), exchange_id).await?;
        }
        tx.commit().await?;
        self.exchange(tenant_id, exchange_id).await
    }

    /// [`StoreError::NotFound`] unless `app_id` is an app of `tenant_id`.
    async fn own_app(
        conn: &mut sqlx::AnyConnection,
        tenant_id: &str,
        app_id: &str,
    ) -> Result<(), StoreError> {
        let found = sqlx::query("SELECT 1 AS one FROM apps WHERE id = $1 AND tenant_id = $2")
            .bind(app_id)
            .bind(tenant_id)
            .fetch_optional(&mut *conn)
            .await?;
        found.map(drop).ok_or(StoreError::NotFound("app"))
    }

    /// [`StoreError::AlreadyExists`] if `namespace` of `app_id` is in an exchange that has not
    /// ended, on either side (the unique indexes hold each side alone).
    async fn refuse_taken_namespace(
        conn: &mut sqlx::AnyConnection,
        app_id: &str,
        namespace: &str,
    ) -> Result<(), StoreError> {
        let taken = sqlx::query(
            "SELECT 1 AS one FROM exchanges WHERE (offerer_app_id = $1 OR partner_app_id = $1) \
             AND namespace = $2 AND status <> 'ended' LIMIT 1",
        )
        .bind(app_id)
        .bind(namespace)
        .fetch_optional(&mut *conn)
        .await?;
        match taken {
            Some(_) => Err(StoreError::AlreadyExists("exchange of this namespace")),
            None => Ok(()),
        }
    }

    /// The exchanges an app takes part in that route its namespace (active or suspended), for
    /// the data plane.
    pub async fn exchange_routes(&self, app_id: &str) -> Result<Vec<ExchangeRoute>, StoreError> {
        if !id::is_valid(id::APP, app_id) {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM exchanges WHERE (offerer_app_id = $1 OR partner_app_id = $1) \
             AND status IN ('active', 'suspended') ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(app_id).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let exchange = Exchange::from_row(row)?;
                let side = if exchange.offerer_app_id == app_id { Side::Offerer } else { Side::Partner };
                Ok(ExchangeRoute {
                    rights: match side {
                        Side::Offerer => exchange.offerer_rights,
                        Side::Partner => exchange.partner_rights,
                    },
                    exchange_id: exchange.id,
                    namespace: exchange.namespace,
                    side,
                    offerer_app_id: exchange.offerer_app_id,
                    partner_app_id: exchange.partner_app_id.unwrap_or_default(),
                    status: exchange.status,
                })
            })
            .collect()
    }
}

impl Store {
    /// Keeps `note` (the stored checkpoint of `size` of the exchange's log with `side`'s
    /// cosignature added) in place of the stored one, marked cosigned when `both` parties'
    /// cosignatures are on it, and moves `side`'s cosigned size on to `size`; returns `false`
    /// (and changes nothing) if `size` is below what `side` cosigned already or the stored
    /// checkpoint is not `stored_note` any more.
    pub async fn add_exchange_cosignature(
        &self,
        exchange: &Exchange,
        side: Side,
        size: u64,
        stored_note: &str,
        note: &str,
        both: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(match side {
            Side::Offerer => {
                "UPDATE exchanges SET offerer_cosigned_size = $2 WHERE id = $1 AND offerer_cosigned_size <= $2"
            }
            Side::Partner => {
                "UPDATE exchanges SET partner_cosigned_size = $2 WHERE id = $1 AND partner_cosigned_size <= $2"
            }
        })
        .bind(&exchange.id)
        .bind(size as i64)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        if !Self::replace_checkpoint_note(&mut tx, &exchange.log_id(), size, stored_note, note, both).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }
}
