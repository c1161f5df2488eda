//! What a workflow definition is: the [`Workflow`] trait, the [`Outcome`] of a step, and the
//! [`Effect`]s a step hands to the outbox. Also the type-erased form the engine stores in its
//! registry, keyed by (name, definition version).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};

use super::codec::{self, CodecError};
use super::context::{RunInput, StepCtx};
use super::record::{EventKind, Timestamp, short};

/// A durable workflow definition. The engine persists `State` after every step; `Signal`s reach
/// the instance through its inbox. An instance is pinned to the `VERSION` it started with: to
/// change a definition incompatibly, register the new version beside the old one (same `NAME`),
/// and old instances keep running on the old code.
pub trait Workflow: Send + Sync + 'static {
    /// Stable name stored with every instance.
    const NAME: &'static str;
    /// Definition version new instances of this type are pinned to.
    const VERSION: u32;
    type State: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Signals must stay decodable by every registered version of the same `NAME`.
    type Signal: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// Earlier versions whose instances this definition drives instead of the old code: their
    /// states are read with [`Workflow::upgrade`], and the next committed step re-pins the
    /// instance to `VERSION`. A version listed here needs no definition of its own.
    const UPGRADES_FROM: &'static [u32] = &[];

    /// Reads the state of an instance pinned to version `from` (one of `UPGRADES_FROM`).
    fn upgrade(from: u32, state: &[u8]) -> Result<Self::State, CodecError> {
        let _ = from;
        codec::decode_value("workflow state", state)
    }

    /// The workflow's own short name for where an instance in `state` is (a task's status, say),
    /// recorded on the change feed's rows of its start and of each step. None by default.
    fn phase(state: &Self::State) -> Option<String> {
        let _ = state;
        None
    }

    /// Outside names an instance in `state` answers to (a task's issue, its pull request),
    /// indexed so that [`crate::workflow::Engine::keyed`] finds the instance without reading
    /// every state. Keys are added as states name them and kept while the instance is. None by
    /// default.
    fn keys(state: &Self::State) -> Vec<String> {
        let _ = state;
        Vec::new()
    }

    /// Runs one step from the last committed `state`. The returned outcome (new state, history
    /// note, effects, consumed signals) is committed atomically before anything else happens.
    fn step(
        &self,
        ctx: &mut StepCtx<Self::Signal>,
        state: Self::State,
    ) -> impl Future<Output = StepResult<Self::State>> + Send;

    /// Runs once when the instance is cancelled, before it ends `cancelled`. Stop whatever the
    /// workflow started outside here. The returned [`Cleanup`] (a report, recorded in the
    /// history; optionally a final state and effects) commits in the same transaction as the
    /// `Cancelled` status: the effects are queued if and only if the instance ends cancelled.
    fn cleanup(
        &self,
        ctx: &mut StepCtx<Self::Signal>,
        state: &Self::State,
        reason: &str,
    ) -> impl Future<Output = Cleanup<Self::State>> + Send {
        let _ = (ctx, state, reason);
        async { Cleanup::report("nothing to clean up") }
    }
}

/// What a cancelled instance's [`Workflow::cleanup`] commits with its `Cancelled` status.
#[derive(Debug)]
pub struct Cleanup<S> {
    /// Recorded in the history (`CleanedUp`).
    pub report: String,
    /// The instance's final state; `None` keeps the committed one.
    pub state: Option<S>,
    /// Effects committed with the `Cancelled` status (e.g. telling the outside world).
    pub effects: Vec<Effect>,
}

impl<S> Cleanup<S> {
    /// Only a report: the state stays as committed, no effect.
    pub fn report(report: impl Into<String>) -> Self {
        Cleanup {
            report: report.into(),
            state: None,
            effects: Vec::new(),
        }
    }
    /// Commits `state` as the instance's final state.
    pub fn state(mut self, state: S) -> Self {
        self.state = Some(state);
        self
    }
    /// Adds effects, committed with the `Cancelled` status.
    pub fn effects(mut self, effects: impl IntoIterator<Item = Effect>) -> Self {
        self.effects.extend(effects);
        self
    }
}

impl<S> From<String> for Cleanup<S> {
    fn from(report: String) -> Self {
        Cleanup::report(report)
    }
}

/// The result of a step: an outcome, or an error after which the step is retried from the last
/// committed state with backoff.
pub type StepResult<S> = Result<Outcome<S>, StepError>;

/// A step that could not finish. The engine records it and retries the step later.
#[derive(Debug)]
pub struct StepError(pub String);

impl<E: std::error::Error> From<E> for StepError {
    fn from(e: E) -> Self {
        StepError(e.to_string())
    }
}

