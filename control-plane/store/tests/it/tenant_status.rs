//! Tenant status, the tenant list, and the "revoke every token up to now" cut-offs of tenants
//! and apps.

use tributary_store::{StoreError, TenantStatus};

use crate::{TestDb, actor, unix_now};

/// Tenant ids that name no tenant: well-formed but unknown, and forged.
const NO_TENANTS: [&str; 4] =
    ["ten_0000000000000000000000000a", "ten_'; DROP TABLE tenants;--", "ten_\u{0}", ""];

#[test]
fn status_names_round_trip_and_only_active_and_past_due_are_served() {
    let names: Vec<&str> = TenantStatus::ALL.iter().map(|status| status.as_str()).collect();
    assert_eq!(names, ["active", "past_due", "unpaid", "suspended", "deleted"]);
    for status in TenantStatus::ALL {
        assert_eq!(TenantStatus::parse(status.as_str()), Some(status));
    }
    for unknown in ["", "Active", "ACTIVE", "pastdue", "past-due", "active "] {
        assert_eq!(TenantStatus::parse(unknown), None, "{unknown:?}");
    }
    assert!(TenantStatus::Active.is_served());
    assert!(TenantStatus::PastDue.is_served());
    assert!(!TenantStatus::Unpaid.is_served());
    assert!(!TenantStatus::Suspended.is_served());
    assert!(!TenantStatus::Deleted.is_served());
}

#[tokio::test]
async fn new_tenants_are_active_with_no_tokens_revoked() {
    for db in TestDb::all().await {
        let tenant = db.store.create_tenant_as(&actor(), "Acme").await.unwrap();
        assert_eq!(tenant.status, TenantStatus::Active);
        assert_eq!(tenant.tokens_revoked_before, 0);
        let read = db.store.tenant(&tenant.id).await.unwrap();
        assert_eq!((read.status, read.tokens_revoked_before), (TenantStatus::Active, 0));
        let app = db.store.create_app(&tenant.id, "prod").await.unwrap();
        assert_eq!(app.tokens_revoked_before, 0);
        assert_eq!(db.store.app(&tenant.id, &app.id).await.unwrap().tokens_revoked_before, 0);
    }
}

#[tokio::test]
async fn set_tenant_status_changes_and_returns_the_status() {
    for db in TestDb::all().await {
        let tenant = db.store.create_tenant("Acme").await.unwrap();
        let other = db.store.create_tenant("Other").await.unwrap();
        for status in
            [TenantStatus::PastDue, TenantStatus::Suspended, TenantStatus::Deleted, TenantStatus::Active]
        {
            let returned = db.store.set_tenant_status(&actor(), &tenant.id, status).await.unwrap();
            assert_eq!(returned.status, status);
            assert_eq!((returned.id.as_str(), returned.name.as_str()), (tenant.id.as_str(), "Acme"));
            assert_eq!(db.store.tenant(&tenant.id).await.unwrap(), returned);
        }
        db.store.set_tenant_status(&actor(), &tenant.id, TenantStatus::Suspended).await.unwrap();
        assert_eq!(
            db.store.tenant(&other.id).await.unwrap().status,
            TenantStatus::Active,
            "only one changed"
        );
    }
}

#[tokio::test]
async fn status_of_an_unknown_or_forged_tenant_is_not_found_and_changes_nothing() {
    for db in TestDb::all().await {
        let tenant = db.store.create_tenant("Acme").await.unwrap();
        let events = db.audit_event_count().await;
        for missing in NO_TENANTS {
            let err =
                db.store.set_tenant_status(&actor(), missing, TenantStatus::Suspended).await.unwrap_err();
            assert!(matches!(err, StoreError::NotFound("tenant")), "{missing:?}: {err:?}");
        }
        assert_eq!(db.store.tenant(&tenant.id).await.unwrap().status, TenantStatus::Active);
        assert_eq!(db.audit_event_count().await, events, "a failed write is not audited");
    }
}

#[tokio::test]
async fn tenants_are_listed_oldest_first() {
    for db in TestDb::all().await {
        assert!(db.store.tenants().await.unwrap().is_empty());
        let mut created = Vec::new();
        for name in ["Zeta", "Alpha", "Mid"] {
            created.push(db.store.create_tenant(name).await.unwrap());
        }
        created[1] =
            db.store.set_tenant_status(&actor(), &created[1].id, TenantStatus::PastDue).await.unwrap();
        assert_eq!(db.store.tenants().await.unwrap(), created);
    }
}

#[tokio::test]
async fn revoking_an_apps_tokens_sets_its_cut_off_to_the_next_second() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let sibling = db.store.create_app(&tenant.id, "staging").await.unwrap();
        let before = unix_now();
        let cutoff = db.store.revoke_app_tokens(&actor(), &tenant.id, &app.id).await.unwrap();
        let after = unix_now();
        assert!((before + 1..=after + 1).contains(&cutoff), "{before} {cutoff} {after}");
        assert_eq!(db.store.app(&tenant.id, &app.id).await.unwrap().tokens_revoked_before, cutoff);
        assert_eq!(db.store.app_by_id(&app.id).await.unwrap().tokens_revoked_before, cutoff);
        // Neither the sibling app nor the tenant is touched.
        assert_eq!(db.store.app(&tenant.id, &sibling.id).await.unwrap().tokens_revoked_before, 0);
        assert_eq!(db.store.tenant(&tenant.id).await.unwrap().tokens_revoked_before, 0);
    }
}

#[tokio::test]
async fn revoking_a_tenants_tokens_sets_its_cut_off_to_the_next_second() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let other = db.store.create_tenant("Other").await.unwrap();
        let before = unix_now();
        let cutoff = db.store.revoke_tenant_tokens(&actor(), &tenant.id).await.unwrap();
        let after = unix_now();
        assert!((before + 1..=after + 1).contains(&cutoff), "{before} {cutoff} {after}");
        let read = db.store.tenant(&tenant.id).await.unwrap();
        assert_eq!((read.tokens_revoked_before, read.status), (cutoff, TenantStatus::Active));
        assert_eq!(db.store.tenant(&other.id).await.unwrap().tokens_revoked_before, 0);
        assert_eq!(db.store.app(&tenant.id, &app.id).await.unwrap().tokens_revoked_before, 0);
    }
}

#[tokio::test]
async fn token_cut_offs_across_tenants_or_of_unknown_records_are_not_found() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let other = db.store.create_tenant("Other").await.unwrap();
        let events = db.audit_event_count().await;

        let err = db.store.revoke_app_tokens(&actor(), &other.id, &app.id).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
        for forged in ["app_0000000000000000000000000a", "app_'; DROP TABLE apps;--", "app_\u{0}"] {
            let err = db.store.revoke_app_tokens(&actor(), &tenant.id, forged).await.unwrap_err();
            assert!(matches!(err, StoreError::NotFound("app")), "{forged:?}: {err:?}");
        }
        for missing in NO_TENANTS {
            let err = db.store.revoke_tenant_tokens(&actor(), missing).await.unwrap_err();
            assert!(matches!(err, StoreError::NotFound("tenant")), "{missing:?}: {err:?}");
            let err = db.store.revoke_app_tokens(&actor(), missing, &app.id).await.unwrap_err();
            assert!(matches!(err, StoreError::NotFound("app")), "{missing:?}: {err:?}");
        }

        assert_eq!(db.store.app(&tenant.id, &app.id).await.unwrap().tokens_revoked_before, 0);
        assert_eq!(db.store.tenant(&tenant.id).await.unwrap().tokens_revoked_before, 0);
        assert_eq!(db.audit_event_count().await, events, "a failed write is not audited");
    }
}
