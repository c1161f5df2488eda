//! Outbox delivery: hands committed effects to the handler registered for their kind, retries
//! with exponential backoff until the handler succeeds, and commits the outcome.
//!
//! Delivery is at least once; each delivery carries a stable [`EffectKey`] so that a handler can
//! make it exactly once (look the key up on the remote side before acting).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::InstanceId;
use super::codec::{self, CodecError};
use super::record::Timestamp;
use super::store::Store;
use super::writer::{EffectOutcome, Op, Writer};

/// The stable identity of one effect, the same on every delivery attempt and after restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EffectKey {
    pub instance: InstanceId,
    pub effect: u64,
}

impl fmt::Display for EffectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wf{}-fx{}", self.instance, self.effect)
    }
}

/// One delivery attempt handed to a handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub key: EffectKey,
    pub kind: String,
    pub payload: Vec<u8>,
    /// Attempts made before this one.
    pub attempt: u32,
}

impl Delivery {
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        codec::decode_value("effect payload", &self.payload)
    }
}

/// Why a delivery did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EffectError {
    /// Try again later (network, 5xx, rate limit…).
    #[error("transient: {0}")]
    Transient(String),
    /// Never going to work: stop retrying, record it in the instance's history.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Delivers effects of one kind.
pub trait EffectHandler: Send + Sync + 'static {
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), EffectError>>;
}

/// Backoff of effect retries: `base * 2^attempts`, capped.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

pub(crate) struct Outbox {
    pub store: Store,
    pub writer: Writer,
    pub handlers: HashMap<String, Arc<dyn EffectHandler>>,
    pub backoff: Backoff,
    pub concurrency: usize,
}

impl Outbox {
    /// Delivers effects as they come due until `stop`. `queue` receives newly committed effects.
    pub(crate) async fn run(
        self: Arc<Self>,
        initial: Vec<(u64, Timestamp)>,
        mut queue: mpsc::UnboundedReceiver<(u64, Timestamp)>,
        requeue: mpsc::UnboundedSender<(u64, Timestamp)>,
        stop: CancellationToken,
        attempts: TaskTracker,
    ) {
        let mut heap: BinaryHeap<Reverse<(Timestamp, u64)>> =
            initial.into_iter().map(|(e, t)| Reverse((t, e))).collect();
        let permits = Arc::new(Semaphore::new(self.concurrency));
        loop {
            let now = Timestamp::now();
            while let Some(Reverse((due, effect))) = heap.peek().copied() {
                if due > now || stop.is_cancelled() {
                    break;
                }
                let permit = tokio::select! {
                    _ = stop.cancelled() => return,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                heap.pop();
                let this = self.clone();
                let requeue = requeue.clone();
                // Tracked: shutdown waits for deliveries in flight so their outcome commits.
                attempts.spawn(async move {
                    if let Some(next) = this.attempt(effect).await {
                        let _ = requeue.send((effect, next));
                    }
                    drop(permit);
                });
            }
            let sleep = heap
                .peek()
                .map(|Reverse((due, _))| due.until(Timestamp::now()))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = stop.cancelled() => return,
                got = queue.recv() => match got {
                    Some((effect, due)) => heap.push(Reverse((due, effect))),
                    None => return,
                },
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// One delivery attempt; returns when to try again, if it must be retried.
    async fn attempt(&self, effect: u64) -> Option<Timestamp> {
        let record = match self.store.effect(effect) {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(effect, error = %e, "cannot read outbox effect");
                return Some(Timestamp::now().after(self.backoff.max));
            }
        };
        let delivery = Delivery {
            key: EffectKey {
                instance: record.instance,
                effect,
            },
            kind: record.kind.clone(),
            payload: record.payload,
            attempt: record.attempts,
        };
        let result = match self.handlers.get(&record.kind) {
            Some(h) => AssertUnwindSafe(h.deliver(&delivery))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(EffectError::Transient("effect handler panicked".into()))),
            None => Err(EffectError::Transient(format!(
                "no handler registered for effect kind `{}`",
                record.kind
            ))),
        };
        let (outcome, retry) = match result {
            Ok(()) => (EffectOutcome::Delivered, None),
            Err(EffectError::Permanent(error)) => (EffectOutcome::Abandon { error }, None),
            Err(EffectError::Transient(error)) => {
                let next = Timestamp::now().after(self.backoff.delay(record.attempts));
                tracing::warn!(key = %delivery.key, %error, "effect delivery failed, will retry");
                (EffectOutcome::Retry { error, next }, Some(next))
            }
        };
        match self
            .writer
            .submit(Op::EffectAttempt { effect, outcome })
            .await
        {
            Ok(_) => retry,
            // Not recorded: try again; the key keeps a second delivery harmless.
            Err(_) => Some(Timestamp::now().after(self.backoff.base)),
        }
    }
}
