//! The agent-task workflow's pull mode (SPEC §4): how a task open to pull agents is claimed
//! (each claim decided by the task's own step, so a task is claimed exactly once, whoever else
//! wants it), what the holding agent may report (status, completion, receipt — owner and
//! current epoch only), how a lost agent's task goes back to the queue, and the coordinator's
//! `assign`. Every message an agent or a coordinator sends arrives as an engine update; its
//! answer is a [`PullReply`].

use serde::{Deserialize, Serialize};

use crate::workflow::{Outcome, StepCtx, StepError, StepResult, Timestamp};

use super::agent_task::{AgentTask, Phase, Receipt, TaskSignal, TaskState};
use super::pull::{Liveness, Offer};
use super::task::{ExecutionMode, Source, TaskStatus};
use super::workspace::{self, WorkspaceError};

/// Where a coordinator sent a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pin {
    Host(String),
    Agent(u64),
}

/// The pull agent holding a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub agent_id: u64,
    pub agent: String,
    /// The fencing token: only messages carrying it count.
    pub epoch: u64,
    pub claimed_at: Timestamp,
    pub started_at: Option<Timestamp>,
}

/// What a holding agent may say of its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentProgress {
    /// Working on it (again: a progress heartbeat that updates `last_activity_at`).
    Running,
    /// Gave up: the attempt failed and the task is retried under the retry policy.
    Failed,
}

/// The evidence a pull agent reports for a task whose work is a branch (and maybe a PR).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptClaim {
    pub branch: String,
    pub commits: Vec<String>,
    pub summary: String,
    pub pr_number: Option<u64>,
    pub pr_url: Option<String>,
}

/// A message from the agent holding a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromAgent {
    Status {
        progress: AgentProgress,
        message: Option<String>,
    },
    Complete {
        summary: String,
    },
    Receipt(ReceiptClaim),
}

/// What an agent reported when it finished, and what checking it found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    pub agent_id: u64,
    pub agent: String,
    pub epoch: u64,
    pub received_at: Timestamp,
    pub summary: String,
    pub receipt: Option<ReceiptClaim>,
    pub verified: bool,
    /// How it was checked, or why it could not be.
    pub verification: String,
}

/// Why a request about a task was refused; the API maps each to its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The task's state does not allow it (409).
    Conflict,
    /// Another agent holds the task (403).
    Forbidden,
    /// The claim epoch is over (409).
    Stale,
    /// The request cannot be right for this task (422).
    Invalid,
    /// The named host or agent does not exist (404).
    NotFound,
}

/// The answer of a task's step to a claim, an agent's message or an assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PullReply {
    Granted { epoch: u64 },
    Done { status: TaskStatus, note: String },
    Refused { refusal: Refusal, message: String },
}

impl PullReply {
    fn refused(refusal: Refusal, message: impl Into<String>) -> Self {
        PullReply::Refused {
            refusal,
            message: message.into(),
        }
    }
}

/// Whether a task in this state may be sent elsewhere by a coordinator.
fn assignable(s: &TaskState) -> bool {
    match s.phase {
        Phase::Route | Phase::Pull | Phase::Backoff { .. } => true,
        Phase::Settled => s.status == TaskStatus::Failed,
        _ => false,
    }
}

/// The offer of task `id` to pull agents.
pub fn offer_of(id: u64, s: &TaskState) -> Offer {
    Offer {
        task_id: id,
        priority: s.spec.priority,
        created: s.created_at,
        kind: s.spec.agent.clone(),
        capabilities: s.spec.capabilities.clone(),
        only_agent: match s.pin {
            Some(Pin::Agent(a)) => Some(a),
            _ => None,
        },
    }
}

