//! Namespaces: per-app channel options, set, replaced, listed and deleted within one tenant.

use tributary_store::StoreError;

use crate::{TestDb, actor};

#[tokio::test]
async fn namespaces_are_set_replaced_listed_and_deleted_within_their_tenant() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let (other, other_app) = db.tenant_with_app("else").await;
        db.store.set_namespace(&actor(), &tenant.id, &app.id, "chat", r#"{"presence":false}"#).await.unwrap();
        db.store.set_namespace(&actor(), &tenant.id, &app.id, "", r#"{}"#).await.unwrap();
        let replaced = db
            .store
            .set_namespace(&actor(), &tenant.id, &app.id, "chat", r#"{"presence":true}"#)
            .await
            .unwrap();
        let listed = db.store.namespaces(Some(&tenant.id), &app.id).await.unwrap();
        assert_eq!(listed.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["", "chat"]);
        assert_eq!(listed[1], replaced);
        // Another tenant sees nothing and changes nothing.
        assert!(db.store.namespaces(Some(&other.id), &app.id).await.unwrap().is_empty());
        let err = db.store.set_namespace(&actor(), &other.id, &app.id, "chat", "{}").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
        let err = db.store.delete_namespace(&actor(), &other.id, &app.id, "chat").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
        assert!(db.store.namespaces(None, &other_app.id).await.unwrap().is_empty());
        // The data plane's snapshot carries them.
        let snapshot = db.store.app_snapshot(&app.id).await.unwrap().unwrap();
        assert_eq!(snapshot.namespaces.len(), 2);
        db.store.delete_namespace(&actor(), &tenant.id, &app.id, "chat").await.unwrap();
        assert!(matches!(
            db.store.delete_namespace(&actor(), &tenant.id, &app.id, "chat").await,
            Err(StoreError::NotFound(_))
        ));
        let actions: Vec<String> =
            db.store.audit_events(&tenant.id, 10).await.unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(&actions[..4], ["namespace.delete", "namespace.set", "namespace.set", "namespace.set"]);
    }
}
