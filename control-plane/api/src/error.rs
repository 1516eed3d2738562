//! Errors of the management API: a stable [`ErrorCode`] and a message, as
//! `{"error":{"code":..,"name":..,"message":..,"temporary":..}}` with the code's HTTP status,
//! the same shape as the data plane's HTTP API.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tributary_protocol::ErrorCode;
use tributary_protocol::frame::server::ErrorBody;
use tributary_store::StoreError;

/// A management API error.
#[derive(Debug)]
pub struct ApiError {
    /// The code.
    pub code: ErrorCode,
    /// What went wrong, for the caller.
    pub message: String,
}

impl ApiError {
    /// An error with its own message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// A bad parameter.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParameter, message)
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        Self::new(code, code.message())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let code = err.code();
        if code == ErrorCode::Internal {
            // The store logged the cause; the caller learns nothing about the database.
            return ApiError::from(ErrorCode::Internal);
        }
        ApiError::new(code, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: ErrorBody<'a>,
        }
        let status =
            StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(Body { error: ErrorBody::new(self.code, &self.message) })).into_response()
    }
}
