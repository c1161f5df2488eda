//! The JSON shapes of the task API, shared by the handlers (which build them from workflow state)
//! and the command-line client (which reads them). Times are RFC 3339 strings.
//!
//! Each shape derives [`ToSchema`]: `GET /openapi.json` describes exactly these types (see
//! [`super`] for how a route gets documented). Fields that hold one of a fixed set of names
//! (task status, priority) are documented with a schema built from the code's own list
//! ([`TaskStatusName`], [`PriorityName`]), so the document cannot drift from it.

use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// `POST /api/v1/tasks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// Not blank; at most 1024 bytes.
    #[schema(min_length = 1, max_length = 1024)]
    pub title: String,
    #[serde(default)]
    pub body: String,
    /// Local path or git URL; defaults to `dispatch.default_repo`.
    #[serde(default)]
    pub repo: Option<String>,
    /// Branch to start from; defaults to the repository's default branch.
    #[serde(default)]
    pub base: Option<String>,
    /// Agent kind; defaults to the first agent kind of the config.
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    /// `low`, `normal` (default), `high` or `urgent`.
    #[serde(default)]
    #[schema(value_type = Option<PriorityName>)]
    pub priority: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub file_scope: Vec<String>,
    #[serde(default)]
    pub validation: Vec<String>,
    /// A resubmission with the same key answers the task already created (1 to 251 bytes).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 251)]
    pub idempotency_key: Option<String>,
}

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub id: String,
    pub title: String,
    pub body: String,
    #[schema(value_type = TaskStatusName)]
    pub status: String,
    /// `undecided`, `ssh_cli` or `http_pull`.
    pub execution_mode: String,
    #[schema(value_type = PriorityName)]
    pub priority: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub labels: Vec<String>,
    pub agent: String,
    pub capabilities: Vec<String>,
    pub repo: String,
    pub source: String,
    pub assigned_host: Option<String>,
    pub assigned_agent: Option<String>,
    pub branch_name: String,
    pub pr_number: Option<u64>,
    pub pr_title: Option<String>,
    /// The pull request's page on the forge.
    #[serde(default)]
    pub pr_url: Option<String>,
    /// Whether the forge shows the pull request merged (verified at completion).
    #[serde(default)]
    pub pr_merged: bool,
    pub attempt: u32,
    /// Claims by pull agents so far (the fencing epoch of the last one).
    #[serde(default)]
    pub claim_epoch: u64,
    pub review_count: u32,
    pub created_at: String,
    pub updated_at: String,
    pub last_activity_at: Option<String>,
    /// Why the task failed or was cancelled.
    pub failure: Option<String>,
    pub runs: Vec<RunView>,
    pub receipt: Option<ReceiptView>,
    /// Only in `GET /tasks/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventView>>,
}

/// One launch of an agent CLI.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub run_id: String,
    pub host: String,
    pub agent: String,
    pub attempt: u32,
    pub run_dir: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub exit_code: Option<i32>,
    /// `running`, `succeeded`, `failed`, `timed_out`, `lost` or `cancelled`.
    pub outcome: String,
    pub summary: Option<String>,
    pub session_id: Option<String>,
    pub turns: Option<u32>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub files_changed: Vec<String>,
    pub notes: Vec<String>,
    /// Why the run failed: `agent`, `auth`, `config`, `permission`, `transient` or
    /// `usage_limit`; absent for a run that did not fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<String>,
    /// For a usage limit: until when its agent kind is paused on its host (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
}

/// The verified evidence of a task's work.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReceiptView {
    pub branch: String,
    pub base: String,
    pub base_sha: String,
    pub head_sha: String,
    pub commits: Vec<CommitView>,
    pub files_changed: Vec<String>,
    pub summary: String,
    pub cost_usd: Option<f64>,
    pub verified_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommitView {
    pub sha: String,
    pub subject: String,
}

/// One entry of a task's history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub seq: u64,
    pub at: String,
    /// `started`, `step`, `signal`, `error`, `cancel`, … (the engine's event kinds).
    pub kind: String,
    pub text: String,
}

/// `GET /api/v1/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_after: Option<String>,
}

/// `GET /api/v1/tasks/{id}/events?after=SEQ`: what `task watch` polls.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    #[schema(value_type = TaskStatusName)]
    pub status: String,
    /// True once the task is `completed`, `failed` or `cancelled`.
    pub settled: bool,
    pub events: Vec<EventView>,
}

