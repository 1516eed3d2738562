//! Who is calling: a management token (`Authorization: Bearer trbm_…`, for automation and
//! operators) or a console user's session (the `trb_session` cookie), and the request id every
//! audit event carries.
//!
//! Scoping is the first check of every tenant route: a credential without a role in the path's
//! tenant gets 404 `not_found`, exactly as if the tenant did not exist, so ids of other tenants
//! cannot be probed. The role check comes second (403 `permission_denied`).
//!
//! A session cookie is sent by the browser on its own, so a request that changes something
//! with one must also carry the session's CSRF token in `x-csrf-token` (a page of another
//! site cannot read it); without it the request is refused (403 `permission_denied`).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, header};
use tributary_protocol::ErrorCode;
use tributary_store::{Actor, ManagementToken, Role, User};

use crate::ControlPlane;
use crate::error::ApiError;

/// The longest request id kept from `x-request-id`; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "trb_session";

/// The header a session's CSRF token is sent in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What authenticated the request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A management token.
    Token(ManagementToken),
    /// A console user, by session.
    User {
        /// The user.
        user: User,
        /// The session (for logout).
        session_id: String,
        /// The tenants the user belongs to, with the user's role in each.
        memberships: Vec<(String, Role)>,
    },
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who it is.
    pub principal: Principal,
    /// The actor and request id for audit events.
    pub actor: Actor,
}

impl Caller {
    /// Returns whether the caller is the operator.
    pub fn is_operator(&self) -> bool {
        matches!(&self.principal, Principal::Token(token) if token.role == Role::Operator)
    }

    /// Returns the caller's role in `tenant_id` (the operator's everywhere).
    pub fn role_in(&self, tenant_id: &str) -> Option<Role> {
        match &self.principal {
            Principal::Token(token) if token.role == Role::Operator => Some(Role::Operator),
            Principal::Token(token) => (token.tenant_id.as_deref() == Some(tenant_id)).then_some(token.role),
            Principal::User { memberships, .. } => {
                memberships.iter().find(|(tenant, _)| tenant == tenant_id).map(|(_, role)| *role)
            }
        }
    }

    /// Allows only the operator.
    pub fn operator(&self) -> Result<(), ApiError> {
        if self.is_operator() { Ok(()) } else { Err(ErrorCode::PermissionDenied.into()) }
    }

    /// Parses a tenant role to hand out (a token's, an invitation's): one of `read_only`,
    /// `developer`, `admin`, `owner`, never above the caller's own role in `tenant_id`.
    pub fn grantable_role(&self, tenant_id: &str, name: &str) -> Result<Role, ApiError> {
        let role = Role::parse(name)
            .filter(|role| *role != Role::Operator)
            .ok_or_else(|| ApiError::invalid("role must be one of read_only, developer, admin, owner"))?;
        if Some(role) > self.role_in(tenant_id) {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                "no one can give more than their own role",
            ));
        }
        Ok(role)
    }

    /// Allows the operator, or a credential with at least `role` in `tenant_id`. One without a
    /// role there gets `not_found`, as if the tenant did not exist.
    pub fn tenant(&self, tenant_id: &str, role: Role) -> Result<(), ApiError> {
        match self.role_in(tenant_id) {
            None => Err(ApiError::new(ErrorCode::NotFound, "tenant not found")),
            Some(own) if own < role => Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("this needs the {} role or higher", role.as_str()),
            )),
            Some(_) => Ok(()),
        }
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

/// Returns the values of cookie `name` in the request (a browser may send several: one of a
/// narrower path, or one a sibling domain set).
pub fn cookies<'a>(parts: &'a Parts, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Most session cookies of one request tried (each is a store lookup).
const MAX_SESSION_CANDIDATES: usize = 4;

impl FromRequestParts<Arc<ControlPlane>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, plane: &Arc<ControlPlane>) -> Result<Self, ApiError> {
        let request_id = request_id(parts);
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if let Some(presented) = bearer {
            let token =
                plane.store.verify_management_token(presented.trim()).await.map_err(|err| match err {
                    tributary_store::StoreError::InvalidManagementToken => {
                        ApiError::new(ErrorCode::Unauthorized, "invalid management token")
                    }
                    other => ApiError::from(other),
                })?;
            let who = if token.role == Role::Operator { "operator" } else { "token" };
            let actor = Actor { actor: format!("{who}:{}", token.id), request_id };
            return Ok(Caller { principal: Principal::Token(token), actor });
        }
        let candidates: Vec<String> =
            cookies(parts, SESSION_COOKIE).take(MAX_SESSION_CANDIDATES).map(str::to_owned).collect();
        if candidates.is_empty() {
            return Err(ErrorCode::Unauthorized.into());
        }
        let mut session = None;
        for presented in &candidates {
            match plane.store.verify_session(presented).await {
                Ok(found) => {
                    session = Some(found);
                    break;
                }
                Err(tributary_store::StoreError::InvalidCredentials) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        let session = session
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "the session has ended: log in again"))?;
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            let csrf =
                parts.headers.get(CSRF_HEADER).and_then(|value| value.to_str().ok()).unwrap_or_default();
            if !session.csrf_matches(csrf) {
                return Err(ApiError::new(ErrorCode::PermissionDenied, "missing or wrong CSRF token"));
            }
        }
        let memberships = plane.store.memberships(&session.user.id).await?;
        let actor = Actor { actor: format!("user:{}", session.user.id), request_id };
        Ok(Caller {
            principal: Principal::User { user: session.user, session_id: session.id, memberships },
            actor,
        })
    }
}
