use secrecy::ExposeSecret as _;
use tributary_store::StoreError;

use crate::TestDb;

#[tokio::test]
async fn created_key_verifies_and_names_its_app() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let new = db.store.create_api_key(&tenant.id, &app.id, "ci").await.unwrap();
        let plaintext = new.plaintext.expose_secret();
        assert!(plaintext.starts_with(&format!("trb_{}_", new.record.id)), "{plaintext}");
        assert!(new.record.id.starts_with("key_"));

        let verified = db.store.verify_api_key(plaintext).await.unwrap();
        assert_eq!(verified, new.record);
        assert_eq!(
            (verified.tenant_id.as_str(), verified.app_id.as_str()),
            (tenant.id.as_str(), app.id.as_str())
        );
    }
}

#[tokio::test]
async fn plaintext_is_not_stored() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let new = db.store.create_api_key(&tenant.id, &app.id, "ci").await.unwrap();
        // The secret may itself contain `_`, so cut after the known `trb_<key_id>_` prefix.
        let prefix = format!("trb_{}_", new.record.id);
        // Then the secret (43 characters) and `_<checksum>` (8 hex digits).
        let rest = new.plaintext.expose_secret().strip_prefix(&prefix).unwrap();
        let secret_part = rest[..43].to_owned();
        assert!(rest[43..].starts_with('_') && rest.len() == 43 + 9, "{rest}");
        let (hash,): (Vec<u8>,) = sqlx::query_as("SELECT key_hash FROM api_keys WHERE id = $1")
            .bind(&new.record.id)
            .fetch_one(&db.raw)
            .await
            .unwrap();
        assert_eq!(hash.len(), 32);
        let dump = String::from_utf8_lossy(&db.stored_bytes().await).into_owned();
        assert!(!dump.contains(&secret_part));
        assert!(!dump.contains(new.plaintext.expose_secret()));
    }
}

#[tokio::test]
async fn tampered_unknown_and_malformed_keys_are_invalid() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let new = db.store.create_api_key(&tenant.id, &app.id, "ci").await.unwrap();
        let good = new.plaintext.expose_secret().to_owned();

        // Change one character in the middle of the secret: well-formed, but the wrong secret.
        let at = good.len() - 10;
        let flipped = if &good[at..=at] == "A" { "B" } else { "A" };
        let tampered = format!("{}{flipped}{}", &good[..at], &good[at + 1..]);
        let other = db.store.create_api_key(&tenant.id, &app.id, "other").await.unwrap();
        let unknown_id = good.replacen(&new.record.id, "key_0000000000000000000000000a", 1);
        let swapped_id = good.replacen(&new.record.id, &other.record.id, 1);
        for bad in [tampered, unknown_id, swapped_id, "trb_nope".into(), String::new(), format!("{good} ")] {
            let err = db.store.verify_api_key(&bad).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidApiKey), "{bad}: {err:?}");
            assert_eq!(err.code(), tributary_protocol::ErrorCode::InvalidApiKey);
        }
        db.store.verify_api_key(&good).await.unwrap();
    }
}

#[tokio::test]
async fn revoked_key_is_invalid_and_revocation_is_scoped() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let new = db.store.create_api_key(&tenant.id, &app.id, "ci").await.unwrap();
        let other = db.store.create_tenant("Other").await.unwrap();

        let err = db.store.revoke_api_key(&other.id, &app.id, &new.record.id).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("api key")), "{err:?}");
        db.store.verify_api_key(new.plaintext.expose_secret()).await.unwrap();

        db.store.revoke_api_key(&tenant.id, &app.id, &new.record.id).await.unwrap();
        let err = db.store.verify_api_key(new.plaintext.expose_secret()).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidApiKey));
        // Revoking again is a no-op rather than an error.
        db.store.revoke_api_key(&tenant.id, &app.id, &new.record.id).await.unwrap();
    }
}

#[tokio::test]
async fn key_for_an_app_of_another_tenant_is_not_created() {
    for db in TestDb::all().await {
        let (_, app) = db.tenant_with_app("prod").await;
        let other = db.store.create_tenant("Other").await.unwrap();
        let err = db.store.create_api_key(&other.id, &app.id, "ci").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
    }
}
