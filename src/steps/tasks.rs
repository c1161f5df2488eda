//! Tasks as the outside world asks for them: submit, look up, list, cancel, retry, signal. The
//! API and (later) the forge and chat front-ends call this; it turns requests into engine
//! starts, signals and queries, and refuses what the task state machine does not allow.

use thiserror::Error;

use std::time::Duration;

use crate::workflow::{
    CancelAck, Engine, EngineError, Event, InstanceId, InstanceInfo, SignalAck, Status, Update,
    Workflow,
};

use super::agent_task::{AgentTask, Phase, TaskSignal, TaskState};
use super::pull::{AgentEntry, Board, Liveness};
use super::pull_mode::{FromAgent, Pin, PullReply, Refusal};
use super::task::{TaskSpec, TaskStatus};

/// How long a request from an agent or a coordinator waits for the task's step to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(20);
/// Most candidates one dequeue tries before it answers that nothing is left.
const DEQUEUE_TRIES: usize = 64;

#[derive(Debug, Error)]
pub enum TaskError {
    #[error("no task {0}")]
    NotFound(InstanceId),
    /// The task's state does not allow the request.
    #[error("{0}")]
    Conflict(String),
    /// The task's step refused the request (see [`Refusal`] for what each means).
    #[error("{message}")]
    Refused { refusal: Refusal, message: String },
    /// The request is committed but the task has not answered it yet; sending it again with
    /// the same idempotency key waits for the answer.
    #[error("task {0} has not answered yet; send the request again with the same Idempotency-Key")]
    Pending(InstanceId),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A claim granted by [`Tasks::dequeue`].
#[derive(Debug, Clone)]
pub struct Granted {
    pub task: TaskRecord,
    pub epoch: u64,
}

/// A random idempotency key for a request that brought none.
pub fn fresh_key(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
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
    /// The branch the task's work lives on (see [`super::names::TaskNames`]).
    pub branch: String,
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
            branch: super::names::TaskNames::of(self.engine).branch(id),
        })
    }

    /// Tasks with ids above `after`, in id order, at most `limit`; and whether more follow.
    pub fn list(
        &self,
        status: Option<TaskStatus>,
        after: Option<InstanceId>,
        limit: usize,
    ) -> Result<(Vec<TaskRecord>, bool), TaskError> {
        let after = after.unwrap_or(0);
        // One more than the page: whether there is a next page.
        let infos = match status {
            Some(s) => self
                .engine
                .list_phase(AgentTask::NAME, s.as_str(), after, limit + 1)?,
            None => self
                .engine
                .list_page(Some(AgentTask::NAME), after, limit + 1)?,
        };
        let more = infos.len() > limit;
        let mut out = Vec::with_capacity(limit);
        for info in infos.into_iter().take(limit) {
            let id = info.id;
            let state = self.engine.state::<AgentTask>(id)?;
            let record = TaskRecord {
                id,
                info,
                state,
                history: None,
                branch: super::names::TaskNames::of(self.engine).branch(id),
            };
            // The index follows the state's status; the engine's own end has the last word.
            if status.is_none_or(|s| record.status() == s) {
                out.push(record);
            }
        }
        Ok((out, more))
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

    /// Puts a failed task back in the queue; `fresh`: from a fresh agent session.
    pub async fn retry(
        &self,
        id: InstanceId,
        key: &str,
        fresh: bool,
    ) -> Result<TaskRecord, TaskError> {
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
        let signal = if fresh {
            TaskSignal::RetryFresh
        } else {
            TaskSignal::Retry
        };
        self.signal(id, &signal, key).await?;
        self.get(id, false)
    }

    /// Sends `signal` to task `id` and waits for its step's answer.
    async fn ask(
        &self,
        id: InstanceId,
        signal: &TaskSignal,
        key: &str,
    ) -> Result<PullReply, TaskError> {
        let answer = self
            .engine
            .update::<AgentTask, PullReply>(id, signal, key, ANSWER_WAIT)
            .await;
        match answer {
            Ok(Update::Replied(PullReply::Refused { refusal, message })) => {
                Err(TaskError::Refused { refusal, message })
            }
            Ok(Update::Replied(reply)) => Ok(reply),
            Ok(Update::Unanswered) => Err(TaskError::Conflict(format!(
                "task {id} took the request without answering it"
            ))),
            Ok(Update::Ended(status)) | Err(EngineError::Finished { status, .. }) => Err(
                TaskError::Conflict(format!("task {id} has ended ({})", status.as_str())),
            ),
            Ok(Update::Pending) => Err(TaskError::Pending(id)),
            Err(e) => Err(found(id)(e)),
        }
    }

    /// Claims for `agent` the first task in queue order it may take (`undecided` or
    /// `http_pull`, kind and capabilities matching), exactly once: each claim is decided by the
    /// task's own step, so a task also wanted by a host or another agent goes to one of them.
    /// `None` when nothing is left for this agent.
    pub async fn dequeue(
        &self,
        board: &Board,
        agent: &AgentEntry,
        key: &str,
    ) -> Result<Option<Granted>, TaskError> {
        if agent.liveness(crate::workflow::Timestamp::now()) != Liveness::Online {
            return Err(TaskError::Conflict(format!(
                "agent {} is offline: send a heartbeat first",
                agent.name
            )));
        }
        // The same request sent again (its answer was lost): the same task, if still held.
        if let Some((id, epoch)) = board.grant(agent.id, key)
            && let Ok(task) = self.get(id, false)
            && task
                .state
                .claim
                .as_ref()
                .is_some_and(|c| c.agent_id == agent.id && c.epoch == epoch)
        {
            return Ok(Some(Granted { task, epoch }));
        }
        let held = board.held(agent.id).len();
        if held >= agent.max_concurrent as usize {
            return Err(TaskError::Conflict(format!(
                "agent {} holds {held} task(s), its max_concurrent",
                agent.name
            )));
        }
        for attempt in 0..DEQUEUE_TRIES {
            let Some(id) = board.reserve_next(agent) else {
                return Ok(None);
            };
            let signal = TaskSignal::Claim { agent_id: agent.id };
            let answer = self
                .ask(id, &signal, &format!("claim/{}/{key}/{attempt}", agent.id))
                .await;
            board.unreserve(id);
            match answer {
                Ok(PullReply::Granted { epoch }) => {
                    board.remember_grant(agent.id, key, id, epoch);
                    return Ok(Some(Granted {
                        task: self.get(id, false)?,
                        epoch,
                    }));
                }
                // Gone meanwhile (to a host, another agent, a cancel): try the next one.
                Ok(_) | Err(TaskError::Refused { .. } | TaskError::Conflict(_)) => {
                    let task = self.get(id, false)?;
                    let open = matches!(task.state.phase, Phase::Route | Phase::Pull);
                    if !open || task.info.status.is_terminal() {
                        board.withdraw(id);
                    }
                }
                Err(TaskError::NotFound(_)) => board.withdraw(id),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// A message from the agent holding task `id` (owner and current epoch only).
    pub async fn from_agent(
        &self,
        id: InstanceId,
        agent: &AgentEntry,
        epoch: u64,
        message: FromAgent,
        key: &str,
    ) -> Result<PullReply, TaskError> {
        let signal = TaskSignal::FromAgent {
            agent_id: agent.id,
            epoch,
            message,
        };
        self.ask(id, &signal, key).await
    }

    /// A coordinator sends task `id` to a host or an agent.
    pub async fn assign(
        &self,
        id: InstanceId,
        pin: Pin,
        key: &str,
    ) -> Result<TaskRecord, TaskError> {
        self.ask(id, &TaskSignal::Assign { pin }, key).await?;
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
