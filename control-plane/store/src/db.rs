//! The database behind the store, chosen by URL: `sqlite://path` (the embedded default) or
//! `postgres://…` (production). Everything backend-specific lives here: the pool, connection
//! set-up and the embedded migrations of each backend (`migrations/sqlite`,
//! `migrations/postgres`).
//!
//! The repository modules write portable SQL (`$1` placeholders, which both backends accept,
//! unix seconds as 64-bit integers, bytes as `BLOB`/`BYTEA`) through sqlx's `Any` driver, so one
//! implementation of every query serves both.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use futures::FutureExt as _;
use sqlx::AnyConnection;
use sqlx::SqlSafeStr as _;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::{MasterKey, SecretCipher, Store, StoreError};

/// The connection pool the store holds.
pub(crate) type DbPool = sqlx::AnyPool;
/// A row returned by the database.
pub(crate) type DbRow = sqlx::any::AnyRow;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file (`sqlite://path`).
    Sqlite,
    /// A PostgreSQL database (`postgres://…` or `postgresql://…`).
    Postgres,
}

impl Backend {
    /// Reads the backend from a database URL.
    pub fn of(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::InvalidDatabaseUrl)
        }
    }
}

/// The migration files of each backend, in order. They are embedded with `include_str!` rather
/// than `sqlx::migrate!`, because that macro needs sqlx's `macros` feature (a proc-macro build we
/// do not otherwise need). A new migration must be added to both lists; the test
/// `every_migration_file_is_embedded` fails until it is.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "tenants", include_str!("../../../migrations/sqlite/0001_tenants.sql")),
    (2, "control_plane", include_str!("../../../migrations/sqlite/0002_control_plane.sql")),
    (3, "plans_and_usage", include_str!("../../../migrations/sqlite/0003_plans_and_usage.sql")),
    (
        4,
        "api_key_rotation_and_capabilities",
        include_str!("../../../migrations/sqlite/0004_api_key_rotation_and_capabilities.sql"),
    ),
    (5, "namespaces", include_str!("../../../migrations/sqlite/0005_namespaces.sql")),
    (6, "users", include_str!("../../../migrations/sqlite/0006_users.sql")),
    (7, "delivery_queue", include_str!("../../../migrations/sqlite/0007_delivery_queue.sql")),
    (8, "rules_and_feeds", include_str!("../../../migrations/sqlite/0008_rules_and_feeds.sql")),
    (9, "delivery_quota", include_str!("../../../migrations/sqlite/0009_delivery_quota.sql")),
    (10, "delivery_bodies", include_str!("../../../migrations/sqlite/0010_delivery_bodies.sql")),
    (11, "push", include_str!("../../../migrations/sqlite/0011_push.sql")),
    (12, "push_usage", include_str!("../../../migrations/sqlite/0012_push_usage.sql")),
    (13, "push_reach", include_str!("../../../migrations/sqlite/0013_push_reach.sql")),
    (14, "sms", include_str!("../../../migrations/sqlite/0014_sms.sql")),
    (15, "rule_targets", include_str!("../../../migrations/sqlite/0015_rule_targets.sql")),
    (16, "audit_log", include_str!("../../../migrations/sqlite/0016_audit_log.sql")),
    (17, "exchanges", include_str!("../../../migrations/sqlite/0017_exchanges.sql")),
    (18, "billing", include_str!("../../../migrations/sqlite/0018_billing.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "tenants", include_str!("../../../migrations/postgres/0001_tenants.sql")),
    (2, "control_plane", include_str!("../../../migrations/postgres/0002_control_plane.sql")),
    (3, "plans_and_usage", include_str!("../../../migrations/postgres/0003_plans_and_usage.sql")),
    (
        4,
        "api_key_rotation_and_capabilities",
        include_str!("../../../migrations/postgres/0004_api_key_rotation_and_capabilities.sql"),
    ),
    (5, "namespaces", include_str!("../../../migrations/postgres/0005_namespaces.sql")),
    (6, "users", include_str!("../../../migrations/postgres/0006_users.sql")),
    (7, "delivery_queue", include_str!("../../../migrations/postgres/0007_delivery_queue.sql")),
    (8, "rules_and_feeds", include_str!("../../../migrations/postgres/0008_rules_and_feeds.sql")),
    (9, "delivery_quota", include_str!("../../../migrations/postgres/0009_delivery_quota.sql")),
    (10, "delivery_bodies", include_str!("../../../migrations/postgres/0010_delivery_bodies.sql")),
    (11, "push", include_str!("../../../migrations/postgres/0011_push.sql")),
    (12, "push_usage", include_str!("../../../migrations/postgres/0012_push_usage.sql")),
    (13, "push_reach", include_str!("../../../migrations/postgres/0013_push_reach.sql")),
    (14, "sms", include_str!("../../../migrations/postgres/0014_sms.sql")),
    (15, "rule_targets", include_str!("../../../migrations/postgres/0015_rule_targets.sql")),
    (16, "audit_log", include_str!("../../../migrations/postgres/0016_audit_log.sql")),
    (17, "exchanges", include_str!("../../../migrations/postgres/0017_exchanges.sql")),
    (18, "billing", include_str!("../../../migrations/postgres/0018_billing.sql")),
];

/// How long a query waits for a connection before failing. Short, so that while the database
/// is unreachable requests fail fast (the data plane serves from its cache) instead of hanging
/// for sqlx's default 30 seconds.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Returns the migrator of a backend's embedded migrations.
fn migrator(backend: Backend) -> Migrator {
    migrator_up_to(backend, i64::MAX)
}

/// Returns the migrator of a backend's embedded migrations up to version `last` (a test of a
/// migration starts from the schema before it).
fn migrator_up_to(backend: Backend, last: i64) -> Migrator {
    let files = match backend {
        Backend::Sqlite => SQLITE_MIGRATIONS,
        Backend::Postgres => POSTGRES_MIGRATIONS,
    };
    let migrations = files
        .iter()
        .filter(|(version, _, _)| *version <= last)
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// Sets up each new SQLite connection: WAL journaling, so readers do not block the single
/// writer; `synchronous = NORMAL`, so a commit is written to the WAL without waiting for the disk
/// (what is committed survives any process being killed, though not the machine losing power:
/// the embedded store's trade-off, the delivery queue's commits being many and small); reads
/// through a memory map of up to 256 MiB and a 32 MiB page cache;
/// and foreign keys on, which the tenant scoping of keys relies on (on by default in sqlx, but
/// not relied upon).
fn sqlite_setup(conn: &mut AnyConnection) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    async move {
        if conn.backend_name() == "SQLite" {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
            sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
            // Pages read through a memory map and a larger cache, not a read call each.
            sqlx::query("PRAGMA mmap_size = 268435456").execute(&mut *conn).await?;
            sqlx::query("PRAGMA cache_size = -32768").execute(&mut *conn).await?;
            // Checkpoints (copying the WAL back into the file, in the committing statement)
            // every 16 MiB of WAL rather than every 4 MiB: fewer, larger ones.
            sqlx::query("PRAGMA wal_autocheckpoint = 4000").execute(&mut *conn).await?;
            sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
        }
        Ok(())
    }
    .boxed()
}

/// Creates the (empty) database at `url`: a PostgreSQL database or an SQLite file. For tests
/// and first installs; [`Store::open`] then creates the tables.
pub async fn create_database(url: &str) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateDatabase as _;
    Backend::of(url)?;
    sqlx::any::install_default_drivers();
    sqlx::Any::create_database(url).await?;
    Ok(())
}

