//! The coordinator's task routes under `/api/v1` (SPEC §5): thin handlers that turn requests
//! into [`Tasks`] calls and records into views. Authentication, extraction and error mapping
//! are layers and extractors (see [`super::auth`], [`super::extract`]); each handler's
//! `#[utoipa::path]` is its entry in `GET /openapi.json`.

use std::path::Path;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use super::extract::ApiJson;
use super::extract::{ApiQuery, OptionalJson, TaskId};
use super::views::{
    CancelRequest, ErrorBody, EventPage, EventView, NewTask, RetryRequest, SignalAnswer,
    SignalJson, SignalRequest, TaskList, TaskStatusName, TaskView,
};
use super::{ApiError, AppState};
use crate::config::Config;
use crate::steps::pull_mode::Refusal;
use crate::steps::task::{Priority, Source, TaskSpec, TaskStatus, check_title};
use crate::steps::tasks::{TaskError, Tasks};
use crate::workflow::{EngineError, InstanceId, MAX_KEY_LEN, StoreError};

const TAG: &str = "tasks";

/// The task routes and their documentation (mounted under `/api/v1`, behind the admin token).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(submit, list))
        .routes(routes!(show))
        .routes(routes!(events))
        .routes(routes!(cancel))
        .routes(routes!(retry))
        .routes(routes!(signal))
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        TaskError::Engine(e).into()
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::NotFound(_) => ApiError::not_found(e.to_string()),
            TaskError::Conflict(m) => ApiError::conflict(m),
            TaskError::Refused { refusal, message } => match refusal {
                Refusal::Conflict => ApiError::conflict(message),
                Refusal::Stale => ApiError::new(StatusCode::CONFLICT, "stale_epoch", message),
                Refusal::Forbidden => ApiError::forbidden(message),
                Refusal::Invalid => ApiError::unprocessable(message),
                Refusal::NotFound => ApiError::not_found(message),
            },
            e @ TaskError::Pending(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "pending", e.to_string())
            }
            TaskError::Engine(e @ EngineError::InvalidKey { .. }) => {
                ApiError::unprocessable(e.to_string())
            }
            TaskError::Engine(EngineError::ShuttingDown) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the daemon is stopping; retry once it is back",
            ),
            TaskError::Engine(e) if e.is_store_failed() => {
                let why = match e {
                    EngineError::Store(StoreError::Failed { reason }) => reason,
                    other => other.to_string(),
                };
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_failed",
                    format!(
                        "the daemon's store failed ({why}): it takes no more work and exits to \
                         be restarted; retry once it is back"
                    ),
                )
            }
            TaskError::Engine(e) => ApiError::internal(&e),
        }
    }
}

/// Create a task
///
/// Checks the submission against the config (agent kind, priority, repository: a local path
/// must exist and becomes absolute), then starts its workflow. A resubmission with the same
/// `idempotency_key` answers the task already created, with 200 instead of 201.
#[utoipa::path(post, path = "/tasks", tag = TAG, operation_id = "submit_task",
    request_body(content = NewTask, content_type = "application/json"),
    responses(
        (status = 201, description = "The task was created", body = TaskView),
        (status = 200, description = "A task with this idempotency key already exists", body = TaskView),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is over `server.body_limit`", body = ErrorBody),
        (status = 415, description = "The content type is not `application/json`", body = ErrorBody),
        (status = 422, description = "The body has the wrong shape, or names an unknown agent kind, priority or repository", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping", body = ErrorBody),
    ))]
async fn submit(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<NewTask>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let spec = task_spec(&req, app.config(), app.base_dir())?;
    let key = req.idempotency_key.as_deref();
    let (task, created) = Tasks::new(app.engine()?).submit(spec, key).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(TaskView::from(&task))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only tasks with this status.
    #[param(value_type = Option<TaskStatusName>)]
    status: Option<String>,
    /// Page size: 1 to 500 (other values are brought into that range); 50 by default.
    limit: Option<usize>,
    /// Only tasks whose id is above this one: the `next_after` of the previous page.
    #[param(value_type = Option<u64>)]
    after: Option<InstanceId>,
}

/// List tasks
///
/// In id order (oldest first), one page at a time.
#[utoipa::path(get, path = "/tasks", tag = TAG, operation_id = "list_tasks",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of tasks", body = TaskList),
        (status = 400, description = "An unknown status, a value that is not a number, or an unknown parameter", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping", body = ErrorBody),
    ))]
