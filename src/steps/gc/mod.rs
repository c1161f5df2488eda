//! The workspace sweeper (issue 15 §3): the `workspace-gc` workflow, one never-ending
//! instance, removes what ended tasks left on the hosts once `storage.workspace_retention` has
//! passed since they ended — each task's clone, its run directories and its branch's refs in
//! the host's mirror ([`plan`] says what and where, [`sweep`] removes it).
//!
//! The instance is created when the first ended instance is due ([`start`]: a fresh store's
//! first task keeps id 1), then woken at every daemon start.
//!
//! Its state is a cursor over the engine's index of ended instances (`Engine::ended_between`,
//! oldest end first): the end time and id of the last one looked at. Every round (at start,
//! then every `min(workspace_retention / 4, 1 h)`) walks from the cursor to
//! `now - workspace_retention` in batches, one committed step per batch, so a restart neither
//! redoes nor skips a task. Tasks read through their state (`agent-task` only; other
//! workflows, and states that cannot be read, are passed over).
//!
//! A task whose leftovers cannot all be removed now — its host is unreachable or no longer
//! configured, one of its runs is still alive there, a script failed — does not hold the
//! cursor back (the tasks after it would wait for a host that may never return): the cursor
//! moves on and the task is kept in the state's `pending` list, tried again at the start of
//! every round until it is done or the store forgets the task (`storage.retention`, which the
//! config keeps at least as long as `workspace_retention`). The list is bounded
//! ([`MAX_PENDING`], the oldest given up first, with a note).
//!
//! Each step's note says what it removed, refused (a path outside the host's work root is never
//! touched) or left for the next round.

mod plan;
mod sweep;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::workflow::{
    Engine, EngineError, InstanceId, Outcome, StepCtx, StepError, StepResult, Timestamp, Workflow,
};

use super::agent_task::AgentTask;
use super::runtime::Runtime;
use plan::HostPlan;
use sweep::SweepError;

/// Ended instances looked at per step: the step's note (a history text is at most 1 KiB) still
/// says what was removed. A longer backlog goes on in the next step at once.
const BATCH: usize = 8;
/// Tasks kept for a later round at most.
pub const MAX_PENDING: usize = 1000;
/// Rounds are at most this far apart, and at least [`MIN_INTERVAL`].
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The sweeper's durable memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GcState {
    /// End time and id of the last ended instance looked at: the walk goes on after it.
    pub cursor: (Timestamp, InstanceId),
    /// Tasks whose leftovers could not all be removed yet, oldest end first.
    pub pending: Vec<Pending>,
    /// Set while a backlog is being worked through, step after step (pending tasks are tried
    /// once per round, not once per step).
    pub backlog: bool,
    pub rounds: u64,
    /// Tasks whose leftovers were all removed (or that had none).
    pub swept: u64,
}

impl Default for GcState {
    fn default() -> Self {
        GcState {
            cursor: (Timestamp(0), 0),
            pending: Vec::new(),
            backlog: false,
            rounds: 0,
            swept: 0,
        }
    }
}

/// A task tried again next round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub id: InstanceId,
    pub ended: Timestamp,
    pub tries: u32,
    /// Why its last try did not finish.
    pub why: String,
}

pub struct WorkspaceGc {
    rt: Arc<Runtime>,
}

impl WorkspaceGc {
    pub fn new(rt: Arc<Runtime>) -> Self {
        WorkspaceGc { rt }
    }
}

