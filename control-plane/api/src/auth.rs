//! Who is calling: a management token (`Authorization: Bearer trbm_…`), an operator's or a
//! tenant's with a role, and the request id every audit event carries.
//!
//! Scoping is the first check of every tenant route: a tenant's token asking for another
//! tenant's objects gets 404 `not_found`, exactly as if they did not exist, so ids of other
//! tenants cannot be probed. The role check comes second (403 `permission_denied`).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use tributary_protocol::ErrorCode;
use tributary_store::{Actor, ManagementToken, Role};

use crate::ControlPlane;
use crate::error::ApiError;

/// The longest request id kept from `x-request-id`; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The authenticated caller of a request.
#[derive(Debug)]
pub struct Caller {
    /// The verified management token.
    pub token: ManagementToken,
    /// The actor and request id for audit events.
    pub actor: Actor,
}

impl Caller {
    /// Returns whether the caller is the operator.
    pub fn is_operator(&self) -> bool {
        self.token.role == Role::Operator
    }

    /// Allows only the operator.
    pub fn operator(&self) -> Result<(), ApiError> {
        if self.is_operator() { Ok(()) } else { Err(ErrorCode::PermissionDenied.into()) }
    }

    /// Allows the operator, or a token of `tenant_id` with at least `role`. A token of another
    /// tenant gets `not_found`, as if the tenant did not exist.
    pub fn tenant(&self, tenant_id: &str, role: Role) -> Result<(), ApiError> {
        if self.is_operator() {
            return Ok(());
        }
        if self.token.tenant_id.as_deref() != Some(tenant_id) {
            return Err(ApiError::new(ErrorCode::NotFound, "tenant not found"));
        }
        if self.token.role < role {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("this needs the {} role or higher", role.as_str()),
            ));
        }
        Ok(())
    }
}

/// Returns the request's id: its `x-request-id` if it is short and printable, else a new one.
fn request_id(parts: &Parts) -> String {
    parts
        .headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned)
}

impl FromRequestParts<Arc<ControlPlane>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, plane: &Arc<ControlPlane>) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(ErrorCode::Unauthorized)?;
        let token = plane.store.verify_management_token(presented.trim()).await.map_err(|err| match err {
            tributary_store::StoreError::InvalidManagementToken => {
                ApiError::new(ErrorCode::Unauthorized, "invalid management token")
            }
            other => ApiError::from(other),
        })?;
        let who = if token.role == Role::Operator { "operator" } else { "token" };
        let actor = Actor { actor: format!("{who}:{}", token.id), request_id: request_id(parts) };
        Ok(Caller { token, actor })
    }
}
