//! The JSON shapes of the task API, shared by the handlers (which build them from workflow state)
//! and the command-line client (which reads them). Times are RFC 3339 strings.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/tasks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
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
    pub priority: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub file_scope: Vec<String>,
    #[serde(default)]
    pub validation: Vec<String>,
    /// A resubmission with the same key answers the task already created.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    pub id: String,
    pub title: String,
    pub body: String,
    pub status: String,
    pub execution_mode: String,
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
    pub attempt: u32,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// The verified evidence of a task's work.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitView {
    pub sha: String,
    pub subject: String,
}

/// One entry of a task's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    pub seq: u64,
    pub at: String,
    /// `started`, `step`, `signal`, `error`, `cancel`, … (the engine's event kinds).
    pub kind: String,
    pub text: String,
}

/// `GET /api/v1/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_after: Option<String>,
}

/// `GET /api/v1/tasks/{id}/events?after=SEQ`: what `task watch` polls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventPage {
    pub status: String,
    /// True once the task is `completed`, `failed` or `cancelled`.
    pub settled: bool,
    pub events: Vec<EventView>,
}

/// `POST /api/v1/tasks/{id}/signals`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// For example `{"type": "retry"}` or `{"type": "note", "text": "…"}`.
    pub signal: serde_json::Value,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalAnswer {
    pub seq: u64,
    pub duplicate: bool,
}

/// `POST /api/v1/tasks/{id}/cancel`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    #[serde(default)]
    pub reason: Option<String>,
}