/// Runs the sweeper: the instance a store has is woken for a round now; a store without one
/// gets it once the first ended instance is due (checked every round's interval, in memory
/// until then). Instance ids are shared with tasks, so a fresh store's first task keeps id 1.
pub async fn start(engine: &Engine, retention: Duration) -> Result<(), EngineError> {
    if engine
        .started(WorkspaceGc::NAME, WorkspaceGc::NAME)?
        .is_some()
    {
        ensure_started(engine).await?;
        return Ok(());
    }
    let engine = engine.clone();
    tokio::spawn(async move {
        loop {
            if engine.failure().is_some() {
                return;
            }
            let due = Timestamp(
                Timestamp::now()
                    .0
                    .saturating_sub(retention.as_millis() as u64),
            );
            match engine.ended_between((Timestamp(0), 0), due, 1) {
                Ok(ended) if !ended.is_empty() => {
                    if let Err(e) = ensure_started(&engine).await {
                        tracing::warn!("cannot start the workspace sweeper: {e}");
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot read the ended instances: {e}"),
            }
            tokio::time::sleep(interval(retention)).await;
        }
    });
    Ok(())
}

/// Starts the sweeper once (the same start key every time), wakes it for a round now and
/// returns its id. One that ended (cancelled by hand) is followed by a new one, keyed by the id
/// of the one it follows, that goes on from its cursor.
pub async fn ensure_started(engine: &Engine) -> Result<InstanceId, EngineError> {
    let mut key = WorkspaceGc::NAME.to_string();
    let mut state = GcState::default();
    loop {
        let id = engine
            .start_ack::<WorkspaceGc>(&state, Some(&key))
            .await?
            .id;
        if !engine.info(id)?.status.is_terminal() {
            engine.waker().wake(id);
            return Ok(id);
        }
        if let Ok(ended) = engine.state::<WorkspaceGc>(id) {
            state = GcState {
                backlog: false,
                ..ended
            };
        }
        key = format!("{}/after/{id}", WorkspaceGc::NAME);
    }
}

/// How often a round runs.
fn interval(retention: Duration) -> Duration {
    (retention / 4).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

impl Workflow for WorkspaceGc {
    const NAME: &'static str = "workspace-gc";
    const VERSION: u32 = 1;
    type State = GcState;
    type Signal = ();

    async fn step(&self, ctx: &mut StepCtx<()>, mut s: GcState) -> StepResult<GcState> {
        tokio::select! {
            _ = self.rt.fleet().wait_ready() => {}
            _ = ctx.shutdown().cancelled() => {
                return Err(StepError::msg("the daemon is stopping"));
            }
        }
        let _ = ctx.take_all();
        let keep = self.rt.config().storage.workspace_retention;
        let now = ctx.now();
        let cutoff = Timestamp(now.0.saturating_sub(keep.as_millis() as u64));
        let mut round = Round::new(&self.rt)?;
        if !s.backlog {
            for p in std::mem::take(&mut s.pending) {
                if ctx.shutdown().is_cancelled() {
                    s.pending.push(p);
                    continue;
                }
                match round.task(p.id).await {
                    Swept::Again(why) => s.pending.push(Pending {
                        tries: p.tries + 1,
                        why,
                        ..p
                    }),
                    Swept::Gone => round.notes.push(format!(
                        "task {}: the store forgot it before its leftovers could be removed ({})",
                        p.id, p.why
                    )),
                    Swept::Done => s.swept += 1,
                    Swept::NotATask => {}
                }
            }
        }
        let batch = round.engine.ended_between(s.cursor, cutoff, BATCH)?;
        let mut looked = 0;
        for &(ended, id) in &batch {
            if ctx.shutdown().is_cancelled() {
                break;
            }
            match round.task(id).await {
                Swept::Again(why) => s.pending.push(Pending {
                    id,
                    ended,
                    tries: 1,
                    why,
                }),
                Swept::Done => s.swept += 1,
                Swept::Gone | Swept::NotATask => {}
            }
            s.cursor = (ended, id);
            looked += 1;
        }
        if s.pending.len() > MAX_PENDING {
            let dropped: Vec<String> = s
                .pending
                .drain(..s.pending.len() - MAX_PENDING)
                .map(|p| p.id.to_string())
                .collect();
            round.notes.push(format!(
                "more than {MAX_PENDING} tasks wait for another try: given up on {}",
                dropped.join(", ")
            ));
        }
        s.backlog = looked == BATCH;
        if !s.backlog {
            s.rounds += 1;
        }
        let notes = round.notes.join("; ");
        let outcome = if s.backlog {
            Outcome::next(s)
        } else {
            Outcome::wait_until(s, now.after(interval(keep)))
        };
        Ok(if notes.is_empty() {
            outcome
        } else {
            outcome.note(notes)
        })
    }
}

/// What became of one ended instance.
enum Swept {
    /// Everything it left is gone (or it left nothing on our hosts).
    Done,
    /// Something is left that a later round may remove: why.
    Again(String),
    /// The store no longer has it.
    Gone,
    /// Not a task, or a task whose state cannot be read (noted): nothing to do.
    NotATask,
}

/// One step's work: the engine and names, the hosts found unreachable so far (their other
/// tasks wait for the next round without another connect timeout), and the notes.
struct Round<'a> {
    rt: &'a Runtime,
    engine: Engine,
    names: super::names::TaskNames,
    down: BTreeSet<String>,
    notes: Vec<String>,
}

impl<'a> Round<'a> {
    fn new(rt: &'a Runtime) -> Result<Self, StepError> {
        Ok(Round {
            rt,
            engine: rt.engine()?.clone(),
            names: rt.names()?,
            down: BTreeSet::new(),
            notes: Vec::new(),
        })
    }

    /// Removes what task `id` left on every host it used.
    async fn task(&mut self, id: InstanceId) -> Swept {
        let state = match self.engine.state::<AgentTask>(id) {
            Ok(state) => state,
            Err(EngineError::UnknownInstance(_)) => return Swept::Gone,
            Err(EngineError::WrongWorkflow { .. }) => return Swept::NotATask,
            Err(e) => {
                self.notes.push(format!(
                    "task {id}: its state cannot be read ({e}): passed over"
                ));
                return Swept::NotATask;
            }
        };
        let plan = plan::plan(id, &state, self.names, |h| self.rt.work_root(h).ok());
        let mut said = Vec::new();
        let mut left: Vec<String> = plan
            .missing
            .iter()
            .map(|h| format!("host {h} is no longer configured"))
            .collect();
        for host in &plan.hosts {
            match self.sweep(host).await {
                Ok(removed) if removed.is_empty() => {}
                Ok(removed) => said.push(format!("{}: {}", host.host, removed.join(", "))),
                Err(e) => left.push(e),
            }
        }
        said.extend(plan.refused.iter().map(|r| format!("refused {r}")));
        if !left.is_empty() {
            said.push(format!("next round: {}", left.join("; ")));
        }
        if !said.is_empty() {
            self.notes.push(format!("task {id}: {}", said.join("; ")));
        }
        if left.is_empty() {
            Swept::Done
        } else {
            Swept::Again(left.join("; "))
        }
    }

    /// Removes the task's leftovers on one host: what was removed, each path relative to the
    /// work root.
    async fn sweep(&mut self, p: &HostPlan) -> Result<Vec<String>, String> {
        if self.down.contains(&p.host) {
            return Err(format!("{} is unreachable", p.host));
        }
        let shell = self.rt.shell(&p.host).map_err(|e| e.0)?;
        match sweep::sweep(shell.as_ref(), p).await {
            Ok(lines) => {
                let prefix = format!("{}/", p.work_root);
                Ok(lines.iter().map(|l| l.replacen(&prefix, "", 1)).collect())
            }
            Err(e) => {
                if matches!(e, SweepError::Unreachable(_)) {
                    self.down.insert(p.host.clone());
                }
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_come_every_quarter_of_the_retention_between_100_ms_and_an_hour() {
        assert_eq!(interval(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(interval(Duration::from_millis(10)), MIN_INTERVAL);
        assert_eq!(interval(Duration::from_secs(7 * 24 * 3600)), MAX_INTERVAL);
    }
}
