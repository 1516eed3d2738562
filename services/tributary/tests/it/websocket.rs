//! The relay's own WebSocket layer, spoken by hand over raw TCP: the handshake, its refusals,
//! bytes that arrive with the upgrade request, control frames and the close handshake.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tributary_testkit::TestServer;

fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn upgrade_request(addr: &str, extra: &str) -> String {
    format!(
        "GET /v1/connect HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: tributary.v1\r\n{extra}\r\n"
    )
}

/// Reads one unmasked server frame: (opcode, payload).
async fn read_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            tcp.read_exact(&mut b).await.unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            tcp.read_exact(&mut b).await.unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

/// Reads the HTTP response head.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn addr(server: &TestServer) -> String {
    server.http_url().trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn a_connect_frame_sent_with_the_upgrade_request_is_read_and_the_handshake_is_rfc_6455() {
    let server = TestServer::spawn().await;
    let token = server.all_rights("eager").await;
    let mut tcp = TcpStream::connect(addr(&server)).await.unwrap();
    // One write: the request and the first two frames together, as an eager client may send them.
    let mut bytes = upgrade_request(&addr(&server), "Sec-WebSocket-Version: 13\r\n").into_bytes();
    bytes.extend(masked(0x81, json!({"id": 1, "op": "connect", "token": token}).to_string().as_bytes()));
    bytes.extend(masked(
        0x81,
        json!({"id": 9, "op": "subscribe", "channel": "chat:eager"}).to_string().as_bytes(),
    ));
    tcp.write_all(&bytes).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    assert!(head.contains("sec-websocket-protocol: tributary.v1"), "{head}");
    let (op, payload) = read_frame(&mut tcp).await;
    assert_eq!(op, 1);
    let reply: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(reply["result"]["client_id"], "eager", "{reply}");
    // The subscribe that came in the same bytes is answered at once, not at the next read.
    let (_, payload) = tokio::time::timeout(std::time::Duration::from_secs(2), read_frame(&mut tcp))
        .await
        .expect("the subscribe sent with the connect frame is handled without more input");
    let reply: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        (reply["id"].clone(), reply["result"]["channel"].clone()),
        (json!(9), json!("chat:eager")),
        "{reply}"
    );
    // Its own presence join follows (the namespace announces joins).
    let (_, payload) = read_frame(&mut tcp).await;
    assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap()["type"], "join");

    // A ping is answered with a pong carrying the same payload.
    tcp.write_all(&masked(0x89, b"are you there")).await.unwrap();
    assert_eq!(read_frame(&mut tcp).await, (0xA, b"are you there".to_vec()));
    // A request fragmented over three frames, with a ping between them, is one request.
    let request = json!({"id": 2, "op": "ping"}).to_string();
    let (a, rest) = request.as_bytes().split_at(5);
    let (b, c) = rest.split_at(5);
    let mut frames = masked(0x01, a);
    frames.extend(masked(0x00, b));
    frames.extend(masked(0x89, b""));
    frames.extend(masked(0x80, c));
    tcp.write_all(&frames).await.unwrap();
    assert_eq!(read_frame(&mut tcp).await, (0xA, Vec::new()));
    let (op, payload) = read_frame(&mut tcp).await;
    assert_eq!(op, 1);
    assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap()["id"], 2);

    // The client closes with 4000: the server answers with the same code and ends the stream.
    tcp.write_all(&masked(0x88, &4000u16.to_be_bytes())).await.unwrap();
    let (op, payload) = read_frame(&mut tcp).await;
    assert_eq!((op, &payload[..2]), (8, &4000u16.to_be_bytes()[..]));
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "nothing after the close frame");
}

