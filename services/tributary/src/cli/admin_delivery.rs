//! `tributary admin webhooks …`, `tributary admin rules …` and `tributary admin
//! push-credentials …`: an app's webhook endpoints, the rules that send its events to them, and
//! its credentials for the push and SMS services, through the management API.

use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::admin::Call;

/// The app a command is about.
#[derive(Debug, clap::Args)]
pub struct AppRef {
    /// The tenant id.
    tenant: String,
    /// The app id.
    app: String,
}

impl AppRef {
    /// The app's management path followed by `rest`.
    fn path(&self, rest: &str) -> String {
        format!("/v1/tenants/{}/apps/{}{rest}", self.tenant, self.app)
    }
}

/// Webhook endpoints of an app.
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Lists an app's endpoints.
    List {
        #[command(flatten)]
        at: AppRef,
    },
    /// Creates an endpoint; prints its signing secret once.
    Create {
        #[command(flatten)]
        at: AppRef,
        /// Where requests go (https, unless the operator allows http).
        #[arg(value_name = "URL")]
        endpoint: String,
        /// A note.
        #[arg(long, default_value = "")]
        description: String,
        /// A custom header, `name=value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    /// Deletes an endpoint and its rules.
    Delete {
        #[command(flatten)]
        at: AppRef,
        /// The endpoint id (`wh_…`).
        webhook: String,
    },
    /// Enables an endpoint.
    Enable {
        #[command(flatten)]
        at: AppRef,
        /// The endpoint id.
        webhook: String,
    },
    /// Disables an endpoint.
    Disable {
        #[command(flatten)]
        at: AppRef,
        /// The endpoint id.
        webhook: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Gives an endpoint a new secret (printed once); the old one signs too for the overlap.
    RotateSecret {
        #[command(flatten)]
        at: AppRef,
        /// The endpoint id.
        webhook: String,
        /// Seconds the old secret keeps signing.
        #[arg(long, default_value_t = 86_400)]
        overlap_secs: u64,
    },
    /// Sends an endpoint a test event.
    Test {
        #[command(flatten)]
        at: AppRef,
        /// The endpoint id.
        webhook: String,
    },
    /// Prints an endpoint's delivery log, newest first.
    Deliveries {
        #[command(flatten)]
        at: AppRef,
        /// The endpoint id.
        webhook: String,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Prints an endpoint's dead letters.
    DeadLetters {
        #[command(flatten)]
        at: AppRef,
        /// The endpoint id.
        webhook: String,
    },
    /// Sends a dead letter again, with its event id.
    Replay {
        #[command(flatten)]
        at: AppRef,
        /// The endpoint id.
        webhook: String,
        /// The delivery id (`dlv_…`).
        delivery: String,
    },
}

/// Rules of an app.
#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Lists an app's rules.
    List {
        #[command(flatten)]
        at: AppRef,
    },
    /// Creates a rule: the events of the channels `--pattern` matches go to `--webhook`.
    Create {
        #[command(flatten)]
        at: AppRef,
        /// The channels it reads, e.g. `orders:*`.
        #[arg(long)]
        pattern: String,
        /// The event kinds, comma-separated: message, channel.occupied, channel.vacated,
        /// presence.join, presence.leave, presence.update, client.connected,
        /// client.disconnected.
        #[arg(long, value_delimiter = ',', default_value = "message")]
        events: Vec<String>,
        /// The webhook endpoint (`wh_…`).
        #[arg(long)]
        webhook: String,
        /// Most events per request.
        #[arg(long, default_value_t = 1)]
        batch_max: i64,
        /// Longest an event waits for others, in ms.
        #[arg(long, default_value_t = 0)]
        batch_ms: i64,
        /// `enveloped` or `raw`.
        #[arg(long, default_value = "enveloped")]
        body: String,
        /// A name for it.
        #[arg(long, default_value = "")]
        name: String,
        /// A custom header, `name=value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    /// Deletes a rule.
    Delete {
        #[command(flatten)]
        at: AppRef,
        /// The rule id (`rul_…`).
        rule: String,
    },
    /// Enables a rule.
    Enable {
        #[command(flatten)]
        at: AppRef,
        /// The rule id.
        rule: String,
    },
    /// Disables a rule.
    Disable {
        #[command(flatten)]
        at: AppRef,
        /// The rule id.
        rule: String,
    },
}

/// `name=value` pairs as a JSON object (a pair without `=` becomes a name with an empty value,
/// which the API refuses with the reason).
fn headers(pairs: &[String]) -> Value {
    let map: Map<String, Value> = pairs
        .iter()
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name.to_owned(), Value::String(value.to_owned()))
        })
        .collect();
    Value::Object(map)
}

