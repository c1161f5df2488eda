//! The HTTP API (SPEC §5): an axum router over shared [`AppState`], and the OpenAPI document of
//! that router, served at `GET /openapi.json`.
//!
//! Handlers stay thin: they parse the request, call the engine (or a step module) and map the
//! result to JSON. Every error answer has the shape `{"error": {"code", "message"}}`
//! ([`ApiError`], documented as [`views::ErrorBody`]).
//!
//! # How a route gets documented
//!
//! Routes and their documentation are registered in the same call, so the document lists
//! exactly the routes the router serves (utoipa-axum's `OpenApiRouter`; a test asks the real
//! router for every documented route). A new module, e.g. `agents.rs`:
//!
//! 1. annotates each handler with `#[utoipa::path(post, path = "/agents/register",
//!    tag = "agents", request_body = …, params(…), responses((status = 200, body = …),
//!    (status = 422, body = ErrorBody), …))]`: the path relative to where the module is
//!    mounted, every status the handler can answer, with [`views::ErrorBody`] for errors; the
//!    doc comment's first line is the summary;
//! 2. derives `utoipa::ToSchema` on its request and answer types (and `utoipa::IntoParams` on
//!    query structs), and takes bodies and queries with the [`extract`] extractors so that
//!    every rejection is a documented JSON error;
//! 3. has `pub fn routes() -> OpenApiRouter<AppState>` built only with
//!    `OpenApiRouter::default().routes(routes!(handler, …))` (one `routes!` per path; never
//!    `.route(…)`, which would serve a route the document does not show);
//! 4. is merged in [`documented_routes`] through the guard it needs: `auth::admin_only`,
//!    `auth::agent_only` or `auth::registrar_only` (each adds its layer and, to each operation,
//!    the security requirement and the 401 answer); a new kind of token gets its own function
//!    there, built on `auth::guarded`;
//! 5. adds its routes to `ROUTES` in `tests/openapi.rs`, whose tests then check that they are
//!    served, guarded as documented, and answer what the document says (Schemathesis, in
//!    `tests/schemathesis.rs`, fuzzes them too).

pub mod agents;
pub mod auth;
pub mod events;
pub mod extract;
pub mod hosts;
pub mod pull_views;
pub mod serve;
pub mod tasks;
pub mod views;
pub mod webhooks;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa::{OpenApi as _, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::steps::runtime::Runtime;
use crate::workflow::Engine;
use views::{
    ErrorBody, ErrorDetail, Liveness, Readiness, ReadyStatus, RecoveryView, UnreadableView,
};

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    config: Arc<Config>,
    /// The coordinator's bearer token; `None` refuses every `/api/v1` request.
    admin_token: Option<String>,
    /// Where relative repository paths start (the daemon's working directory).
    base_dir: PathBuf,
    /// Set once the engine has opened the store and recovered.
    engine: OnceLock<Engine>,
    /// The hosts and their health; `None` in tests of the bare router.
    runtime: Option<Arc<Runtime>>,
}

impl AppState {
    /// State of a daemon whose engine is still opening; see [`AppState::set_engine`].
    pub fn new(config: Arc<Config>) -> Self {
        Self::with(config, None, PathBuf::from("."), None)
    }

    /// State with the admin token, the base directory of relative repository paths and the
    /// runtime whose hosts the host routes show.
    pub fn with(
        config: Arc<Config>,
        admin_token: Option<String>,
        base_dir: PathBuf,
        runtime: Option<Arc<Runtime>>,
    ) -> Self {
        AppState {
            inner: Arc::new(Shared {
                config,
                admin_token,
                base_dir,
                engine: OnceLock::new(),
                runtime,
            }),
        }
    }

    /// The runtime (hosts, health), or a 503 when this router runs without one.
    pub fn runtime(&self) -> Result<&Runtime, ApiError> {
        self.inner.runtime.as_deref().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_runtime",
                "this server runs no hosts",
            )
        })
    }

    pub fn admin_token(&self) -> Option<&str> {
        self.inner.admin_token.as_deref()
    }

    pub fn base_dir(&self) -> &std::path::Path {
        &self.inner.base_dir
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Marks the daemon ready: from now on handlers use `engine`. Only the first call counts.
    pub fn set_engine(&self, engine: Engine) {
        let _ = self.inner.engine.set(engine);
    }

    /// The engine, or a 503 while it is still recovering.
    pub fn engine(&self) -> Result<&Engine, ApiError> {
        self.inner.engine.get().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "recovering",
                "the store is being opened and recovered; retry shortly",
            )
        })
    }
}

/// The daemon's routes; `GET /openapi.json` serves their document.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config().server.body_limit;
    let (routes, openapi) = documented_routes(state.clone()).split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(Arc::new(openapi)))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Every route of the daemon together with its documentation (see the module doc).
