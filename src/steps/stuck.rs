//! What keeps a task from never ending (issue 14, points 7 and 8): the cap on consecutive step
//! errors of the phases that hold a host (the run then ends as failed and the retry policy
//! decides), tasks whose host was removed from the config (routed again at once, with a note;
//! in Publish too, unless the branch is on the forge at the verified commit already),
//! and the deadline of pull mode (`dispatch.pull_timeout`: a task no pull agent claims is
//! routed to hosts again, still open to pull agents), and the end of a failed task nobody
//! retries within `storage.retention` (issue 15).

use crate::io::run;
use crate::workflow::{Next, Outcome, StepCtx, StepError, StepResult};

use super::agent_task::{
    AgentTask, KILL_GRACE, ORPHAN_TIMEOUT, Phase, Run, RunOutcome, TaskSignal, TaskState,
    route_ticket,
};
use super::pull_mode::Pin;
use super::task::{ExecutionMode, TaskStatus};

/// The phase's name in history notes.
fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Prepare => "preparing the workspace",
        Phase::Launch => "launching the run",
        Phase::Await => "watching the run",
        Phase::Parse => "reading the run's output",
        Phase::Verify => "verifying the run's commits",
        Phase::Publish => "publishing the work",
        _ => "the step",
    }
}

/// Whether the task is pinned to one pull agent by a coordinator (it then waits for that agent:
/// pull mode has no deadline).
fn pinned_to_agent(s: &TaskState) -> bool {
    matches!(s.pin, Some(Pin::Agent(_)))
}

impl AgentTask {
    /// The host a task in a host phase holds, when the config no longer names it.
    pub(super) fn removed_host(&self, s: &TaskState) -> Option<String> {
        let host = s.assigned_host.as_ref()?;
        self.rt.config().host(host).is_none().then(|| host.clone())
    }

    /// The task's host was removed from the config: it can never be reached again from this
    /// daemon. The run it may have there is kept as lost with its host (settled if the host
    /// comes back), and the task is routed again without spending an attempt.
    pub(super) fn host_removed(
        &self,
        ctx: &StepCtx<TaskSignal>,
        mut s: TaskState,
        host: &str,
    ) -> Outcome<TaskState> {
        self.rt.fleet().release(ctx.instance());
        let mut note = format!(
            "host {host} is no longer in the config ({})",
            phase_name(&s.phase)
        );
        match s.phase {
            Phase::Launch => {
                // Whether it started is unknown (its directory cannot be named without the
                // host's config): recorded so that the next launch is a new run, never a
                // re-attachment to this one.
                let (id, n) = (ctx.instance(), s.runs.len() + 1);
                // The names are known once the store is open, before any step runs.
                let run_id = match self.rt.names() {
                    Ok(names) => names.run_id(id, n),
                    Err(_) => format!("{id}-{n}"),
                };
                let mut lost = Run::new(&run_id, host, &s.spec.agent, "", ctx.now());
                lost.attempt = s.attempt;
                lost.outcome = RunOutcome::HostLost;
                lost.ended_at = Some(ctx.now());
                s.runs.push(lost);
                note.push_str(&format!("; run {run_id} may have started there: abandoned"));
            }
            Phase::Await => {
                if let Some(r) = s.runs.last_mut()
                    && r.outcome == RunOutcome::Running
                {
                    r.outcome = RunOutcome::HostLost;
                    note.push_str(&format!("; run {} is left there as lost", r.run_id));
                }
            }
            Phase::Publish => {
                note.push_str(
                    "; the verified commits stayed there, never pushed to the forge: the work is \
                     done again",
                );
            }
            _ => {}
        }
        if s.status != TaskStatus::AgentLost && s.status.can_move_to(TaskStatus::Created) {
            s.status = TaskStatus::Created;
        }
        s.assigned_host = None;
        s.mode = ExecutionMode::Undecided;
        s.undecided_since = None;
        s.phase = Phase::Route;
        note.push_str(": routed to another host, no attempt spent");
        Outcome::next(s).note(note)
    }

