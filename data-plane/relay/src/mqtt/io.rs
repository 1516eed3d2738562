//! The byte streams an MQTT connection runs on: TCP itself, or a WebSocket whose binary
//! messages carry the MQTT bytes (subprotocol `mqtt`, MQTT 5.0 §6).
//!
//! Both read only when bytes have arrived, so an idle connection holds no read buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::transport::websocket::{Incoming, Read, Socket, Stream, encode_close, encode_header, opcode};

/// A connection's byte stream.
pub(super) trait MqttIo: Send + Unpin + 'static {
    /// Appends what has arrived to `buf`; `Ready(Ok(0))` once the peer closed.
    fn poll_read_into(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>>;

    /// Writes some of `buf`; `Ready(Ok(n))` with how much was taken.
    fn poll_write_some(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;

    /// Writes whatever was taken and is still held.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ends the stream (for a WebSocket, with a close frame first).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl MqttIo for TcpStream {
    fn poll_read_into(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        loop {
            // Readiness first: the buffer is only made once there is something to put in it.
            ready!(self.poll_read_ready(cx))?;
            // A buffer made for this read only is given back if nothing came (the readiness was
            // stale); one the connection kept (it is busy) stays.
            let made_here = buf.capacity() == 0;
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            match self.try_read_buf(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if made_here && buf.is_empty() {
                        *buf = BytesMut::new();
                    }
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    fn poll_write_some(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, buf)
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_shutdown(cx)
    }
}

/// MQTT over a WebSocket: every binary message is bytes of the MQTT stream (a packet may span
/// messages and a message may hold several packets); anything else ends the connection.
pub(super) struct WsIo {
    socket: Socket<Stream>,
    /// The peer's close frame came: the next read reports the end.
    peer_closed: bool,
    /// Our close frame is queued.
    closing: bool,
}

impl WsIo {
    /// Wraps an upgraded stream and what the client sent after its request.
    pub fn new(stream: Stream, read_ahead: &[u8], max_message: usize) -> Self {
        let mut socket = Socket::new(stream, max_message);
        socket.prepend(read_ahead);
        Self { socket, peer_closed: false, closing: false }
    }
}

fn invalid(reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

impl MqttIo for WsIo {
    fn poll_read_into(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        loop {
            let mut got = 0;
            while !self.peer_closed {
                let step = self.socket.next(|incoming, _| match incoming {
                    Incoming::Binary(data) => {
                        buf.extend_from_slice(data);
                        Ok(data.len())
                    }
                    // MQTT 5.0 §6.0: a data frame other than binary closes the connection.
                    Incoming::Text(_) => Err("MQTT over WebSocket is carried in binary messages"),
                    Incoming::Close(..) => Ok(usize::MAX),
                    Incoming::Ping(_) | Incoming::Pong => Ok(0),
                });
                match step.map_err(invalid)? {
                    None => break,
                    Some(Err(reason)) => return Poll::Ready(Err(invalid(reason))),
                    Some(Ok(usize::MAX)) => self.peer_closed = true,
                    Some(Ok(n)) => got += n,
                }
            }
            if self.socket.pending() > 0 {
                // Pongs answered while decoding; a full socket leaves them for the next write.
                match self.socket.poll_flush(cx) {
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    Poll::Ready(Ok(())) => self.socket.release_write(),
                    Poll::Pending => {}
                }
            }
            if got > 0 {
                return Poll::Ready(Ok(got));
            }
            if self.peer_closed {
                return Poll::Ready(Ok(0));
            }
            match ready!(self.socket.poll_read(cx)) {
                Read::Data => {}
                Read::Gone => return Poll::Ready(Ok(0)),
            }
        }
    }

    fn poll_write_some(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // One message at a time: the next is framed only once the last is written, so a client
        // that stops reading holds back the connection's queue as it does over TCP.
        ready!(self.socket.poll_flush(cx))?;
        let out = self.socket.out();
        encode_header(out, opcode::BINARY, buf.len());
        out.extend_from_slice(buf);
        if let Poll::Ready(Err(err)) = self.socket.poll_flush(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.socket.poll_flush(cx))?;
        // Written: an idle connection keeps no write buffer.
        self.socket.release_write();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closing {
            self.closing = true;
            encode_close(self.socket.out(), 1000, "");
        }
        ready!(self.socket.poll_flush(cx))?;
        self.socket.poll_shutdown(cx)
    }
}

/// Writes all of `bytes`, then flushes.
pub(super) async fn write_all<S: MqttIo>(io: &mut S, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0;
    std::future::poll_fn(|cx| {
        while written < bytes.len() {
            match ready!(io.poll_write_some(cx, &bytes[written..]))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => written += n,
            }
        }
        io.poll_flush(cx)
    })
    .await
}

/// Reads what arrives into `buf`; 0 once the peer closed.
pub(super) async fn read_into<S: MqttIo>(io: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| io.poll_read_into(cx, buf)).await
}

/// Ends the stream.
pub(super) async fn shutdown<S: MqttIo>(io: &mut S) -> io::Result<()> {
    std::future::poll_fn(|cx| io.poll_shutdown(cx)).await
}
