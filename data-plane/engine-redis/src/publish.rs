//! Publishing in runs: every command connection has a writer that takes whatever publishes
//! are queued for it, groups them by channel, and stores each channel's run with one call of
//! the publish script.
//!
//! A publish is queued when the engine's `publish` is first polled, so the queue's order is
//! the order of the calls; the writer keeps each channel's order inside a run, sends a
//! channel's runs in order, and sends the next batch only once the last one is answered. A
//! channel always takes the same connection (see `Inner::commands_for`), so offsets follow the
//! order in which publishes were made, on one node as before. What a run saves is Redis's work
//! per message: the epoch check (an `INFO`), the expiries, the trimming and the script's own
//! overhead are paid once per run, and a node's many publishers share round trips.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};
use tributary_engine::{ChannelKey, EngineError, PublishOutcome, StreamOptions};

use crate::connection::Conn;
use crate::{Inner, fresh_epoch, unavailable};

/// Most publishes one script call stores: the call holds Redis for all of them.
const MAX_RUN: usize = 64;

/// Most bytes of bodies one script call carries (a single larger message goes alone).
const MAX_RUN_BYTES: usize = 256 * 1024;

/// Most publishes a writer takes from its queue at once.
const MAX_BATCH: usize = 1024;

/// Publishes a connection's queue holds; past it, publishers wait for room (in order).
pub(crate) const QUEUE_CAPACITY: usize = 8192;

/// A publish waiting for its connection's writer.
pub(crate) struct Pending {
    pub(crate) key: ChannelKey,
    /// The stored body (see `wire::encode_body`).
    pub(crate) body: String,
    pub(crate) stream: StreamOptions,
    pub(crate) idempotency_key: Option<String>,
    /// The idempotency window, in seconds (at least 1).
    pub(crate) window_secs: u64,
    pub(crate) reply: oneshot::Sender<Result<PublishOutcome, EngineError>>,
}

impl Pending {
    /// Whether `self` may be stored in the same call as `run` (same channel already known).
    fn joins(&self, run: &Run) -> bool {
        let first = &run.pending[0];
        run.pending.len() < MAX_RUN
            && run.bytes + self.body.len() <= MAX_RUN_BYTES
            && first.stream == self.stream
            && first.window_secs == self.window_secs
    }
}

/// One channel's publishes for one script call, in order.
struct Run {
    pending: Vec<Pending>,
    bytes: usize,
}

/// Starts the writer of one command connection; it stops when the engine is dropped (every
/// sender with it).
pub(crate) fn spawn_writer(inner: Weak<Inner>, conn: Conn, queue: mpsc::Receiver<Pending>) {
    tokio::spawn(write(inner, conn, queue));
}

async fn write(inner: Weak<Inner>, conn: Conn, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let Some(inner) = inner.upgrade() else { return };
        let runs = runs(batch.drain(..));
        // Polled in order, so a channel's second run is sent after its first.
        futures::future::join_all(runs.into_iter().map(|run| store(&inner, conn.clone(), run))).await;
    }
}

/// Groups a batch into runs, keeping each channel's order: a channel's publishes go into its
/// open run until it is full (or the namespace's options changed), then into a new one.
fn runs(batch: impl Iterator<Item = Pending>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut open: HashMap<ChannelKey, usize> = HashMap::new();
    for pending in batch {
        let index = open.get(&pending.key).copied().filter(|&i| pending.joins(&runs[i]));
        match index {
            Some(i) => {
                runs[i].bytes += pending.body.len();
                runs[i].pending.push(pending);
            }
            None => {
                open.insert(pending.key.clone(), runs.len());
                runs.push(Run { bytes: pending.body.len(), pending: vec![pending] });
            }
        }
    }
    runs
}

