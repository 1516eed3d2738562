//! Tenants and their apps.

use sqlx::Row as _;

use crate::audit::{self, Actor};
use crate::db::DbRow;
use crate::{Store, StoreError, id, unix_now};

/// Whether a tenant is served. Only `active` and `past_due` tenants are: `past_due` is the
/// grace period after a failed payment, `unpaid` (set by billing when the grace is over or
/// Stripe gives up) and `suspended` (set by an operator) cut every connection and request off,
/// and `deleted` is kept for the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantStatus {
    /// In good standing.
    Active,
    /// A payment failed; still served while it is retried.
    PastDue,
    /// Cut off by billing for not paying, until an invoice is paid: as `Suspended`, with
    /// requests refused with 402 `payment_required`.
    Unpaid,
    /// Cut off: new connections and requests are refused and open ones closed.
    Suspended,
    /// Closed for good; its records are kept but nothing is served.
    Deleted,
}

impl TenantStatus {
    /// Every status.
    pub const ALL: [TenantStatus; 5] = [
        TenantStatus::Active,
        TenantStatus::PastDue,
        TenantStatus::Unpaid,
        TenantStatus::Suspended,
        TenantStatus::Deleted,
    ];

    /// Returns the stored and API name: `active`, `past_due`, `unpaid`, `suspended` or `deleted`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::PastDue => "past_due",
            TenantStatus::Unpaid => "unpaid",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleted => "deleted",
        }
    }

    /// Returns the status with this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }

    /// Returns whether the tenant's apps are served.
    pub const fn is_served(self) -> bool {
        matches!(self, TenantStatus::Active | TenantStatus::PastDue)
    }
}

/// A company signed up to the service; it owns apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The tenant id, `ten_` followed by 26 base32 characters.
    pub id: String,
    /// The display name; not unique.
    pub name: String,
    /// Whether it is served.
    pub status: TenantStatus,
    /// Its plan (see [`crate::plan`]).
    pub plan_id: String,
    /// Every token of its apps issued before this unix second is revoked (0: none).
    pub tokens_revoked_before: i64,
    /// When the tenant was created, in unix seconds.
    pub created_at: i64,
}

/// An environment of a tenant (such as `prod` or `staging`); it owns API keys and signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// The app id, `app_` followed by 26 base32 characters; unique across tenants.
    pub id: String,
    /// The tenant that owns the app.
    pub tenant_id: String,
    /// The name, unique within the tenant.
    pub name: String,
    /// Every token of the app issued before this unix second is revoked (0: none).
    pub tokens_revoked_before: i64,
    /// When the app was created, in unix seconds.
    pub created_at: i64,
}

