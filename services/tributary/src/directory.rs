//! The relay's [`AppDirectory`], answered from the store.
//!
//! Apps are cached by the relay itself (its policy cache); this directory caches verified API
//! keys, so that an HTTP API request does not cost a database query and keeps working while the
//! database is down. A cached key is dropped when its app changes (control event) and checked
//! against the store at every periodic resync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use secrecy::ExposeSecret;
use sha2::{Digest as _, Sha256};
use tributary_capability::{KeyAlgorithm, SigningKey};
use tributary_relay::directory::KeyPermissions;
use tributary_relay::usage::UsageRow;
use tributary_relay::{ApiKeyIdentity, AppDirectory, AppRecord, DirectoryError, MintedGrant};
use tributary_store::{Revoked, SigningKeyRecord, Store, StoreError, TokenGrant};

/// The API key cache never holds more keys than this; past it, it starts over.
const API_KEY_CACHE_MAX: usize = 10_000;

/// A verified API key: its id (to check it is still active), what it identifies, and when a
/// rotated key stops working.
struct CachedKey {
    key_id: String,
    identity: ApiKeyIdentity,
    expires_at: Option<i64>,
}

/// The stored form of a key's capabilities (see `tributary_store::ApiKey::capabilities`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCapabilitiesJson {
    /// Rights per channel pattern.
    #[serde(default)]
    pub grants: Vec<GrantJson>,
    /// Whether the key may mint tokens and disconnect clients.
    #[serde(default)]
    pub mint_tokens: bool,
}

/// One grant of a key's capabilities.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantJson {
    /// The channel pattern.
    pub channel: String,
    /// The rights.
    pub allow: tributary_capability::Rights,
}

