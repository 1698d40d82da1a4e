//! Applies the Google events the webhook recorded to their messages, right
//! after the webhook answered. The webhook wakes it; it also looks every
//! `poll`, for events another replica recorded and could not apply (it
//! crashed, or lost the database, in between).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::domain::Policy;
use crate::store::{AppliedEvent, AppliedHead, Store, StoreError};

/// Events applied in one transaction. Under load the queue is as long as
/// what arrived while the last batch was applied; this bounds the
/// transaction, not the rate.
const BATCH: i64 = 500;

/// How long events may wait after the first of them was recorded.
const GATHER: Duration = Duration::from_millis(20);

pub async fn run(store: Store, policy: Policy, poll: Duration, shutdown: CancellationToken) {
    let recorded = store.recorded_handle();
    loop {
        drain(&store, &policy, &shutdown).await;
        tokio::select! {
            // Let a few milliseconds of events gather: a transaction per
            // webhook batch would cost the database as much as recording them.
            () = recorded.notified() => tokio::time::sleep(GATHER).await,
            () = tokio::time::sleep(poll) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Applies the queue until it is empty (a batch not full), the database
/// fails, or the service shuts down.
async fn drain(store: &Store, policy: &Policy, shutdown: &CancellationToken) {
    loop {
        match store.apply_recorded(BATCH, policy).await {
            Ok((taken, applied)) => {
                log_applied(&applied);
                if (taken as i64) < BATCH || shutdown.is_cancelled() {
                    return;
                }
            }
            Err(e) if e.is_transient() => {
                // Nothing was taken: the events wait in the queue.
                will_retry(&e);
                return;
            }
            Err(e) => {
                // A retry of the same batch would fail the same way, and
                // every event behind it would wait. Alone, only the event
                // at fault fails, and it is set aside.
                warn!(
                    error = %e,
                    "a batch of recorded Google events failed; applying them one at a time"
                );
                if !one_at_a_time(store, policy, BATCH).await {
                    return;
                }
            }
        }
    }
}

/// Applies events from the head of the queue one by one, up to `n` or until
/// one is set aside: the events behind it go back to batches, and a batch
/// that fails again comes back here. Answers whether the queue may hold more.
async fn one_at_a_time(store: &Store, policy: &Policy, n: i64) -> bool {
    for _ in 0..n {
        match store.apply_head(policy).await {
            Ok(None) => return false,
            Ok(Some(AppliedHead::Applied(applied))) => log_applied(&applied),
            Ok(Some(AppliedHead::SetAside {
                agent_id,
                event_key,
                error,
            })) => {
                error!(
                    agent_id,
                    event_key,
                    error = %error,
                    "a Google event cannot be applied and was set aside; its message will not \
                     take it until it is queued again (docs/operations.md, \"Google events set aside\")"
                );
                return true;
            }
            Err(e) => {
                will_retry(&e);
                return false;
            }
        }
    }
    true
}

fn will_retry(e: &StoreError) {
    warn!(error = %e, "applying recorded Google events failed; will retry");
}

fn log_applied(applied: &[AppliedEvent]) {
    for a in applied {
        let m = &a.applied.message;
        info!(
            event_type = a.event_type,
            message_id = m.message_id,
            state = %m.state,
            "Google event applied"
        );
    }
}
