//! The coordinator's host routes under `/api/v1`: each host's health, load, agent CLIs and
//! recent health events, as the daemon's checks found them.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::views::{HostList, HostView};
use super::{ApiError, AppState};
use crate::steps::hosts;
use crate::steps::tasks::TaskError;

/// The host routes (mounted under `/api/v1`, behind the admin token).
pub fn routes() -> Router<AppState> {
    Router::new().route("/hosts", get(list))
}

async fn list(State(app): State<AppState>) -> Result<Json<HostList>, ApiError> {
    let reports = hosts::reports(app.engine()?, app.runtime()?)
        .map_err(|e| ApiError::from(TaskError::Engine(e)))?;
    Ok(Json(HostList {
        hosts: reports.iter().map(HostView::from).collect(),
    }))
}
