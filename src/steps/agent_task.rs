//! The agent-task workflow (SPEC §4): one durable instance per task, one checkpointed step per
//! phase —
//!
//! ```text
//! Route → Prepare → Launch → Await → Parse → Verify ─→ completed
//!   ↑                                          │
//!   └──────────── Backoff ←── failed run ──────┴─→ Failed (waits for a retry signal)
//! ```
//!
//! Steps that touch a host go through [`Shell`] scripts, so a re-run after a crash finds what
//! the previous run left: the worktree is reused, the launch is guarded by an intent and by the
//! run directory's `started/` marker, and Await re-attaches to the run by its directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::io::run::{self, RunError, RunState, Started};
use crate::workflow::codec::{self, CodecError};
use crate::workflow::{Intent, Outcome, StepCtx, StepError, StepResult, Timestamp, Wake, Workflow};

use super::dispatch::{Health, Ticket};
use super::failure::{self, Decision};
use super::parse::{self, RunOutput, RunReport};
use super::prompt::{self, PromptInput};
use super::pull_mode::{AgentReport, Claim, FromAgent, Pin, offer_of};
use super::review::{self, ForgeTask};
use super::runtime::Runtime;
use super::task::{ExecutionMode, TaskSpec, TaskStatus};
use super::task_v1::TaskStateV1;
use super::task_v2::TaskStateV2;
use super::task_v3::TaskStateV3;
use super::template::Vars;
use super::workspace::{self, BranchWork, Workspace, WorkspaceError};

/// The run output read back for parsing (the tail, if longer).
const MAX_OUTPUT: u64 = 16 << 20;
/// How long a stopped run gets between SIGTERM and SIGKILL.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(3);
/// How often a waiting task asks whether the host of one of its lost runs is back.
const ORPHAN_CHECK: Duration = Duration::from_secs(2);
/// Step errors from an unreachable host before Prepare or Launch gives the host up as lost.
const UNREACHABLE_TRIES: u32 = 3;
/// Time limit of the scripts that settle a lost run.
pub(super) const ORPHAN_TIMEOUT: Duration = Duration::from_secs(10);

/// A message to a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskSignal {
    /// Run a failed task again (attempts start over).
    Retry,
    /// A remark kept in the task's history.
    Note { text: String },
    /// A pull agent wants the task (an update: answered with a `PullReply`).
    Claim { agent_id: u64 },
    /// A message from the agent holding the task, for the claim `epoch`.
    FromAgent {
        agent_id: u64,
        epoch: u64,
        message: FromAgent,
    },
    /// The agent went away (deregistered): its task goes back to the queue.
    AgentLost { agent_id: u64, reason: String },
    /// A coordinator sends the task to a host or an agent.
    Assign { pin: Pin },
    /// The task's issue as the forge shows it now (labels are the full current set).
    IssueChanged { labels: Vec<String>, state: String },
    /// Something happened on the task's pull request or branch (a review, a merge, a close, a
    /// push): the review step looks at the forge again. `pushed` is set for a push.
    ForgeActivity { what: String, pushed: bool },
    /// Run a failed task again from a fresh agent session (attempts start over).
    RetryFresh,
}

/// Where the workflow stands; each variant is one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    Route,
    Prepare,
    Launch,
    Await,
    Parse,
    Verify,
    /// A failed run waits here before it is routed again.
    Backoff {
        until: Timestamp,
    },
    /// No host offers what the task needs: pull agents may take it (SPEC §4 pull mode).
    Pull,
    /// `failed`: waits for a retry signal.
    Settled,
    /// A pull agent holds the task (`assigned`, then `running`).
    Claimed,
    /// The work is verified: push the branch and open the pull request (forge tasks).
    Publish,
    /// `review_pending`: waits for the review, the merge or the close of the pull request.
    Review,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunOutcome {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// Its process vanished without an exit code.
    Lost,
    /// Its host stopped answering for `health.lost_after`: the run may still go on there. Its
    /// `ended_at` stays empty until the host answers again and its late result is recorded.
    HostLost,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::TimedOut => "timed_out",
            RunOutcome::Lost => "lost",
            RunOutcome::HostLost => "host_lost",
        }
    }
}

/// One launch of an agent CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub run_id: String,
    pub host: String,
    pub agent: String,
    pub attempt: u32,
    pub run_dir: String,
    pub started_at: Timestamp,
    pub deadline: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub exit_code: Option<i32>,
    pub outcome: RunOutcome,
    pub report: Option<RunReport>,
}

impl Run {
    /// A run launched (or being launched) at `started_at`, still running, of attempt 1 and
    /// without a deadline yet.
    pub(super) fn new(
        run_id: &str,
        host: &str,
        agent: &str,
        run_dir: &str,
        started_at: Timestamp,
    ) -> Self {
        Run {
            run_id: run_id.to_string(),
            host: host.to_string(),
            agent: agent.to_string(),
            attempt: 1,
            run_dir: run_dir.to_string(),
            started_at,
            deadline: started_at,
            ended_at: None,
            exit_code: None,
            outcome: RunOutcome::Running,
            report: None,
        }
    }
}

/// The verified evidence of the task's work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub branch: String,
    pub base: String,
    pub base_sha: String,
    pub work: BranchWork,
    pub summary: String,
    pub cost_usd: Option<f64>,
    pub verified_at: Timestamp,
}

