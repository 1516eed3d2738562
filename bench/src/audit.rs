//! The audit log: how fast the log writer appends audited messages, and how fast an export
//! verifies offline.
//!
//! `audit-append` runs the writer alone, in this process, on the real store (a SQLite file, or
//! PostgreSQL with `--database`): an app's durable feed (the memory engine's) is filled with
//! `--entries` messages of an audited namespace first, then the writer's steps are timed until
//! every message is on the log (and, reported apart, until the last is in a signed checkpoint,
//! which waits for `checkpoint_interval`). `audit-verify` writes a log of
//! `--entries` message entries with a signed checkpoint every 100,000, and times the offline
//! verifier over the file (what `tributary audit verify` runs). [`AuditWatch`] follows the log of
//! a server under load (`fanout --audited`): how long until every published message is on it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use serde_json::{Value, json};
use tokio::time::Instant;
use tributary_audit::checkpoint::Checkpoint;
use tributary_audit::entry::{self, Message};
use tributary_audit::export::{Entry, verify, write};
use tributary_audit::merkle::Frontier;
use tributary_audit::note::{NoteSigner, sign};
use tributary_delivery::audit_log::{AuditWriter, AuditWriterConfig};
use tributary_engine::{
    ChannelKey, Engine, FeedRetention, MemoryEngine, MemoryEngineConfig, NewMessage, PublishOptions,
    StreamOptions,
};
use tributary_protocol::{ChannelName, Payload};
use tributary_store::{Actor, MasterKey, Store};

/// Arguments of the append scenario.
#[derive(Debug, Args)]
pub struct AppendArgs {
    /// Audited messages appended.
    #[arg(long, default_value_t = 200_000)]
    entries: u64,
    /// The store: a PostgreSQL URL (a fresh database is made on its server); empty, a SQLite
    /// file in a temporary directory.
    #[arg(long, default_value = "")]
    database: String,
    /// Most entries per step of the writer (`audit.batch`).
    #[arg(long, default_value_t = 5000)]
    batch: usize,
}

/// Arguments of the verify scenario.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Entries in the export.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
}

async fn open_store(database: &str, dir: &std::path::Path) -> anyhow::Result<(Store, &'static str)> {
    let key = MasterKey::generate();
    if database.is_empty() {
        let url = format!("sqlite://{}", dir.join("audit.db").display());
        return Ok((Store::open(&url, &key).await?, "sqlite"));
    }
    let base = database.rsplit_once('/').map_or(database, |(base, _)| base);
    let url = format!("{base}/trbbench_{}", std::process::id());
    tributary_store::create_database(&url).await.context("the PostgreSQL server answers")?;
    Ok((Store::open(&url, &key).await?, "postgres"))
}

