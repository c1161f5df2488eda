//! The pull-agent routes under `/api/v1` (SPEC §5): registration, heartbeats, deregistration
//! and the agent list; dequeue, status, completion and receipts for the agent holding a task;
//! and the coordinator's `assign`. Handlers stay thin: the agent's identity comes from
//! [`auth::require_agent`](super::auth::require_agent), every decision about a task is made by
//! the task's own step ([`Tasks`]). Each handler's `#[utoipa::path]` is its entry in
//! `GET /openapi.json`; the guards are added (and documented) in [`super::documented_routes`].

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, ApiQuery, OptionalJson, TaskId};
use super::pull_views::{
    AgentList, AgentView, AssignRequest, CompleteRequest, DequeueRequest, Dequeued, Deregistered,
    HeartbeatAnswer, HeldTask, Lease, PulledTask, ReceiptRequest, RegisterRequest, Registered,
    StatusRequest, TaskAnswer,
};
use super::views::{ErrorBody, TaskView, rfc3339};
use super::{ApiError, AppState};
use crate::steps::agent_task::TaskSignal;
use crate::steps::agents::{self, AgentSignal, Profile, PullAgent};
use crate::steps::pull::{AgentEntry, Liveness, new_token};
use crate::steps::pull_mode::{AgentProgress, FromAgent, Pin, PullReply, ReceiptClaim};
use crate::steps::tasks::{Tasks, fresh_key};
use crate::workflow::{Timestamp, Update};

const TAG: &str = "agents";

/// Routes for a registered agent's token (see `auth::agent_only`).
pub fn agent_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(heartbeat))
        .routes(routes!(deregister))
        .routes(routes!(dequeue))
        .routes(routes!(status))
        .routes(routes!(complete))
        .routes(routes!(receipt))
}

/// `POST /agents/register`: the admin token or the registration token (`auth::registrar_only`).
pub fn register_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(register))
}

/// Coordinator routes (admin token, `auth::admin_only`).
pub fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(list))
        .routes(routes!(assign))
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

/// Register a pull agent
///
/// Registering a name again updates that agent and rotates its token (200 instead of 201).
/// The answer is the only place the token is shown.
#[utoipa::path(post, path = "/agents/register", tag = TAG, operation_id = "register_agent",
    request_body(content = RegisterRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "A new agent", body = Registered),
        (status = 200, description = "An agent of that name, updated, with a new token", body = Registered),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is over `server.body_limit`", body = ErrorBody),
        (status = 415, description = "The content type is not `application/json`", body = ErrorBody),
        (status = 422, description = "The body has the wrong shape, or a name, kind, capability or `max_concurrent` out of bounds", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping, or runs no pull board", body = ErrorBody),
    ))]
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
    let id = agents::register(engine, rt, &req.name, profile, hash).await?;
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

/// Heartbeat
///
/// Keeps the agent online and its leases alive; answers the tasks it holds, with their claim
/// epochs. The body is optional (`{}`).
#[utoipa::path(post, path = "/agents/heartbeat", tag = TAG, operation_id = "agent_heartbeat",
    request_body(content = Option<DequeueRequest>, content_type = "application/json",
        description = "Optional and empty"),
    responses(
        (status = 200, description = "The agent's lease and the tasks it holds", body = HeartbeatAnswer),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is over `server.body_limit`", body = ErrorBody),
        (status = 422, description = "The body is not an empty object", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping", body = ErrorBody),
    ))]
