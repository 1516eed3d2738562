//! `tributary admin audit-log …`: a tenant's audit log through the management API (its state
//! and keys, entries, checkpoints, receipts, consistency proofs, export, key rotation and the
//! tenant's cosigning key), and with `--exchange` the log of an exchange the tenant is a party
//! of. Cosigning itself and offline verification are `tributary audit`.

use clap::Subcommand;
use serde_json::json;

use super::admin::Call;

/// `tributary admin audit-log …`.
#[derive(Debug, Subcommand)]
pub enum AuditLogCommand {
    /// The log's size, newest checkpoint, keys and cosigners.
    Show {
        /// The log: the tenant's, or `--exchange`'s.
        #[command(flatten)]
        log: LogArg,
    },
    /// Entries from an index on.
    Entries {
        /// The log: the tenant's, or `--exchange`'s.
        #[command(flatten)]
        log: LogArg,
        /// The first index.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Signed checkpoints of at least `--from-size` entries.
    Checkpoints {
        /// The log: the tenant's, or `--exchange`'s.
        #[command(flatten)]
        log: LogArg,
        /// The smallest size.
        #[arg(long, default_value_t = 0)]
        from_size: u64,
        /// How many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// A receipt: an entry (`--index`, or a message by `--app --channel --epoch --offset`) and
    /// its proof in the newest checkpoint (or the one of `--size` entries).
    Receipt {
        /// The log: the tenant's, or `--exchange`'s.
        #[command(flatten)]
        log: LogArg,
        /// The entry's index.
        #[arg(long, conflicts_with = "channel")]
        index: Option<u64>,
        /// The message's app.
        #[arg(long, requires = "channel")]
        app: Option<String>,
        /// The message's channel.
        #[arg(long, requires_all = ["app", "epoch", "offset"])]
        channel: Option<String>,
        /// The channel's epoch.
        #[arg(long)]
        epoch: Option<String>,
        /// The message's offset.
        #[arg(long)]
        offset: Option<u64>,
        /// The checkpoint's size (default: the newest).
        #[arg(long)]
        size: Option<u64>,
    },
    /// The proof that the newest checkpoint (or `--to`) extends the one of `--from` entries.
    Consistency {
        /// The log: the tenant's, or `--exchange`'s.
        #[command(flatten)]
        log: LogArg,
        /// The older checkpoint's size.
        #[arg(long)]
        from: u64,
        /// The newer checkpoint's size (default: the newest).
        #[arg(long)]
        to: Option<u64>,
    },
    /// The log as JSON lines, up to the newest checkpoint (or `--to`): what `tributary audit
    /// verify` reads.
    Export {
        /// The log: the tenant's, or `--exchange`'s.
        #[command(flatten)]
        log: LogArg,
        /// The first entry's index (default 0): a range, verifiable on its own.
        #[arg(long)]
        from: Option<u64>,
        /// The last entry's index plus one.
        #[arg(long)]
        to: Option<u64>,
    },
    /// A new key signs the log's checkpoints from now on.
    RotateKey {
        /// The tenant id.
        tenant: String,
    },
    /// Registers the tenant's own cosigning key (from `tributary audit keygen`).
    SetCosigner {
        /// The tenant id.
        tenant: String,
        /// The public key, `<name>+<id>+<base64>`.
        public_key: String,
    },
}

/// Which log a command reads: the tenant's own, or an exchange's it is a party of.
#[derive(Debug, clap::Args)]
pub struct LogArg {
    /// The tenant id.
    tenant: String,
    /// An exchange of the tenant (`exc_…`): its log rather than the tenant's.
    #[arg(long)]
    exchange: Option<String>,
}

impl LogArg {
    fn at(&self, rest: &str) -> String {
        match &self.exchange {
            None => format!("/v1/tenants/{}/audit/{rest}", self.tenant),
            Some(exchange) => format!("/v1/tenants/{}/exchanges/{exchange}/audit/{rest}", self.tenant),
        }
    }
}

/// The API call of an audit log command.
pub fn audit_log_call(command: AuditLogCommand) -> Call {
    use AuditLogCommand as A;
    let query = |pairs: &[(&str, Option<String>)]| {
        let parts: Vec<String> =
            pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", escaped(v)))).collect();
        if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
    };
    match command {
        A::Show { log } => Call::get(log.at("log")),
        A::Entries { log, from, limit } => Call::get(log.at(&format!("entries?from={from}&limit={limit}"))),
        A::Checkpoints { log, from_size, limit } => {
            Call::get(log.at(&format!("checkpoints?from_size={from_size}&limit={limit}")))
        }
        A::Receipt { log, index, app, channel, epoch, offset, size } => {
            let q = query(&[
                ("index", index.map(|v| v.to_string())),
                ("app", app),
                ("channel", channel),
                ("epoch", epoch),
                ("offset", offset.map(|v| v.to_string())),
                ("size", size.map(|v| v.to_string())),
            ]);
            Call::get(log.at(&format!("proofs/inclusion{q}")))
        }
        A::Consistency { log, from, to } => {
            let q = query(&[("from", Some(from.to_string())), ("to", to.map(|v| v.to_string()))]);
            Call::get(log.at(&format!("proofs/consistency{q}")))
        }
        A::Export { log, from, to } => {
            let q = query(&[("from", from.map(|v| v.to_string())), ("to", to.map(|v| v.to_string()))]);
            Call::get(log.at(&format!("export{q}")))
        }
        A::RotateKey { tenant } => Call::post(format!("/v1/tenants/{tenant}/audit/rotate-key"), None),
        A::SetCosigner { tenant, public_key } => Call::put(
            format!("/v1/tenants/{tenant}/audit/cosigner"),
            Some(json!({ "public_key": public_key })),
        ),
    }
}

/// `value` percent-encoded for a query string (channel names may hold `/`, `:`, `#`, …).
fn escaped(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `tributary admin exchange …`: exchanges between tenants (docs/exchanges.md).
#[derive(Debug, Subcommand)]
pub enum ExchangeCommand {
    /// The exchanges a tenant offered or was offered.
    List {
        /// The tenant id.
        tenant: String,
    },
    /// One exchange.
    Show {
        /// The tenant id (a party).
        tenant: String,
        /// The exchange id.
        exchange: String,
    },
    /// Offers a namespace of one of the tenant's apps to another tenant.
    Offer {
        /// The offering tenant.
        tenant: String,
        /// Its app whose namespace is shared.
        #[arg(long)]
        app: String,
        /// The namespace.
        #[arg(long)]
        namespace: String,
        /// The tenant it is offered to.
        #[arg(long)]
        partner: String,
        /// The offering side's rights, comma-separated (publish, subscribe, presence, history).
        #[arg(long, value_delimiter = ',', default_value = "publish,subscribe,presence,history")]
        offerer_rights: Vec<String>,
        /// The partner's rights, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "subscribe")]
        partner_rights: Vec<String>,
    },
    /// Accepts an exchange offered to the tenant, into one of its apps.
    Accept {
        /// The partner tenant.
        tenant: String,
        /// The exchange id.
        exchange: String,
        /// The tenant's app whose clients reach the namespace.
        #[arg(long)]
        app: String,
    },
    /// Suspends an exchange (either side).
    Suspend {
        /// The tenant id (a party).
        tenant: String,
        /// The exchange id.
        exchange: String,
    },
    /// Resumes an exchange the tenant suspended.
    Resume {
        /// The tenant id.
        tenant: String,
        /// The exchange id.
        exchange: String,
    },
    /// Ends an exchange, or declines an offer (either side).
    End {
        /// The tenant id (a party).
        tenant: String,
        /// The exchange id.
        exchange: String,
    },
}

/// The API call of an exchange command.
pub fn exchange_call(command: ExchangeCommand) -> Call {
    use ExchangeCommand as E;
    let at = |tenant: &str, rest: &str| format!("/v1/tenants/{tenant}/exchanges{rest}");
    match command {
        E::List { tenant } => Call::get(at(&tenant, "")),
        E::Show { tenant, exchange } => Call::get(at(&tenant, &format!("/{exchange}"))),
        E::Offer { tenant, app, namespace, partner, offerer_rights, partner_rights } => Call::post(
            at(&tenant, ""),
            Some(json!({
                "app_id": app, "namespace": namespace, "partner_tenant_id": partner,
                "offerer_rights": offerer_rights, "partner_rights": partner_rights,
            })),
        ),
        E::Accept { tenant, exchange, app } => {
            Call::post(at(&tenant, &format!("/{exchange}/accept")), Some(json!({ "app_id": app })))
        }
        E::Suspend { tenant, exchange } => Call::post(at(&tenant, &format!("/{exchange}/suspend")), None),
        E::Resume { tenant, exchange } => Call::post(at(&tenant, &format!("/{exchange}/resume")), None),
        E::End { tenant, exchange } => Call::post(at(&tenant, &format!("/{exchange}/end")), None),
    }
}
