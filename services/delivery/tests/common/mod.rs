//! What the delivery tests share: a store on each backend.

use tributary_store::{MasterKey, Store};

/// A store on a fresh SQLite file, and one on a fresh PostgreSQL database.
pub async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let key = MasterKey::generate();
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    let sqlite = Store::open(&url, &key).await.expect("a fresh SQLite store");
    let server = std::env::var("TRIBUTARY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base);
    let url = format!("{base}/trbtest_{}", uuid::Uuid::new_v4().simple());
    tributary_store::create_database(&url).await.expect("PostgreSQL answers (scripts/test starts it)");
    let postgres = Store::open(&url, &key).await.expect("a fresh PostgreSQL store");
    vec![(sqlite, Some(dir)), (postgres, None)]
}
