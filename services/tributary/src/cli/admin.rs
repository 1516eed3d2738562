//! `tributary admin`: the operator's commands, sent to the management API of a running server.
//! The URL and the operator token default to the data directory's `credentials.json`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tributary::bootstrap;

/// Arguments of `tributary admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
    /// HTTP base URL of a server, e.g. http://127.0.0.1:7070.
    #[arg(long, env = "TRIBUTARY_URL", global = true)]
    url: Option<String>,
    /// A management token (default: the operator token of the data directory).
    #[arg(long, env = "TRIBUTARY_ADMIN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Data directory holding credentials.json.
    #[arg(long, env = "TRIBUTARY_DATA_DIR", default_value = "tributary-data", global = true)]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Tenants: list, create, show, suspend, activate, set a status.
    #[command(subcommand)]
    Tenants(TenantCommand),
    /// Apps of a tenant.
    #[command(subcommand)]
    Apps(AppCommand),
    /// Creates an API key for an app; prints its secret once.
    ApiKey {
        /// The tenant id.
        tenant: String,
        /// The app id.
        app: String,
        /// A label for the key.
        #[arg(long, default_value = "backend")]
        name: String,
    },
    /// Creates a management token for a tenant; prints its secret once.
    Token {
        /// The tenant id.
        tenant: String,
        /// read_only, developer, admin or owner.
        #[arg(long)]
        role: String,
        /// A label for the token.
        #[arg(long)]
        name: String,
    },
    /// Revokes tokens: one (`--token-id`), a client's (`--client-id`), an app's (`--app` alone)
    /// or a tenant's (neither `--app` nor the others).
    Revoke {
        /// The tenant id.
        tenant: String,
        /// The app id.
        #[arg(long)]
        app: Option<String>,
        /// One token id (`tok_…`).
        #[arg(long, requires = "app", conflicts_with = "client_id")]
        token_id: Option<String>,
        /// A client id: every token it holds now.
        #[arg(long, requires = "app")]
        client_id: Option<String>,
    },
    /// Lists the plans and their limits.
    Plans,
    /// Operator tokens: list, create (prints the secret once), revoke.
    #[command(subcommand)]
    OperatorToken(OperatorTokenCommand),
    /// Invites someone to a tenant; prints the invitation token to send them.
    Invite {
        /// The tenant id.
        tenant: String,
        /// Their email address.
        email: String,
        /// read_only, developer, admin or owner.
        #[arg(long)]
        role: String,
    },
    /// Webhook endpoints of an app: list, create (prints the secret once), delete, enable,
    /// disable, rotate-secret, test, deliveries, dead-letters, replay.
    #[command(subcommand)]
    Webhooks(super::admin_delivery::WebhookCommand),
    /// Rules of an app: which events go to which endpoint.
    #[command(subcommand)]
    Rules(super::admin_delivery::RuleCommand),
    /// An app's credentials for the push and SMS services: list, set, delete.
    #[command(subcommand)]
    PushCredentials(super::admin_delivery::PushCredentialsCommand),
    /// A tenant's audit log (or, with `--exchange`, an exchange's): show, entries, checkpoints,
    /// receipt, consistency, export, rotate-key, set-cosigner.
    #[command(subcommand)]
    AuditLog(super::admin_audit::AuditLogCommand),
    /// Exchanges between tenants: list, show, offer, accept, suspend, resume, end.
    #[command(subcommand)]
    Exchange(super::admin_audit::ExchangeCommand),
    /// Prints a tenant's newest audit events.
    Audit {
        /// The tenant id.
        tenant: String,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Lists every tenant.
    List,
    /// Creates a tenant.
    Create {
        /// Its display name.
        name: String,
    },
    /// Shows a tenant.
    Show {
        /// The tenant id.
        tenant: String,
    },
    /// Suspends a tenant: every node closes its connections within a second.
    Suspend {
        /// The tenant id.
        tenant: String,
    },
    /// Makes a tenant active again.
    Activate {
        /// The tenant id.
        tenant: String,
    },
    /// Sets a tenant's status: active, past_due, unpaid, suspended or deleted.
    Status {
        /// The tenant id.
        tenant: String,
        /// The status.
        status: String,
    },
    /// Puts a tenant on a plan (`tributary admin plans` lists them).
    Plan {
        /// The tenant id.
        tenant: String,
        /// The plan id, such as free or pro.
        plan: String,
    },
    /// Shows a tenant's plan, overrides and limits; with `--set`, replaces its overrides first.
    Limits {
        /// The tenant id.
        tenant: String,
        /// The overrides as JSON, e.g. '{"max_connections": 500}' (absent fields: the plan's).
        #[arg(long)]
        set: Option<String>,
    },
    /// Shows a tenant's usage per day over the last 30 days.
    Usage {
        /// The tenant id.
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorTokenCommand {
    /// Lists the operator tokens.
    List,
    /// Creates one.
    Create {
        /// A label, such as the person or system it is for.
        name: String,
    },
    /// Revokes one (at once).
    Revoke {
        /// The token id (`mt_…`).
        token: String,
    },
}

#[derive(Debug, Subcommand)]
enum AppCommand {
    /// Lists a tenant's apps.
    List {
        /// The tenant id.
        tenant: String,
    },
    /// Creates an app with its first signing key; prints the key's secret once.
    Create {
        /// The tenant id.
        tenant: String,
        /// The app's name, unique in the tenant.
        name: String,
    },
}

/// One management API call.
pub struct Call {
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
}

impl Call {
    /// A `GET`.
    pub fn get(path: String) -> Self {
        Self { method: reqwest::Method::GET, path, body: None }
    }

    /// A `POST`, with a JSON body or none.
    pub fn post(path: String, body: Option<Value>) -> Self {
        Self { method: reqwest::Method::POST, path, body }
    }

    /// A `PUT`, with a JSON body or none.
    pub fn put(path: String, body: Option<Value>) -> Self {
        Self { method: reqwest::Method::PUT, path, body }
    }

    /// A `DELETE`.
    pub fn delete(path: String) -> Self {
        Self { method: reqwest::Method::DELETE, path, body: None }
    }
}

fn call_of(command: AdminCommand) -> Call {
    match command {
        AdminCommand::Tenants(TenantCommand::List) => Call::get("/v1/tenants".into()),
        AdminCommand::Tenants(TenantCommand::Create { name }) => {
            Call::post("/v1/tenants".into(), Some(json!({"name": name})))
        }
        AdminCommand::Tenants(TenantCommand::Show { tenant }) => Call::get(format!("/v1/tenants/{tenant}")),
        AdminCommand::Tenants(TenantCommand::Suspend { tenant }) => status(&tenant, "suspended"),
        AdminCommand::Tenants(TenantCommand::Activate { tenant }) => status(&tenant, "active"),
        AdminCommand::Tenants(TenantCommand::Status { tenant, status: value }) => status(&tenant, &value),
        AdminCommand::Tenants(TenantCommand::Plan { tenant, plan }) => {
            Call::post(format!("/v1/tenants/{tenant}/plan"), Some(json!({"plan": plan})))
        }
        AdminCommand::Tenants(TenantCommand::Limits { tenant, set: None }) => {
            Call::get(format!("/v1/tenants/{tenant}/limits"))
        }
        AdminCommand::Tenants(TenantCommand::Limits { tenant, set: Some(json) }) => {
            // Sent as given: the API says what is wrong with it.
            let body = serde_json::from_str(&json).unwrap_or(Value::String(json));
            Call::post(format!("/v1/tenants/{tenant}/limits"), Some(body))
        }
        AdminCommand::Tenants(TenantCommand::Usage { tenant }) => {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let from = now.saturating_sub(30 * 86_400);
            Call::get(format!("/v1/tenants/{tenant}/usage?granularity=day&from={from}&to={now}"))
        }
        AdminCommand::Plans => Call::get("/v1/plans".into()),
        AdminCommand::OperatorToken(OperatorTokenCommand::List) => Call::get("/v1/operator-tokens".into()),
        AdminCommand::OperatorToken(OperatorTokenCommand::Create { name }) => {
            Call::post("/v1/operator-tokens".into(), Some(json!({"name": name})))
        }
        AdminCommand::OperatorToken(OperatorTokenCommand::Revoke { token }) => {
            Call::post(format!("/v1/operator-tokens/{token}/revoke"), None)
        }
        AdminCommand::Invite { tenant, email, role } => Call::post(
            format!("/v1/tenants/{tenant}/invitations"),
            Some(json!({"email": email, "role": role})),
        ),
        AdminCommand::Apps(AppCommand::List { tenant }) => Call::get(format!("/v1/tenants/{tenant}/apps")),
        AdminCommand::Apps(AppCommand::Create { tenant, name }) => {
            Call::post(format!("/v1/tenants/{tenant}/apps"), Some(json!({"name": name})))
        }
        AdminCommand::ApiKey { tenant, app, name } => {
            Call::post(format!("/v1/tenants/{tenant}/apps/{app}/api-keys"), Some(json!({"name": name})))
        }
        AdminCommand::Token { tenant, role, name } => Call::post(
            format!("/v1/tenants/{tenant}/management-tokens"),
            Some(json!({"name": name, "role": role})),
        ),
        AdminCommand::Revoke { tenant, app: None, .. } => {
            Call::post(format!("/v1/tenants/{tenant}/revocations"), Some(json!({"all": true})))
        }
        AdminCommand::Revoke { tenant, app: Some(app), token_id, client_id } => {
            let body = match (token_id, client_id) {
                (Some(token_id), _) => json!({"token_id": token_id}),
                (None, Some(client_id)) => json!({"client_id": client_id}),
                (None, None) => json!({"all": true}),
            };
            Call::post(format!("/v1/tenants/{tenant}/apps/{app}/revocations"), Some(body))
        }
        AdminCommand::Webhooks(command) => super::admin_delivery::webhook_call(command),
        AdminCommand::Rules(command) => super::admin_delivery::rule_call(command),
        AdminCommand::PushCredentials(command) => super::admin_delivery::push_credentials_call(command),
        AdminCommand::AuditLog(command) => super::admin_audit::audit_log_call(command),
        AdminCommand::Exchange(command) => super::admin_audit::exchange_call(command),
        AdminCommand::Audit { tenant, limit } => {
            Call::get(format!("/v1/tenants/{tenant}/audit-events?limit={limit}"))
        }
    }
}

fn status(tenant: &str, status: &str) -> Call {
    Call::post(format!("/v1/tenants/{tenant}/status"), Some(json!({"status": status})))
}

/// Runs `tributary admin …`: prints the API's JSON reply, or its error and exit code 1.
pub async fn admin(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let stored = bootstrap::read_credentials(&args.data_dir).ok();
    let url = args.url.clone().or_else(|| stored.as_ref().map(|c| c.http_url.clone()));
    let token = args.token.clone().or_else(|| stored.and_then(|c| c.operator_token));
    let (Some(url), Some(token)) = (url, token) else {
        bail!(
            "no server: pass --url and --token, or run `tributary serve` first so {}/credentials.json exists",
            args.data_dir.display()
        );
    };
    let call = call_of(args.command);
    let client = reqwest::Client::new();
    let url = format!("{}{}", url.trim_end_matches('/'), call.path);
    let mut request = client.request(call.method, url).bearer_auth(token);
    if let Some(body) = &call.body {
        request = request.json(body);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    let shown = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() {
        // JSON lines (an export) are printed as they came, ending in their own newline.
        if shown.ends_with('\n') {
            print!("{shown}");
        } else if !shown.is_empty() {
            println!("{shown}");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{status}: {shown}");
        Ok(ExitCode::FAILURE)
    }
}
