//! Everything specific to SQLite: connection options, the pool type and the embedded migrations.
//!
//! The repository modules write portable SQL (`$1` placeholders, which sqlx accepts for SQLite
//! too, `INTEGER` unix seconds, `BLOB`/`BYTEA` bytes) against the aliases below, so the
//! PostgreSQL backend only needs its own version of this module and of `migrations/postgres`.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::{MasterKey, SecretCipher, Store, StoreError};

/// The database the store runs on.
pub(crate) type Db = sqlx::Sqlite;
/// The connection pool the store holds.
pub(crate) type DbPool = sqlx::Pool<Db>;
/// A row returned by the database.
pub(crate) type DbRow = <Db as sqlx::Database>::Row;

/// The files of `migrations/sqlite`, in order. They are embedded with `include_str!` rather than
/// `sqlx::migrate!`, because that macro needs sqlx's `macros` feature (a proc-macro build we do
/// not otherwise need). A new migration file must be added here too; the test
/// `every_migration_file_is_embedded` fails until it is.
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "tenants", include_str!("../../../migrations/sqlite/0001_tenants.sql"))];

/// Returns the migrator for the embedded SQLite migrations.
fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
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

impl Store {
    /// Opens (creating it if missing) the SQLite database at `path` and runs pending migrations.
    ///
    /// The database uses WAL journaling, so readers do not block the single writer, and has
    /// foreign keys turned on, which the tenant scoping of keys relies on. `master_key` encrypts
    /// and decrypts the tenant secrets; opening with another key than the one the secrets were
    /// written with succeeds, but reading those secrets returns [`StoreError::Decrypt`].
    pub async fn open_sqlite(path: &Path, master_key: &MasterKey) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // On by default in sqlx, but the composite foreign keys are what stop a key being
            // filed under another tenant's app, so we do not rely on the default.
            .foreign_keys(true);
        let pool: DbPool = SqlitePoolOptions::new().connect_with(options).await?;
        migrator().run(&pool).await?;
        tracing::debug!(path = %path.display(), "sqlite store opened");
        Ok(Store { pool, cipher: Arc::new(SecretCipher::new(master_key)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/sqlite");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> =
            MIGRATIONS.iter().map(|(version, name, _)| format!("{version:04}_{name}.sql")).collect();
        assert_eq!(files, embedded);
    }
}
