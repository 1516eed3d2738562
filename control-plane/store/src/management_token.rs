//! Management tokens: the credentials of automation (and of operators) for the management API.
//!
//! The plaintext is `trbm_<token_id>_<secret>_<check>` (see `secret_token`); only SHA-256 of the secret
//! is stored. A token either belongs to one tenant, with a [`Role`] within it, or is an
//! operator token (no tenant, [`Role::Operator`]) that acts on every tenant.

use secrecy::SecretString;
use sqlx::Row as _;
use subtle::ConstantTimeEq as _;

use crate::audit::{self, Actor};
use crate::db::DbRow;
use crate::secret_token::{self, hash};
use crate::{Store, StoreError, id, unix_now};

/// The prefix of every management token plaintext (distinct from API keys' `trb_`).
const PLAINTEXT_PREFIX: &str = "trbm_";

/// What a management credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads everything of its tenant, changes nothing.
    ReadOnly,
    /// Manages apps, keys, signing keys and revocations.
    Developer,
    /// A developer who also manages the tenant's management tokens.
    Admin,
    /// The tenant's owner: everything an admin may.
    Owner,
    /// The service's operator: every tenant, their status and plans.
    Operator,
}

impl Role {
    /// Every role, least powerful first.
    pub const ALL: [Role; 5] = [Role::ReadOnly, Role::Developer, Role::Admin, Role::Owner, Role::Operator];

    /// Returns the stored and API name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read_only",
            Role::Developer => "developer",
            Role::Admin => "admin",
            Role::Owner => "owner",
            Role::Operator => "operator",
        }
    }

    /// Returns the role with this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

/// A stored management token; it holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementToken {
    /// The token id, `mt_` followed by 26 base32 characters.
    pub id: String,
    /// The tenant it acts for; `None` for an operator token.
    pub tenant_id: Option<String>,
    /// A label, such as `"terraform"`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was created, unix seconds.
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// A token just created: its record and the plaintext, shown once.
#[derive(Debug)]
pub struct NewManagementToken {
    /// The stored record.
    pub record: ManagementToken,
    /// The full token; the only copy there will ever be.
    pub plaintext: SecretString,
}

