//! A diagnostic WebSocket echo endpoint, `/v1/diagnostics/echo`, mounted only when
//! `relay.diagnostic_echo` is on. It exists so that the relay's own WebSocket layer can be
//! checked against the Autobahn conformance cases (which need an echo server); it has no
//! authentication and must stay off in production.

use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;

use super::websocket::{Echoed, Socket, Stream};

/// Autobahn's largest cases send 16 MiB messages.
const ECHO_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Upgrades and echoes every text and binary message until the client closes.
pub async fn upgrade(request: Request) -> Response {
    let accepted = match super::websocket::accept(request, None) {
        Ok(accepted) => accepted,
        Err(refused) => return axum::response::IntoResponse::into_response(refused),
    };
    let upgrade = accepted.upgrade;
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let (stream, read_ahead) = Stream::from_upgrade(upgraded);
            let mut socket = Socket::new(stream, ECHO_MAX_BYTES);
            socket.prepend(&read_ahead);
            echo(socket).await;
        }
    });
    accepted.response
}

async fn echo<S>(mut socket: Socket<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let close = loop {
        match socket.echo_all() {
            Ok(Echoed::More) => {}
            Ok(Echoed::Closed(code)) => break if code == 1005 { 1000 } else { code },
            Err(err) => break err.close_code(),
        }
        if socket.pending() > 0 && std::future::poll_fn(|cx| socket.poll_flush(cx)).await.is_err() {
            return;
        }
        if matches!(std::future::poll_fn(|cx| socket.poll_read(cx)).await, super::websocket::Read::Gone) {
            return;
        }
    };
    socket.close(close, "", Duration::from_secs(2)).await;
}
