//! [`StoreError`], and the one place where `sqlx` errors are translated.

use tributary_protocol::ErrorCode;

/// Errors returned by every [`Store`](crate::Store) operation.
///
/// Nothing above this crate sees a raw `sqlx::Error` as a variant it must match on: constraint
/// violations become [`StoreError::AlreadyExists`] or [`StoreError::NotFound`], everything else is
/// [`StoreError::Database`], whose message is opaque and never contains bound values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named record (`"tenant"`, `"app"`, `"api key"`, `"signing key"`) does not exist, or
    /// is not visible in the scope that was asked for.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A record with the same unique name already exists (for example an app name in a tenant).
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// The record is not in a state that allows the change (an exchange accepted twice, or
    /// changed after it ended); the text says what it is in.
    #[error("{0}")]
    InvalidState(&'static str),
    /// The presented API key is malformed, unknown or revoked. Which one is deliberately not said.
    #[error("invalid api key")]
    InvalidApiKey,
    /// The management token is malformed, unknown or revoked.
    #[error("invalid management token")]
    InvalidManagementToken,
    /// An email and password, a session or an invitation that is not valid (which of them is
    /// wrong is not said).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A password too short or too long.
    #[error("the password must have at least 10 characters and at most 1024 bytes")]
    InvalidPassword,
    /// An operator role for a tenant's token, or a tenant role without a tenant.
    #[error("operator tokens have no tenant and tenant tokens no operator role")]
    InvalidRole,
    /// The master key is not standard base64 of exactly 32 bytes.
    #[error("invalid master key: expected standard base64 of exactly 32 bytes")]
    InvalidMasterKey,
    /// A stored secret failed authentication: wrong master key, or a ciphertext that was
    /// tampered with or moved to another row.
    #[error("stored secret could not be decrypted")]
    Decrypt,
    /// The database failed. The source is the `sqlx` error, which names tables and columns but
    /// never bound values.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// Running the schema migrations failed.
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The database URL names no supported backend (`sqlite://…` or `postgres://…`).
    #[error("unsupported database URL: use sqlite://path or postgres://…")]
    InvalidDatabaseUrl,
}

impl StoreError {
    /// Returns the protocol error code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::InvalidApiKey => ErrorCode::InvalidApiKey,
            StoreError::InvalidManagementToken => ErrorCode::Unauthorized,
            StoreError::InvalidRole | StoreError::InvalidPassword => ErrorCode::InvalidParameter,
            StoreError::InvalidCredentials => ErrorCode::Unauthorized,
            StoreError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            StoreError::InvalidState(_) => ErrorCode::InvalidState,
            StoreError::InvalidMasterKey
            | StoreError::Decrypt
            | StoreError::Database(_)
            | StoreError::Migrate(_)
            | StoreError::InvalidDatabaseUrl => ErrorCode::Internal,
        }
    }

    /// Translates a `sqlx` error from a write.
    ///
    /// `this` names the record being written (reported on a unique violation) and `parent` the
    /// record it references (reported on a foreign-key violation, which means the parent is
    /// missing or belongs to another scope). This is the only place `sqlx` errors are mapped.
    pub(crate) fn from_sqlx(err: sqlx::Error, this: &'static str, parent: &'static str) -> Self {
        if let sqlx::Error::Database(db) = &err {
            if db.is_unique_violation() {
                tracing::debug!(error = %err, record = this, "unique violation");
                return StoreError::AlreadyExists(this);
            }
            if db.is_foreign_key_violation() {
                tracing::debug!(error = %err, record = parent, "foreign key violation");
                return StoreError::NotFound(parent);
            }
        }
        // The raw error is logged here, once, because callers only see the opaque variant
        // (STYLE.md H.8). Only its message and code: PostgreSQL's details can quote row values.
        let code = match &err {
            sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
            _ => None,
        };
        tracing::warn!(error = %err, code, "database error");
        StoreError::Database(err)
    }
}

impl From<sqlx::Error> for StoreError {
    /// Translates a `sqlx` error from a read, where no constraint can be violated.
    fn from(err: sqlx::Error) -> Self {
        StoreError::from_sqlx(err, "record", "record")
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        tracing::error!(error = %err, error.cause_chain = ?err, "database migration failed");
        StoreError::Migrate(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_map_to_precise_codes_and_the_rest_to_internal() {
        assert_eq!(StoreError::NotFound("app").code(), ErrorCode::NotFound);
        assert_eq!(StoreError::AlreadyExists("app").code(), ErrorCode::AlreadyExists);
        assert_eq!(StoreError::InvalidApiKey.code(), ErrorCode::InvalidApiKey);
        assert_eq!(StoreError::Decrypt.code(), ErrorCode::Internal);
        assert_eq!(StoreError::Database(sqlx::Error::RowNotFound).code(), ErrorCode::Internal);
    }

    #[test]
    fn database_error_message_is_opaque() {
        let err = StoreError::from(sqlx::Error::Protocol("bound value 42".into()));
        assert_eq!(err.to_string(), "database error");
    }
}
