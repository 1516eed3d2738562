//! Users of the console: accounts with argon2id password hashes, their roles in tenants
//! (memberships), their sessions, and invitations to join a tenant.
//!
//! Session cookies and invitation tokens have the shape of the other credentials
//! (`trbs_<ses_id>_<secret>_<check>`, `trbi_<inv_id>_<secret>_<check>`, see `secret_token`);
//! only hashes are stored. A session also has a CSRF token, stored hashed, which the console
//! sends in a header with every request that changes something.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::SecretString;
use sqlx::Row as _;
use subtle::ConstantTimeEq as _;

use crate::audit::{self, Actor};
use crate::db::DbRow;
use crate::management_token::Role;
use crate::secret_token::{self, hash};
use crate::{Store, StoreError, id, unix_now};

const SESSION_PREFIX: &str = "trbs_";
const INVITATION_PREFIX: &str = "trbi_";

/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// The longest password accepted (hashing has a cost per byte).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A user of the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `usr_` followed by 26 base32 characters.
    pub id: String,
    /// The email address, lowercased.
    pub email: String,
    /// The display name.
    pub name: String,
    /// When the account was made.
    pub created_at: i64,
}

impl User {
    fn from_row(row: &DbRow) -> Result<Self, sqlx::Error> {
        Ok(User {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// A new session: its cookie value and CSRF token, shown once.
#[derive(Debug)]
pub struct NewSession {
    /// The session id.
    pub id: String,
    /// The cookie value.
    pub token: SecretString,
    /// The CSRF token the console sends with every change.
    pub csrf: SecretString,
    /// When it ends, unix seconds.
    pub expires_at: i64,
}

/// A verified session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The session id.
    pub id: String,
    /// Its user.
    pub user: User,
    /// SHA-256 of its CSRF token.
    csrf_hash: Vec<u8>,
}

impl Session {
    /// Returns whether `presented` is this session's CSRF token (constant-time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        bool::from(self.csrf_hash.ct_eq(&hash(presented.as_bytes())))
    }
}

/// An invitation just made: its record and the token to send, shown once.
#[derive(Debug)]
pub struct NewInvitation {
    /// `inv_` followed by 26 base32 characters.
    pub id: String,
    /// The invited address (lowercased).
    pub email: String,
    /// The role it gives.
    pub role: Role,
    /// When it ends.
    pub expires_at: i64,
    /// The token to send to the invitee.
    pub token: SecretString,
}

/// Hashes with argon2id at OWASP's recommended cost (19 MiB, 2 passes, 1 lane).
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// At most this many password hashes run at once: each takes 19 MiB and tens of
/// milliseconds of a core, on blocking threads so the message path never waits behind them.
const CONCURRENT_HASHES: usize = 2;

fn hashing() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| tokio::sync::Semaphore::new(CONCURRENT_HASHES))
}

/// Runs a password computation off the async runtime, at most [`CONCURRENT_HASHES`] at once.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, StoreError> {
    let _permit = hashing().acquire().await.map_err(|_| StoreError::InvalidPassword)?;
    tokio::task::spawn_blocking(work).await.map_err(|_| StoreError::InvalidPassword)
}

/// Returns the PHC string of `password`, computed off the runtime.
async fn hash_password_async(password: &str) -> Result<String, StoreError> {
    let password = secrecy::zeroize::Zeroizing::new(password.to_owned());
    off_runtime(move || hash_password(&password)).await?
}

/// Returns whether `password` matches `stored`, checked off the runtime.
async fn password_matches_async(password: &str, stored: String) -> bool {
    let password = secrecy::zeroize::Zeroizing::new(password.to_owned());
    off_runtime(move || password_matches(&password, &stored)).await.unwrap_or(false)
}

/// Returns the PHC string of `password`.
fn hash_password(password: &str) -> Result<String, StoreError> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|_| StoreError::InvalidPassword)?;
    let hashed =
        hasher().hash_password(password.as_bytes(), &salt).map_err(|_| StoreError::InvalidPassword)?;
    Ok(hashed.to_string())
}