impl Store {
    /// Opens the database at `url` (`sqlite://path`, created if missing, or `postgres://…`)
    /// and runs its pending migrations.
    ///
    /// `master_key` encrypts and decrypts the tenant secrets; opening with another key than the
    /// one the secrets were written with succeeds, but reading those secrets returns
    /// [`StoreError::Decrypt`].
    pub async fn open(url: &str, master_key: &MasterKey) -> Result<Store, StoreError> {
        let backend = Backend::of(url)?;
        sqlx::any::install_default_drivers();
        let has_mode =
            url.split_once('?').is_some_and(|(_, query)| query.split('&').any(|p| p.starts_with("mode=")));
        let url = match backend {
            // `mode=rwc` creates the file when it is missing.
            Backend::Sqlite if !has_mode => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_owned(),
        };
        // SQLite has one writer at a time, and a connection that finds the database locked
        // sleeps and polls (its busy handler), which under the delivery queue's many small
        // writes costs tens of milliseconds each time: one connection queues every statement
        // in order instead, without sleeping.
        let connections = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => 10,
        };
        let pool: DbPool = AnyPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| sqlite_setup(conn))
            .connect(&url)
            .await
            .map_err(StoreError::from)?;
        migrator(backend).run(&pool).await?;
        tracing::debug!(?backend, "store opened");
        Ok(Store { pool, backend, cipher: Arc::new(SecretCipher::new(master_key)) })
    }

    /// Opens (creating it if missing) the SQLite database at `path`, relative to the working
    /// directory unless absolute.
    pub async fn open_sqlite(path: &Path, master_key: &MasterKey) -> Result<Store, StoreError> {
        use sqlx::ConnectOptions as _;
        // Built by sqlx, which percent-encodes what a URL cannot hold (spaces, `?`, `#`), from
        // the absolute path with its `..` resolved, so that no part of it is read as a URL host
        // or collapsed. sqlx leaves `%` as it is and decodes it when parsing: it is encoded here.
        let path = std::path::absolute(path).map_err(|_| StoreError::InvalidDatabaseUrl)?;
        let path = match (path.parent().map(std::fs::canonicalize), path.file_name()) {
            (Some(Ok(parent)), Some(file)) => parent.join(file),
            _ => path,
        };
        let path = match path.to_str() {
            Some(text) => std::path::PathBuf::from(text.replace('%', "%25")),
            None => path,
        };
        let url =
            sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true).to_url_lossy();
        Store::open(url.as_str(), master_key).await
    }

    /// Returns which database the store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &str) -> Vec<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations").join(dir);
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        files
    }

    fn embedded(list: &[(i64, &str, &str)]) -> Vec<String> {
        list.iter().map(|(version, name, _)| format!("{version:04}_{name}.sql")).collect()
    }

    #[test]
    fn every_migration_file_is_embedded() {
        assert_eq!(files("sqlite"), embedded(SQLITE_MIGRATIONS));
        assert_eq!(files("postgres"), embedded(POSTGRES_MIGRATIONS));
        assert_eq!(files("sqlite"), files("postgres"), "both backends have the same migrations");
    }

    #[tokio::test]
    async fn sqlite_paths_that_are_not_url_friendly_open() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["with space", "what?#x", "per%41cent", "a:b@c"] {
            let path = dir.path().join(name).join("..").join(name);
            std::fs::create_dir_all(&path).unwrap();
            let store = Store::open_sqlite(&path.join("t.db"), &MasterKey::generate())
                .await
                .map_err(|e| format!("{name}: {e:?}"))
                .unwrap();
            store.create_tenant("Acme").await.unwrap();
            assert!(dir.path().join(name).join("t.db").exists(), "{name}");
        }
    }

    #[tokio::test]
    async fn the_bodies_of_jobs_queued_before_they_had_a_table_move_there() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        sqlx::any::install_default_drivers();
        let key = MasterKey::generate();
        let pool: DbPool = AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        migrator_up_to(Backend::Sqlite, 9).run(&pool).await.unwrap();
        let old = Store { pool, backend: Backend::Sqlite, cipher: Arc::new(SecretCipher::new(&key)) };
        let tenant = old.create_tenant("Acme").await.unwrap();
        let app = old.create_app(&tenant.id, "shop").await.unwrap();
        sqlx::query(
            "INSERT INTO delivery_jobs (id, tenant_id, app_id, target_id, event_id, payload, headers, state, \
             attempts, tries, next_attempt_ms, created_ms, events) \
             VALUES ('dlv_old', $1, $2, 'whk_1', 'evt_1', $3, '{\"x-a\":\"1\"}', 'pending', 0, 0, 0, 0, 1)",
        )
        .bind(&tenant.id)
        .bind(&app.id)
        .bind(&b"{\"a\":1}"[..])
        .execute(&old.pool)
        .await
        .unwrap();
        old.pool.close().await;

        let store = Store::open(&url, &key).await.unwrap();
        let job = store.delivery(&tenant.id, "dlv_old").await.unwrap();
        assert_eq!((job.payload.as_slice(), job.headers.as_str()), (&b"{\"a\":1}"[..], "{\"x-a\":\"1\"}"));
        let claimed = store.claim_deliveries("w1", 1, 10_000, 10, 10, "").await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].payload, b"{\"a\":1}");
    }

    #[test]
    fn the_backend_is_read_from_the_url() {
        assert_eq!(Backend::of("sqlite:///tmp/x.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of("postgres://u@h/db").unwrap(), Backend::Postgres);
        assert_eq!(Backend::of("postgresql://h/db").unwrap(), Backend::Postgres);
        assert!(matches!(Backend::of("mysql://h/db"), Err(StoreError::InvalidDatabaseUrl)));
    }
}
