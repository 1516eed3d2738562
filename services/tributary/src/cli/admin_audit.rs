//! `tributary admin audit-log …`: a tenant's audit log through the management API (its state
//! and keys, entries, checkpoints, receipts, consistency proofs, export, key rotation and the
//! tenant's cosigning key). Cosigning itself and offline verification are `tributary audit`.

use clap::Subcommand;
use serde_json::json;

use super::admin::Call;

/// `tributary admin audit-log …`.
#[derive(Debug, Subcommand)]
pub enum AuditLogCommand {
    /// The log's size, newest checkpoint, keys and cosigners.
    Show {
        /// The tenant id.
        tenant: String,
    },
    /// Entries from an index on.
    Entries {
        /// The tenant id.
        tenant: String,
        /// The first index.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Signed checkpoints of at least `--from-size` entries.
    Checkpoints {
        /// The tenant id.
        tenant: String,
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
        /// The tenant id.
        tenant: String,
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
        /// The tenant id.
        tenant: String,
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
        /// The tenant id.
        tenant: String,
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

/// The API call of an audit log command.
pub fn audit_log_call(command: AuditLogCommand) -> Call {
    use AuditLogCommand as A;
    let at = |tenant: &str, rest: &str| format!("/v1/tenants/{tenant}/audit/{rest}");
    let query = |pairs: &[(&str, Option<String>)]| {
        let parts: Vec<String> =
            pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", escaped(v)))).collect();
        if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
    };
    match command {
        A::Show { tenant } => Call::get(at(&tenant, "log")),
        A::Entries { tenant, from, limit } => {
            Call::get(at(&tenant, &format!("entries?from={from}&limit={limit}")))
        }
        A::Checkpoints { tenant, from_size, limit } => {
            Call::get(at(&tenant, &format!("checkpoints?from_size={from_size}&limit={limit}")))
        }
        A::Receipt { tenant, index, app, channel, epoch, offset, size } => {
            let q = query(&[
                ("index", index.map(|v| v.to_string())),
                ("app", app),
                ("channel", channel),
                ("epoch", epoch),
                ("offset", offset.map(|v| v.to_string())),
                ("size", size.map(|v| v.to_string())),
            ]);
            Call::get(at(&tenant, &format!("proofs/inclusion{q}")))
        }
        A::Consistency { tenant, from, to } => {
            let q = query(&[("from", Some(from.to_string())), ("to", to.map(|v| v.to_string()))]);
            Call::get(at(&tenant, &format!("proofs/consistency{q}")))
        }
        A::Export { tenant, to } => {
            Call::get(at(&tenant, &format!("export{}", query(&[("to", to.map(|v| v.to_string()))]))))
        }
        A::RotateKey { tenant } => Call::post(at(&tenant, "rotate-key"), None),
        A::SetCosigner { tenant, public_key } => {
            Call::put(at(&tenant, "cosigner"), Some(json!({ "public_key": public_key })))
        }
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