pub fn documented_routes(state: AppState) -> OpenApiRouter<AppState> {
    let admin = tasks::routes()
        .merge(events::routes())
        .merge(hosts::routes())
        .merge(agents::admin_routes());
    let api = auth::admin_only(admin, state.clone())
        .merge(auth::agent_only(agents::agent_routes(), state.clone()))
        .merge(auth::registrar_only(agents::register_routes(), state))
        // Signed with the webhook secret instead of a bearer token.
        .merge(webhooks::routes());
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api)
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json))
}

/// The document `GET /openapi.json` serves.
pub fn openapi() -> OpenApi {
    documented_routes(AppState::new(Arc::new(Config::default()))).into_openapi()
}

/// The document's header; the paths come from the routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "agent-fleet",
        description = "Runs AI coding agents as durable workflows. Every error answer is \
            `{\"error\": {\"code\", \"message\"}}`. The routes under `/api/v1` need the \
            admin token as `Authorization: Bearer <token>`, except the pull agents' routes (their \
            own token) and the Forgejo webhook (signed with the webhook secret)."
    ),
    tags(
        (name = "tasks", description = "Submit, follow, cancel, retry and signal tasks"),
        (name = "hosts", description = "The hosts, their health and load"),
        (name = "agents", description = "Pull agents: registration, heartbeats, the agent list; \
            dequeue, status, completion and receipts of the tasks they hold"),
        (name = "forge", description = "Forgejo webhook deliveries, signed with the webhook secret"),
        (name = "daemon", description = "Liveness, readiness and this document")
    )
)]
struct ApiDoc;

/// Liveness
///
/// The process answers HTTP (even while the store is being recovered).
#[utoipa::path(get, path = "/healthz", tag = "daemon",
    responses((status = 200, description = "Alive", body = Liveness)))]
async fn healthz() -> Json<Liveness> {
    Json(Liveness {
        status: "ok".to_string(),
    })
}

/// Readiness
///
/// The engine has opened the store and recovered every unfinished workflow, and its store
/// works. After a failed commit (disk full, I/O error) it answers `failed` with the reason
/// until the daemon, which then stops, has exited.
#[utoipa::path(get, path = "/readyz", tag = "daemon",
    responses(
        (status = 200, description = "Ready, with what recovery found, and the ended \
            instances whose record cannot be read (`unreadable`, left untouched)", body = Readiness),
        (status = 503, description = "Still recovering (`{\"status\": \"recovering\"}`), or the \
            store failed (`{\"status\": \"failed\", \"reason\": …}`): the daemon exits to be \
            restarted", body = Readiness),
    ))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let Ok(engine) = state.engine() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: ReadyStatus::Recovering,
                recovery: None,
                reason: None,
                unreadable: Vec::new(),
            }),
        );
    };
    if let Some(reason) = engine.failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: ReadyStatus::Failed,
                recovery: None,
                reason: Some(reason),
                unreadable: Vec::new(),
            }),
        );
    }
    (
        StatusCode::OK,
        Json(Readiness {
            status: ReadyStatus::Ready,
            recovery: Some(RecoveryView::from(engine.recovery())),
            reason: None,
            unreadable: engine
                .unreadable()
                .into_iter()
                .map(|(id, reason)| UnreadableView { id, reason })
                .collect(),
        }),
    )
}

/// This document
///
/// The OpenAPI 3.1 document of every route, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "daemon",
    responses((status = 200, description = "The OpenAPI document", body = Object,
        content_type = "application/json")))]
async fn openapi_json(Extension(openapi): Extension<Arc<OpenApi>>) -> Response {
    Json(&*openapi).into_response()
}

/// A documented error answer: [`ErrorBody`] as JSON.
pub(crate) fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .build()
}

/// The operations of a path item, whatever their method.
pub(crate) fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// An error answer: `{"error": {"code", "message"}}` with its HTTP status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable (`not_found`, `conflict`, …).
    pub code: String,
    /// For humans.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
    }

    /// A failure on our side; the details go to the log, not to the client.
    pub fn internal(error: &dyn std::error::Error) -> Self {
        tracing::error!(%error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the daemon's log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use serde_json::json;
    use tower::ServiceExt;

    async fn get(state: AppState, uri: &str) -> (StatusCode, serde_json::Value) {
        let response = router(state)
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn recovering() -> AppState {
        AppState::new(Arc::new(Config::default()))
    }

    #[tokio::test]
    async fn healthz_answers_ok_while_the_engine_is_still_recovering() {
        let (status, body) = get(recovering(), "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "status": "ok" }));
    }

    #[tokio::test]
    async fn readyz_answers_503_recovering_until_the_engine_is_set() {
        let (status, body) = get(recovering(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, json!({ "status": "recovering" }));
    }

    #[tokio::test]
    async fn readyz_reports_the_recovery_once_the_engine_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::builder(dir.path().join("fleet.redb"))
            .open()
            .await
            .unwrap();
        let state = recovering();
        state.set_engine(engine.clone());
        let (status, body) = get(state, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ready");
        assert_eq!(body["recovery"]["instances"], 0);
        engine.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn unknown_routes_answer_a_json_404() {
        let (status, body) = get(recovering(), "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
    }
}
