//! Peers measured with the same generator: Redis and NATS pub/sub, a plain `ws` broadcast
//! server and Socket.IO 4 (both on Node.js, from `bench/peers/node`), spoken with minimal
//! hand-written clients (a few lines of RESP, of the NATS text protocol, of WebSocket framing and
//! of Engine.IO), so that no client library's overhead is measured instead of the server.
//!
//! Subscribers of peers do not parse the protocol: they scan the byte stream for the payload's
//! `"t":<digits>` stamp, which appears exactly once per delivered message. That is cheaper than
//! decoding Tributary's WebSocket frames, so if anything it flatters the peers.

use std::net::SocketAddr;

use anyhow::bail;
use clap::ValueEnum;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// Tributary over WebSocket.
    Tributary,
    /// Redis pub/sub (RESP).
    Redis,
    /// NATS core pub/sub.
    Nats,
    /// A plain `ws` (Node.js) broadcast server: rooms by URL path.
    Ws,
    /// Socket.IO 4 (Node.js): rooms joined with an event, WebSocket transport.
    Socketio,
    /// sockudo (Rust, Pusher protocol): private channels and client events.
    Sockudo,
}

/// The app scripts/bench configures in sockudo.
pub const SOCKUDO_KEY: &str = "bench-key";
/// Its secret.
pub const SOCKUDO_SECRET: &str = "bench-secret";

impl Peer {
    /// Returns the channel or subject name for `channel`.
    pub fn subject(self, channel: &str) -> String {
        match self {
            Peer::Nats => channel.replace(':', "."),
            // Pusher channel names have no ':'; client events need a private channel.
            Peer::Sockudo => format!("private-{}", channel.replace(':', "-")),
            _ => channel.to_owned(),
        }
    }
}

async fn open(addr: SocketAddr, n: usize, source_ips: u8) -> anyhow::Result<TcpStream> {
    crate::client::tcp(addr, n, source_ips).await
}

fn resp(parts: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n{part}\r\n", part.len()).as_bytes());
    }
    out
}

/// Reads until `marker` has been seen.
async fn read_until(stream: &mut TcpStream, marker: &[u8]) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 512];
    while !seen.windows(marker.len()).any(|w| w == marker) {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed during setup");
        }
        seen.extend_from_slice(&chunk[..n]);
        if seen.len() > 64 * 1024 {
            bail!("no confirmation from the server");
        }
    }
    Ok(())
}

/// Speaks the client side of a WebSocket handshake on `path`; returns the bytes read past the
/// response (a server may send its first frame right after it).
async fn ws_handshake(stream: &mut TcpStream, path: &str) -> anyhow::Result<Vec<u8>> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 || seen.len() > 16 * 1024 {
            bail!("no WebSocket handshake response");
        }
        seen.extend_from_slice(&chunk[..n]);
    };
    if !seen.starts_with(b"HTTP/1.1 101") {
        bail!("handshake refused: {}", String::from_utf8_lossy(&seen[..end]));
    }
    Ok(seen.split_off(end))
}

/// Reads WebSocket text frames until one satisfies `done`.
async fn ws_wait(
    stream: &mut TcpStream,
    pending: Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) -> anyhow::Result<()> {
    let mut frames = crate::client::ServerFrames::default();
    let mut found = false;
    let mut chunk = pending;
    loop {
        frames.feed(&chunk, |frame| {
            if let crate::client::Frame::Data(payload) = frame {
                found |= done(payload);
            }
        });
        if found {
            return Ok(());
        }
        chunk.resize(4096, 0);
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed during setup");
        }
        chunk.truncate(n);
    }
}

/// Opens a Socket.IO connection to the main namespace.
async fn socketio_open(stream: &mut TcpStream) -> anyhow::Result<()> {
    let pending = ws_handshake(stream, "/socket.io/?EIO=4&transport=websocket").await?;
    ws_wait(stream, pending, |p| p.starts_with(b"0{")).await?;
    stream.write_all(&crate::client::masked(0x1, b"40")).await?;
    ws_wait(stream, Vec::new(), |p| p.starts_with(b"40")).await
}

/// Opens a Pusher connection to sockudo and subscribes it to the private channel `subject`
/// (client events are only allowed there, and only from subscribers).
async fn sockudo_subscribe(stream: &mut TcpStream, subject: &str) -> anyhow::Result<()> {
    use hmac::Mac;
    let path = format!("/app/{SOCKUDO_KEY}?protocol=7&client=tributary-bench&version=1.0");
    let pending = ws_handshake(stream, &path).await?;
    let socket_id = std::sync::Mutex::new(String::new());
    ws_wait(stream, pending, |payload| {
        let Ok(frame) = serde_json::from_slice::<serde_json::Value>(payload) else { return false };
        if frame["event"] != "pusher:connection_established" {
            return false;
        }
        let data: serde_json::Value =
            frame["data"].as_str().and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default();
        if let (Some(id), Ok(mut slot)) = (data["socket_id"].as_str(), socket_id.lock()) {
            *slot = id.to_owned();
        }
        true
    })
    .await?;
    let socket_id = socket_id.into_inner().unwrap_or_default();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SOCKUDO_SECRET.as_bytes())?;
    mac.update(format!("{socket_id}:{subject}").as_bytes());
    let signature: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let subscribe = serde_json::json!({
        "event": "pusher:subscribe",
        "data": {"channel": subject, "auth": format!("{SOCKUDO_KEY}:{signature}")},
    });
    stream.write_all(&crate::client::masked(0x1, subscribe.to_string().as_bytes())).await?;
    ws_wait(stream, Vec::new(), |p| p.windows(12).any(|w| w == b"subscription")).await
}