/// Stores one run with one call of the publish script and answers each of its publishers.
async fn store(inner: &Inner, mut conn: Conn, run: Run) {
    let first = &run.pending[0];
    let names = inner.names(&first.key);
    let mut call = redis::cmd("EVAL");
    call.arg(&*inner.scripts.publish).arg(2 + run.pending.len()).arg(&names.meta).arg(&names.stream);
    for pending in &run.pending {
        match &pending.idempotency_key {
            Some(key) => call.arg(format!("{}:i:{key}", names.meta)),
            None => call.arg(&names.meta),
        };
    }
    call.arg(fresh_epoch())
        .arg(if inner.config.trust_restarts { "1" } else { "0" })
        .arg(first.stream.history_size)
        .arg(first.stream.history_ttl.as_millis() as u64)
        .arg(first.window_secs)
        .arg(&names.pubsub)
        .arg(inner.meta_ttl_ms(first.stream))
        .arg(inner.feed(&first.key.app))
        .arg(first.key.channel.as_str())
        .arg(&names.durable[0])
        .arg(&names.durable[1])
        .arg(&names.durable[3]);
    for pending in &run.pending {
        call.arg(if pending.idempotency_key.is_some() { "1" } else { "0" }).arg(&pending.body);
    }
    let answer: Result<(String, Vec<u64>), EngineError> =
        call.query_async(&mut conn).await.map_err(unavailable);
    match answer.and_then(|(epoch, outcomes)| outcomes_of(&epoch, &outcomes, run.pending.len())) {
        Ok(outcomes) => {
            for (pending, outcome) in run.pending.into_iter().zip(outcomes) {
                // A publisher that stopped waiting is not an error: its message is stored.
                let _ = pending.reply.send(Ok(outcome));
            }
        }
        Err(err) => {
            for pending in run.pending {
                let _ = pending.reply.send(Err(EngineError::Unavailable(err.to_string())));
            }
        }
    }
}

/// Reads the script's `{offset, ts, duplicate}` triples, one per publish of the run.
fn outcomes_of(epoch: &str, triples: &[u64], expected: usize) -> Result<Vec<PublishOutcome>, EngineError> {
    if triples.len() != expected * 3 {
        return Err(unavailable(format!(
            "the publish script answered {} values for {expected}",
            triples.len()
        )));
    }
    let epoch: Arc<str> = Arc::from(epoch);
    Ok(triples
        .chunks_exact(3)
        .map(|t| PublishOutcome { epoch: epoch.clone(), offset: t[0], ts_ms: t[1], duplicate: t[2] == 1 })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pending(channel: &str, history_size: usize, body: &str) -> Pending {
        let key = ChannelKey::new("app", tributary_protocol::ChannelName::parse(channel).expect("channel"));
        let stream = StreamOptions { history_size, history_ttl: Duration::from_secs(60) };
        let (reply, _) = oneshot::channel();
        Pending { key, body: body.into(), stream, idempotency_key: None, window_secs: 60, reply }
    }

    #[test]
    fn runs_keep_each_channels_order_and_split_when_full_or_when_options_change() {
        let mut batch = Vec::new();
        for i in 0..MAX_RUN + 1 {
            batch.push(pending("a:x", 10, &format!("a{i}")));
            batch.push(pending("b:x", 10, &format!("b{i}")));
        }
        batch.push(pending("b:x", 20, "b-other-options"));
        let runs = runs(batch.into_iter());
        let shape: Vec<(String, usize)> =
            runs.iter().map(|r| (r.pending[0].key.channel.to_string(), r.pending.len())).collect();
        let expected = [("a:x", MAX_RUN), ("b:x", MAX_RUN), ("a:x", 1), ("b:x", 1), ("b:x", 1)];
        assert_eq!(shape, expected.map(|(c, n)| (c.to_owned(), n)));
        let a: Vec<&str> = runs
            .iter()
            .flat_map(|r| &r.pending)
            .filter(|p| p.key.channel.as_str() == "a:x")
            .map(|p| p.body.as_str())
            .collect();
        let in_order: Vec<String> = (0..=MAX_RUN).map(|i| format!("a{i}")).collect();
        assert_eq!(a, in_order, "a channel's publishes keep their order across runs");
    }

    #[test]
    fn a_run_stops_at_its_byte_limit_but_a_large_message_still_goes() {
        let big = "x".repeat(MAX_RUN_BYTES);
        let batch = vec![pending("a:x", 10, "small"), pending("a:x", 10, &big), pending("a:x", 10, "small")];
        let runs = runs(batch.into_iter());
        assert_eq!(runs.iter().map(|r| r.pending.len()).collect::<Vec<_>>(), [1, 1, 1]);
    }

    #[test]
    fn a_short_answer_fails_the_run_rather_than_misnumbering_it() {
        assert!(outcomes_of("e", &[1, 2, 0], 2).is_err());
        let outcomes = outcomes_of("e", &[1, 2, 0, 3, 4, 1], 2).expect("two outcomes");
        assert_eq!((outcomes[1].offset, outcomes[1].ts_ms, outcomes[1].duplicate), (3, 4, true));
    }
}