/// The workflow state of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    pub spec: TaskSpec,
    pub status: TaskStatus,
    pub mode: ExecutionMode,
    pub phase: Phase,
    pub assigned_host: Option<String>,
    pub assigned_agent: Option<String>,
    /// Counts from 1; a retry after a failed run adds one.
    pub attempt: u32,
    pub review_count: u32,
    pub workspace: Option<Workspace>,
    pub runs: Vec<Run>,
    pub receipt: Option<Receipt>,
    /// Why the last run (or the task) failed.
    pub failure: Option<String>,
    /// Since when no host can take the task; in `Pull`, since the task was left to pull agents
    /// (its `dispatch.pull_timeout` runs from then).
    pub undecided_since: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_activity_at: Option<Timestamp>,
    /// The pull agent holding the task, while one does.
    pub claim: Option<Claim>,
    /// The last claim epoch handed out (the next claim gets `epoch + 1`).
    pub epoch: u64,
    /// Where a coordinator sent the task (`assign`).
    pub pin: Option<Pin>,
    /// What the pull agent reported when it finished.
    pub agent_report: Option<AgentReport>,
    /// The issue and pull request of a task that came from the forge.
    pub forge: Option<ForgeTask>,
    /// The next launch starts a fresh agent session (`task retry --fresh`).
    pub fresh: bool,
}

impl TaskState {
    pub fn new(spec: TaskSpec, now: Timestamp) -> Self {
        TaskState {
            spec,
            status: TaskStatus::Created,
            mode: ExecutionMode::Undecided,
            phase: Phase::Route,
            assigned_host: None,
            assigned_agent: None,
            attempt: 1,
            review_count: 0,
            workspace: None,
            runs: Vec::new(),
            receipt: None,
            failure: None,
            undecided_since: None,
            created_at: now,
            updated_at: now,
            last_activity_at: None,
            claim: None,
            epoch: 0,
            pin: None,
            agent_report: None,
            forge: None,
            fresh: false,
        }
    }

    /// Whether the task holds a slot on its host in this phase.
    pub fn holds_host(&self) -> bool {
        matches!(
            self.phase,
            Phase::Prepare | Phase::Launch | Phase::Await | Phase::Parse | Phase::Verify
        )
    }

    pub(super) fn set_status(&mut self, to: TaskStatus) -> Result<(), StepError> {
        self.status = self.status.move_to(to)?;
        Ok(())
    }
}

/// The agent-task workflow definition.
pub struct AgentTask {
    pub(super) rt: Arc<Runtime>,
}

impl AgentTask {
    pub fn new(rt: Arc<Runtime>) -> Self {
        AgentTask { rt }
    }
}

/// Where a step interrupted by a cancel or a shutdown goes: on cancel, the unchanged state
/// parks so that the engine runs the cleanup at once; on shutdown, the step is simply not
/// committed and runs again after the restart.
fn interrupted<S>(ctx: &StepCtx<TaskSignal>, state: S) -> StepResult<S> {
    if ctx.cancellation().is_cancelled() {
        Ok(Outcome::wait(state).note("interrupted by a cancel"))
    } else {
        Err(StepError::msg(
            "the daemon is stopping; the step runs again after the restart",
        ))
    }
}