impl Tenant {
    fn from_row(row: &DbRow) -> Result<Self, sqlx::Error> {
        let status: String = row.try_get("status")?;
        Ok(Tenant {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            // Written only from `TenantStatus::as_str`; an unknown value (a newer schema) is
            // not served rather than guessed at.
            status: TenantStatus::parse(&status).unwrap_or(TenantStatus::Suspended),
            plan_id: row.try_get("plan_id")?,
            tokens_revoked_before: row.try_get("tokens_revoked_before")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

impl App {
    fn from_row(row: &DbRow) -> Result<Self, sqlx::Error> {
        Ok(App {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            name: row.try_get("name")?,
            tokens_revoked_before: row.try_get("tokens_revoked_before")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// The plan of a new tenant: no limits, so a self-hosted install is limited by nothing it did not
/// set. A service puts each tenant on its plan when it signs up.
pub const DEFAULT_PLAN: &str = "unlimited";

/// The columns [`Tenant::from_row`] reads (a macro, so queries stay `&'static str`).
macro_rules! tenant_columns {
    () => {
        "id, name, status, plan_id, tokens_revoked_before, created_at"
    };
}

/// The columns [`App::from_row`] reads.
macro_rules! app_columns {
    () => {
        "id, tenant_id, name, tokens_revoked_before, created_at"
    };
}

/// The cut-off of a "revoke every token issued up to now": the next second, so a token issued
/// in this very second is revoked too (`iat` has second precision). A token minted right after
/// the revocation in the same second is refused as well, which is the safe side.
pub(crate) fn next_second() -> i64 {
    unix_now() + 1
}

impl Store {
    /// Creates an active tenant with a new id, as the system.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        self.create_tenant_as(&Actor::system(), name).await
    }

    /// Creates an active tenant with a new id; audited as `tenant.create`.
    pub async fn create_tenant_as(&self, actor: &Actor, name: &str) -> Result<Tenant, StoreError> {
        let tenant = Tenant {
            id: id::new(id::TENANT),
            name: name.to_owned(),
            status: TenantStatus::Active,
            plan_id: DEFAULT_PLAN.to_owned(),
            tokens_revoked_before: 0,
            created_at: unix_now(),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO tenants (id, name, status, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&tenant.id)
            .bind(&tenant.name)
            .bind(tenant.status.as_str())
            .bind(tenant.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|err| StoreError::from_sqlx(err, "tenant", "tenant"))?;
        audit::record(&mut tx, actor, Some(&tenant.id), "tenant.create", &tenant.id).await?;
        tx.commit().await?;
        Ok(tenant)
    }

    /// Returns every tenant, oldest first.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query(concat!("SELECT ", tenant_columns!(), " FROM tenants ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(Tenant::from_row).collect::<Result<_, _>>()?)
    }

    /// Sets a tenant's status; audited as `tenant.status.<status>`. Returns the tenant.
    pub async fn set_tenant_status(
        &self,
        actor: &Actor,
        tenant_id: &str,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Err(StoreError::NotFound("tenant"));
        }
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE tenants SET status = $1 WHERE id = $2")
            .bind(status.as_str())
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("tenant"));
        }
        if status == TenantStatus::Active {
            // An operator's reactivation starts billing's grace period afresh at the next
            // failed payment.
            sqlx::query("UPDATE billing_accounts SET past_due_since = NULL WHERE tenant_id = $1")
                .bind(tenant_id)
                .execute(&mut *tx)
                .await?;
        }
        let action = format!("tenant.status.{}", status.as_str());
        audit::record(&mut tx, actor, Some(tenant_id), &action, tenant_id).await?;
        tx.commit().await?;
        self.tenant(tenant_id).await
    }

    /// Revokes every token of every app of the tenant issued up to now; audited as
    /// `tenant.revoke_tokens`. Returns the new cut-off (unix seconds).
    pub async fn revoke_tenant_tokens(&self, actor: &Actor, tenant_id: &str) -> Result<i64, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Err(StoreError::NotFound("tenant"));
        }
        let cutoff = next_second();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE tenants SET tokens_revoked_before = $1 WHERE id = $2")
            .bind(cutoff)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("tenant"));
        }
        audit::record(&mut tx, actor, Some(tenant_id), "tenant.revoke_tokens", tenant_id).await?;
        tx.commit().await?;
        Ok(cutoff)
    }

