//! The coordinator's task routes under `/api/v1` (SPEC §5): thin handlers that turn requests
//! into [`Tasks`] calls and records into views. Authentication, JSON extraction and error
//! mapping are layers and extractors (see [`super::auth`], [`ApiJson`]).

use std::path::Path;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::views::{
    CancelRequest, EventPage, EventView, NewTask, SignalAnswer, SignalJson, SignalRequest,
    TaskList, TaskView,
};
use super::{ApiError, AppState};
use crate::config::Config;
use crate::steps::pull_mode::Refusal;
use crate::steps::task::{Priority, Source, TaskSpec, TaskStatus};
use crate::steps::tasks::{TaskError, Tasks};
use crate::workflow::{EngineError, InstanceId, MAX_KEY_LEN};

/// The task routes (mounted under `/api/v1`, behind the admin token).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tasks", post(submit).get(list))
        .route("/tasks/{id}", get(show))
        .route("/tasks/{id}/events", get(events))
        .route("/tasks/{id}/cancel", post(cancel))
        .route("/tasks/{id}/retry", post(retry))
        .route("/tasks/{id}/signals", post(signal))
}

/// A JSON body whose rejections are API errors (400 malformed, 413 too large, 415 not JSON,
/// 422 wrong shape).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => {
                let status = r.status();
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
                    _ => "bad_request",
                };
                Err(ApiError::new(status, code, r.body_text()))
            }
        }
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
            TaskError::Engine(e) => ApiError::internal(&e),
        }
    }
}

pub(super) fn task_id(raw: &str) -> Result<InstanceId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("no task {raw:?}: task ids are numbers")))
}

async fn submit(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<NewTask>,
) -> Result<Response, ApiError> {
    let spec = task_spec(&req, app.config(), app.base_dir())?;
    let key = req.idempotency_key.as_deref();
    let (task, created) = Tasks::new(app.engine()?).submit(spec, key).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(TaskView::from(&task))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
    after: Option<InstanceId>,
}

async fn list(
    State(app): State<AppState>,
    Query(q): Query<ListQuery>,
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

async fn show(
    State(app): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<TaskView>, ApiError> {
    let task = Tasks::new(app.engine()?).get(task_id(&id)?, true)?;
    Ok(Json(TaskView::from(&task)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
}

async fn events(
    State(app): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let task = Tasks::new(app.engine()?).get(task_id(&id)?, true)?;
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

/// An optional JSON body: empty means the defaults.
pub(super) fn optional_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

async fn cancel(
    State(app): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let req: CancelRequest = optional_body(&body)?;
    let reason = req
        .reason
        .unwrap_or_else(|| "cancelled through the API".to_string());
    let task = Tasks::new(app.engine()?)
        .cancel(task_id(&id)?, &reason)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(TaskView::from(&task))))
}

async fn retry(
    State(app): State<AppState>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(v) => v
            .to_str()
            .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
            .to_string(),
        None => format!("retry-{}", crate::workflow::Timestamp::now().0),
    };
    let task = Tasks::new(app.engine()?).retry(task_id(&id)?, &key).await?;
    Ok((StatusCode::ACCEPTED, Json(TaskView::from(&task))))
}

async fn signal(
    State(app): State<AppState>,
    UrlPath(id): UrlPath<String>,
    ApiJson(req): ApiJson<SignalRequest>,
) -> Result<(StatusCode, Json<SignalAnswer>), ApiError> {
    let signal: SignalJson = serde_json::from_value(req.signal)
        .map_err(|e| ApiError::unprocessable(format!("unknown or malformed signal: {e}")))?;
    let ack = Tasks::new(app.engine()?)
        .signal(task_id(&id)?, &signal.into(), &req.idempotency_key)
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
    let title = req.title.trim();
    if title.is_empty() {
        return Err(ApiError::unprocessable("`title` must not be empty"));
    }
    if title.len() > 1024 {
        return Err(ApiError::unprocessable("`title` is longer than 1024 bytes"));
    }
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
