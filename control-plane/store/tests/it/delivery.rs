//! The delivery queue on both backends: one job per event and target, leases that keep two
//! workers off one job and give a dead worker's jobs to another, a per-target cap that keeps a
//! dead endpoint's backlog from blocking the rest, retries, dead letters and replay, and the
//! tenant's scope.

use tributary_store::{AfterAttempt, AttemptRecord, DeliveryState, NewDelivery, StoreError};

use crate::TestDb;

fn event(tenant: &str, app: &str, target: &str, n: u32) -> NewDelivery {
    NewDelivery {
        tenant_id: tenant.into(),
        app_id: app.into(),
        target_id: target.into(),
        event_id: format!("evt_{n}"),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
        headers: "{}".into(),
        events: 1,
    }
}

fn attempt(at_ms: i64, outcome: &str) -> AttemptRecord {
    AttemptRecord {
        at_ms,
        status: Some(503),
        latency_ms: 12,
        outcome: outcome.into(),
        snippet: "down".into(),
    }
}

#[tokio::test]
async fn an_event_is_queued_once_per_target_and_only_in_its_own_tenant() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let (other, _) = db.tenant_with_app("elsewhere").await;
        assert!(db.store.enqueue_delivery(&event(&tenant.id, &app.id, "wh_a", 1), 1_000).await.unwrap());
        assert!(!db.store.enqueue_delivery(&event(&tenant.id, &app.id, "wh_a", 1), 2_000).await.unwrap());
        assert!(db.store.enqueue_delivery(&event(&tenant.id, &app.id, "wh_b", 1), 1_000).await.unwrap());
        let foreign = db.store.enqueue_delivery(&event(&other.id, &app.id, "wh_c", 1), 1_000).await;
        assert!(matches!(foreign, Err(StoreError::NotFound("app"))), "{foreign:?}");
        let claimed = db.store.claim_deliveries("w1", 1_000, 31_000, 10, 10, "").await.unwrap();
        assert_eq!(claimed.len(), 2, "one job per target and event");
        assert_eq!(claimed[0].payload, b"{\"n\":1}");
        assert!(matches!(db.store.delivery(&other.id, &claimed[0].id).await, Err(StoreError::NotFound(_))));
    }
}

#[tokio::test]
async fn a_leased_job_is_nobody_elses_until_its_lease_runs_out() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        for n in 0..6 {
            db.store
                .enqueue_delivery(&event(&tenant.id, &app.id, &format!("wh_{n}"), n), 1_000)
                .await
                .unwrap();
        }
        // Two workers claim at once, then w1 claims what is left: every job goes to exactly one
        // of them (a claim that loses a race for a row skips it and may come back with fewer).
        let (a, b) = tokio::join!(
            db.store.claim_deliveries("w1", 1_000, 31_000, 4, 10, ""),
            db.store.claim_deliveries("w2", 1_000, 31_000, 4, 10, "")
        );
        let (mut a, b) = (a.unwrap(), b.unwrap());
        a.extend(db.store.claim_deliveries("w1", 1_000, 31_000, 10, 10, "").await.unwrap());
        let mut ids: Vec<&str> = a.iter().chain(&b).map(|j| j.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!((ids.len(), a.len() + b.len()), (6, 6), "six jobs, none twice");
        let (owner, held) = if a.is_empty() { ("w2", &b) } else { ("w1", &a) };
        // Both are killed. Before their leases run out nobody takes their jobs; after, w3 does,
        // and a late finish is refused.
        assert!(db.store.claim_deliveries("w3", 20_000, 50_000, 10, 10, "").await.unwrap().is_empty());
        let taken = db.store.claim_deliveries("w3", 31_001, 61_000, 10, 10, "").await.unwrap();
        assert_eq!(taken.len(), 6, "every lease ran out");
        let late = attempt(31_500, "delivered");
        let late = db
            .store
            .finish_delivery_attempt(&held[0].id, owner, &late, AfterAttempt::Delivered)
            .await
            .unwrap();
        assert!(!late, "the old owner no longer holds it");
        let done = attempt(31_600, "delivered");
        let done = db
            .store
            .finish_delivery_attempt(&held[0].id, "w3", &done, AfterAttempt::Delivered)
            .await
            .unwrap();
        assert!(done);
        let job = db.store.delivery(&tenant.id, &held[0].id).await.unwrap();
        assert_eq!((job.state, job.attempts), (DeliveryState::Delivered, 1));
        assert!(
            db.store
                .claim_deliveries("w4", 70_000, 99_000, 10, 10, "")
                .await
                .unwrap()
                .iter()
                .all(|j| j.id != held[0].id)
        );
    }
}