async fn heartbeat(
    State(app): State<AppState>,
    Extension(agent): Extension<AgentEntry>,
    OptionalJson(_): OptionalJson<DequeueRequest>,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    let rt = app.runtime()?;
    let now = Timestamp::now();
    let signal = AgentSignal::Heartbeat { at: now };
    app.engine()?
        .signal_unkeyed::<PullAgent>(agent.id, &signal, "heartbeat")
        .await?;
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

/// Deregister
///
/// The agent goes away: every task it holds goes back to the queue. Its token stops working.
#[utoipa::path(post, path = "/agents/deregister", tag = TAG, operation_id = "deregister_agent",
    responses(
        (status = 200, description = "Deregistered, with the tasks put back in the queue", body = Deregistered),
        (status = 503, description = "The daemon is recovering or stopping, or the deregistration is recorded but not yet applied (retry)", body = ErrorBody),
    ))]
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
        .await?;
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
        let _ = tasks.signal(*id, &lost, &fresh_key("deregistered")).await;
    }
    Ok(Json(Deregistered {
        agent_id: agent.id,
        status: Liveness::Deregistered.as_str().to_string(),
        requeued,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AgentQuery {
    /// Only agents with this capability.
    capability: Option<String>,
    /// Only agents with this status: `online`, `offline` or `deregistered`.
    status: Option<String>,
}

/// List pull agents
#[utoipa::path(get, path = "/agents", tag = TAG, operation_id = "list_agents",
    params(AgentQuery),
    responses(
        (status = 200, description = "The registered agents", body = AgentList),
        (status = 400, description = "An unknown status or parameter", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping, or runs no pull board", body = ErrorBody),
    ))]
async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<AgentQuery>,
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

/// Dequeue a task
///
/// Claims the oldest, most urgent task this agent can run (its kinds and capabilities), with
/// a lease; 204 when there is none. A repeated `Idempotency-Key` answers the same claim.
#[utoipa::path(post, path = "/tasks/dequeue", tag = TAG, operation_id = "dequeue_task",
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "A repeated key is the same request (1 to 128 bytes of visible ASCII)"),
    ),
    request_body(content = Option<DequeueRequest>, content_type = "application/json",
        description = "Optional and empty"),
    responses(
        (status = 200, description = "A task, now held by this agent, and its lease", body = Dequeued),
        (status = 204, description = "No task for this agent"),
        (status = 400, description = "The body is not JSON, or the `Idempotency-Key` is not visible ASCII", body = ErrorBody),
        (status = 413, description = "The body is over `server.body_limit`", body = ErrorBody),
        (status = 422, description = "The body is not an empty object, or the `Idempotency-Key` is empty or too long", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping, or the claim is not yet settled (retry)", body = ErrorBody),
    ))]
