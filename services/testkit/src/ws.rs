//! A WebSocket test client for the `tributary.v1` protocol.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a client waits for any one frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected client. Frames that arrive while waiting for a reply are kept for later reads.
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pending: VecDeque<Value>,
    next_id: u64,
}

impl WsClient {
    /// Opens a socket without sending anything.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let mut request = url.into_client_request()?;
        request.headers_mut().insert("Sec-WebSocket-Protocol", "tributary.v1".parse()?);
        let (socket, _) = tokio_tungstenite::connect_async(request).await.context("websocket handshake")?;
        Ok(Self { socket, pending: VecDeque::new(), next_id: 100 })
    }

    /// Opens a socket and sends `connect`; returns the client and the connect reply.
    pub async fn connect(url: &str, token: &str) -> anyhow::Result<(Self, Value)> {
        let mut client = Self::open(url).await?;
        let reply = client.request(json!({"op": "connect", "token": token})).await?;
        Ok((client, reply))
    }

    /// Sends a frame as JSON text.
    pub async fn send(&mut self, frame: Value) -> anyhow::Result<()> {
        self.socket.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// Sends frames in one write, so the server reads them together (a pipelining client).
    pub async fn send_all(&mut self, frames: impl IntoIterator<Item = Value>) -> anyhow::Result<()> {
        for frame in frames {
            self.socket.feed(Message::text(frame.to_string())).await?;
        }
        self.socket.flush().await?;
        Ok(())
    }

    /// Sends a raw WebSocket message.
    pub async fn send_raw(&mut self, message: Message) -> anyhow::Result<()> {
        self.socket.send(message).await?;
        Ok(())
    }

    /// Sends `frame` with a fresh id and returns the reply with that id.
    pub async fn request(&mut self, mut frame: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        frame["id"] = json!(id);
        self.send(frame).await?;
        self.reply_to(id).await
    }

    /// Waits for the reply with `id`, keeping other frames.
    pub async fn reply_to(&mut self, id: u64) -> anyhow::Result<Value> {
        if let Some(pos) = self.pending.iter().position(|f| f["type"] == "reply" && f["id"] == id) {
            return Ok(self.pending.remove(pos).unwrap_or_default());
        }
        loop {
            let frame = self.read().await?;
            if frame["type"] == "reply" && frame["id"] == id {
                return Ok(frame);
            }
            self.pending.push_back(frame);
        }
    }

    /// Returns the next frame (kept ones first).
    pub async fn next(&mut self) -> anyhow::Result<Value> {
        match self.pending.pop_front() {
            Some(frame) => Ok(frame),
            None => self.read().await,
        }
    }

    /// Returns the next frame of `kind`, dropping others.
    pub async fn next_of(&mut self, kind: &str) -> anyhow::Result<Value> {
        loop {
            let frame = self.next().await?;
            if frame["type"] == kind {
                return Ok(frame);
            }
        }
    }

    /// Returns the next `n` message frames.
    pub async fn messages(&mut self, n: usize) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_of("message").await?);
        }
        Ok(out)
    }

    /// Returns whether no frame arrives within `wait`. Panics if the connection closes or
    /// fails meanwhile: "nothing arrived" must not pass because nothing could.
    pub async fn quiet_for(&mut self, wait: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        match self.read_until(tokio::time::Instant::now() + wait).await {
            Ok(None) => true,
            Ok(Some(frame)) => {
                self.pending.push_back(frame);
                false
            }
            Err(err) => panic!("expected a quiet connection, but {err:#}"),
        }
    }

    /// Returns whether no `message` frame arrives within `wait` (other frames are dropped).
    /// Panics if the connection closes or fails meanwhile.
    pub async fn no_message_within(&mut self, wait: Duration) -> bool {
        if self.pending.iter().any(|f| f["type"] == "message") {
            return false;
        }
        self.pending.clear();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.read_until(deadline).await {
                Ok(None) => return true,
                Ok(Some(frame)) if frame["type"] == "message" => {
                    self.pending.push_back(frame);
                    return false;
                }
                Ok(Some(_)) => continue,
                Err(err) => panic!("expected no message on an open connection, but {err:#}"),
            }
        }
    }

    /// Reads the next text frame before `deadline`: `None` when the deadline passes first, an
    /// error when the connection closes or fails.
    async fn read_until(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<Option<Value>> {
        loop {
            let Ok(message) = tokio::time::timeout_at(deadline, self.socket.next()).await else {
                return Ok(None);
            };
            match message {
                Some(Ok(Message::Text(text))) => return crate::parse(&text).map(Some),
                Some(Ok(Message::Close(frame))) => bail!("the server closed the connection: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(err)) => bail!("socket error: {err}"),
                None => bail!("the socket ended"),
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn closed(&mut self) -> anyhow::Result<(u16, String)> {
        loop {
            let message =
                tokio::time::timeout(FRAME_TIMEOUT, self.socket.next()).await.context("no close frame")?;
            match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ok((frame.code.into(), frame.reason.to_string()));
                }
                Some(Ok(Message::Close(None))) | None => return Ok((1005, String::new())),
                Some(Ok(_)) => continue,
                Some(Err(err)) => bail!("socket error before close: {err}"),
            }
        }
    }

    async fn read(&mut self) -> anyhow::Result<Value> {
        loop {
            let message =
                tokio::time::timeout(FRAME_TIMEOUT, self.socket.next()).await.context("no frame in time")?;
            match message {
                Some(Ok(Message::Text(text))) => return crate::parse(&text),
                Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(err)) => bail!("socket error: {err}"),
                None => bail!("socket ended"),
            }
        }
    }
}
