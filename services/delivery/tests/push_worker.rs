//! The worker's pushes: jobs of `push:<app>:<service>` targets sent with the app's stored
//! credentials to the testkit's fakes of APNs, FCM and a Web Push service (which verify the
//! protocols), and what follows each answer: a dead token removes its device, refused
//! credentials stop the app's pushes through that service and are dead-lettered, not retried.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tributary_delivery::address::{AddressPolicy, IpRange};
use tributary_delivery::push::apns::{ApnsClient, http2_client};
use tributary_delivery::push::deliver::PushClients;
use tributary_delivery::push::fcm::FcmClient;
use tributary_delivery::push::job::{PushDevice, PushJob};
use tributary_delivery::push::message::{PushMessage, target_id};
use tributary_delivery::push::webpush::{VapidKey, WebPushClient};
use tributary_delivery::schedule::RetrySchedule;
use tributary_delivery::sender::{Sender, SenderLimits};
use tributary_delivery::worker::{Worker, WorkerConfig, now_ms};
use tributary_store::{
    Actor, DevicePlatform, MasterKey, NewDelivery, NewDevice, PushService, Store, StoreError,
};
use tributary_testkit::push::{ApnsFake, FcmFake, KeyPair, WebPushFake};

const TEAM: &str = "TEAM123456";
const KEY_ID: &str = "KEY7654321";

/// The fakes, a store with an app whose credentials name them, and a worker pushing to them.
struct Setup {
    store: Store,
    tenant: String,
    app: String,
    apns: ApnsFake,
    fcm: FcmFake,
    web: WebPushFake,
    worker: Worker,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Store::open(&format!("sqlite://{}", dir.path().join("q.db").display()), &MasterKey::generate())
            .await
            .unwrap();
    let tenant = store.create_tenant("Acme").await.unwrap();
    let app = store.create_app(&tenant.id, "shop").await.unwrap();
    let (apns_key, fcm_key, vapid_key) = (KeyPair::p256(), KeyPair::rsa(), KeyPair::p256());
    let apns = ApnsFake::start(TEAM, KEY_ID, &apns_key.public_pem).await;
    let fcm = FcmFake::start("shop-7", "pusher@shop-7.iam.gserviceaccount.com", &fcm_key.public_pem).await;
    let vapid = VapidKey::from_pem(&vapid_key.private_pem, "mailto:ops@example.com").unwrap();
    let web = WebPushFake::start(vapid.public_key()).await;
    let actor = Actor::system();
    let set = |service, settings: Value, secret: String| {
        let (store, tenant, app, actor) = (store.clone(), tenant.id.clone(), app.id.clone(), actor.clone());
        async move {
            store
                .set_push_credentials(
                    &actor,
                    &tenant,
                    &app,
                    service,
                    &settings.to_string(),
                    secret.as_bytes(),
                )
                .await
                .unwrap();
        }
    };
    let apns_settings =
        json!({"team_id": TEAM, "key_id": KEY_ID, "topic": "com.example.shop", "environment": "production"});
    set(PushService::Apns, apns_settings, apns_key.private_pem.clone()).await;
    set(PushService::Fcm, json!({"project_id": "shop-7"}), fcm_key.service_account("shop-7")).await;
    set(PushService::WebPush, json!({"subject": "mailto:ops@example.com"}), vapid_key.private_pem.clone())
        .await;

    let policy = AddressPolicy::new().with_http(true).allow(IpRange::parse("127.0.0.0/8").unwrap());
    let http2 = || http2_client(std::slice::from_ref(&apns.ca_pem), Duration::from_secs(10)).unwrap();
    tributary_delivery::install_tls_provider();
    let clients = PushClients::new(
        ApnsClient::new(&apns.url, http2()),
        ApnsClient::new(&apns.url, http2()),
        FcmClient::new(&fcm.url, &fcm.token_url, reqwest::Client::new()),
        WebPushClient::new(Sender::new(policy.clone(), SenderLimits::default()).unwrap()),
    );
    let config = WorkerConfig {
        owner: "w".into(),
        lease: Duration::from_secs(30),
        batch: 32,
        per_target: 16,
        poll_interval: Duration::from_millis(20),
        schedule: RetrySchedule::new(vec![Duration::from_millis(30); 3]),
        disable_after: Duration::ZERO,
    };
    let worker = Worker::new(store.clone(), Sender::new(policy, SenderLimits::default()).unwrap(), config)
        .pushing(clients);
    Setup { store, tenant: tenant.id, app: app.id, apns, fcm, web, worker, _dir: dir }
}

