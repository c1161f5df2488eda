//! The JSON shapes of the pull-agent routes: registration, heartbeats, dequeue and leases,
//! status, completion and receipts, the agent list and `assign`. Each derives [`ToSchema`] for
//! `GET /openapi.json`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::steps::agent_task::TaskState;
use crate::steps::names::TaskNames;
use crate::steps::pull::{AgentEntry, Board};
use crate::workflow::Timestamp;

use super::views::rfc3339;

/// `POST /agents/register`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Stable name: registering the same name again updates that agent (and rotates its token).
    pub name: String,
    /// Agent kinds it runs (`claude`, `codex`, …).
    pub agent_kinds: Vec<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default = "one")]
    pub max_concurrent: u32,
}

fn one() -> u32 {
    1
}

/// The answer to a registration: the only time the token is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub agent_id: u64,
    pub name: String,
    /// Bearer token for the agent routes; stored by the daemon only as a hash.
    pub token: String,
    pub heartbeat_interval_seconds: u64,
    pub lease_expires_at: String,
}

/// `POST /agents/heartbeat` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAnswer {
    pub agent_id: u64,
    /// `online`.
    pub status: String,
    pub lease_expires_at: String,
    /// Tasks this agent holds (also those whose dequeue answer it may have lost).
    pub tasks: Vec<u64>,
    /// The same tasks with the epoch of the claim (to report on a task whose dequeue answer
    /// was lost).
    pub held: Vec<HeldTask>,
}

/// A task an agent holds, and its claim epoch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeldTask {
    pub task_id: u64,
    pub epoch: u64,
}

/// `POST /agents/deregister` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deregistered {
    pub agent_id: u64,
    /// `deregistered`.
    pub status: String,
    /// Tasks it held, now back in the queue.
    pub requeued: Vec<u64>,
}

/// One pull agent in `GET /agents`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    pub agent_id: u64,
    pub name: String,
    /// `online`, `offline` or `deregistered`.
    pub status: String,
    pub agent_kinds: Vec<String>,
    pub capabilities: Vec<String>,
    pub max_concurrent: u32,
    pub tasks: Vec<u64>,
    pub registered_at: String,
    pub last_heartbeat: String,
    pub lease_expires_at: String,
}

impl AgentView {
    pub fn of(a: &AgentEntry, board: &Board, now: Timestamp) -> Self {
        AgentView {
            agent_id: a.id,
            name: a.name.clone(),
            status: a.liveness(now).as_str().to_string(),
            agent_kinds: a.kinds.clone(),
            capabilities: a.capabilities.clone(),
            max_concurrent: a.max_concurrent,
            tasks: board.held(a.id),
            registered_at: rfc3339(a.registered_at),
            last_heartbeat: rfc3339(a.last_heartbeat),
            lease_expires_at: rfc3339(a.lease_until),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

/// `POST /tasks/dequeue` body (optional).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DequeueRequest {}

/// A claimed task, as its agent sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PulledTask {
    pub id: String,
    pub title: String,
    pub body: String,
    pub repo: String,
    /// Branch the work starts from; `null` = the repository's default branch.
    pub base: Option<String>,
    /// Where the work must be pushed (the receipt names it).
    pub branch: String,
    pub labels: Vec<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[schema(value_type = super::views::PriorityName)]
    pub priority: String,
    pub agent_kind: String,
    pub capabilities: Vec<String>,
    pub file_scope: Vec<String>,
    pub validation: Vec<String>,
    pub attempt: u32,
    /// The structured prompt (goal, context, constraints, file scope, validation).
    pub prompt: String,
}

impl PulledTask {
    pub fn of(names: TaskNames, id: u64, s: &TaskState) -> Self {
        let branch = names.branch(id);
        let base = s.spec.base.clone();
        let prompt = crate::steps::prompt::build(&crate::steps::prompt::PromptInput {
            task_id: id,
            title: &s.spec.title,
            body: &s.spec.body,
            branch: &branch,
            base: base.as_deref().unwrap_or("the default branch"),
            file_scope: &s.spec.file_scope,
            validation: &s.spec.validation,
            labels: &s.spec.labels,
            attempt: s.attempt,
            previous_failure: s.failure.as_deref(),
            review_feedback: &[],
            pull: true,
        });
        PulledTask {
            id: id.to_string(),
            title: s.spec.title.clone(),
            body: s.spec.body.clone(),
            repo: s.spec.repo.clone(),
            base,
            branch,
            labels: s.spec.labels.clone(),
            kind: s.spec.kind.clone(),
            priority: s.spec.priority.to_string(),
            agent_kind: s.spec.agent.clone(),
            capabilities: s.spec.capabilities.clone(),
            file_scope: s.spec.file_scope.clone(),
            validation: s.spec.validation.clone(),
            attempt: s.attempt,
            prompt,
        }
    }
}

/// The claim an agent holds: its fencing epoch and how long it lasts without a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    pub epoch: u64,
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Dequeued {
    pub task: PulledTask,
    pub lease: Lease,
}

/// `POST /tasks/{id}/status`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    pub epoch: u64,
    /// `running` (also as a progress report) or `failed`.
    pub status: String,
    #[serde(default)]
    pub message: Option<String>,
}

/// `POST /tasks/{id}/complete`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub epoch: u64,
    #[serde(default)]
    pub summary: String,
}

/// `POST /receipts`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptRequest {
    pub task_id: u64,
    pub epoch: u64,
    pub branch: String,
    pub commits: Vec<String>,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub pr_number: Option<u64>,
    #[serde(default)]
    pub pr_url: Option<String>,
}

/// The answer to a status, completion or receipt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskAnswer {
    pub task_id: String,
    /// The task's status after the message, or `refused` (the note says why).
    pub status: String,
    pub note: String,
    /// For receipts: whether it was checked against the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
}

/// `POST /tasks/{id}/assign`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    #[serde(default)]
    pub agent_id: Option<u64>,
    #[serde(default)]
    pub host_id: Option<String>,
    /// `ssh_cli` (with `host_id`) or `http_pull` (with `agent_id`); inferred when absent.
    #[serde(default)]
    pub execution_mode: Option<String>,
}
