//! Each app's credentials for the push and SMS services: an APNs signing key, an FCM service
//! account, a VAPID key, a Twilio account. What may be shown (key and team ids, the project,
//! the sender) is kept as `settings`; the secret (a key, a token) is encrypted with the store's
//! [`SecretCipher`](crate::SecretCipher) under the tenant's data key, bound to
//! `push:<app>:<service>`, and never returned by the API once set. A service whose credentials
//! were refused is disabled with the reason (by the worker, audited as `system`) until its
//! credentials are set again.

use secrecy::SecretSlice;
use sqlx::Row as _;

use crate::audit::{self, Actor};
use crate::db::DbRow;
use crate::{Store, StoreError, unix_now};

/// A service an app sends through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushService {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
    /// Web Push (the app's VAPID key).
    WebPush,
    /// SMS through Twilio.
    Twilio,
}

impl PushService {
    /// Every service, in the order they are listed.
    pub const ALL: [PushService; 4] =
        [PushService::Apns, PushService::Fcm, PushService::WebPush, PushService::Twilio];

    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            PushService::Apns => "apns",
            PushService::Fcm => "fcm",
            PushService::WebPush => "webpush",
            PushService::Twilio => "twilio",
        }
    }

    /// Reads a service's name.
    pub fn parse(name: &str) -> Option<Self> {
        PushService::ALL.into_iter().find(|service| service.as_str() == name)
    }
}

/// An app's credentials for a service, without the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCredentials {
    /// The app.
    pub app_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The service.
    pub service: PushService,
    /// What may be shown, a JSON object (key ids, project, sender).
    pub settings: String,
    /// Why the service refused them, if it did: the app's sends through it are stopped.
    pub disabled_reason: Option<String>,
    /// Unix seconds.
    pub updated_at: i64,
}

fn aad(app_id: &str, service: PushService) -> Vec<u8> {
    format!("push:{app_id}:{}", service.as_str()).into_bytes()
}

fn credentials(row: &DbRow) -> Result<PushCredentials, StoreError> {
    let service: String = row.try_get("service")?;
    Ok(PushCredentials {
        app_id: row.try_get("app_id")?,
        tenant_id: row.try_get("tenant_id")?,
        service: PushService::parse(&service).ok_or(StoreError::NotFound("push service"))?,
        settings: row.try_get("settings")?,
        disabled_reason: row.try_get("disabled_reason")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Sets (or replaces) an app's credentials for `service`, enabling the service again if
    /// it was disabled. Audited as `push.credentials_set`.
    pub async fn set_push_credentials(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        service: PushService,
        settings: &str,
        secret: &[u8],
    ) -> Result<PushCredentials, StoreError> {
        let sealed = self.cipher.encrypt_for(tenant_id, secret, &aad(app_id, service));
        let mut tx = self.pool.begin().await?;
        let written = sqlx::query(
            "INSERT INTO push_credentials (app_id, tenant_id, service, settings, secret_ciphertext, \
             disabled_reason, updated_at) SELECT id, tenant_id, $3, $4, $5, NULL, $6 FROM apps \
             WHERE id = $1 AND tenant_id = $2 \
             ON CONFLICT (app_id, service) DO UPDATE SET settings = excluded.settings, \
             secret_ciphertext = excluded.secret_ciphertext, disabled_reason = NULL, updated_at = excluded.updated_at",
        )
        .bind(app_id)
        .bind(tenant_id)
        .bind(service.as_str())
        .bind(settings)
        .bind(sealed)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        if written.rows_affected() == 0 {
            return Err(StoreError::NotFound("app"));
        }
        let target = format!("{app_id}/{}", service.as_str());
        audit::record(&mut tx, actor, Some(tenant_id), "push.credentials_set", &target).await?;
        tx.commit().await?;
        let all = self.push_credentials(tenant_id, app_id).await?;
        all.into_iter().find(|c| c.service == service).ok_or(StoreError::NotFound("push credentials"))
    }

    /// An app's credentials, without their secrets, in [`PushService::ALL`] order.
    pub async fn push_credentials(
        &self,
        tenant_id: &str,
        app_id: &str,
    ) -> Result<Vec<PushCredentials>, StoreError> {
        let rows = sqlx::query(
            "SELECT app_id, tenant_id, service, settings, disabled_reason, updated_at FROM push_credentials \
             WHERE app_id = $1 AND tenant_id = $2",
        )
        .bind(app_id)
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        let mut all = rows.iter().map(credentials).collect::<Result<Vec<_>, _>>()?;
        all.sort_by_key(|c| PushService::ALL.iter().position(|s| *s == c.service));
        Ok(all)
    }

    /// An app's credentials for `service` with their secret, for the worker that sends (none
    /// set: `None`).
    pub async fn push_secret(
        &self,
        app_id: &str,
        service: PushService,
    ) -> Result<Option<(PushCredentials, SecretSlice<u8>)>, StoreError> {
        let row = sqlx::query(
            "SELECT app_id, tenant_id, service, settings, disabled_reason, updated_at, secret_ciphertext \
             FROM push_credentials WHERE app_id = $1 AND service = $2",
        )
        .bind(app_id)
        .bind(service.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let found = credentials(&row)?;
        let sealed: Vec<u8> = row.try_get("secret_ciphertext")?;
        let secret = self.cipher.decrypt_for(&found.tenant_id, &sealed, &aad(app_id, service))?;
        Ok(Some((found, SecretSlice::from(secret))))
    }

    /// Deletes an app's credentials for `service`. Audited as `push.credentials_delete`.
    pub async fn delete_push_credentials(
        &self,
        actor: &Actor,
        tenant_id: &str,
        app_id: &str,
        service: PushService,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted =
            sqlx::query("DELETE FROM push_credentials WHERE app_id = $1 AND tenant_id = $2 AND service = $3")
                .bind(app_id)
                .bind(tenant_id)
                .bind(service.as_str())
                .execute(&mut *tx)
                .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound("push credentials"));
        }
        let target = format!("{app_id}/{}", service.as_str());
        audit::record(&mut tx, actor, Some(tenant_id), "push.credentials_delete", &target).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stops an app's sends through `service` because the service refused its credentials;
    /// returns the credentials disabled now (`None` if they were disabled already or are gone).
    /// Audited as `push.credentials_refused` by `system`.
    pub async fn disable_push_credentials(
        &self,
        app_id: &str,
        service: PushService,
        reason: &str,
    ) -> Result<Option<PushCredentials>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE push_credentials SET disabled_reason = $3 \
             WHERE app_id = $1 AND service = $2 AND disabled_reason IS NULL \
             RETURNING app_id, tenant_id, service, settings, disabled_reason, updated_at",
        )
        .bind(app_id)
        .bind(service.as_str())
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let disabled = credentials(&row)?;
        let target = format!("{app_id}/{}", service.as_str());
        audit::record(
            &mut tx,
            &Actor::system(),
            Some(&disabled.tenant_id),
            "push.credentials_refused",
            &target,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(disabled))
    }
}