impl Setup {
    async fn device(&self, platform: DevicePlatform, token: &str, web_keys: Option<Value>) -> String {
        let new = NewDevice {
            platform,
            token: token.into(),
            web_keys: web_keys.map(|k| k.to_string()),
            client_id: Some("alice".into()),
            metadata: "{}".into(),
        };
        self.store.register_device(&self.tenant, &self.app, &new).await.unwrap().id
    }

    /// Queues one device's copy of `push` as the pipeline does.
    async fn queue(
        &self,
        service: &str,
        device_id: &str,
        platform: &str,
        token: &str,
        web_keys: Option<Value>,
        push: &PushMessage,
    ) {
        let job = PushJob {
            push_id: format!("psh_{device_id}"),
            platform: platform.into(),
            push: push.clone(),
            devices: vec![PushDevice {
                device_id: device_id.into(),
                token: token.into(),
                web_keys,
                refused: None,
            }],
        };
        let delivery = NewDelivery {
            tenant_id: self.tenant.clone(),
            app_id: self.app.clone(),
            target_id: target_id(&self.app, service),
            event_id: format!("psh_{device_id}"),
            payload: serde_json::to_vec(&job).unwrap(),
            headers: "{}".into(),
            events: 1,
        };
        assert!(self.store.enqueue_delivery(&delivery, now_ms()).await.unwrap());
    }

    /// Runs the worker until `check` holds (for at most ten seconds).
    async fn until(&self, what: &str, mut check: impl AsyncFnMut() -> bool) {
        let stop = CancellationToken::new();
        let running = {
            let (worker, stop) = (&self.worker, stop.clone());
            async move { worker.run(stop).await }
        };
        let waiting = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !check().await {
                assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.cancel();
        };
        tokio::join!(running, waiting);
    }
}

fn order_push() -> PushMessage {
    serde_json::from_value(json!({"title": "Order 42", "body": "Your driver is here", "data": {"order": 42},
                                  "collapse_id": "order-42", "ttl": 600}))
    .unwrap()
}

#[tokio::test]
async fn one_push_reaches_an_iphone_an_android_phone_and_a_browser_each_as_its_service_wants() {
    let s = setup().await;
    let apns_token = "ab".repeat(32);
    let browser = s.web.subscribe();
    let keys = json!({"p256dh": browser.p256dh, "auth": browser.auth});
    let (d1, d2, d3) = (
        s.device(DevicePlatform::Apns, &apns_token, None).await,
        s.device(DevicePlatform::Fcm, "fcm-token-1", None).await,
        s.device(DevicePlatform::Web, &browser.endpoint, Some(keys.clone())).await,
    );
    let push = order_push();
    s.queue("apns", &d1, "apns", &apns_token, None, &push).await;
    s.queue("fcm", &d2, "fcm", "fcm-token-1", None, &push).await;
    s.queue("webpush", &d3, "web", &browser.endpoint, Some(keys), &push).await;
    s.until("each service got its push", async || {
        !s.apns.received().is_empty() && !s.fcm.received().is_empty() && !s.web.received().is_empty()
    })
    .await;

    let apns = &s.apns.received()[0];
    assert_eq!(apns.device_token, apns_token);
    assert_eq!(apns.payload["aps"]["alert"], json!({"title": "Order 42", "body": "Your driver is here"}));
    assert_eq!(apns.payload["order"], 42);
    assert_eq!(
        (apns.topic.as_str(), apns.push_type.as_str(), apns.priority.as_deref()),
        ("com.example.shop", "alert", Some("10"))
    );
    assert_eq!(apns.collapse_id.as_deref(), Some("order-42"));
    let fcm = &s.fcm.received()[0];
    assert_eq!(
        (fcm["token"].as_str(), fcm["notification"]["title"].as_str()),
        (Some("fcm-token-1"), Some("Order 42"))
    );
    assert_eq!(fcm["data"]["order"], "42");
    assert_eq!(fcm["android"]["collapse_key"], "order-42");
    let web = &s.web.received()[0];
    let shown: Value = serde_json::from_slice(&web.plaintext).unwrap();
    assert_eq!((shown["title"].as_str(), shown["data"]["order"].as_i64()), (Some("Order 42"), Some(42)));
    assert_eq!((web.ttl.as_str(), web.topic.as_deref()), ("600", Some("order-42")));
    s.until("each delivery recorded", async || {
        let mut logged = 0;
        for service in ["apns", "fcm", "webpush"] {
            logged += s.store.delivery_log(&s.tenant, &target_id(&s.app, service), 10).await.unwrap().len();
        }
        logged == 3
    })
    .await;
    for service in ["apns", "fcm", "webpush"] {
        let log = s.store.delivery_log(&s.tenant, &target_id(&s.app, service), 10).await.unwrap();
        assert_eq!(
            log.iter().map(|a| a.record.outcome.as_str()).collect::<Vec<_>>(),
            ["delivered"],
            "{service}"
        );
    }
    // Usage counts three pushes, and no webhook request: the webhook quota is not theirs.
    let now = now_ms() / 1000;
    let range = (now - 7200, now + 3600);
    let points = s.store.usage(&s.tenant, None, range, tributary_store::Granularity::Hour).await.unwrap();
    let pushes: i64 = points.iter().map(|p| p.push_deliveries).sum();
    let webhooks: i64 = points.iter().map(|p| p.webhook_requests + p.webhook_events).sum();
    assert_eq!((pushes, webhooks), (3, 0), "{points:?}");
    assert_eq!(s.store.webhook_events_delivered_since(&s.tenant, 0).await.unwrap(), 0);
}

