//! `GET /api/v1/events`: the engine's change feed as Server-Sent Events. Each committed change of
//! an instance is one event: `id:` its row number, `event:` its kind, `data:` a
//! [`FeedRowView`]. A reader resumes with `Last-Event-ID` (or `?after=`) and misses nothing:
//! the engine's feed reads the store from there, then waits for new commits.
//!
//! The stream never ends by itself while the daemon runs; it ends when the HTTP server stops
//! (the [`Stopping`] token `serve` gives every request, so a graceful shutdown never waits
//! for it), when the store fails, or when a row cannot be read.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt, future};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiQuery;
use super::serve::Stopping;
use super::views::{ErrorBody, FeedRowView};
use super::{ApiError, AppState};
use crate::workflow::{Engine, EngineError, FeedEvent, FeedRow, InstanceId, StoreError};

/// The resume header of Server-Sent Events: the `id:` of the last event the reader saw.
const LAST_EVENT_ID: &str = "last-event-id";
/// How often an idle stream sends a comment, so that proxies and readers see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The change feed's route and its documentation (mounted under `/api/v1`, behind the admin
/// token).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(RowSchema::openapi()).routes(routes!(events))
}

/// The rows' schema, which the stream's documentation names (an event stream's body has no
/// JSON schema of its own to reference it).
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(FeedRowView)))]
struct RowSchema;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct FeedQuery {
    /// Only rows after this row number (`Last-Event-ID` wins over it; `0`: every stored row).
    /// Without either, only the changes committed after the request.
    after: Option<u64>,
    /// Only the rows of this task (or other instance), by id.
    #[param(value_type = Option<u64>)]
    task: Option<InstanceId>,
    /// Only rows of these kinds, comma-separated: `started`, `step`, `signal`, `timer`,
    /// `woken`, `cancel_requested`, `effect_delivered`, `effect_abandoned`.
    #[param(example = "step,cancel_requested")]
    kind: Option<String>,
    /// Only the rows of this workflow (`agent-task`, `forge-sync`, `host`, `pull-agent`, `workspace-gc`).
    workflow: Option<String>,
}

/// Which rows a reader asked for.
#[derive(Debug, Default)]
struct Filter {
    task: Option<InstanceId>,
    kinds: Option<BTreeSet<&'static str>>,
    workflow: Option<String>,
}

impl Filter {
    fn of(q: &FeedQuery) -> Result<Filter, ApiError> {
        Ok(Filter {
            task: q.task,
            kinds: q.kind.as_deref().map(kinds).transpose()?,
            workflow: q.workflow.clone(),
        })
    }

    fn admits(&self, row: &FeedRow) -> bool {
        self.task.is_none_or(|t| row.instance == t)
            && self
                .kinds
                .as_ref()
                .is_none_or(|k| k.contains(row.event.kind()))
            && self.workflow.as_ref().is_none_or(|w| row.workflow == *w)
    }
}

/// `step,signal` → the kinds; an unknown or missing one is a 400 that lists the valid kinds.
fn kinds(list: &str) -> Result<BTreeSet<&'static str>, ApiError> {
    let valid = || FeedEvent::KINDS.join(", ");
    let mut kinds = BTreeSet::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let kind = FeedEvent::KINDS
            .iter()
            .find(|k| **k == name)
            .ok_or_else(|| {
                ApiError::bad_request(format!("unknown kind {name:?}; valid kinds: {}", valid()))
            })?;
        kinds.insert(*kind);
    }
    if kinds.is_empty() {
        return Err(ApiError::bad_request(format!(
            "`kind` names no kind; valid kinds: {}",
            valid()
        )));
    }
    Ok(kinds)
}

/// The row a reader resumes after: `Last-Event-ID` (an empty one is none), else `?after=`;
/// `None`: start after the last row committed now.
fn resume_point(headers: &HeaderMap, after: Option<u64>) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(LAST_EVENT_ID) else {
        return Ok(after);
    };
    let text = value.to_str().map(str::trim).unwrap_or("?");
    if text.is_empty() {
        return Ok(after);
    }
    text.parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request("`Last-Event-ID` must be a row number"))
}

