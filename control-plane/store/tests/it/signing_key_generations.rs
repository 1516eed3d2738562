//! Signing key generations and revocation through the store, and their tenant and app scoping.

use secrecy::ExposeSecret as _;
use tributary_store::StoreError;

use crate::{TestDb, actor};

/// Returns the raw generation and revocation time of a key, read behind the store's back.
async fn raw_state(db: &TestDb, kid: &str) -> (i64, Option<i64>) {
    sqlx::query_as("SELECT generation, revoked_at FROM signing_keys WHERE kid = $1")
        .bind(kid)
        .fetch_one(&db.raw)
        .await
        .expect("the key row exists")
}

#[tokio::test]
async fn bumping_the_generation_counts_up_from_one_and_is_read_back() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let key = db.store.create_signing_key_as(&actor(), &tenant.id, &app.id).await.unwrap();
        let untouched = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        assert_eq!(key.generation, 1);
        assert_eq!(db.store.signing_key(&app.id, &key.kid).await.unwrap().generation, 1);

        for expected in [2, 3] {
            let generation =
                db.store.bump_signing_key_generation(&actor(), &tenant.id, &app.id, &key.kid).await.unwrap();
            assert_eq!(generation, expected);
            let read = db.store.signing_key(&app.id, &key.kid).await.unwrap();
            assert_eq!(read.generation, expected);
            // The secret stays the same: only tokens of the old generation are refused.
            assert_eq!(read.secret.expose_secret(), key.secret.expose_secret());
        }
        let listed: Vec<(String, i64)> = db
            .store
            .signing_keys(&app.id)
            .await
            .unwrap()
            .into_iter()
            .map(|record| (record.kid, record.generation))
            .collect();
        assert_eq!(listed, [(untouched.kid.clone(), 1), (key.kid.clone(), 3)]);
    }
}

#[tokio::test]
async fn a_key_is_not_bumped_or_revoked_through_another_tenant_or_app() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let sibling = db.store.create_app(&tenant.id, "staging").await.unwrap();
        let (other_tenant, other_app) = db.tenant_with_app("prod").await;
        let key = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        let events = db.audit_event_count().await;

        let wrong_scopes = [
            (other_tenant.id.as_str(), app.id.as_str()),
            (other_tenant.id.as_str(), other_app.id.as_str()),
            (tenant.id.as_str(), sibling.id.as_str()),
            (tenant.id.as_str(), "app_'; DROP TABLE signing_keys;--"),
            ("ten_\u{0}", app.id.as_str()),
        ];
        for (tenant_id, app_id) in wrong_scopes {
            let err = db
                .store
                .bump_signing_key_generation(&actor(), tenant_id, app_id, &key.kid)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::NotFound("signing key")), "{tenant_id:?} {app_id:?}: {err:?}");
            let err = db.store.revoke_signing_key(&actor(), tenant_id, app_id, &key.kid).await.unwrap_err();
            assert!(matches!(err, StoreError::NotFound("signing key")), "{tenant_id:?} {app_id:?}: {err:?}");
        }
        for kid in ["sk_0000000000000000000000000a", "sk_\u{0}", "' OR 1=1 --"] {
            let err =
                db.store.bump_signing_key_generation(&actor(), &tenant.id, &app.id, kid).await.unwrap_err();
            assert!(matches!(err, StoreError::NotFound("signing key")), "{kid:?}: {err:?}");
            let err = db.store.revoke_signing_key(&actor(), &tenant.id, &app.id, kid).await.unwrap_err();
            assert!(matches!(err, StoreError::NotFound("signing key")), "{kid:?}: {err:?}");
        }

        assert_eq!(raw_state(&db, &key.kid).await, (1, None), "nothing changed");
        assert_eq!(db.store.signing_key(&app.id, &key.kid).await.unwrap().generation, 1);
        assert_eq!(db.audit_event_count().await, events, "a failed write is not audited");
    }
}

#[tokio::test]
async fn a_revoked_key_is_gone_and_cannot_be_revoked_or_bumped_again() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let kept = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        let key = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        db.store.revoke_signing_key(&actor(), &tenant.id, &app.id, &key.kid).await.unwrap();

        let err = db.store.signing_key(&app.id, &key.kid).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("signing key")), "{err:?}");
        let listed: Vec<String> =
            db.store.signing_keys(&app.id).await.unwrap().into_iter().map(|k| k.kid).collect();
        assert_eq!(listed, std::slice::from_ref(&kept.kid));
        let (generation, revoked_at) = raw_state(&db, &key.kid).await;
        assert_eq!(generation, 1);
        assert!(revoked_at.is_some_and(|at| at >= key.created_at), "{revoked_at:?}");

        let events = db.audit_event_count().await;
        let err = db.store.revoke_signing_key(&actor(), &tenant.id, &app.id, &key.kid).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("signing key")), "{err:?}");
        let err =
            db.store.bump_signing_key_generation(&actor(), &tenant.id, &app.id, &key.kid).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("signing key")), "{err:?}");
        assert_eq!(raw_state(&db, &key.kid).await, (generation, revoked_at), "the first revocation is kept");
        assert_eq!(db.audit_event_count().await, events);
        db.store.signing_key(&app.id, &kept.kid).await.unwrap();
    }
}