    /// A host phase returned `error`: retried by the engine up to `dispatch.max_step_errors`
    /// times in a row, then the run ends as failed (a run that may be alive is stopped first).
    /// `s` is the state the step started from. Interruptions (shutdown, cancel) pass through.
    pub(super) async fn step_error(
        &self,
        ctx: &StepCtx<TaskSignal>,
        mut s: TaskState,
        error: StepError,
    ) -> StepResult<TaskState> {
        let cap = self.rt.config().dispatch.max_step_errors;
        if ctx.errors() < cap || ctx.shutdown().is_cancelled() || ctx.cancellation().is_cancelled()
        {
            return Err(error);
        }
        let host = s.assigned_host.clone().unwrap_or_default();
        let mut reason = format!(
            "{} on {host} failed {} times in a row: {}",
            phase_name(&s.phase),
            ctx.errors() + 1,
            error.0
        );
        match s.phase {
            Phase::Launch => {
                // The run may have started before the error: stop it if so, and keep it as
                // lost so that the next launch is a new run.
                let (n, names) = (s.runs.len() + 1, self.rt.names()?);
                let run_id = names.run_id(ctx.instance(), n);
                let dir = self
                    .rt
                    .work_root(&host)
                    .map(|root| names.run_dir(&root, ctx.instance(), n))
                    .unwrap_or_default();
                if !dir.is_empty() {
                    reason.push_str(&self.stop_run(&host, &dir).await);
                }
                let mut lost = Run::new(&run_id, &host, &s.spec.agent, &dir, ctx.now());
                lost.attempt = s.attempt;
                lost.outcome = RunOutcome::Lost;
                lost.ended_at = Some(ctx.now());
                s.runs.push(lost);
            }
            Phase::Await => {
                if let Some(r) = s.runs.last().filter(|r| r.outcome == RunOutcome::Running) {
                    let (host, dir) = (r.host.clone(), r.run_dir.clone());
                    reason.push_str(&self.stop_run(&host, &dir).await);
                }
                if let Some(r) = s
                    .runs
                    .last_mut()
                    .filter(|r| r.outcome == RunOutcome::Running)
                {
                    r.outcome = RunOutcome::Lost;
                    r.ended_at = Some(ctx.now());
                }
            }
            Phase::Parse | Phase::Verify => {
                if let Some(r) = s
                    .runs
                    .last_mut()
                    .filter(|r| matches!(r.outcome, RunOutcome::Running | RunOutcome::Succeeded))
                {
                    r.outcome = RunOutcome::Failed;
                }
            }
            _ => {}
        }
        Ok(self.run_failed(ctx, s, reason, false))
    }

    /// Stops the run in `dir` on `host` if it is alive; the remark for the history.
    async fn stop_run(&self, host: &str, dir: &str) -> String {
        let Ok(shell) = self.rt.shell(host) else {
            return String::new();
        };
        let kill = run::kill(shell.as_ref(), dir, KILL_GRACE);
        match tokio::time::timeout(ORPHAN_TIMEOUT + KILL_GRACE, kill).await {
            Ok(Ok(true)) => format!("; its process group was stopped ({dir})"),
            Ok(Ok(false)) => String::new(),
            Ok(Err(e)) => format!("; could not stop the run ({dir}): {e}"),
            Err(_) => format!("; could not stop the run ({dir}): the host did not answer"),
        }
    }

    /// In `Pull`: once `dispatch.pull_timeout` has passed without a claim, a task some host
    /// could run is routed again (hosts and pull agents, whichever comes first); returns the
    /// history note. A task no host could run waits another `pull_timeout`, silently.
    pub(super) fn pull_over(&self, ctx: &StepCtx<TaskSignal>, s: &mut TaskState) -> Option<String> {
        if s.phase != Phase::Pull || pinned_to_agent(s) {
            return None;
        }
        let timeout = self.rt.config().dispatch.pull_timeout;
        let since = s.undecided_since?;
        if ctx.now() < since.after(timeout) {
            return None;
        }
        if !self.rt.fleet().can_serve(&route_ticket(ctx.instance(), s)) {
            s.undecided_since = Some(ctx.now());
            return None;
        }
        s.mode = ExecutionMode::Undecided;
        s.undecided_since = None;
        s.phase = Phase::Route;
        Some(format!(
            "no pull agent claimed the task within {}: routed to hosts again, still open to \
             pull agents",
            humantime::format_duration(timeout)
        ))
    }

    /// Gives a task waiting in `Pull` its deadline (`dispatch.pull_timeout` after it was left
    /// to pull agents, kept in `undecided_since`); `was_pull` says whether the step started
    /// there. A task pinned to one agent has none.
    /// A failed task waits for a retry at most `storage.retention` after its last step: then
    /// its step ends it (still `failed`, see `agent_task::settled`), so that the store's
    /// retention can remove it in turn.
    pub(super) fn arm_settled_deadline(
        &self,
        ctx: &StepCtx<TaskSignal>,
        mut o: Outcome<TaskState>,
    ) -> Outcome<TaskState> {
        if o.state.phase == Phase::Settled
            && let Next::Wait { deadline: None } = o.next
        {
            let due = ctx.now().after(self.rt.config().storage.retention);
            o.next = Next::Wait {
                deadline: Some(due),
            };
        }
        o
    }

    pub(super) fn arm_pull_deadline(
        &self,
        ctx: &StepCtx<TaskSignal>,
        was_pull: bool,
        mut o: Outcome<TaskState>,
    ) -> Outcome<TaskState> {
        if o.state.phase != Phase::Pull || pinned_to_agent(&o.state) {
            return o;
        }
        let Next::Wait { deadline } = o.next else {
            return o;
        };
        let since = match o.state.undecided_since {
            Some(t) if was_pull => t,
            _ => *o.state.undecided_since.insert(ctx.now()),
        };
        let due = since.after(self.rt.config().dispatch.pull_timeout);
        o.next = Next::Wait {
            deadline: Some(deadline.map_or(due, |d| d.min(due))),
        };
        o
    }
}