impl StepError {
    pub fn msg(m: impl Into<String>) -> Self {
        StepError(m.into())
    }
}

/// Where the instance goes after a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Run the next step at once.
    Continue,
    /// Park until a signal arrives or, if given, the absolute deadline passes.
    Wait {
        deadline: Option<Timestamp>,
    },
    /// Park for a delay, then run again.
    RetryAfter(Duration),
    Complete,
    Fail(String),
    /// End the instance `cancelled` (the step has done its own clean-up; `cleanup` is not run).
    Cancel(String),
}

/// A step's outcome: where to go, the new state, and what to commit with it.
#[derive(Debug)]
pub struct Outcome<S> {
    pub next: Next,
    pub state: S,
    pub effects: Vec<Effect>,
    pub note: Option<String>,
}

impl<S> Outcome<S> {
    fn new(next: Next, state: S) -> Self {
        Outcome {
            next,
            state,
            effects: Vec::new(),
            note: None,
        }
    }
    pub fn next(state: S) -> Self {
        Self::new(Next::Continue, state)
    }
    pub fn wait(state: S) -> Self {
        Self::new(Next::Wait { deadline: None }, state)
    }
    pub fn wait_until(state: S, deadline: Timestamp) -> Self {
        Self::new(
            Next::Wait {
                deadline: Some(deadline),
            },
            state,
        )
    }
    pub fn retry_after(state: S, delay: Duration) -> Self {
        Self::new(Next::RetryAfter(delay), state)
    }
    pub fn complete(state: S) -> Self {
        Self::new(Next::Complete, state)
    }
    pub fn fail(state: S, reason: impl Into<String>) -> Self {
        Self::new(Next::Fail(reason.into()), state)
    }
    /// Ends the instance `cancelled` from within (e.g. the work it was for was withdrawn); the
    /// reason is the step's note. `Workflow::cleanup` is not run: the step cleans up itself.
    pub fn cancel(state: S, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self::new(Next::Cancel(reason.clone()), state).note(reason)
    }
    /// Adds an effect, committed with this transition and delivered by the outbox.
    pub fn effect(mut self, effect: Effect) -> Self {
        self.effects.push(effect);
        self
    }
    /// Adds a short note to the step's history event.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(short(note));
        self
    }
}

/// An effect on the outside world, handed to the handler registered for `kind`.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    pub kind: String,
    pub payload: Vec<u8>,
}

impl Effect {
    pub fn new<T: Serialize>(kind: impl Into<String>, payload: &T) -> Result<Effect, CodecError> {
        Ok(Effect {
            kind: kind.into(),
            payload: codec::encode_value(payload)?,
        })
    }
}

/// What a step run asks the writer to commit.
#[derive(Debug)]
pub(crate) struct Plan {
    pub kind: PlanKind,
    /// New encoded state; `None` keeps the committed one.
    pub state: Option<Vec<u8>>,
    pub events: Vec<EventKind>,
    pub consumed: Vec<u64>,
    pub discarded: Vec<(u64, String)>,
    pub effects: Vec<Effect>,
    /// The instance's `next_signal` when the step loaded its inbox: a later signal wakes a Wait.
    pub seen_next_signal: u64,
    /// The step's replies to signals it took: (signal seq, encoded reply).
    pub replies: Vec<(u64, Vec<u8>)>,
    /// Re-pins the instance to this definition version (its state was upgraded).
    pub pin: Option<u32>,
    /// The phase of the new state (see [`Workflow::phase`]), for the feed.
    pub phase: Option<String>,
    /// The new state's keys (see [`Workflow::keys`]).
    pub keys: Vec<String>,
    /// The plan of a cleanup (the step knew of the cancel). A step plan committed after a
    /// cancel raced it: see the writer's `transition`.
    pub cleanup: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PlanKind {
    Continue,
    Wait(Option<Timestamp>),
    Sleep(Timestamp),
    Complete,
    Fail(String),
    Cancelled,
    Error { error: String, retry_at: Timestamp },
}

impl PlanKind {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            PlanKind::Continue => "continue",
            PlanKind::Wait(_) => "wait",
            PlanKind::Sleep(_) => "retry",
            PlanKind::Complete => "complete",
            PlanKind::Fail(_) => "fail",
            PlanKind::Cancelled => "cancelled",
            PlanKind::Error { .. } => "error",
        }
    }
}

/// A registered definition with its types erased, as the engine's registry holds it.
pub(crate) trait Definition: Send + Sync {
    fn run(&self, input: RunInput) -> BoxFuture<'_, Plan>;
    /// The phase and keys of an encoded state (see [`Workflow::phase`], [`Workflow::keys`]);
    /// none when it cannot be read.
    fn index(&self, state: &[u8]) -> (Option<String>, Vec<String>);
}

