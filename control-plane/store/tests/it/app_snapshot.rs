//! The app snapshot: everything the data plane reads to admit an app's tokens, in one call.

use secrecy::ExposeSecret as _;
use tributary_store::{Revoked, TenantStatus, new_token_id};

use crate::{TestDb, actor};

#[tokio::test]
async fn snapshot_holds_the_app_its_tenant_its_keys_and_its_revocations() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let sibling = db.store.create_app(&tenant.id, "staging").await.unwrap();
        let oldest = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        let revoked = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        let newest = db.store.create_signing_key(&tenant.id, &app.id).await.unwrap();
        db.store.create_signing_key(&tenant.id, &sibling.id).await.unwrap();
        db.store.bump_signing_key_generation(&actor(), &tenant.id, &app.id, &newest.kid).await.unwrap();
        db.store.revoke_signing_key(&actor(), &tenant.id, &app.id, &revoked.kid).await.unwrap();
        let jti = new_token_id();
        db.store.revoke_token(&actor(), &tenant.id, &app.id, &jti).await.unwrap();
        let cutoff = db.store.revoke_client(&actor(), &tenant.id, &app.id, "alice").await.unwrap();
        db.store.revoke_client(&actor(), &tenant.id, &sibling.id, "bob").await.unwrap();
        let app = db.store.app(&tenant.id, &app.id).await.unwrap();

        let snapshot = db.store.app_snapshot(&app.id).await.unwrap().expect("the app exists");
        assert_eq!(snapshot.app, app);
        assert_eq!(snapshot.tenant, tenant);
        let keys: Vec<(&str, i64)> =
            snapshot.signing_keys.iter().map(|key| (key.kid.as_str(), key.generation)).collect();
        assert_eq!(keys, [(newest.kid.as_str(), 2), (oldest.kid.as_str(), 1)]);
        assert_eq!(snapshot.signing_keys[0].secret.expose_secret(), newest.secret.expose_secret());
        let mut revocations = snapshot.revocations;
        revocations.sort_by_key(|revoked| matches!(revoked, Revoked::Client { .. }));
        assert_eq!(
            revocations,
            [Revoked::Token(jti), Revoked::Client { client_id: "alice".into(), issued_before: cutoff }]
        );
    }
}

#[tokio::test]
async fn snapshot_shows_the_tenants_status_and_cut_offs() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        db.store.set_tenant_status(&actor(), &tenant.id, TenantStatus::Suspended).await.unwrap();
        let tenant_cutoff = db.store.revoke_tenant_tokens(&actor(), &tenant.id).await.unwrap();
        let app_cutoff = db.store.revoke_app_tokens(&actor(), &tenant.id, &app.id).await.unwrap();

        let snapshot = db.store.app_snapshot(&app.id).await.unwrap().expect("the app exists");
        assert_eq!(snapshot.tenant.status, TenantStatus::Suspended);
        assert!(!snapshot.tenant.status.is_served());
        assert_eq!(snapshot.tenant.tokens_revoked_before, tenant_cutoff);
        assert_eq!(snapshot.app.tokens_revoked_before, app_cutoff);
        assert!(snapshot.signing_keys.is_empty() && snapshot.revocations.is_empty());
    }
}

#[tokio::test]
async fn snapshot_of_an_unknown_or_forged_app_is_none() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let forged = [
            "app_0000000000000000000000000a",
            "app_'; DROP TABLE apps;--",
            "app_\u{0}",
            "app_0000000000000000000000\u{0}000",
            "\u{0}",
            "",
            tenant.id.as_str(),
        ];
        for id in forged {
            let snapshot = db.store.app_snapshot(id).await;
            assert!(matches!(snapshot, Ok(None)), "{:?} {id:?}: {snapshot:?}", db.store.backend());
        }
        assert!(db.store.app_snapshot(&app.id).await.unwrap().is_some(), "nothing was harmed");
        assert_eq!(db.store.apps(&tenant.id).await.unwrap(), [app]);
    }
}
