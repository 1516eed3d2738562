//! A diagnostic WebSocket echo endpoint, `/v1/diagnostics/echo`, mounted only when
//! `relay.diagnostic_echo` is on. It exists so that the WebSocket layer the relay runs on can be
//! checked against the Autobahn conformance cases (which need an echo server); it has no
//! authentication and must stay off in production.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;

/// Autobahn's largest cases send 16 MiB messages.
const ECHO_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Upgrades and echoes every text and binary message until the client closes.
pub async fn upgrade(ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(ECHO_MAX_BYTES).max_frame_size(ECHO_MAX_BYTES).on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    // Keep reading after a close frame: reading is what lets the WebSocket layer send its
    // close reply before the stream ends.
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, Message::Text(_) | Message::Binary(_)) && socket.send(message).await.is_err() {
            break;
        }
    }
}