/// One row of the engine's change feed: the `data:` of each event of `GET /api/v1/events`. A
/// committed change of a workflow instance (a task, or the daemon's own workflows); the
/// instance's history holds the details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FeedRowView {
    /// The row's number (the event's `id:`): rows come in this order, without gaps.
    pub seq: u64,
    /// The instance's id: for `agent-task` rows, the task's id (what `?task=` filters on).
    pub task: String,
    /// `agent-task`, `forge-sync`, `host`, `pull-agent` or `workspace-gc`.
    pub workflow: String,
    /// The instance's status after the change, as the engine has it: `runnable`, `waiting`,
    /// `sleeping`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Where the instance is after a start or a step, in its workflow's words (a task's status,
    /// e.g. `running`); absent on the other rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// What changed (the event's `event:`).
    #[schema(value_type = FeedKindName)]
    pub kind: String,
    /// `step`: `continue`, `wait`, `retry`, `complete`, `fail`, `cancelled` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// `signal`: the signal's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `cancel_requested`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `effect_delivered`, `effect_abandoned`: the effect's kind (`forge.labels`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// `effect_abandoned`: the last delivery error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the change's transaction began (stored with the row), in ms.
    pub at: String,
    /// When its commit was durable, in µs: present on rows this daemon committed recently (its
    /// last 4,096 commits that changed something), absent on older ones. `at` to `durable_at`
    /// is the commit's own time (mostly the disk's flush); `durable_at` to the moment a client
    /// reads the event is how long the feed took to deliver it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_at: Option<String>,
}

/// `POST /api/v1/tasks/{id}/signals`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// For example `{"type": "retry"}` or `{"type": "note", "text": "…"}`. Read as a
    /// [`SignalJson`] after the body's shape is checked, so that an unknown signal type is a 422
    /// that names it.
    #[schema(value_type = SignalJson)]
    pub signal: serde_json::Value,
    /// A repeated key is the same signal (1 to 256 bytes).
    #[schema(min_length = 1, max_length = 256)]
    pub idempotency_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignalAnswer {
    pub seq: u64,
    pub duplicate: bool,
}

/// `POST /api/v1/tasks/{id}/retry` (the body is optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Start from a fresh agent session instead of resuming the last one.
    #[serde(default)]
    pub fresh: bool,
}

/// `POST /api/v1/tasks/{id}/cancel`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// From the workflow's records to the views
/// `GET /api/v1/hosts`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostList {
    pub hosts: Vec<HostView>,
}

/// One host: where it is, its load and health, its agent CLIs and its recent health events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    pub host_id: String,
    pub hostname: String,
    pub port: Option<u16>,
    pub local: bool,
    pub proxy_jump: Option<String>,
    /// `unchecked`, `online` or `offline`.
    pub health: String,
    /// Why it is offline.
    pub reason: Option<String>,
    pub latency_ms: Option<u64>,
    pub checked_at: Option<String>,
    pub running: usize,
    pub max_concurrent: usize,
    pub agents: Vec<HostAgentView>,
    pub events: Vec<EventView>,
}

/// An agent kind on a host, as its last check found it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostAgentView {
    pub kind: String,
    pub program: Option<String>,
    /// Whether the check found the program; `None` before the first check.
    pub found: Option<bool>,
    pub path: Option<String>,
    pub version: Option<String>,
    /// Set when the version found is outside the range the kind is tested with.
    pub version_warning: Option<String>,
    /// Until when a usage limit pauses this kind here (RFC 3339), if one does.
    pub paused_until: Option<String>,
    /// The usage limit's message.
    pub pause_reason: Option<String>,
    /// Flags of the kind's templates the CLI does not take (the kind is not routed here).
    #[serde(default)]
    pub problems: Vec<String>,
}

impl HostAgentView {
    /// The view of agent kind `kind` on a host: what its check found (`found` is `None` when
    /// the check did not run to its end), its configuration, and the pause in force.
    pub fn new(
        kind: &str,
        probe: Option<&AgentCheck>,
        found: Option<bool>,
        config: Option<&AgentConfig>,
        pause: Option<&Pause>,
    ) -> Self {
        let version = probe.and_then(|a| a.version.clone());
        let version_warning = match (config, &version) {
            (Some(c), Some(v)) => c.version_warning(v),
            _ => None,
        };
        HostAgentView {
            kind: kind.to_string(),
            program: probe.map(|a| a.program.clone()),
            found,
            path: probe.and_then(|a| a.path.clone()),
            version,
            version_warning,
            paused_until: pause.map(|p| rfc3339(p.until)),
            pause_reason: pause.map(|p| p.reason.clone()),
            problems: Vec::new(),
        }
    }
}

