//! Everything the data plane needs to admit an app's tokens, read in one call: the app, its
//! tenant (status and tenant-wide revocation), its signing keys and its revocations. Relay
//! nodes cache it and reload it when told the app changed.

use crate::revocation::Revoked;
use crate::{App, SigningKeyRecord, Store, StoreError, Tenant, id};

/// An app as the data plane sees it.
#[derive(Debug, Clone)]
pub struct AppSnapshot {
    /// The app.
    pub app: App,
    /// Its tenant.
    pub tenant: Tenant,
    /// Its unrevoked signing keys, newest first, with their secrets.
    pub signing_keys: Vec<SigningKeyRecord>,
    /// Its revocations of tokens and clients that can still matter.
    pub revocations: Vec<Revoked>,
    /// Its tenant's effective limits.
    pub limits: crate::plan::Limits,
    /// Messages its tenant published this calendar month (UTC), as flushed so far.
    pub messages_this_month: i64,
    /// Its namespaces.
    pub namespaces: Vec<crate::Namespace>,
    /// The exchanges that route a namespace of it (active or suspended).
    pub exchanges: Vec<crate::exchange::ExchangeRoute>,
}

impl Store {
    /// Returns the snapshot of an app, or `None` if there is no app with this id.
    ///
    /// The reads are not one transaction: a change racing the read is picked up by the
    /// reload its control event triggers.
    pub async fn app_snapshot(&self, app_id: &str) -> Result<Option<AppSnapshot>, StoreError> {
        if !id::is_valid(id::APP, app_id) {
            return Ok(None);
        }
        let app = match self.app_by_id(app_id).await {
            Ok(app) => app,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(other) => return Err(other),
        };
        let tenant = self.tenant(&app.tenant_id).await?;
        let signing_keys = self.signing_keys(app_id).await?;
        let revocations = self.revocations(app_id).await?;
        let limits = self.tenant_limits(&tenant.id).await?;
        let messages_this_month =
            self.messages_published_since(&tenant.id, crate::usage::month_start(crate::unix_now())).await?;
        let namespaces = self.namespaces(None, app_id).await?;
        let exchanges = self.exchange_routes(app_id).await?;
        Ok(Some(AppSnapshot {
            app,
            tenant,
            signing_keys,
            revocations,
            limits,
            messages_this_month,
            namespaces,
            exchanges,
        }))
    }
}
