//! Integration tests of `tributary-store`, one binary for the whole crate (STYLE.md E).
//!
//! Each test opens its own store on a fresh temporary SQLite file, and may read or change rows
//! behind the store's back through a second, raw pool on the same file.

mod api_keys;
mod master_key;
mod signing_keys;
mod tenants;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use tributary_store::{App, MasterKey, Store, Tenant};

/// A store on its own temporary database.
pub struct TestDb {
    /// Keeps the directory (and so the database) alive for the test.
    pub dir: tempfile::TempDir,
    /// The store under test.
    pub store: Store,
    /// A pool on the same file, for looking at and tampering with raw rows.
    pub raw: SqlitePool,
}

impl TestDb {
    /// Opens a store with a new master key on a new database.
    pub async fn sqlite() -> TestDb {
        TestDb::sqlite_with_key(&MasterKey::generate()).await
    }

    /// Opens a store with the given master key on a new database.
    pub async fn sqlite_with_key(key: &MasterKey) -> TestDb {
        let dir = tempfile::tempdir().expect("the temp dir is writable");
        let path = dir.path().join("store.db");
        let store = Store::open_sqlite(&path, key).await.expect("a fresh database opens");
        let raw = SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path))
            .await
            .expect("the raw pool opens the same file");
        TestDb { dir, store, raw }
    }

    /// Returns the path of the database file.
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("store.db")
    }

    /// Returns the bytes of every file of the database (main file, WAL and shared memory).
    pub fn files_on_disk(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).expect("the temp dir is readable") {
            bytes.extend(std::fs::read(entry.expect("entry").path()).expect("database files are readable"));
        }
        bytes
    }

    /// Creates a tenant with one app.
    pub async fn tenant_with_app(&self, app_name: &str) -> (Tenant, App) {
        let tenant = self.store.create_tenant("Acme").await.expect("tenant is created");
        let app = self.store.create_app(&tenant.id, app_name).await.expect("app is created");
        (tenant, app)
    }
}
