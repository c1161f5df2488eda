//! The agent-task state as version 1 of the workflow stored it, frozen: instances pinned to
//! version 1 are read through it and upgraded (see `Workflow::upgrade` on
//! [`AgentTask`](super::agent_task::AgentTask)) into version 2, then 3, then 4. Never change this struct; the types it
//! embeds have only grown at their ends (new enum variants), which postcard still reads.

use serde::{Deserialize, Serialize};

use crate::workflow::Timestamp;

use super::agent_task::{Phase, Receipt};
use super::task::{ExecutionMode, TaskSpec, TaskStatus};
use super::task_v2::TaskStateV2;
use super::task_v3::RunV3;
use super::workspace::Workspace;

/// `TaskState` of definition version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStateV1 {
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
}

impl From<TaskStateV1> for TaskStateV2 {
    fn from(v1: TaskStateV1) -> Self {
        TaskStateV2 {
            spec: v1.spec,
            status: v1.status,
            mode: v1.mode,
            phase: v1.phase,
            assigned_host: v1.assigned_host,
            assigned_agent: v1.assigned_agent,
            attempt: v1.attempt,
            review_count: v1.review_count,
            workspace: v1.workspace,
            runs: v1.runs,
            receipt: v1.receipt,
            failure: v1.failure,
            undecided_since: v1.undecided_since,
            created_at: v1.created_at,
            updated_at: v1.updated_at,
            last_activity_at: v1.last_activity_at,
            claim: None,
            epoch: 0,
            pin: None,
            agent_report: None,
        }
    }
}
