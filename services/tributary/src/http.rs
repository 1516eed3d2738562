//! The HTTP listener: accepts connections, bounds the ones still sending their request head,
//! and hands each to hyper with the router.
//!
//! `relay.handshake_timeout_ms` bounds the request head from the TCP accept (hyper's header
//! read timeout; the WebSocket's `connect` frame then has the same time from the upgrade, in the
//! relay). Connections that have not sent a whole first request head yet are capped at
//! `relay.max_pending_handshakes` per listener: past it a new connection gets `503` at once and
//! is closed, so a crowd of slow clients costs a bounded number of sockets and tasks, however
//! many addresses it comes from. A kept-alive connection's later request heads have the same
//! timeout (hyper starts it when the connection waits for a request, so an idle keep-alive
//! connection is closed after it too).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long requests in flight (SSE streams, long polls) get to finish after a shutdown.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection over the cap of pending handshakes is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
content-length: 105\r\nconnection: close\r\nretry-after: 1\r\n\r\n\
{\"error\":{\"code\":1201,\"name\":\"unavailable\",\"message\":\"too many handshakes in progress\",\"temporary\":true}}";

/// Limits on the way in.
#[derive(Debug, Clone, Copy)]
pub struct Handshakes {
    /// From the TCP accept to the end of the request head (and, for a WebSocket, to its
    /// `connect` frame).
    pub timeout: Duration,
    /// Connections that may be sending their first request head at once, on this listener.
    pub max_pending: usize,
}

impl Handshakes {
    /// The limits the relay's configuration sets.
    pub fn of(config: &tributary_relay::RelayConfig) -> Self {
        Self {
            timeout: Duration::from_millis(config.handshake_timeout_ms),
            max_pending: config.max_pending_handshakes,
        }
    }
}

/// Serves HTTP/1.1 with upgrades until `signal` completes, then waits (at most
/// [`DRAIN_TIMEOUT`]) for requests in flight. Hyper is given the TCP stream itself, so an
/// upgraded WebSocket gets it back without adapters between it and the socket.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Handshakes,
    signal: impl Future<Output = ()> + Send,
) {
    use hyper_util::rt::TokioIo;
    let connections = tokio_util::task::TaskTracker::new();
    let draining = tokio_util::sync::CancellationToken::new();
    let pending = Arc::new(Semaphore::new(limits.max_pending));
    let mut signal = std::pin::pin!(signal);
    let mut http = hyper::server::conn::http1::Builder::new();
    // The head of every request, the first one included (its clock starts at the accept),
    // must arrive within the handshake timeout.
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.timeout);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = signal.as_mut() => break,
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            refuse_busy(stream);
            tracing::debug!("connection refused: too many handshakes in progress");
            continue;
        };
        // Realtime frames are small: without TCP_NODELAY, Nagle's algorithm holds a frame back
        // until the previous one is acknowledged, which with delayed ACKs costs up to 40 ms.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let service =
            hyper_util::service::TowerToHyperService::new(FirstRequest::new(router.clone(), permit));
        let connection = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let draining = draining.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = draining.cancelled() => {
                    // Finish the request in flight, then close (keep-alive ends here).
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = ended {
                tracing::debug!(error = %err, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    draining.cancel();
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait()).await.is_err() {
        tracing::warn!("requests still in flight after the drain timeout; stopping anyway");
    }
}

/// Answers `503` and closes, without waiting for anything: a socket whose buffer is full is
/// closed all the same. What the client already sent is read first, and the write side is shut
/// before the socket is dropped, so the answer is not thrown away by a reset (a client that sends
/// its request only after the answer may still see one).
fn refuse_busy(stream: tokio::net::TcpStream) {
    let mut sink = [0u8; 1024];
    for _ in 0..16 {
        match stream.try_read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = stream.try_write(BUSY);
    if let Ok(socket) = stream.into_std() {
        let _ = socket.shutdown(std::net::Shutdown::Write);
    }
}

/// The router of one connection: its first request frees the connection's pending-handshake
/// permit.
#[derive(Clone)]
struct FirstRequest {
    router: axum::Router,
    /// Taken by the first request (hyper clones the service for each one).
    permit: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl FirstRequest {
    fn new(router: axum::Router, permit: OwnedSemaphorePermit) -> Self {
        Self { router, permit: Arc::new(Mutex::new(Some(permit))) }
    }
}

impl tower_service::Service<Request<Incoming>> for FirstRequest {
    type Response = <axum::Router as tower_service::Service<Request<Incoming>>>::Response;
    type Error = <axum::Router as tower_service::Service<Request<Incoming>>>::Error;
    type Future = <axum::Router as tower_service::Service<Request<Incoming>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<Request<Incoming>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        // The head is in: the connection no longer counts as a pending handshake.
        drop(self.permit.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.router.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::BUSY;

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap();
        assert_eq!(length, body.len());
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        let code = tributary_protocol::ErrorCode::Unavailable;
        assert_eq!(
            (body["error"]["code"].as_u64(), body["error"]["name"].as_str()),
            (Some(u64::from(code.number())), Some(code.name()))
        );
    }
}
