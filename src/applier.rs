//! Applies the Google events the webhook recorded to their messages, right
//! after the webhook answered. The webhook wakes it; it also looks every
//! `poll`, for events another replica recorded and could not apply (it
//! crashed, or lost the database, in between).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::domain::Policy;
use crate::store::Store;

/// Events applied in one transaction. Under load the queue is as long as
/// what arrived while the last batch was applied; this bounds the
/// transaction, not the rate.
const BATCH: i64 = 500;

/// How long events may wait after the first of them was recorded.
const GATHER: Duration = Duration::from_millis(20);

pub async fn run(store: Store, policy: Policy, poll: Duration, shutdown: CancellationToken) {
    let recorded = store.recorded_handle();
    loop {
        // Until the queue is empty (a batch not full) or the database fails.
        loop {
            match store.apply_recorded(BATCH, &policy).await {
                Ok((taken, applied)) => {
                    for a in &applied {
                        let m = &a.applied.message;
                        info!(
                            event_type = a.event_type,
                            message_id = m.message_id,
                            state = %m.state,
                            "Google event applied"
                        );
                    }
                    if (taken as i64) < BATCH || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    // Nothing was taken: the events wait in the queue.
                    warn!(error = %e, "applying recorded Google events failed; will retry");
                    break;
                }
            }
        }
        tokio::select! {
            // Let a few milliseconds of events gather: a transaction per
            // webhook batch would cost the database as much as recording them.
            () = recorded.notified() => tokio::time::sleep(GATHER).await,
            () = tokio::time::sleep(poll) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
