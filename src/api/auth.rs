//! Bearer tokens, as layers in front of the `/api/v1` routes: the coordinator's admin token,
//! a pull agent's token (the agent is put in the request's extensions), and registration (the
//! admin token or `server.registration_token_env`'s). Tokens are compared in constant time; a
//! request without a valid one is a 401.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Lets the request through only with a registered pull agent's token, and hands the agent to
/// the handler (`Extension<AgentEntry>`).
pub async fn require_agent(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(token) = bearer(&request) else {
        return Err(ApiError::unauthorized(
            "this route needs `Authorization: Bearer <agent token>` (POST /api/v1/agents/register)",
        ));
    };
    let agent = app
        .runtime()?
        .board()
        .authenticate(token)
        .ok_or_else(|| ApiError::unauthorized("unknown agent token: register again"))?;
    if agent.deregistered {
        return Err(ApiError::unauthorized(
            "this agent is deregistered: register again",
        ));
    }
    request.extensions_mut().insert(agent);
    Ok(next.run(request).await)
}

/// Lets a registration through with the admin token or the registration token.
pub async fn require_registrar(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(given) = bearer(&request) else {
        return Err(ApiError::unauthorized(
            "registering needs `Authorization: Bearer <registration or admin token>`",
        ));
    };
    let registration = app
        .config()
        .server
        .registration_token_env
        .as_ref()
        .and_then(|var| std::env::var(var).ok())
        .filter(|t| !t.is_empty());
    let admin_ok = app.admin_token().is_some_and(|t| same(given, t));
    let registration_ok = registration.is_some_and(|t| same(given, &t));
    if admin_ok || registration_ok {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::unauthorized("wrong registration token"))
    }
}

/// Lets the request through only with `Authorization: Bearer <admin token>`.
pub async fn require_admin(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = app.admin_token() else {
        return Err(ApiError::unauthorized(
            "the daemon has no admin token configured",
        ));
    };
    match bearer(&request) {
        Some(token) if same(token, expected) => Ok(next.run(request).await),
        Some(_) => Err(ApiError::unauthorized("wrong bearer token")),
        None => Err(ApiError::unauthorized(
            "this route needs `Authorization: Bearer <admin token>`",
        )),
    }
}