impl AgentTask {
    /// Answers the pull-mode messages this phase does not act on itself: assignments (taken
    /// wherever the task may still be routed), and claims or agent messages that come too late.
    /// Returns history remarks.
    pub(super) fn answer_pull_signals(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        s: &mut TaskState,
    ) -> Result<Vec<String>, StepError> {
        let mut remarks = Vec::new();
        while let Some(a) = ctx.take_inbound(|sig| matches!(sig, TaskSignal::Assign { .. })) {
            let TaskSignal::Assign { pin } = a.signal else {
                continue;
            };
            let reply = self.assign(ctx.instance(), s, pin);
            if let PullReply::Done { note, .. } = &reply {
                remarks.push(note.clone());
            }
            ctx.reply(a.seq, &reply)?;
        }
        let claimable = matches!(s.phase, Phase::Route | Phase::Pull);
        let held = s.phase == Phase::Claimed;
        while let Some(m) = ctx.take_inbound(|sig| match sig {
            TaskSignal::Claim { .. } => !claimable,
            TaskSignal::FromAgent { .. } => !held,
            TaskSignal::AgentLost { .. } => !held,
            _ => false,
        }) {
            let reply = match m.signal {
                TaskSignal::Claim { .. } => PullReply::refused(
                    Refusal::Conflict,
                    format!(
                        "task {} is no longer open to pull agents (it is {})",
                        ctx.instance(),
                        s.status
                    ),
                ),
                TaskSignal::FromAgent { epoch, .. } => PullReply::refused(
                    Refusal::Stale,
                    format!(
                        "claim epoch {epoch} of task {} is over (the task is {})",
                        ctx.instance(),
                        s.status
                    ),
                ),
                _ => continue,
            };
            ctx.reply(m.seq, &reply)?;
        }
        Ok(remarks)
    }

    /// A coordinator's assignment: to a host (`ssh_cli`) or to one pull agent (`http_pull`).
    fn assign(&self, id: u64, s: &mut TaskState, pin: Pin) -> PullReply {
        if !assignable(s) {
            return PullReply::refused(
                Refusal::Conflict,
                format!(
                    "task {id} is {}: only a task waiting for a host or an agent, or a failed one, can be assigned",
                    s.status
                ),
            );
        }
        let note = match &pin {
            Pin::Host(host) => {
                let Some(cfg) = self.rt.config().host(host) else {
                    return PullReply::refused(Refusal::NotFound, format!("no host `{host}`"));
                };
                if !cfg.agents.contains(&s.spec.agent) {
                    return PullReply::refused(
                        Refusal::Conflict,
                        format!("host `{host}` does not offer agent kind `{}`", s.spec.agent),
                    );
                }
                self.rt.board().withdraw(id);
                s.mode = ExecutionMode::SshCli;
                format!("assigned by a coordinator to host {host} (ssh_cli)")
            }
            Pin::Agent(agent) => {
                let Some(entry) = self.rt.board().agent(*agent) else {
                    return PullReply::refused(Refusal::NotFound, format!("no agent {agent}"));
                };
                if !entry.kinds.contains(&s.spec.agent) {
                    return PullReply::refused(
                        Refusal::Conflict,
                        format!(
                            "agent {} does not offer agent kind `{}`",
                            entry.name, s.spec.agent
                        ),
                    );
                }
                s.mode = ExecutionMode::HttpPull;
                format!(
                    "assigned by a coordinator to agent {} ({agent}, http_pull)",
                    entry.name
                )
            }
        };
        s.pin = Some(pin);
        match s.status {
            TaskStatus::Failed => {
                s.status = TaskStatus::Created;
                s.attempt = 1;
                s.failure = None;
            }
            // Lost its agent and waiting out the backoff: routed again now, same attempt.
            TaskStatus::AgentLost => s.status = TaskStatus::Created,
            _ => {}
        }
        s.phase = Phase::Route;
        PullReply::Done {
            status: s.status,
            note: note.clone(),
        }
    }

    /// Decides the claims waiting in the inbox: the first one from an agent that may take the
    /// task wins, every other one is refused. Returns the history note of a granted claim.
    pub(super) fn take_claims(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        s: &mut TaskState,
    ) -> Result<Option<String>, StepError> {
        let id = ctx.instance();
        let mut granted = None;
        while let Some(c) = ctx.take_inbound(|sig| matches!(sig, TaskSignal::Claim { .. })) {
            let TaskSignal::Claim { agent_id } = c.signal else {
                continue;
            };
            let reply = if granted.is_some() {
                PullReply::refused(
                    Refusal::Conflict,
                    format!("task {id} was claimed by another agent"),
                )
            } else {
                match self.claim_refusal(id, s, agent_id, ctx.now()) {
                    Some(r) => r,
                    None => {
                        let name = self
                            .rt
                            .board()
                            .agent(agent_id)
                            .map(|a| a.name)
                            .unwrap_or_default();
                        s.epoch += 1;
                        s.set_status(TaskStatus::Assigned)?;
                        s.mode = ExecutionMode::HttpPull;
                        s.undecided_since = None;
                        s.assigned_host = None;
                        s.assigned_agent = Some(name.clone());
                        s.claim = Some(Claim {
                            agent_id,
                            agent: name.clone(),
                            epoch: s.epoch,
                            claimed_at: ctx.now(),
                            started_at: None,
                        });
                        s.phase = Phase::Claimed;
                        self.rt.board().hold(agent_id, id);
                        granted = Some(format!(
                            "claimed by agent {name} ({agent_id}), epoch {} (http_pull)",
                            s.epoch
                        ));
                        PullReply::Granted { epoch: s.epoch }
                    }
                }
            };
            ctx.reply(c.seq, &reply)?;
        }
        Ok(granted)
    }

