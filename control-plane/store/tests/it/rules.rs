//! Rules and feed positions on both backends: a rule sends only to an endpoint of its own app,
//! the tenant's scope, deleting an endpoint deletes its rules, and the feed position that moves
//! only with the deliveries it covers, only for the worker holding the lease, only once.

use tributary_store::{NewDelivery, NewRule, NewWebhookEndpoint, StoreError};

use crate::{TestDb, actor};

fn spec(target: &str) -> NewRule {
    NewRule {
        name: "orders".into(),
        channel_pattern: "orders:*".into(),
        events: vec!["message".into(), "presence.join".into()],
        target_id: target.into(),
        target_kind: "webhook".into(),
        target_spec: "{}".into(),
        batch_max: 10,
        batch_ms: 500,
        body: "enveloped".into(),
        headers: r#"{"x-rule":"1"}"#.into(),
    }
}

async fn endpoint(db: &TestDb, tenant: &str, app: &str) -> String {
    let new = NewWebhookEndpoint {
        url: "https://example.com/hook".into(),
        description: String::new(),
        headers: "{}".into(),
    };
    db.store.create_webhook_endpoint(&actor(), tenant, app, &new).await.expect("endpoint").0.id
}

fn delivery(tenant: &str, app: &str, target: &str, event: &str) -> NewDelivery {
    NewDelivery {
        tenant_id: tenant.into(),
        app_id: app.into(),
        target_id: target.into(),
        event_id: event.into(),
        payload: b"{}".to_vec(),
        headers: "{}".into(),
        events: 1,
    }
}

#[tokio::test]
async fn a_rule_sends_only_to_an_endpoint_of_its_own_app_and_tenant() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let (other, other_app) = db.tenant_with_app("elsewhere").await;
        let second = db.store.create_app(&tenant.id, "staging").await.expect("second app");
        let mine = endpoint(&db, &tenant.id, &app.id).await;
        let in_second_app = endpoint(&db, &tenant.id, &second.id).await;
        let foreign = endpoint(&db, &other.id, &other_app.id).await;

        let rule = db.store.create_rule(&actor(), &tenant.id, &app.id, &spec(&mine)).await.expect("rule");
        assert_eq!(rule.spec, spec(&mine), "stored as given");
        assert!(rule.enabled);
        for target in [&in_second_app, &foreign, &"wh_missing".to_owned()] {
            let refused = db.store.create_rule(&actor(), &tenant.id, &app.id, &spec(target)).await;
            assert!(matches!(refused, Err(StoreError::NotFound("webhook endpoint"))), "{refused:?}");
        }
        let wrong_tenant = db.store.create_rule(&actor(), &other.id, &app.id, &spec(&foreign)).await;
        assert!(matches!(wrong_tenant, Err(StoreError::NotFound("app"))), "{wrong_tenant:?}");
        assert!(matches!(db.store.rule(&other.id, &rule.id).await, Err(StoreError::NotFound("rule"))));
        assert!(matches!(
            db.store.delete_rule(&actor(), &other.id, &rule.id).await,
            Err(StoreError::NotFound("rule"))
        ));
        assert_eq!(db.store.rules(&tenant.id, &app.id).await.unwrap().len(), 1, "nothing else was made");

        let mut changed = spec(&mine);
        changed.events = vec!["message".into()];
        changed.batch_max = 1;
        let updated = db.store.update_rule(&actor(), &tenant.id, &rule.id, &changed).await.unwrap();
        assert_eq!(updated.spec, changed);
        let moved = db.store.update_rule(&actor(), &tenant.id, &rule.id, &spec(&in_second_app)).await;
        assert!(matches!(moved, Err(StoreError::NotFound("webhook endpoint"))), "{moved:?}");

        assert_eq!(db.store.apps_with_rules().await.unwrap(), vec![app.id.clone()]);
        db.store.set_rule_enabled(&actor(), &tenant.id, &rule.id, false).await.unwrap();
        assert!(db.store.apps_with_rules().await.unwrap().is_empty(), "a disabled rule needs no feed");
        assert!(db.store.enabled_rules(&app.id).await.unwrap().is_empty());
        db.store.set_rule_enabled(&actor(), &tenant.id, &rule.id, true).await.unwrap();
        assert_eq!(db.store.enabled_rules(&app.id).await.unwrap().len(), 1);

        db.store.delete_webhook_endpoint(&actor(), &tenant.id, &mine).await.unwrap();
        assert!(
            db.store.rules(&tenant.id, &app.id).await.unwrap().is_empty(),
            "the endpoint's rules went with it"
        );
    }
}

