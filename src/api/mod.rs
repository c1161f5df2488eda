//! The HTTP API (SPEC §5): an axum router over shared [`AppState`].
//!
//! Handlers stay thin: they parse the request, call the engine (or a step module) and map the
//! result to JSON. Every error answer has the shape `{"error": {"code", "message"}}`
//! ([`ApiError`]).

pub mod agents;
pub mod auth;
pub mod hosts;
pub mod pull_views;
pub mod tasks;
pub mod views;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::config::Config;
use crate::steps::runtime::Runtime;
use crate::workflow::Engine;

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

/// The daemon's routes.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config().server.body_limit;
    let admin = tasks::routes()
        .merge(hosts::routes())
        .merge(agents::admin_routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    let agent = agents::agent_routes().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_agent,
    ));
    let register = agents::register_routes().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_registrar,
    ));
    let api = admin.merge(agent).merge(register);
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Liveness: the process answers HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the engine has opened the store and recovered every unfinished workflow.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.engine() {
        Ok(engine) => {
            Json(json!({ "status": "ready", "recovery": engine.recovery() })).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "recovering" })),
        )
            .into_response(),
    }
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
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
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
