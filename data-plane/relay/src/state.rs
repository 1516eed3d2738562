//! The state shared by every transport of one relay.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tributary_engine::Engine;

use crate::config::RelayConfig;
use crate::conn::Connections;
use crate::directory::AppDirectory;
use crate::hub::Hub;
use crate::policy::Policies;

impl RelayState {
    /// Returns the options of namespace `name` for `app`: the app's own (from the control
    /// plane), else the configuration file's, else the app's default namespace, else the
    /// file's default. The app's policy is loaded before any of its requests gets here.
    pub fn namespace(&self, app: &str, name: &str) -> crate::config::NamespaceConfig {
        let policy = self.policies.peek(app);
        let own = |ns: &str| policy.as_ref().and_then(|p| p.namespace(ns).cloned());
        let mut options = own(name)
            .or_else(|| self.config.namespaces.get(name).cloned())
            .or_else(|| own(""))
            .unwrap_or_else(|| self.config.namespace(""));
        // The plan's history retention bounds every namespace of the tenant.
        let retention = policy.map_or(0, |p| p.limits().max_history_secs);
        if retention > 0 {
            options.history_ttl_secs = options.history_ttl_secs.min(retention);
        }
        options
    }
}

/// Everything a transport needs: settings, engine, hub, directory and live connections.
pub struct RelayState {
    /// Settings.
    pub config: RelayConfig,
    /// The engine.
    pub engine: Arc<dyn Engine>,
    /// The channel hub.
    pub hub: Arc<Hub>,
    /// Apps and keys.
    pub directory: Arc<dyn AppDirectory>,
    /// The admission rules of the apps this node has seen, from the directory.
    pub policies: Policies,
    /// Live connections.
    pub connections: Connections,
    /// MQTT sessions, online and parked.
    pub mqtt_sessions: crate::mqtt::Sessions,
    /// Plan limits counted on this node and synced through the engine.
    pub quotas: crate::quota::Quotas,
    /// Usage counted on this node, flushed to the directory.
    pub usage: Arc<crate::usage::Usage>,
    /// Cancelled when the relay shuts down.
    pub shutdown: CancellationToken,
    /// The tasks of live connections (WebSocket and SSE), so a shutdown can wait for their
    /// goodbyes.
    pub tasks: tokio_util::task::TaskTracker,
    /// Where a publish's push section goes (set once by the server that has a store); without
    /// one, a publish with a push section is refused.
    pub push: std::sync::OnceLock<Arc<dyn PushSink>>,
    /// Where receipts of audited messages come from (set once by the server that has a store);
    /// without one, asking for a receipt is `unavailable`.
    pub receipts: std::sync::OnceLock<Arc<dyn Receipts>>,
}

/// Receipts of messages on an audit log: the entry, its inclusion proof and the signed
/// checkpoint it is in (docs/audit.md).
#[async_trait::async_trait]
pub trait Receipts: Send + Sync + 'static {
    /// The receipt (JSON) of the message at `epoch` and `offset` of `channel` in `stream_app`'s
    /// streams: from the log of `exchange` when an exchange routes the channel, else from the
    /// log of `stream_app`'s tenant.
    async fn receipt(
        &self,
        stream_app: &str,
        exchange: Option<&str>,
        channel: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<serde_json::Value, crate::ops::OpError>;
}

/// Queues the pushes of a published message's push section: one per device subscribed to the
/// channel for push, durably, before the publish is answered.
#[async_trait::async_trait]
pub trait PushSink: Send + Sync + 'static {
    /// Checks a push section before its message is published (a section no service would
    /// take is refused, and nothing is published).
    fn check(&self, push: &serde_json::value::RawValue) -> Result<(), crate::ops::OpError>;

    /// Queues `push` (the publish's push section, as JSON) for the devices `channel` of `app`
    /// reaches; `message_id` names the published message (the same for a retried publish, so
    /// its pushes are queued once). Returns the push's id and how many devices it reaches.
    async fn push_on_publish(
        &self,
        app: &str,
        channel: &str,
        message_id: &str,
        push: &serde_json::value::RawValue,
    ) -> Result<(String, usize), crate::ops::OpError>;
}
