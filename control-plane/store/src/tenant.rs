//! Tenants and their apps.

use sqlx::Row as _;

use crate::db::DbRow;
use crate::{Store, StoreError, id, unix_now};

/// A company signed up to the service; it owns apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The tenant id, `ten_` followed by 26 base32 characters.
    pub id: String,
    /// The display name; not unique.
    pub name: String,
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
    /// When the app was created, in unix seconds.
    pub created_at: i64,
}

impl Tenant {
    fn from_row(row: &DbRow) -> Result<Self, sqlx::Error> {
        Ok(Tenant {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
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
            created_at: row.try_get("created_at")?,
        })
    }
}

impl Store {
    /// Creates a tenant with a new id.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        let tenant = Tenant { id: id::new(id::TENANT), name: name.to_owned(), created_at: unix_now() };
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&tenant.id)
            .bind(&tenant.name)
            .bind(tenant.created_at)
            .execute(&self.pool)
            .await
            .map_err(|err| StoreError::from_sqlx(err, "tenant", "tenant"))?;
        Ok(tenant)
    }

    /// Returns the tenant, or [`StoreError::NotFound`] if there is none with this id.
    pub async fn tenant(&self, tenant_id: &str) -> Result<Tenant, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Err(StoreError::NotFound("tenant"));
        }
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        Ok(Tenant::from_row(&row)?)
    }

    /// Creates an app in the tenant.
    ///
    /// Returns [`StoreError::AlreadyExists`] if the tenant already has an app with this name and
    /// [`StoreError::NotFound`] if the tenant does not exist.
    pub async fn create_app(&self, tenant_id: &str, name: &str) -> Result<App, StoreError> {
        let app = App {
            id: id::new(id::APP),
            tenant_id: tenant_id.to_owned(),
            name: name.to_owned(),
            created_at: unix_now(),
        };
        sqlx::query("INSERT INTO apps (id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&app.id)
            .bind(&app.tenant_id)
            .bind(&app.name)
            .bind(app.created_at)
            .execute(&self.pool)
            .await
            .map_err(|err| StoreError::from_sqlx(err, "app", "tenant"))?;
        Ok(app)
    }

    /// Returns the app if it belongs to the tenant, and [`StoreError::NotFound`] otherwise
    /// (an app of another tenant is indistinguishable from a missing one).
    pub async fn app(&self, tenant_id: &str, app_id: &str) -> Result<App, StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) {
            return Err(StoreError::NotFound("app"));
        }
        let row =
            sqlx::query("SELECT id, tenant_id, name, created_at FROM apps WHERE id = $1 AND tenant_id = $2")
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
        let row = sqlx::query("SELECT id, tenant_id, name, created_at FROM apps WHERE id = $1")
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("app"))?;
        Ok(App::from_row(&row)?)
    }

    /// Returns the apps of the tenant, oldest first. A tenant without apps, or an unknown tenant,
    /// has none.
    pub async fn apps(&self, tenant_id: &str) -> Result<Vec<App>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, name, created_at FROM apps WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(App::from_row).collect::<Result<_, _>>()?)
    }
}
