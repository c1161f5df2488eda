//! The pull-agent routes under `/api/v1` (SPEC §5): registration, heartbeats, deregistration
//! and the agent list; dequeue, status, completion and receipts for the agent holding a task;
//! and the coordinator's `assign`. Handlers stay thin: the agent's identity comes from
//! [`auth::require_agent`](super::auth::require_agent), every decision about a task is made by
//! the task's own step ([`Tasks`]).

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::pull_views::{
    AgentList, AgentView, AssignRequest, CompleteRequest, DequeueRequest, Dequeued, Deregistered,
    HeartbeatAnswer, HeldTask, Lease, PulledTask, ReceiptRequest, RegisterRequest, Registered,
    StatusRequest, TaskAnswer,
};
use super::tasks::{ApiJson, optional_body, task_id};
use super::views::{TaskView, rfc3339};
use super::{ApiError, AppState};
use crate::steps::agent_task::TaskSignal;
use crate::steps::agents::{self, AgentSignal, Profile, PullAgent};
use crate::steps::pull::{AgentEntry, Liveness, new_token};
use crate::steps::pull_mode::{AgentProgress, FromAgent, Pin, PullReply, ReceiptClaim};
use crate::steps::tasks::{Tasks, fresh_key};
use crate::workflow::{Timestamp, Update};

/// Routes for a registered agent's token.
pub fn agent_routes() -> Router<AppState> {
    Router::new()
        .route("/agents/heartbeat", post(heartbeat))
        .route("/agents/deregister", post(deregister))
        .route("/tasks/dequeue", post(dequeue))
        .route("/tasks/{id}/status", post(status))
        .route("/tasks/{id}/complete", post(complete))
        .route("/receipts", post(receipt))
}

/// `POST /agents/register`: the admin token or the registration token.
pub fn register_routes() -> Router<AppState> {
    Router::new().route("/agents/register", post(register))
}

/// Coordinator routes (admin token).
pub fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/agents", get(list))
        .route("/tasks/{id}/assign", post(assign))
}

/// The client's `Idempotency-Key`, or a fresh one.
fn request_key(headers: &HeaderMap, prefix: &str) -> Result<String, ApiError> {
    match headers.get("idempotency-key") {
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
            if k.is_empty() || k.len() > 128 {
                return Err(ApiError::unprocessable(
                    "Idempotency-Key must be 1 to 128 bytes",
                ));
            }
            Ok(format!("{prefix}-{k}"))
        }
        None => Ok(fresh_key(prefix)),
    }
}

fn check_name(what: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "{what} `{value}` must be 1 to 64 characters of letters, digits, - _ . : /"
        )))
    }
}

async fn register(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    check_name("name", &req.name)?;
    if req.agent_kinds.is_empty() || req.agent_kinds.len() > 32 {
        return Err(ApiError::unprocessable(
            "`agent_kinds` must list 1 to 32 kinds",
        ));
    }
    if req.capabilities.len() > 64 {
        return Err(ApiError::unprocessable("`capabilities` lists at most 64"));
    }
    for k in &req.agent_kinds {
        check_name("agent kind", k)?;
    }
    for c in &req.capabilities {
        check_name("capability", c)?;
    }
    if !(1..=1000).contains(&req.max_concurrent) {
        return Err(ApiError::unprocessable(
            "`max_concurrent` must be 1 to 1000",
        ));
    }
    let rt = app.runtime()?;
    let engine = app.engine()?;
    let known = rt.board().agent_named(&req.name).is_some();
    let (token, hash) = new_token();
    let profile = Profile {
        kinds: req.agent_kinds,
        capabilities: req.capabilities,
        max_concurrent: req.max_concurrent,
    };
    let id = agents::register(engine, rt, &req.name, profile, hash)
        .await
        .map_err(|e| ApiError::from(crate::steps::tasks::TaskError::Engine(e)))?;
    let lease = rt
        .board()
        .agent(id)
        .map(|a| a.lease_until)
        .unwrap_or_else(Timestamp::now);
    let body = Registered {
        agent_id: id,
        name: req.name,
        token,
        heartbeat_interval_seconds: app.config().dispatch.heartbeat_interval.as_secs(),
        lease_expires_at: rfc3339(lease),
    };
    let status = if known {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(body)).into_response())
}

