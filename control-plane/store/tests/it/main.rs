//! Integration tests of `tributary-store`, one binary for the whole crate (STYLE.md E).
//!
//! Every test runs against both backends: SQLite in a temporary file, and PostgreSQL
//! (`TRIBUTARY_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`) in a
//! fresh database of its own. A test may read or change rows behind the store's back through a
//! second, raw pool on the same database.

mod api_keys;
mod app_snapshot;
mod audit;
mod audit_log;
mod billing;
mod delivery;
mod exchanges;
mod grants;
mod management_tokens;
mod master_key;
mod namespaces;
mod push_credentials;
mod push_devices;
mod revocations;
mod rules;
mod signing_key_generations;
mod signing_keys;
mod sms;
mod tenant_status;
mod tenants;
mod usage;
mod users;
mod webhooks;

use sqlx::AnyPool;
use tributary_store::{Actor, App, Backend, MasterKey, Store, Tenant};

/// The actor of every audited write the tests make.
pub fn actor() -> Actor {
    Actor { actor: "user:test".into(), request_id: "req-1".into() }
}

/// The current time in unix seconds, as the store reads it.
pub fn unix_now() -> i64 {
    let elapsed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
    i64::try_from(elapsed.as_secs()).expect("fits in an i64")
}

/// A store on its own fresh database.
pub struct TestDb {
    /// Keeps the directory of an SQLite database alive for the test.
    dir: Option<tempfile::TempDir>,
    /// The master key the store was opened with, as base64.
    key: secrecy::SecretString,
    /// The database URL (to open it again).
    pub url: String,
    /// The store under test.
    pub store: Store,
    /// A pool on the same database, for looking at and tampering with raw rows.
    pub raw: AnyPool,
}

/// The PostgreSQL server the tests create their databases on.
fn postgres_url() -> String {
    std::env::var("TRIBUTARY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl TestDb {
    /// One store per backend, each with a new master key on a new database.
    pub async fn all() -> Vec<TestDb> {
        TestDb::all_with_key(&MasterKey::generate()).await
    }

    /// One store per backend with the given master key, each on a new database.
    pub async fn all_with_key(key: &MasterKey) -> Vec<TestDb> {
        vec![TestDb::sqlite(key).await, TestDb::postgres(key).await]
    }

    async fn sqlite(key: &MasterKey) -> TestDb {
        let dir = tempfile::tempdir().expect("the temp dir is writable");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        TestDb::open(url, key, Some(dir)).await
    }

    async fn postgres(key: &MasterKey) -> TestDb {
        let server = postgres_url();
        let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base);
        let url = format!("{base}/trbtest_{}", uuid::Uuid::new_v4().simple());
        tributary_store::create_database(&url)
            .await
            .expect("PostgreSQL answers on 127.0.0.1:5432 (scripts/test starts it)");
        TestDb::open(url, key, None).await
    }

    async fn open(url: String, key: &MasterKey, dir: Option<tempfile::TempDir>) -> TestDb {
        let store = Store::open(&url, key).await.expect("a fresh database opens");
        let raw = AnyPool::connect(&url).await.expect("the raw pool opens the same database");
        TestDb { dir, key: key.to_base64(), url, store, raw }
    }

    /// Returns the master key the store was opened with.
    pub fn master_key(&self) -> MasterKey {
        use secrecy::ExposeSecret as _;
        MasterKey::from_base64(self.key.expose_secret()).expect("a key this test made")
    }

    /// Returns everything the database holds, as bytes: the files of an SQLite database (main
    /// file, WAL and shared memory), the raw values of every stored column in PostgreSQL.
    pub async fn stored_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        match self.store.backend() {
            Backend::Sqlite => {
                let dir = self.dir.as_ref().expect("an SQLite database has a directory");
                for entry in std::fs::read_dir(dir.path()).expect("the temp dir is readable") {
                    bytes.extend(
                        std::fs::read(entry.expect("entry").path()).expect("database files are readable"),
                    );
                }
            }
            Backend::Postgres => {
                let queries = [
                    "SELECT id || name, key_hash FROM api_keys",
                    "SELECT kid || alg, secret_ciphertext FROM signing_keys",
                    "SELECT id || name, token_hash FROM management_tokens",
                ];
                for query in queries {
                    let rows: Vec<(String, Vec<u8>)> =
                        sqlx::query_as(query).fetch_all(&self.raw).await.expect("the rows are readable");
                    for (text, blob) in rows {
                        bytes.extend(text.into_bytes());
                        bytes.extend(blob);
                    }
                }
            }
        }
        bytes
    }

    /// Returns the number of rows a `SELECT COUNT(*) …` query counts, read through the raw pool.
    pub async fn count(&self, query: &'static str) -> i64 {
        let (count,): (i64,) =
            sqlx::query_as(query).fetch_one(&self.raw).await.expect("the count is readable");
        count
    }

    /// Returns the number of audit events of every tenant (and of none).
    pub async fn audit_event_count(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM audit_events").await
    }

    /// Creates a tenant with one app.
    pub async fn tenant_with_app(&self, app_name: &str) -> (Tenant, App) {
        let tenant = self.store.create_tenant("Acme").await.expect("tenant is created");
        let app = self.store.create_app(&tenant.id, app_name).await.expect("app is created");
        (tenant, app)
    }
}