fn sha7(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

impl Workflow for AgentTask {
    const NAME: &'static str = "agent-task";
    /// 2: pull mode (claim, epoch, pin, agent report in the state).
    /// 3: the forge (issue, pull request, review rounds in the state).
    /// 4: failure kinds and usage-limit reset times in run reports; fresh retries.
    const VERSION: u32 = 4;
    type State = TaskState;
    type Signal = TaskSignal;
    const UPGRADES_FROM: &'static [u32] = &[1, 2, 3];

    /// The task's status (`queued`, `running`, `review_pending`…): what the change feed's
    /// readers (`task watch`, the status labels, chat) follow.
    fn phase(state: &TaskState) -> Option<String> {
        Some(state.status.as_str().to_string())
    }

    /// The task's issue and pull request (see `ForgeTask::keys`): how the forge finds an ended
    /// task without reading every task's state.
    fn keys(state: &TaskState) -> Vec<String> {
        state
            .forge
            .as_ref()
            .map(ForgeTask::keys)
            .unwrap_or_default()
    }

    fn upgrade(from: u32, state: &[u8]) -> Result<TaskState, CodecError> {
        let v3: TaskStateV3 = match from {
            1 => TaskStateV2::from(codec::decode_value::<TaskStateV1>(
                "agent-task state v1",
                state,
            )?)
            .into(),
            2 => codec::decode_value::<TaskStateV2>("agent-task state v2", state)?.into(),
            _ => codec::decode_value("agent-task state v3", state)?,
        };
        Ok(v3.into())
    }

    async fn step(&self, ctx: &mut StepCtx<TaskSignal>, mut s: TaskState) -> StepResult<TaskState> {
        // Slots, agents and leases are rebuilt by recovery: nothing is decided before.
        tokio::select! {
            _ = self.rt.fleet().wait_ready() => {}
            _ = ctx.shutdown().cancelled() => return interrupted(ctx, s),
        }
        let before = s.status;
        let mut remarks = take_remarks(ctx, &s);
        remarks.extend(self.answer_pull_signals(ctx, &mut s)?);
        remarks.extend(review::take_forge_signals(ctx, &mut s));
        s.updated_at = ctx.now();
        let forge = self.rt.forge();
        let outcome = if let Some(reason) = review::withdrawn(forge, &s) {
            self.withdraw(ctx, s, reason)
        } else {
            self.phase_step(ctx, s).await?
        };
        if let Some(n) = &outcome.note {
            remarks.insert(0, n.clone());
        }
        let mut outcome = if remarks.is_empty() {
            outcome
        } else {
            let note = remarks.join("; ");
            outcome.note(note)
        };
        // The first step shows the new task's status on its issue (`status:todo`), however
        // long it waits for a host: until then no status change has queued the labels.
        let first = ctx.step_number() == 0;
        review::status_effects(forge, ctx.instance(), before, first, &mut outcome)?;
        Ok(outcome)
    }

    /// Stops the run and frees the slot (see `cleanup_task`), then commits the task's status
    /// `cancelled` with the forge's status effects (labels, as for any status change) in the
    /// same transaction as the instance's end.
    async fn cleanup(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        s: &TaskState,
        reason: &str,
    ) -> crate::workflow::Cleanup<TaskState> {
        let mut report = self.cleanup_task(ctx, s, reason).await;
        let mut outcome = review::cancelled(s.clone(), reason.to_string());
        if let Err(e) = review::status_effects(
            self.rt.forge(),
            ctx.instance(),
            s.status,
            false,
            &mut outcome,
        ) {
            report.push_str(&format!("; the forge's labels are not updated: {}", e.0));
            outcome.effects.clear();
        }
        crate::workflow::Cleanup::report(report)
            .state(outcome.state)
            .effects(outcome.effects)
    }
}

impl AgentTask {
    /// The step of the task's phase.
    async fn phase_step(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
    ) -> StepResult<TaskState> {
        let was_pull = s.phase == Phase::Pull;
        let outcome = match s.phase.clone() {
            Phase::Route => self.route(ctx, s).await?,
            Phase::Prepare | Phase::Launch | Phase::Await | Phase::Parse | Phase::Verify => {
                self.host_phase(ctx, s).await?
            }
            Phase::Backoff { until } => {
                if ctx.now() < until {
                    Outcome::wait_until(s, until)
                } else {
                    if s.status == TaskStatus::AgentLost {
                        s.set_status(TaskStatus::Created)?;
                    }
                    s.phase = Phase::Route;
                    Outcome::next(s).note("backoff over: routing again")
                }
            }
            Phase::Pull => self.pull(ctx, s)?,
            Phase::Claimed => self.claimed(ctx, s).await?,
            Phase::Settled => settled(ctx, s, self.rt.config().storage.retention)?,
            Phase::Publish => self.publish(ctx, s).await?,
            Phase::Review => self.review(ctx, s).await?,
        };
        let outcome = self.arm_pull_deadline(ctx, was_pull, outcome);
        Ok(self.arm_settled_deadline(ctx, outcome))
    }

    /// The step of a phase that holds a host: a host removed from the config sends the task
    /// elsewhere, and errors are capped (see [`super::stuck`]).
    async fn host_phase(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        s: TaskState,
    ) -> StepResult<TaskState> {
        if let Some(host) = self.removed_host(&s) {
            return Ok(self.host_removed(ctx, s, &host));
        }
        let before = s.clone();
        let result = match s.phase {
            Phase::Prepare => self.prepare(ctx, s).await,
            Phase::Launch => self.launch(ctx, s).await,
            Phase::Await => self.await_run(ctx, s).await,
            Phase::Parse => self.parse(s).await,
            _ => self.verify(ctx, s).await,
        };
        match result {
            Ok(outcome) => Ok(outcome),
            Err(e) => self.step_error(ctx, before, e).await,
        }
    }

    /// The task was withdrawn before it started: it leaves the queue and ends `cancelled`.
    fn withdraw(
        &self,
        ctx: &StepCtx<TaskSignal>,
        s: TaskState,
        reason: String,
    ) -> Outcome<TaskState> {
        let id = ctx.instance();
        self.rt.fleet().release(id);
        self.rt.board().withdraw(id);
        review::cancelled(s, reason)
    }

    async fn cleanup_task(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        s: &TaskState,
        reason: &str,
    ) -> String {
        let id = ctx.instance();
        self.rt.fleet().release(id);
        self.rt.board().withdraw(id);
        if let Some(c) = &s.claim {
            self.rt.board().release(c.agent_id, id);
        }
        let mut report = format!("cancelled ({reason})");
        // The run that may be alive: the last recorded one, or the one Launch was starting.
        let candidate = match (&s.phase, s.runs.last(), &s.assigned_host) {
            (Phase::Await | Phase::Parse, Some(r), _) => Some((r.host.clone(), r.run_dir.clone())),
            (Phase::Launch, _, Some(host)) => {
                let (n, names) = (s.runs.len() + 1, self.rt.names().ok());
                let root = self.rt.work_root(host).ok();
                root.zip(names)
                    .map(|(root, names)| (host.clone(), names.run_dir(&root, id, n)))
            }
            _ => None,
        };
        if let Some((host, dir)) = candidate {
            match self.rt.shell(&host) {
                Ok(shell) => match run::kill(shell.as_ref(), &dir, KILL_GRACE).await {
                    Ok(true) => {
                        report.push_str(&format!("; stopped the run's process group ({dir})"))
                    }
                    Ok(false) => report.push_str("; no run was alive"),
                    Err(e) => report.push_str(&format!("; could not stop the run: {e}")),
                },
                Err(e) => report.push_str(&format!("; could not stop the run: {}", e.0)),
            }
        }
        report
    }
}

/// Takes the signals this phase does not act on, as history remarks.
fn take_remarks(ctx: &mut StepCtx<TaskSignal>, s: &TaskState) -> Vec<String> {
    let settled = s.phase == Phase::Settled;
    let mut remarks = Vec::new();
    while let Some(sig) = ctx.take(|sig| match sig {
        TaskSignal::Note { .. } => true,
        TaskSignal::Retry | TaskSignal::RetryFresh => !settled,
        _ => false,
    }) {
        match sig {
            TaskSignal::Note { text } => remarks.push(format!("note: {text}")),
            TaskSignal::Retry | TaskSignal::RetryFresh => {
                remarks.push(format!("retry ignored: the task is {}", s.status))
            }
            _ => {}
        }
    }
    remarks
}

/// `failed`: waits for a retry. Woken by its deadline (see `stuck::arm_settled_deadline`): nobody
/// retried it within `retention`, and it ends, still `failed`.
fn settled(
    ctx: &mut StepCtx<TaskSignal>,
    mut s: TaskState,
    retention: std::time::Duration,
) -> StepResult<TaskState> {
    let retry = ctx.take(|sig| matches!(sig, TaskSignal::Retry | TaskSignal::RetryFresh));
    if let Some(sig) = retry {
        s.set_status(TaskStatus::Created)?;
        s.attempt = 1;
        s.fresh = sig == TaskSignal::RetryFresh;
        s.phase = Phase::Route;
        let how = match (s.fresh, failure::resumable_session(&s)) {
            (true, _) => "from a fresh agent session".to_string(),
            (false, Some((host, session))) => {
                format!("resuming session {session} on {host} where possible")
            }
            (false, None) => "from a fresh agent session (no session to resume)".to_string(),
        };
        // The failure stays in the state: the next prompt says what went wrong.
        return Ok(Outcome::next(s).note(format!("retry requested: back in the queue, {how}")));
    }
    if ctx.wake() == Wake::Timer {
        let waited = humantime::format_duration(retention);
        return Ok(Outcome::fail(
            s,
            format!("no retry within {waited} (storage.retention): the task ends failed"),
        ));
    }
    Ok(Outcome::wait(s))
}

/// The host-queue ticket of task `id` as its state says (a host it is pinned to, if any); Route
/// may narrow it to the host of the task's worktree or session.
pub(super) fn route_ticket(id: u64, s: &TaskState) -> Ticket {
    Ticket {
        task_id: id,
        priority: s.spec.priority,
        created: s.created_at,
        agent: s.spec.agent.clone(),
        capabilities: s.spec.capabilities.clone(),
        host: match &s.pin {
            Some(Pin::Host(h)) => Some(h.clone()),
            _ => None,
        },
    }
}

impl AgentTask {
    /// Route (two-phase dispatch): a claim by a pull agent, or a slot on a healthy host that
    /// offers what the task needs, whichever comes first. Until then the task is `undecided`
    /// and open to pull agents; after `undecided_timeout` it is left to them (`http_pull`) when
    /// no host could ever take it or some online agent could. A task that gets no slot now
    /// parks in the host queue (holding no step) and is woken when one is there for it.
    async fn route(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
    ) -> StepResult<TaskState> {
        let id = ctx.instance();
        // Left on every way out of this step, except a park waiting for a slot.
        let place = self.rt.fleet().place(id);
        if let Some(note) = self.take_claims(ctx, &mut s)? {
            return Ok(Outcome::next(s).note(note));
        }
        let board = self.rt.board();
        let pinned_host = match &s.pin {
            Some(Pin::Host(h)) => Some(h.clone()),
            _ => None,
        };
        // A review round runs where the worktree and the agent's session are, if it can; so
        // does a retry that can resume the last session.
        let review_round = s.forge.as_ref().is_some_and(|f| f.pr.is_some());
        let resume_host = failure::resumable_session(&s).map(|(host, _)| host);
        if pinned_host.is_none()
            && !review_round
            && (s.mode == ExecutionMode::HttpPull || s.pin.is_some())
        {
            s.mode = ExecutionMode::HttpPull;
            return Ok(self.pull(ctx, s)?.note("left to pull agents (http_pull)"));
        }
        let mut ticket = route_ticket(id, &s);
        let previous_host = match (&s.workspace, resume_host) {
            (Some(ws), _) if review_round => Some(ws.host.clone()),
            (_, Some(host)) => Some(host),
            _ => None,
        };
        if ticket.host.is_none()
            && let Some(host) = previous_host
            && !self.rt.fleet().pauses(&host).contains_key(&s.spec.agent)
        {
            let mut there = ticket.clone();
            there.host = Some(host);
            if self.rt.fleet().can_serve(&there) {
                ticket = there;
            }
        }
        let deadline = if pinned_host.is_some() || review_round {
            None
        } else {
            board.offer(offer_of(id, &s));
            let since = *s.undecided_since.get_or_insert(ctx.now());
            Some(since.after(self.rt.config().dispatch.undecided_timeout))
        };
        let now = ctx.now();
        if !self.rt.fleet().can_serve(&ticket) {
            let Some(deadline) = deadline else {
                let reason = match pinned_host {
                    Some(h) => format!("host {h} no longer offers agent `{}`", s.spec.agent),
                    None => format!(
                        "no host offers agent `{}` for the review round",
                        s.spec.agent
                    ),
                };
                return Ok(self.give_up(ctx, s, reason));
            };
            if now >= deadline {
                s.mode = ExecutionMode::HttpPull;
                s.phase = Phase::Pull;
                return Ok(Outcome::wait(s)
                    .note("no host offers what the task needs: left to pull agents (http_pull)"));
            }
            let note = format!(
                "no host offers agent `{}`{}: undecided, open to pull agents",
                s.spec.agent,
                if s.spec.capabilities.is_empty() {
                    String::new()
                } else {
                    format!(" with [{}]", s.spec.capabilities.join(", "))
                }
            );
            return Ok(Outcome::wait_until(s, deadline).note(note));
        }
        if let Some(d) = deadline
            && now >= d
            && board.anyone_offers(&s.spec.agent, &s.spec.capabilities, now)
        {
            s.mode = ExecutionMode::HttpPull;
            s.phase = Phase::Pull;
            let waited = humantime::format_duration(self.rt.config().dispatch.undecided_timeout);
            return Ok(Outcome::wait(s).note(format!(
                "no host took the task within {waited}: left to pull agents (http_pull)"
            )));
        }
        let Some(host) = self.rt.fleet().try_acquire(&ticket) else {
            // Parked: woken when a slot is there for it (or by a claim, an assignment, a
            // cancel). Before the hand-over the wait ends at the deadline; after it (no agent
            // could take the task then) it simply waits for a host, still open to pull agents.
            // A pause that ends frees a host without anyone saying so: ask again then.
            let hand_over = deadline.filter(|d| now < *d);
            let pause_end = self.rt.fleet().next_pause_end(&ticket);
            place.keep();
            let outcome = match hand_over.into_iter().chain(pause_end).min() {
                Some(at) => Outcome::wait_until(s, at),
                None => Outcome::wait(s),
            };
            return Ok(outcome.note("waiting for a host slot"));
        };
        board.withdraw(id);
        // A review round stays `review_pending` until its run starts.
        if s.status != TaskStatus::ReviewPending {
            s.set_status(TaskStatus::Assigned)?;
        }
        s.mode = ExecutionMode::SshCli;
        s.undecided_since = None;
        s.assigned_host = Some(host.clone());
        s.assigned_agent = Some(s.spec.agent.clone());
        s.workspace = None;
        s.phase = Phase::Prepare;
        Ok(Outcome::next(s).note(format!("assigned to host {host} (ssh_cli)")))
    }

    /// `Pull` (`http_pull`): open to pull agents (to one, if assigned to it) until one claims
    /// the task or a coordinator sends it to a host.
    fn pull(&self, ctx: &mut StepCtx<TaskSignal>, mut s: TaskState) -> StepResult<TaskState> {
        if let Some(note) = self.take_claims(ctx, &mut s)? {
            return Ok(Outcome::next(s).note(note));
        }
        if s.phase == Phase::Route && matches!(s.pin, Some(Pin::Host(_))) {
            return Ok(Outcome::next(s));
        }
        if let Some(note) = self.pull_over(ctx, &mut s) {
            return Ok(Outcome::next(s).note(note));
        }
        s.phase = Phase::Pull;
        self.rt.board().offer(offer_of(ctx.instance(), &s));
        Ok(Outcome::wait(s))
    }

    fn host_of(s: &TaskState) -> Result<String, StepError> {
        s.assigned_host
            .clone()
            .ok_or_else(|| StepError::msg("no host is assigned in this phase"))
    }

    async fn prepare(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
    ) -> StepResult<TaskState> {
        let host = Self::host_of(&s)?;
        let shell = self.rt.shell(&host)?;
        let root = self.rt.work_root(&host)?;
        match workspace::prepare(
            shell.as_ref(),
            &root,
            &s.spec.repo,
            s.spec.base.as_deref(),
            self.rt.names()?,
            ctx.instance(),
        )
        .await
        {
            Ok(ws) => {
                let note = format!(
                    "workspace {} on {} from {}@{}",
                    ws.work_dir,
                    ws.branch,
                    ws.base,
                    sha7(&ws.base_sha)
                );
                s.workspace = Some(ws);
                s.phase = Phase::Launch;
                Ok(Outcome::next(s).note(note))
            }
            Err(WorkspaceError::Shell(e))
                if e.is_unreachable() && ctx.errors() >= UNREACHABLE_TRIES =>
            {
                let reason = format!("host {host} unreachable while preparing the workspace: {e}");
                Ok(self.host_lost(ctx, s, &host, reason))
            }
            Err(e) if ctx.errors() < self.rt.config().dispatch.max_retries => {
                Err(StepError::msg(e.to_string()))
            }
            Err(e) => {
                let reason = format!("cannot prepare the workspace: {e}");
                Ok(self.give_up(ctx, s, reason))
            }
        }
    }

    async fn launch(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
    ) -> StepResult<TaskState> {
        let id = ctx.instance();
        let host = Self::host_of(&s)?;
        let shell = self.rt.shell(&host)?;
        let ws = s
            .workspace
            .clone()
            .ok_or_else(|| StepError::msg("no workspace in the launch phase"))?;
        let Some(agent) = self.rt.config().agent(&s.spec.agent).cloned() else {
            let reason = format!("agent kind `{}` is not configured", s.spec.agent);
            return Ok(self.give_up(ctx, s, reason));
        };
        let names = self.rt.names()?;
        let run_id = names.run_id(id, s.runs.len() + 1);
        let dir = names.run_dir(&self.rt.work_root(&host)?, id, s.runs.len() + 1);
        let prompt_file = format!("{dir}/prompt.md");
        let feedback: Vec<String> = s
            .forge
            .as_ref()
            .map(|f| f.feedback.clone())
            .unwrap_or_default();
        // A review round resumes the agent's session on this host, when its kind can; so
        // does a retry after a failure outside the session (see `failure::resumable_session`).
        let session = match &agent.resume_template {
            Some(_) if s.fresh => None,
            Some(_) if !feedback.is_empty() => s
                .runs
                .iter()
                .rev()
                .filter(|r| r.host == host && r.agent == agent.name)
                .find_map(|r| r.report.as_ref()?.session_id.clone()),
            Some(_) => failure::resumable_session(&s)
                .filter(|(h, _)| *h == host)
                .map(|(_, session)| session),
            None => None,
        };
        let env = match agent.run_env(crate::secrets::var) {
            Ok(env) => env,
            Err(unset) => {
                let reason = format!(
                    "agent kind `{}` passes through {} (env_from), not set in the daemon's \
                     environment: set it and retry",
                    agent.name,
                    unset.join(", ")
                );
                return Ok(self.give_up(ctx, s, reason));
            }
        };
        let template = match (&agent.resume_template, &session) {
            (Some(t), Some(_)) => t.as_str(),
            _ => agent.cli_template.as_str(),
        };
        let vars = Vars::new()
            .set("prompt_file", prompt_file.clone())
            .set("prompt", prompt_file.clone())
            .set("work_dir", ws.work_dir.clone())
            .set("task_id", id.to_string())
            .set("branch", ws.branch.clone())
            .set("run_dir", dir.clone())
            .set("session_id", session.clone().unwrap_or_default());
        let command = match self.rt.command(&host, template, &vars) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot render the `{}` command line: {e}", agent.name);
                return Ok(self.give_up(ctx, s, reason));
            }
        };
        let intent_name = format!("launch {run_id}");
        let (pid, reattached, started_at) =
            match ctx.intent::<String, u32>(&intent_name, &dir).await? {
                Intent::Resolved(pid) => (pid, true, ctx.now()),
                Intent::Fresh | Intent::Unresolved(_) => {
                    let text = prompt::build(&PromptInput {
                        task_id: id,
                        title: &s.spec.title,
                        body: &s.spec.body,
                        branch: &ws.branch,
                        base: &ws.base,
                        file_scope: &s.spec.file_scope,
                        validation: &s.spec.validation,
                        labels: &s.spec.labels,
                        attempt: s.attempt,
                        previous_failure: s.failure.as_deref(),
                        review_feedback: &feedback,
                        pull: false,
                    });
                    let started = match self
                        .start_run(shell.as_ref(), &dir, &ws.work_dir, &text, &command, &env)
                        .await
                    {
                        Ok(started) => started,
                        Err(RunError::Shell(e))
                            if e.is_unreachable() && ctx.errors() >= UNREACHABLE_TRIES =>
                        {
                            // It may have started there: keep it as a lost run, settled (its
                            // result recorded or the run stopped) if the host comes back.
                            let mut lost = Run::new(&run_id, &host, &agent.name, &dir, ctx.now());
                            lost.attempt = s.attempt;
                            lost.outcome = RunOutcome::HostLost;
                            s.runs.push(lost);
                            let reason = format!(
                                "host {host} unreachable while launching run {run_id}: {e}"
                            );
                            return Ok(self.host_lost(ctx, s, &host, reason));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let (pid, again, at) = match started {
                        Started::Launched { pid, at_epoch_s } => {
                            (pid, false, Timestamp(at_epoch_s * 1000))
                        }
                        Started::AlreadyLaunched { pid } => (pid.unwrap_or(0), true, ctx.now()),
                    };
                    ctx.resolve(&intent_name, &pid).await?;
                    (pid, again, at)
                }
            };
        let timeout = agent.timeout_or_default(&self.rt.config().dispatch);
        let mut run = Run::new(&run_id, &host, &agent.name, &dir, started_at);
        run.attempt = s.attempt;
        run.deadline = started_at.after(timeout);
        s.runs.push(run);
        s.fresh = false;
        s.set_status(TaskStatus::Running)?;
        s.last_activity_at = Some(started_at);
        s.phase = Phase::Await;
        let note = if reattached {
            format!("run {run_id} was launched before a restart: re-attached (pid {pid})")
        } else {
            format!(
                "launched run {run_id} on {host} (pid {pid}){}: {command}",
                session
                    .map(|id| format!(", resuming session {id}"))
                    .unwrap_or_default()
            )
        };
        Ok(Outcome::next(s).note(note))
    }

    async fn start_run(
        &self,
        shell: &dyn crate::io::shell::Shell,
        dir: &str,
        work_dir: &str,
        prompt_text: &str,
        command: &str,
        env: &[(String, String)],
    ) -> Result<Started, RunError> {
        // Files first. After a crash they may exist already: rewriting them is harmless (the
        // same bytes, replaced by rename), and `start` launches nothing the second time.
        run::write_file(shell, &format!("{dir}/prompt.md"), prompt_text.as_bytes()).await?;
        run::write_file(
            shell,
            &format!("{dir}/command.sh"),
            format!("{command}\n").as_bytes(),
        )
        .await?;
        run::start(shell, dir, work_dir, env).await
    }

    async fn await_run(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
    ) -> StepResult<TaskState> {
        let mut r = s
            .runs
            .last()
            .cloned()
            .ok_or_else(|| StepError::msg("no run to await"))?;
        let shell = self.rt.shell(&r.host)?;
        let lost_after = self.rt.config().health.lost_after;
        // Since when the host has not answered.
        let mut unreachable: Option<Instant> = None;
        let mut orphans_checked = Instant::now();
        let mut late = Vec::new();
        let note = loop {
            // A silent host can hold a script until its timeout: a cancel must not wait for it.
            let probe = tokio::select! {
                probe = run::status(shell.as_ref(), &r.run_dir) => probe,
                _ = ctx.cancellation().cancelled() => return interrupted(ctx, s),
                _ = ctx.shutdown().cancelled() => return interrupted(ctx, s),
            };
            match probe {
                Ok(RunState::Exited { code }) => {
                    r.exit_code = Some(code);
                    break format!("run {} exited with code {code}", r.run_id);
                }
                Ok(RunState::Vanished | RunState::NotLaunched) => {
                    r.outcome = RunOutcome::Lost;
                    break format!("run {} vanished without an exit code", r.run_id);
                }
                Ok(RunState::Running {
                    last_activity_epoch_s,
                    ..
                }) => {
                    unreachable = None;
                    if let Some(t) = last_activity_epoch_s {
                        s.last_activity_at = Some(Timestamp(t * 1000));
                    }
                }
                Err(RunError::Shell(e)) if e.is_unreachable() => {
                    // The run goes on without us; keep asking (the connection is reopened)
                    // until the host has been silent for `lost_after`.
                    let since = unreachable.get_or_insert_with(|| {
                        tracing::warn!(task = ctx.instance(), host = %r.host, "{e}");
                        Instant::now()
                    });
                    if since.elapsed() >= lost_after {
                        let reason = format!(
                            "host {} unreachable for {}: {e}",
                            r.host,
                            humantime::format_duration(lost_after)
                        );
                        self.rt.fleet().mark_offline(&r.host, &reason);
                        r.outcome = RunOutcome::HostLost;
                        break format!("run {} lost: {reason}", r.run_id);
                    }
                }
                Err(e) => return Err(e.into()),
            }
            if unreachable.is_none() && Timestamp::now() >= r.deadline {
                let killed = run::kill(shell.as_ref(), &r.run_dir, KILL_GRACE).await?;
                r.outcome = RunOutcome::TimedOut;
                let limit = humantime::format_duration(Duration::from_millis(
                    r.deadline.0.saturating_sub(r.started_at.0),
                ));
                break format!(
                    "run {} timed out after {limit}{}",
                    r.run_id,
                    if killed {
                        "; its process group was killed"
                    } else {
                        ""
                    }
                );
            }
            if orphans_checked.elapsed() >= ORPHAN_CHECK {
                orphans_checked = Instant::now();
                late.extend(self.settle_orphans(&mut s).await);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.rt.poll) => {}
                _ = ctx.cancellation().cancelled() => return interrupted(ctx, s),
                _ = ctx.shutdown().cancelled() => return interrupted(ctx, s),
            }
        };
        let note = if late.is_empty() {
            note
        } else {
            format!("{note}; {}", late.join("; "))
        };
        if r.outcome != RunOutcome::HostLost {
            r.ended_at = Some(ctx.now().max(Timestamp::now()));
        }
        s.runs.pop();
        s.runs.push(r);
        s.phase = Phase::Parse;
        Ok(Outcome::next(s).note(note))
    }

    async fn parse(&self, mut s: TaskState) -> StepResult<TaskState> {
        let mut r = s
            .runs
            .pop()
            .ok_or_else(|| StepError::msg("no run to parse"))?;
        if r.outcome == RunOutcome::HostLost {
            let note = format!("run {}: no output to read, its host is lost", r.run_id);
            s.runs.push(r);
            s.phase = Phase::Verify;
            return Ok(Outcome::next(s).note(note));
        }
        let shell = self.rt.shell(&r.host)?;
        let (stdout, stderr) = run::output(shell.as_ref(), &r.run_dir, MAX_OUTPUT).await?;
        let format = self
            .rt
            .config
            .agent(&r.agent)
            .map(|a| a.output_format)
            .unwrap_or(crate::config::OutputFormat::Raw);
        // Reset times printed without a date are read against the run's end, not the time
        // this step runs (which may be after a restart).
        let ended = r.ended_at.unwrap_or_else(Timestamp::now);
        let report = parse::parse_at(
            format,
            &RunOutput {
                stdout: &stdout,
                stderr: &stderr,
                exit_code: r.exit_code,
            },
            &parse::RunClock::ended_at(ended.0),
        );
        if r.outcome == RunOutcome::Running {
            r.outcome = if report.success {
                RunOutcome::Succeeded
            } else {
                RunOutcome::Failed
            };
        }
        let first_line = report.summary.lines().next().unwrap_or("").to_string();
        let note = match (&report.failure, r.outcome) {
            (_, RunOutcome::Succeeded) => format!("run {} reports success: {first_line}", r.run_id),
            (Some(why), _) => format!("run {} failed: {why}", r.run_id),
            (None, o) => format!("run {} {}", r.run_id, o.as_str()),
        };
        r.report = Some(report);
        s.runs.push(r);
        s.phase = Phase::Verify;
        Ok(Outcome::next(s).note(note))
    }

    /// Verify, after settling the runs lost with their hosts (their late results belong in the
    /// history before the task ends).
    async fn verify(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
    ) -> StepResult<TaskState> {
        let late = self.settle_orphans(&mut s).await;
        let outcome = self.verify_run(ctx, s).await?;
        if late.is_empty() {
            return Ok(outcome);
        }
        let note = match &outcome.note {
            Some(n) => format!("{n}; {}", late.join("; ")),
            None => late.join("; "),
        };
        Ok(outcome.note(note))
    }

    async fn verify_run(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
    ) -> StepResult<TaskState> {
        let r = s
            .runs
            .last()
            .cloned()
            .ok_or_else(|| StepError::msg("no run to verify"))?;
        if r.outcome != RunOutcome::Succeeded {
            let reason = match (&r.report, r.outcome) {
                (_, RunOutcome::TimedOut) => format!("run {} timed out", r.run_id),
                (_, RunOutcome::Lost) => format!("run {} vanished without an exit code", r.run_id),
                (_, RunOutcome::HostLost) => {
                    format!("run {} was lost with host {}", r.run_id, r.host)
                }
                (Some(rep), _) => rep
                    .failure
                    .clone()
                    .unwrap_or_else(|| format!("run {} failed", r.run_id)),
                (None, o) => format!("run {} {}", r.run_id, o.as_str()),
            };
            let pause = self.rt.config().dispatch.usage_limit_pause;
            return Ok(match failure::decide(&r, reason, ctx.now(), pause) {
                Decision::GiveUp(reason) => self.give_up(ctx, s, reason),
                Decision::Retry(reason) => self.run_failed(ctx, s, reason, false),
                Decision::Pause { until, reason } => {
                    self.rt.fleet().pause(&r.host, &r.agent, until, &reason);
                    // Kept with the run: recovery pauses the kind again until then.
                    if let Some(rep) = s.runs.last_mut().and_then(|r| r.report.as_mut()) {
                        rep.retry_at_ms = Some(until.0);
                    }
                    let reason = format!(
                        "{reason}; agent kind `{}` paused on {} until {}",
                        r.agent,
                        r.host,
                        humantime::format_rfc3339_seconds(until.system_time())
                    );
                    self.run_failed(ctx, s, reason, true)
                }
            });
        }
        let ws = s
            .workspace
            .clone()
            .ok_or_else(|| StepError::msg("no workspace to verify"))?;
        let shell = self.rt.shell(&ws.host)?;
        let work = workspace::branch_work(shell.as_ref(), &ws).await?;
        if work.commits.is_empty() {
            if let Some(last) = s.runs.last_mut() {
                last.outcome = RunOutcome::Failed;
            }
            let reason = format!(
                "the agent reported success but made no commit on {} (receipt refused){}",
                ws.branch,
                failure::no_commit_hint(&r.agent)
            );
            return Ok(self.run_failed(ctx, s, reason, false));
        }
        let report = r.report.clone();
        let note = format!(
            "receipt verified: {} commit(s) on {} ahead of {}@{}, head {}",
            work.commits.len(),
            ws.branch,
            ws.base,
            sha7(&ws.base_sha),
            sha7(&work.head_sha)
        );
        s.receipt = Some(Receipt {
            branch: ws.branch.clone(),
            base: ws.base.clone(),
            base_sha: ws.base_sha.clone(),
            work,
            summary: report
                .as_ref()
                .map(|r| r.summary.clone())
                .unwrap_or_default(),
            cost_usd: s
                .runs
                .iter()
                .filter_map(|r| r.report.as_ref()?.cost_usd)
                .reduce(|a, b| a + b),
            verified_at: ctx.now(),
        });
        s.failure = None;
        self.rt.fleet().release(ctx.instance());
        if s.forge.is_some() && self.rt.forge().is_some() {
            s.phase = Phase::Publish;
            return Ok(Outcome::next(s).note(note));
        }
        s.set_status(TaskStatus::Completed)?;
        s.phase = Phase::Settled;
        Ok(Outcome::complete(s).note(note))
    }

    /// Looks after the task's runs lost with their host: once the host answers again, a run
    /// that finished there has its late result recorded (never used: the task moved on) and one
    /// still running is stopped. Returns history remarks.
    async fn settle_orphans(&self, s: &mut TaskState) -> Vec<String> {
        let mut notes = Vec::new();
        for r in s.runs.iter_mut() {
            if r.outcome != RunOutcome::HostLost || r.ended_at.is_some() {
                continue;
            }
            // Only once a health check has seen the host again: no waiting on a silent one.
            if self.rt.fleet().health(&r.host) != Some(Health::Online) {
                continue;
            }
            let Ok(shell) = self.rt.shell(&r.host) else {
                continue;
            };
            let probe =
                tokio::time::timeout(ORPHAN_TIMEOUT, run::status(shell.as_ref(), &r.run_dir)).await;
            let note = match probe {
                Ok(Ok(RunState::Exited { code })) => {
                    r.exit_code = Some(code);
                    format!(
                        "late result: run {} on {} (lost with its host) had exited with code {code}; \
                         recorded, not used",
                        r.run_id, r.host
                    )
                }
                Ok(Ok(RunState::Running { .. })) => {
                    match run::kill(shell.as_ref(), &r.run_dir, KILL_GRACE).await {
                        Ok(_) => format!(
                            "run {} on {} (lost with its host) was still running when the host came \
                             back: stopped, the task has moved on",
                            r.run_id, r.host
                        ),
                        Err(_) => continue,
                    }
                }
                Ok(Ok(RunState::Vanished | RunState::NotLaunched)) => format!(
                    "run {} on {} (lost with its host) is gone without an exit code",
                    r.run_id, r.host
                ),
                Ok(Err(_)) | Err(_) => continue,
            };
            r.ended_at = Some(Timestamp::now());
            notes.push(note);
        }
        notes
    }

    /// The host stopped answering: it leaves selection until a health check passes, and the
    /// task is retried (on another host, if one can take it) like a failed run.
    fn host_lost(
        &self,
        ctx: &StepCtx<TaskSignal>,
        s: TaskState,
        host: &str,
        reason: String,
    ) -> Outcome<TaskState> {
        self.rt.fleet().mark_offline(host, &reason);
        self.run_failed(ctx, s, reason, false)
    }

    /// A run did not deliver: retry after a backoff while the budget lasts, else fail.
    pub(super) fn run_failed(
        &self,
        ctx: &StepCtx<TaskSignal>,
        mut s: TaskState,
        reason: String,
        usage_limited: bool,
    ) -> Outcome<TaskState> {
        let d = &self.rt.config().dispatch;
        if !usage_limited && s.attempt > d.max_retries {
            let reason = format!("failed after {} attempt(s): {reason}", s.attempt);
            return self.give_up(ctx, s, reason);
        }
        self.rt.fleet().release(ctx.instance());
        let delay = if usage_limited {
            // The paused host is skipped by routing: another host may take the task now.
            Duration::ZERO
        } else {
            let doublings = (s.attempt - 1).min(16);
            d.retry_backoff.saturating_mul(1 << doublings)
        };
        let note = if usage_limited {
            format!("{reason}; the task waits for a host without spending an attempt")
        } else {
            s.attempt += 1;
            format!(
                "{reason}; attempt {} of {} in {}",
                s.attempt,
                d.max_retries + 1,
                humantime::format_duration(delay)
            )
        };
        s.failure = Some(reason);
        // Back in the queue: from `running`, or from `assigned` (workspace trouble). An
        // `agent_lost` task shows it until its backoff is over.
        if s.status != TaskStatus::AgentLost && s.status.can_move_to(TaskStatus::Created) {
            s.status = TaskStatus::Created;
        }
        s.assigned_host = None;
        let until = ctx.now().after(delay);
        s.phase = Phase::Backoff { until };
        Outcome::wait_until(s, until).note(note)
    }

    /// Ends the task `failed`; it waits for a retry signal.
    pub(super) fn give_up(
        &self,
        ctx: &StepCtx<TaskSignal>,
        mut s: TaskState,
        reason: String,
    ) -> Outcome<TaskState> {
        self.rt.fleet().release(ctx.instance());
        if s.status.can_move_to(TaskStatus::Failed) {
            s.status = TaskStatus::Failed;
        }
        s.failure = Some(reason.clone());
        s.phase = Phase::Settled;
        Outcome::wait(s).note(format!("failed: {reason}"))
    }
}
