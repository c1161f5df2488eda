//! The coordinator's host routes under `/api/v1`: each host's health, load, agent CLIs and
//! recent health events, as the daemon's checks found them.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::views::{ErrorBody, HostList, HostView};
use super::{ApiError, AppState};
use crate::steps::hosts;
use crate::steps::tasks::TaskError;

/// The host routes and their documentation (mounted under `/api/v1`, behind the admin token).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default().routes(routes!(list))
}

/// List hosts
///
/// Every configured host: where it is, its health and load, its agent CLIs and its recent
/// health events.
#[utoipa::path(get, path = "/hosts", tag = "hosts", operation_id = "list_hosts",
    responses(
        (status = 200, description = "Every configured host", body = HostList),
        (status = 503, description = "The daemon is recovering or stopping, or runs no hosts", body = ErrorBody),
    ))]
async fn list(State(app): State<AppState>) -> Result<Json<HostList>, ApiError> {
    let reports = hosts::reports(app.engine()?, app.runtime()?)
        .map_err(|e| ApiError::from(TaskError::Engine(e)))?;
    Ok(Json(HostList {
        hosts: reports.iter().map(HostView::from).collect(),
    }))
}