#[tokio::test]
async fn a_dead_endpoints_backlog_does_not_hold_back_other_targets() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        for n in 0..50 {
            db.store
                .enqueue_delivery(&event(&tenant.id, &app.id, "wh_dead", n), 1_000 + i64::from(n))
                .await
                .unwrap();
        }
        db.store.enqueue_delivery(&event(&tenant.id, &app.id, "wh_live", 99), 5_000).await.unwrap();
        let first = db.store.claim_deliveries("w1", 10_000, 40_000, 10, 2, "").await.unwrap();
        let dead = first.iter().filter(|j| j.target_id == "wh_dead").count();
        assert_eq!(dead, 2, "two of the dead endpoint's fifty");
        assert!(
            first.iter().any(|j| j.target_id == "wh_live"),
            "and the other target's job, though due later"
        );
        // Its two are still in flight: a second claim takes none of its jobs.
        let second = db.store.claim_deliveries("w2", 10_000, 40_000, 10, 2, "").await.unwrap();
        assert!(second.is_empty(), "{second:?}");
    }
}

#[tokio::test]
async fn retries_wait_their_turn_the_last_attempt_dead_letters_and_a_replay_starts_over() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        db.store.enqueue_delivery(&event(&tenant.id, &app.id, "wh_a", 1), 1_000).await.unwrap();
        let job = db.store.claim_deliveries("w1", 1_000, 31_000, 10, 10, "").await.unwrap().remove(0);
        let retried = attempt(1_100, "retry");
        let retried = db
            .store
            .finish_delivery_attempt(&job.id, "w1", &retried, AfterAttempt::RetryAt(6_000))
            .await
            .unwrap();
        assert!(retried);
        assert!(
            db.store.claim_deliveries("w1", 5_999, 40_000, 10, 10, "").await.unwrap().is_empty(),
            "not due yet"
        );
        let again = db.store.claim_deliveries("w1", 6_000, 40_000, 10, 10, "").await.unwrap().remove(0);
        assert_eq!((again.id.as_str(), again.tries), (job.id.as_str(), 1));
        let long = "é".repeat(5_000);
        let last = AttemptRecord { snippet: long, ..attempt(6_100, "dead") };
        assert!(db.store.finish_delivery_attempt(&job.id, "w1", &last, AfterAttempt::Dead).await.unwrap());
        assert!(
            db.store.claim_deliveries("w1", 99_000, 130_000, 10, 10, "").await.unwrap().is_empty(),
            "dead is not due"
        );
        let dead = db.store.dead_deliveries(&tenant.id, "wh_a", 10).await.unwrap();
        assert_eq!(
            dead.iter().map(|j| (j.event_id.as_str(), j.attempts)).collect::<Vec<_>>(),
            [("evt_1", 2)]
        );

        let log = db.store.delivery_log(&tenant.id, "wh_a", 10).await.unwrap();
        assert_eq!(
            log.iter().map(|a| (a.attempt, a.record.outcome.as_str())).collect::<Vec<_>>(),
            [(2, "dead"), (1, "retry")]
        );
        assert!(log[0].record.snippet.len() <= 4096 && log[0].record.snippet.chars().all(|c| c == 'é'));

        let (other, _) = db.tenant_with_app("elsewhere").await;
        assert!(matches!(
            db.store.replay_delivery(&other.id, &job.id, 100_000).await,
            Err(StoreError::NotFound(_))
        ));
        db.store.replay_delivery(&tenant.id, &job.id, 100_000).await.unwrap();
        assert!(
            matches!(
                db.store.replay_delivery(&tenant.id, &job.id, 100_000).await,
                Err(StoreError::NotFound(_))
            ),
            "once"
        );
        let replayed = db.store.claim_deliveries("w2", 100_000, 130_000, 10, 10, "").await.unwrap().remove(0);
        assert_eq!(
            (replayed.event_id.as_str(), replayed.tries, replayed.attempts),
            ("evt_1", 0, 2),
            "same event, fresh schedule"
        );
    }
}

#[tokio::test]
async fn delivered_jobs_are_purged_after_their_time_but_dead_letters_and_pending_jobs_stay() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        for n in 0..3 {
            db.store.enqueue_delivery(&event(&tenant.id, &app.id, "wh_a", n), 1_000).await.unwrap();
        }
        let jobs = db.store.claim_deliveries("w1", 1_000, 31_000, 10, 10, "").await.unwrap();
        db.store
            .finish_delivery_attempt(&jobs[0].id, "w1", &attempt(2_000, "delivered"), AfterAttempt::Delivered)
            .await
            .unwrap();
        db.store
            .finish_delivery_attempt(&jobs[1].id, "w1", &attempt(2_000, "dead"), AfterAttempt::Dead)
            .await
            .unwrap();
        assert_eq!(db.store.purge_delivered(2_000).await.unwrap(), 0, "not old enough yet");
        assert_eq!(db.store.purge_delivered(2_001).await.unwrap(), 1);
        assert!(matches!(db.store.delivery(&tenant.id, &jobs[0].id).await, Err(StoreError::NotFound(_))));
        assert_eq!(db.store.delivery(&tenant.id, &jobs[1].id).await.unwrap().state, DeliveryState::Dead);
        assert_eq!(db.store.delivery(&tenant.id, &jobs[2].id).await.unwrap().state, DeliveryState::Pending);
        assert_eq!(
            db.count("SELECT COUNT(*) FROM delivery_attempts").await,
            1,
            "the purged job's log went with it"
        );
        assert_eq!(
            db.count("SELECT COUNT(*) FROM delivery_bodies").await,
            2,
            "the delivered body went first"
        );
    }
}

