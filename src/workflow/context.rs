//! The step's view of the engine: its inbox, its wake reason, cooperative cancellation, and
//! intents (record before touching the outside world, resolve after).

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::InstanceId;
use super::codec;
use super::error::EngineError;
use super::record::{SignalRecord, Timestamp, Wake};
use super::writer::{Op, Reply, Writer};

/// Everything the engine hands to one step run (type-erased).
pub(crate) struct RunInput {
    pub id: InstanceId,
    pub step: u64,
    pub wake: Wake,
    pub errors: u32,
    pub now: Timestamp,
    pub state: Vec<u8>,
    pub inbox: Vec<(u64, SignalRecord)>,
    pub next_signal: u64,
    pub cancel: Option<String>,
    pub cancel_token: CancellationToken,
    pub shutdown: CancellationToken,
    pub writer: Writer,
    pub error_backoff: Duration,
    /// The instance's `next_signal` as signals commit while it is active.
    pub signals: watch::Receiver<u64>,
}

/// A signal in the inbox, decoded.
#[derive(Debug, Clone)]
pub struct Inbound<S> {
    pub seq: u64,
    pub key: String,
    pub received: Timestamp,
    pub signal: S,
}

/// What an intent looked like when the step asked for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Intent<P, R> {
    /// Not recorded before: it is recorded now, act and then [`StepCtx::resolve`].
    Fresh,
    /// Recorded by an earlier run that never resolved it (a crash): reconcile, do not act again.
    Unresolved(P),
    /// Recorded and resolved earlier: use the result.
    Resolved(R),
}

/// The context of one step run.
pub struct StepCtx<S> {
    id: InstanceId,
    step: u64,
    wake: Wake,
    errors: u32,
    now: Timestamp,
    inbox: Vec<Inbound<S>>,
    taken: Vec<u64>,
    cancel: CancellationToken,
    shutdown: CancellationToken,
    writer: Writer,
    next_signal: u64,
    signals: watch::Receiver<u64>,
    replies: Vec<(u64, Vec<u8>)>,
}

impl<S: DeserializeOwned> StepCtx<S> {
    /// Builds the typed context; signals that do not decode are returned to be discarded with
    /// an event (they were encoded from a type this definition no longer reads).
    pub(crate) fn from_input(input: &RunInput) -> (Self, Vec<(u64, String)>) {
        let mut inbox = Vec::with_capacity(input.inbox.len());
        let mut discarded = Vec::new();
        for (seq, rec) in &input.inbox {
            match codec::decode_value::<S>("signal", &rec.payload) {
                Ok(signal) => inbox.push(Inbound {
                    seq: *seq,
                    key: rec.key.clone(),
                    received: rec.received,
                    signal,
                }),
                Err(e) => discarded.push((*seq, e.to_string())),
            }
        }
        let ctx = StepCtx {
            id: input.id,
            step: input.step,
            wake: input.wake,
            errors: input.errors,
            now: input.now,
            inbox,
            taken: Vec::new(),
            cancel: if input.cancel.is_some() {
                CancellationToken::new()
            } else {
                input.cancel_token.clone()
            },
            shutdown: input.shutdown.clone(),
            writer: input.writer.clone(),
            next_signal: input.next_signal,
            signals: input.signals.clone(),
            replies: Vec::new(),
        };
        (ctx, discarded)
    }
}