    fn claim_refusal(
        &self,
        id: u64,
        s: &TaskState,
        agent_id: u64,
        now: Timestamp,
    ) -> Option<PullReply> {
        if !s.status.can_move_to(TaskStatus::Assigned) {
            return Some(PullReply::refused(
                Refusal::Conflict,
                format!("task {id} is {}: it cannot be claimed", s.status),
            ));
        }
        let Some(agent) = self.rt.board().agent(agent_id) else {
            return Some(PullReply::refused(
                Refusal::NotFound,
                format!("no agent {agent_id}"),
            ));
        };
        if agent.liveness(now) != Liveness::Online {
            return Some(PullReply::refused(
                Refusal::Conflict,
                format!("agent {} is {}", agent.name, agent.liveness(now).as_str()),
            ));
        }
        match &s.pin {
            Some(Pin::Host(h)) => {
                return Some(PullReply::refused(
                    Refusal::Conflict,
                    format!("task {id} is assigned to host {h}"),
                ));
            }
            Some(Pin::Agent(a)) if *a != agent_id => {
                return Some(PullReply::refused(
                    Refusal::Forbidden,
                    format!("task {id} is assigned to another agent"),
                ));
            }
            _ => {}
        }
        if !agent.offers(&s.spec.agent, &s.spec.capabilities) {
            return Some(PullReply::refused(
                Refusal::Conflict,
                format!("agent {} does not offer what task {id} needs", agent.name),
            ));
        }
        None
    }