/// Change feed (Server-Sent Events)
///
/// Every committed change of a task (or of the daemon's other workflows) as it commits: one
/// event per row of the engine's change feed, `id:` the row number (rows are numbered without
/// gaps), `event:` the row's kind, `data:` a `FeedRowView` as JSON. Idle streams get a comment
/// every 15 s. Resume with `Last-Event-ID` (or `?after=`): the rows after it, stored ones
/// first. The stream ends when the daemon stops or its store fails; reconnect then.
#[utoipa::path(get, path = "/events", tag = "tasks", operation_id = "change_feed",
    params(FeedQuery,
        ("Last-Event-ID" = Option<String>, Header,
            description = "Resume after this row number (the last `id:` seen); wins over `after`"),
    ),
    responses(
        (status = 200, description = "A stream of Server-Sent Events whose `data:` is a \
            `FeedRowView` (`#/components/schemas/FeedRowView`); it does not end while the \
            daemon runs", body = String, content_type = "text/event-stream"),
        (status = 400, description = "An unknown kind (the message lists the valid ones), a \
            `Last-Event-ID`, `after` or `task` that is not a number, or an unknown parameter",
            body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 503, description = "The daemon is recovering or stopping, or its store \
            failed", body = ErrorBody),
    ))]
async fn events(
    State(app): State<AppState>,
    stopping: Option<Extension<Stopping>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<FeedQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let engine = app.engine()?;
    if let Some(reason) = engine.failure() {
        return Err(EngineError::Store(StoreError::Failed { reason }).into());
    }
    let filter = Filter::of(&q)?;
    if let Some(task) = filter.task {
        match engine.info(task) {
            Err(EngineError::UnknownInstance(_)) => {
                return Err(ApiError::not_found(format!("no task {task}")));
            }
            other => drop(other?),
        }
    }
    let after = resume_point(&headers, q.after)?.unwrap_or_else(|| engine.feed_last());
    let stop = stopping.map_or_else(CancellationToken::new, |Extension(Stopping(t))| t);
    let stream = rows(engine.clone(), after, filter, stop);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// The events of the rows after `after` that `filter` admits, until `stop`, a store failure or
/// a row that cannot be read.
fn rows(
    engine: Engine,
    after: u64,
    filter: Filter,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let ended = {
        let engine = engine.clone();
        async move {
            tokio::select! {
                () = stop.cancelled_owned() => {}
                reason = engine.failed() => {
                    tracing::info!(%reason, "the store failed: ending a change feed stream");
                }
            }
        }
    };
    engine
        .feed(after)
        .take_until(ended)
        .take_while(|row| {
            if let Err(e) = row {
                tracing::warn!("ending a change feed stream: {e}");
            }
            future::ready(row.is_ok())
        })
        .filter_map(move |row| future::ready(row.ok().filter(|r| filter.admits(r))))
        .map(|row| Ok(event(&row)))
}

/// The SSE event of one row.
fn event(row: &FeedRow) -> Event {
    let view = FeedRowView::from(row);
    let event = Event::default()
        .id(row.seq.to_string())
        .event(row.event.kind());
    // A view of strings and numbers always serialises; fall back to an empty object anyway.
    event
        .json_data(&view)
        .unwrap_or_else(|_| Event::default().id(row.seq.to_string()).data("{}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_the_stream_and_the_schema_of_its_rows() {
        let doc = serde_json::to_value(crate::api::openapi()).unwrap();
        let ok = &doc["paths"]["/api/v1/events"]["get"]["responses"]["200"];
        assert!(ok["content"]["text/event-stream"].is_object(), "{ok}");
        let row = &doc["components"]["schemas"]["FeedRowView"];
        assert_eq!(
            row["properties"]["kind"]["$ref"],
            "#/components/schemas/FeedKindName"
        );
        let kinds = &doc["components"]["schemas"]["FeedKindName"]["enum"];
        assert_eq!(*kinds, serde_json::json!(FeedEvent::KINDS));
    }

    #[test]
    fn kinds_are_read_from_a_comma_separated_list() {
        let kinds = kinds("step, signal,,step").unwrap();
        assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["signal", "step"]);
    }

    #[test]
    fn an_unknown_kind_is_refused_with_the_valid_ones() {
        let e = kinds("step,dance").unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(e.message.contains("\"dance\""), "{}", e.message);
        for kind in FeedEvent::KINDS {
            assert!(e.message.contains(kind), "{}", e.message);
        }
        assert!(kinds(" , ").is_err());
    }

    #[test]
    fn last_event_id_wins_over_after_and_must_be_a_number() {
        let header = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(LAST_EVENT_ID, v.parse().unwrap());
            headers
        };
        assert_eq!(resume_point(&HeaderMap::new(), Some(3)).unwrap(), Some(3));
        assert_eq!(resume_point(&HeaderMap::new(), None).unwrap(), None);
        assert_eq!(resume_point(&header("7"), Some(3)).unwrap(), Some(7));
        assert_eq!(resume_point(&header(""), Some(3)).unwrap(), Some(3));
        let e = resume_point(&header("seven"), None).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
    }
}
