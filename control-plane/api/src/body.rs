//! Request bodies and names: parse JSON with precise error codes, check names.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tributary_protocol::ErrorCode;

use crate::error::ApiError;

/// The longest name of a tenant, app, key or token, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// Parses a JSON body, which must be an object: `invalid_json` for bad JSON, `invalid_frame`
/// for the wrong shape (an array included),
/// `frame_too_large` past the body limit.
pub fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::FrameTooLarge, "request body is larger than the maximum")
        } else {
            ApiError::new(ErrorCode::InvalidFrame, rejection.body_text())
        }
    })?;
    let text = std::str::from_utf8(&body).map_err(|_| ErrorCode::InvalidUtf8)?;
    tributary_protocol::json::from_object(text, "the request body")
        .map_err(|e| ApiError::new(e.code, e.message))
}

/// Checks a display name: 1 to [`MAX_NAME_CHARS`] characters, no control characters, not
/// only spaces.
pub fn name(field: &str, value: &str) -> Result<(), ApiError> {
    let chars = value.chars().count();
    if value.trim().is_empty() || chars > MAX_NAME_CHARS || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(name("name", "Acme Inc.").is_ok());
        assert!(name("name", "Ünïcödé").is_ok());
        for bad in ["", "   ", "a\u{0}b", "line\nbreak", &"x".repeat(MAX_NAME_CHARS + 1)] {
            assert_eq!(name("name", bad).unwrap_err().code, ErrorCode::InvalidParameter, "{bad:?}");
        }
    }
}