impl ManagementToken {
    fn from_row(row: &DbRow) -> Result<Self, sqlx::Error> {
        let role: String = row.try_get("role")?;
        Ok(ManagementToken {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            name: row.try_get("name")?,
            // Only written from `Role::as_str`; an unknown role reads as the weakest.
            role: Role::parse(&role).unwrap_or(Role::ReadOnly),
            created_at: row.try_get("created_at")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }
}

impl Store {
    /// Creates a management token: for a tenant with a tenant role, or (`tenant_id` `None`) an
    /// operator token, which must have [`Role::Operator`]. Audited as `management_token.create`.
    ///
    /// Returns [`StoreError::NotFound`] if the tenant does not exist, and
    /// [`StoreError::InvalidRole`] for an operator role in a tenant or a tenant role without one.
    pub async fn create_management_token(
        &self,
        actor: &Actor,
        tenant_id: Option<&str>,
        name: &str,
        role: Role,
    ) -> Result<NewManagementToken, StoreError> {
        if tenant_id.is_some() == (role == Role::Operator) {
            return Err(StoreError::InvalidRole);
        }
        if tenant_id.is_some_and(|tenant| !id::is_valid(id::TENANT, tenant)) {
            return Err(StoreError::NotFound("tenant"));
        }
        let record = ManagementToken {
            id: id::new(id::MANAGEMENT_TOKEN),
            tenant_id: tenant_id.map(str::to_owned),
            name: name.to_owned(),
            role,
            created_at: unix_now(),
            revoked_at: None,
        };
        let secret = secret_token::generate();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO management_tokens (id, tenant_id, name, role, token_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&record.id)
        .bind(&record.tenant_id)
        .bind(&record.name)
        .bind(role.as_str())
        .bind(hash(&*secret))
        .bind(record.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|err| StoreError::from_sqlx(err, "management token", "tenant"))?;
        audit::record(&mut tx, actor, tenant_id, "management_token.create", &record.id).await?;
        tx.commit().await?;
        let plaintext = secret_token::plaintext(PLAINTEXT_PREFIX, &record.id, &*secret);
        Ok(NewManagementToken { record, plaintext: SecretString::from(plaintext) })
    }

    /// Returns the record of a presented management token if it is valid and not revoked;
    /// [`StoreError::InvalidManagementToken`] alike for every other case.
    pub async fn verify_management_token(&self, presented: &str) -> Result<ManagementToken, StoreError> {
        let Some((token_id, secret)) = secret_token::parse(presented, PLAINTEXT_PREFIX, id::MANAGEMENT_TOKEN)
        else {
            return Err(StoreError::InvalidManagementToken);
        };
        let row = sqlx::query(
            "SELECT id, tenant_id, name, role, token_hash, created_at, revoked_at \
             FROM management_tokens WHERE id = $1",
        )
        .bind(token_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::InvalidManagementToken)?;
        let stored: Vec<u8> = row.try_get("token_hash")?;
        if !bool::from(stored.ct_eq(&hash(&secret))) {
            return Err(StoreError::InvalidManagementToken);
        }
        let token = ManagementToken::from_row(&row)?;
        if token.revoked_at.is_some() {
            return Err(StoreError::InvalidManagementToken);
        }
        Ok(token)
    }

    /// Returns the management tokens of a tenant (revoked ones too), newest first.
    pub async fn management_tokens(&self, tenant_id: &str) -> Result<Vec<ManagementToken>, StoreError> {
        if !id::is_valid(id::TENANT, tenant_id) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, tenant_id, name, role, created_at, revoked_at FROM management_tokens \
             WHERE tenant_id = $1 ORDER BY id DESC",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(ManagementToken::from_row).collect::<Result<_, _>>()?)
    }

    /// Returns the operator tokens (revoked ones too), newest first.
    pub async fn operator_tokens(&self) -> Result<Vec<ManagementToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, name, role, created_at, revoked_at FROM management_tokens \
             WHERE tenant_id IS NULL ORDER BY id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(ManagementToken::from_row).collect::<Result<_, _>>()?)
    }

    /// Revokes an operator token; audited as `operator_token.revoke` (no tenant).
    pub async fn revoke_operator_token(&self, actor: &Actor, token_id: &str) -> Result<(), StoreError> {
        if !id::is_valid(id::MANAGEMENT_TOKEN, token_id) {
            return Err(StoreError::NotFound("management token"));
        }
        self.write_audited(
            sqlx::query(
                "UPDATE management_tokens SET revoked_at = COALESCE(revoked_at, $1) \
                 WHERE id = $2 AND tenant_id IS NULL",
            )
            .bind(unix_now())
            .bind(token_id),
            "management token",
            (actor, None),
            ("operator_token.revoke", token_id),
        )
        .await
    }

    /// Revokes a management token of the tenant; audited as `management_token.revoke`.
    pub async fn revoke_management_token(
        &self,
        actor: &Actor,
        tenant_id: &str,
        token_id: &str,
    ) -> Result<(), StoreError> {
        if !(id::is_valid(id::TENANT, tenant_id) && id::is_valid(id::MANAGEMENT_TOKEN, token_id)) {
            return Err(StoreError::NotFound("management token"));
        }
        self.write_audited(
            sqlx::query(
                "UPDATE management_tokens SET revoked_at = COALESCE(revoked_at, $1) \
                 WHERE id = $2 AND tenant_id = $3",
            )
            .bind(unix_now())
            .bind(token_id)
            .bind(tenant_id),
            "management token",
            (actor, Some(tenant_id)),
            ("management_token.revoke", token_id),
        )
        .await
    }
}
