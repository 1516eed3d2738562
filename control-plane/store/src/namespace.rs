//! Namespaces of an app: channel options (history, presence, client publish, message size)
//! per channel-name prefix, editable at runtime. The store keeps the options as JSON, checked
//! by the API; the data plane reads them with the app.

use sqlx::Row as _;

use crate::audit::{self, Actor};
use crate::{Store, StoreError, id, unix_now};

/// One namespace of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The prefix before the first `:` of a channel name; `""` is the app's default.
    pub name: String,
    /// Its options as JSON.
    pub options: String,
    /// When it was last set, unix seconds.
    pub updated_at: i64,
}

impl Store {
    /// Creates or replaces a namespace of an app of the tenant; audited as `namespace.set`.
    ///
    /// Returns [`StoreError::NotFound`] if the app is not the tenant's.
    pub async fn set_namespace(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        name: &str,
        options: &str,
    ) -> Result<Namespace, StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) {
            return Err(StoreError::NotFound("app"));
        }
        let namespace =
            Namespace { name: name.to_owned(), options: options.to_owned(), updated_at: unix_now() };
        let mut tx = self.pool.begin().await?;
        // The update path skips the foreign key's tenant check, so it names the tenant itself:
        // another tenant's row is neither changed nor reported as changed.
        let done = sqlx::query(
            "INSERT INTO namespaces (tenant_id, app_id, name, options, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (app_id, name) DO UPDATE SET options = excluded.options, updated_at = excluded.updated_at \
             WHERE namespaces.tenant_id = excluded.tenant_id",
        )
        .bind(tenant_id)
        .bind(app_id)
        .bind(name)
        .bind(options)
        .bind(namespace.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "namespace", "app"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("app"));
        }
        audit::record(&mut tx, actor, Some(tenant_id), "namespace.set", &format!("{app_id}/{name}")).await?;
        if is_audited(options) {
            // The tenant's log reads the app's feed from this transaction on; it keeps reading
            // it if the namespace stops being audited (and takes only audited namespaces'
            // messages), so no message of an audited namespace can fall between the two.
            Self::add_audit_source(&mut tx, tenant_id, app_id).await?;
        }
        tx.commit().await?;
        Ok(namespace)
    }

    /// Deletes a namespace of an app of the tenant; audited as `namespace.delete`.
    ///
    /// Returns [`StoreError::NotFound`] unless the app has it.
    pub async fn delete_namespace(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) || name.contains('\0') {
            return Err(StoreError::NotFound("namespace"));
        }
        self.write_audited(
            sqlx::query("DELETE FROM namespaces WHERE app_id = $1 AND tenant_id = $2 AND name = $3")
                .bind(app_id)
                .bind(tenant_id)
                .bind(name),
            "namespace",
            (actor, Some(tenant_id)),
            ("namespace.delete", &format!("{app_id}/{name}")),
        )
        .await
    }

    /// Returns the namespaces of an app (of the tenant, if given), by name.
    pub async fn namespaces(
        &self,
        tenant_id: Option<&str>,
        app_id: &str,
    ) -> Result<Vec<Namespace>, StoreError> {
        if !id::is_valid(id::APP, app_id) || tenant_id.is_some_and(|t| !id::is_valid(id::TENANT, t)) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT name, options, updated_at FROM namespaces WHERE app_id = $1 \
             AND ($2 = '' OR tenant_id = $2) ORDER BY name",
        )
        .bind(app_id)
        .bind(tenant_id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Namespace {
                    name: row.try_get("name")?,
                    options: row.try_get("options")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}

/// Whether a namespace's options (JSON) mark it `audited`: its messages go on the tenant's
/// audit log.
pub fn is_audited(options: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(options)
        .is_ok_and(|v| v["audited"] == serde_json::Value::Bool(true))
}
