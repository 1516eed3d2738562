//! Admission: whether an app's tokens and connections are let in, answered from memory.
//!
//! Each node keeps an [`AppPolicy`] per app it has seen, loaded from the [`AppDirectory`] on
//! first use and reloaded when a control event says the app (or its tenant) changed, and at
//! every periodic resync. A token check therefore never waits on the database, and a node
//! keeps admitting (and refusing) from its cache while the database is down. After a reload
//! the app's open connections are checked again and those no longer admitted are closed.
//!
//! A token the cache cannot place (an app or key id it does not know) may come from a change
//! made on another node whose event has not arrived yet: that miss reloads the app once before
//! the token is refused (see [`Policies::refresh_after_miss`]), so a key or app is usable on
//! every node as soon as the request that created it has been answered.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;
use tributary_capability::{SigningKey, VerifiedToken};
use tributary_protocol::{CloseCode, ErrorCode};

use crate::directory::{AppDirectory, AppRecord, DirectoryError};

/// What a connection's token says about it, kept for as long as the connection lives so that
/// a revocation can find it. Every connection holds one, so it is small and allocates nothing:
/// the key id is shared with the app's policy and the token id is kept as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The signing key's id, shared with the policy that verified it.
    pub kid: Arc<str>,
    /// The key generation the token was signed under.
    pub generation: u64,
    /// [`jti_hash`] of the token id, 0 if it has none.
    pub jti: u64,
    /// When it was issued (`iat`), 0 if it does not say.
    pub issued_at: u64,
}

impl Credential {
    /// Returns the credential of a token verified with the key `kid`.
    pub fn of(token: &VerifiedToken, kid: Arc<str>) -> Self {
        Self {
            kid,
            generation: token.generation,
            jti: token.jti.as_deref().map_or(0, jti_hash),
            issued_at: token.issued_at.unwrap_or(0),
        }
    }
}

/// Returns the hash a token id is compared by; never 0 (0 means "no token id"). A collision
/// would only refuse a token that was not revoked (64 bits: never in practice), and token ids
/// are chosen by whoever holds the signing key, not by the holder of the token.
pub fn jti_hash(jti: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    jti.hash(&mut hasher);
    hasher.finish().max(1)
}

#[cfg(test)]
impl Credential {
    /// A credential for tests that never check admission.
    pub(crate) fn dummy() -> Self {
        Self { kid: "k".into(), generation: 1, jti: 0, issued_at: 0 }
    }
}

/// Why a credential is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The tenant is suspended or deleted.
    Suspended,
    /// The tenant is cut off for not paying.
    Unpaid,
    /// The token, its client, its key generation or its app was revoked.
    Revoked,
    /// The signing key is gone (revoked or deleted).
    KeyGone,
}

impl Refusal {
    /// Returns the error a new request gets.
    pub fn error_code(self) -> ErrorCode {
        match self {
            Refusal::Suspended => ErrorCode::TenantSuspended,
            Refusal::Unpaid => ErrorCode::PaymentRequired,
            Refusal::Revoked => ErrorCode::TokenRevoked,
            Refusal::KeyGone => ErrorCode::UnknownKey,
        }
    }

    /// Returns the code an open connection is closed with.
    pub fn close_code(self) -> CloseCode {
        match self {
            Refusal::Suspended | Refusal::Unpaid => CloseCode::TenantSuspended,
            Refusal::Revoked | Refusal::KeyGone => CloseCode::Revoked,
        }
    }
}

/// One app's admission rules, in memory.
#[derive(Debug)]
pub struct AppPolicy {
    /// The app id, shared by every connection of the app (one string, not one each).
    pub app_id: Arc<str>,
    /// The tenant.
    pub tenant_id: Arc<str>,
    served: bool,
    unpaid: bool,
    tokens_revoked_before: u64,
    /// Newest first, each with its id as shared by the credentials it verified.
    keys: Vec<(Arc<str>, SigningKey)>,
    /// [`jti_hash`]es of the revoked token ids.
    revoked_tokens: HashSet<u64>,
    revoked_clients: HashMap<String, u64>,
    limits: crate::quota::Limits,
    messages_this_month: u64,
    namespaces: HashMap<String, crate::config::NamespaceConfig>,
    /// By namespace.
    exchanges: HashMap<String, crate::exchange::ExchangeRoute>,
}

