//! Benchmark clients: WebSocket connections from chosen source addresses, speaking `tributary.v1`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::Target;

/// A connected, authenticated client.
pub type Ws = WebSocketStream<TcpStream>;

/// Mints one token with every right on `pattern`.
pub async fn mint(target: &Target, client_id: &str, pattern: &str) -> anyhow::Result<String> {
    let body = json!({
        "client_id": client_id,
        "ttl_secs": 3600,
        "capabilities": [{"channel": pattern, "allow": ["subscribe", "publish", "history"]}],
    });
    // reqwest has TLS without a crypto provider of its own (see DEPENDENCIES.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reply: Value = reqwest::Client::new()
        .post(format!("{}/v1/tokens", target.first_node()))
        .bearer_auth(&target.api_key)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    reply["token"].as_str().map(str::to_owned).with_context(|| format!("no token: {reply}"))
}

/// The address of the node that connection `n` goes to (connections are spread over the nodes
/// in turn).
fn server_addr(target: &Target, n: usize) -> anyhow::Result<SocketAddr> {
    let nodes: Vec<&str> = target.http.split(',').collect();
    let authority = nodes[n % nodes.len()].trim().trim_start_matches("http://").trim_end_matches('/');
    authority.parse().with_context(|| format!("{authority} is not ip:port"))
}

/// Opens TCP connection `n` to `server` with `TCP_NODELAY`, from 127.0.0.(1 + n % source_ips)
/// when there are several source addresses.
pub async fn tcp(server: SocketAddr, n: usize, source_ips: u8) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if source_ips > 1 {
        // Binding before connecting makes the kernel search for a port free for every
        // destination, which costs more than the rest of the connection: only done when one
        // source address has too few ports.
        let source = Ipv4Addr::new(127, 0, 0, 1 + (n % usize::from(source_ips)) as u8);
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    }
    let stream = socket.connect(server).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a WebSocket from source address 127.0.0.(1 + n % source_ips) and sends `connect`.
pub async fn connect(target: &Target, n: usize, token: &str) -> anyhow::Result<Ws> {
    let server = server_addr(target, n)?;
    let stream = tcp(server, n, target.source_ips).await?;
    // By default the token rides in the upgrade request: the relay answers with the `connect`
    // reply as the first frame, one round trip in all.
    let url = if target.token_in_frame {
        format!("ws://{server}/v1/connect")
    } else {
        format!("ws://{server}/v1/connect?token={token}")
    };
    let mut request = url.into_client_request()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", "tributary.v1".parse()?);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()))
        .await
        .context("websocket handshake")?;
    if target.token_in_frame {
        ws.send(Message::text(json!({"id": 1, "op": "connect", "token": token}).to_string())).await?;
    }
    let reply = next_json(&mut ws).await?;
    if reply.get("result").is_none() {
        bail!("connect refused: {reply}");
    }
    Ok(ws)
}

/// Opens connection `n` as [`connect`] does and returns its socket, with nothing left to read.
/// With the token in the upgrade request the handshake is written and read by hand (one write,
/// the `101` and the `connect` reply read back), so the generator spends on a connection about
/// what its Redis and NATS clients do; `--token-in-frame` takes the WebSocket client's way.
pub async fn connect_stream(target: &Target, n: usize, token: &str) -> anyhow::Result<TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if target.token_in_frame {
        return Ok(connect(target, n, token).await?.into_inner());
    }
    let server = server_addr(target, n)?;
    let mut stream = tcp(server, n, target.source_ips).await?;
    let request = format!(
        "GET /v1/connect?token={token} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: tributary.v1\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let (mut got, mut buf) = (Vec::with_capacity(512), [0u8; 1024]);
    let mut frames = ServerFrames::default();
    let mut reply = None;
    let mut head_done = false;
    while reply.is_none() {
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            bail!("the server closed during the handshake: {}", String::from_utf8_lossy(&got));
        }
        let mut bytes = &buf[..read];
        if !head_done {
            got.extend_from_slice(bytes);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            if !got.starts_with(b"HTTP/1.1 101") {
                bail!("handshake refused: {}", String::from_utf8_lossy(&got));
            }
            head_done = true;
            let rest = got.split_off(end + 4);
            frames.feed(&rest, |frame| reply = Some(frame_text(frame)));
            bytes = &[];
        }
        frames.feed(bytes, |frame| reply = Some(frame_text(frame)));
    }
    let reply = reply.unwrap_or_default();
    if !reply.contains("\"result\"") {
        bail!("connect refused: {reply}");
    }
    Ok(stream)
}

fn frame_text(frame: Frame<'_>) -> String {
    match frame {
        Frame::Data(payload) => String::from_utf8_lossy(payload).into_owned(),
        Frame::Ping(_) | Frame::Close => String::new(),
    }
}

