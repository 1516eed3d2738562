use tributary_store::StoreError;

use crate::TestDb;

#[tokio::test]
async fn tenant_and_app_round_trip() {
    for db in TestDb::all().await {
        let tenant = db.store.create_tenant("Acme").await.unwrap();
        assert!(tenant.id.starts_with("ten_"));
        assert_eq!(db.store.tenant(&tenant.id).await.unwrap(), tenant);

        let prod = db.store.create_app(&tenant.id, "prod").await.unwrap();
        let staging = db.store.create_app(&tenant.id, "staging").await.unwrap();
        assert!(prod.id.starts_with("app_"));
        assert_eq!(db.store.app(&tenant.id, &prod.id).await.unwrap(), prod);
        assert_eq!(db.store.app_by_id(&staging.id).await.unwrap(), staging);
        assert_eq!(db.store.apps(&tenant.id).await.unwrap(), vec![prod, staging]);
    }
}

#[tokio::test]
async fn missing_tenant_is_not_found() {
    for db in TestDb::all().await {
        assert!(matches!(db.store.tenant("ten_missing").await, Err(StoreError::NotFound("tenant"))));
        assert!(matches!(
            db.store.create_app("ten_missing", "prod").await,
            Err(StoreError::NotFound("tenant"))
        ));
    }
}

#[tokio::test]
async fn duplicate_app_name_in_a_tenant_already_exists() {
    for db in TestDb::all().await {
        let (tenant, _) = db.tenant_with_app("prod").await;
        let err = db.store.create_app(&tenant.id, "prod").await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists("app")), "{err:?}");
        assert_eq!(err.code(), tributary_protocol::ErrorCode::AlreadyExists);

        // The same name in another tenant is fine.
        let other = db.store.create_tenant("Other").await.unwrap();
        db.store.create_app(&other.id, "prod").await.unwrap();
    }
}

#[tokio::test]
async fn an_app_is_only_visible_in_its_own_tenant() {
    for db in TestDb::all().await {
        let (_, app) = db.tenant_with_app("prod").await;
        let other = db.store.create_tenant("Other").await.unwrap();
        assert!(matches!(db.store.app(&other.id, &app.id).await, Err(StoreError::NotFound("app"))));
        assert!(db.store.apps(&other.id).await.unwrap().is_empty());
        assert!(matches!(db.store.app_by_id("app_missing").await, Err(StoreError::NotFound("app"))));
    }
}

#[tokio::test]
async fn reopening_a_database_keeps_its_data_and_reruns_no_migration() {
    let key = tributary_store::MasterKey::generate();
    for db in TestDb::all_with_key(&key).await {
        let (tenant, _) = db.tenant_with_app("prod").await;
        let again = tributary_store::Store::open(&db.url, &key).await.unwrap();
        assert_eq!(again.tenant(&tenant.id).await.unwrap(), tenant);
    }
}