async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(str::parse::<TaskStatus>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let (tasks, more) = Tasks::new(app.engine()?).list(status, q.after, limit)?;
    let next_after = more
        .then(|| tasks.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(Json(TaskList {
        tasks: tasks.iter().map(TaskView::from).collect(),
        next_after,
    }))
}

/// Show a task
///
/// The task with its runs, receipt and whole event history (`events`).
#[utoipa::path(get, path = "/tasks/{id}", tag = TAG, operation_id = "show_task",
    params(TaskId),
    responses(
        (status = 200, description = "The task and its events", body = TaskView),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping", body = ErrorBody),
    ))]
async fn show(State(app): State<AppState>, TaskId(id): TaskId) -> Result<Json<TaskView>, ApiError> {
    let task = Tasks::new(app.engine()?).get(id, true)?;
    Ok(Json(TaskView::from(&task)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only events after this sequence number (what `task watch` polls with).
    after: Option<u64>,
}

/// A task's events
///
/// The task's status and its events after `after`: what `task watch` polls.
#[utoipa::path(get, path = "/tasks/{id}/events", tag = TAG, operation_id = "task_events",
    params(TaskId, EventsQuery),
    responses(
        (status = 200, description = "The status and the events after `after`", body = EventPage),
        (status = 400, description = "`after` is not a number, or an unknown parameter", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping", body = ErrorBody),
    ))]
async fn events(
    State(app): State<AppState>,
    TaskId(id): TaskId,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let task = Tasks::new(app.engine()?).get(id, true)?;
    let after = q.after.unwrap_or(0);
    let status = task.status();
    Ok(Json(EventPage {
        status: status.to_string(),
        settled: status.is_settled(),
        events: task
            .history
            .iter()
            .flatten()
            .filter(|(seq, _)| *seq > after)
            .map(|(seq, e)| EventView::from_event(*seq, e))
            .collect(),
    }))
}

/// Cancel a task
///
/// The running step is interrupted, the run's process group killed, and the task ends
/// `cancelled`. The body is optional.
#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = TAG, operation_id = "cancel_task",
    params(TaskId),
    request_body(content = Option<CancelRequest>, content_type = "application/json",
        description = "Optional: why (empty body: \"cancelled through the API\")"),
    responses(
        (status = 202, description = "The cancel is recorded; the task ends `cancelled` shortly", body = TaskView),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is completed or has already ended", body = ErrorBody),
        (status = 413, description = "The body is over `server.body_limit`", body = ErrorBody),
        (status = 422, description = "The body has the wrong shape", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping", body = ErrorBody),
    ))]
async fn cancel(
    State(app): State<AppState>,
    TaskId(id): TaskId,
    OptionalJson(req): OptionalJson<CancelRequest>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let reason = req
        .reason
        .unwrap_or_else(|| "cancelled through the API".to_string());
    let task = Tasks::new(app.engine()?).cancel(id, &reason).await?;
    Ok((StatusCode::ACCEPTED, Json(TaskView::from(&task))))
}

/// Retry a failed task
///
/// Puts a `failed` task back in the queue (a `retry` signal). The retry resumes the last
/// agent session on its host when the failure was outside the session; `{"fresh": true}`
/// starts a fresh one. Without an `Idempotency-Key`, every call is a new retry.
#[utoipa::path(post, path = "/tasks/{id}/retry", tag = TAG, operation_id = "retry_task",
    params(TaskId,
        ("Idempotency-Key" = Option<String>, Header,
            description = "A repeated key is the same retry (1 to 256 bytes of visible ASCII)"),
    ),
    request_body(content = Option<RetryRequest>, content_type = "application/json"),
    responses(
        (status = 202, description = "The retry is recorded", body = TaskView),
        (status = 400, description = "The `Idempotency-Key` is not visible ASCII", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is not `failed`", body = ErrorBody),
        (status = 422, description = "The `Idempotency-Key` is empty or too long", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping", body = ErrorBody),
    ))]
