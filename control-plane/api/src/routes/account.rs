//! Console accounts: sign-up, login and logout with a session cookie, the current user, and
//! invitations to join a tenant.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tributary_protocol::ErrorCode;
use tributary_store::{NewSession, Role, StoreError, User};

use crate::ControlPlane;
use crate::auth::{Caller, Principal, SESSION_COOKIE};
use crate::body;
use crate::error::ApiError;

/// Failed logins an address may have within [`LOGIN_WINDOW`] before it is locked for the rest
/// of it.
const MAX_LOGIN_FAILURES: i64 = 10;
/// The window of [`MAX_LOGIN_FAILURES`] (from the last failure).
const LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// How long an invitation can be accepted: 7 days.
const INVITATION_TTL_SECS: i64 = 7 * 24 * 3600;

#[derive(Serialize)]
pub(crate) struct UserView {
    id: String,
    email: String,
    name: String,
    created_at: i64,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self { id: u.id, email: u.email, name: u.name, created_at: u.created_at }
    }
}

#[derive(Serialize)]
pub(crate) struct MembershipView {
    tenant_id: String,
    role: &'static str,
}

/// What login, sign-up and accepting an invitation answer (the session itself is the cookie).
#[derive(Serialize)]
pub(crate) struct SessionView {
    user: UserView,
    memberships: Vec<MembershipView>,
    /// Send it as `x-csrf-token` with every request that changes something.
    csrf_token: String,
    expires_at: i64,
}

/// Refuses a body that is not declared JSON. A page of another site can post a form (even one
/// shaped like JSON) without asking, but not `application/json`: without this, it could log a
/// visitor into the attacker's account (login CSRF).
fn json_only(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().to_ascii_lowercase().starts_with("application/json"));
    if declared {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidFrame,
            "send the body as JSON with Content-Type: application/json",
        ))
    }
}

fn email(value: &str) -> Result<(), ApiError> {
    let value = value.trim();
    let valid = (3..=254).contains(&value.len())
        && value.split('@').count() == 2
        && value.split('@').all(|part| !part.is_empty())
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid { Ok(()) } else { Err(ApiError::invalid("email is not an email address")) }
}

fn password(value: &str) -> Result<(), ApiError> {
    match tributary_store::user::password_problem(value) {
        Some(problem) => Err(ApiError::invalid(problem)),
        None => Ok(()),
    }
}

