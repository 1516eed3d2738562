use secrecy::ExposeSecret as _;
use tributary_store::{MasterKey, Store, StoreError};

use crate::TestDb;

async fn raw_ciphertext(db: &TestDb, kid: &str) -> Vec<u8> {
    let (blob,): (Vec<u8>,) = sqlx::query_as("SELECT secret_ciphertext FROM signing_keys WHERE kid = $1")
        .bind(kid)
        .fetch_one(&db.raw)
        .await
        .expect("the key row exists");
    blob
}

#[tokio::test]
async fn signing_key_is_encrypted_at_rest_and_decrypts_back() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let created = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        assert!(created.kid.starts_with("sk_"));
        assert_eq!(created.alg, "HS256");
        let secret = created.secret.expose_secret().to_vec();
        assert_eq!(secret.len(), 32);

        let stored = raw_ciphertext(&db, &created.kid).await;
        assert_ne!(stored, secret);
        assert!(!stored.windows(secret.len()).any(|window| window == secret.as_slice()));
        let file = db.stored_bytes().await;
        assert!(!file.windows(secret.len()).any(|window| window == secret.as_slice()));

        let read = db.store.signing_key(&app.id, &created.kid).await.unwrap();
        assert_eq!(read.secret.expose_secret(), secret.as_slice());
        assert_eq!((read.kid, read.created_at), (created.kid, created.created_at));
    }
}

#[tokio::test]
async fn ciphertext_copied_to_another_row_fails_to_decrypt() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let first = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        let second = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        sqlx::query("UPDATE signing_keys SET secret_ciphertext = $1 WHERE kid = $2")
            .bind(raw_ciphertext(&db, &first.kid).await)
            .bind(&second.kid)
            .execute(&db.raw)
            .await
            .unwrap();
        let err = db.store.signing_key(&app.id, &second.kid).await.unwrap_err();
        assert!(matches!(err, StoreError::Decrypt), "{err:?}");
        db.store.signing_key(&app.id, &first.kid).await.unwrap();
    }
}

#[tokio::test]
async fn key_of_one_app_is_not_found_through_another() {
    for db in TestDb::all().await {
        let (tenant, app_a) = db.tenant_with_app("prod").await;
        let app_b = db.store.create_app(&tenant.id, "staging").await.unwrap();
        let key_a = db.store.create_signing_key(&tenant.id, &app_a.id).await.unwrap();
        let err = db.store.signing_key(&app_b.id, &key_a.kid).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("signing key")), "{err:?}");
        assert!(db.store.signing_keys(&app_b.id).await.unwrap().is_empty());

        let other = db.store.create_tenant("Other").await.unwrap();
        let err = db.store.create_signing_key(&other.id, &app_a.id).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
    }
}

#[tokio::test]
async fn active_keys_are_listed_newest_first_without_revoked_ones() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let mut kids = Vec::new();
        for _ in 0..3 {
            kids.push(db.store.create_signing_key(&tenant.id, &app.id).await.unwrap().kid);
        }
        sqlx::query("UPDATE signing_keys SET revoked_at = 1 WHERE kid = $1")
            .bind(&kids[1])
            .execute(&db.raw)
            .await
            .unwrap();

        let listed: Vec<String> =
            db.store.signing_keys(&app.id).await.unwrap().into_iter().map(|k| k.kid).collect();
        assert_eq!(listed, vec![kids[2].clone(), kids[0].clone()]);
        assert!(matches!(db.store.signing_key(&app.id, &kids[1]).await, Err(StoreError::NotFound(_))));
    }
}

#[tokio::test]
async fn wrong_master_key_cannot_read_signing_keys() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let key = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        let wrong = Store::open(&db.url, &MasterKey::generate()).await.unwrap();
        let err = wrong.signing_key(&app.id, &key.kid).await.unwrap_err();
        assert!(matches!(err, StoreError::Decrypt), "{err:?}");
        assert_eq!(err.code(), tributary_protocol::ErrorCode::Internal);
        assert!(matches!(wrong.signing_keys(&app.id).await, Err(StoreError::Decrypt)));
    }
}

#[tokio::test]
async fn a_master_key_rotation_reencrypts_every_secret_and_can_be_run_again() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let (other_tenant, other_app) = db.tenant_with_app("other").await;
        let first = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        let second = db.store.create_signing_key(&other_tenant.id, &other_app.id).await.unwrap();
        let before = raw_ciphertext(&db, &first.kid).await;

        let new_key = MasterKey::generate();
        let rotated = Store::open(&db.url, &new_key).await.unwrap();
        assert!(
            matches!(rotated.signing_key(&app.id, &first.kid).await, Err(StoreError::Decrypt)),
            "not yet"
        );
        let old_key = db.master_key();
        assert_eq!(rotated.reencrypt_secrets(&old_key).await.unwrap(), 2);
        for (app_id, key) in [(&app.id, &first), (&other_app.id, &second)] {
            let read = rotated.signing_key(app_id, &key.kid).await.unwrap();
            assert_eq!(read.secret.expose_secret(), key.secret.expose_secret());
        }
        assert_ne!(raw_ciphertext(&db, &first.kid).await, before);
        assert!(
            matches!(db.store.signing_key(&app.id, &first.kid).await, Err(StoreError::Decrypt)),
            "the old key no longer reads"
        );
        // Run again (an interrupted procedure retried): nothing is lost.
        assert_eq!(rotated.reencrypt_secrets(&old_key).await.unwrap(), 2);
        assert!(rotated.signing_key(&app.id, &first.kid).await.is_ok());
        // A key that opens nothing changes nothing.
        let err = rotated.reencrypt_secrets(&MasterKey::generate()).await;
        assert!(err.is_ok(), "secrets already under the store's own key are rewritten, not refused");
        let stranger = Store::open(&db.url, &MasterKey::generate()).await.unwrap();
        assert!(matches!(stranger.reencrypt_secrets(&MasterKey::generate()).await, Err(StoreError::Decrypt)));
        assert!(rotated.signing_key(&app.id, &first.kid).await.is_ok(), "nothing half-written");
    }
}

#[tokio::test]
async fn forged_ids_are_not_found_on_every_backend() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        // A token's claims are the client's to write: NUL bytes, SQL, anything.
        for forged in ["\u{0}", "app_\u{0}", "' OR 1=1 --", &"x".repeat(10_000)] {
            let err = db.store.signing_key(forged, "sk_x").await.unwrap_err();
            assert!(matches!(err, StoreError::NotFound(_)), "{:?}: {err:?}", db.store.backend());
            let err = db.store.signing_key(&app.id, forged).await.unwrap_err();
            assert!(matches!(err, StoreError::NotFound(_)), "{:?}: {err:?}", db.store.backend());
            assert!(matches!(db.store.app_by_id(forged).await, Err(StoreError::NotFound(_))));
            assert!(matches!(db.store.tenant(forged).await, Err(StoreError::NotFound(_))));
            assert!(db.store.signing_keys(forged).await.unwrap().is_empty());
        }
        assert_eq!(db.store.signing_keys(&app.id).await.unwrap().len(), 1, "nothing else was harmed");
    }
}
