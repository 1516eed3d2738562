//! A server-side WebSocket over any byte stream, with buffers that exist only while there is
//! data: an idle connection holds no read or write buffer at all.
//!
//! Reads land in a buffer on the stack and are copied to the heap only when they hold a frame's
//! start that has to wait for the rest. Writes are encoded into one buffer and leave in as few
//! syscalls as the socket allows; the buffer is freed once everything was written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::frame::{self, Decoder, Incoming, Next, WsError, opcode};

/// Bytes read per read call (on the stack of the poll, never per connection).
const READ_CHUNK: usize = 16 * 1024;

/// A write buffer larger than this is freed once written, even when more is coming.
const KEEP_WRITE_BUFFER: usize = 256 * 1024;

/// A WebSocket connection's framing state and buffers.
pub struct Socket<S> {
    io: S,
    /// Received bytes not yet decoded (a partial frame, or frames not yet taken).
    rbuf: Vec<u8>,
    /// How much of `rbuf` has been taken.
    rpos: usize,
    /// Encoded frames not yet written.
    wbuf: Vec<u8>,
    /// How much of `wbuf` has been written.
    wpos: usize,
    /// Since when the socket has refused to take the pending bytes.
    stalled_since: Option<Instant>,
    decoder: Decoder,
}

/// What a read produced.
pub enum Read {
    /// New bytes arrived.
    Data,
    /// The peer closed the stream (or it failed).
    Gone,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// Wraps an upgraded stream; messages larger than `max_message` bytes are refused.
    pub fn new(io: S, max_message: usize) -> Self {
        Self {
            io,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            stalled_since: None,
            decoder: Decoder::new(max_message),
        }
    }

    /// Adds bytes that arrived before the socket existed (read ahead by the HTTP layer).
    pub fn prepend(&mut self, bytes: &[u8]) {
        self.rbuf.extend_from_slice(bytes);
    }

    /// Returns whether bytes were read that are not decoded yet.
    pub fn has_input(&self) -> bool {
        self.rpos < self.rbuf.len()
    }

    /// Reads what the socket has.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        // Uninitialised: zeroing 16 KiB on every poll would cost more than the read.
        let mut chunk = [const { std::mem::MaybeUninit::<u8>::uninit() }; READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Read::Gone),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Read::Gone),
            Poll::Ready(Ok(())) => {
                self.rbuf.extend_from_slice(buf.filled());
                Poll::Ready(Read::Data)
            }
        }
    }

    /// Decodes the next message or close frame from what was read and hands it to `handle`
    /// (with the write buffer, to answer in). Pings are answered and pongs dropped here.
    /// `Ok(None)` means more bytes are needed.
    pub fn next<R>(
        &mut self,
        handle: impl FnOnce(Incoming<'_>, &mut Vec<u8>) -> R,
    ) -> Result<Option<R>, WsError> {
        let mut handle = Some(handle);
        loop {
            let next = self.decoder.next(&mut self.rbuf[self.rpos..]);
            let next = match next {
                Ok(next) => next,
                Err(err) => {
                    self.release_read();
                    return Err(err);
                }
            };
            match next {
                Next::Incomplete => {
                    self.compact();
                    return Ok(None);
                }
                Next::Absorbed { consumed } => self.rpos += consumed,
                Next::Ready { consumed, kind } => {
                    let buf = &self.rbuf[self.rpos..];
                    let result = match self.decoder.item(buf, kind) {
                        Incoming::Ping(payload) => {
                            frame::encode(&mut self.wbuf, opcode::PONG, payload);
                            None
                        }
                        Incoming::Pong => None,
                        item => handle.take().map(|handle| handle(item, &mut self.wbuf)),
                    };
                    self.decoder.done(kind);
                    self.rpos += consumed;
                    if let Some(result) = result {
                        if self.rpos == self.rbuf.len() {
                            self.release_read();
                        }
                        return Ok(Some(result));
                    }
                }
            }
        }
    }

    /// Drops decoded bytes; frees the buffer when nothing is left in it.
    fn compact(&mut self) {
        if self.rpos == self.rbuf.len() {
            self.release_read();
        } else if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
    }

    fn release_read(&mut self) {
        self.rbuf = Vec::new();
        self.rpos = 0;
    }

    /// Returns the write buffer, to encode frames into.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    /// Returns how many encoded bytes wait to be written.
    pub fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Returns since when the peer has taken none of the pending bytes, if it is stalled.
    pub fn stalled_since(&self) -> Option<Instant> {
        self.stalled_since
    }

    /// Writes pending bytes until done or the socket is full. `Ready(Ok)` once all is written.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.wpos += n;
                    self.stalled_since = None;
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    self.stalled_since.get_or_insert_with(Instant::now);
                    return Poll::Pending;
                }
            }
        }
        if self.wbuf.capacity() > KEEP_WRITE_BUFFER {
            self.wbuf = Vec::new();
        } else {
            self.wbuf.clear();
        }
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    /// Ends the stream's sending side (after [`Socket::poll_flush`]).
    pub fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    /// Frees the write buffer if nothing is pending (the connection is going idle).
    pub fn release_write(&mut self) {
        if self.pending() == 0 {
            self.wbuf = Vec::new();
            self.wpos = 0;
        }
    }

    /// Writes what is pending, then a close frame, and ends the stream; gives up after
    /// `timeout` (a peer that reads nothing just loses the connection).
    pub async fn close(&mut self, code: u16, reason: &str, timeout: std::time::Duration) {
        frame::encode_close(&mut self.wbuf, code, reason);
        let _ = tokio::time::timeout(timeout, async {
            if std::future::poll_fn(|cx| self.poll_flush(cx)).await.is_ok() {
                let _ = std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
                // Read (and drop) what the peer still sends until it closes too: closing a socket
                // with unread bytes sends a reset, which may destroy the close frame in flight.
                self.release_read();
                while let Read::Data = std::future::poll_fn(|cx| self.poll_read(cx)).await {
                    self.release_read();
                }
            }
        })
        .await;
    }
}

/// What [`Socket::echo_all`] found.
pub enum Echoed {
    /// Everything complete was echoed; more bytes are needed.
    More,
    /// The peer sent a close frame with this code (1005 when it gave none).
    Closed(u16),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// Echoes every complete message read so far (the diagnostic echo endpoint).
    pub fn echo_all(&mut self) -> Result<Echoed, WsError> {
        loop {
            let step = self.next(|incoming, out| match incoming {
                Incoming::Text(data) => {
                    frame::encode(out, opcode::TEXT, data);
                    None
                }
                Incoming::Binary(data) => {
                    frame::encode(out, opcode::BINARY, data);
                    None
                }
                Incoming::Close(code, _) => Some(code),
                Incoming::Ping(_) | Incoming::Pong => None,
            })?;
            match step {
                None => return Ok(Echoed::More),
                Some(Some(code)) => return Ok(Echoed::Closed(code)),
                Some(None) => {}
            }
        }
    }
}