#[tokio::test]
async fn a_dead_token_removes_its_device_and_refused_credentials_stop_the_apps_pushes() {
    let s = setup().await;
    let (gone, alive) = ("cd".repeat(32), "ef".repeat(32));
    let (d1, d2) = (
        s.device(DevicePlatform::Apns, &gone, None).await,
        s.device(DevicePlatform::Apns, &alive, None).await,
    );
    s.apns.unregister(&gone);
    let push = order_push();
    s.queue("apns", &d1, "apns", &gone, None, &push).await;
    s.queue("apns", &d2, "apns", &alive, None, &push).await;
    let apns_target = target_id(&s.app, "apns");
    s.until("both attempted", async || {
        s.store.delivery_log(&s.tenant, &apns_target, 10).await.unwrap().len() == 2
    })
    .await;
    assert!(matches!(s.store.device(&s.tenant, &s.app, &d1).await, Err(StoreError::NotFound(_))), "removed");
    assert!(s.store.device(&s.tenant, &s.app, &d2).await.is_ok(), "the other stays");
    let mut outcomes: Vec<String> = s
        .store
        .delivery_log(&s.tenant, &apns_target, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.record.outcome)
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["delivered", "gone"]);

    // FCM revokes the key: the cached token is refused (retried with a new one), then the grant
    // itself: the app's FCM credentials are disabled, the push dead-lettered, and the next one
    // is dead-lettered without a request.
    let d3 = s.device(DevicePlatform::Fcm, "fcm-token-3", None).await;
    s.queue("fcm", &d3, "fcm", "fcm-token-3", None, &push).await;
    let fcm_target = target_id(&s.app, "fcm");
    s.until("the first FCM push delivered", async || !s.fcm.received().is_empty()).await;
    s.fcm.revoke();
    let second = PushMessage { title: Some("again".into()), ..push.clone() };
    s.queue("fcm", "dev_second", "fcm", "fcm-token-3", None, &second).await;
    s.until("the second FCM push dead-lettered", async || {
        !s.store.dead_deliveries(&s.tenant, &fcm_target, 10).await.unwrap().is_empty()
    })
    .await;
    let (credentials, _) = s.store.push_secret(&s.app, PushService::Fcm).await.unwrap().unwrap();
    assert!(
        credentials.disabled_reason.as_deref().is_some_and(|r| r.contains("invalid_grant")),
        "{credentials:?}"
    );
    let outcomes: Vec<String> = s
        .store
        .delivery_log(&s.tenant, &fcm_target, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.record.outcome)
        .collect();
    assert_eq!(outcomes, ["refused", "retry", "delivered"], "newest first");
    let requests = s.fcm.token_requests();
    s.queue("fcm", "dev_third", "fcm", "fcm-token-3", None, &push).await;
    s.until("the third dead-lettered at once", async || {
        s.store.dead_deliveries(&s.tenant, &fcm_target, 10).await.unwrap().len() == 2
    })
    .await;
    assert_eq!(s.fcm.token_requests(), requests, "no request with refused credentials");
    let dead = s.store.dead_deliveries(&s.tenant, &fcm_target, 10).await.unwrap();
    assert_eq!(dead.len(), 2, "kept, replayable once the credentials are set again");
}

