//! Webhook endpoints: where an app's events are sent, with the secret that signs them.
//!
//! A secret is 32 random bytes made here, returned once when the endpoint is created or its
//! secret rotated (the API shows it to the tenant then, and never again) and kept encrypted
//! with the store's [`SecretCipher`](crate::SecretCipher), bound to `webhook:<app>:<endpoint>`
//! (and to a `previous` marker for the secret being rotated out). A rotation keeps the old
//! secret signing beside the new one for an overlap, so receivers can switch without losing a
//! delivery. The URL is stored as given: whether deliveries may reach it is the API's and the
//! worker's check, not the store's.

use secrecy::{ExposeSecret as _, SecretSlice};
use sqlx::Row as _;

use crate::audit::{self, Actor};
use crate::db::DbRow;
use crate::{Store, StoreError, id, unix_now};

/// Bytes of a secret.
const SECRET_LEN: usize = 32;

/// A webhook endpoint, without its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// `wh_` and 26 base32 characters.
    pub id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The app whose events it receives.
    pub app_id: String,
    /// Where requests go.
    pub url: String,
    /// The tenant's note.
    pub description: String,
    /// Custom headers sent with every request, as a JSON object of strings.
    pub headers: String,
    /// Whether deliveries are sent.
    pub enabled: bool,
    /// Why it was disabled, if it is.
    pub disabled_reason: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// What an endpoint is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhookEndpoint {
    /// Where requests go.
    pub url: String,
    /// The tenant's note.
    pub description: String,
    /// Custom headers, a JSON object of strings.
    pub headers: String,
}

/// The secrets an endpoint's requests are signed with now: the current one, and the previous
/// one while its rotation overlap lasts.
pub struct SigningSecrets {
    /// The current secret.
    pub current: SecretSlice<u8>,
    /// The secret being rotated out, until its overlap ends.
    pub previous: Option<SecretSlice<u8>>,
}

fn aad(app_id: &str, endpoint_id: &str, which: &str) -> Vec<u8> {
    format!("webhook:{app_id}:{endpoint_id}:{which}").into_bytes()
}

fn new_secret() -> SecretSlice<u8> {
    let mut secret = vec![0u8; SECRET_LEN];
    rand::fill(secret.as_mut_slice());
    SecretSlice::from(secret)
}

