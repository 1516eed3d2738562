//! Texts and the tenants' SMS quota, on both backends.

use tributary_store::{LimitOverrides, NewDelivery, NewSms, SmsAdmission};

use crate::{TestDb, actor};

/// 2026-12-07 12:00:30 UTC, in milliseconds.
const NOW: i64 = 1_796_644_830_000;

fn text(tenant: &str, app: &str, id: &str, segments: i64) -> (NewSms, NewDelivery) {
    let sms = NewSms {
        id: id.into(),
        tenant_id: tenant.into(),
        app_id: app.into(),
        to: "+14155550100".into(),
        segments,
        origin: "api".into(),
    };
    let delivery = NewDelivery {
        tenant_id: tenant.into(),
        app_id: app.into(),
        target_id: format!("sms:{app}"),
        event_id: id.into(),
        events: 1,
        payload: b"{}".to_vec(),
        headers: "{}".into(),
    };
    (sms, delivery)
}

async fn limit(db: &TestDb, tenant: &str, segments: i64, per_minute: i64) {
    let overrides = LimitOverrides {
        max_sms_segments_per_month: Some(segments),
        max_sms_per_minute: Some(per_minute),
        ..LimitOverrides::default()
    };
    db.store.set_tenant_limits(&actor(), tenant, &overrides).await.expect("limits set");
}

#[tokio::test]
async fn texts_queued_at_once_never_take_more_than_the_quota() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("shop").await;
        limit(&db, &tenant.id, 10, 0).await;
        let attempts = (0..30).map(|n| {
            let store = db.store.clone();
            let (sms, delivery) = text(&tenant.id, &app.id, &format!("sms_{n:02}"), 1);
            tokio::spawn(async move { store.queue_sms(&sms, &delivery, NOW).await.unwrap() })
        });
        let mut admitted = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                SmsAdmission::Admitted => admitted += 1,
                SmsAdmission::OverMonthlyQuota { limit } => assert_eq!(limit, 10),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(admitted, 10, "{}", db.url);
        assert_eq!(db.count("SELECT COUNT(*) FROM sms_messages").await, 10, "refused texts are not recorded");
        assert_eq!(db.count("SELECT COUNT(*) FROM delivery_jobs").await, 10, "nor queued");
        // The same text again is a duplicate: nothing taken, nothing queued.
        let (sms, delivery) = text(&tenant.id, &app.id, "sms_00", 1);
        assert_eq!(db.store.queue_sms(&sms, &delivery, NOW).await.unwrap(), SmsAdmission::Duplicate);
        // A node whose clock is a month behind counts in the current month, never resets it.
        let (sms, delivery) = text(&tenant.id, &app.id, "sms_late", 1);
        assert_eq!(
            db.store.queue_sms(&sms, &delivery, NOW - 31 * 86_400_000).await.unwrap(),
            SmsAdmission::OverMonthlyQuota { limit: 10 }
        );
        // A new month starts with the whole quota.
        let next_month = NOW + 31 * 86_400_000;
        let (sms, delivery) = text(&tenant.id, &app.id, "sms_next", 10);
        assert_eq!(db.store.queue_sms(&sms, &delivery, next_month).await.unwrap(), SmsAdmission::Admitted);
    }
}

#[tokio::test]
async fn the_rate_counts_texts_per_minute_and_says_when_the_next_one_starts() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("shop").await;
        limit(&db, &tenant.id, 0, 2).await;
        for n in 0..2 {
            let (sms, delivery) = text(&tenant.id, &app.id, &format!("sms_{n}"), 5);
            assert_eq!(db.store.queue_sms(&sms, &delivery, NOW).await.unwrap(), SmsAdmission::Admitted);
        }
        let (sms, delivery) = text(&tenant.id, &app.id, "sms_2", 1);
        assert_eq!(
            db.store.queue_sms(&sms, &delivery, NOW).await.unwrap(),
            SmsAdmission::OverRate { limit: 2, retry_after_secs: 30 }
        );
        assert_eq!(db.store.queue_sms(&sms, &delivery, NOW + 30_000).await.unwrap(), SmsAdmission::Admitted);
    }
}

