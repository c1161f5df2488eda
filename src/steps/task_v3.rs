//! The agent-task state as version 3 of the workflow stored it (the forge, before failure
//! kinds and resumed retries), frozen: instances pinned to version 3 (and older, through it)
//! are read through it and upgraded (see `Workflow::upgrade` on
//! [`AgentTask`](super::agent_task::AgentTask)). Never change these structs; the types they
//! embed have only grown at their ends (new enum variants), which postcard still reads.

use serde::{Deserialize, Serialize};

use crate::workflow::Timestamp;

use super::agent_task::{Phase, Receipt, Run, RunOutcome, TaskState};
use super::parse::{FailureKind, RunReport};
use super::pull_mode::{AgentReport, Claim, Pin};
use super::review::ForgeTask;
use super::task::{ExecutionMode, TaskSpec, TaskStatus};
use super::workspace::Workspace;

/// `RunReport` before failure kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReportV3 {
    pub success: bool,
    pub failure: Option<String>,
    pub summary: String,
    pub session_id: Option<String>,
    pub turns: Option<u32>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub files_changed: Vec<String>,
    pub pr_url: Option<String>,
    pub usage_limited: bool,
    pub notes: Vec<String>,
}

impl From<RunReportV3> for RunReport {
    fn from(r: RunReportV3) -> Self {
        let kind = match (r.success, r.usage_limited) {
            (true, _) => None,
            (false, true) => Some(FailureKind::UsageLimit),
            (false, false) => Some(FailureKind::Agent),
        };
        RunReport {
            success: r.success,
            failure: r.failure,
            summary: r.summary,
            session_id: r.session_id,
            turns: r.turns,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cache_write_tokens: r.cache_write_tokens,
            cost_usd: r.cost_usd,
            files_changed: r.files_changed,
            pr_url: r.pr_url,
            usage_limited: r.usage_limited,
            notes: r.notes,
            kind,
            retry_at_ms: None,
        }
    }
}

/// `Run` of definition versions 1 to 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunV3 {
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
    pub report: Option<RunReportV3>,
}

impl From<RunV3> for Run {
    fn from(r: RunV3) -> Self {
        Run {
            run_id: r.run_id,
            host: r.host,
            agent: r.agent,
            attempt: r.attempt,
            run_dir: r.run_dir,
            started_at: r.started_at,
            deadline: r.deadline,
            ended_at: r.ended_at,
            exit_code: r.exit_code,
            outcome: r.outcome,
            report: r.report.map(Into::into),
        }
    }
}

/// `TaskState` of definition version 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStateV3 {
    pub spec: TaskSpec,
    pub status: TaskStatus,
    pub mode: ExecutionMode,
    pub phase: Phase,
    pub assigned_host: Option<String>,
    pub assigned_agent: Option<String>,
    pub attempt: u32,
    pub review_count: u32,
    pub workspace: Option<Workspace>,
    pub runs: Vec<RunV3>,
    pub receipt: Option<Receipt>,
    pub failure: Option<String>,
    pub undecided_since: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub last_activity_at: Option<Timestamp>,
    pub claim: Option<Claim>,
    pub epoch: u64,
    pub pin: Option<Pin>,
    pub agent_report: Option<AgentReport>,
    pub forge: Option<ForgeTask>,
}

impl From<TaskStateV3> for TaskState {
    fn from(v3: TaskStateV3) -> Self {
        TaskState {
            spec: v3.spec,
            status: v3.status,
            mode: v3.mode,
            phase: v3.phase,
            assigned_host: v3.assigned_host,
            assigned_agent: v3.assigned_agent,
            attempt: v3.attempt,
            review_count: v3.review_count,
            workspace: v3.workspace,
            runs: v3.runs.into_iter().map(Into::into).collect(),
            receipt: v3.receipt,
            failure: v3.failure,
            undecided_since: v3.undecided_since,
            created_at: v3.created_at,
            updated_at: v3.updated_at,
            last_activity_at: v3.last_activity_at,
            claim: v3.claim,
            epoch: v3.epoch,
            pin: v3.pin,
            agent_report: v3.agent_report,
            forge: v3.forge,
            fresh: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::agent_task::AgentTask;
    use crate::steps::task::Priority;
    use crate::workflow::Workflow;
    use crate::workflow::codec;

    fn v3() -> TaskStateV3 {
        let spec = TaskSpec {
            title: "t".into(),
            body: String::new(),
            repo: "/r".into(),
            base: None,
            agent: "claude".into(),
            capabilities: vec![],
            priority: Priority::Normal,
            kind: None,
            labels: vec![],
            file_scope: vec![],
            validation: vec![],
            source: crate::steps::task::Source::Api,
        };
        let report = RunReportV3 {
            success: false,
            failure: Some("API Error: 429".into()),
            summary: String::new(),
            session_id: Some("s-1".into()),
            turns: None,
            input_tokens: None,
            output_tokens: None,
            cache_read_tokens: None,
            cache_write_tokens: None,
            cost_usd: None,
            files_changed: vec![],
            pr_url: None,
            usage_limited: true,
            notes: vec![],
        };
        let run = RunV3 {
            run_id: "1-1".into(),
            host: "h".into(),
            agent: "claude".into(),
            attempt: 1,
            run_dir: "/w/.runs/1-1".into(),
            started_at: Timestamp(1),
            deadline: Timestamp(2),
            ended_at: Some(Timestamp(2)),
            exit_code: Some(1),
            outcome: RunOutcome::Failed,
            report: Some(report),
        };
        TaskStateV3 {
            spec,
            status: TaskStatus::Created,
            mode: ExecutionMode::SshCli,
            phase: Phase::Route,
            assigned_host: None,
            assigned_agent: None,
            attempt: 1,
            review_count: 0,
            workspace: None,
            runs: vec![run],
            receipt: None,
            failure: Some("API Error: 429".into()),
            undecided_since: None,
            created_at: Timestamp(1),
            updated_at: Timestamp(2),
            last_activity_at: None,
            claim: None,
            epoch: 0,
            pin: None,
            agent_report: None,
            forge: None,
        }
    }

    #[test]
    fn a_version_3_state_is_read_and_upgraded_with_its_runs_failure_kinds() {
        let bytes = codec::encode_value(&v3()).unwrap();
        let state = AgentTask::upgrade(3, &bytes).unwrap();
        let report = state.runs[0].report.as_ref().unwrap();
        assert_eq!(report.kind, Some(FailureKind::UsageLimit));
        assert_eq!(report.retry_at_ms, None);
        assert_eq!(report.session_id.as_deref(), Some("s-1"));
        assert!(!state.fresh);
        assert_eq!(state.failure.as_deref(), Some("API Error: 429"));
    }
}