impl From<AppRecord> for AppPolicy {
    fn from(record: AppRecord) -> Self {
        Self {
            app_id: record.app_id.into(),
            tenant_id: record.tenant_id.into(),
            served: record.served,
            unpaid: record.unpaid,
            tokens_revoked_before: record.tokens_revoked_before,
            keys: record.signing_keys.into_iter().map(|key| (Arc::from(key.kid.as_str()), key)).collect(),
            revoked_tokens: record.revoked_tokens.iter().map(|jti| jti_hash(jti)).collect(),
            revoked_clients: record.revoked_clients.into_iter().collect(),
            limits: record.limits,
            messages_this_month: record.messages_this_month,
            namespaces: record.namespaces.into_iter().collect(),
            exchanges: record.exchanges.into_iter().map(|route| (route.namespace.clone(), route)).collect(),
        }
    }
}

impl AppPolicy {
    /// Returns whether the app's tenant is served.
    pub fn served(&self) -> bool {
        self.served
    }

    /// Returns why a request of the app's tenant is refused, if it is not served.
    pub fn refusal(&self) -> Option<Refusal> {
        match (self.served, self.unpaid) {
            (true, _) => None,
            (false, true) => Some(Refusal::Unpaid),
            (false, false) => Some(Refusal::Suspended),
        }
    }

    /// Returns the app's own namespace `name`, if it has one.
    pub fn namespace(&self, name: &str) -> Option<&crate::config::NamespaceConfig> {
        self.namespaces.get(name)
    }

    /// Returns the exchange that routes namespace `name` of the app, if one does.
    pub fn exchange(&self, name: &str) -> Option<&crate::exchange::ExchangeRoute> {
        if self.exchanges.is_empty() { None } else { self.exchanges.get(name) }
    }

    /// Returns the exchanges that route a namespace of the app.
    pub fn exchanges(&self) -> impl Iterator<Item = &crate::exchange::ExchangeRoute> {
        self.exchanges.values()
    }

    /// Returns the tenant's limits.
    pub fn limits(&self) -> crate::quota::Limits {
        self.limits
    }

    /// Returns the messages the tenant published this month, as the store knew at the load.
    pub fn messages_this_month(&self) -> u64 {
        self.messages_this_month
    }

    /// Returns the unrevoked key `kid` of the app, with its shared id.
    pub fn key(&self, kid: &str) -> Option<(&Arc<str>, &SigningKey)> {
        self.keys.iter().find(|(id, _)| &**id == kid).map(|(id, key)| (id, key))
    }

    /// Returns the key new tokens are signed with: the newest.
    pub fn minting_key(&self) -> Option<&SigningKey> {
        self.keys.first().map(|(_, key)| key)
    }

    /// Returns whether a credential of `client` is admitted now.
    pub fn admit(&self, client: &str, credential: &Credential) -> Result<(), Refusal> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let Some((_, key)) = self.key(&credential.kid) else { return Err(Refusal::KeyGone) };
        let revoked = credential.generation < key.generation
            || credential.issued_at < self.tokens_revoked_before
            || (credential.jti != 0 && self.revoked_tokens.contains(&credential.jti))
            || self.revoked_clients.get(client).is_some_and(|&before| credential.issued_at < before);
        if revoked { Err(Refusal::Revoked) } else { Ok(()) }
    }
}

/// Most apps a node keeps in memory. Past it, apps that do not exist (looked up for forged
/// tokens) are forgotten first.
const MAX_CACHED_APPS: usize = 100_000;

