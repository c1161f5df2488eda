//! The task: what was asked (`TaskSpec`), where it stands (`TaskStatus`, `ExecutionMode`) and
//! which status changes are legal (SPEC §2). Stored inside the workflow state, so every type here
//! is postcard-friendly (no internally tagged enums, no skipped fields).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A task's status. Only the moves in [`TaskStatus::can_move_to`] are legal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskStatus {
    Created,
    Assigned,
    Running,
    ReviewPending,
    Completed,
    Failed,
    AgentLost,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Created,
        TaskStatus::Assigned,
        TaskStatus::Running,
        TaskStatus::ReviewPending,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::AgentLost,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Created => "created",
            TaskStatus::Assigned => "assigned",
            TaskStatus::Running => "running",
            TaskStatus::ReviewPending => "review_pending",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::AgentLost => "agent_lost",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// No further work happens without a person asking (`failed` can still be retried).
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// The state machine of SPEC §2.
    pub fn can_move_to(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        if to == Cancelled {
            return !matches!(self, Completed | Cancelled);
        }
        matches!(
            (self, to),
            (Created, Assigned)
                | (Created, Failed)
                | (Assigned, Running)
                | (Assigned, Created)
                | (Assigned, Failed)
                | (Assigned, AgentLost)
                | (Running, ReviewPending)
                | (Running, Completed)
                | (Running, Failed)
                | (Running, AgentLost)
                | (Running, Created)
                | (ReviewPending, Running)
                | (ReviewPending, Completed)
                | (ReviewPending, Failed)
                | (AgentLost, Created)
                | (AgentLost, Failed)
                | (Failed, Created)
        )
    }

    /// `Ok(to)` when the move is legal, otherwise an error that says why.
    pub fn move_to(self, to: TaskStatus) -> Result<TaskStatus, IllegalTransition> {
        if self.can_move_to(to) {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskStatus::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = TaskStatus::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown status `{s}`; known: {}", known.join(", "))
            })
    }
}

/// A status change the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a task cannot go from `{from}` to `{to}`")]
pub struct IllegalTransition {
    pub from: TaskStatus,
    pub to: TaskStatus,
}

/// How the task is executed (SPEC §4, two-phase dispatch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutionMode {
    /// No host took it yet; pull agents may claim it.
    Undecided,
    /// Run by the daemon on a host (SSH or localhost).
    SshCli,
    /// Left to pull agents.
    HttpPull,
}

impl ExecutionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionMode::Undecided => "undecided",
            ExecutionMode::SshCli => "ssh_cli",
            ExecutionMode::HttpPull => "http_pull",
        }
    }
}

impl fmt::Display for ExecutionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Orders the global queue; ties go oldest first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Urgent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown priority `{s}`; known: low, normal, high, urgent"))
    }
}

/// Where a task came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    Api,
    Forge { repo: String, issue: u64 },
}

/// What was asked: fixed when the task is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub source: Source,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub kind: Option<String>,
    pub priority: Priority,
    /// Agent kind wanted.
    pub agent: String,
    pub capabilities: Vec<String>,
    /// Repository to work on: a local path or a git URL.
    pub repo: String,
    /// Branch the work starts from; `None` = the repository's default branch.
    pub base: Option<String>,
    /// Paths the agent should confine its changes to.
    pub file_scope: Vec<String>,
    /// Commands that check the work.
    pub validation: Vec<String>,
}

/// Longest task title, in bytes (once trimmed).
pub const MAX_TITLE_LEN: usize = 1024;

/// A task's title as every way in checks it (`POST /tasks`, a forge issue): trimmed, not
/// empty, at most [`MAX_TITLE_LEN`] bytes. The error says what is wrong with `title`.
pub fn check_title(title: &str) -> Result<&str, String> {
    let title = title.trim();
    if title.is_empty() {
        return Err("`title` must not be empty".into());
    }
    if title.len() > MAX_TITLE_LEN {
        return Err(format!("`title` is longer than {MAX_TITLE_LEN} bytes"));
    }
    Ok(title)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_is_legal() {
        use TaskStatus::*;
        let path = [Created, Assigned, Running, ReviewPending, Completed];
        for pair in path.windows(2) {
            assert!(pair[0].can_move_to(pair[1]), "{} -> {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn a_completed_task_cannot_move() {
        for to in TaskStatus::ALL {
            assert!(!TaskStatus::Completed.can_move_to(to), "completed -> {to}");
        }
    }

    #[test]
    fn only_a_failed_task_is_retried_into_the_queue() {
        assert!(TaskStatus::Failed.can_move_to(TaskStatus::Created));
        assert!(!TaskStatus::Cancelled.can_move_to(TaskStatus::Created));
        assert!(!TaskStatus::Completed.can_move_to(TaskStatus::Created));
    }

    #[test]
    fn an_illegal_move_says_from_and_to() {
        let e = TaskStatus::Completed
            .move_to(TaskStatus::Running)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "a task cannot go from `completed` to `running`"
        );
    }

    #[test]
    fn statuses_and_priorities_parse_from_their_names() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), s);
        }
        assert_eq!("high".parse::<Priority>().unwrap(), Priority::High);
        assert!("asap".parse::<Priority>().is_err());
    }
}