#[tokio::test]
async fn a_feed_position_moves_only_with_its_deliveries_for_the_lease_holder_once() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let target = endpoint(&db, &tenant.id, &app.id).await;
        assert!(
            db.store.claim_feeds("w1", 1_000, 31_000, 10).await.unwrap().is_empty(),
            "no rules, no feeds"
        );
        db.store.create_rule(&actor(), &tenant.id, &app.id, &spec(&target)).await.unwrap();

        let leases = db.store.claim_feeds("w1", 1_000, 31_000, 10).await.unwrap();
        assert_eq!(leases.len(), 1);
        let lease = leases[0].clone();
        assert_eq!((lease.app_id.as_str(), lease.position.as_str()), (app.id.as_str(), ""));
        assert!(db.store.claim_feeds("w2", 2_000, 32_000, 10).await.unwrap().is_empty(), "w1 holds it");

        let first =
            [delivery(&tenant.id, &app.id, &target, "e1"), delivery(&tenant.id, &app.id, &target, "e2")];
        assert!(db.store.advance_feed("w1", &lease, "p2", &first, 2_000).await.unwrap());
        // The same read again (a retry after an error that did commit): refused, nothing queued twice.
        assert!(!db.store.advance_feed("w1", &lease, "p2", &first, 2_500).await.unwrap());
        assert_eq!(db.count("SELECT COUNT(*) FROM delivery_jobs").await, 2);

        // w1's lease runs out; w2 takes the feed from where w1 left it.
        let taken = db.store.claim_feeds("w2", 40_000, 70_000, 10).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].position, "p2");
        // w1, too slow, tries to queue its next read: refused, and nothing of it is queued.
        let late_lease = tributary_store::FeedLease { position: "p2".into(), ..lease.clone() };
        let late = [delivery(&tenant.id, &app.id, &target, "e3")];
        assert!(!db.store.advance_feed("w1", &late_lease, "p3", &late, 40_500).await.unwrap());
        assert_eq!(db.count("SELECT COUNT(*) FROM delivery_jobs").await, 2);
        assert!(db.store.advance_feed("w2", &taken[0], "p3", &late, 41_000).await.unwrap());
        assert_eq!(db.count("SELECT COUNT(*) FROM delivery_jobs").await, 3);

        // A stopping worker releases its feeds: another takes them at once.
        db.store.release_feed("w2", &app.id).await.unwrap();
        let now_free = db.store.claim_feeds("w3", 41_500, 71_500, 10).await.unwrap();
        assert_eq!(now_free.len(), 1);
        assert_eq!(now_free[0].position, "p3");

        // The app's last rule goes and its feed is turned off: the position is forgotten, and
        // a feed turned on again by a new rule is read from its start.
        let rule = db.store.rules(&tenant.id, &app.id).await.unwrap().remove(0);
        db.store.forget_feed_position(&app.id).await.unwrap();
        assert_eq!(db.count("SELECT COUNT(*) FROM feed_positions").await, 1, "kept while a rule is enabled");
        db.store.delete_rule(&actor(), &tenant.id, &rule.id).await.unwrap();
        db.store.forget_feed_position(&app.id).await.unwrap();
        assert!(db.store.claim_feeds("w3", 42_000, 72_000, 10).await.unwrap().is_empty());
        db.store.create_rule(&actor(), &tenant.id, &app.id, &spec(&target)).await.unwrap();
        let anew = db.store.claim_feeds("w3", 42_500, 72_500, 10).await.unwrap();
        assert_eq!(anew[0].position, "", "from the new feed's start");
    }
}