/// An app's credentials for the push and SMS services.
#[derive(Debug, Subcommand)]
pub enum PushCredentialsCommand {
    /// Lists them (never the secrets).
    List {
        #[command(flatten)]
        at: AppRef,
    },
    /// Sets or replaces a service's credentials.
    Set {
        #[command(flatten)]
        at: AppRef,
        /// `apns`, `fcm`, `webpush` or `twilio`.
        service: String,
        /// The service's body as JSON (docs/management-api.md#push-credentials), e.g. with
        /// `jq -n --rawfile key AuthKey.p8 '{team_id: "…", key_id: "…", topic: "…", key: $key}'`.
        json: String,
    },
    /// Deletes a service's credentials.
    Delete {
        #[command(flatten)]
        at: AppRef,
        /// The service.
        service: String,
    },
}

/// The API call of a push credentials command.
pub fn push_credentials_call(command: PushCredentialsCommand) -> Call {
    use PushCredentialsCommand as P;
    match command {
        P::List { at } => Call::get(at.path("/push-credentials")),
        P::Set { at, service, json } => {
            // Sent as given when it is not JSON: the API says what is wrong with it.
            let body = serde_json::from_str(&json).unwrap_or(Value::String(json));
            Call::put(at.path(&format!("/push-credentials/{service}")), Some(body))
        }
        P::Delete { at, service } => Call::delete(at.path(&format!("/push-credentials/{service}"))),
    }
}

/// The API call of a webhook command.
pub fn webhook_call(command: WebhookCommand) -> Call {
    use WebhookCommand as W;
    match command {
        W::List { at } => Call::get(at.path("/webhooks")),
        W::Create { at, endpoint, description, headers: pairs } => Call::post(
            at.path("/webhooks"),
            Some(json!({"url": endpoint, "description": description, "headers": headers(&pairs)})),
        ),
        W::Delete { at, webhook } => Call::delete(at.path(&format!("/webhooks/{webhook}"))),
        W::Enable { at, webhook } => Call::post(at.path(&format!("/webhooks/{webhook}/enable")), None),
        W::Disable { at, webhook, reason } => {
            Call::post(at.path(&format!("/webhooks/{webhook}/disable")), Some(json!({"reason": reason})))
        }
        W::RotateSecret { at, webhook, overlap_secs } => Call::post(
            at.path(&format!("/webhooks/{webhook}/rotate-secret")),
            Some(json!({"overlap_secs": overlap_secs})),
        ),
        W::Test { at, webhook } => Call::post(at.path(&format!("/webhooks/{webhook}/test")), None),
        W::Deliveries { at, webhook, limit } => {
            Call::get(at.path(&format!("/webhooks/{webhook}/deliveries?limit={limit}")))
        }
        W::DeadLetters { at, webhook } => Call::get(at.path(&format!("/webhooks/{webhook}/dead-letters"))),
        W::Replay { at, webhook, delivery } => {
            Call::post(at.path(&format!("/webhooks/{webhook}/dead-letters/{delivery}/replay")), None)
        }
    }
}

/// The API call of a rule command.
pub fn rule_call(command: RuleCommand) -> Call {
    use RuleCommand as R;
    match command {
        R::List { at } => Call::get(at.path("/rules")),
        R::Create { at, pattern, events, webhook, batch_max, batch_ms, body, name, headers: pairs } => {
            Call::post(
                at.path("/rules"),
                Some(json!({
                    "name": name,
                    "channel_pattern": pattern,
                    "events": events,
                    "webhook_id": webhook,
                    "batch_max": batch_max,
                    "batch_ms": batch_ms,
                    "body": body,
                    "headers": headers(&pairs),
                })),
            )
        }
        R::Delete { at, rule } => Call::delete(at.path(&format!("/rules/{rule}"))),
        R::Enable { at, rule } => Call::post(at.path(&format!("/rules/{rule}/enable")), None),
        R::Disable { at, rule } => Call::post(at.path(&format!("/rules/{rule}/disable")), None),
    }
}