/// Opens a subscriber connection that is subscribed when this returns.
pub async fn subscriber(
    peer: Peer,
    addr: SocketAddr,
    n: usize,
    source_ips: u8,
    channel: &str,
) -> anyhow::Result<TcpStream> {
    let mut stream = open(addr, n, source_ips).await?;
    let subject = peer.subject(channel);
    match peer {
        Peer::Ws => {
            let pending = ws_handshake(&mut stream, &format!("/{subject}")).await?;
            anyhow::ensure!(pending.is_empty(), "the ws server spoke first");
        }
        Peer::Socketio => {
            socketio_open(&mut stream).await?;
            let join = format!(r#"42["join","{subject}"]"#);
            stream.write_all(&crate::client::masked(0x1, join.as_bytes())).await?;
        }
        Peer::Sockudo => sockudo_subscribe(&mut stream, &subject).await?,
        Peer::Redis => {
            stream.write_all(&resp(&["SUBSCRIBE", &subject])).await?;
            read_until(&mut stream, b"subscribe").await?;
        }
        Peer::Nats => {
            let setup =
                format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {subject} 1\r\nPING\r\n");
            stream.write_all(setup.as_bytes()).await?;
            read_until(&mut stream, b"PONG").await?;
        }
        Peer::Tributary => bail!("Tributary subscribers use the WebSocket client"),
    }
    Ok(stream)
}

/// Opens a publisher connection for `channel`.
pub async fn publisher(
    peer: Peer,
    addr: SocketAddr,
    n: usize,
    source_ips: u8,
    channel: &str,
) -> anyhow::Result<TcpStream> {
    let mut stream = open(addr, n, source_ips).await?;
    match peer {
        Peer::Nats => stream.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n").await?,
        Peer::Ws => {
            ws_handshake(&mut stream, &format!("/{}", peer.subject(channel))).await?;
        }
        Peer::Socketio => socketio_open(&mut stream).await?,
        Peer::Sockudo => sockudo_subscribe(&mut stream, &peer.subject(channel)).await?,
        Peer::Redis | Peer::Tributary => {}
    }
    Ok(stream)
}

/// Whether the peer's subscribers receive WebSocket frames (and may be pinged).
pub fn speaks_websocket(peer: Peer) -> bool {
    matches!(peer, Peer::Ws | Peer::Socketio | Peer::Sockudo | Peer::Tributary)
}

/// Appends one publish command to `out`.
pub fn publish_command(peer: Peer, subject: &str, payload: &str, out: &mut Vec<u8>) {
    match peer {
        Peer::Redis => out.extend_from_slice(&resp(&["PUBLISH", subject, payload])),
        Peer::Nats => {
            out.extend_from_slice(format!("PUB {subject} {}\r\n{payload}\r\n", payload.len()).as_bytes())
        }
        Peer::Ws => out.extend(crate::client::masked(0x1, payload.as_bytes())),
        Peer::Socketio => {
            let event = format!(r#"42["pub","{subject}",{payload}]"#);
            out.extend(crate::client::masked(0x1, event.as_bytes()));
        }
        Peer::Sockudo => {
            let event = format!(r#"{{"event":"client-m","channel":"{subject}","data":{payload}}}"#);
            out.extend(crate::client::masked(0x1, event.as_bytes()));
        }
        Peer::Tributary => {}
    }
}

/// Finds `"t":<digits>` stamps in a byte stream that arrives in arbitrary chunks.
#[derive(Default)]
pub struct StampScanner {
    pending: Vec<u8>,
}

impl StampScanner {
    /// Feeds a chunk; calls `on_stamp` for every complete stamp; answers NATS `PING`s via `pings`.
    pub fn feed(&mut self, chunk: &[u8], pings: &mut usize, mut on_stamp: impl FnMut(u64)) {
        self.pending.extend_from_slice(chunk);
        let buf = &self.pending;
        let mut pos = 0;
        let mut keep_from = None;
        while let Some(found) = find(&buf[pos..], b"\"t\":") {
            let start = pos + found + 4;
            let digits = buf[start..].iter().take_while(|b| b.is_ascii_digit()).count();
            if start + digits == buf.len() {
                keep_from = Some(pos + found);
                break;
            }
            let stamp = buf[start..start + digits].iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
            on_stamp(stamp);
            pos = start + digits;
        }
        *pings += count(&buf[pos..keep_from.unwrap_or(buf.len())], b"PING\r\n");
        let keep = keep_from.unwrap_or_else(|| buf.len().saturating_sub(5).max(pos));
        self.pending.drain(..keep);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_split_across_chunks_are_found_once() {
        let mut scanner = StampScanner::default();
        let mut seen = Vec::new();
        let mut pings = 0;
        scanner.feed(b"MSG a 1 20\r\n{\"t\":12", &mut pings, |t| seen.push(t));
        scanner.feed(b"34,\"p\":\"x\"}\r\nMSG a 1 20\r\n{\"t\":5,\"p\":\"y\"}\r\nPI", &mut pings, |t| {
            seen.push(t)
        });
        scanner.feed(b"NG\r\n", &mut pings, |t| seen.push(t));
        assert_eq!(seen, vec![1234, 5]);
        assert_eq!(pings, 1);
    }
}
