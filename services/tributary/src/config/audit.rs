//! The `[audit]` settings: the tenants' transparency logs (docs/audit.md), written by every
//! delivery worker (`tributary serve` with `delivery.worker`, or `tributary worker`).

use serde::{Deserialize, Serialize};

/// How the audit logs are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The logs' names start with this: `<origin_prefix>/<tenant id>` and
    /// `<origin_prefix>/operator`, the first line of every checkpoint and the name of the logs'
    /// keys. Make it this deployment's own (a domain it owns); a log keeps the name it was made
    /// with.
    pub origin_prefix: String,
    /// How often a log with new entries gets a signed checkpoint, at most, in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// Most entries one step of a log's writer appends (one transaction).
    pub batch: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { origin_prefix: "tributary.local/audit".into(), checkpoint_interval_ms: 1000, batch: 5000 }
    }
}

impl AuditConfig {
    /// Returns every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name_ok = !self.origin_prefix.is_empty()
            && !self.origin_prefix.chars().any(|c| c.is_whitespace() || c == '+' || c.is_control());
        if !name_ok {
            problems.push("audit.origin_prefix must be non-empty, without spaces or '+'".into());
        }
        if !(100..=60_000).contains(&self.checkpoint_interval_ms) {
            problems.push("audit.checkpoint_interval_ms must be 100 to 60000".into());
        }
        if !(1..=50_000).contains(&self.batch) {
            problems.push("audit.batch must be 1 to 50000".into());
        }
        problems
    }

    /// The writer of a worker named `owner`, whose leases on logs last `lease_secs` (the
    /// workers' `delivery.lease_secs`).
    pub fn writer(
        &self,
        store: tributary_store::Store,
        engine: std::sync::Arc<dyn tributary_engine::Engine>,
        owner: String,
        lease_secs: u64,
    ) -> tributary_delivery::audit_log::AuditWriter {
        let config = tributary_delivery::audit_log::AuditWriterConfig {
            owner,
            lease: std::time::Duration::from_secs(lease_secs),
            origin_prefix: self.origin_prefix.clone(),
            batch: usize::try_from(self.batch).unwrap_or(5000),
            checkpoint_interval: std::time::Duration::from_millis(self.checkpoint_interval_ms),
            ..Default::default()
        };
        tributary_delivery::audit_log::AuditWriter::new(store, engine, config)
    }
}
