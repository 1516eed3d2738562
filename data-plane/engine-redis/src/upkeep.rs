//! The upkeep of the channels a node serves: presence entries that expired leave, and quiet
//! channels keep their epochs.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use tributary_engine::ChannelKey;

use crate::Inner;
use crate::routes::lock_read;

/// How many upkeep calls are in flight at once.
const UPKEEP_CONCURRENCY: usize = 16;

/// `Route::upkeep_due` while the channel's upkeep runs.
const UPKEEP_RUNNING: u64 = u64::MAX;

/// The upkeep of the channels this node serves: expired presence entries leave (so a node that
/// died without leaving has its members leave within their timeout even when nothing else
/// touches the channel), and the channels keep their epochs however quiet they are.
///
/// A channel is looked at only when its upkeep is due, not on every round: when its earliest
/// presence entry expires (the script says when), soon after a member joins, and otherwise a
/// quarter of the idle TTL later to keep its epoch. A node serving many channels without
/// presence thus costs Redis almost nothing.
pub(crate) async fn upkeep(inner: Weak<Inner>) {
    loop {
        let Some(every) = inner.upgrade().map(|i| i.config.presence_sweep) else { return };
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let now = inner.routes.now_ms();
        let due: Vec<ChannelKey> = lock_read(&inner.routes.channels)
            .values()
            .filter(|route| {
                // Marked, so that a join seen while the script runs is not overwritten below.
                let due = route.upkeep_due.load(Ordering::Relaxed) <= now;
                if due {
                    route.upkeep_due.store(UPKEEP_RUNNING, Ordering::Relaxed);
                }
                due
            })
            .map(|route| route.key.clone())
            .collect();
        let idle_ms = inner.config.stream_idle_ttl.as_millis() as u64;
        let quiet_ms = (idle_ms / 4).max(every.as_millis() as u64);
        let inner = &inner;
        futures::stream::iter(due)
            .for_each_concurrent(UPKEEP_CONCURRENCY, |key| async move {
                let names = inner.names(&key);
                let mut invocation = names.presence_call(&inner.scripts.upkeep);
                invocation.key(&names.meta).arg(&names.pubsub).arg(idle_ms);
                names.with_feed(&mut invocation);
                let next = match invocation.invoke_async::<i64>(&mut inner.commands_for(&key)).await {
                    // The delay until the earliest presence entry expires, or -1 without any.
                    Ok(next) => now + u64::try_from(next).map_or(quiet_ms, |ms| ms.min(quiet_ms)),
                    Err(err) => {
                        tracing::debug!(error = %err, "channel upkeep failed");
                        now
                    }
                };
                if let Some(route) = lock_read(&inner.routes.channels).get(&names.pubsub) {
                    let _ = route.upkeep_due.compare_exchange(
                        UPKEEP_RUNNING,
                        next,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            })
            .await;
    }
}
