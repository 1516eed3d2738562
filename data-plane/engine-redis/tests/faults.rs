//! Faults with a throwaway `redis-server` of the test's own, on a free port.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tributary_engine::{ChannelKey, Engine, HistoryQuery, NewMessage, PublishOptions, StreamOptions};
use tributary_engine_redis::{RedisEngine, RedisEngineConfig};
use tributary_protocol::frame::Direction;
use tributary_protocol::{ChannelName, Payload};

/// Returns a free port below Linux's ephemeral range (32768 and up): a port the kernel hands out
/// for port 0 is free only until some other socket's port 0 gets it, which the redis-server
/// started next would then fail to bind (testkit's `ThrowawayRedis` does the same).
fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    for attempt in 0u32..1000 {
        let port = 12_000 + (RandomState::new().hash_one(attempt) % 10_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range")
}

fn start_redis(port: u16) -> std::process::Child {
    start_redis_in(port, &std::env::temp_dir())
}

/// Starts a `redis-server` without automatic persistence; `dir` is where `SAVE` writes and where
/// a restart loads from.
fn start_redis_in(port: u16, dir: &std::path::Path) -> std::process::Child {
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--dbfilename", &format!("trb-{port}.rdb")])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/test installs it)");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn options() -> PublishOptions {
    PublishOptions {
        stream: StreamOptions { history_size: 100, history_ttl: Duration::from_secs(60) },
        idempotency_key: None,
        idempotency_window: Duration::from_secs(120),
    }
}

fn message(n: u64) -> NewMessage {
    NewMessage { payload: Payload::Json(n.to_string().into()), client_id: None, encoding: None, meta: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_publishes_fail_and_after_a_restart_without_persistence_the_epoch_changes() {
    let port = free_port();
    let mut redis = start_redis(port);
    let engine: Arc<dyn Engine> = Arc::new(
        RedisEngine::connect(RedisEngineConfig::new(format!("redis://127.0.0.1:{port}"))).await.unwrap(),
    );
    let key = ChannelKey::new("app", ChannelName::parse("chat:faults").unwrap());
    let before = engine.publish(&key, message(1), &options()).await.unwrap();
    assert_eq!(before.offset, 1);

    redis.kill().unwrap();
    redis.wait().unwrap();
    let started = Instant::now();
    let failed = engine.publish(&key, message(2), &options()).await;
    assert!(failed.is_err(), "a publish while Redis is down is an error, never acknowledged: {failed:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "it fails in bounded time: {:?}", started.elapsed());

    let mut redis = start_redis(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        match engine.publish(&key, message(3), &options()).await {
            Ok(outcome) => break outcome,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "service resumes within seconds of Redis returning: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_ne!(after.epoch, before.epoch, "history was lost with Redis: the epoch tells");
    let page = engine
        .history(
            &key,
            HistoryQuery { since: None, direction: Direction::Forward, limit: 10 },
            options().stream,
        )
        .await
        .unwrap();
    assert!(!page.covers(&before.epoch, before.offset), "the old position is not recoverable");
    println!(
        "redis restart without persistence: published 3, acknowledged 2, failed 1, epoch {} -> {}",
        before.epoch, after.epoch
    );
    redis.kill().unwrap();
    let _ = redis.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pubsub_connection_is_reestablished_with_its_subscriptions() {
    let port = free_port();
    let mut redis = start_redis(port);
    let url = format!("redis://127.0.0.1:{port}");
    let listener: Arc<dyn Engine> =
        Arc::new(RedisEngine::connect(RedisEngineConfig::new(url.clone())).await.unwrap());
    let sink = tributary_engine::conformance::RecordingSink::attach(&listener);
    let sender = RedisEngine::connect(RedisEngineConfig::new(url)).await.unwrap();
    let fleet = ChannelKey::new("fleet", ChannelName::parse("trucks/1").unwrap());
    listener.subscribe_app(&fleet.app).await.unwrap();
    let killed = resp(port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(killed.starts_with(":2"), "both engines' pub/sub connections were killed: {killed}");
    // Nobody subscribes or unsubscribes: the engines reconnect by themselves, and the control
    // channel subscription comes back with them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        sender.publish_control(bytes::Bytes::from_static(b"still there?")).await.unwrap();
        if sink.seen().iter().any(|r| matches!(r, tributary_engine::conformance::Recorded::Control(_))) {
            break;
        }
        assert!(Instant::now() < deadline, "the pub/sub connection did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // So does the app's feed.
    sender.publish(&fleet, message(1), &options()).await.unwrap();
    tributary_engine::conformance::eventually("the app feed is back", || sink.pattern_offsets(&fleet) == [1])
        .await;
    redis.kill().unwrap();
    let _ = redis.wait();
}

/// Sends one command with hand-written RESP; returns the raw reply.
fn resp(port: u16, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = [0u8; 512];
    let n = stream.read(&mut reply).unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

/// Publishes until it succeeds (Redis may still be loading its snapshot).
async fn publish_when_back(
    engine: &Arc<dyn Engine>,
    key: &ChannelKey,
    n: u64,
) -> tributary_engine::PublishOutcome {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match engine.publish(key, message(n), &options()).await {
            Ok(outcome) => return outcome,
            Err(err) => {
                assert!(Instant::now() < deadline, "Redis did not come back: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_snapshot_that_lost_the_tail_changes_the_epoch_unless_restarts_are_trusted() {
    for trust in [false, true] {
        let dir = std::env::temp_dir().join(format!("trb-rdb-{}-{trust}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut redis = start_redis_in(port, &dir);
        let mut config = RedisEngineConfig::new(format!("redis://127.0.0.1:{port}"));
        config.trust_restarts = trust;
        let engine: Arc<dyn Engine> = Arc::new(RedisEngine::connect(config).await.unwrap());
        let key = ChannelKey::new("app", ChannelName::parse("chat:snapshot").unwrap());
        for n in 1..=3 {
            engine.publish(&key, message(n), &options()).await.unwrap();
        }
        assert!(resp(port, &["SAVE"]).starts_with("+OK"));
        // Acknowledged after the snapshot: lost when Redis restarts from it.
        let lost = engine.publish(&key, message(4), &options()).await.unwrap();
        assert_eq!(lost.offset, 4);
        redis.kill().unwrap();
        redis.wait().unwrap();
        let mut redis = start_redis_in(port, &dir);
        let after = publish_when_back(&engine, &key, 5).await;
        if trust {
            assert_eq!(after.epoch, lost.epoch, "trusted: the epoch is kept...");
            assert_eq!(after.offset, 4, "...and offset 4 is reused: why restarts are not trusted by default");
        } else {
            assert_ne!(after.epoch, lost.epoch, "the loss shows as a new epoch, never a reused offset");
            assert_eq!(after.offset, 1);
            let page = engine
                .history(
                    &key,
                    HistoryQuery { since: Some(4), direction: Direction::Forward, limit: 10 },
                    options().stream,
                )
                .await
                .unwrap();
            assert!(!page.covers(&lost.epoch, 4), "a client at offset 4 is told recovered: false");
            println!(
                "redis restart from a snapshot: acknowledged 4, lost 1 (offset 4), epoch {} -> {}, silent gaps 0",
                lost.epoch, after.epoch
            );
        }
        redis.kill().unwrap();
        let _ = redis.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// How many times Redis has run a script (`EVALSHA`) so far.
async fn scripts_run(url: &str) -> u64 {
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// A child process killed (and reaped) when dropped, even by a failing assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_channels_cost_redis_nothing_and_presence_is_swept_only_when_due() {
    let port = free_port();
    let _redis = KillOnDrop(start_redis(port));
    let url = format!("redis://127.0.0.1:{port}");
    let mut config = RedisEngineConfig::new(url.clone());
    config.presence_sweep = Duration::from_millis(50);
    let engine: Arc<dyn Engine> = Arc::new(RedisEngine::connect(config).await.unwrap());
    let keys: Vec<ChannelKey> = (0..200)
        .map(|n| ChannelKey::new("app", ChannelName::parse(&format!("chat:quiet{n}")).unwrap()))
        .collect();
    for key in &keys {
        engine.subscribe(key).await.unwrap();
    }
    // Each channel's first upkeep learns it has no presence; after that, nothing until its
    // epoch needs keeping (hours away). Settled: no script ran over four upkeep rounds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let settled = loop {
        let before = scripts_run(&url).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if scripts_run(&url).await == before {
            break before;
        }
        assert!(Instant::now() < deadline, "the first upkeep of 200 channels never finished");
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet = scripts_run(&url).await - settled;
    assert_eq!(quiet, 0, "200 quiet channels over 20 rounds ran {quiet} scripts");

    // A member with a 300 ms timeout that is never refreshed: its channel is looked at when the
    // member joins and when it expires, not every round.
    let member = tributary_protocol::frame::MemberInfo {
        client_id: "ghost".into(),
        conn_id: "g1".into(),
        state: None,
    };
    let options = tributary_engine::PresenceOptions { ttl: Duration::from_millis(300), announce: true };
    let before = scripts_run(&url).await;
    engine.presence_join(&keys[0], member, options).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.occupancy(&keys[0]).await.unwrap().connections > 0 {
        assert!(Instant::now() < deadline, "the member expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spent = scripts_run(&url).await - before;
    // The join, the occupancy reads (at most 50), and a handful of upkeeps.
    assert!(spent < 70, "{spent} scripts for one member on one of 200 channels");
    println!(
        "presence upkeep: 200 quiet channels, 0 scripts in 20 rounds; one expiring member: {spent} scripts"
    );
}
