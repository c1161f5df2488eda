//! Durable timers: the `timers` table is ordered by absolute due time; this loop reads the due
//! rows, asks the writer to fire them (which makes their instances runnable), and sleeps until
//! the next due time or until a commit sets an earlier one. Overdue timers fire at once on start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::record::Timestamp;
use super::store::Store;
use super::writer::{Op, Writer};

/// Timers fired per writer op.
const FIRE_BATCH: usize = 1024;

/// Shared between the loop and the notice handler: the time the loop sleeps until.
#[derive(Default)]
pub(crate) struct TimerWake {
    pub sleeping_until: AtomicU64,
    pub notify: Notify,
}

impl TimerWake {
    /// Called after a commit that set a timer due at `at`.
    pub(crate) fn timer_set(&self, at: Timestamp) {
        if at.0 < self.sleeping_until.load(Ordering::Acquire) {
            self.notify.notify_one();
        }
    }
}

pub(crate) async fn run(
    store: Store,
    writer: Writer,
    wake: Arc<TimerWake>,
    stop: CancellationToken,
) {
    loop {
        // Any timer committed from here on wakes us (Notify keeps one permit).
        wake.sleeping_until.store(u64::MAX, Ordering::Release);
        let now = Timestamp::now();
        let (due, next) = match store.due_timers(now, FIRE_BATCH) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot read timers");
                (Vec::new(), Some(now.after(Duration::from_secs(1))))
            }
        };
        if !due.is_empty() {
            if let Err(e) = writer.submit(Op::FireTimers(due)).await {
                tracing::error!(error = %e, "cannot fire timers");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        }
        let until = next.unwrap_or(Timestamp(u64::MAX));
        wake.sleeping_until.store(until.0, Ordering::Release);
        let sleep = until.until(Timestamp::now()).min(Duration::from_secs(3600));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notify.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}