#[tokio::test]
async fn a_job_of_many_devices_keeps_only_those_to_try_again_and_dead_letters_the_refused() {
    let s = setup().await;
    let tokens: Vec<String> = (1..=4).map(|n| format!("{n:02}").repeat(32)).collect();
    let mut devices = Vec::new();
    for token in &tokens {
        let device_id = s.device(DevicePlatform::Apns, token, None).await;
        devices.push(PushDevice { device_id, token: token.clone(), web_keys: None, refused: None });
    }
    let job = PushJob { push_id: "psh_many".into(), platform: "apns".into(), push: order_push(), devices };
    let delivery = NewDelivery {
        tenant_id: s.tenant.clone(),
        app_id: s.app.clone(),
        target_id: target_id(&s.app, "apns"),
        event_id: "psh_many:first".into(),
        payload: serde_json::to_vec(&job).unwrap(),
        headers: "{}".into(),
        events: 4,
    };
    // Of the first attempt's four requests, one is throttled and one refused.
    s.apns.answer_next(429, "TooManyRequests", Some(0));
    s.apns.answer_next(400, "BadTopic", None);
    assert!(s.store.enqueue_delivery(&delivery, now_ms()).await.unwrap());
    let target = target_id(&s.app, "apns");
    s.until("the job dead-lettered", async || {
        !s.store.dead_deliveries(&s.tenant, &target, 10).await.unwrap().is_empty()
    })
    .await;
    let log = s.store.delivery_log(&s.tenant, &target, 10).await.unwrap();
    let lines: Vec<(&str, &str)> =
        log.iter().map(|a| (a.record.outcome.as_str(), a.record.snippet.as_str())).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1].0, "retry");
    assert!(
        lines[1].1.starts_with("2 delivered, 0 removed (dead tokens), 1 to retry, 1 refused"),
        "{lines:?}"
    );
    assert!(
        lines[1].1.contains("429 TooManyRequests") || lines[1].1.contains("TooManyRequests"),
        "{lines:?}"
    );
    assert_eq!(lines[0].0, "dead");
    assert!(
        lines[0].1.starts_with("1 delivered, 0 removed (dead tokens), 0 to retry, 0 refused"),
        "{lines:?}"
    );
    // The dead letter holds the refused device alone, with why.
    let dead = s.store.dead_deliveries(&s.tenant, &target, 10).await.unwrap();
    let kept = PushJob::read(&dead[0].payload, &dead[0].event_id).unwrap();
    assert_eq!(kept.devices.len(), 1);
    assert_eq!(kept.devices[0].refused.as_deref(), Some("400 BadTopic"));
    let mut reached: Vec<String> = s.apns.received().into_iter().map(|r| r.device_token).collect();
    reached.sort();
    assert_eq!(reached.len(), 3, "each device delivered once: {reached:?}");
    assert!(!reached.contains(&kept.devices[0].token));

    // Replayed (the app's topic fixed, say), the refused device is sent again.
    s.store.replay_delivery(&s.tenant, &dead[0].id, now_ms()).await.unwrap();
    s.until("the replay delivered", async || s.apns.received().len() == 4).await;
    let mut reached: Vec<String> = s.apns.received().into_iter().map(|r| r.device_token).collect();
    reached.sort();
    assert_eq!(reached, tokens, "every device once");
    let now = now_ms() / 1000;
    let points = s
        .store
        .usage(&s.tenant, None, (now - 7200, now + 3600), tributary_store::Granularity::Hour)
        .await
        .unwrap();
    assert_eq!(points.iter().map(|p| p.push_deliveries).sum::<i64>(), 4, "usage counts devices reached");
}