async fn heartbeat(
    State(app): State<AppState>,
    Extension(agent): Extension<AgentEntry>,
    body: Bytes,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    let _: DequeueRequest = optional_body(&body)?;
    let rt = app.runtime()?;
    let now = Timestamp::now();
    let signal = AgentSignal::Heartbeat { at: now };
    app.engine()?
        .signal::<PullAgent>(agent.id, &signal, &fresh_key("heartbeat"))
        .await
        .map_err(|e| ApiError::from(crate::steps::tasks::TaskError::Engine(e)))?;
    let lease = rt.board().heartbeat(agent.id, now).unwrap_or(now);
    let tasks = rt.board().held(agent.id);
    let reader = Tasks::new(app.engine()?);
    let held = tasks
        .iter()
        .filter_map(|id| {
            let claim = reader.get(*id, false).ok()?.state.claim?;
            (claim.agent_id == agent.id).then_some(HeldTask {
                task_id: *id,
                epoch: claim.epoch,
            })
        })
        .collect();
    Ok(Json(HeartbeatAnswer {
        agent_id: agent.id,
        status: Liveness::Online.as_str().to_string(),
        lease_expires_at: rfc3339(lease),
        tasks,
        held,
    }))
}

async fn deregister(
    State(app): State<AppState>,
    Extension(agent): Extension<AgentEntry>,
) -> Result<Json<Deregistered>, ApiError> {
    let rt = app.runtime()?;
    let engine = app.engine()?;
    let answer = engine
        .update::<PullAgent, bool>(
            agent.id,
            &AgentSignal::Deregister,
            &fresh_key("deregister"),
            std::time::Duration::from_secs(20),
        )
        .await
        .map_err(|e| ApiError::from(crate::steps::tasks::TaskError::Engine(e)))?;
    if !matches!(answer, Update::Replied(_)) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "pending",
            "the deregistration is recorded but not yet applied; retry",
        ));
    }
    // Each held task hears of it at once; its own lease timer would find out anyway.
    let requeued = rt.board().held(agent.id);
    let lost = TaskSignal::AgentLost {
        agent_id: agent.id,
        reason: format!("agent {} deregistered", agent.name),
    };
    let tasks = Tasks::new(engine);
    for id in &requeued {
        let key = format!("deregistered/{}/{}", agent.id, agent.last_heartbeat.0);
        let _ = tasks.signal(*id, &lost, &key).await;
    }
    Ok(Json(Deregistered {
        agent_id: agent.id,
        status: Liveness::Deregistered.as_str().to_string(),
        requeued,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentQuery {
    capability: Option<String>,
    status: Option<String>,
}

async fn list(
    State(app): State<AppState>,
    Query(q): Query<AgentQuery>,
) -> Result<Json<AgentList>, ApiError> {
    if let Some(s) = &q.status
        && !["online", "offline", "deregistered"].contains(&s.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "unknown status `{s}`; known: online, offline, deregistered"
        )));
    }
    let board = app.runtime()?.board();
    let now = Timestamp::now();
    let agents = board
        .agents()
        .iter()
        .filter(|a| {
            q.capability
                .as_ref()
                .is_none_or(|c| a.capabilities.contains(c))
        })
        .filter(|a| {
            q.status
                .as_deref()
                .is_none_or(|s| a.liveness(now).as_str() == s)
        })
        .map(|a| AgentView::of(a, board, now))
        .collect();
    Ok(Json(AgentList { agents }))
}

async fn dequeue(
    State(app): State<AppState>,
    Extension(agent): Extension<AgentEntry>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let _: DequeueRequest = optional_body(&body)?;
    let key = request_key(&headers, "dequeue")?;
    let board = app.runtime()?.board();
    let Some(granted) = Tasks::new(app.engine()?)
        .dequeue(board, &agent, &key)
        .await?
    else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let lease = board
        .agent(agent.id)
        .map(|a| a.lease_until)
        .unwrap_or(agent.lease_until);
    let body = Dequeued {
        task: PulledTask::of(granted.task.id, &granted.task.state),
        lease: Lease {
            epoch: granted.epoch,
            expires_at: rfc3339(lease),
        },
    };
    Ok(Json(body).into_response())
}

fn answer(id: u64, reply: PullReply) -> TaskAnswer {
    match reply {
        PullReply::Done { status, note } => TaskAnswer {
            task_id: id.to_string(),
            status: status.to_string(),
            note,
            verified: None,
        },
        PullReply::Granted { epoch } => TaskAnswer {
            task_id: id.to_string(),
            status: "assigned".into(),
            note: format!("claimed, epoch {epoch}"),
            verified: None,
        },
        PullReply::Refused { message, .. } => TaskAnswer {
            task_id: id.to_string(),
            status: "refused".into(),
            note: message,
            verified: None,
        },
    }
}