/// Runs the append scenario.
pub async fn append(args: AppendArgs) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let (store, backend) = open_store(&args.database, dir.path()).await?;
    let retention = FeedRetention { max_len: usize::try_from(args.entries)? + 1000 };
    let engine: Arc<dyn Engine> =
        Arc::new(MemoryEngine::new(MemoryEngineConfig { feed_retention: retention, ..Default::default() }));
    let tenant = store.create_tenant("bench").await?;
    let app = store.create_app(&tenant.id, "bench").await?;
    engine.feed_enable(&app.id).await?;
    store.set_namespace(&Actor::system(), &tenant.id, &app.id, "ledger", r#"{"audited":true}"#).await?;
    let options = PublishOptions {
        stream: StreamOptions { history_size: 0, history_ttl: Duration::from_secs(600) },
        idempotency_key: None,
        idempotency_window: Duration::from_secs(60),
    };
    let channels: Vec<ChannelKey> = (0..100)
        .map(|c| {
            ChannelName::parse(&format!("ledger:c{c}")).map(|name| ChannelKey::new(app.id.clone(), name))
        })
        .collect::<Result<_, _>>()?;
    for n in 0..args.entries {
        let message = NewMessage {
            payload: Payload::Json(Bytes::from(format!(
                "{{\"order\":{n},\"amount\":\"19.99\",\"currency\":\"EUR\"}}"
            ))),
            client_id: Some("publisher-1".into()),
            encoding: None,
            meta: None,
        };
        engine.publish(&channels[(n % 100) as usize], message, &options).await?;
    }
    let config = AuditWriterConfig {
        owner: "bench".into(),
        batch: args.batch,
        poll_interval: Duration::from_millis(1),
        ..Default::default()
    };
    let writer = AuditWriter::new(store.clone(), engine.clone(), config);
    let log_id = tributary_store::audit_log::tenant_log_id(&tenant.id);
    // Three management events (tenant, app, namespace) go on the log too.
    let expected = args.entries + 3;
    let started = Instant::now();
    let mut appended = None;
    loop {
        writer.run_once().await?;
        if appended.is_none() && writer.stats().entries >= expected {
            appended = Some(started.elapsed().as_secs_f64());
        }
        let log = store.audit_log(&log_id).await?;
        if log.size >= expected && log.checkpoint_size == log.size {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "the writer did not finish");
        if appended.is_some() {
            // Appended: the last checkpoint waits for its interval (a second).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let checkpointed = started.elapsed().as_secs_f64();
    let elapsed = appended.unwrap_or(checkpointed);
    let stats = writer.stats();
    Ok(json!({
        "scenario": "audit-append",
        "peer": "tributary",
        "backend": backend,
        "entries": stats.entries,
        "checkpoints": stats.checkpoints,
        "seconds": elapsed,
        "entries_per_sec": stats.entries as f64 / elapsed,
        "seconds_to_last_checkpoint": checkpointed,
    }))
}

/// Runs the verify scenario.
pub async fn verify_export(args: VerifyArgs) -> anyhow::Result<Value> {
    const ORIGIN: &str = "bench.example/audit/ten_bench";
    let signer = NoteSigner::from_seed(ORIGIN, &[7; 32])?;
    let mut tree = Frontier::new();
    let mut entries = Vec::with_capacity(usize::try_from(args.entries)?);
    let mut notes = Vec::new();
    let mut prev = [0; 32];
    for n in 0..args.entries {
        let payload = format!("{{\"order\":{n},\"amount\":\"19.99\"}}");
        let body = entry::body(&Message {
            kind: "message",
            app: "app_bench",
            channel: "ledger:c1",
            epoch: "e1",
            offset: n + 1,
            ts_ms: 1_765_000_000_000 + n,
            client_id: Some("publisher-1"),
            payload_sha256: entry::payload_sha256(payload.as_bytes()),
            payload_bytes: payload.len(),
            binary: false,
            encoding: None,
        });
        let entry = Entry { index: n, prev, body };
        prev = entry.leaf_hash();
        tree.push(prev);
        entries.push(entry);
        if tree.size().is_multiple_of(100_000) || tree.size() == args.entries {
            let text = Checkpoint {
                origin: ORIGIN.into(),
                size: tree.size(),
                root: tree.root(),
                extensions: vec![],
            }
            .to_text();
            notes.push(sign(&text, &[&signer])?);
        }
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("export.jsonl");
    std::fs::write(&path, write(ORIGIN, &entries, &notes))?;
    drop(entries);
    let bytes = std::fs::metadata(&path)?.len();
    let started = Instant::now();
    let text = std::fs::read_to_string(&path)?;
    let report = verify(&text, &[tributary_audit::note::NoteVerifier::parse(&signer.verifier_key())?]);
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(report.problems.is_empty(), "the export did not verify: {:?}", report.problems);
    Ok(json!({
        "scenario": "audit-verify",
        "peer": "tributary",
        "entries": report.entries,
        "checkpoints": report.checkpoints_verified,
        "export_bytes": bytes,
        "seconds": elapsed,
    }))
}

/// How far the tenant's audit log got with an audited run's messages: from the publisher's
/// start until every published message is on the log.
pub(crate) struct AuditWatch {
    management: crate::webhooks::Management,
    base: u64,
    started: Instant,
}

impl AuditWatch {
    /// Sets `namespace` audited for the app (its other options those of `scripts/bench`'s `bench`
    /// namespace), then reads the log's size once that change is on it.
    pub(crate) async fn start(
        credentials: &std::path::Path,
        http: &str,
        namespace: &str,
    ) -> anyhow::Result<Self> {
        let management = crate::webhooks::Management::read(credentials, http)?;
        let options = json!({"history_size": 1000, "history_ttl_secs": 600, "presence": false,
                             "join_leave": false, "audited": true});
        management.post(&format!("/namespaces/{namespace}"), options).await?;
        // The change's own management event reaches the log first.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let base = management.get_tenant("/audit/log").await?["size"].as_u64().unwrap_or(0);
        Ok(Self { management, base, started: Instant::now() })
    }

    /// Waits (a minute at most) until `published` messages are on the log.
    pub(crate) async fn finish(self, published: u64) -> anyhow::Result<serde_json::Value> {
        let stopped = Instant::now();
        let deadline = stopped + Duration::from_secs(60);
        let mut size = 0;
        while Instant::now() < deadline {
            size = self.management.get_tenant("/audit/log").await?["size"].as_u64().unwrap_or(0);
            if size.saturating_sub(self.base) >= published {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let logged = size.saturating_sub(self.base).min(published);
        let elapsed = self.started.elapsed().as_secs_f64();
        Ok(json!({
            "audit_published": published,
            "audit_logged": logged,
            "audit_drain_ms": stopped.elapsed().as_millis(),
            "audit_logged_per_sec": logged as f64 / elapsed,
        }))
    }
}