/// Every error answer: `{"error": {"code", "message"}}` (what [`super::ApiError`] writes).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `bad_request`, `unauthorized`, `not_found`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `unprocessable`, `recovering`, …
    pub code: String,
    /// For humans.
    pub message: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`: `ready` with what recovery found, or `recovering` or `failed` (with a 503).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub status: ReadyStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryView>,
    /// Why the store failed (with `failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Ended tasks (or other instances) whose stored record cannot be read: left untouched in
    /// the store, never run; the daemon works on without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<UnreadableView>,
}

/// An ended instance whose record cannot be read.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UnreadableView {
    pub id: u64,
    /// What failed to decode, and why.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ready,
    Recovering,
    /// A commit failed (disk full, I/O error): the daemon takes no more work and exits, to be
    /// restarted.
    Failed,
}

/// What the engine found when it opened the store.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecoveryView {
    /// Unfinished instances read.
    pub instances: u64,
    pub runnable: u64,
    pub parked: u64,
    pub terminal: u64,
    pub pending_effects: u64,
    pub elapsed_ms: u64,
}

/// The schema of a task status: one of the names of `TaskStatus::ALL`.
pub struct TaskStatusName;

impl PartialSchema for TaskStatusName {
    fn schema() -> RefOr<Schema> {
        names(TaskStatus::ALL.map(TaskStatus::as_str), "A task's status.")
    }
}

impl ToSchema for TaskStatusName {}

/// The schema of a priority: one of the names of `Priority::ALL`.
pub struct PriorityName;

impl PartialSchema for PriorityName {
    fn schema() -> RefOr<Schema> {
        names(Priority::ALL.map(Priority::as_str), "A task's priority.")
    }
}

impl ToSchema for PriorityName {}

/// The schema of a change feed row's kind: one of `FeedEvent::KINDS`.
pub struct FeedKindName;

impl PartialSchema for FeedKindName {
    fn schema() -> RefOr<Schema> {
        names(
            FeedEvent::KINDS.iter().copied(),
            "What a change feed row records.",
        )
    }
}

impl ToSchema for FeedKindName {}

/// A string schema that allows exactly `names`.
fn names(names: impl IntoIterator<Item = &'static str>, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names))
        .description(Some(description))
        .into()
}

// ---------------------------------------------------------------------------------------------

use std::time::{Duration, SystemTime};

use crate::config::AgentConfig;
use crate::steps::agent_task::{Run, RunOutcome, TaskSignal};
use crate::steps::dispatch::{Health, Pause};
use crate::steps::hosts::{AgentCheck, HostReport};
use crate::steps::parse::FailureKind;
use crate::steps::task::{Priority, Source, TaskStatus};
use crate::steps::tasks::TaskRecord;
use crate::workflow::{Event, EventKind, FeedEvent, FeedRow, RecoveryReport, Timestamp};

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(t.0))
        .to_string()
}