/// Reads the rest of an HTTP response whose head was read: its JSON body (by Content-Length).
async fn read_json_body(tcp: &mut TcpStream, head: &str) -> Value {
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
        })
        .expect("a content length");
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// A token in the upgrade request (query parameter or bearer header) is checked before the
/// answer: admitted, the first frame is the `connect` reply, with no `connect` frame sent;
/// refused, the answer is plain HTTP with the error, and no WebSocket is opened.
#[tokio::test]
async fn a_token_in_the_upgrade_request_connects_in_one_round_trip_or_is_refused_with_http() {
    let server = TestServer::spawn_with(|relay| relay.max_connections_per_app = 3).await;
    let token = server.all_rights("early").await;
    let with_query = |token: &str| {
        upgrade_request(&addr(&server), "Sec-WebSocket-Version: 13\r\n")
            .replace("GET /v1/connect ", &format!("GET /v1/connect?token={token} "))
    };
    // Both stay open, so the limit below is reached for certain.
    let mut held = Vec::new();
    for request in [
        with_query(&token),
        upgrade_request(
            &addr(&server),
            &format!("Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n"),
        ),
    ] {
        let mut tcp = TcpStream::connect(addr(&server)).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let (op, payload) = read_frame(&mut tcp).await;
        assert_eq!(op, 1);
        let reply: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(reply["result"]["client_id"], "early", "the connect reply comes first: {reply}");
        assert!(reply.get("id").is_none(), "it answers no frame: {reply}");
        // The session is live: a subscribe is answered.
        tcp.write_all(&masked(
            0x81,
            json!({"id": 5, "op": "subscribe", "channel": "chat:early"}).to_string().as_bytes(),
        ))
        .await
        .unwrap();
        let (_, payload) = read_frame(&mut tcp).await;
        let reply: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            (reply["id"].clone(), reply["result"]["channel"].clone()),
            (json!(5), json!("chat:early"))
        );
        held.push(tcp);
    }

    // Refusals are plain HTTP, with the error's code and status.
    let cases = [
        (with_query("not-a-token"), 401, "invalid_token"),
        (with_query(&token).replace("?token=", "?token=%ZZ&token="), 400, "invalid_parameter"),
    ];
    for (request, status, name) in cases {
        let mut tcp = TcpStream::connect(addr(&server)).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{name}: {head}");
        assert_eq!(read_json_body(&mut tcp, &head).await["error"]["name"], name);
    }
    // Past the app's connection limit (two are held, a third is allowed): 429, before any upgrade.
    let _third = server.ws(&token).await;
    let mut tcp = TcpStream::connect(addr(&server)).await.unwrap();
    tcp.write_all(with_query(&token).as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert_eq!(read_json_body(&mut tcp, &head).await["error"]["name"], "connection_limit");
}

#[tokio::test]
async fn bad_upgrade_requests_are_refused_with_plain_http() {
    let server = TestServer::spawn().await;
    let url = format!("{}/v1/connect", server.http_url());
    let plain = server.http().get(&url).send().await.unwrap();
    assert_eq!(plain.status(), 426, "not an upgrade");
    assert_eq!(plain.headers()["sec-websocket-version"], "13");

    let mut tcp = TcpStream::connect(addr(&server)).await.unwrap();
    tcp.write_all(upgrade_request(&addr(&server), "Sec-WebSocket-Version: 8\r\n").as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 426"), "an old version: {head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{head}");

    let mut tcp = TcpStream::connect(addr(&server)).await.unwrap();
    let request = upgrade_request(&addr(&server), "Sec-WebSocket-Version: 13\r\n")
        .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 400"), "no key: {head}");

    // The server is unharmed.
    let mut c = server.ws(&server.all_rights("after").await).await;
    assert!(c.request(json!({"op": "ping"})).await.unwrap().get("result").is_some());
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_the_connection_as_a_protocol_violation() {
    let server = TestServer::spawn().await;
    let mut tcp = TcpStream::connect(addr(&server)).await.unwrap();
    tcp.write_all(upgrade_request(&addr(&server), "Sec-WebSocket-Version: 13\r\n").as_bytes()).await.unwrap();
    assert!(read_head(&mut tcp).await.starts_with("HTTP/1.1 101"));
    tcp.write_all(&[0x81, 0x02, b'{', b'}']).await.unwrap();
    let (op, payload) = read_frame(&mut tcp).await;
    assert_eq!((op, &payload[..2]), (8, &3500u16.to_be_bytes()[..]), "{}", String::from_utf8_lossy(&payload));
}

/// The testkit's "nothing arrived" checks fail when the connection is gone: a closed socket
/// says nothing, and must not pass for a quiet one.
#[tokio::test]
#[should_panic(expected = "expected no message on an open connection")]
async fn no_message_within_fails_when_the_server_closed_the_connection() {
    let server = TestServer::spawn().await;
    let mut c = server.ws(&server.all_rights("gone").await).await;
    let (status, _) = server.post("/v1/clients/gone/disconnect", &json!({}), None).await;
    assert_eq!(status, 200);
    c.no_message_within(std::time::Duration::from_secs(2)).await;
}

#[tokio::test]
#[should_panic(expected = "expected a quiet connection")]
async fn quiet_for_fails_when_the_server_closed_the_connection() {
    let server = TestServer::spawn().await;
    let mut c = server.ws(&server.all_rights("gone").await).await;
    let (status, _) = server.post("/v1/clients/gone/disconnect", &json!({}), None).await;
    assert_eq!(status, 200);
    c.quiet_for(std::time::Duration::from_secs(2)).await;
}