/// Least time between two loads of one app caused by tokens the cache could not place: forged
/// key ids cost the database at most this rate per app.
const MISS_RELOAD_INTERVAL: Duration = Duration::from_millis(100);

type Cell = Arc<OnceCell<Option<Arc<AppPolicy>>>>;

/// One app's loads after misses: held while one runs, so concurrent misses share it; holds
/// when the last one started.
type MissGate = Arc<tokio::sync::Mutex<Option<Instant>>>;

/// A cached policy and the number of the load that filled it: loads are numbered when they
/// start, and a load that started later read a newer state of the store.
#[derive(Clone)]
struct Slot {
    started: u64,
    cell: Cell,
}

/// The policies of the apps this node has seen.
#[derive(Default)]
pub struct Policies {
    slots: Mutex<HashMap<Arc<str>, Slot>>,
    loads: AtomicU64,
    misses: Mutex<HashMap<Arc<str>, MissGate>>,
    /// Learns every policy loaded: who pays for an exchange's deliveries.
    payers: Arc<crate::exchange::Payers>,
}

/// The point in a node's sequence of policy loads at which a lookup began, taken by
/// [`Policies::mark`]: a load numbered from it on read the store after the lookup began.
#[derive(Debug, Clone, Copy)]
pub struct LoadMark(u64);