    /// `Claimed`: a pull agent holds the task. Its messages are answered; when its lease runs
    /// out (missed heartbeats, deregistered) the task is `agent_lost` and goes back to the queue.
    pub(super) async fn claimed(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
    ) -> StepResult<TaskState> {
        let id = ctx.instance();
        let claim = s
            .claim
            .clone()
            .ok_or_else(|| StepError::msg("no claim in the claimed phase"))?;
        let mut notes = Vec::new();
        if let Some(TaskSignal::AgentLost { reason, .. }) = ctx.take(|sig| {
            matches!(sig, TaskSignal::AgentLost { agent_id, .. } if *agent_id == claim.agent_id)
        }) {
            return Ok(self.agent_lost(ctx, s, &claim, reason));
        }
        // Losses naming an agent that no longer holds the task change nothing.
        while ctx
            .take(|sig| matches!(sig, TaskSignal::AgentLost { .. }))
            .is_some()
        {}
        while let Some(m) = ctx.take_inbound(|sig| matches!(sig, TaskSignal::FromAgent { .. })) {
            let TaskSignal::FromAgent {
                agent_id,
                epoch,
                message,
            } = m.signal
            else {
                continue;
            };
            if agent_id != claim.agent_id {
                let r = PullReply::refused(
                    Refusal::Forbidden,
                    format!("task {id} is held by another agent"),
                );
                ctx.reply(m.seq, &r)?;
                continue;
            }
            if epoch != claim.epoch {
                let r = PullReply::refused(
                    Refusal::Stale,
                    format!(
                        "claim epoch {epoch} of task {id} is over; the current one is {}",
                        claim.epoch
                    ),
                );
                ctx.reply(m.seq, &r)?;
                continue;
            }
            match message {
                FromAgent::Status {
                    progress: AgentProgress::Running,
                    message,
                } => {
                    if s.status == TaskStatus::Assigned {
                        s.set_status(TaskStatus::Running)?;
                        if let Some(c) = s.claim.as_mut() {
                            c.started_at = Some(ctx.now());
                        }
                        notes.push(format!("agent {} started", claim.agent));
                    }
                    if let Some(text) = message.filter(|t| !t.trim().is_empty()) {
                        notes.push(format!("agent {}: {text}", claim.agent));
                    }
                    s.last_activity_at = Some(ctx.now());
                    let note = "running".to_string();
                    ctx.reply(
                        m.seq,
                        &PullReply::Done {
                            status: s.status,
                            note,
                        },
                    )?;
                }
                FromAgent::Status {
                    progress: AgentProgress::Failed,
                    message,
                } => {
                    let reason = format!(
                        "agent {} reported failure: {}",
                        claim.agent,
                        message.unwrap_or_else(|| "no reason given".into())
                    );
                    self.rt.board().release(claim.agent_id, id);
                    s.claim = None;
                    s.assigned_agent = None;
                    // Routed again like a new task (hosts and agents), not left to agents.
                    s.mode = ExecutionMode::Undecided;
                    let outcome = self.run_failed(ctx, s, reason, false);
                    let reply = PullReply::Done {
                        status: outcome.state.status,
                        note: outcome.note.clone().unwrap_or_default(),
                    };
                    ctx.reply(m.seq, &reply)?;
                    return Ok(outcome);
                }
                FromAgent::Complete { summary } => {
                    if matches!(s.spec.source, Source::Forge { .. }) {
                        let r = PullReply::refused(
                            Refusal::Invalid,
                            format!(
                                "task {id} comes from a forge issue: report its receipt (POST /receipts)"
                            ),
                        );
                        ctx.reply(m.seq, &r)?;
                        continue;
                    }
                    s.agent_report = Some(AgentReport {
                        agent_id,
                        agent: claim.agent.clone(),
                        epoch,
                        received_at: ctx.now(),
                        summary,
                        receipt: None,
                        verified: false,
                        verification: "completed on the agent's report: no receipt to check".into(),
                    });
                    let note = format!(
                        "completed by agent {} (no receipt: on its report)",
                        claim.agent
                    );
                    return self.pull_completed(ctx, s, &claim, m.seq, note);
                }
                FromAgent::Receipt(receipt) => match self.check_receipt(id, &s, &receipt).await {
                    Checked::Refused(why) => {
                        notes.push(format!("receipt refused: {why}"));
                        ctx.reply(m.seq, &PullReply::refused(Refusal::Invalid, why))?;
                    }
                    Checked::Verified(r, how) => {
                        s.agent_report =
                            Some(report(&claim, ctx.now(), receipt, true, how.clone()));
                        s.receipt = Some(*r);
                        let note = format!("receipt verified: {how}");
                        return self.pull_completed(ctx, s, &claim, m.seq, note);
                    }
                    Checked::Unverifiable(why) => {
                        s.agent_report =
                            Some(report(&claim, ctx.now(), receipt, false, why.clone()));
                        if self.rt.config().dispatch.accept_unverified_receipts {
                            let note = format!("receipt accepted unverified ({why})");
                            return self.pull_completed(ctx, s, &claim, m.seq, note);
                        }
                        self.rt.board().release(claim.agent_id, id);
                        let reason = format!(
                            "the receipt could not be verified ({why}); it is kept on the task. \
                                 Set dispatch.accept_unverified_receipts = true to accept such receipts"
                        );
                        let outcome = self.give_up(ctx, s, reason);
                        let reply = PullReply::Done {
                            status: outcome.state.status,
                            note: outcome.note.clone().unwrap_or_default(),
                        };
                        ctx.reply(m.seq, &reply)?;
                        return Ok(outcome);
                    }
                },
            }
        }
        let board = self.rt.board();
        let outcome = match board.agent(claim.agent_id) {
            Some(a) if a.liveness(ctx.now()) == Liveness::Online => {
                Outcome::wait_until(s, a.lease_until)
            }
            Some(a) => {
                let reason = match a.liveness(ctx.now()) {
                    Liveness::Deregistered => format!("agent {} deregistered", a.name),
                    _ => format!(
                        "agent {} missed {} heartbeats",
                        a.name,
                        self.rt.config().dispatch.heartbeat_misses
                    ),
                };
                self.agent_lost(ctx, s, &claim, reason)
            }
            None => {
                let reason = format!("agent {} is no longer registered", claim.agent);
                self.agent_lost(ctx, s, &claim, reason)
            }
        };
        Ok(if notes.is_empty() {
            outcome
        } else {
            let note = match &outcome.note {
                Some(n) => format!("{}; {n}", notes.join("; ")),
                None => notes.join("; "),
            };
            outcome.note(note)
        })
    }

