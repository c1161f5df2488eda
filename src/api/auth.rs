//! Bearer tokens, as layers in front of the `/api/v1` routes: the coordinator's admin token,
//! a pull agent's token (the agent is put in the request's extensions), and registration (the
//! admin token or `server.registration_token_env`'s). Tokens are compared in constant time; a
//! request without a valid one is a 401.
//!
//! [`admin_only`], [`agent_only`] and [`registrar_only`] put routes behind a layer and write the
//! same fact into their documentation: each operation gets the security requirement and the
//! 401 answer of its guard.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use super::{ApiError, AppState, error_response, operations_mut};

/// The security scheme of the coordinator's admin token in `GET /openapi.json`.
pub const ADMIN_SCHEME: &str = "admin_token";
/// The security scheme of a registered pull agent's token.
pub const AGENT_SCHEME: &str = "agent_token";
/// The security scheme of the registration token (`server.registration_token_env`).
pub const REGISTRATION_SCHEME: &str = "registration_token";

/// `routes` behind the admin token ([`require_admin`]).
pub fn admin_only(routes: OpenApiRouter<AppState>, state: AppState) -> OpenApiRouter<AppState> {
    guarded(
        routes.route_layer(axum::middleware::from_fn_with_state(state, require_admin)),
        &[ADMIN_SCHEME],
        "No or wrong `Authorization: Bearer <admin token>`",
    )
}

/// `routes` behind a registered pull agent's token ([`require_agent`]).
pub fn agent_only(routes: OpenApiRouter<AppState>, state: AppState) -> OpenApiRouter<AppState> {
    guarded(
        routes.route_layer(axum::middleware::from_fn_with_state(state, require_agent)),
        &[AGENT_SCHEME],
        "No agent token, an unknown one, or a deregistered agent's",
    )
}

/// `routes` behind the admin or the registration token ([`require_registrar`]).
pub fn registrar_only(routes: OpenApiRouter<AppState>, state: AppState) -> OpenApiRouter<AppState> {
    guarded(
        routes.route_layer(axum::middleware::from_fn_with_state(
            state,
            require_registrar,
        )),
        &[ADMIN_SCHEME, REGISTRATION_SCHEME],
        "No or wrong `Authorization: Bearer <registration or admin token>`",
    )
}

/// Documents a guard on every operation of `routes`: any one of `schemes` (bearer tokens) is
/// required, and its refusal is a 401.
fn guarded(
    mut routes: OpenApiRouter<AppState>,
    schemes: &[&str],
    refusal: &str,
) -> OpenApiRouter<AppState> {
    let openapi = routes.get_openapi_mut();
    for item in openapi.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            operation.security = Some(
                schemes
                    .iter()
                    .map(|s| SecurityRequirement::new(*s, Vec::<String>::new()))
                    .collect(),
            );
            operation
                .responses
                .responses
                .insert("401".to_string(), error_response(refusal).into());
        }
    }
    let components = openapi.components.get_or_insert_with(Default::default);
    for scheme in schemes {
        components.add_security_scheme(
            *scheme,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
    routes
}

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
        .and_then(|var| crate::secrets::var(var))
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