async fn retry(
    State(app): State<AppState>,
    TaskId(id): TaskId,
    headers: HeaderMap,
    OptionalJson(req): OptionalJson<RetryRequest>,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(v) => v
            .to_str()
            .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
            .to_string(),
        None => format!("retry-{}", crate::workflow::Timestamp::now().0),
    };
    let task = Tasks::new(app.engine()?).retry(id, &key, req.fresh).await?;
    Ok((StatusCode::ACCEPTED, Json(TaskView::from(&task))))
}

/// Send a signal to a task
///
/// Delivered durably; a repeated `idempotency_key` is a no-op that answers the first
/// delivery (`duplicate: true`).
#[utoipa::path(post, path = "/tasks/{id}/signals", tag = TAG, operation_id = "signal_task",
    params(TaskId),
    request_body(content = SignalRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "The signal is recorded in the task's inbox", body = SignalAnswer),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task has ended", body = ErrorBody),
        (status = 413, description = "The body is over `server.body_limit`", body = ErrorBody),
        (status = 415, description = "The content type is not `application/json`", body = ErrorBody),
        (status = 422, description = "The body has the wrong shape, an unknown signal, or a bad idempotency key", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping", body = ErrorBody),
    ))]
async fn signal(
    State(app): State<AppState>,
    TaskId(id): TaskId,
    ApiJson(req): ApiJson<SignalRequest>,
) -> Result<(StatusCode, Json<SignalAnswer>), ApiError> {
    let signal: SignalJson = serde_json::from_value(req.signal)
        .map_err(|e| ApiError::unprocessable(format!("unknown or malformed signal: {e}")))?;
    let ack = Tasks::new(app.engine()?)
        .signal(id, &signal.into(), &req.idempotency_key)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SignalAnswer {
            seq: ack.seq,
            duplicate: ack.duplicate,
        }),
    ))
}

/// Checks a submission against the config and fills in its defaults.
pub fn task_spec(req: &NewTask, config: &Config, base_dir: &Path) -> Result<TaskSpec, ApiError> {
    let title = check_title(&req.title).map_err(ApiError::unprocessable)?;
    if let Some(k) = &req.idempotency_key
        && (k.is_empty() || k.len() > MAX_KEY_LEN - 5)
    {
        return Err(ApiError::unprocessable(format!(
            "`idempotency_key` must be 1 to {} bytes",
            MAX_KEY_LEN - 5
        )));
    }
    let agent = match &req.agent {
        Some(a) => a.clone(),
        None => config
            .agents
            .first()
            .map(|a| a.name.clone())
            .or_else(|| config.hosts.first().and_then(|h| h.agents.first().cloned()))
            .ok_or_else(|| {
                ApiError::unprocessable("no agent kind is configured: name one in `agent`")
            })?,
    };
    if config.agent(&agent).is_none() {
        let known: Vec<&str> = config
            .agent_kinds()
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        return Err(ApiError::unprocessable(format!(
            "unknown agent kind `{agent}`; known: {}",
            known.join(", ")
        )));
    }
    let priority = match &req.priority {
        Some(p) => p.parse::<Priority>().map_err(ApiError::unprocessable)?,
        None => Priority::default(),
    };
    let repo = req
        .repo
        .clone()
        .or_else(|| config.dispatch.default_repo.clone())
        .ok_or_else(|| {
            ApiError::unprocessable("no repository: give `repo` or set dispatch.default_repo")
        })?;
    Ok(TaskSpec {
        source: Source::Api,
        title: title.to_string(),
        body: req.body.clone(),
        labels: req.labels.clone(),
        kind: req.kind.clone(),
        priority,
        agent,
        capabilities: req.capabilities.clone(),
        repo: resolve_repo(&repo, base_dir)?,
        base: req.base.clone().filter(|b| !b.trim().is_empty()),
        file_scope: req.file_scope.clone(),
        validation: req.validation.clone(),
    })
}

/// A git URL stays as it is; a local path becomes absolute and must exist.
fn resolve_repo(repo: &str, base_dir: &Path) -> Result<String, ApiError> {
    let is_url = repo.contains("://")
        || repo
            .split_once(':')
            .is_some_and(|(host, _)| host.contains('@') && !host.contains('/'));
    if is_url {
        return Ok(repo.to_string());
    }
    let path = base_dir.join(repo);
    let path = path.canonicalize().map_err(|e| {
        ApiError::unprocessable(format!(
            "repository path {} cannot be used: {e}",
            path.display()
        ))
    })?;
    Ok(path.display().to_string())
}
