use std::time::Duration;

use serde_json::json;
use tributary_testkit::TestServer;

#[tokio::test]
async fn sse_streams_messages_and_resumes_from_last_event_id() {
    let server = TestServer::spawn().await;
    let token = server.all_rights("sse").await;
    let mut stream = server.sse("chat:s,news", &token, None).await.unwrap();
    let reply = stream.next_of("reply").await.unwrap();
    assert!(reply.data["result"]["epoch"].is_string(), "{:?}", reply.data);
    assert!(reply.id.is_some(), "even the first event carries a cursor to resume from");
    server.publish("chat:s", json!(1)).await;
    server.publish("news", json!(2)).await;
    let first = stream.next_of("message").await.unwrap();
    let second = stream.next_of("message").await.unwrap();
    assert_eq!((first.data["data"].clone(), second.data["data"].clone()), (json!(1), json!(2)));
    let last_id = second.id.clone().expect("message events carry an id");
    drop(stream);
    server.publish("chat:s", json!(3)).await;
    server.publish("news", json!(4)).await;
    let mut resumed = server.sse("chat:s,news", &token, Some(&last_id)).await.unwrap();
    let mut data = Vec::new();
    while data.len() < 2 {
        data.push(resumed.next_of("message").await.unwrap().data["data"].clone());
    }
    data.sort_by_key(|v| v.as_u64());
    assert_eq!(data, vec![json!(3), json!(4)]);
}

#[tokio::test]
async fn sse_refuses_bad_tokens_channels_and_cursors_with_json_errors() {
    let server = TestServer::spawn().await;
    let err = server.sse("a", "bogus", None).await.err().unwrap().to_string();
    assert!(err.contains("401") && err.contains("invalid_token"), "{err}");
    let token = server.token("x", &[("chat:*", &["subscribe"])]).await;
    let err = server.sse("admin", &token, None).await.err().unwrap().to_string();
    assert!(err.contains("403"), "{err}");
    let err = server.sse("chat:a", &token, Some("not-a-cursor")).await.err().unwrap().to_string();
    assert!(err.contains("invalid_parameter"), "{err}");
}

#[tokio::test]
async fn long_poll_returns_the_cursor_then_messages_as_they_arrive() {
    let server = TestServer::spawn().await;
    let token = server.all_rights("poller").await;
    let (status, first) = server.poll("chat:p", &token, None, 1000).await;
    assert_eq!(status, 200, "{first}");
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    assert!(first["messages"].as_array().unwrap().is_empty());
    let publisher = server.publish_later("chat:p", json!("wake"), Duration::from_millis(200));
    let (_, woke) = server.poll("chat:p", &token, Some(&cursor), 10_000).await;
    publisher.await.unwrap();
    assert_eq!(woke["messages"][0]["data"], "wake", "{woke}");
    let cursor = woke["cursor"].as_str().unwrap().to_owned();
    // Messages published between polls are not lost: the next poll starts from the cursor.
    server.publish("chat:p", json!("a")).await;
    server.publish("chat:p", json!("b")).await;
    let (_, caught_up) = server.poll("chat:p", &token, Some(&cursor), 1000).await;
    let data: Vec<_> = caught_up["messages"].as_array().unwrap().iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, vec![json!("a"), json!("b")]);
    let (_, empty) = server.poll("chat:p", &token, caught_up["cursor"].as_str(), 100).await;
    assert!(empty["messages"].as_array().unwrap().is_empty(), "a timed-out poll is empty");
}

#[tokio::test]
async fn long_poll_says_when_a_cursor_cannot_be_recovered() {
    let server = TestServer::spawn_with(|relay| {
        relay.namespaces.insert(
            "tiny".into(),
            tributary_relay::NamespaceConfig { history_size: 1, ..Default::default() },
        );
    })
    .await;
    let token = server.all_rights("p").await;
    let (_, first) = server.poll("tiny:a", &token, None, 100).await;
    for n in 0..3 {
        server.publish("tiny:a", json!(n)).await;
    }
    let (status, reply) = server.poll("tiny:a", &token, first["cursor"].as_str(), 100).await;
    assert_eq!(status, 200);
    assert_eq!(reply["unrecovered"], json!(["tiny:a"]), "{reply}");
}

#[tokio::test]
async fn long_poll_works_on_a_namespace_without_history() {
    let server = TestServer::spawn_with(|relay| {
        relay.namespaces.insert(
            "live".into(),
            tributary_relay::NamespaceConfig { history_size: 0, ..Default::default() },
        );
    })
    .await;
    let token = server.all_rights("p").await;
    let (_, first) = server.poll("live:a", &token, None, 100).await;
    let publisher = server.publish_later("live:a", json!("now"), Duration::from_millis(200));
    let (status, reply) = server.poll("live:a", &token, first["cursor"].as_str(), 10_000).await;
    publisher.await.unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["messages"][0]["data"], "now", "{reply}");
}

fn long_history(relay: &mut tributary_relay::RelayConfig) {
    relay.outbound_queue_len = 40;
    relay
        .namespaces
        .insert("long".into(), tributary_relay::NamespaceConfig { history_size: 1000, ..Default::default() });
}