impl From<&TaskRecord> for TaskView {
    fn from(r: &TaskRecord) -> Self {
        let s = &r.state;
        let pr = s.forge.as_ref().and_then(|f| f.pr.as_ref());
        TaskView {
            id: r.id.to_string(),
            title: s.spec.title.clone(),
            body: s.spec.body.clone(),
            status: r.status().to_string(),
            execution_mode: s.mode.to_string(),
            priority: s.spec.priority.to_string(),
            kind: s.spec.kind.clone(),
            // A forge task shows its issue's labels as last seen.
            labels: s
                .forge
                .as_ref()
                .map_or_else(|| s.spec.labels.clone(), |f| f.labels.clone()),
            agent: s.spec.agent.clone(),
            capabilities: s.spec.capabilities.clone(),
            repo: s.spec.repo.clone(),
            source: match &s.spec.source {
                Source::Api => "api".to_string(),
                Source::Forge { repo, issue } => format!("{repo}#{issue}"),
            },
            assigned_host: s.assigned_host.clone(),
            assigned_agent: s.assigned_agent.clone(),
            branch_name: r.branch.clone(),
            pr_number: pr.map(|p| p.number),
            pr_title: pr.map(|p| p.title.clone()),
            pr_url: pr.map(|p| p.url.clone()),
            pr_merged: pr.is_some_and(|p| p.merged),
            attempt: s.attempt,
            claim_epoch: s.epoch,
            review_count: s.review_count,
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(r.info.updated),
            last_activity_at: s.last_activity_at.map(rfc3339),
            failure: r.failure(),
            runs: s
                .runs
                .iter()
                .map(|run| {
                    let mut view = RunView::from(run);
                    // A cancel stops the run without a step to record it: the task says so.
                    if r.status() == TaskStatus::Cancelled && run.outcome == RunOutcome::Running {
                        view.outcome = "cancelled".to_string();
                    }
                    view
                })
                .collect(),
            receipt: s.receipt.as_ref().map(|rc| ReceiptView {
                branch: rc.branch.clone(),
                base: rc.base.clone(),
                base_sha: rc.base_sha.clone(),
                head_sha: rc.work.head_sha.clone(),
                commits: rc
                    .work
                    .commits
                    .iter()
                    .map(|(sha, subject)| CommitView {
                        sha: sha.clone(),
                        subject: subject.clone(),
                    })
                    .collect(),
                files_changed: rc.work.files_changed.clone(),
                summary: rc.summary.clone(),
                cost_usd: rc.cost_usd,
                verified_at: rfc3339(rc.verified_at),
            }),
            events: r.history.as_ref().map(|h| {
                h.iter()
                    .map(|(seq, e)| EventView::from_event(*seq, e))
                    .collect()
            }),
        }
    }
}

impl From<&Run> for RunView {
    fn from(r: &Run) -> Self {
        let rep = r.report.as_ref();
        RunView {
            run_id: r.run_id.clone(),
            host: r.host.clone(),
            agent: r.agent.clone(),
            attempt: r.attempt,
            run_dir: r.run_dir.clone(),
            started_at: rfc3339(r.started_at),
            ended_at: r.ended_at.map(rfc3339),
            exit_code: r.exit_code,
            outcome: r.outcome.as_str().to_string(),
            summary: rep.map(|x| x.summary.clone()),
            session_id: rep.and_then(|x| x.session_id.clone()),
            turns: rep.and_then(|x| x.turns),
            input_tokens: rep.and_then(|x| x.input_tokens),
            output_tokens: rep.and_then(|x| x.output_tokens),
            cost_usd: rep.and_then(|x| x.cost_usd),
            files_changed: rep.map(|x| x.files_changed.clone()).unwrap_or_default(),
            notes: rep.map(|x| x.notes.clone()).unwrap_or_default(),
            failure_kind: rep.and_then(|x| x.kind).map(|k| k.as_str().to_string()),
            paused_until: rep
                .filter(|x| x.kind == Some(FailureKind::UsageLimit))
                .and_then(|x| x.retry_at_ms)
                .map(|ms| rfc3339(Timestamp(ms))),
        }
    }
}

impl From<&FeedRow> for FeedRowView {
    fn from(r: &FeedRow) -> Self {
        let mut view = FeedRowView {
            seq: r.seq,
            task: r.instance.to_string(),
            workflow: r.workflow.clone(),
            status: r.status.as_str().to_string(),
            phase: r.phase.clone(),
            kind: r.event.kind().to_string(),
            outcome: None,
            key: None,
            reason: None,
            effect: None,
            error: None,
            at: rfc3339(r.at),
            durable_at: r
                .durable_at
                .map(|t| humantime::format_rfc3339_micros(t).to_string()),
        };
        match &r.event {
            FeedEvent::Started | FeedEvent::Timer | FeedEvent::Woken => {}
            FeedEvent::Step { outcome } => view.outcome = Some(outcome.clone()),
            FeedEvent::Signal { key } => view.key = Some(key.clone()),
            FeedEvent::CancelRequested { reason } => view.reason = Some(reason.clone()),
            FeedEvent::EffectDelivered { kind } => view.effect = Some(kind.clone()),
            FeedEvent::EffectAbandoned { kind, error } => {
                view.effect = Some(kind.clone());
                view.error = Some(error.clone());
            }
        }
        view
    }
}

impl From<&RecoveryReport> for RecoveryView {
    fn from(r: &RecoveryReport) -> Self {
        RecoveryView {
            instances: r.instances,
            runnable: r.runnable,
            parked: r.parked,
            terminal: r.terminal,
            pending_effects: r.pending_effects,
            elapsed_ms: r.elapsed_ms,
        }
    }
}

