//! The server side of the WebSocket opening handshake (RFC 6455 §4.2) on HTTP/1.1.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hyper::upgrade::OnUpgrade;
use sha1::{Digest, Sha1};

/// The GUID every accept key is derived with.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// An accepted handshake: the `101` response to send and the stream it opens.
pub struct Accepted {
    /// The `101 Switching Protocols` response.
    pub response: Response,
    /// Resolves to the upgraded stream once the response is sent.
    pub upgrade: OnUpgrade,
    /// Whether the client offered the subprotocol asked for (and it was selected).
    pub protocol_selected: bool,
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A refused handshake: plain HTTP, with the status and the reason.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    status: StatusCode,
    message: &'static str,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.message).into_response();
        if self.status == StatusCode::UPGRADE_REQUIRED {
            response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

fn refuse(status: StatusCode, message: &'static str) -> Refused {
    Refused { status, message }
}

/// Returns the `Sec-WebSocket-Accept` value for a client's key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// Checks an upgrade request and builds the response; `protocol` is selected if offered.
pub fn accept(mut request: Request, protocol: Option<&'static str>) -> Result<Accepted, Refused> {
    let headers = request.headers();
    if request.version() != Version::HTTP_11 {
        return Err(refuse(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "WebSocket needs HTTP/1.1"));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") || !has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this endpoint speaks WebSocket only"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        return Err(refuse(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 is required"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing"));
    };
    let accept = accept_key(key.as_bytes());
    let protocol_selected = protocol.is_some_and(|p| has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, p));
    let Some(upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    if let (true, Some(p)) = (protocol_selected, protocol) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    Ok(Accepted { response, upgrade, protocol_selected })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_accept_key_is_the_one_of_rfc_6455() {
        assert_eq!(super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