impl<S> StepCtx<S> {
    pub fn instance(&self) -> InstanceId {
        self.id
    }
    /// Number of transitions committed before this step.
    pub fn step_number(&self) -> u64 {
        self.step
    }
    /// Why this step runs now.
    pub fn wake(&self) -> Wake {
        self.wake
    }
    /// Consecutive failed runs of this step (0 on a first try).
    pub fn errors(&self) -> u32 {
        self.errors
    }
    /// The time the step started (use it to compute absolute deadlines, and store them).
    pub fn now(&self) -> Timestamp {
        self.now
    }
    /// Signals still in the inbox (not taken by this step), oldest first.
    pub fn signals(&self) -> impl Iterator<Item = &Inbound<S>> {
        self.inbox.iter().filter(|s| !self.taken.contains(&s.seq))
    }
    /// Takes the oldest signal matching `pred`: it is removed from the inbox when this step's
    /// outcome commits. Signals not taken stay in the inbox for later steps.
    pub fn take(&mut self, pred: impl Fn(&S) -> bool) -> Option<S>
    where
        S: Clone,
    {
        let found = self
            .inbox
            .iter()
            .find(|s| !self.taken.contains(&s.seq) && pred(&s.signal))?;
        self.taken.push(found.seq);
        Some(found.signal.clone())
    }
    /// Like [`StepCtx::take`], with the signal's sequence number and key (to [`StepCtx::reply`]).
    pub fn take_inbound(&mut self, pred: impl Fn(&S) -> bool) -> Option<Inbound<S>>
    where
        S: Clone,
    {
        let found = self
            .inbox
            .iter()
            .find(|s| !self.taken.contains(&s.seq) && pred(&s.signal))?
            .clone();
        self.taken.push(found.seq);
        Some(found)
    }

    /// Answers signal `seq`, taken by this step: the reply is committed with the step's outcome
    /// and handed to whoever sent the signal with `Engine::update` (also on a redelivery).
    /// A reply to a signal this step did not take is dropped.
    pub fn reply<T: Serialize>(&mut self, seq: u64, reply: &T) -> Result<(), EngineError> {
        if self.taken.contains(&seq) {
            self.replies.retain(|(s, _)| *s != seq);
            self.replies.push((seq, codec::encode_value(reply)?));
        }
        Ok(())
    }

    pub(crate) fn replies(&self) -> Vec<(u64, Vec<u8>)> {
        self.replies.clone()
    }

    /// Resolves when a signal is committed to this instance after this step loaded its inbox:
    /// a step that blocks (on a slot, a remote run) can return and let the next step take it.
    pub async fn signalled(&self) {
        let mut rx = self.signals.clone();
        let seen = self.next_signal;
        // An error means the engine is gone: then nothing will ever arrive.
        if rx.wait_for(|n| *n > seen).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Takes every remaining signal.
    pub fn take_all(&mut self) -> Vec<S>
    where
        S: Clone,
    {
        let rest: Vec<_> = self.signals().map(|s| (s.seq, s.signal.clone())).collect();
        self.taken.extend(rest.iter().map(|(seq, _)| *seq));
        rest.into_iter().map(|(_, s)| s).collect()
    }
    pub(crate) fn taken(&self) -> Vec<u64> {
        self.taken.clone()
    }
    /// Tripped when a cancel request for this instance is committed while the step runs.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }
    /// Tripped when the daemon is stopping: finish quickly or return; the step will be run
    /// again after restart.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Records intent `name` durably before acting (returns after the commit), or reports what
    /// an earlier run left: see [`Intent`]. A name stands for one action for the instance's
    /// whole life: when acting again is intended (a retry, a review round), put the attempt in
    /// the name (`launch-2`).
    pub async fn intent<P, R>(&self, name: &str, payload: &P) -> Result<Intent<P, R>, EngineError>
    where
        P: Serialize + DeserializeOwned,
        R: DeserializeOwned,
    {
        let op = Op::IntentBegin {
            id: self.id,
            name: name.to_string(),
            payload: codec::encode_value(payload)?,
        };
        match self.writer.submit(op).await? {
            Reply::IntentFresh => Ok(Intent::Fresh),
            Reply::IntentUnresolved(p) => Ok(Intent::Unresolved(codec::decode_value(
                "intent payload",
                &p,
            )?)),
            Reply::IntentResolved(r) => {
                Ok(Intent::Resolved(codec::decode_value("intent result", &r)?))
            }
            other => Err(other.unexpected()),
        }
    }

    /// Records the result of intent `name` durably.
    pub async fn resolve<R: Serialize>(&self, name: &str, result: &R) -> Result<(), EngineError> {
        let op = Op::IntentResolve {
            id: self.id,
            name: name.to_string(),
            result: codec::encode_value(result)?,
        };
        self.writer.submit(op).await.map(|_| ())
    }
}