#[tokio::test]
async fn a_rules_text_is_charged_once_and_again_only_when_replayed_after_its_quota_refused_it() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("shop").await;
        limit(&db, &tenant.id, 3, 0).await;
        let (mut sms, _) = text(&tenant.id, &app.id, "sms_rule_1", 2);
        sms.origin = "rul_1".into();
        assert_eq!(db.store.admit_sms(&sms, NOW).await.unwrap(), SmsAdmission::Admitted);
        // Retried (Twilio was down): admitted without being charged again.
        assert_eq!(db.store.admit_sms(&sms, NOW).await.unwrap(), SmsAdmission::Admitted);
        let (mut second, _) = text(&tenant.id, &app.id, "sms_rule_2", 2);
        second.origin = "rul_1".into();
        assert_eq!(
            db.store.admit_sms(&second, NOW).await.unwrap(),
            SmsAdmission::OverMonthlyQuota { limit: 3 }
        );
        let refused = db.store.sms_message(&tenant.id, &app.id, "sms_rule_2").await.unwrap();
        assert_eq!(
            (refused.status.as_str(), refused.error_code.as_deref()),
            ("refused", Some("over_monthly_quota"))
        );
        // The quota is raised and the dead letter replayed: admitted now.
        limit(&db, &tenant.id, 10, 0).await;
        assert_eq!(db.store.admit_sms(&second, NOW).await.unwrap(), SmsAdmission::Admitted);
        let admitted = db.store.sms_message(&tenant.id, &app.id, "sms_rule_2").await.unwrap();
        assert_eq!((admitted.status.as_str(), admitted.error_code), ("pending", None));

        // Twilio took the first one, and its attempt was not recorded: not sent again.
        db.store.sms_sent(&tenant.id, &app.id, "sms_rule_1", "SM1", 2, "queued", NOW).await.unwrap();
        assert_eq!(db.store.admit_sms(&sms, NOW).await.unwrap(), SmsAdmission::AlreadySent);
        // One Twilio refused, replayed: pending again, its quota not taken twice, and what
        // Twilio answers then is recorded.
        let (mut third, _) = text(&tenant.id, &app.id, "sms_rule_3", 1);
        third.origin = "rul_1".into();
        assert_eq!(db.store.admit_sms(&third, NOW).await.unwrap(), SmsAdmission::Admitted);
        db.store.sms_refused(&tenant.id, &app.id, "sms_rule_3", "credentials_refused", NOW).await.unwrap();
        limit(&db, &tenant.id, 5, 0).await; // 2 + 2 + 1 taken: nothing left
        assert_eq!(db.store.admit_sms(&third, NOW).await.unwrap(), SmsAdmission::Admitted);
        db.store.sms_sent(&tenant.id, &app.id, "sms_rule_3", "SM3", 1, "queued", NOW).await.unwrap();
        let sent = db.store.sms_message(&tenant.id, &app.id, "sms_rule_3").await.unwrap();
        assert_eq!((sent.status.as_str(), sent.sid.as_deref()), ("queued", Some("SM3")));
    }
}

#[tokio::test]
async fn statuses_only_move_forward_and_only_for_the_texts_sid() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("shop").await;
        let (sms, delivery) = text(&tenant.id, &app.id, "sms_1", 1);
        db.store.queue_sms(&sms, &delivery, NOW).await.unwrap();
        db.store.sms_sent(&tenant.id, &app.id, "sms_1", "SM1", 2, "queued", NOW + 1).await.unwrap();
        let status = |s: &str| s.to_owned();
        let now = || async { db.store.sms_message(&tenant.id, &app.id, "sms_1").await.unwrap() };
        assert_eq!(
            (now().await.status, now().await.segments, now().await.sid),
            (status("queued"), 2, Some("SM1".into()))
        );
        assert!(
            db.store
                .sms_status(&tenant.id, &app.id, "sms_1", "SM1", "delivered", None, NOW + 3)
                .await
                .unwrap()
        );
        // Twilio's callbacks arrive out of order: a late `sent` does not move it back.
        assert!(
            db.store.sms_status(&tenant.id, &app.id, "sms_1", "SM1", "sent", None, NOW + 4).await.unwrap()
        );
        assert_eq!(now().await.status, "delivered");
        assert!(
            db.store.sms_status(&tenant.id, &app.id, "sms_1", "SM1", "read", None, NOW + 5).await.unwrap()
        );
        assert_eq!(now().await.status, "read");
        // Another SID, another app, an unknown text: not this text's.
        assert!(
            !db.store
                .sms_status(&tenant.id, &app.id, "sms_1", "SM2", "failed", Some("30003"), NOW)
                .await
                .unwrap()
        );
        let (other_tenant, other) = db.tenant_with_app("other").await;
        assert!(
            !db.store.sms_status(&tenant.id, &other.id, "sms_1", "SM1", "failed", None, NOW).await.unwrap()
        );
        // Another tenant names the app and the text: neither read nor moved.
        assert!(
            !db.store
                .sms_status(&other_tenant.id, &app.id, "sms_1", "SM1", "failed", None, NOW)
                .await
                .unwrap()
        );
        assert!(db.store.sms_message(&other_tenant.id, &app.id, "sms_1").await.is_err());
        assert!(
            !db.store.sms_status(&tenant.id, &app.id, "sms_9", "SM1", "failed", None, NOW).await.unwrap()
        );
        assert_eq!(now().await.status, "read");
        // Listed newest first, in the tenant's app only.
        let (sms, delivery) = text(&tenant.id, &app.id, "sms_2", 1);
        db.store.queue_sms(&sms, &delivery, NOW + 10).await.unwrap();
        db.store.sms_refused(&other_tenant.id, &app.id, "sms_2", "forged", NOW + 11).await.unwrap();
        assert_eq!(db.store.sms_message(&tenant.id, &app.id, "sms_2").await.unwrap().status, "pending");
        let listed = db.store.sms_messages(&tenant.id, &app.id, None, 10).await.unwrap();
        assert_eq!(listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["sms_2", "sms_1"]);
        assert!(db.store.sms_messages(&tenant.id, &other.id, None, 10).await.unwrap().is_empty());
        // Pages of texts made in the same millisecond lose none.
        for n in 3..7 {
            let (sms, delivery) = text(&tenant.id, &app.id, &format!("sms_{n}"), 1);
            db.store.queue_sms(&sms, &delivery, NOW + 20).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut before: Option<(i64, String)> = None;
        loop {
            let cursor = before.as_ref().map(|(ms, id)| (*ms, id.as_str()));
            let page = db.store.sms_messages(&tenant.id, &app.id, cursor, 2).await.unwrap();
            let Some(last) = page.last() else { break };
            before = Some((last.created_ms, last.id.clone()));
            seen.extend(page.iter().map(|t| t.id.clone()));
        }
        assert_eq!(seen, ["sms_6", "sms_5", "sms_4", "sms_3", "sms_2", "sms_1"]);
    }
}