#[tokio::test]
async fn sse_streams_a_recovery_longer_than_its_queue_on_two_channels() {
    let server = TestServer::spawn_with(long_history).await;
    let token = server.all_rights("sse-long").await;
    let mut stream = server.sse("long:a,long:b", &token, None).await.unwrap();
    stream.next_of("reply").await.unwrap();
    let start = stream.next_of("reply").await.unwrap().id.expect("a cursor");
    drop(stream);
    for n in 1..=150 {
        server.publish("long:a", json!(n)).await;
        server.publish("long:b", json!(n)).await;
    }
    let mut resumed = server.sse("long:a,long:b", &token, Some(&start)).await.unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    while a.len() + b.len() < 300 {
        let event = resumed.next_of("message").await.unwrap();
        let offset = event.data["offset"].as_u64().unwrap();
        match event.data["channel"].as_str() {
            Some("long:a") => a.push(offset),
            _ => b.push(offset),
        }
    }
    let all: Vec<u64> = (1..=150).collect();
    assert_eq!((a, b), (all.clone(), all), "every missed message of both channels, in order, once");
    server.publish("long:a", json!("live")).await;
    assert_eq!(resumed.next_of("message").await.unwrap().data["offset"], 151);
}

#[tokio::test]
async fn long_poll_pages_through_a_recovery_longer_than_its_queue() {
    let server = TestServer::spawn_with(long_history).await;
    let token = server.all_rights("poll-long").await;
    let (_, first) = server.poll("long:p", &token, None, 100).await;
    for n in 1..=100 {
        server.publish("long:p", json!(n)).await;
    }
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();
    let mut data = Vec::new();
    let mut polls = 0;
    while data.len() < 100 {
        let (status, page) = server.poll("long:p", &token, Some(&cursor), 1000).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["unrecovered"], json!([]), "{page}");
        let messages = page["messages"].as_array().unwrap();
        assert!(!messages.is_empty() && messages.len() <= 40, "a page fits the queue: {}", messages.len());
        data.extend(messages.iter().map(|m| m["data"].as_u64().unwrap()));
        cursor = page["cursor"].as_str().unwrap().to_owned();
        polls += 1;
    }
    assert_eq!(data, (1..=100).collect::<Vec<_>>());
    assert!(polls >= 3, "100 messages through a queue of 40 take several polls");
}

#[tokio::test]
async fn a_recovery_of_messages_larger_than_a_channel_share_of_the_queue_still_completes() {
    let server = TestServer::spawn_with(|relay| {
        relay.max_queued_bytes = 4 * relay.max_frame_bytes;
        let max_message_bytes = relay.max_frame_bytes - 1024;
        relay.namespaces.insert(
            "big".into(),
            tributary_relay::NamespaceConfig { history_size: 100, max_message_bytes, ..Default::default() },
        );
    })
    .await;
    let token = server.all_rights("sse-big").await;
    let channels = "big:a,big:b,big:c";
    let mut stream = server.sse(channels, &token, None).await.unwrap();
    let mut start = None;
    for _ in 0..3 {
        start = stream.next_of("reply").await.unwrap().id;
    }
    drop(stream);
    // Each message is larger than a third of half the queue: with three channels recovering
    // together, no page could hold one unless a page always takes at least one.
    let big = "z".repeat(tributary_relay::RelayConfig::default().max_frame_bytes - 1024 - 16);
    for _ in 0..3 {
        for channel in ["big:a", "big:b", "big:c"] {
            server.publish(channel, json!(big)).await;
        }
    }
    let mut resumed = server.sse(channels, &token, start.as_deref()).await.unwrap();
    let mut got: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for _ in 0..9 {
        let message = resumed.next_of("message").await.unwrap().data;
        assert_eq!(message["data"].as_str(), Some(big.as_str()), "the whole message");
        let channel = message["channel"].as_str().unwrap().to_owned();
        got.entry(channel).or_default().push(message["offset"].as_u64().unwrap());
    }
    let expected: std::collections::BTreeMap<String, Vec<u64>> =
        ["big:a", "big:b", "big:c"].iter().map(|c| ((*c).to_owned(), vec![1, 2, 3])).collect();
    assert_eq!(got, expected, "each channel's three, in order, once");
    // Nothing more: the next message is the next one published.
    server.publish("big:b", json!("after")).await;
    let next = resumed.next_of("message").await.unwrap().data;
    assert_eq!((next["channel"].as_str(), next["offset"].as_u64()), (Some("big:b"), Some(4)), "{next}");
}

/// A bad cursor is reported under the name of the input that carried it.
#[tokio::test]
async fn a_bad_cursor_is_named_by_the_input_that_carried_it() {
    let server = TestServer::spawn().await;
    let token = server.token("x", &[("chat:*", &["subscribe"])]).await;
    let err = server.sse("chat:a", &token, Some("not-a-cursor")).await.err().unwrap().to_string();
    assert!(err.contains("Last-Event-ID is not a cursor"), "{err}");
    let url = format!("{}/v1/sse", server.http_url());
    let query = [("channels", "chat:a"), ("cursor", "not-a-cursor")];
    let response = server.http().get(&url).query(&query).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["name"], "invalid_parameter", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("cursor is not a cursor"), "{message}");
    let (status, body) = server.poll("chat:a", &token, Some("not-a-cursor"), 100).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().starts_with("cursor is not a cursor"), "{body}");
}
