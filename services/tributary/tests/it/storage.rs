//! The store's database chosen by URL: `tributary migrate` on PostgreSQL, and a bad URL refused
//! at startup without repeating its password.

use std::process::Command;

fn tributary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
}

#[tokio::test]
async fn tributary_migrate_creates_the_schema_on_postgresql_and_is_idempotent() {
    let url = tributary_testkit::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let output = tributary()
            .args(["migrate", "--data-dir"])
            .arg(dir.path())
            .env("TRIBUTARY_STORAGE__DATABASE_URL", &url)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("migrations applied (Postgres)"), "{stdout}");
    }
    let store = tributary_store::Store::open(&url, &tributary_store::MasterKey::generate()).await.unwrap();
    let tenant = store.create_tenant("Acme").await.unwrap();
    assert_eq!(store.tenant(&tenant.id).await.unwrap(), tenant);
}

#[test]
fn a_database_url_of_no_supported_kind_is_refused_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let output = tributary()
        .args(["config", "check", "--data-dir"])
        .arg(dir.path())
        .env("TRIBUTARY_STORAGE__DATABASE_URL", "mysql://root:hunter2@db/app")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("storage.database_url"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn config_check_prints_database_and_redis_urls_without_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let output = tributary()
        .args(["config", "check", "--data-dir"])
        .arg(dir.path())
        .env("TRIBUTARY_STORAGE__DATABASE_URL", "postgres://app:hunter2@db/app")
        .env("TRIBUTARY_ENGINE__REDIS_URL", "redis://:hunter3@redis:6379")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("postgres://app:***@db/app"), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stdout.contains("hunter3"), "{stdout}");
}

#[tokio::test]
async fn tributary_reencrypt_secrets_moves_every_secret_to_the_new_master_key() {
    use secrecy::ExposeSecret as _;
    let url = tributary_testkit::fresh_postgres_database().await;
    let (old, new) = (tributary_store::MasterKey::generate(), tributary_store::MasterKey::generate());
    let store = tributary_store::Store::open(&url, &old).await.unwrap();
    let tenant = store.create_tenant("Acme").await.unwrap();
    let app = store.create_app(&tenant.id, "prod").await.unwrap();
    let key = store.create_signing_key(&tenant.id, &app.id).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let old_file = dir.path().join("old.key");
    std::fs::write(&old_file, old.to_base64().expose_secret()).unwrap();
    let run = |old_key_file: &std::path::Path| {
        tributary()
            .args(["reencrypt-secrets", "--data-dir"])
            .arg(dir.path())
            .arg("--old-key-file")
            .arg(old_key_file)
            .env("TRIBUTARY_STORAGE__DATABASE_URL", &url)
            .env("TRIBUTARY_MASTER_KEY", new.to_base64().expose_secret())
            .output()
            .unwrap()
    };
    let output = run(&old_file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("1 secrets re-encrypted"), "{stdout}");
    let rotated = tributary_store::Store::open(&url, &new).await.unwrap();
    let read = rotated.signing_key(&app.id, &key.kid).await.unwrap();
    assert_eq!(read.secret.expose_secret(), key.secret.expose_secret());
    assert!(store.signing_key(&app.id, &key.kid).await.is_err(), "the old key reads nothing any more");
    // A wrong old key file is refused with a clear error and changes nothing.
    std::fs::write(&old_file, "not a key").unwrap();
    let output = run(&old_file);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("master key"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(rotated.signing_key(&app.id, &key.kid).await.is_ok());
}