impl EventView {
    pub fn from_event(seq: u64, e: &Event) -> Self {
        let (kind, text) = match &e.kind {
            EventKind::Started { workflow, version } => {
                ("started", format!("{workflow} v{version}"))
            }
            EventKind::Step {
                step,
                outcome,
                note,
            } => (
                "step",
                match note {
                    Some(n) => format!("#{step} {outcome}: {n}"),
                    None => format!("#{step} {outcome}"),
                },
            ),
            EventKind::StepError {
                step,
                error,
                retry_in_ms,
            } => (
                "error",
                format!("#{step} {error} (again in {retry_in_ms} ms)"),
            ),
            EventKind::SignalReceived { seq, key } => {
                ("signal", format!("signal {seq} received (key {key})"))
            }
            EventKind::SignalConsumed { seq } => ("signal", format!("signal {seq} handled")),
            EventKind::SignalDiscarded { seq, error } => {
                ("signal", format!("signal {seq} discarded: {error}"))
            }
            EventKind::TimerFired { due } => {
                ("timer", format!("timer due {} fired", rfc3339(*due)))
            }
            EventKind::EffectQueued { effect, kind } => {
                ("effect", format!("effect {effect} ({kind}) queued"))
            }
            EventKind::EffectDelivered { effect, attempts } => (
                "effect",
                format!("effect {effect} delivered after {attempts} attempt(s)"),
            ),
            EventKind::EffectAbandoned { effect, error } => {
                ("effect", format!("effect {effect} abandoned: {error}"))
            }
            EventKind::IntentRecorded { name } => ("intent", format!("intent `{name}` recorded")),
            EventKind::IntentResolved { name } => ("intent", format!("intent `{name}` resolved")),
            EventKind::CancelRequested { reason } => {
                ("cancel", format!("cancel requested: {reason}"))
            }
            EventKind::CleanedUp { report } => ("cancel", format!("cleanup: {report}")),
            EventKind::Completed => ("end", "completed".to_string()),
            EventKind::Failed { reason } => ("end", format!("failed: {reason}")),
            EventKind::Cancelled => ("end", "cancelled".to_string()),
        };
        EventView {
            seq,
            at: rfc3339(e.at),
            kind: kind.to_string(),
            text,
        }
    }
}

/// The JSON form of a [`TaskSignal`]: `{"type": "retry"}`, `{"type": "note", "text": "…"}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SignalJson {
    Retry,
    Note { text: String },
}

impl From<SignalJson> for TaskSignal {
    fn from(s: SignalJson) -> Self {
        match s {
            SignalJson::Retry => TaskSignal::Retry,
            SignalJson::Note { text } => TaskSignal::Note { text },
        }
    }
}

impl From<&HostReport> for HostView {
    fn from(r: &HostReport) -> Self {
        let c = &r.config;
        let agents = c
            .agents
            .iter()
            .map(|kind| {
                let probe = r
                    .check
                    .as_ref()
                    .and_then(|check| check.agents.iter().find(|a| &a.kind == kind));
                let found = r
                    .check
                    .as_ref()
                    .filter(|check| check.reachable)
                    .map(|_| probe.is_some_and(|a| a.path.is_some()));
                let config = r.kinds.iter().find(|k| &k.name == kind);
                let mut view =
                    HostAgentView::new(kind, probe, found, config, r.load.paused.get(kind));
                view.problems = r.problems.get(kind).cloned().unwrap_or_default();
                view
            })
            .collect();
        HostView {
            host_id: c.host_id.clone(),
            hostname: c.hostname.clone(),
            port: (!c.is_local()).then_some(c.port),
            local: c.is_local(),
            proxy_jump: c.proxy_jump.clone(),
            health: r.load.health.as_str().to_string(),
            reason: match &r.load.health {
                Health::Offline { reason } => Some(reason.clone()),
                _ => None,
            },
            latency_ms: r.check.as_ref().and_then(|c| c.latency_ms),
            checked_at: r.check.as_ref().map(|c| rfc3339(c.checked_at)),
            running: r.load.running,
            max_concurrent: r.load.max_concurrent,
            agents,
            events: r
                .events
                .iter()
                .map(|(seq, e)| EventView::from_event(*seq, e))
                .collect(),
        }
    }
}
