//! First start on the embedded defaults: a data directory with a configuration file holding a
//! fresh master key, and a development tenant, app, signing key and API key, and an operator
//! token for the management API.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tributary_store::{Actor, MasterKey, Role, Store, StoreError};

/// The configuration file `serve` creates in the data directory.
pub const CONFIG_FILE: &str = "tributary.toml";
/// The machine-readable development credentials `serve` writes on first start.
pub const CREDENTIALS_FILE: &str = "credentials.json";

/// Development credentials, as written to `credentials.json`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// The HTTP base URL.
    pub http_url: String,
    /// The WebSocket URL.
    pub ws_url: String,
    /// The tenant id.
    pub tenant_id: String,
    /// The app id.
    pub app_id: String,
    /// The API key (secret).
    pub api_key: String,
    /// The signing key id used to mint tokens.
    pub signing_key_id: String,
    /// An operator token for the management API (`/v1/tenants`, `tributary admin`). Absent in
    /// files written before it existed; the next start adds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("app_id", &self.app_id)
            .field("api_key", &"[redacted]")
            .field("operator_token", &"[redacted]")
            .finish()
    }
}

/// Why bootstrapping failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The credentials file is not valid JSON.
    #[error("{path}: {message}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::Io { path: path.to_owned(), source }
}

/// Creates `<data_dir>/tributary.toml` with a fresh master key unless it exists; returns its path.
pub fn ensure_config_file(data_dir: &Path) -> Result<PathBuf, BootstrapError> {
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let path = data_dir.join(CONFIG_FILE);
    if path.exists() {
        return Ok(path);
    }
    let key = MasterKey::generate();
    let text = format!(
        "# Created by `tributary serve` on first start. Keep it secret: master_key encrypts tenant\n\
         # secrets at rest. Every other setting is documented in docs/configuration.md and printed\n\
         # by `tributary config default`.\n\
         master_key = \"{}\"\n",
        key.to_base64().expose_secret()
    );
    write_private(&path, &text)?;
    Ok(path)
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), BootstrapError> {
    std::fs::write(path, text).map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    Ok(())
}

/// Returns the master key of the configuration, or `None` if it has none.
pub fn master_key(configured: Option<&SecretString>) -> Option<Result<MasterKey, StoreError>> {
    configured.map(|key| MasterKey::from_base64(key.expose_secret()))
}

/// Reads `credentials.json`, creating the development tenant, app and keys (and the file)
/// when it does not exist yet. URLs are refreshed to the bound address.
pub async fn ensure_credentials(
    store: &Store,
    data_dir: &Path,
    http_url: &str,
) -> Result<Credentials, BootstrapError> {
    let path = data_dir.join(CREDENTIALS_FILE);
    let ws_url = format!("{}/v1/connect", http_url.replacen("http", "ws", 1));
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let mut credentials: Credentials = serde_json::from_str(&text)
            .map_err(|e| BootstrapError::Credentials { path: path.clone(), message: e.to_string() })?;
        let mut changed = false;
        if credentials.http_url != http_url {
            credentials.http_url = http_url.to_owned();
            credentials.ws_url = ws_url;
            changed = true;
        }
        if credentials.operator_token.is_none() {
            credentials.operator_token = Some(operator_token(store).await?);
            changed = true;
        }
        if changed {
            write_credentials(&path, &credentials)?;
        }
        return Ok(credentials);
    }
    let tenant = store.create_tenant("dev").await?;
    let app = store.create_app(&tenant.id, "dev").await?;
    let signing = store.create_signing_key(&tenant.id, &app.id).await?;
    let api_key = store.create_api_key(&tenant.id, &app.id, "dev").await?;
    let credentials = Credentials {
        http_url: http_url.to_owned(),
        ws_url,
        tenant_id: tenant.id,
        app_id: app.id,
        api_key: api_key.plaintext.expose_secret().to_owned(),
        signing_key_id: signing.kid,
        operator_token: Some(operator_token(store).await?),
    };
    write_credentials(&path, &credentials)?;
    Ok(credentials)
}

/// Creates an operator token (every tenant, every action) and returns its plaintext.
async fn operator_token(store: &Store) -> Result<String, BootstrapError> {
    let token =
        store.create_management_token(&Actor::system(), None, "bootstrap operator", Role::Operator).await?;
    Ok(token.plaintext.expose_secret().to_owned())
}

fn write_credentials(path: &Path, credentials: &Credentials) -> Result<(), BootstrapError> {
    let text = serde_json::to_string_pretty(credentials)
        .map_err(|e| BootstrapError::Credentials { path: path.to_owned(), message: e.to_string() })?;
    write_private(path, &text)
}

/// Reads `credentials.json` from a data directory.
pub fn read_credentials(data_dir: &Path) -> Result<Credentials, BootstrapError> {
    let path = data_dir.join(CREDENTIALS_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| BootstrapError::Credentials { path, message: e.to_string() })
}
