//! Usage rows: applied once per batch number, added up per minute over nodes, read as series.

use tributary_store::{Granularity, UsageRow};

use crate::TestDb;

fn row(app_id: &str, minute: i64, published: i64, peak: i64) -> UsageRow {
    UsageRow {
        app_id: app_id.to_owned(),
        minute,
        messages_published: published,
        messages_delivered: published * 3,
        bytes_published: published * 10,
        bytes_delivered: published * 30,
        peak_connections: peak,
        connection_seconds: peak * 60,
    }
}

#[tokio::test]
async fn a_batch_is_applied_once_and_nodes_add_up() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let minute = 1_800_000_000; // a multiple of 60
        assert!(db.store.record_usage("node_a", 1, &[row(&app.id, minute, 5, 4)]).await.unwrap());
        assert!(!db.store.record_usage("node_a", 1, &[row(&app.id, minute, 5, 4)]).await.unwrap(), "a retry");
        assert!(db.store.record_usage("node_a", 2, &[row(&app.id, minute, 1, 2)]).await.unwrap());
        assert!(db.store.record_usage("node_b", 1, &[row(&app.id, minute, 2, 3)]).await.unwrap());
        assert!(db.store.record_usage("node_b", 2, &[row(&app.id, minute + 60, 7, 1)]).await.unwrap());
        // Rows of apps that do not exist (or cannot) are skipped, the batch still applies.
        assert!(
            db.store
                .record_usage("node_c", 1, &[row("app_nope", minute, 9, 9), row("x\0", minute, 1, 1)])
                .await
                .unwrap()
        );

        let points =
            db.store.usage(&tenant.id, None, (minute, minute + 120), Granularity::Minute).await.unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(
            (points[0].start, points[0].messages_published, points[0].messages_delivered),
            (minute, 8, 24)
        );
        // Node a peaked at 4 (max of its flushes), node b at 3: the minute's peak is 7.
        assert_eq!(points[0].peak_connections, 7);
        assert_eq!(points[0].connection_minutes, 4 + 2 + 3);
        assert_eq!(points[1].messages_published, 7);
        let hours = db
            .store
            .usage(&tenant.id, None, (minute - 3600, minute + 3600), Granularity::Hour)
            .await
            .unwrap();
        let total: i64 = hours.iter().map(|p| p.messages_published).sum();
        assert_eq!(total, 15);
        assert_eq!(db.store.messages_published_since(&tenant.id, minute).await.unwrap(), 15);
        assert_eq!(db.store.messages_published_since(&tenant.id, minute + 60).await.unwrap(), 7);
        // Another tenant sees none of it, and one app's series is that app's.
        let (other, other_app) = db.tenant_with_app("else").await;
        assert!(
            db.store.usage(&other.id, None, (0, i64::MAX / 2), Granularity::Day).await.unwrap().is_empty()
        );
        assert!(
            db.store
                .usage(&tenant.id, Some(&other_app.id), (0, i64::MAX / 2), Granularity::Day)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            db.store.purge_usage_flushes(-10).await.unwrap(),
            5,
            "every flush record is older than now + 10 s"
        );
    }
}