    fn pull_completed(
        &self,
        ctx: &mut StepCtx<TaskSignal>,
        mut s: TaskState,
        claim: &Claim,
        seq: u64,
        note: String,
    ) -> StepResult<TaskState> {
        if s.status == TaskStatus::Assigned {
            s.set_status(TaskStatus::Running)?;
        }
        s.failure = None;
        s.last_activity_at = Some(ctx.now());
        self.rt.board().release(claim.agent_id, ctx.instance());
        if s.forge.is_some() && self.rt.forge().is_some() {
            // The pull request is opened next; the agent's part is done.
            s.phase = Phase::Publish;
            let note = format!("{note}; the pull request is opened next");
            ctx.reply(
                seq,
                &PullReply::Done {
                    status: s.status,
                    note: note.clone(),
                },
            )?;
            return Ok(Outcome::next(s).note(note));
        }
        s.set_status(TaskStatus::Completed)?;
        s.phase = Phase::Settled;
        ctx.reply(
            seq,
            &PullReply::Done {
                status: s.status,
                note: note.clone(),
            },
        )?;
        Ok(Outcome::complete(s).note(note))
    }

    /// The holding agent is gone: the task is `agent_lost`, then retried (attempt + 1, after
    /// the backoff) under the retry policy.
    fn agent_lost(
        &self,
        ctx: &StepCtx<TaskSignal>,
        mut s: TaskState,
        claim: &Claim,
        reason: String,
    ) -> Outcome<TaskState> {
        self.rt.board().release(claim.agent_id, ctx.instance());
        if s.status.can_move_to(TaskStatus::AgentLost) {
            s.status = TaskStatus::AgentLost;
        }
        s.claim = None;
        s.assigned_agent = None;
        // Routed again like a new task after the backoff (hosts and agents): left in
        // `http_pull`, it would wait for another agent while hosts sit idle.
        s.mode = ExecutionMode::Undecided;
        let reason = format!("agent_lost: {reason} (claim epoch {})", claim.epoch);
        self.run_failed(ctx, s, reason, false)
    }

    /// Checks a receipt against the repository itself.
    async fn check_receipt(&self, id: u64, s: &TaskState, r: &ReceiptClaim) -> Checked {
        let branch = match self.rt.names() {
            Ok(names) => names.branch(id),
            Err(e) => return Checked::Unverifiable(e.0),
        };
        if r.branch != branch {
            return Checked::Refused(format!(
                "the receipt names branch `{}`; this task's work belongs on `{branch}`",
                r.branch
            ));
        }
        if r.commits.is_empty() {
            return Checked::Refused("a receipt lists at least one commit".into());
        }
        let shell = self.rt.daemon_shell();
        let root = self.rt.receipts_root();
        let read =
            workspace::pushed_work(&shell, &root, &s.spec.repo, s.spec.base.as_deref(), &branch)
                .await;
        let (base, base_sha, work) = match read {
            Ok(w) => w,
            Err(WorkspaceError::NoBranch { .. }) => {
                return Checked::Refused(format!(
                    "the repository has no branch `{branch}`: push it before reporting"
                ));
            }
            Err(e) => return Checked::Unverifiable(format!("cannot read the repository: {e}")),
        };
        if work.commits.is_empty() {
            return Checked::Refused(format!(
                "`{branch}` has no commit ahead of {base}: nothing was delivered"
            ));
        }
        for c in &r.commits {
            let known = c.len() >= 7
                && work
                    .commits
                    .iter()
                    .any(|(sha, _)| sha.starts_with(c.as_str()));
            if !known {
                return Checked::Refused(format!(
                    "commit `{c}` is not on `{branch}` ahead of {base}"
                ));
            }
        }
        let mut how = format!(
            "{} commit(s) on {branch} ahead of {base}@{}, head {}",
            work.commits.len(),
            &base_sha[..base_sha.len().min(7)],
            &work.head_sha[..work.head_sha.len().min(7)]
        );
        if let Some(pr) = r.pr_number {
            how.push_str(&format!("; PR #{pr} not checked: no forge is configured"));
        }
        Checked::Verified(
            Box::new(Receipt {
                branch,
                base,
                base_sha,
                work,
                summary: r.summary.clone(),
                cost_usd: None,
                verified_at: Timestamp::now(),
            }),
            how,
        )
    }
}

/// The agent's receipt as kept on the task, with what checking it found.
fn report(
    claim: &Claim,
    at: Timestamp,
    receipt: ReceiptClaim,
    verified: bool,
    verification: String,
) -> AgentReport {
    AgentReport {
        agent_id: claim.agent_id,
        agent: claim.agent.clone(),
        epoch: claim.epoch,
        received_at: at,
        summary: receipt.summary.clone(),
        receipt: Some(receipt),
        verified,
        verification,
    }
}

/// What checking a receipt found.
enum Checked {
    Verified(Box<Receipt>, String),
    /// Wrong: the agent is told why and may report again.
    Refused(String),
    /// Could not be checked (the repository cannot be read from the daemon).
    Unverifiable(String),
}
