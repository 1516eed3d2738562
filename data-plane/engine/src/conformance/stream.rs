//! Cases of publishing, offsets, history and idempotency.

#[allow(unused_imports)]
use super::*;

/// Offsets start at 1 and increase by one per publish; the epoch stays the same.
pub async fn offsets_increase_within_one_epoch(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:offsets");
    let mut epoch = None;
    for n in 1..=5 {
        let out = engine.publish(&key, json(n), &opts(10)).await.unwrap();
        assert_eq!(out.offset, n);
        assert!(!out.duplicate);
        let e = epoch.get_or_insert_with(|| out.epoch.clone());
        assert_eq!(*e, out.epoch);
    }
}

/// Concurrent publishers on one channel: the sink sees every offset once, in order.
pub async fn delivery_is_ordered_and_complete_under_concurrency(engine: Arc<dyn Engine>) {
    let sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:concurrent");
    engine.subscribe(&key).await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let engine = engine.clone();
            let key = key.clone();
            tokio::spawn(async move {
                for n in 0..50 {
                    engine.publish(&key, json(t * 100 + n), &opts(1000)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    eventually("200 publications delivered", || sink.offsets(&key).len() >= 200).await;
    assert_eq!(sink.offsets(&key), (1..=200).collect::<Vec<_>>());
}

/// History reads forwards and backwards from an offset, with a limit.
pub async fn history_reads_both_ways_with_limits(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:history");
    for n in 1..=10 {
        engine.publish(&key, json(n), &opts(100)).await.unwrap();
    }
    let offsets = |page: crate::HistoryPage| page.publications.iter().map(|p| p.offset).collect::<Vec<_>>();
    let page = engine.history(&key, forward(Some(3), 4), stream(100)).await.unwrap();
    assert_eq!(page.top_offset, 10);
    assert_eq!(offsets(page), vec![4, 5, 6, 7]);
    let all = engine.history(&key, forward(None, 100), stream(100)).await.unwrap();
    assert_eq!(offsets(all), (1..=10).collect::<Vec<_>>());
    let back = HistoryQuery { since: Some(8), direction: Direction::Backward, limit: 3 };
    assert_eq!(offsets(engine.history(&key, back, stream(100)).await.unwrap()), vec![7, 6, 5]);
    let newest = HistoryQuery { since: None, direction: Direction::Backward, limit: 2 };
    assert_eq!(offsets(engine.history(&key, newest, stream(100)).await.unwrap()), vec![10, 9]);
}

/// History keeps only the newest `history_size` messages; offsets keep counting.
pub async fn history_is_trimmed_to_its_size(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:trim");
    for n in 1..=5 {
        engine.publish(&key, json(n), &opts(3)).await.unwrap();
    }
    let page = engine.history(&key, forward(None, 100), stream(3)).await.unwrap();
    assert_eq!(page.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(page.oldest_offset, Some(3));
    assert!(page.covers(&page.epoch, 2), "offset 2 is followed by 3, still in history");
    assert!(!page.covers(&page.epoch, 1), "offset 2 was trimmed");
    assert!(!page.covers("another-epoch", 4));
}

/// Messages older than the TTL leave history.
pub async fn history_expires_after_its_ttl(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:ttl");
    let short = StreamOptions { history_size: 10, history_ttl: Duration::from_millis(300) };
    let options = PublishOptions { stream: short, ..opts(10) };
    engine.publish(&key, json(1), &options).await.unwrap();
    let page = engine.history(&key, forward(None, 10), short).await.unwrap();
    assert_eq!(page.publications.len(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let page = engine.history(&key, forward(None, 10), short).await.unwrap();
        if page.publications.is_empty() {
            assert_eq!(page.top_offset, 1, "expiry does not rewind offsets");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "message never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A retried publish with the same idempotency key is stored and delivered once.
pub async fn idempotent_retry_is_stored_once(engine: Arc<dyn Engine>) {
    let sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:idem");
    engine.subscribe(&key).await.unwrap();
    let mut options = opts(10);
    options.idempotency_key = Some("order-42".into());
    let first = engine.publish(&key, json(1), &options).await.unwrap();
    let retry = engine.publish(&key, json(1), &options).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.offset, retry.ts_ms), (first.offset, first.ts_ms));
    assert_eq!(retry.epoch, first.epoch);
    let other = engine.publish(&unique_key("chat:idem-other"), json(1), &options).await.unwrap();
    assert!(!other.duplicate, "keys are scoped per channel");
    engine.publish(&key, json(2), &opts(10)).await.unwrap();
    eventually("second message delivered", || sink.offsets(&key).len() >= 2).await;
    assert_eq!(sink.offsets(&key), vec![1, 2]);
    let page = engine.history(&key, forward(None, 10), stream(10)).await.unwrap();
    assert_eq!(page.publications.len(), 2);
}

/// An idempotency key is remembered for its window and no longer: a retry within it is a
/// duplicate, a publish with the same key after it is stored again. (Redis keeps each key to the
/// second: the window is at least one.)
pub async fn idempotency_keys_expire_after_their_window(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:idem-window");
    let mut options = opts(10);
    options.idempotency_key = Some("order-7".into());
    options.idempotency_window = Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    let first = engine.publish(&key, json(1), &options).await.unwrap();
    assert!(!first.duplicate);
    let deadline = started + Duration::from_secs(5);
    let stored_again = loop {
        let retry = engine.publish(&key, json(1), &options).await.unwrap();
        if !retry.duplicate {
            break retry;
        }
        assert_eq!(retry.offset, first.offset, "a duplicate answers the original position");
        assert!(tokio::time::Instant::now() < deadline, "the key was never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "forgotten before its window: {:?}",
        started.elapsed()
    );
    assert_eq!(stored_again.offset, first.offset + 1, "stored again, as a new message");
}

/// The same channel name in two apps is two independent channels.
pub async fn apps_do_not_share_channels(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let a = unique_key("chat:shared-name");
    let b = unique_key("chat:shared-name");
    engine.publish(&a, json(1), &opts(10)).await.unwrap();
    engine.publish(&a, json(2), &opts(10)).await.unwrap();
    let out = engine.publish(&b, json(1), &opts(10)).await.unwrap();
    assert_eq!(out.offset, 1);
    let page = engine.history(&b, forward(None, 10), stream(10)).await.unwrap();
    assert_eq!(page.publications.len(), 1);
}

/// Reading a channel that has no stream yet fixes its epoch for the next publish.
pub async fn history_of_a_new_channel_fixes_the_epoch(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:fresh");
    let page = engine.history(&key, forward(None, 10), stream(10)).await.unwrap();
    assert_eq!(page.top_offset, 0);
    assert!(page.covers(&page.epoch, 0));
    let out = engine.publish(&key, json(1), &opts(10)).await.unwrap();
    assert_eq!(out.epoch, page.epoch);
}

/// Without history, offsets still advance and history stays empty.
pub async fn no_history_still_advances_offsets(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let key = unique_key("chat:nohistory");
    engine.publish(&key, json(1), &opts(0)).await.unwrap();
    let out = engine.publish(&key, json(2), &opts(0)).await.unwrap();
    assert_eq!(out.offset, 2);
    let page = engine.history(&key, forward(None, 10), stream(0)).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.top_offset, 2);
    assert!(!page.covers(&page.epoch, 1));
}

/// Reads before the first offset or after the last are empty pages, not errors.
pub async fn history_edges_are_empty_pages(engine: Arc<dyn Engine>) {
    let key = unique_key("chat:edges");
    engine.publish(&key, json(1), &opts(10)).await.unwrap();
    let backward = HistoryQuery { since: Some(0), direction: Direction::Backward, limit: 10 };
    let page = engine.history(&key, backward, stream(10)).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.top_offset, 1);
    let page = engine.history(&key, forward(Some(u64::MAX), 10), stream(10)).await.unwrap();
    assert!(page.publications.is_empty());
}

/// Publishes made together (polled in order, none awaited before the next is made), on two
/// channels and some with idempotency keys, are stored in the order they were made: offsets
/// follow that order on each channel, history keeps it, and a key repeated among them is
/// stored once.
pub async fn publishes_made_together_are_stored_in_the_order_they_were_made(engine: Arc<dyn Engine>) {
    let _sink = RecordingSink::attach(&engine);
    let (a, b) = (unique_key("chat:together-a"), unique_key("chat:together-b"));
    let calls = (0..300u64).map(|n| {
        let key = if n % 3 == 2 { &b } else { &a };
        let mut options = opts(1000);
        // Every tenth message of `a` carries a key; message 40 repeats message 10's.
        if n % 10 == 0 {
            options.idempotency_key = Some(format!("k{}", if n == 40 { 10 } else { n }));
        }
        let engine = engine.clone();
        async move { (n, engine.publish(key, json(n), &options).await.unwrap()) }
    });
    let outcomes = futures::future::join_all(calls).await;
    let (mut next_a, mut next_b, mut offset_of_10) = (1, 1, 0);
    for (n, outcome) in &outcomes {
        if *n == 40 {
            assert!(outcome.duplicate, "a repeated key is a duplicate");
            assert_eq!(outcome.offset, offset_of_10, "and gets the original offset");
            continue;
        }
        assert!(!outcome.duplicate, "message {n}");
        let next = if n % 3 == 2 { &mut next_b } else { &mut next_a };
        assert_eq!(outcome.offset, *next, "message {n} is stored in the order it was made");
        *next += 1;
        if *n == 10 {
            offset_of_10 = outcome.offset;
        }
    }
    let page = engine.history(&a, forward(None, 1000), stream(1000)).await.unwrap();
    let stored: Vec<String> = page
        .publications
        .iter()
        .map(|p| match &p.payload {
            Payload::Json(bytes) | Payload::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        })
        .collect();
    let made: Vec<String> =
        (0..300u64).filter(|n| n % 3 != 2 && *n != 40).map(|n| format!("{{\"n\":{n}}}")).collect();
    assert_eq!(stored, made, "history keeps the order the publishes were made in");
}