    /// Revokes every token of the app issued up to now; audited as `app.revoke_tokens`.
    /// Returns the new cut-off (unix seconds).
    pub async fn revoke_app_tokens(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
    ) -> Result<i64, StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) {
            return Err(StoreError::NotFound("app"));
        }
        let cutoff = next_second();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE apps SET tokens_revoked_before = $1 WHERE id = $2 AND tenant_id = $3")
            .bind(cutoff)
            .bind(app_id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("app"));
        }
        audit::record(&mut tx, actor, Some(tenant_id), "app.revoke_tokens", app_id).await?;
        tx.commit().await?;
        Ok(cutoff)
    }

    /// Returns the tenant, or [`StoreError::NotFound`] if there is none with this id.
    pub async fn tenant(&self, tenant_id: &str) -> Result<Tenant, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Err(StoreError::NotFound("tenant"));
        }
        let row = sqlx::query(concat!("SELECT ", tenant_columns!(), " FROM tenants WHERE id = $1"))
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        Ok(Tenant::from_row(&row)?)
    }

    /// Creates an app in the tenant, as the system.
    ///
    /// Returns [`StoreError::AlreadyExists`] if the tenant already has an app with this name and
    /// [`StoreError::NotFound`] if the tenant does not exist.
    pub async fn create_app(&self, tenant_id: &str, name: &str) -> Result<App, StoreError> {
        self.create_app_as(&Actor::system(), tenant_id, name).await
    }

    /// Creates an app in the tenant; audited as `app.create`. Errors as [`Store::create_app`].
    pub async fn create_app_as(&self, actor: &Actor, tenant_id: &str, name: &str) -> Result<App, StoreError> {
        let mut tx = self.pool.begin().await?;
        let app = self.insert_app(&mut tx, actor, tenant_id, name).await?;
        tx.commit().await?;
        Ok(app)
    }

    /// Creates an app and its first signing key in one transaction (both or neither); audited
    /// as `app.create` and `signing_key.create`.
    pub async fn create_app_with_signing_key_as(
        &self,
        actor: &Actor,
        tenant_id: &str,
        name: &str,
    ) -> Result<(App, crate::SigningKeyRecord), StoreError> {
        let mut tx = self.pool.begin().await?;
        let app = self.insert_app(&mut tx, actor, tenant_id, name).await?;
        let key = self.insert_signing_key(&mut tx, actor, tenant_id, &app.id).await?;
        tx.commit().await?;
        Ok((app, key))
    }

    async fn insert_app(
        &self,
        conn: &mut sqlx::AnyConnection,
        actor: &Actor,
        tenant_id: &str,
        name: &str,
    ) -> Result<App, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Err(StoreError::NotFound("tenant"));
        }
        let app = App {
            id: id::new(id::APP),
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
            tokens_revoked_before: 0,
            created_at: unix_now(),
        };
        sqlx::query("INSERT INTO apps (id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&app.id)
            .bind(&app.tenant_id)
            .bind(&app.name)
            .bind(app.created_at)
            .execute(&mut *conn)
            .await
            .map_err(|err| StoreError::from_sqlx(err, "app", "tenant"))?;
        audit::record(conn, actor, Some(tenant_id), "app.create", &app.id).await?;
        Ok(app)
    }

    /// Returns the app if it belongs to the tenant, and [`StoreError::NotFound`] otherwise
    /// (an app of another tenant is indistinguishable from a missing one).
    pub async fn app(&self, tenant_id: &str, app_id: &str) -> Result<App, StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) {
            return Err(StoreError::NotFound("app"));
        }
        let row =
            sqlx::query(concat!("SELECT ", app_columns!(), " FROM apps WHERE id = $1 AND tenant_id = $2"))
                .bind(app_id)
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound("app"))?;
        Ok(App::from_row(&row)?)
    }

    /// Returns the app with this id, whatever its tenant.
    ///
    /// This is for the data plane, which learns the app id from a token's audience or an API key
    /// and needs the tenant from it; control-plane requests should use [`Store::app`].
    pub async fn app_by_id(&self, app_id: &str) -> Result<App, StoreError> {
        // Ids may come from tokens, which anyone can forge: one that cannot exist is not looked
        // up (PostgreSQL refuses a NUL byte with an error, not "not found").
        if !id::is_valid(id::APP, app_id) {
            return Err(StoreError::NotFound("app"));
        }
        let row = sqlx::query(concat!("SELECT ", app_columns!(), " FROM apps WHERE id = $1"))
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("app"))?;
        Ok(App::from_row(&row)?)
    }

    /// Returns the apps of the tenant, oldest first. A tenant without apps, or an unknown tenant,
    /// has none.
    pub async fn apps(&self, tenant_id: &str) -> Result<Vec<App>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            app_columns!(),
            " FROM apps WHERE tenant_id = $1 ORDER BY created_at, id"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(App::from_row).collect::<Result<_, _>>()?)
    }
}
