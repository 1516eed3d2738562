//! MQTT over TLS (`relay.mqtt.tls_listen`): the certificate chain and key from PEM files, ring
//! as the crypto provider, and the TLS stream as a connection's byte stream.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::connection;
use super::io::MqttIo;
use crate::state::RelayState;

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the certificate and key (a key that does not match, say).
    #[error("the certificate and key cannot be used: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the acceptor from a PEM certificate chain (the server's certificate first) and a PEM
/// private key.
pub fn acceptor(cert_file: &str, key_file: &str) -> Result<TlsAcceptor, TlsError> {
    let file_error = |path: &str, reason: String| TlsError::File { path: path.to_owned(), reason };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| file_error(cert_file, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert_file, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(cert_file, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| file_error(key_file, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts MQTT-over-TLS connections on `listener` until the relay shuts down. A handshake
/// that fails or takes longer than the relay's handshake timeout ends only its own connection.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<RelayState>) {
    let timeout = Duration::from_millis(state.config.handshake_timeout_ms);
    super::accept_each(listener, &state, |stream| {
        let (acceptor, state) = (acceptor.clone(), state.clone());
        state.tasks.clone().spawn(async move {
            // Boxed: rustls's state is kilobytes, and inline it would be in the task twice over
            // (the handshake's future, then the connection's).
            let tls = match tokio::time::timeout(timeout, Box::pin(acceptor.accept(stream))).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(err)) => return tracing::debug!(error = %err, "MQTT TLS handshake failed"),
                Err(_) => return tracing::debug!("MQTT TLS handshake timed out"),
            };
            connection::run(tls, state).await;
        });
    })
    .await;
}

/// Bytes read from TLS per call at most.
const READ_CHUNK: usize = 16 * 1024;

impl MqttIo for Box<TlsStream<TcpStream>> {
    fn poll_read_into(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        // Read into the stack: the connection's buffer is only grown by what arrived.
        let mut chunk = [const { MaybeUninit::<u8>::uninit() }; READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut **self).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    fn poll_write_some(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut **self).poll_write(cx, buf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut **self).poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut **self).poll_shutdown(cx)
    }
}