async fn status(
    State(app): State<AppState>,
    Extension(agent): Extension<AgentEntry>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<StatusRequest>,
) -> Result<Json<TaskAnswer>, ApiError> {
    let id = task_id(&id)?;
    let progress = match req.status.as_str() {
        "running" => AgentProgress::Running,
        "failed" => AgentProgress::Failed,
        other => {
            return Err(ApiError::unprocessable(format!(
                "status `{other}` cannot be reported: use `running` or `failed` \
                 (completion goes through /complete or /receipts)"
            )));
        }
    };
    let message = FromAgent::Status {
        progress,
        message: req.message.map(|m| m.chars().take(1000).collect()),
    };
    let key = request_key(&headers, "status")?;
    let reply = Tasks::new(app.engine()?)
        .from_agent(id, &agent, req.epoch, message, &key)
        .await?;
    Ok(Json(answer(id, reply)))
}

async fn complete(
    State(app): State<AppState>,
    Extension(agent): Extension<AgentEntry>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<Json<TaskAnswer>, ApiError> {
    let id = task_id(&id)?;
    let message = FromAgent::Complete {
        summary: req.summary.chars().take(64 * 1024).collect(),
    };
    let key = request_key(&headers, "complete")?;
    let reply = Tasks::new(app.engine()?)
        .from_agent(id, &agent, req.epoch, message, &key)
        .await?;
    Ok(Json(answer(id, reply)))
}

async fn receipt(
    State(app): State<AppState>,
    Extension(agent): Extension<AgentEntry>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ReceiptRequest>,
) -> Result<Json<TaskAnswer>, ApiError> {
    if req.commits.len() > 1000 || req.commits.iter().any(|c| c.len() > 64) {
        return Err(ApiError::unprocessable(
            "`commits` lists at most 1000 commit ids of at most 64 characters",
        ));
    }
    if req.branch.len() > 255 || req.pr_url.as_ref().is_some_and(|u| u.len() > 2048) {
        return Err(ApiError::unprocessable("`branch` or `pr_url` is too long"));
    }
    let message = FromAgent::Receipt(ReceiptClaim {
        branch: req.branch,
        commits: req.commits,
        summary: req.summary.chars().take(64 * 1024).collect(),
        pr_number: req.pr_number,
        pr_url: req.pr_url,
    });
    let key = request_key(&headers, "receipt")?;
    let tasks = Tasks::new(app.engine()?);
    let reply = tasks
        .from_agent(req.task_id, &agent, req.epoch, message, &key)
        .await?;
    let verified = tasks
        .get(req.task_id, false)?
        .state
        .agent_report
        .map(|r| r.verified);
    let mut body = answer(req.task_id, reply);
    body.verified = verified;
    Ok(Json(body))
}

async fn assign(
    State(app): State<AppState>,
    UrlPath(id): UrlPath<String>,
    ApiJson(req): ApiJson<AssignRequest>,
) -> Result<Json<TaskView>, ApiError> {
    let id = task_id(&id)?;
    let pin = match (req.agent_id, req.host_id, req.execution_mode.as_deref()) {
        (Some(_), Some(_), _) => {
            return Err(ApiError::unprocessable(
                "give `agent_id` or `host_id`, not both",
            ));
        }
        (None, None, _) => {
            return Err(ApiError::unprocessable("give `agent_id` or `host_id`"));
        }
        (Some(a), None, None | Some("http_pull")) => Pin::Agent(a),
        (None, Some(h), None | Some("ssh_cli")) => Pin::Host(h),
        (_, _, Some(mode @ ("ssh_cli" | "http_pull"))) => {
            return Err(ApiError::unprocessable(format!(
                "execution_mode `{mode}` does not fit the target (a host runs ssh_cli, an agent http_pull)"
            )));
        }
        (_, _, Some(other)) => {
            return Err(ApiError::unprocessable(format!(
                "unknown execution_mode `{other}`; known: ssh_cli, http_pull"
            )));
        }
    };
    let task = Tasks::new(app.engine()?)
        .assign(id, pin, &fresh_key("assign"))
        .await?;
    Ok(Json(TaskView::from(&task)))
}