#[tokio::test]
async fn a_delivered_body_goes_with_its_delivery_and_no_other_body_does() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        for n in 0..4 {
            db.store.enqueue_delivery(&event(&tenant.id, &app.id, "wh_a", n), 1_000).await.unwrap();
        }
        let jobs = db.store.claim_deliveries("w1", 1_000, 31_000, 10, 10, "").await.unwrap();
        assert!(jobs.iter().all(|job| job.body_kept && !job.payload.is_empty()), "{jobs:?}");
        let finish = |n: usize, after: AfterAttempt| {
            tributary_store::FinishedAttempt::new(&jobs[n].id, attempt(2_000, "delivered"), after)
        };
        let finished = [
            finish(0, AfterAttempt::Delivered),
            finish(1, AfterAttempt::RetryAt(9_000)),
            finish(2, AfterAttempt::Dead),
        ];
        db.store.finish_delivery_attempts("w1", &finished).await.unwrap();
        let kept = |job: tributary_store::DeliveryJob| (job.state, job.body_kept, job.payload.is_empty());
        let read = async |n: usize| kept(db.store.delivery(&tenant.id, &jobs[n].id).await.unwrap());
        assert_eq!(
            read(0).await,
            (DeliveryState::Delivered, false, true),
            "the record stays, without its body"
        );
        assert_eq!(read(1).await, (DeliveryState::Pending, true, false), "a retried request keeps its body");
        assert_eq!(
            read(2).await,
            (DeliveryState::Dead, true, false),
            "a dead letter keeps its body for replay"
        );
        assert_eq!(db.count("SELECT COUNT(*) FROM delivery_bodies").await, 3);
        assert_eq!(db.count("SELECT COUNT(*) FROM delivery_attempts").await, 3, "every attempt stays logged");
        // The jobs due again (the retried one, and the one whose lease ran out) are claimed with
        // their bodies.
        let again = db.store.claim_deliveries("w2", 40_000, 70_000, 10, 10, "").await.unwrap();
        let again: Vec<(&str, bool, bool)> =
            again.iter().map(|job| (job.id.as_str(), job.body_kept, job.payload.is_empty())).collect();
        assert_eq!(again, [(jobs[3].id.as_str(), true, false), (jobs[1].id.as_str(), true, false)]);
    }
}

#[tokio::test]
async fn delivered_webhooks_are_counted_in_usage_once_with_their_events() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        for n in 0..3 {
            let mut batch = event(&tenant.id, &app.id, "wh_a", n);
            batch.events = 10;
            db.store.enqueue_delivery(&batch, 1_000).await.unwrap();
        }
        let jobs = db.store.claim_deliveries("w1", 1_000, 31_000, 10, 10, "").await.unwrap();
        let at = 1_800_000_000_000; // a minute's start (ms) the usage reads back in seconds
        let finished: Vec<tributary_store::FinishedAttempt> = vec![
            tributary_store::FinishedAttempt::new(
                &jobs[0].id,
                attempt(at, "delivered"),
                AfterAttempt::Delivered,
            ),
            tributary_store::FinishedAttempt::new(
                &jobs[1].id,
                attempt(at, "delivered"),
                AfterAttempt::Delivered,
            ),
            tributary_store::FinishedAttempt::new(
                &jobs[2].id,
                attempt(at, "retry"),
                AfterAttempt::RetryAt(at + 5_000),
            ),
        ];
        db.store.finish_delivery_attempts("w1", &finished).await.unwrap();
        // Recorded again by a worker that lost the jobs: refused, and not counted twice.
        assert_eq!(db.store.finish_delivery_attempts("w1", &finished[..2]).await.unwrap(), [false, false]);
        let minute = at / 1000;
        let points = db
            .store
            .usage(&tenant.id, None, (minute - 60, minute + 60), tributary_store::Granularity::Hour)
            .await
            .unwrap();
        assert_eq!(points.len(), 1, "{points:?}");
        assert_eq!((points[0].webhook_requests, points[0].webhook_events), (2, 20), "the retry is not usage");
        let (other, _) = db.tenant_with_app("elsewhere").await;
        assert!(
            db.store
                .usage(&other.id, None, (minute - 60, minute + 60), tributary_store::Granularity::Hour)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
