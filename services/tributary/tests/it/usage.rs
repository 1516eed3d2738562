//! Usage metering: relay nodes count per app per minute, flush to the store, and tenants read
//! the totals as a time series; nothing is counted twice.

use std::time::Duration;

use serde_json::{Value, json};
use tributary_testkit::{TestServer, eventually};

/// Reads the development tenant's usage (per hour, so one point) as the operator.
async fn usage(node: &TestServer, query: &str) -> (u16, Value) {
    let path = format!("/v1/tenants/{}/usage?granularity=hour{query}", node.tenant_id());
    node.manage("GET", &path, node.operator_token(), None).await
}

#[tokio::test]
async fn two_nodes_count_publishes_deliveries_and_connections_once() {
    let redis = std::env::var("TRIBUTARY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nodes = TestServer::spawn_nodes_on_database(
        &tributary_testkit::fresh_postgres_database().await,
        &redis,
        2,
        |config| config.relay.usage_flush_secs = 1,
    )
    .await;
    let (first, second) = (&nodes[0], &nodes[1]);
    // Three subscribers: two on the first node, one on the second, all of the first node's app.
    let token = first.all_rights("reader").await;
    let mut subscribers = vec![first.ws(&token).await, first.ws(&token).await, second.ws(&token).await];
    for ws in &mut subscribers {
        ws.request(json!({"op": "subscribe", "channel": "metered"})).await.unwrap();
    }
    for n in 0..10 {
        first.publish("metered", json!(format!("message-{n}"))).await; // 11 bytes of JSON each
    }
    // A retried publish with the same idempotency key is stored once and counted once.
    for _ in 0..2 {
        let (status, _) =
            first.post("/v1/channels/metered/messages", &json!({"data": "once-only"}), Some("retry-1")).await;
        assert_eq!(status, 200);
    }
    for ws in &mut subscribers {
        assert_eq!(ws.messages(11).await.unwrap().len(), 11);
    }

    // Summed over the series' points: a run that crosses the hour has two.
    eventually("both nodes flushed their counts", Duration::from_secs(5), || async {
        let (_, series) = usage(first, "").await;
        (total(&series, "messages_published"), total(&series, "messages_delivered")) == (11, 33)
    })
    .await
    .unwrap();
    let (status, series) = usage(first, "").await;
    assert_eq!(status, 200, "{series}");
    let payload_bytes = 10 * r#""message-0""#.len() as i64 + r#""once-only""#.len() as i64;
    assert_eq!(total(&series, "bytes_published"), payload_bytes, "{series}");
    assert_eq!(total(&series, "bytes_delivered"), 3 * payload_bytes, "{series}");
    let peak =
        series["points"].as_array().unwrap().iter().filter_map(|p| p["peak_connections"].as_i64()).max();
    assert!(peak >= Some(3), "{series}");
    // Later flushes (every second) add connection time but never count a message again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, again) = usage(first, "").await;
    assert_eq!(
        (total(&again, "messages_published"), total(&again, "messages_delivered")),
        (11, 33),
        "{again}"
    );

    // One app's series, and the per-minute view, agree.
    let (_, minutes) = usage(first, &format!("&app_id={}", first.app_id())).await;
    assert_eq!(total(&minutes, "messages_published"), 11, "{minutes}");
    // Bad parameters are refused.
    for bad in ["&granularity=week", "&from=10&to=5", "&from=abc", "&app_id=app_nope"] {
        let (status, reply) = usage(first, bad).await;
        assert!(status == 400 || status == 404, "{bad}: {status} {reply}");
    }
}

/// Sums `field` over every point of a usage series.
fn total(series: &serde_json::Value, field: &str) -> i64 {
    series["points"].as_array().map_or(0, |points| points.iter().filter_map(|p| p[field].as_i64()).sum())
}