async fn dequeue(
    State(app): State<AppState>,
    Extension(agent): Extension<AgentEntry>,
    headers: HeaderMap,
    OptionalJson(_): OptionalJson<DequeueRequest>,
) -> Result<Response, ApiError> {
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
        task: PulledTask::of(
            crate::steps::names::TaskNames::of(app.engine()?),
            granted.task.id,
            &granted.task.state,
        ),
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

/// Report a held task's status
///
/// `running` (also as progress) or `failed`, under the claim's epoch.
#[utoipa::path(post, path = "/tasks/{id}/status", tag = TAG, operation_id = "report_task_status",
    params(TaskId,
        ("Idempotency-Key" = Option<String>, Header,
            description = "A repeated key is the same message (1 to 128 bytes of visible ASCII)"),
    ),
    request_body(content = StatusRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The task's answer", body = TaskAnswer),
        (status = 400, description = "The body is not JSON, or the `Idempotency-Key` is not visible ASCII", body = ErrorBody),
        (status = 403, description = "This agent does not hold the task", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task's state does not allow it, or the epoch is stale (`stale_epoch`)", body = ErrorBody),
        (status = 413, description = "The body is over `server.body_limit`", body = ErrorBody),
        (status = 415, description = "The content type is not `application/json`", body = ErrorBody),
        (status = 422, description = "The body has the wrong shape or values, or the `Idempotency-Key` is empty or too long", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping, or the message is recorded but not yet handled (retry)", body = ErrorBody),
    ))]
async fn status(
    State(app): State<AppState>,
    Extension(agent): Extension<AgentEntry>,
    TaskId(id): TaskId,
    headers: HeaderMap,
    ApiJson(req): ApiJson<StatusRequest>,
) -> Result<Json<TaskAnswer>, ApiError> {
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

/// Complete a held task
///
/// The agent says it is done; the task then waits for (or checks) the receipt.
#[utoipa::path(post, path = "/tasks/{id}/complete", tag = TAG, operation_id = "complete_task",
    params(TaskId,
        ("Idempotency-Key" = Option<String>, Header,
            description = "A repeated key is the same message (1 to 128 bytes of visible ASCII)"),
    ),
    request_body(content = CompleteRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The task's answer", body = TaskAnswer),
        (status = 400, description = "The body is not JSON, or the `Idempotency-Key` is not visible ASCII", body = ErrorBody),
        (status = 403, description = "This agent does not hold the task", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task's state does not allow it, or the epoch is stale (`stale_epoch`)", body = ErrorBody),
        (status = 413, description = "The body is over `server.body_limit`", body = ErrorBody),
        (status = 415, description = "The content type is not `application/json`", body = ErrorBody),
        (status = 422, description = "The body has the wrong shape or values, or the `Idempotency-Key` is empty or too long", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping, or the message is recorded but not yet handled (retry)", body = ErrorBody),
    ))]
async fn complete(
    State(app): State<AppState>,
    Extension(agent): Extension<AgentEntry>,
    TaskId(id): TaskId,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<Json<TaskAnswer>, ApiError> {
    let message = FromAgent::Complete {
        summary: req.summary.chars().take(64 * 1024).collect(),
    };
    let key = request_key(&headers, "complete")?;
    let reply = Tasks::new(app.engine()?)
        .from_agent(id, &agent, req.epoch, message, &key)
        .await?;
    Ok(Json(answer(id, reply)))
}

/// Send a receipt
///
/// The branch and commits of a held task's work; the daemon checks them with git.
#[utoipa::path(post, path = "/receipts", tag = TAG, operation_id = "send_receipt",
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "A repeated key is the same message (1 to 128 bytes of visible ASCII)"),
    ),
    request_body(content = ReceiptRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The task's answer, and whether the receipt was verified", body = TaskAnswer),
        (status = 400, description = "The body is not JSON, or the `Idempotency-Key` is not visible ASCII", body = ErrorBody),
        (status = 403, description = "This agent does not hold the task", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task's state does not allow it, or the epoch is stale (`stale_epoch`)", body = ErrorBody),
        (status = 413, description = "The body is over `server.body_limit`", body = ErrorBody),
        (status = 415, description = "The content type is not `application/json`", body = ErrorBody),
        (status = 422, description = "The body has the wrong shape or values, or the `Idempotency-Key` is empty or too long", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping, or the message is recorded but not yet handled (retry)", body = ErrorBody),
    ))]
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

/// Assign a task
///
/// Pins a task to a pull agent (`http_pull`) or a host (`ssh_cli`).
#[utoipa::path(post, path = "/tasks/{id}/assign", tag = "tasks", operation_id = "assign_task",
    params(TaskId),
    request_body(content = AssignRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The task, pinned", body = TaskView),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 403, description = "The task's state refuses the assignment", body = ErrorBody),
        (status = 404, description = "No such task, agent or host", body = ErrorBody),
        (status = 409, description = "The task's state does not allow it", body = ErrorBody),
        (status = 413, description = "The body is over `server.body_limit`", body = ErrorBody),
        (status = 415, description = "The content type is not `application/json`", body = ErrorBody),
        (status = 422, description = "The body has the wrong shape, both or neither target, or an execution mode that does not fit", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping, or the assignment is not yet handled (retry)", body = ErrorBody),
    ))]
async fn assign(
    State(app): State<AppState>,
    TaskId(id): TaskId,
    ApiJson(req): ApiJson<AssignRequest>,
) -> Result<Json<TaskView>, ApiError> {
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
