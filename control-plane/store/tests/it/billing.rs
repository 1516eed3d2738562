//! Billing's records on both backends: a Stripe event applied once, in order, never over an
//! operator's status, and the grace period's expiry cutting a past-due tenant off.

use tributary_store::TenantStatus;
use tributary_store::billing::{BillingChange, EventOutcome};

use crate::TestDb;

fn change(tenant: Option<&str>, status: Option<TenantStatus>, action: &str) -> BillingChange {
    BillingChange {
        customer_id: "cus_1".into(),
        tenant_id: tenant.map(str::to_owned),
        subscription_id: Some("sub_1".into()),
        status,
        action: action.into(),
    }
}

#[tokio::test]
async fn events_apply_once_in_order_and_the_grace_period_cuts_a_tenant_off() {
    for db in TestDb::all().await {
        let (tenant, _) = db.tenant_with_app("prod").await;
        let store = &db.store;
        let unknown = store
            .apply_billing_event(
                "evt_0",
                "invoice.payment_failed",
                10,
                Some(&change(None, Some(TenantStatus::PastDue), "billing.payment_failed")),
            )
            .await
            .unwrap();
        assert_eq!(unknown, EventOutcome::UnknownCustomer, "no tenant has the customer yet");
        let linked = change(Some(&tenant.id), Some(TenantStatus::Active), "billing.checkout_completed");
        let applied = store
            .apply_billing_event("evt_1", "checkout.session.completed", 100, Some(&linked))
            .await
            .unwrap();
        assert_eq!(applied, EventOutcome::Applied { tenant_id: tenant.id.clone(), changed: None });
        let failed = change(None, Some(TenantStatus::PastDue), "billing.payment_failed");
        let applied =
            store.apply_billing_event("evt_2", "invoice.payment_failed", 200, Some(&failed)).await.unwrap();
        assert_eq!(
            applied,
            EventOutcome::Applied { tenant_id: tenant.id.clone(), changed: Some(TenantStatus::PastDue) }
        );
        assert_eq!(
            store.apply_billing_event("evt_2", "invoice.payment_failed", 200, Some(&failed)).await.unwrap(),
            EventOutcome::Duplicate
        );
        // Within the grace period nothing happens; past it, the tenant is cut off.
        assert!(store.expire_past_due(1000, 1100).await.unwrap().is_empty());
        assert_eq!(store.expire_past_due(1000, 1300).await.unwrap(), vec![tenant.id.clone()]);
        assert_eq!(store.tenant(&tenant.id).await.unwrap().status, TenantStatus::Unpaid);
        // An event older than the cut-off arriving late changes nothing; a later paid invoice does.
        let paid = change(None, Some(TenantStatus::Active), "billing.invoice_paid");
        let late = store.apply_billing_event("evt_3", "invoice.paid", 1200, Some(&paid)).await.unwrap();
        assert_eq!(late, EventOutcome::Applied { tenant_id: tenant.id.clone(), changed: None });
        assert_eq!(store.tenant(&tenant.id).await.unwrap().status, TenantStatus::Unpaid);
        let fresh = store.apply_billing_event("evt_4", "invoice.paid", 1400, Some(&paid)).await.unwrap();
        assert_eq!(
            fresh,
            EventOutcome::Applied { tenant_id: tenant.id.clone(), changed: Some(TenantStatus::Active) }
        );
        // An operator's suspension stands.
        store.set_tenant_status(&crate::actor(), &tenant.id, TenantStatus::Suspended).await.unwrap();
        let cut = change(None, Some(TenantStatus::Unpaid), "billing.subscription_deleted");
        store.apply_billing_event("evt_5", "customer.subscription.deleted", 1500, Some(&cut)).await.unwrap();
        assert_eq!(store.tenant(&tenant.id).await.unwrap().status, TenantStatus::Suspended);
        assert_eq!(
            store.apply_billing_event("evt_6", "charge.refunded", 1600, None).await.unwrap(),
            EventOutcome::Ignored
        );
    }
}