/// A definition as registered: `from` is set when this entry drives instances pinned to an
/// earlier version `from` (see [`Workflow::UPGRADES_FROM`]).
pub(crate) struct Typed<W> {
    pub workflow: std::sync::Arc<W>,
    pub from: Option<u32>,
}

impl<W: Workflow> Typed<W> {
    fn decode(&self, state: &[u8]) -> Result<W::State, CodecError> {
        match self.from {
            Some(v) => W::upgrade(v, state),
            None => codec::decode_value("workflow state", state),
        }
    }
}

impl<W: Workflow> Definition for Typed<W> {
    fn index(&self, state: &[u8]) -> (Option<String>, Vec<String>) {
        match self.decode(state) {
            Ok(s) => (W::phase(&s), W::keys(&s)),
            Err(_) => (None, Vec::new()),
        }
    }

    fn run(&self, input: RunInput) -> BoxFuture<'_, Plan> {
        Box::pin(async move {
            let error_backoff = input.error_backoff;
            let now = input.now;
            let (mut ctx, discarded) = StepCtx::<W::Signal>::from_input(&input);
            let fail_plan = |error: String, discarded: Vec<(u64, String)>| Plan {
                kind: PlanKind::Error {
                    retry_at: now.after(error_backoff),
                    error: short(error),
                },
                state: None,
                events: Vec::new(),
                consumed: Vec::new(),
                discarded,
                effects: Vec::new(),
                seen_next_signal: input.next_signal,
                replies: Vec::new(),
                pin: None,
                phase: None,
                keys: Vec::new(),
                cleanup: false,
            };
            let decoded = self.decode(&input.state);
            if let Some(reason) = input.cancel.as_deref() {
                let cleanup = match &decoded {
                    Ok(state) => AssertUnwindSafe(self.workflow.cleanup(&mut ctx, state, reason))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| Cleanup::report("cleanup panicked")),
                    Err(e) => {
                        Cleanup::report(format!("cleanup skipped: the state cannot be read: {e}"))
                    }
                };
                let phase = cleanup.state.as_ref().and_then(W::phase);
                let keys = cleanup.state.as_ref().map(W::keys).unwrap_or_default();
                let (state, report) = match cleanup.state.map(|s| codec::encode_value(&s)) {
                    None => (None, cleanup.report),
                    Some(Ok(bytes)) => (Some(bytes), cleanup.report),
                    Some(Err(e)) => (
                        None,
                        format!("{}; final state not kept: {e}", cleanup.report),
                    ),
                };
                return Plan {
                    kind: PlanKind::Cancelled,
                    state,
                    events: vec![EventKind::CleanedUp {
                        report: short(report),
                    }],
                    consumed: Vec::new(),
                    discarded,
                    effects: cleanup.effects,
                    seen_next_signal: input.next_signal,
                    replies: Vec::new(),
                    pin: None,
                    phase,
                    keys,
                    cleanup: true,
                };
            }
            let state = match decoded {
                Ok(s) => s,
                Err(e) => return fail_plan(e.to_string(), discarded),
            };
            let result = AssertUnwindSafe(self.workflow.step(&mut ctx, state))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(StepError::msg("step panicked")));
            let outcome = match result {
                Ok(o) => o,
                Err(StepError(e)) => return fail_plan(e, discarded),
            };
            let encoded = match codec::encode_value(&outcome.state) {
                Ok(b) => b,
                Err(e) => return fail_plan(e.to_string(), discarded),
            };
            let kind = match outcome.next {
                Next::Continue => PlanKind::Continue,
                Next::Wait { deadline } => PlanKind::Wait(deadline),
                Next::RetryAfter(d) => PlanKind::Sleep(now.after(d)),
                Next::Complete => PlanKind::Complete,
                Next::Fail(r) => PlanKind::Fail(short(r)),
                Next::Cancel(_) => PlanKind::Cancelled,
            };
            let note = match (self.from, outcome.note) {
                (Some(v), note) => Some(short(format!(
                    "upgraded from definition version {v} to {}{}",
                    W::VERSION,
                    note.map(|n| format!("; {n}")).unwrap_or_default()
                ))),
                (None, note) => note.map(short),
            };
            Plan {
                events: vec![EventKind::Step {
                    step: input.step,
                    outcome: kind.label().to_string(),
                    note,
                }],
                kind,
                state: Some(encoded),
                consumed: ctx.taken(),
                discarded,
                effects: outcome.effects,
                seen_next_signal: input.next_signal,
                replies: ctx.replies(),
                pin: self.from.map(|_| W::VERSION),
                phase: W::phase(&outcome.state),
                keys: W::keys(&outcome.state),
                cleanup: false,
            }
        })
    }
}
