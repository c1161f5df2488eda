//! The agent-task state as version 2 of the workflow stored it (pull mode, before the forge),
//! frozen: instances pinned to version 2 are read through it and upgraded (see
//! `Workflow::upgrade` on [`AgentTask`](super::agent_task::AgentTask)). Never change this
//! struct; the types it embeds have only grown at their ends (new enum variants), which
//! postcard still reads.

use serde::{Deserialize, Serialize};

use crate::workflow::Timestamp;

use super::agent_task::{Phase, Receipt};
use super::pull_mode::{AgentReport, Claim, Pin};
use super::task::{ExecutionMode, TaskSpec, TaskStatus};
use super::task_v3::{RunV3, TaskStateV3};
use super::workspace::Workspace;

/// `TaskState` of definition version 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStateV2 {
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
}

impl From<TaskStateV2> for TaskStateV3 {
    fn from(v2: TaskStateV2) -> Self {
        TaskStateV3 {
            spec: v2.spec,
            status: v2.status,
            mode: v2.mode,
            phase: v2.phase,
            assigned_host: v2.assigned_host,
            assigned_agent: v2.assigned_agent,
            attempt: v2.attempt,
            review_count: v2.review_count,
            workspace: v2.workspace,
            runs: v2.runs,
            receipt: v2.receipt,
            failure: v2.failure,
            undecided_since: v2.undecided_since,
            created_at: v2.created_at,
            updated_at: v2.updated_at,
            last_activity_at: v2.last_activity_at,
            claim: v2.claim,
            epoch: v2.epoch,
            pin: v2.pin,
            agent_report: v2.agent_report,
            forge: None,
        }
    }
}
