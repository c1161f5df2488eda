//! The coordinator's bearer token: a layer in front of the `/api/v1` routes. The token is
//! compared in constant time; a request without it is a 401. [`admin_only`] puts routes behind
//! the layer and writes the same fact into their documentation.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use super::{ApiError, AppState, error_response, operations_mut};

/// The name of the admin token's security scheme in `GET /openapi.json`.
pub const ADMIN_SCHEME: &str = "admin_token";

/// `routes` behind the admin token: the layer in the router and, for each of their operations
/// in the document, the bearer requirement and its 401 answer.
pub fn admin_only(routes: OpenApiRouter<AppState>, state: AppState) -> OpenApiRouter<AppState> {
    let mut routes = routes.route_layer(axum::middleware::from_fn_with_state(state, require_admin));
    let openapi = routes.get_openapi_mut();
    for item in openapi.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            operation.security = Some(vec![SecurityRequirement::new(
                ADMIN_SCHEME,
                Vec::<String>::new(),
            )]);
            operation.responses.responses.insert(
                "401".to_string(),
                error_response("No or wrong `Authorization: Bearer <admin token>`").into(),
            );
        }
    }
    openapi
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            ADMIN_SCHEME,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    routes
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
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => {
            Ok(next.run(request).await)
        }
        Some(_) => Err(ApiError::unauthorized("wrong bearer token")),
        None => Err(ApiError::unauthorized(
            "this route needs `Authorization: Bearer <admin token>`",
        )),
    }
}