/// Parses a key's stored capabilities; `None` stored means everything.
pub fn key_permissions(stored: Option<&str>) -> Result<Option<Arc<KeyPermissions>>, String> {
    let Some(text) = stored else { return Ok(None) };
    let parsed: KeyCapabilitiesJson = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let grants = parsed
        .grants
        .into_iter()
        .map(|g| {
            let pattern = tributary_protocol::ChannelPattern::parse(&g.channel).map_err(|e| e.to_string())?;
            Ok(tributary_capability::Grant::new(pattern, g.allow))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Some(Arc::new(KeyPermissions {
        grants: tributary_capability::Capabilities::new(grants),
        mint_tokens: parsed.mint_tokens,
    })))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Apps and keys from the store.
pub struct StoreDirectory {
    store: Store,
    /// Keyed by SHA-256 of the whole presented key, so the cache holds no usable secret.
    api_keys: Mutex<HashMap<[u8; 32], CachedKey>>,
    /// Raised by every [`AppDirectory::forget_app`]: a key read from the store before a forget
    /// may be stale (revoked meanwhile) and is not cached.
    forgets: std::sync::atomic::AtomicU64,
}

impl StoreDirectory {
    /// Wraps a store.
    pub fn new(store: Store) -> Self {
        Self { store, api_keys: Mutex::new(HashMap::new()), forgets: Default::default() }
    }

    fn api_keys(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], CachedKey>> {
        self.api_keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn translate(err: StoreError) -> DirectoryError {
    match err {
        StoreError::NotFound(_) => DirectoryError::NotFound,
        StoreError::InvalidApiKey => DirectoryError::InvalidApiKey,
        other => DirectoryError::Unavailable(other.to_string()),
    }
}

/// Converts a stored key into a verification key; its algorithm comes from the record, never
/// from a token.
pub fn signing_key(record: SigningKeyRecord) -> Result<SigningKey, DirectoryError> {
    let alg = KeyAlgorithm::parse(&record.alg).ok_or_else(|| {
        DirectoryError::Unavailable(format!("stored key has unknown algorithm {:?}", record.alg))
    })?;
    let generation = u64::try_from(record.generation).unwrap_or(0);
    Ok(SigningKey::new(record.app_id, record.kid, alg, record.secret.expose_secret().to_vec())
        .with_generation(generation))
}

/// A stored count or unix second (`i64`) as the relay's `u64`; negative values (never
/// written) as 0.
fn seconds(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[async_trait]
impl AppDirectory for StoreDirectory {
    async fn authenticate_api_key(&self, presented: &str) -> Result<ApiKeyIdentity, DirectoryError> {
        let fingerprint: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some(cached) = self.api_keys().get(&fingerprint) {
            if cached.expires_at.is_some_and(|end| end <= unix_now()) {
                return Err(DirectoryError::InvalidApiKey);
            }
            return Ok(cached.identity.clone());
        }
        let forgets = self.forgets.load(std::sync::atomic::Ordering::Acquire);
        let key = self.store.verify_api_key(presented).await.map_err(translate)?;
        let permissions = key_permissions(key.capabilities.as_deref()).map_err(|reason| {
            // Written only through the API, which checks it: refuse rather than guess.
            tracing::error!(key_id = key.id, %reason, "stored API key capabilities do not parse");
            DirectoryError::InvalidApiKey
        })?;
        let identity = ApiKeyIdentity {
            tenant_id: key.tenant_id,
            app_id: key.app_id,
            key_id: key.id.clone(),
            permissions,
        };
        let mut cache = self.api_keys();
        if self.forgets.load(std::sync::atomic::Ordering::Acquire) != forgets {
            // A change was announced while the store answered: answer this request, but let
            // the next one ask again.
            return Ok(identity);
        }
        if cache.len() >= API_KEY_CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            fingerprint,
            CachedKey { key_id: key.id, identity: identity.clone(), expires_at: key.expires_at },
        );
        Ok(identity)
    }

    async fn app(&self, app_id: &str) -> Result<Option<AppRecord>, DirectoryError> {
        let Some(snapshot) = self.store.app_snapshot(app_id).await.map_err(translate)? else {
            return Ok(None);
        };
        let signing_keys = snapshot.signing_keys.into_iter().map(signing_key).collect::<Result<_, _>>()?;
        let mut revoked_tokens = Vec::new();
        let mut revoked_clients = Vec::new();
        for revoked in snapshot.revocations {
            match revoked {
                Revoked::Token(jti) => revoked_tokens.push(jti),
                Revoked::Client { client_id, issued_before } => {
                    revoked_clients.push((client_id, seconds(issued_before)))
                }
            }
        }
        let cutoff = snapshot.app.tokens_revoked_before.max(snapshot.tenant.tokens_revoked_before);
        let plan = snapshot.limits;
        let limits = tributary_relay::quota::Limits {
            max_connections: seconds(plan.max_connections),
            max_messages_per_month: seconds(plan.max_messages_per_month),
            max_publish_rate: seconds(plan.max_publish_rate),
            max_message_bytes: seconds(plan.max_message_bytes),
            overage_allowed: plan.overage_allowed,
            max_history_secs: seconds(plan.history_retention_secs),
            max_channels: seconds(plan.max_channels),
        };
        Ok(Some(AppRecord {
            app_id: snapshot.app.id,
            tenant_id: snapshot.tenant.id,
            served: snapshot.tenant.status.is_served(),
            unpaid: snapshot.tenant.status == tributary_store::TenantStatus::Unpaid,
            tokens_revoked_before: seconds(cutoff),
            signing_keys,
            revoked_tokens,
            revoked_clients,
            limits,
            messages_this_month: seconds(snapshot.messages_this_month),
            namespaces: snapshot
                .namespaces
                .into_iter()
                .filter_map(|ns| match serde_json::from_str(&ns.options) {
                    Ok(options) => Some((ns.name, options)),
                    Err(err) => {
                        // Written only through the API, which checks it.
                        tracing::error!(app_id, namespace = ns.name, error = %err, "stored namespace options do not parse");
                        None
                    }
                })
                .collect(),
            exchanges: snapshot.exchanges.into_iter().map(exchange_route).collect(),
        }))
    }

    fn forget_app(&self, app_id: &str) {
        let mut cache = self.api_keys();
        self.forgets.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        cache.retain(|_, cached| cached.identity.app_id != app_id);
    }

    async fn resync(&self) {
        let key_ids: Vec<String> = {
            let mut ids: Vec<String> = self.api_keys().values().map(|c| c.key_id.clone()).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        for key_id in key_ids {
            match self.store.api_key_is_active(&key_id).await {
                Ok(true) => {}
                Ok(false) => self.api_keys().retain(|_, cached| cached.key_id != key_id),
                // The database is down: keep serving the keys we verified.
                Err(_) => return,
            }
        }
    }

    async fn record_usage(&self, node_id: &str, seq: u64, rows: &[UsageRow]) -> Result<(), DirectoryError> {
        let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let rows: Vec<tributary_store::UsageRow> = rows
            .iter()
            .map(|row| tributary_store::UsageRow {
                app_id: row.app_id.to_string(),
                minute: signed(row.minute),
                messages_published: signed(row.published),
                messages_delivered: signed(row.delivered),
                bytes_published: signed(row.bytes_published),
                bytes_delivered: signed(row.bytes_delivered),
                peak_connections: signed(row.peak_connections),
                connection_seconds: signed(row.connection_seconds),
            })
            .collect();
        // Applied already (a retry after a lost reply) is success too.
        self.store.record_usage(node_id, signed(seq), &rows).await.map(|_| ()).map_err(translate)
    }

    fn new_token_id(&self) -> String {
        tributary_store::new_token_id()
    }

    async fn record_grant(&self, grant: &MintedGrant) -> Result<(), DirectoryError> {
        let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let grant = TokenGrant {
            jti: grant.jti.clone(),
            tenant_id: grant.tenant_id.clone(),
            app_id: grant.app_id.clone(),
            client_id: grant.client_id.clone(),
            kid: grant.kid.clone(),
            generation: signed(grant.generation),
            capabilities: grant.capabilities.clone(),
            issued_at: signed(grant.issued_at),
            expires_at: signed(grant.expires_at),
        };
        self.store.record_grant(&grant).await.map_err(translate)
    }
}

/// An exchange's route as the relay holds it (rights the API checked; an unknown one is none).
fn exchange_route(
    route: tributary_store::exchange::ExchangeRoute,
) -> tributary_relay::exchange::ExchangeRoute {
    tributary_relay::exchange::ExchangeRoute {
        rights: route.rights.iter().filter_map(|right| right.parse().ok()).collect(),
        partner: route.side == tributary_store::exchange::Side::Partner,
        offerer_app: route.offerer_app_id.into(),
        partner_app: route.partner_app_id.into(),
        suspended: route.status == tributary_store::exchange::ExchangeStatus::Suspended,
        exchange_id: route.exchange_id,
        namespace: route.namespace,
    }
}
