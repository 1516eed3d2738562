//! Peers measured with the same generator: Redis and NATS pub/sub, spoken with minimal
//! hand-written clients (a few lines of RESP and of the NATS text protocol), so that no client
//! library's overhead is measured instead of the server.
//!
//! Subscribers of peers do not parse the protocol: they scan the byte stream for the payload's
//! `"t":<digits>` stamp, which appears exactly once per delivered message. That is cheaper than
//! decoding Tributary's WebSocket frames, so if anything it flatters the peers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, bail};
use clap::ValueEnum;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A server to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// Tributary over WebSocket.
    Tributary,
    /// Redis pub/sub (RESP).
    Redis,
    /// NATS core pub/sub.
    Nats,
}

impl Peer {
    /// Returns the channel or subject name for `channel`.
    pub fn subject(self, channel: &str) -> String {
        match self {
            Peer::Nats => channel.replace(':', "."),
            _ => channel.to_owned(),
        }
    }
}

async fn open(addr: SocketAddr, n: usize, source_ips: u8) -> anyhow::Result<TcpStream> {
    let source = Ipv4Addr::new(127, 0, 0, 1 + (n % usize::from(source_ips.max(1))) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(addr).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
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

/// Opens a publisher connection.
pub async fn publisher(peer: Peer, addr: SocketAddr, n: usize, source_ips: u8) -> anyhow::Result<TcpStream> {
    let mut stream = open(addr, n, source_ips).await?;
    if peer == Peer::Nats {
        stream.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n").await?;
    }
    Ok(stream)
}

/// Appends one publish command to `out`.
pub fn publish_command(peer: Peer, subject: &str, payload: &str, out: &mut Vec<u8>) {
    match peer {
        Peer::Redis => out.extend_from_slice(&resp(&["PUBLISH", subject, payload])),
        Peer::Nats => {
            out.extend_from_slice(format!("PUB {subject} {}\r\n{payload}\r\n", payload.len()).as_bytes())
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
