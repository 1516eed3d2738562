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
    let reply: Value = reqwest::Client::new()
        .post(format!("{}/v1/tokens", target.http))
        .bearer_auth(&target.api_key)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    reply["token"].as_str().map(str::to_owned).with_context(|| format!("no token: {reply}"))
}

fn server_addr(target: &Target) -> anyhow::Result<SocketAddr> {
    let authority = target.http.trim_start_matches("http://").trim_end_matches('/');
    authority.parse().with_context(|| format!("{authority} is not ip:port"))
}

/// Opens a WebSocket from source address 127.0.0.(1 + n % source_ips) and sends `connect`.
pub async fn connect(target: &Target, n: usize, token: &str) -> anyhow::Result<Ws> {
    let server = server_addr(target)?;
    let source = Ipv4Addr::new(127, 0, 0, 1 + (n % usize::from(target.source_ips.max(1))) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(server).await.context("tcp connect")?;
    stream.set_nodelay(true)?;
    let mut request = format!("ws://{server}/v1/connect").into_client_request()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", "tributary.v1".parse()?);
    let (mut ws, _) =
        tokio_tungstenite::client_async(request, stream).await.context("websocket handshake")?;
    ws.send(Message::text(json!({"id": 1, "op": "connect", "token": token}).to_string())).await?;
    let reply = next_json(&mut ws).await?;
    if reply.get("result").is_none() {
        bail!("connect refused: {reply}");
    }
    Ok(ws)
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
pub fn timestamp(frame: &str) -> Option<u64> {
    let start = frame.find("\"t\":")? + 4;
    let digits = frame[start..].bytes().take_while(u8::is_ascii_digit).count();
    frame[start..start + digits].parse().ok()
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
    use super::timestamp;

    #[test]
    fn timestamps_are_read_from_message_frames() {
        assert_eq!(timestamp(r#"{"type":"message","data":{"t":12345,"p":"x"}}"#), Some(12345));
        assert_eq!(timestamp(r#"{"type":"message","data":{}}"#), None);
    }
}
