//! A Server-Sent Events test client.

use std::collections::VecDeque;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;

use crate::ws::FRAME_TIMEOUT;

/// One event: its id (if any) and its data as JSON.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The `id:` field.
    pub id: Option<String>,
    /// The `data:` field, parsed.
    pub data: Value,
}

/// An open event stream.
pub struct SseClient {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: String,
    events: VecDeque<SseEvent>,
    /// The HTTP status of the response.
    pub status: u16,
}

impl SseClient {
    /// Opens `url?channels=..` with a bearer token and an optional `Last-Event-ID`.
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
        channels: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut request = http.get(url).query(&[("channels", channels)]).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.text().await.unwrap_or_default();
            bail!("sse refused with {status}: {body}");
        }
        Ok(Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            events: VecDeque::new(),
            status,
        })
    }

    /// Returns the next event.
    pub async fn next(&mut self) -> anyhow::Result<SseEvent> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            let chunk = tokio::time::timeout(FRAME_TIMEOUT, self.body.next())
                .await
                .context("no event in time")?
                .context("stream ended")??;
            self.buffer.push_str(std::str::from_utf8(&chunk)?);
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(crate::parse(v)?);
                    }
                }
                if let Some(data) = data {
                    self.events.push_back(SseEvent { id, data });
                }
            }
        }
    }

    /// Returns the next event whose frame type is `kind`.
    pub async fn next_of(&mut self, kind: &str) -> anyhow::Result<SseEvent> {
        loop {
            let event = self.next().await?;
            if event.data["type"] == kind {
                return Ok(event);
            }
        }
    }
}
