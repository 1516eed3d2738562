//! Exchanges between tenants, on both backends: offered, accepted, suspended, resumed only by the
//! side that suspended, ended; the routes each app's node reads; the exchange's log source made in
//! the acceptance's transaction; every change audited for both tenants; nothing visible to a
//! third tenant.

use tributary_store::StoreError;
use tributary_store::exchange::{ExchangeChange, ExchangeStatus, NewExchange, Side};

use crate::{TestDb, actor};

fn offer(app: &str, partner: &str) -> NewExchange {
    NewExchange {
        app_id: app.to_owned(),
        namespace: "orders".to_owned(),
        partner_tenant_id: partner.to_owned(),
        offerer_rights: vec!["publish".into(), "subscribe".into()],
        partner_rights: vec!["subscribe".into()],
    }
}

#[tokio::test]
async fn an_exchange_lives_from_offer_to_end_seen_by_its_two_parties_only() {
    for db in TestDb::all().await {
        let (ours, our_app) = db.tenant_with_app("retail").await;
        let (theirs, their_app) = db.tenant_with_app("logistics").await;
        let (third, _) = db.tenant_with_app("bystander").await;
        let store = &db.store;
        let offered =
            store.offer_exchange(&actor(), &ours.id, &offer(&our_app.id, &theirs.id)).await.unwrap();
        assert_eq!((offered.status, offered.partner_app_id.as_deref()), (ExchangeStatus::Offered, None));
        assert!(
            store.exchange_routes(&our_app.id).await.unwrap().is_empty(),
            "nothing routes before acceptance"
        );
        // The same namespace of the same app cannot be offered twice; a partner must exist and
        // not be the tenant itself; the app must be the tenant's.
        let again = store.offer_exchange(&actor(), &ours.id, &offer(&our_app.id, &third.id)).await;
        assert!(matches!(again, Err(StoreError::AlreadyExists(_))), "{again:?}");
        let own = store.offer_exchange(&actor(), &ours.id, &offer(&our_app.id, &ours.id)).await;
        assert!(matches!(own, Err(StoreError::NotFound("partner tenant"))), "{own:?}");
        let stolen = store.offer_exchange(&actor(), &ours.id, &offer(&their_app.id, &third.id)).await;
        assert!(matches!(stolen, Err(StoreError::NotFound("app"))), "{stolen:?}");
        // A third tenant sees nothing of it.
        assert!(matches!(store.exchange(&third.id, &offered.id).await, Err(StoreError::NotFound(_))));
        assert!(store.exchanges(&third.id).await.unwrap().is_empty());
        let change = |tenant: &str, change: ExchangeChange| {
            let (tenant, id) = (tenant.to_owned(), offered.id.clone());
            async move { store.change_exchange(&actor(), &tenant, &id, &change).await }
        };
        assert!(matches!(change(&third.id, ExchangeChange::End).await, Err(StoreError::NotFound(_))));
        // Only the partner accepts, and only into its own app.
        let accept = |app: &str| ExchangeChange::Accept { app_id: app.to_owned() };
        assert!(matches!(change(&ours.id, accept(&our_app.id)).await, Err(StoreError::InvalidState(_))));
        assert!(matches!(change(&theirs.id, accept(&our_app.id)).await, Err(StoreError::NotFound("app"))));
        let active = change(&theirs.id, accept(&their_app.id)).await.unwrap();
        assert_eq!(
            (active.status, active.partner_app_id.as_deref()),
            (ExchangeStatus::Active, Some(&*their_app.id))
        );
        assert!(matches!(change(&theirs.id, accept(&their_app.id)).await, Err(StoreError::InvalidState(_))));
        // An app routes a namespace through one exchange at most, on either side.
        let taken = store.offer_exchange(&actor(), &theirs.id, &offer(&their_app.id, &third.id)).await;
        assert!(
            matches!(taken, Err(StoreError::AlreadyExists(_))),
            "the partner's app takes orders already: {taken:?}"
        );
        let (fourth, fourth_app) = db.tenant_with_app("vendor").await;
        let incoming =
            store.offer_exchange(&actor(), &fourth.id, &offer(&fourth_app.id, &ours.id)).await.unwrap();
        let refused = store.change_exchange(&actor(), &ours.id, &incoming.id, &accept(&our_app.id)).await;
        assert!(
            matches!(refused, Err(StoreError::AlreadyExists(_))),
            "our app offers orders already: {refused:?}"
        );
        // Both apps route the namespace, each with its side's rights; the log reads the
        // offering app's feed, that namespace only.
        let routes = store.exchange_routes(&their_app.id).await.unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!((routes[0].side, routes[0].offerer_app_id.as_str()), (Side::Partner, &*our_app.id));
        assert_eq!(routes[0].rights, ["subscribe"]);
        let routes = store.exchange_routes(&our_app.id).await.unwrap();
        assert_eq!((routes[0].side, routes[0].rights.len()), (Side::Offerer, 2));
        let sources = store.audit_sources(&active.log_id()).await.unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(
            (sources[0].app_id.as_str(), sources[0].namespace.as_deref()),
            (&*our_app.id, Some("orders"))
        );
        assert_eq!(sources[0].until_ms, None);
        store.open_audit_logs("test.example/audit", 1).await.unwrap();
        let log = store.audit_log(&active.log_id()).await.unwrap();
        assert_eq!(log.origin, format!("test.example/audit/exchange/{}", active.id));
        // Suspended by the partner: only it resumes.
        assert_eq!(
            change(&theirs.id, ExchangeChange::Suspend).await.unwrap().status,
            ExchangeStatus::Suspended
        );
        assert!(matches!(change(&ours.id, ExchangeChange::Resume).await, Err(StoreError::InvalidState(_))));
        assert_eq!(change(&theirs.id, ExchangeChange::Resume).await.unwrap().status, ExchangeStatus::Active);
        // Ended by the offering side: for good, routing nothing, its log taking nothing later.
        let ended = change(&ours.id, ExchangeChange::End).await.unwrap();
        assert_eq!((ended.status, ended.changed_by.as_deref()), (ExchangeStatus::Ended, Some(&*ours.id)));
        assert!(matches!(change(&theirs.id, ExchangeChange::Resume).await, Err(StoreError::InvalidState(_))));
        assert!(store.exchange_routes(&their_app.id).await.unwrap().is_empty());
        assert!(store.audit_sources(&active.log_id()).await.unwrap()[0].until_ms.is_some());
        // The namespace may be offered again once the exchange ended.
        store.offer_exchange(&actor(), &ours.id, &offer(&our_app.id, &theirs.id)).await.unwrap();
        // Every change is in both tenants' events.
        for tenant in [&ours.id, &theirs.id] {
            let actions: Vec<String> =
                store.audit_events(tenant, 20).await.unwrap().into_iter().map(|e| e.action).collect();
            for action in
                ["exchange.offer", "exchange.accept", "exchange.suspend", "exchange.resume", "exchange.end"]
            {
                assert!(actions.iter().any(|a| a == action), "{tenant}: {action} in {actions:?}");
            }
        }
        assert!(
            store
                .audit_events(&third.id, 20)
                .await
                .unwrap()
                .iter()
                .all(|e| !e.action.starts_with("exchange."))
        );
    }
}
