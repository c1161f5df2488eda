//! Tasks as the outside world asks for them: submit, look up, list, cancel, retry, signal. The
//! API and (later) the forge and chat front-ends call this; it turns requests into engine
//! starts, signals and queries, and refuses what the task state machine does not allow.

use thiserror::Error;

use crate::workflow::{
    CancelAck, Engine, EngineError, Event, InstanceId, InstanceInfo, SignalAck, Status, Workflow,
};

use super::agent_task::{AgentTask, TaskSignal, TaskState};
use super::task::{TaskSpec, TaskStatus};

#[derive(Debug, Error)]
pub enum TaskError {
    #[error("no task {0}")]
    NotFound(InstanceId),
    /// The task's state does not allow the request.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn found(id: InstanceId) -> impl Fn(EngineError) -> TaskError {
    move |e| match e {
        EngineError::UnknownInstance(_) | EngineError::WrongWorkflow { .. } => {
            TaskError::NotFound(id)
        }
        e => TaskError::Engine(e),
    }
}

/// One task as stored: the engine's view of its instance and the workflow state.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: InstanceId,
    pub info: InstanceInfo,
    pub state: TaskState,
    /// Only when asked for.
    pub history: Option<Vec<(u64, Event)>>,
}

impl TaskRecord {
    /// The status the task shows: a cancelled instance is a cancelled task, whatever step it
    /// was cancelled in.
    pub fn status(&self) -> TaskStatus {
        match self.info.status {
            Status::Cancelled => TaskStatus::Cancelled,
            Status::Failed => TaskStatus::Failed,
            _ => self.state.status,
        }
    }

    /// Why the task failed or was cancelled.
    pub fn failure(&self) -> Option<String> {
        match (self.info.status, &self.info.cancel_requested) {
            (Status::Cancelled, Some(reason)) => Some(format!("cancelled: {reason}")),
            _ => self.state.failure.clone(),
        }
    }
}

/// The task operations over an open engine.
pub struct Tasks<'a> {
    engine: &'a Engine,
}

impl<'a> Tasks<'a> {
    pub fn new(engine: &'a Engine) -> Self {
        Tasks { engine }
    }

    /// Creates a task; with a key seen before, returns that task and `false`.
    pub async fn submit(
        &self,
        spec: TaskSpec,
        key: Option<&str>,
    ) -> Result<(TaskRecord, bool), TaskError> {
        let key = key.map(|k| format!("task/{k}"));
        let state = TaskState::new(spec, crate::workflow::Timestamp::now());
        let ack = self
            .engine
            .start_ack::<AgentTask>(&state, key.as_deref())
            .await?;
        Ok((self.get(ack.id, false)?, !ack.duplicate))
    }

    pub fn get(&self, id: InstanceId, history: bool) -> Result<TaskRecord, TaskError> {
        let info = self.engine.info(id).map_err(found(id))?;
        let state = self.engine.state::<AgentTask>(id).map_err(found(id))?;
        let history = if history {
            Some(self.engine.history(id).map_err(found(id))?)
        } else {
            None
        };
        Ok(TaskRecord {
            id,
            info,
            state,
            history,
        })
    }

    /// Tasks with ids above `after`, in id order, at most `limit`; and whether more follow.
    pub fn list(
        &self,
        status: Option<TaskStatus>,
        after: Option<InstanceId>,
        limit: usize,
    ) -> Result<(Vec<TaskRecord>, bool), TaskError> {
        let mut out = Vec::new();
        for info in self.engine.list()? {
            if info.workflow != AgentTask::NAME || after.is_some_and(|a| info.id <= a) {
                continue;
            }
            let id = info.id;
            let state = self.engine.state::<AgentTask>(id)?;
            let record = TaskRecord {
                id,
                info,
                state,
                history: None,
            };
            if status.is_some_and(|s| record.status() != s) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(record);
        }
        Ok((out, false))
    }

    /// Stops the task: its running step is interrupted, its run's process group killed, and it
    /// ends `cancelled`.
    pub async fn cancel(&self, id: InstanceId, reason: &str) -> Result<TaskRecord, TaskError> {
        let task = self.get(id, false)?;
        if task.status() == TaskStatus::Completed {
            return Err(TaskError::Conflict(format!(
                "task {id} is completed: there is nothing to cancel"
            )));
        }
        match self.engine.cancel(id, reason).await.map_err(found(id))? {
            CancelAck::Requested | CancelAck::AlreadyRequested => {}
            CancelAck::AlreadyEnded(status) => {
                return Err(TaskError::Conflict(format!(
                    "task {id} has already ended ({})",
                    status.as_str()
                )));
            }
        }
        self.get(id, false)
    }

    /// Puts a failed task back in the queue.
    pub async fn retry(&self, id: InstanceId, key: &str) -> Result<TaskRecord, TaskError> {
        let task = self.get(id, false)?;
        let status = task.status();
        if status != TaskStatus::Failed || task.info.status.is_terminal() {
            let hint = match status {
                TaskStatus::Completed => "; it delivered its work",
                TaskStatus::Cancelled => "; submit it again as a new task",
                _ => "; only a failed task can be retried",
            };
            return Err(TaskError::Conflict(format!(
                "task {id} is {status}: it cannot be retried{hint}"
            )));
        }
        self.signal(id, &TaskSignal::Retry, key).await?;
        self.get(id, false)
    }

    /// Delivers `signal` durably (a repeated key is a no-op).
    pub async fn signal(
        &self,
        id: InstanceId,
        signal: &TaskSignal,
        key: &str,
    ) -> Result<SignalAck, TaskError> {
        match self.engine.signal::<AgentTask>(id, signal, key).await {
            Ok(ack) => Ok(ack),
            Err(EngineError::Finished { status, .. }) => Err(TaskError::Conflict(format!(
                "task {id} has ended ({}): it takes no more signals",
                status.as_str()
            ))),
            Err(e) => Err(found(id)(e)),
        }
    }
}