/// Answers with the session cookie set and the session's view.
async fn with_session(
    plane: &ControlPlane,
    status: StatusCode,
    user: User,
    session: NewSession,
) -> Result<Response, ApiError> {
    let memberships = plane
        .store
        .memberships(&user.id)
        .await?
        .into_iter()
        .map(|(tenant_id, role)| MembershipView { tenant_id, role: role.as_str() })
        .collect();
    let secure = if plane.settings.secure_cookies { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        session.token.expose_secret(),
        plane.settings.session_ttl_secs
    );
    let view = SessionView {
        user: user.into(),
        memberships,
        csrf_token: session.csrf.expose_secret().to_owned(),
        expires_at: session.expires_at,
    };
    let mut response = (status, Json(view)).into_response();
    let value = HeaderValue::from_str(&cookie).map_err(|_| ApiError::from(ErrorCode::Internal))?;
    response.headers_mut().insert(SET_COOKIE, value);
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignupBody {
    email: String,
    name: String,
    password: String,
    company: String,
}

/// `POST /v1/auth/signup` (when `control.allow_signup`): a user, a tenant on the sign-up plan
/// with the user as owner, and a session.
pub(crate) async fn signup(
    State(plane): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    json_only(&headers)?;
    if !plane.settings.allow_signup {
        return Err(ApiError::new(ErrorCode::NotFound, "sign-up is not open on this server"));
    }
    let body: SignupBody = body::parse(body)?;
    email(&body.email)?;
    password(&body.password)?;
    body::name("name", &body.name)?;
    body::name("company", &body.company)?;
    let (user, _) = plane
        .store
        .sign_up(&body.email, &body.name, &body.password, &body.company, &plane.settings.signup_plan)
        .await
        .map_err(|err| match err {
            StoreError::AlreadyExists(_) => {
                ApiError::new(ErrorCode::AlreadyExists, "this email has an account: log in")
            }
            StoreError::NotFound("plan") => {
                tracing::error!(plan = plane.settings.signup_plan, "control.signup_plan names no plan");
                ApiError::new(ErrorCode::Internal, "sign-up is misconfigured on this server")
            }
            other => other.into(),
        })?;
    let session = plane.store.create_session(&user.id, plane.settings.session_ttl_secs).await?;
    with_session(&plane, StatusCode::CREATED, user, session).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    email: String,
    password: String,
}

/// `POST /v1/auth/login`: a session for the right email and password; 401 `unauthorized`
/// alike for an unknown email and a wrong password.
pub(crate) async fn login(
    State(plane): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    json_only(&headers)?;
    let body: LoginBody = body::parse(body)?;
    // Failed logins are counted per address over every node (in the engine): past the limit
    // the address is locked for the rest of the window, whoever tries.
    let attempts = format!("login-failures:{}", body.email.trim().to_lowercase());
    let failures = plane.engine.counter_add(&attempts, 0, LOGIN_WINDOW).await.unwrap_or(0);
    if failures >= MAX_LOGIN_FAILURES {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "too many failed logins for this address: retry in {} minutes",
                LOGIN_WINDOW.as_secs() / 60
            ),
        ));
    }
    let user = match plane.store.check_password(&body.email, &body.password).await {
        Ok(user) => user,
        Err(StoreError::InvalidCredentials) => {
            if let Err(err) = plane.engine.counter_add(&attempts, 1, LOGIN_WINDOW).await {
                tracing::warn!(error = %err, "failed login not counted");
            }
            return Err(ApiError::new(ErrorCode::Unauthorized, "wrong email or password"));
        }
        Err(other) => return Err(other.into()),
    };
    let session = plane.store.create_session(&user.id, plane.settings.session_ttl_secs).await?;
    with_session(&plane, StatusCode::OK, user, session).await
}

/// `POST /v1/auth/logout` (session + CSRF token): ends the session and clears the cookie.
pub(crate) async fn logout(
    State(plane): State<Arc<ControlPlane>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let Principal::User { session_id, .. } = &caller.principal else {
        return Err(ApiError::invalid("only a console session logs out"));
    };
    plane.store.revoke_session(session_id).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
    Ok(response)
}

#[derive(Serialize)]
pub(crate) struct MeView {
    user: UserView,
    memberships: Vec<MembershipView>,
}

