//! Extractors whose every rejection is an [`ApiError`] (`{"error": {"code", "message"}}`),
//! never axum's plain-text answers: JSON bodies ([`ApiJson`], [`OptionalJson`]), raw bodies
//! ([`RawBody`]), query strings
//! ([`ApiQuery`]) and task ids in the path ([`TaskId`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};

use super::ApiError;
use crate::workflow::InstanceId;

/// A JSON body whose rejections are API errors (400 malformed, 413 too large, 415 not JSON,
/// 422 wrong shape).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => {
                let status = r.status();
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
                    _ => "bad_request",
                };
                Err(ApiError::new(status, code, r.body_text()))
            }
        }
    }
}

/// The raw bytes of a body (e.g. to check a signature over them): 400 unreadable, 413 too
/// large.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(req, state).await.map_err(|r| {
            let code = match r.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                _ => "bad_request",
            };
            ApiError::new(r.status(), code, r.body_text())
        })?;
        Ok(RawBody(body))
    }
}

/// An optional JSON body, whatever its content type: an empty (or blank) body, or `null`, means
/// `T::default()`. 400 malformed, 413 too large, 422 wrong shape.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(body) = RawBody::from_request(req, state).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        serde_json::from_slice::<Option<T>>(&body)
            .map(|v| OptionalJson(v.unwrap_or_default()))
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => {
                    ApiError::unprocessable(format!("invalid body: {e}"))
                }
                _ => ApiError::bad_request(format!("invalid JSON body: {e}")),
            })
    }
}

/// A query string whose rejections are 400s.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

/// The `{id}` of a task route. Anything that is not a task id (not a number, not UTF-8) is a
/// 404 like an unknown task: there is no such task.
pub struct TaskId(pub InstanceId);

impl<S: Send + Sync> FromRequestParts<S> for TaskId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found("no such task: task ids are numbers"))?;
        raw.parse()
            .map(TaskId)
            .map_err(|_| ApiError::not_found(format!("no task {raw:?}: task ids are numbers")))
    }
}

impl IntoParams for TaskId {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(
                    "The task's id (a number; anything else is an unknown task: 404).",
                ))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .example(Some(serde_json::Value::from("1")))
                .build(),
        ]
    }
}
