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
        links_subscription: tenant.is_some(),
        status,
        plan_id: None,
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
        assert_eq!(
            applied,
            EventOutcome::Applied { tenant_id: tenant.id.clone(), changed: None, plan: None }
        );
        let failed = change(None, Some(TenantStatus::PastDue), "billing.payment_failed");
        let applied =
            store.apply_billing_event("evt_2", "invoice.payment_failed", 200, Some(&failed)).await.unwrap();
        assert_eq!(
            applied,
            EventOutcome::Applied {
                tenant_id: tenant.id.clone(),
                changed: Some(TenantStatus::PastDue),
                plan: None
            }
        );
        assert_eq!(
            store.apply_billing_event("evt_2", "invoice.payment_failed", 200, Some(&failed)).await.unwrap(),
            EventOutcome::Duplicate
        );
        // Within the grace period nothing happens; past it, the tenant is cut off.
        assert!(store.expire_past_due(1000, 1100).await.unwrap().is_empty());
        assert_eq!(store.expire_past_due(1000, 1300).await.unwrap(), vec![tenant.id.clone()]);
        assert_eq!(store.tenant(&tenant.id).await.unwrap().status, TenantStatus::Unpaid);
        // A failed payment never takes an unpaid tenant back to past due.
        let again =
            store.apply_billing_event("evt_3", "invoice.payment_failed", 1250, Some(&failed)).await.unwrap();
        assert_eq!(again, EventOutcome::Applied { tenant_id: tenant.id.clone(), changed: None, plan: None });
        assert_eq!(store.tenant(&tenant.id).await.unwrap().status, TenantStatus::Unpaid);
        // An invoice of another (an old) subscription changes nothing; one of its own lets it back,
        // even one Stripe made before the cut-off and delivered after it.
        let mut old = change(None, Some(TenantStatus::Active), "billing.invoice_paid");
        old.subscription_id = Some("sub_old".into());
        let other = store.apply_billing_event("evt_4", "invoice.paid", 1260, Some(&old)).await.unwrap();
        assert_eq!(other, EventOutcome::Applied { tenant_id: tenant.id.clone(), changed: None, plan: None });
        let paid = change(None, Some(TenantStatus::Active), "billing.invoice_paid");
        let late = store.apply_billing_event("evt_5", "invoice.paid", 1270, Some(&paid)).await.unwrap();
        assert_eq!(
            late,
            EventOutcome::Applied {
                tenant_id: tenant.id.clone(),
                changed: Some(TenantStatus::Active),
                plan: None
            }
        );
        // An older event arriving late never undoes a newer one.
        let cut = change(None, Some(TenantStatus::Unpaid), "billing.subscription_deleted");
        let stale = store
            .apply_billing_event("evt_6", "customer.subscription.deleted", 1265, Some(&cut))
            .await
            .unwrap();
        assert_eq!(stale, EventOutcome::Applied { tenant_id: tenant.id.clone(), changed: None, plan: None });
        assert_eq!(store.tenant(&tenant.id).await.unwrap().status, TenantStatus::Active);
        // A checkout naming the tenant for another customer links nothing.
        let mut hijack = change(Some(&tenant.id), Some(TenantStatus::Active), "billing.checkout_completed");
        hijack.customer_id = "cus_attacker".into();
        let refused = store
            .apply_billing_event("evt_7", "checkout.session.completed", 1280, Some(&hijack))
            .await
            .unwrap();
        assert_eq!(refused, EventOutcome::Conflict { tenant_id: tenant.id.clone() });
        let mut theirs = change(None, Some(TenantStatus::Unpaid), "billing.subscription_deleted");
        theirs.customer_id = "cus_attacker".into();
        let unknown = store
            .apply_billing_event("evt_8", "customer.subscription.deleted", 1290, Some(&theirs))
            .await
            .unwrap();
        assert_eq!(unknown, EventOutcome::UnknownCustomer);
        assert_eq!(store.tenant(&tenant.id).await.unwrap().status, TenantStatus::Active);
        // An operator's suspension stands.
        store.set_tenant_status(&crate::actor(), &tenant.id, TenantStatus::Suspended).await.unwrap();
        store.apply_billing_event("evt_9", "customer.subscription.deleted", 1500, Some(&cut)).await.unwrap();
        assert_eq!(store.tenant(&tenant.id).await.unwrap().status, TenantStatus::Suspended);
        assert_eq!(
            store.apply_billing_event("evt_10", "charge.refunded", 1600, None).await.unwrap(),
            EventOutcome::Ignored
        );
    }
}