/// Returns whether `password` matches the PHC string `stored`.
fn password_matches(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .is_ok_and(|parsed| hasher().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// A hash of no one's password, verified when the email is unknown so that a login costs the
/// same whether the account exists or not.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("not anyone's password, ever").unwrap_or_default())
}

/// Checks a password's length (in characters and bytes).
pub fn password_problem(password: &str) -> Option<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Some(format!("the password must have at least {MIN_PASSWORD_CHARS} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Some(format!("the password must have at most {MAX_PASSWORD_BYTES} bytes"));
    }
    None
}

impl Store {
    /// Creates a user; the caller has checked the email and the password's length.
    ///
    /// Returns [`StoreError::AlreadyExists`] if the email has an account.
    pub async fn create_user(&self, email: &str, name: &str, password: &str) -> Result<User, StoreError> {
        let password_hash = checked_hash(password).await?;
        let mut tx = self.pool.begin().await?;
        let user = insert_user(&mut tx, email, name, &password_hash).await?;
        tx.commit().await?;
        Ok(user)
    }

    /// Signs a company up: a user, a tenant on `plan_id` and the user as its owner, in one
    /// transaction; audited as `tenant.signup`.
    pub async fn sign_up(
        &self,
        email: &str,
        name: &str,
        password: &str,
        company: &str,
        plan_id: &str,
    ) -> Result<(User, crate::Tenant), StoreError> {
        self.plan(plan_id).await?;
        let password_hash = checked_hash(password).await?;
        let mut tx = self.pool.begin().await?;
        let user = insert_user(&mut tx, email, name, &password_hash).await?;
        let tenant_id = id::new(id::TENANT);
        let now = unix_now();
        sqlx::query(
            "INSERT INTO tenants (id, name, status, plan_id, created_at) VALUES ($1, $2, 'active', $3, $4)",
        )
        .bind(&tenant_id)
        .bind(company)
        .bind(plan_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "tenant", "tenant"))?;
        insert_membership(&mut tx, &tenant_id, &user.id, Role::Owner).await?;
        let actor = Actor { actor: format!("user:{}", user.id), request_id: String::new() };
        audit::record(&mut tx, &actor, Some(&tenant_id), "tenant.signup", &tenant_id).await?;
        tx.commit().await?;
        Ok((user, self.tenant(&tenant_id).await?))
    }

    /// Returns the user whose email and password these are; [`StoreError::InvalidCredentials`]
    /// alike for an unknown email and a wrong password (which cost the same time).
    pub async fn check_password(&self, email: &str, password: &str) -> Result<User, StoreError> {
        // Too long for any account: refused the same way, without a lookup, whatever the email.
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(StoreError::InvalidCredentials);
        }
        let email = email.trim().to_lowercase();
        let row =
            sqlx::query("SELECT id, email, name, created_at, password_hash FROM users WHERE email = $1")
                .bind(&email)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            let _ = password_matches_async(password, decoy_hash().to_owned()).await;
            return Err(StoreError::InvalidCredentials);
        };
        let stored: String = row.try_get("password_hash")?;
        if !password_matches_async(password, stored).await {
            return Err(StoreError::InvalidCredentials);
        }
        Ok(User::from_row(&row)?)
    }

    /// Returns the tenants a user is a member of, with the user's role in each.
    pub async fn memberships(&self, user_id: &str) -> Result<Vec<(String, Role)>, StoreError> {
        if !id::is_valid(id::USER, user_id) {
            return Ok(Vec::new());
        }
        let rows =
            sqlx::query("SELECT tenant_id, role FROM memberships WHERE user_id = $1 ORDER BY tenant_id")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                Ok((row.try_get("tenant_id")?, Role::parse(&role).unwrap_or(Role::ReadOnly)))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Returns the members of a tenant with their roles, by email.
    pub async fn members(&self, tenant_id: &str) -> Result<Vec<(User, Role)>, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT u.id, u.email, u.name, u.created_at, m.role FROM memberships m \
             JOIN users u ON u.id = m.user_id WHERE m.tenant_id = $1 ORDER BY u.email",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                Ok((User::from_row(row)?, Role::parse(&role).unwrap_or(Role::ReadOnly)))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Removes a user from a tenant; audited as `member.remove`. Their sessions stay (they may
    /// belong to other tenants) but no longer reach this one: memberships are read per request.
    pub async fn remove_member(
        &self,
        actor: &Actor,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<(), StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::USER, user_id)) {
            return Err(StoreError::NotFound("member"));
        }
        self.write_audited(
            sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant_id)
                .bind(user_id),
            "member",
            (actor, Some(tenant_id)),
            ("member.remove", user_id),
        )
        .await
    }

    /// Changes a member's role; audited as `member.role.<role>`.
    pub async fn set_member_role(
        &self,
        actor: &Actor,
        tenant_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<(), StoreError> {
        if role == Role::Operator {
            return Err(StoreError::InvalidRole);
        }
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::USER, user_id)) {
            return Err(StoreError::NotFound("member"));
        }
        self.write_audited(
            sqlx::query("UPDATE memberships SET role = $1 WHERE tenant_id = $2 AND user_id = $3")
                .bind(role.as_str())
                .bind(tenant_id)
                .bind(user_id),
            "member",
            (actor, Some(tenant_id)),
            (&format!("member.role.{}", role.as_str()), user_id),
        )
        .await
    }

    /// Returns a tenant's invitations not yet accepted nor ended: (id, email, role, expires_at).
    pub async fn pending_invitations(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<(String, String, Role, i64)>, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, email, role, expires_at FROM invitations \
             WHERE tenant_id = $1 AND accepted_at IS NULL AND expires_at > $2 ORDER BY id DESC",
        )
        .bind(tenant_id)
        .bind(unix_now())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                Ok((
                    row.try_get("id")?,
                    row.try_get("email")?,
                    Role::parse(&role).unwrap_or(Role::ReadOnly),
                    row.try_get("expires_at")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Withdraws an invitation not yet accepted (it can no longer be); audited as
    /// `invitation.withdraw`.
    pub async fn withdraw_invitation(
        &self,
        actor: &Actor,
        tenant_id: &str,
        invitation_id: &str,
    ) -> Result<(), StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::INVITATION, invitation_id)) {
            return Err(StoreError::NotFound("invitation"));
        }
        self.write_audited(
            sqlx::query("DELETE FROM invitations WHERE id = $1 AND tenant_id = $2 AND accepted_at IS NULL")
                .bind(invitation_id)
                .bind(tenant_id),
            "invitation",
            (actor, Some(tenant_id)),
            ("invitation.withdraw", invitation_id),
        )
        .await
    }

    /// Starts a session of `ttl_secs` for a user.
    pub async fn create_session(&self, user_id: &str, ttl_secs: i64) -> Result<NewSession, StoreError> {
        let id = id::new(id::SESSION);
        let secret = secret_token::generate();
        let csrf = secret_token::plaintext("csrf_", &id, &*secret_token::generate());
        let now = unix_now();
        let expires_at = now.saturating_add(ttl_secs);
        sqlx::query(
            "INSERT INTO sessions (id, user_id, token_hash, csrf_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(user_id)
        .bind(hash(&*secret))
        .bind(hash(csrf.as_bytes()))
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "session", "user"))?;
        let token = secret_token::plaintext(SESSION_PREFIX, &id, &*secret);
        Ok(NewSession { id, token: SecretString::from(token), csrf: SecretString::from(csrf), expires_at })
    }

    /// Returns the live session of a presented cookie value; [`StoreError::InvalidCredentials`]
    /// for anything else (malformed, unknown, wrong secret, ended, revoked).
    pub async fn verify_session(&self, presented: &str) -> Result<Session, StoreError> {
        let (session_id, secret) = secret_token::parse(presented, SESSION_PREFIX, id::SESSION)
            .ok_or(StoreError::InvalidCredentials)?;
        let row = sqlx::query(
            "SELECT s.token_hash, s.csrf_hash, s.expires_at, s.revoked_at, u.id, u.email, u.name, u.created_at \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::InvalidCredentials)?;
        let stored: Vec<u8> = row.try_get("token_hash")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        let revoked_at: Option<i64> = row.try_get("revoked_at")?;
        if !bool::from(stored.ct_eq(&hash(&secret))) || revoked_at.is_some() || expires_at <= unix_now() {
            return Err(StoreError::InvalidCredentials);
        }
        Ok(Session {
            id: session_id.to_owned(),
            user: User::from_row(&row)?,
            csrf_hash: row.try_get("csrf_hash")?,
        })
    }

    /// Ends a session (logout).
    pub async fn revoke_session(&self, session_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
            .bind(unix_now())
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Invites `email` to a tenant with `role` (not operator) for `ttl_secs`; audited as
    /// `invitation.create`.
    pub async fn create_invitation(
        &self,
        actor: &Actor,
        tenant_id: &str,
        email: &str,
        role: Role,
        ttl_secs: i64,
    ) -> Result<NewInvitation, StoreError> {
        if role == Role::Operator {
            return Err(StoreError::InvalidRole);
        }
        if !id::is_valid(id::TENANT, tenant_id) {
            return Err(StoreError::NotFound("tenant"));
        }
        let id = id::new(id::INVITATION);
        let secret = secret_token::generate();
        let email = email.trim().to_lowercase();
        let now = unix_now();
        let expires_at = now.saturating_add(ttl_secs);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO invitations (id, tenant_id, email, role, token_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(tenant_id)
        .bind(&email)
        .bind(role.as_str())
        .bind(hash(&*secret))
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "invitation", "tenant"))?;
        audit::record(&mut tx, actor, Some(tenant_id), "invitation.create", &id).await?;
        tx.commit().await?;
        let token = SecretString::from(secret_token::plaintext(INVITATION_PREFIX, &id, &*secret));
        Ok(NewInvitation { id, email, role, expires_at, token })
    }

    /// Accepts an invitation: the invited address's account (made with `name` and `password`
    /// when there is none; its password checked when there is) joins the tenant with the
    /// invitation's role, once. Audited as `invitation.accept`. Returns the user and tenant.
    ///
    /// [`StoreError::InvalidCredentials`] alike for an unknown, used or ended invitation and a
    /// wrong password of an existing account.
    pub async fn accept_invitation(
        &self,
        presented: &str,
        name: &str,
        password: &str,
    ) -> Result<(User, String), StoreError> {
        let (invitation_id, secret) = secret_token::parse(presented, INVITATION_PREFIX, id::INVITATION)
            .ok_or(StoreError::InvalidCredentials)?;
        let row = sqlx::query(
            "SELECT tenant_id, email, role, token_hash, expires_at, accepted_at FROM invitations WHERE id = $1",
        )
        .bind(invitation_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::InvalidCredentials)?;
        let stored: Vec<u8> = row.try_get("token_hash")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        let accepted_at: Option<i64> = row.try_get("accepted_at")?;
        if !bool::from(stored.ct_eq(&hash(&secret))) || accepted_at.is_some() || expires_at <= unix_now() {
            return Err(StoreError::InvalidCredentials);
        }
        let tenant_id: String = row.try_get("tenant_id")?;
        let email: String = row.try_get("email")?;
        let role: String = row.try_get("role")?;
        let role = Role::parse(&role).unwrap_or(Role::ReadOnly);
        let existing = sqlx::query("SELECT id FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&self.pool)
            .await?;
        // An existing account proves it is its owner, and a new one's hash is computed, before
        // anything is written: the transaction holds its connection and row only for writes.
        let (known, password_hash) = match existing {
            Some(_) => (Some(self.check_password(&email, password).await?), String::new()),
            None => (None, checked_hash(password).await?),
        };
        let mut tx = self.pool.begin().await?;
        // Used once: the update that marks it is the lock (a second accept finds it used).
        let done =
            sqlx::query("UPDATE invitations SET accepted_at = $1 WHERE id = $2 AND accepted_at IS NULL")
                .bind(unix_now())
                .bind(invitation_id)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::InvalidCredentials);
        }
        let user = match known {
            Some(user) => user,
            None => insert_user(&mut tx, &email, name, &password_hash).await?,
        };
        // Already a member: the invitation changes nothing but is used. (Not an error caught
        // after the fact: on PostgreSQL a failed statement aborts the whole transaction.)
        sqlx::query(
            "INSERT INTO memberships (tenant_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, user_id) DO NOTHING",
        )
        .bind(&tenant_id)
        .bind(&user.id)
        .bind(role.as_str())
        .bind(unix_now())
        .execute(&mut *tx)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "membership", "tenant"))?;
        let actor = Actor { actor: format!("user:{}", user.id), request_id: String::new() };
        audit::record(&mut tx, &actor, Some(&tenant_id), "invitation.accept", invitation_id).await?;
        tx.commit().await?;
        Ok((user, tenant_id))
    }
}

/// Checks a new password's length and returns its hash.
async fn checked_hash(password: &str) -> Result<String, StoreError> {
    if password_problem(password).is_some() {
        return Err(StoreError::InvalidPassword);
    }
    hash_password_async(password).await
}

async fn insert_user(
    conn: &mut sqlx::AnyConnection,
    email: &str,
    name: &str,
    password_hash: &str,
) -> Result<User, StoreError> {
    let user = User {
        id: id::new(id::USER),
        email: email.trim().to_lowercase(),
        name: name.to_owned(),
        created_at: unix_now(),
    };
    sqlx::query("INSERT INTO users (id, email, name, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(password_hash)
        .bind(user.created_at)
        .execute(conn)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "user", "user"))?;
    Ok(user)
}

async fn insert_membership(
    conn: &mut sqlx::AnyConnection,
    tenant_id: &str,
    user_id: &str,
    role: Role,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO memberships (tenant_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)")
        .bind(tenant_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(unix_now())
        .execute(conn)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "membership", "tenant"))?;
    Ok(())
}
