//! `POST /api/v1/webhooks/forgejo` (SPEC §5): the forge's webhook deliveries. No bearer token:
//! the body's HMAC-SHA256 (`X-Forgejo-Signature` or `X-Gitea-Signature`) is checked against the
//! webhook secret in constant time. The event is routed by `X-Forgejo-Event-Type` and becomes a
//! durable signal (or a new task) keyed by `X-Forgejo-Delivery`; the answer is 2xx only once
//! that is committed, so Forgejo redelivers what was not. Unknown events are acknowledged and
//! ignored.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::RawBody;
use super::views::ErrorBody;
use super::{ApiError, AppState};
use crate::io::forgejo::webhook;
use crate::steps::forge::FlowError;

/// The webhook route and its documentation (mounted under `/api/v1`, without a bearer guard).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(forgejo))
}

/// What became of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAnswer {
    /// `X-Forgejo-Delivery`.
    pub delivery: String,
    /// `X-Forgejo-Event-Type`.
    pub event: String,
    /// e.g. `task 7 created`, `task 7 signalled`, `ignored: event type issue_assign`.
    pub outcome: String,
}

/// Forgejo webhook
///
/// A delivery of a Forgejo (or Gitea) webhook, signed with the webhook secret. Issues with the
/// trigger label become tasks; pull request, review and push events reach the task of their
/// branch. A redelivery (same `X-Forgejo-Delivery`) changes nothing and is answered 200 again.
#[utoipa::path(post, path = "/webhooks/forgejo", tag = "forge",
    request_body(content = Object, content_type = "application/json",
        description = "The event payload, as Forgejo sends it"),
    params(
        ("X-Forgejo-Signature" = Option<String>, Header, description = "hex HMAC-SHA256 of the body (or X-Gitea-Signature)"),
        ("X-Forgejo-Event-Type" = Option<String>, Header, description = "e.g. issues, issue_label, pull_request, pull_request_review_rejected, push (or X-Gitea-Event-Type)"),
        ("X-Forgejo-Delivery" = Option<String>, Header, description = "The delivery's id: redeliveries are no-ops (or X-Gitea-Delivery)"),
    ),
    responses(
        (status = 200, description = "Committed (or ignored, or a redelivery)", body = WebhookAnswer),
        (status = 400, description = "No event type, no delivery id or one that is not 1 to 200 printable ASCII characters, or a payload that cannot be read", body = ErrorBody),
        (status = 401, description = "Missing or wrong signature", body = ErrorBody),
        (status = 404, description = "No forge is configured", body = ErrorBody),
        (status = 413, description = "The body is larger than server.body_limit", body = ErrorBody),
        (status = 422, description = "The issue fails the checks of a task submission (title, issue number, repository)", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping", body = ErrorBody),
    ))]
async fn forgejo(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<WebhookAnswer>, ApiError> {
    let forge = app
        .runtime()
        .ok()
        .and_then(|rt| rt.forge())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_configured",
                "no [forgejo] is configured on this daemon",
            )
        })?;
    webhook::verify(forge.secret(), &body, &headers)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string()))?;
    let event_type = webhook::event_type(&headers)
        .ok_or_else(|| ApiError::bad_request("no X-Forgejo-Event-Type (or X-Gitea-Event-Type)"))?;
    let delivery = delivery_id(&headers)?;
    let event = webhook::parse(&event_type, &body)
        .map_err(|e| ApiError::bad_request(format!("{event_type}: {e}")))?;
    let handled = forge.deliver(&event, &delivery).await.map_err(flow_error)?;
    tracing::info!(%delivery, event = %event_type, "webhook: {handled}");
    Ok(Json(WebhookAnswer {
        delivery,
        event: event_type,
        outcome: handled.to_string(),
    }))
}

/// Longest delivery id accepted (Forgejo's are UUIDs): it becomes an idempotency key.
const MAX_DELIVERY_LEN: usize = 200;

/// The delivery's id (`X-Forgejo-Delivery`, else `X-Gitea-Delivery`: the first one present and
/// not blank), trimmed: 1 to [`MAX_DELIVERY_LEN`] printable ASCII characters, no space, no
/// control character, or a 400 saying so.
fn delivery_id(headers: &HeaderMap) -> Result<String, ApiError> {
    let names = ["x-forgejo-delivery", "x-gitea-delivery"];
    let Some((name, raw)) = names.iter().find_map(|name| {
        let raw = headers.get(*name)?.as_bytes().trim_ascii();
        (!raw.is_empty()).then_some((name, raw))
    }) else {
        return Err(ApiError::bad_request(
            "no usable delivery id: X-Forgejo-Delivery (or X-Gitea-Delivery) is missing, or was \
             dropped because it held a control character",
        ));
    };
    if raw.len() > MAX_DELIVERY_LEN || !raw.iter().all(u8::is_ascii_graphic) {
        return Err(ApiError::bad_request(format!(
            "{name} must be 1 to {MAX_DELIVERY_LEN} printable ASCII characters, without spaces or \
             control characters"
        )));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

fn flow_error(e: FlowError) -> ApiError {
    match e {
        FlowError::Invalid(why) => ApiError::unprocessable(why),
        FlowError::NotReady => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "recovering",
            "the store is being opened and recovered; retry shortly",
        ),
        FlowError::Engine(e) => e.into(),
        FlowError::Forge(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "forge_unavailable",
            e.to_string(),
        ),
    }
}