fn endpoint(row: &DbRow) -> Result<WebhookEndpoint, StoreError> {
    Ok(WebhookEndpoint {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        app_id: row.try_get("app_id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        headers: row.try_get("headers")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        disabled_reason: row.try_get("disabled_reason")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The columns a [`WebhookEndpoint`] is read from.
macro_rules! endpoint_columns {
    () => {
        "id, tenant_id, app_id, url, description, headers, enabled, disabled_reason, created_at"
    };
}

impl Store {
    /// Creates an endpoint for an app of the tenant; returns it and its secret (shown once).
    /// Audited as `webhook.create`.
    pub async fn create_webhook_endpoint(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        new: &NewWebhookEndpoint,
    ) -> Result<(WebhookEndpoint, SecretSlice<u8>), StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::APP, app_id)) {
            return Err(StoreError::NotFound("app"));
        }
        let endpoint_id = id::new(id::WEBHOOK);
        let secret = new_secret();
        let sealed =
            self.cipher.encrypt_for(tenant_id, secret.expose_secret(), &aad(app_id, &endpoint_id, "current"));
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO webhook_endpoints (id, tenant_id, app_id, url, description, headers, secret_ciphertext, \
             enabled, created_at) SELECT $1, tenant_id, id, $3, $4, $5, $6, 1, $7 FROM apps \
             WHERE id = $2 AND tenant_id = $8",
        )
        .bind(&endpoint_id)
        .bind(app_id)
        .bind(&new.url)
        .bind(&new.description)
        .bind(&new.headers)
        .bind(sealed)
        .bind(unix_now())
        .bind(tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "webhook endpoint", "app"))?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::NotFound("app"));
        }
        audit::record(&mut tx, actor, Some(tenant_id), "webhook.create", &endpoint_id).await?;
        tx.commit().await?;
        Ok((self.webhook_endpoint(tenant_id, &endpoint_id).await?, secret))
    }

    /// Returns an endpoint of the tenant.
    pub async fn webhook_endpoint(
        &self,
        tenant_id: &str,
        endpoint_id: &str,
    ) -> Result<WebhookEndpoint, StoreError> {
        let sql = concat!(
            "SELECT ",
            endpoint_columns!(),
            " FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2"
        );
        let row = sqlx::query(sql).bind(endpoint_id).bind(tenant_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(endpoint).transpose()?.ok_or(StoreError::NotFound("webhook endpoint"))
    }

    /// Returns the endpoints of an app of the tenant, oldest first.
    pub async fn webhook_endpoints(
        &self,
        tenant_id: &str,
        app_id: &str,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let sql = concat!(
            "SELECT ",
            endpoint_columns!(),
            " FROM webhook_endpoints WHERE app_id = $1 AND tenant_id = $2 ORDER BY created_at, id"
        );
        let rows = sqlx::query(sql).bind(app_id).bind(tenant_id).fetch_all(&self.pool).await?;
        rows.iter().map(endpoint).collect()
    }

    /// Enables an endpoint, or disables it with a reason (the tenant's, or the worker's after
    /// it kept failing). Audited as `webhook.enable` / `webhook.disable`.
    pub async fn set_webhook_enabled(
        &self,
        actor: &Actor,
        tenant_id: &str,
        endpoint_id: &str,
        disabled_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(
            "UPDATE webhook_endpoints SET enabled = $3, disabled_reason = $4 WHERE id = $1 AND tenant_id = $2",
        )
        .bind(endpoint_id)
        .bind(tenant_id)
        .bind(i64::from(disabled_reason.is_none()))
        .bind(disabled_reason)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound("webhook endpoint"));
        }
        let action = if disabled_reason.is_none() { "webhook.enable" } else { "webhook.disable" };
        audit::record(&mut tx, actor, Some(tenant_id), action, endpoint_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Notes how a worker's attempts went: an endpoint that delivered is healthy again, one
    /// whose attempts failed (and none delivered) is failing since now unless it already was.
    /// Disables every endpoint among `failed` that has been failing for at least
    /// `disable_after_ms` (0: never), audited as `webhook.auto_disable` by `system`, and returns
    /// them.
    pub async fn note_endpoint_health(
        &self,
        delivered: &[String],
        failed: &[String],
        now_ms: i64,
        disable_after_ms: i64,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let mut tx = self.pool.begin().await?;
        for id in delivered {
            sqlx::query("UPDATE webhook_endpoints SET failing_since_ms = NULL WHERE id = $1 AND failing_since_ms IS NOT NULL")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let mut disabled = Vec::new();
        for id in failed.iter().filter(|id| !delivered.contains(id)) {
            sqlx::query("UPDATE webhook_endpoints SET failing_since_ms = $2 WHERE id = $1 AND failing_since_ms IS NULL")
                .bind(id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            if disable_after_ms <= 0 {
                continue;
            }
            let failing: Option<(String, i64)> = sqlx::query_as(
                "SELECT tenant_id, failing_since_ms FROM webhook_endpoints \
                 WHERE id = $1 AND enabled = 1 AND failing_since_ms <= $2",
            )
            .bind(id)
            .bind(now_ms - disable_after_ms)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((tenant_id, since)) = failing else { continue };
            let reason = format!(
                "disabled by the server: every delivery has failed for {} s (since {} ms after the Unix epoch)",
                (now_ms - since) / 1000,
                since
            );
            sqlx::query("UPDATE webhook_endpoints SET enabled = 0, disabled_reason = $2 WHERE id = $1")
                .bind(id)
                .bind(&reason)
                .execute(&mut *tx)
                .await?;
            audit::record(&mut tx, &Actor::system(), Some(&tenant_id), "webhook.auto_disable", id).await?;
            disabled.push((tenant_id, id));
        }
        tx.commit().await?;
        let mut endpoints = Vec::with_capacity(disabled.len());
        for (tenant_id, id) in disabled {
            endpoints.push(self.webhook_endpoint(&tenant_id, id).await?);
        }
        Ok(endpoints)
    }

    /// Deletes an endpoint and the rules that send to it (its queued deliveries stay in the log
    /// and are dead-lettered). Audited as `webhook.delete`.
    pub async fn delete_webhook_endpoint(
        &self,
        actor: &Actor,
        tenant_id: &str,
        endpoint_id: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2")
            .bind(endpoint_id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound("webhook endpoint"));
        }
        sqlx::query("DELETE FROM rules WHERE target_kind = 'webhook' AND target_id = $1 AND tenant_id = $2")
            .bind(endpoint_id)
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        audit::record(&mut tx, actor, Some(tenant_id), "webhook.delete", endpoint_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives an endpoint a new secret (returned once); the old one keeps signing beside it
    /// until `overlap_until_ms`. Audited as `webhook.rotate_secret`.
    pub async fn rotate_webhook_secret(
        &self,
        actor: &Actor,
        tenant_id: &str,
        endpoint_id: &str,
        overlap_until_ms: i64,
    ) -> Result<SecretSlice<u8>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT app_id, secret_ciphertext FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2",
        )
        .bind(endpoint_id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("webhook endpoint"))?;
        let app_id: String = row.try_get("app_id")?;
        let stored: Vec<u8> = row.try_get("secret_ciphertext")?;
        let old = secrecy::zeroize::Zeroizing::new(self.cipher.decrypt_for(
            tenant_id,
            &stored,
            &aad(&app_id, endpoint_id, "current"),
        )?);
        let secret = new_secret();
        let current =
            self.cipher.encrypt_for(tenant_id, secret.expose_secret(), &aad(&app_id, endpoint_id, "current"));
        let previous = self.cipher.encrypt_for(tenant_id, &old, &aad(&app_id, endpoint_id, "previous"));
        sqlx::query(
            "UPDATE webhook_endpoints SET secret_ciphertext = $3, previous_ciphertext = $4, previous_until_ms = $5 \
             WHERE id = $1 AND tenant_id = $2",
        )
        .bind(endpoint_id)
        .bind(tenant_id)
        .bind(current)
        .bind(previous)
        .bind(overlap_until_ms)
        .execute(&mut *tx)
        .await?;
        audit::record(&mut tx, actor, Some(tenant_id), "webhook.rotate_secret", endpoint_id).await?;
        tx.commit().await?;
        Ok(secret)
    }

    /// Returns the secrets an endpoint of the tenant signs with at `now_ms`.
    pub async fn webhook_signing_secrets(
        &self,
        tenant_id: &str,
        endpoint_id: &str,
        now_ms: i64,
    ) -> Result<SigningSecrets, StoreError> {
        let row = sqlx::query(
            "SELECT app_id, secret_ciphertext, previous_ciphertext, previous_until_ms FROM webhook_endpoints \
             WHERE id = $1 AND tenant_id = $2",
        )
        .bind(endpoint_id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound("webhook endpoint"))?;
        let app_id: String = row.try_get("app_id")?;
        let open = |stored: &[u8], which| {
            self.cipher.decrypt_for(tenant_id, stored, &aad(&app_id, endpoint_id, which)).inspect_err(|_| {
                tracing::error!(endpoint_id, "webhook secret failed to decrypt; wrong master key?");
            })
        };
        let current = SecretSlice::from(open(&row.try_get::<Vec<u8>, _>("secret_ciphertext")?, "current")?);
        let previous_until: Option<i64> = row.try_get("previous_until_ms")?;
        let previous = match (row.try_get::<Option<Vec<u8>>, _>("previous_ciphertext")?, previous_until) {
            (Some(stored), Some(until)) if now_ms < until => {
                Some(SecretSlice::from(open(&stored, "previous")?))
            }
            _ => None,
        };
        Ok(SigningSecrets { current, previous })
    }

    /// Re-encrypts every webhook secret under this store's key, inside the caller's transaction
    /// (part of [`Store::reencrypt_secrets`]); returns how many values were rewritten.
    pub(crate) async fn reencrypt_webhook_secrets(
        &self,
        tx: &mut sqlx::AnyConnection,
        old: &crate::SecretCipher,
    ) -> Result<u64, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, app_id, secret_ciphertext, previous_ciphertext FROM webhook_endpoints",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut rewritten = 0;
        for row in &rows {
            let endpoint_id: String = row.try_get("id")?;
            let tenant_id: String = row.try_get("tenant_id")?;
            let app_id: String = row.try_get("app_id")?;
            let reseal = |stored: &[u8], which| -> Result<Vec<u8>, StoreError> {
                let row_aad = aad(&app_id, &endpoint_id, which);
                let secret = secrecy::zeroize::Zeroizing::new(
                    old.decrypt_for(&tenant_id, stored, &row_aad)
                        .or_else(|_| self.cipher.decrypt_for(&tenant_id, stored, &row_aad))
                        .inspect_err(|_| {
                            tracing::error!(endpoint_id, "a webhook secret opens with neither key")
                        })?,
                );
                Ok(self.cipher.encrypt_for(&tenant_id, &secret, &row_aad))
            };
            let current = reseal(&row.try_get::<Vec<u8>, _>("secret_ciphertext")?, "current")?;
            let previous = row
                .try_get::<Option<Vec<u8>>, _>("previous_ciphertext")?
                .map(|stored| reseal(&stored, "previous"))
                .transpose()?;
            sqlx::query(
                "UPDATE webhook_endpoints SET secret_ciphertext = $1, previous_ciphertext = $2 WHERE id = $3",
            )
            .bind(current)
            .bind(previous)
            .bind(&endpoint_id)
            .execute(&mut *tx)
            .await?;
            rewritten += 1;
        }
        Ok(rewritten)
    }
}