/// `GET /v1/auth/me`: the session's user and tenants.
pub(crate) async fn me(caller: Caller) -> Result<Json<MeView>, ApiError> {
    let Principal::User { user, memberships, .. } = caller.principal else {
        return Err(ApiError::invalid("only a console session has a user"));
    };
    let memberships = memberships
        .into_iter()
        .map(|(tenant_id, role)| MembershipView { tenant_id, role: role.as_str() })
        .collect();
    Ok(Json(MeView { user: user.into(), memberships }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteBody {
    email: String,
    role: String,
}

#[derive(Serialize)]
pub(crate) struct InvitationView {
    id: String,
    email: String,
    role: &'static str,
    expires_at: i64,
    /// Send it to the invitee; shown once.
    token: String,
}

/// `POST /v1/tenants/{tenant}/invitations` `{"email":..,"role":..}` (admin): an invitation to
/// join the tenant, never above the inviter's own role.
pub(crate) async fn invite(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<InvitationView>), ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    let body: InviteBody = body::parse(body)?;
    email(&body.email)?;
    let role = caller.grantable_role(&tenant, &body.role)?;
    plane.store.tenant(&tenant).await?;
    let invitation =
        plane.store.create_invitation(&caller.actor, &tenant, &body.email, role, INVITATION_TTL_SECS).await?;
    Ok((
        StatusCode::CREATED,
        Json(InvitationView {
            id: invitation.id,
            email: invitation.email,
            role: invitation.role.as_str(),
            expires_at: invitation.expires_at,
            token: invitation.token.expose_secret().to_owned(),
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcceptBody {
    token: String,
    name: String,
    password: String,
}

/// `POST /v1/auth/invitations/accept` `{"token":..,"name":..,"password":..}`: joins the
/// tenant (making the account of the invited address, or checking its password when it has
/// one) and starts a session.
pub(crate) async fn accept(
    State(plane): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    json_only(&headers)?;
    let body: AcceptBody = body::parse(body)?;
    body::name("name", &body.name)?;
    password(&body.password)?;
    let (user, _) = plane.store.accept_invitation(&body.token, &body.name, &body.password).await.map_err(
        |err| match err {
            StoreError::InvalidCredentials => ApiError::new(
                ErrorCode::Unauthorized,
                "the invitation is not valid (or the password is wrong)",
            ),
            other => other.into(),
        },
    )?;
    let session = plane.store.create_session(&user.id, plane.settings.session_ttl_secs).await?;
    with_session(&plane, StatusCode::OK, user, session).await
}

#[derive(Serialize)]
pub(crate) struct MemberView {
    user: UserView,
    role: &'static str,
}

/// `GET /v1/tenants/{tenant}/members` (read_only): the tenant's users and their roles.
pub(crate) async fn members(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
) -> Result<Json<Vec<MemberView>>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    plane.store.tenant(&tenant).await?;
    let members = plane.store.members(&tenant).await?;
    Ok(Json(
        members
            .into_iter()
            .map(|(user, role)| MemberView { user: user.into(), role: role.as_str() })
            .collect(),
    ))
}

/// `DELETE /v1/tenants/{tenant}/members/{user}` (admin): removes a member, never one above the
/// caller's own role; their access to the tenant ends with their next request.
pub(crate) async fn remove_member(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, user)): Path<(String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    let members = plane.store.members(&tenant).await?;
    let (_, role) = members
        .iter()
        .find(|(member, _)| member.id == user)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "member not found"))?;
    if Some(*role) > caller.role_in(&tenant) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "no one can remove a member above their own role",
        ));
    }
    last_owner_stays(&members, &user, None)?;
    plane.store.remove_member(&caller.actor, &tenant, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleBody {
    role: String,
}

/// `POST /v1/tenants/{tenant}/members/{user}/role` `{"role":..}` (admin): changes a member's
/// role; neither the member's current role nor the new one may be above the caller's own.
pub(crate) async fn set_role(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, user)): Path<(String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    let body: RoleBody = body::parse(body)?;
    let role = caller.grantable_role(&tenant, &body.role)?;
    let members = plane.store.members(&tenant).await?;
    let (_, current) = members
        .iter()
        .find(|(member, _)| member.id == user)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "member not found"))?;
    if Some(*current) > caller.role_in(&tenant) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "no one can change a member above their own role",
        ));
    }
    last_owner_stays(&members, &user, Some(role))?;
    plane.store.set_member_role(&caller.actor, &tenant, &user, role).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub(crate) struct PendingView {
    id: String,
    email: String,
    role: &'static str,
    expires_at: i64,
}

/// `GET /v1/tenants/{tenant}/invitations` (admin): invitations not yet accepted, newest first.
pub(crate) async fn invitations(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
) -> Result<Json<Vec<PendingView>>, ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    plane.store.tenant(&tenant).await?;
    let pending = plane.store.pending_invitations(&tenant).await?;
    Ok(Json(
        pending
            .into_iter()
            .map(|(id, email, role, expires_at)| PendingView { id, email, role: role.as_str(), expires_at })
            .collect(),
    ))
}

/// `DELETE /v1/tenants/{tenant}/invitations/{invitation}` (admin): withdraws one.
pub(crate) async fn withdraw(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, invitation)): Path<(String, String)>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    plane.store.withdraw_invitation(&caller.actor, &tenant, &invitation).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses to remove (`new_role` `None`) or demote the tenant's last owner: someone must always
/// be able to manage it (short of the operator).
fn last_owner_stays(members: &[(User, Role)], user_id: &str, new_role: Option<Role>) -> Result<(), ApiError> {
    let owners: Vec<&str> = members
        .iter()
        .filter(|(_, role)| *role == Role::Owner)
        .map(|(member, _)| member.id.as_str())
        .collect();
    let losing_an_owner = owners.contains(&user_id) && new_role != Some(Role::Owner);
    if losing_an_owner && owners.len() == 1 {
        return Err(ApiError::invalid("a tenant keeps at least one owner: make someone else owner first"));
    }
    Ok(())
}