/// A small read buffer: the client's default of 128 KiB, zeroed for every one of thousands of
/// connections, made the generator slower than the server it measures.
fn client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Subscribes and waits for the reply.
pub async fn subscribe(ws: &mut Ws, channel: &str, recover: Option<Value>) -> anyhow::Result<Value> {
    let mut frame = json!({"id": 2, "op": "subscribe", "channel": channel});
    if let Some(position) = recover {
        frame["recover"] = position;
    }
    ws.send(Message::text(frame.to_string())).await?;
    loop {
        let reply = next_json(ws).await?;
        if reply["type"] == "reply" && reply["id"] == 2 {
            if reply.get("error").is_some() {
                bail!("subscribe refused: {reply}");
            }
            return Ok(reply);
        }
    }
}

/// Reads the next text frame as JSON.
pub async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await.context("connection ended")?? {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Close(frame) => bail!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// Returns the number after `"t":` in a message frame without parsing the JSON: the generator
/// must stay cheaper than the server it measures.
pub fn stamp(frame: &[u8]) -> Option<u64> {
    // The stamp in JSON (`"t":`), or in JSON carried as a string (`\"t\":`, Pusher's data).
    let start = match frame.windows(4).position(|w| w == b"\"t\":") {
        Some(at) => at + 4,
        None => frame.windows(6).position(|w| w == b"\\\"t\\\":")? + 6,
    };
    let digits = frame[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    Some(frame[start..start + digits].iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
}

/// A server frame read by [`ServerFrames`].
pub enum Frame<'a> {
    /// A text or binary message (unfragmented: the server never fragments).
    Data(&'a [u8]),
    /// A ping to answer.
    Ping(&'a [u8]),
    /// The server closed.
    Close,
}

/// Reads server WebSocket frames straight off the socket: a subscriber in the generator must
/// cost far less than the server, and a general WebSocket client parses, validates and
/// allocates per message.
#[derive(Default)]
pub struct ServerFrames {
    buf: Vec<u8>,
}

impl ServerFrames {
    /// Adds bytes read from the socket and hands every complete frame to `on_frame`.
    pub fn feed(&mut self, bytes: &[u8], mut on_frame: impl FnMut(Frame<'_>)) {
        self.buf.extend_from_slice(bytes);
        let mut pos = 0;
        while let Some((opcode, start, end)) = header(&self.buf[pos..]) {
            let payload = &self.buf[pos + start..pos + end];
            match opcode {
                0x1 | 0x2 => on_frame(Frame::Data(payload)),
                0x9 => on_frame(Frame::Ping(payload)),
                0x8 => on_frame(Frame::Close),
                _ => {}
            }
            pos += end;
        }
        self.buf.drain(..pos);
    }
}

/// Returns (opcode, payload start, frame end) of the complete unmasked frame at the front.
fn header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, start) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    (buf.len() >= start + len).then_some((b0 & 0x0f, start, start + len))
}

/// Encodes a masked client frame (the mask is fixed: the generator is not a browser).
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x17, 0xc3, 0x9e];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Opens `count` connections, `concurrency` at a time, all with `token`.
pub async fn connect_many(target: &Target, count: usize, token: &str) -> anyhow::Result<Vec<Ws>> {
    let mut out = Vec::with_capacity(count);
    let mut opening = futures::stream::iter(0..count)
        .map(|n| connect(target, n, token))
        .buffer_unordered(target.connect_concurrency.max(1));
    while let Some(ws) = opening.next().await {
        out.push(ws?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::stamp;

    #[test]
    fn server_frames_are_read_across_chunk_boundaries() {
        let mut wire = vec![0x81, 12];
        wire.extend_from_slice(br#"{"t":42,"p":}"#.split_at(12).0);
        wire.extend_from_slice(&[0x89, 0]);
        wire.extend_from_slice(&[0x81, 126, 0, 200]);
        wire.extend(std::iter::repeat_n(b'x', 200));
        let mut frames = super::ServerFrames::default();
        let mut seen = Vec::new();
        for chunk in wire.chunks(7) {
            frames.feed(chunk, |f| {
                seen.push(match f {
                    super::Frame::Data(d) => d.len(),
                    super::Frame::Ping(_) => 0,
                    super::Frame::Close => usize::MAX,
                })
            });
        }
        assert_eq!(seen, vec![12, 0, 200]);
        assert_eq!(super::stamp(br#"{"t":42,"#), Some(42));
        assert_eq!(super::stamp(br#"{"offset":7,"data":"{\"t\":42}"}"#), Some(42));
    }

    #[test]
    fn timestamps_are_read_from_message_frames() {
        assert_eq!(stamp(br#"{"type":"message","data":{"t":12345,"p":"x"}}"#), Some(12345));
        assert_eq!(stamp(br#"{"type":"message","data":{}}"#), None);
    }
}
