//! The way in: one handshake timeout from the TCP accept through the request head to the
//! WebSocket `connect` frame, and a cap on connections still sending their first request head.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tributary_testkit::{TestServer, eventually};

const UPGRADE: &str = "GET /v1/connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: tributary.v1\r\n\r\n";

/// Sends `bytes` one every `pause` until the server closes the connection; returns how long
/// after the connect that was, or `None` if everything was sent first.
async fn trickle(addr: std::net::SocketAddr, bytes: &[u8], pause: Duration) -> (Duration, Option<Duration>) {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 256];
    for byte in bytes {
        if stream.write_all(&[*byte]).await.is_err() {
            return (start.elapsed(), Some(start.elapsed()));
        }
        match tokio::time::timeout(pause, stream.read(&mut buf)).await {
            Err(_) => {}
            // Closed (or reset) by the server.
            Ok(Ok(0) | Err(_)) => return (start.elapsed(), Some(start.elapsed())),
            Ok(Ok(n)) => panic!("the server answered a request it cannot have read: {:?}", &buf[..n]),
        }
    }
    (start.elapsed(), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_closed_at_the_handshake_timeout() {
    let server = TestServer::spawn_with(|relay| relay.handshake_timeout_ms = 1_000).await;
    let addr: std::net::SocketAddr = server.http_url().trim_start_matches("http://").parse().unwrap();
    // 200 clients sending a header byte every 100 ms: each would need 20 s for its head.
    let clients: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move { trickle(addr, UPGRADE.as_bytes(), Duration::from_millis(100)).await })
        })
        .collect();
    for client in clients {
        let (_, closed) = client.await.unwrap();
        let closed = closed.expect("the server never closed a slow request head");
        assert!(closed >= Duration::from_millis(900), "closed before the timeout: {closed:?}");
        assert!(closed < Duration::from_millis(2_500), "closed long after the 1 s timeout: {closed:?}");
    }
    // Nothing else was harmed: a normal client gets in.
    server.ws(&server.all_rights("after").await).await;
}

/// The request head and the `connect` frame each have the handshake timeout: a head that takes
/// most of it is still answered, and the `connect` frame then gets the whole timeout from the
/// upgrade (a node so busy that a storm's requests wait for it must not refuse clients that sent
/// everything in time), after which the connection is closed with 3006.
#[tokio::test]
async fn the_request_head_and_the_connect_frame_each_have_the_handshake_timeout() {
    let server = TestServer::spawn_with(|relay| relay.handshake_timeout_ms = 1_000).await;
    let addr = server.http_url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let (head, rest) = UPGRADE.split_at(20);
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stream.write_all(rest.as_bytes()).await.unwrap();
    // The upgrade is answered; then the connection says nothing and is closed with 3006.
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    let mut upgraded = None;
    let closed = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        if n == 0 {
            panic!("closed without a close frame: {:?}", String::from_utf8_lossy(&response));
        }
        response.extend_from_slice(&buf[..n]);
        if upgraded.is_none() && response.windows(4).any(|w| w == b"\r\n\r\n") {
            upgraded = Some(Instant::now());
        }
        // A close frame: 0x88, its length, then the code.
        if let Some(at) = response.windows(2).position(|w| w[0] == 0x88 && w[1] >= 2)
            && response.len() >= at + 4
        {
            let code = u16::from_be_bytes([response[at + 2], response[at + 3]]);
            assert_eq!(code, 3006, "{:?}", String::from_utf8_lossy(&response));
            break Instant::now();
        }
    };
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 101"), "{response:?}");
    let waited = closed - upgraded.expect("the upgrade was answered");
    assert!(waited >= Duration::from_millis(900), "the connect frame got less than the timeout: {waited:?}");
    assert!(waited < Duration::from_millis(2_000), "closed long after the timeout: {waited:?}");
}

#[tokio::test]
async fn past_the_cap_of_pending_handshakes_a_connection_is_refused_with_503() {
    let server = TestServer::spawn_with(|relay| relay.max_pending_handshakes = 10).await;
    let addr = server.http_url().trim_start_matches("http://").to_owned();
    // Ten connections that have sent only part of a request head hold every permit.
    let mut pending = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        pending.push(stream);
    }
    let refused = || async {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        answer
    };
    let answer = refused().await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["name"], "unavailable", "{answer}");
    // A connection that finishes its head frees its permit at once and is served.
    let mut finishing = pending.pop().unwrap();
    finishing.write_all(b"Host: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    finishing.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Then one more gets in, and ten at once (the whole cap) after the others go away.
    assert!(healthz(&addr).await, "a connection with a free permit is served");
    drop(pending);
    eventually("every permit back", Duration::from_secs(5), || async {
        let connects = (0..10).map(|_| healthz(&addr));
        futures::future::join_all(connects).await.into_iter().all(|served| served)
    })
    .await
    .unwrap();
}

/// Sends a whole `GET /healthz` on a new connection; returns whether it was answered 200.
async fn healthz(addr: &str) -> bool {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && answer.starts_with("HTTP/1.1 200")
}
