//! Push's device registry and channel subscriptions, on both backends.

use std::collections::BTreeSet;

use tributary_store::{Device, DevicePlatform, NewDevice, PushTarget, StoreError};

use crate::TestDb;

fn apns(token: &str, client: Option<&str>) -> NewDevice {
    NewDevice {
        platform: DevicePlatform::Apns,
        token: token.into(),
        web_keys: None,
        client_id: client.map(str::to_owned),
        metadata: "{}".into(),
    }
}

fn ids(devices: &[Device]) -> BTreeSet<String> {
    devices.iter().map(|d| d.id.clone()).collect()
}

fn reached_ids(reached: &[tributary_store::PushAddress]) -> BTreeSet<String> {
    reached.iter().map(|a| a.id.clone()).collect()
}

#[tokio::test]
async fn registering_a_token_again_updates_its_device_and_keeps_its_id() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("shop").await;
        let first =
            db.store.register_device(&tenant.id, &app.id, &apns("aa01", Some("alice"))).await.unwrap();
        assert!(first.id.starts_with("dev_"), "{first:?}");
        let moved = NewDevice { metadata: r#"{"model":"iPhone"}"#.into(), ..apns("aa01", Some("bob")) };
        let again = db.store.register_device(&tenant.id, &app.id, &moved).await.unwrap();
        assert_eq!(again.id, first.id, "the same token is the same device");
        assert_eq!(
            (again.client_id.as_deref(), again.metadata.as_str()),
            (Some("bob"), r#"{"model":"iPhone"}"#)
        );
        let web = NewDevice {
            platform: DevicePlatform::Web,
            token: "https://push.example/sub/1".into(),
            web_keys: Some(r#"{"p256dh":"BPk","auth":"c2Vj"}"#.into()),
            client_id: Some("bob".into()),
            metadata: "{}".into(),
        };
        let browser = db.store.register_device(&tenant.id, &app.id, &web).await.unwrap();
        assert_ne!(browser.id, first.id);
        assert_eq!(browser.web_keys, web.web_keys);
        let fcm = NewDevice { platform: DevicePlatform::Fcm, ..apns("aa01", None) };
        let android = db.store.register_device(&tenant.id, &app.id, &fcm).await.unwrap();
        assert_ne!(android.id, first.id, "a token is one platform's");

        let bobs = db.store.devices(&tenant.id, &app.id, Some("bob"), "", 10).await.unwrap();
        assert_eq!(ids(&bobs), BTreeSet::from([first.id.clone(), browser.id.clone()]));
        let page = db.store.devices(&tenant.id, &app.id, None, "", 2).await.unwrap();
        let rest = db.store.devices(&tenant.id, &app.id, None, &page[1].id, 2).await.unwrap();
        assert_eq!((page.len(), rest.len()), (2, 1));
        assert!(ids(&page).is_disjoint(&ids(&rest)));

        db.store.remove_device(&tenant.id, &app.id, &android.id).await.unwrap();
        assert!(matches!(
            db.store.device(&tenant.id, &app.id, &android.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            db.store.remove_device(&tenant.id, &app.id, &android.id).await,
            Err(StoreError::NotFound("device"))
        ));
    }
}

#[tokio::test]
async fn devices_and_their_subscriptions_are_seen_only_in_their_own_tenant_and_app() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("shop").await;
        let (other, other_app) = db.tenant_with_app("elsewhere").await;
        let mine = db.store.register_device(&tenant.id, &app.id, &apns("bb01", Some("alice"))).await.unwrap();
        // Another tenant cannot register into this app, read, remove or subscribe its device.
        assert!(matches!(
            db.store.register_device(&other.id, &app.id, &apns("bb02", None)).await,
            Err(StoreError::NotFound("app"))
        ));
        assert!(matches!(db.store.device(&other.id, &app.id, &mine.id).await, Err(StoreError::NotFound(_))));
        assert!(matches!(
            db.store.device(&tenant.id, &other_app.id, &mine.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(db.store.remove_device(&other.id, &app.id, &mine.id).await.is_err());
        let device = PushTarget::Device(mine.id.clone());
        assert!(matches!(
            db.store.subscribe_push(&other.id, &other_app.id, "orders:1", &device).await,
            Err(StoreError::NotFound("device"))
        ));
        let client = PushTarget::Client("alice".into());
        assert!(matches!(
            db.store.subscribe_push(&other.id, &app.id, "orders:1", &client).await,
            Err(StoreError::NotFound("app"))
        ));
        assert!(db.store.devices(&other.id, &app.id, None, "", 10).await.unwrap().is_empty());
        db.store.subscribe_push(&tenant.id, &app.id, "orders:1", &device).await.unwrap();
        assert!(db.store.push_subscriptions(&other.id, &app.id, None).await.unwrap().is_empty());
        assert!(!db.store.unsubscribe_push(&other.id, &app.id, "orders:1", &device).await.unwrap());
        assert_eq!(
            db.store.push_subscriptions(&tenant.id, &app.id, None).await.unwrap().len(),
            1,
            "untouched"
        );
        // What the other app's pushes reach: nothing of this app's.
        assert!(db.store.channel_push_devices(&other_app.id, "orders:1", "", 10).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_channels_push_reaches_its_devices_and_every_device_of_its_client_ids_once() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("shop").await;
        let register = |token: &'static str, client: Option<&'static str>| {
            let store = db.store.clone();
            let (tenant, app) = (tenant.id.clone(), app.id.clone());
            async move { store.register_device(&tenant, &app, &apns(token, client)).await.unwrap() }
        };
        let (d1, d2, d3, d4) = (
            register("cc01", Some("alice")).await,
            register("cc02", Some("alice")).await,
            register("cc03", Some("bob")).await,
            register("cc04", None).await,
        );
        let subscribe = |target: PushTarget| {
            let store = db.store.clone();
            let (tenant, app) = (tenant.id.clone(), app.id.clone());
            async move { store.subscribe_push(&tenant, &app, "orders:1", &target).await.unwrap() }
        };
        subscribe(PushTarget::Device(d3.id.clone())).await;
        subscribe(PushTarget::Client("alice".into())).await;
        subscribe(PushTarget::Device(d1.id.clone())).await; // also through alice
        subscribe(PushTarget::Device(d1.id.clone())).await; // again: nothing changes
        assert_eq!(
            db.store.push_subscriptions(&tenant.id, &app.id, Some("orders:1")).await.unwrap().len(),
            3
        );

        let reached = db.store.channel_push_devices(&app.id, "orders:1", "", 100).await.unwrap();
        assert_eq!(
            reached_ids(&reached),
            BTreeSet::from([d1.id.clone(), d2.id.clone(), d3.id.clone()]),
            "each once"
        );
        assert_eq!(reached.len(), 3);
        assert!(db.store.channel_push_devices(&app.id, "orders:2", "", 100).await.unwrap().is_empty());
        // A device alice registers later is reached too.
        let d5 = register("cc05", Some("alice")).await;
        let first = db.store.channel_push_devices(&app.id, "orders:1", "", 2).await.unwrap();
        let next = db.store.channel_push_devices(&app.id, "orders:1", &first[1].id, 2).await.unwrap();
        assert_eq!(
            reached_ids(&[first, next].concat()),
            BTreeSet::from([d1.id.clone(), d2.id.clone(), d3.id.clone(), d5.id.clone()])
        );

        let alice = PushTarget::Client("alice".into());
        assert!(db.store.unsubscribe_push(&tenant.id, &app.id, "orders:1", &alice).await.unwrap());
        let reached = db.store.channel_push_devices(&app.id, "orders:1", "", 100).await.unwrap();
        assert_eq!(reached_ids(&reached), BTreeSet::from([d1.id.clone(), d3.id.clone()]));
        // A dead token: the device goes, and its subscriptions with it.
        let dead = ["cc03".to_owned()];
        assert_eq!(db.store.remove_devices_by_tokens(&app.id, DevicePlatform::Apns, &dead).await.unwrap(), 1);
        assert_eq!(db.store.remove_devices_by_tokens(&app.id, DevicePlatform::Apns, &dead).await.unwrap(), 0);
        let left = db.store.push_subscriptions(&tenant.id, &app.id, None).await.unwrap();
        assert_eq!(
            left.iter().map(|s| s.target.clone()).collect::<Vec<_>>(),
            [PushTarget::Device(d1.id.clone())]
        );
        assert!(db.store.device(&tenant.id, &app.id, &d4.id).await.is_ok(), "the others stay");
    }
}