impl Policies {
    /// Policies that teach `payers` the exchanges of each policy loaded.
    pub fn new(payers: Arc<crate::exchange::Payers>) -> Self {
        Self { payers, ..Self::default() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the policy of `app_id` (`None`: no such app), loading it on first use. Many
    /// concurrent first uses share one load.
    pub async fn get(
        &self,
        directory: &dyn AppDirectory,
        app_id: &str,
    ) -> Result<Option<Arc<AppPolicy>>, DirectoryError> {
        let cell = {
            let mut slots = self.lock();
            if let Some(slot) = slots.get(app_id) {
                slot.cell.clone()
            } else {
                if slots.len() >= MAX_CACHED_APPS {
                    slots.retain(|_, slot| matches!(slot.cell.get(), Some(Some(_))));
                }
                let slot =
                    Slot { started: self.loads.fetch_add(1, Ordering::Relaxed), cell: Cell::default() };
                slots.insert(app_id.into(), slot.clone());
                slot.cell
            }
        };
        // A failed load leaves the cell empty, so the next use tries again.
        let policy = cell
            .get_or_try_init(|| async {
                let policy = load(directory, app_id).await?;
                self.payers.learn(app_id, policy.as_deref());
                Ok::<_, DirectoryError>(policy)
            })
            .await?;
        Ok(policy.clone())
    }

    /// Marks the start of a lookup, for [`Policies::refresh_after_miss`].
    pub fn mark(&self) -> LoadMark {
        LoadMark(self.loads.load(Ordering::Relaxed))
    }

    /// Returns the policy of `app_id` as loaded after `since`: a token named an app or key the
    /// cached policy (got after `since` was marked) does not know, and the change that made it
    /// may not have reached this node yet. When a load started after `since` is already
    /// cached (the lookup itself loaded, or another miss did) that is the answer; otherwise the
    /// app is reloaded, at most once per [`MISS_RELOAD_INTERVAL`] (a later miss waits for the
    /// next one), and concurrent misses share the reload.
    pub async fn refresh_after_miss(
        &self,
        directory: &dyn AppDirectory,
        app_id: &str,
        since: LoadMark,
    ) -> Result<Option<Arc<AppPolicy>>, DirectoryError> {
        let gate = {
            let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
            if misses.len() >= MAX_CACHED_APPS {
                misses.retain(|_, gate| Arc::strong_count(gate) > 1);
            }
            misses.entry(app_id.into()).or_default().clone()
        };
        let mut last = gate.lock().await;
        if let Some(policy) = self.loaded_since(app_id, since) {
            return Ok(policy);
        }
        if let Some(at) = *last {
            tokio::time::sleep_until(at + MISS_RELOAD_INTERVAL).await;
        }
        *last = Some(Instant::now());
        self.reload(directory, app_id).await
    }

    /// Returns the cached policy of `app_id` if the load that filled it started at or after
    /// `since`.
    fn loaded_since(&self, app_id: &str, since: LoadMark) -> Option<Option<Arc<AppPolicy>>> {
        let slots = self.lock();
        let slot = slots.get(app_id).filter(|slot| slot.started >= since.0)?;
        slot.cell.get().cloned()
    }

    /// Loads `app_id` again and replaces the cached policy, unless a load that started later
    /// has already replaced it (two changes in a row reload concurrently, and the older read
    /// must not win); returns the cached policy. On failure the cached one stays.
    pub async fn reload(
        &self,
        directory: &dyn AppDirectory,
        app_id: &str,
    ) -> Result<Option<Arc<AppPolicy>>, DirectoryError> {
        let started = self.loads.fetch_add(1, Ordering::Relaxed);
        let policy = load(directory, app_id).await?;
        self.payers.learn(app_id, policy.as_deref());
        let mut slots = self.lock();
        match slots.get(app_id) {
            Some(newer) if newer.started > started && newer.cell.initialized() => {
                Ok(newer.cell.get().cloned().flatten())
            }
            _ => {
                let cell = Cell::new(OnceCell::new_with(Some(policy.clone())));
                slots.insert(app_id.into(), Slot { started, cell });
                Ok(policy)
            }
        }
    }

    /// Returns the loaded policy of `app_id`, without loading it.
    pub fn peek(&self, app_id: &str) -> Option<Arc<AppPolicy>> {
        self.lock().get(app_id).and_then(|slot| slot.cell.get().cloned().flatten())
    }

    /// Returns every loaded policy with its app.
    pub fn loaded_by_app(&self) -> Vec<(Arc<str>, Arc<AppPolicy>)> {
        self.lock()
            .iter()
            .filter_map(|(app, slot)| slot.cell.get().cloned().flatten().map(|p| (app.clone(), p)))
            .collect()
    }

    /// Returns every loaded policy.
    pub fn loaded(&self) -> Vec<Arc<AppPolicy>> {
        self.lock().values().filter_map(|slot| slot.cell.get().cloned().flatten()).collect()
    }

    /// Returns the apps with a loaded policy, of `tenant` only if given. With a tenant, apps
    /// whose first load is still running are included too: that load may have read the
    /// tenant before the change, and must not be the last word.
    pub fn apps(&self, tenant: Option<&str>) -> Vec<Arc<str>> {
        self.lock()
            .iter()
            .filter(|(_, slot)| match slot.cell.get() {
                Some(Some(policy)) => tenant.is_none_or(|tenant| &*policy.tenant_id == tenant),
                Some(None) => false,
                None => tenant.is_some(),
            })
            .map(|(app, _)| app.clone())
            .collect()
    }
}

async fn load(directory: &dyn AppDirectory, app_id: &str) -> Result<Option<Arc<AppPolicy>>, DirectoryError> {
    Ok(directory.app(app_id).await?.map(|record| Arc::new(AppPolicy::from(record))))
}

#[cfg(test)]
mod tests {
    use tributary_capability::{KeyAlgorithm, SigningKey};

    use super::*;

    fn record() -> AppRecord {
        AppRecord {
            app_id: "app_1".into(),
            tenant_id: "ten_1".into(),
            served: true,
            unpaid: false,
            tokens_revoked_before: 100,
            signing_keys: vec![
                SigningKey::new("app_1", "k2", KeyAlgorithm::Hs256, vec![2; 32]).with_generation(3),
                SigningKey::new("app_1", "k1", KeyAlgorithm::Hs256, vec![1; 32]),
            ],
            revoked_tokens: vec!["tok_bad".into()],
            revoked_clients: vec![("mallory".into(), 500)],
            limits: Default::default(),
            messages_this_month: 0,
            namespaces: Vec::new(),
            exchanges: Vec::new(),
        }
    }

    fn credential(kid: &str, generation: u64, jti: Option<&str>, issued_at: u64) -> Credential {
        Credential { kid: kid.into(), generation, jti: jti.map_or(0, jti_hash), issued_at }
    }

    #[test]
    fn every_revocation_refuses_exactly_what_it_names() {
        let policy = AppPolicy::from(record());
        assert_eq!(policy.minting_key().map(|k| k.kid.as_str()), Some("k2"));
        let ok = credential("k1", 1, Some("tok_good"), 200);
        assert_eq!(policy.admit("alice", &ok), Ok(()));
        let cases = [
            ("a key gone", "alice", credential("k9", 1, None, 200), Refusal::KeyGone),
            ("an older generation", "alice", credential("k2", 2, None, 200), Refusal::Revoked),
            ("issued before the app cut-off", "alice", credential("k1", 1, None, 99), Refusal::Revoked),
            ("no iat counts as issued at 0", "alice", credential("k1", 1, None, 0), Refusal::Revoked),
            ("a revoked jti", "alice", credential("k1", 1, Some("tok_bad"), 200), Refusal::Revoked),
            ("a revoked client's old token", "mallory", credential("k1", 1, None, 499), Refusal::Revoked),
        ];
        for (what, client, credential, refusal) in cases {
            assert_eq!(policy.admit(client, &credential), Err(refusal), "{what}");
        }
        assert_eq!(policy.admit("mallory", &credential("k1", 1, None, 500)), Ok(()), "a newer token");
        assert_eq!(policy.admit("alice", &credential("k2", 3, None, 200)), Ok(()), "the current generation");
    }

    /// Answers its first `app` call slowly with the tenant served, later ones at once with it
    /// suspended: the store's state before and after a suspension.
    struct SlowThenSuspended {
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl AppDirectory for SlowThenSuspended {
        async fn authenticate_api_key(&self, _: &str) -> Result<crate::ApiKeyIdentity, DirectoryError> {
            Err(DirectoryError::InvalidApiKey)
        }

        async fn app(&self, _: &str) -> Result<Option<AppRecord>, DirectoryError> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if call == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok(Some(AppRecord { served: call == 0, ..record() }))
        }
    }

    #[tokio::test]
    async fn an_older_reload_finishing_last_does_not_replace_a_newer_one() {
        let directory = SlowThenSuspended { calls: Default::default() };
        let policies = Policies::default();
        // Two changes in a row: the first reload reads the old state slowly, the second the
        // new state quickly and finishes first.
        let (older, newer) = tokio::join!(policies.reload(&directory, "app_1"), async {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            policies.reload(&directory, "app_1").await
        });
        assert!(!newer.unwrap().unwrap().served());
        assert!(!older.unwrap().unwrap().served(), "the older load returns the newer policy");
        let cached = policies.get(&directory, "app_1").await.unwrap().unwrap();
        assert!(!cached.served(), "the newer state stays cached");
    }

    #[tokio::test]
    async fn a_tenant_change_also_reloads_an_app_whose_first_load_is_still_running() {
        let directory = Arc::new(SlowThenSuspended { calls: Default::default() });
        let policies = Arc::new(Policies::default());
        let loading = {
            let (directory, policies) = (directory.clone(), policies.clone());
            tokio::spawn(async move { policies.get(&*directory, "app_1").await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // The first load (served) is still running when the tenant changes.
        assert_eq!(policies.apps(Some("ten_1")), vec![Arc::<str>::from("app_1")]);
        assert!(policies.apps(None).is_empty(), "a resync only reloads what is loaded");
        let reloaded = policies.reload(&*directory, "app_1").await.unwrap().unwrap();
        assert!(!reloaded.served());
        loading.await.unwrap().unwrap();
        assert!(!policies.get(&*directory, "app_1").await.unwrap().unwrap().served(), "the change stays");
    }

    /// Counts its loads; from load `keyed_from` on, the app has a key `k3` too (made on another
    /// node after this one first loaded the app).
    struct GrowingKeys {
        calls: std::sync::atomic::AtomicUsize,
        keyed_from: usize,
    }

    #[async_trait::async_trait]
    impl AppDirectory for GrowingKeys {
        async fn authenticate_api_key(&self, _: &str) -> Result<crate::ApiKeyIdentity, DirectoryError> {
            Err(DirectoryError::InvalidApiKey)
        }

        async fn app(&self, _: &str) -> Result<Option<AppRecord>, DirectoryError> {
            let mut record = record();
            if self.calls.fetch_add(1, Ordering::SeqCst) >= self.keyed_from {
                let key = SigningKey::new("app_1", "k3", KeyAlgorithm::Hs256, vec![3; 32]);
                record.signing_keys.insert(0, key);
            }
            Ok(Some(record))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_made_after_the_load_is_found_by_one_reload_and_misses_are_rate_limited() {
        let directory = GrowingKeys { calls: Default::default(), keyed_from: 1 };
        let policies = Policies::default();
        policies.get(&directory, "app_1").await.unwrap();
        // Later, a token names a key the cached policy does not know.
        let asked = policies.mark();
        let cached = policies.get(&directory, "app_1").await.unwrap().unwrap();
        assert!(cached.key("k3").is_none(), "loaded before the key was made");
        let fresh = policies.refresh_after_miss(&directory, "app_1", asked).await.unwrap().unwrap();
        assert!(fresh.key("k3").is_some(), "the miss reloads");
        assert_eq!(directory.calls.load(Ordering::SeqCst), 2);
        assert!(policies.get(&directory, "app_1").await.unwrap().unwrap().key("k3").is_some(), "and caches");

        // A flood of forged key ids, all missing at once: one reload answers them all.
        let asked = policies.mark();
        let start = tokio::time::Instant::now();
        let misses = (0..50).map(|_| policies.refresh_after_miss(&directory, "app_1", asked));
        for policy in futures::future::join_all(misses).await {
            assert!(policy.unwrap().unwrap().key("forged").is_none());
        }
        assert_eq!(directory.calls.load(Ordering::SeqCst), 3, "one reload for 50 concurrent misses");
        assert!(start.elapsed() >= MISS_RELOAD_INTERVAL, "and not sooner than the interval after the last");
        // Misses one after another reload at most once per interval.
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            let asked = policies.mark();
            policies.refresh_after_miss(&directory, "app_1", asked).await.unwrap();
        }
        assert_eq!(directory.calls.load(Ordering::SeqCst), 8);
        assert!(start.elapsed() >= MISS_RELOAD_INTERVAL * 5, "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn a_lookup_that_loaded_the_app_itself_is_not_reloaded_by_its_miss() {
        let directory = GrowingKeys { calls: Default::default(), keyed_from: usize::MAX };
        let policies = Policies::default();
        let asked = policies.mark();
        policies.get(&directory, "app_1").await.unwrap();
        let policy = policies.refresh_after_miss(&directory, "app_1", asked).await.unwrap().unwrap();
        assert!(policy.key("k3").is_none());
        assert_eq!(
            directory.calls.load(Ordering::SeqCst),
            1,
            "a first load already read the store after the miss"
        );
    }

    #[test]
    fn a_suspended_tenant_refuses_everything_with_its_own_codes() {
        let policy = AppPolicy::from(AppRecord { served: false, ..record() });
        assert_eq!(policy.admit("alice", &credential("k1", 1, None, 200)), Err(Refusal::Suspended));
        assert_eq!(Refusal::Suspended.error_code(), ErrorCode::TenantSuspended);
        assert_eq!(Refusal::Suspended.close_code(), CloseCode::TenantSuspended);
        assert_eq!(Refusal::Revoked.close_code(), CloseCode::Revoked);
    }
}
