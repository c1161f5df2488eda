//! The typed HTTP client of the daemon's API (`/api/v1/tasks…`, `/api/v1/hosts`,
//! `/api/v1/events`), used by the `task` and `hosts` commands: one method per endpoint, answers
//! decoded into the shared [`crate::api::views`] and every failure turned into a
//! [`ClientError`] that says what to do about it. The change feed is read as Server-Sent Events
//! ([`Feed`], parsed by hand in [`sse`]: a few lines of the format, no dependency). [`render`]
//! turns the answers into the text the commands print.

pub mod render;
mod sse;

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::api::views::{
    CancelRequest, EventPage, FeedRowView, HostList, NewTask, RetryRequest, SignalAnswer,
    SignalRequest, TaskList, TaskView,
};

/// Where the daemon listens when nothing else says so.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8787";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a call waits through a recovering daemon (503 `recovering`) before it gives up.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(300);
/// How often a call asks a recovering daemon again.
const RECOVERY_POLL: Duration = Duration::from_millis(250);
/// How long a change feed stream may stay silent: the daemon sends a comment every 15 s, so a
/// longer silence is a connection that died without closing.
const FEED_READ_TIMEOUT: Duration = Duration::from_secs(45);
/// How much of a non-JSON error body is quoted in [`ClientError::Http`].
const BODY_EXCERPT: usize = 200;

/// Why a call to the daemon failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    BadServerUrl { url: String, reason: String },
    #[error("the token is not a valid HTTP header value")]
    BadToken,
    #[error(
        "cannot reach the daemon at {url}: {}; is `agent-fleet serve` running?",
        root_cause(source)
    )]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the daemon at {url} did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("request to {url} failed: {}", root_cause(source))]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The daemon's own error answer, `{"error": {"code", "message"}}`.
    #[error("{message} (HTTP {}, {code})", status.as_u16())]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// An error status without the API's error body (a proxy, another program on the port…).
    #[error("HTTP {status} from {url}: {excerpt}")]
    Http {
        url: String,
        status: StatusCode,
        excerpt: String,
    },
    #[error("unexpected answer from {url} (HTTP {}): {source}", status.as_u16())]
    Decode {
        url: String,
        status: StatusCode,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status of an answer the daemon gave, if it gave one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. }
            | ClientError::Http { status, .. }
            | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The innermost cause: reqwest's own message ("error sending request for url …") hides it.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// `POST /tasks`: the task, and whether this call created it (`false` when the idempotency key
/// had been seen before and the daemon answered the existing task).
#[derive(Debug, Clone)]
pub struct Submitted {
    pub task: TaskView,
    pub created: bool,
}

/// `GET /tasks` filters.
#[derive(Debug, Clone, Default)]
pub struct ListQuery<'a> {
    pub status: Option<&'a str>,
    pub limit: Option<u32>,
    pub after: Option<&'a str>,
}

/// `GET /events`: which rows, and where to resume.
#[derive(Debug, Clone, Default)]
pub struct FeedQuery<'a> {
    /// Only this task's rows.
    pub task: Option<&'a str>,
    /// Only these kinds (all when empty).
    pub kinds: &'a [&'a str],
    /// Sent as `Last-Event-ID`: the rows after it. Without it, the rows committed from now on.
    pub after: Option<u64>,
}

/// An open change feed stream (`GET /events`): its rows as they commit.
pub struct Feed {
    response: reqwest::Response,
    parser: sse::Parser,
    url: Url,
}

impl Feed {
    /// The next row; `None` when the daemon ended the stream (it stops, or its store failed).
    /// A connection that died, or stayed silent past the daemon's keep-alives, is a
    /// [`ClientError::Transport`]: reconnect after the last row seen.
    pub async fn next(&mut self) -> Result<Option<FeedRowView>, ClientError> {
        loop {
            if let Some(event) = self.parser.next_event() {
                let row =
                    serde_json::from_str(&event.data).map_err(|source| ClientError::Decode {
                        url: self.url.to_string(),
                        status: StatusCode::OK,
                        source,
                    })?;
                return Ok(Some(row));
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.parser.push(&bytes),
                Ok(None) => return Ok(None),
                Err(source) => {
                    return Err(ClientError::Transport {
                        url: self.url.to_string(),
                        source,
                    });
                }
            }
        }
    }
}

/// A client of one daemon. Cheap to clone. (No `Debug`: it holds the bearer token.)
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// For streams: no bound on the whole answer, only on silences ([`FEED_READ_TIMEOUT`]).
    streams: reqwest::Client,
    /// The server as given, for messages.
    server: String,
    /// `<server>/api/v1`.
    api: Url,
    auth: Option<HeaderValue>,
}

impl Client {
    /// A client of the daemon at `server` (`http://host:port`, optionally with a path prefix; a
    /// bare `host:port` means `http://`). Without a token, requests carry no `Authorization`.
    pub fn new(server: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let server = server.trim().trim_end_matches('/').to_string();
        let with_scheme = if server.contains("://") {
            server.clone()
        } else {
            format!("http://{server}")
        };
        let bad = |reason: String| ClientError::BadServerUrl {
            url: server.clone(),
            reason,
        };
        let mut api = Url::parse(&with_scheme).map_err(|e| bad(e.to_string()))?;
        if !matches!(api.scheme(), "http" | "https") {
            return Err(bad("only http:// and https:// are supported".into()));
        }
        if api.query().is_some() || api.fragment().is_some() {
            return Err(bad("a query or fragment has no place in it".into()));
        }
        api.path_segments_mut()
            .map_err(|()| bad("it cannot be a base URL".into()))?
            .pop_if_empty()
            .extend(["api", "v1"]);
        let auth = token
            .map(|t| {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", t.trim()))
                    .map_err(|_| ClientError::BadToken)?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("agent-fleet/", env!("CARGO_PKG_VERSION")))
        };
        let built = |b: reqwest::ClientBuilder| {
            b.build().map_err(|source| ClientError::Transport {
                url: server.clone(),
                source,
            })
        };
        let http = built(builder().timeout(REQUEST_TIMEOUT))?;
        let streams = built(builder().read_timeout(FEED_READ_TIMEOUT))?;
        Ok(Client {
            http,
            streams,
            server: with_scheme,
            api,
            auth,
        })
    }

    /// The server this client talks to, as shown in messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether requests carry a bearer token.
    pub fn has_token(&self) -> bool {
        self.auth.is_some()
    }

    /// `POST /tasks`.
    pub async fn submit(&self, task: &NewTask) -> Result<Submitted, ClientError> {
        let url = self.url(&["tasks"]);
        let (status, task) = self.call(Method::POST, url, Some(task)).await?;
        Ok(Submitted {
            task,
            created: status == StatusCode::CREATED,
        })
    }

    /// `GET /tasks?status=&limit=&after=`: one page.
    pub async fn list(&self, query: &ListQuery<'_>) -> Result<TaskList, ClientError> {
        let mut url = self.url(&["tasks"]);
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(status) = query.status {
                pairs.append_pair("status", status);
            }
            if let Some(limit) = query.limit {
                pairs.append_pair("limit", &limit.to_string());
            }
            if let Some(after) = query.after {
                pairs.append_pair("after", after);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.get(url).await
    }

    /// `GET /tasks/{id}`: the task with its events.
    pub async fn show(&self, id: &str) -> Result<TaskView, ClientError> {
        self.get(self.url(&["tasks", id])).await
    }

    /// `GET /tasks/{id}/events?after=SEQ`: the events after `after` (all of them without it).
    pub async fn events(&self, id: &str, after: Option<u64>) -> Result<EventPage, ClientError> {
        let mut url = self.url(&["tasks", id, "events"]);
        if let Some(after) = after {
            url.query_pairs_mut()
                .append_pair("after", &after.to_string());
        }
        self.get(url).await
    }

    /// `POST /tasks/{id}/cancel`.
    pub async fn cancel(&self, id: &str, request: &CancelRequest) -> Result<TaskView, ClientError> {
        let url = self.url(&["tasks", id, "cancel"]);
        Ok(self.call(Method::POST, url, Some(request)).await?.1)
    }

    /// `POST /tasks/{id}/retry`: a 409 when the task is not failed. `fresh`: from a fresh
    /// agent session.
    pub async fn retry(&self, id: &str, fresh: bool) -> Result<TaskView, ClientError> {
        let url = self.url(&["tasks", id, "retry"]);
        let body = RetryRequest { fresh };
        Ok(self.call(Method::POST, url, Some(&body)).await?.1)
    }

    /// `POST /tasks/{id}/signals`.
    pub async fn signal(
        &self,
        id: &str,
        request: &SignalRequest,
    ) -> Result<SignalAnswer, ClientError> {
        let url = self.url(&["tasks", id, "signals"]);
        Ok(self.call(Method::POST, url, Some(request)).await?.1)
    }

    /// `GET /hosts`: every host's health, load and agent CLIs as the daemon's checks found them.
    pub async fn hosts(&self) -> Result<HostList, ClientError> {
        self.get(self.url(&["hosts"])).await
    }

    /// `GET /events?task=&kind=` with `Last-Event-ID`: the change feed, open. A recovering
    /// daemon is waited for, as by every call.
    pub async fn feed(&self, query: &FeedQuery<'_>) -> Result<Feed, ClientError> {
        let mut url = self.url(&["events"]);
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(task) = query.task {
                pairs.append_pair("task", task);
            }
            if !query.kinds.is_empty() {
                pairs.append_pair("kind", &query.kinds.join(","));
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let began = std::time::Instant::now();
        loop {
            let mut request = self
                .streams
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "text/event-stream");
            if let Some(auth) = &self.auth {
                request = request.header(AUTHORIZATION, auth.clone());
            }
            if let Some(after) = query.after {
                request = request.header("last-event-id", after.to_string());
            }
            let response = request.send().await.map_err(|e| self.send_error(e))?;
            let status = response.status();
            if status.is_success() {
                return Ok(Feed {
                    response,
                    parser: sse::Parser::default(),
                    url,
                });
            }
            let bytes = response.bytes().await.unwrap_or_default();
            match error_answer(&url, status, &bytes) {
                ClientError::Api { code, .. }
                    if code == "recovering" && began.elapsed() < RECOVERY_WAIT =>
                {
                    tokio::time::sleep(RECOVERY_POLL).await;
                }
                other => return Err(other),
            }
        }
    }

    /// `<server>/api/v1/<segments…>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.api.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            // Always Ok: `new` checked that the URL can be a base.
            path.extend(segments);
        }
        url
    }

    async fn get<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        Ok(self.call::<(), _>(Method::GET, url, None).await?.1)
    }

    /// Sends one request; a success status decodes into `T`, anything else into an error. A
    /// daemon still recovering its workflows (503 `recovering`, which acts on nothing) is asked
    /// again until it is ready, for up to [`RECOVERY_WAIT`].
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<(StatusCode, T), ClientError> {
        let began = std::time::Instant::now();
        loop {
            match self.call_once(method.clone(), url.clone(), body).await {
                Err(ClientError::Api { code, .. })
                    if code == "recovering" && began.elapsed() < RECOVERY_WAIT =>
                {
                    tokio::time::sleep(RECOVERY_POLL).await;
                }
                other => return other,
            }
        }
    }

    async fn call_once<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<(StatusCode, T), ClientError> {
        let mut request = self.http.request(method, url.clone());
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.send_error(e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.to_string(),
                source,
            })?;
        if !status.is_success() {
            return Err(error_answer(&url, status, &bytes));
        }
        let value = serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            url: url.to_string(),
            status,
            source,
        })?;
        Ok((status, value))
    }

    fn send_error(&self, source: reqwest::Error) -> ClientError {
        let url = self.server.clone();
        if source.is_connect() {
            ClientError::Unreachable { url, source }
        } else if source.is_timeout() {
            ClientError::Timeout { url, source }
        } else {
            ClientError::Transport { url, source }
        }
    }
}

/// The API's `{"error": {"code", "message"}}`, or [`ClientError::Http`] for any other body.
fn error_answer(url: &Url, status: StatusCode, body: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Body,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Answer>(body) {
        Ok(Answer { error }) => ClientError::Api {
            status,
            code: error.code,
            message: error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = render::one_line(text.trim());
            ClientError::Http {
                url: url.to_string(),
                status,
                excerpt: if text.is_empty() {
                    "(empty body)".into()
                } else {
                    render::truncate(&text, BODY_EXCERPT)
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_root_is_under_the_server_url_and_ids_are_percent_encoded() {
        let client = Client::new("http://example.test:8787/", None).unwrap();
        assert_eq!(
            client.url(&["tasks", "a/b c"]).as_str(),
            "http://example.test:8787/api/v1/tasks/a%2Fb%20c"
        );
        let prefixed = Client::new("https://example.test/fleet", Some("t")).unwrap();
        assert_eq!(
            prefixed.url(&["tasks"]).as_str(),
            "https://example.test/fleet/api/v1/tasks"
        );
    }

    #[test]
    fn a_bare_host_and_port_means_http() {
        let client = Client::new("127.0.0.1:9000", None).unwrap();
        assert_eq!(client.server(), "http://127.0.0.1:9000");
    }

    #[test]
    fn other_schemes_and_newlines_in_tokens_are_refused() {
        assert!(matches!(
            Client::new("ftp://example.test", None),
            Err(ClientError::BadServerUrl { .. })
        ));
        assert!(matches!(
            Client::new("http://example.test", Some("a\nb")),
            Err(ClientError::BadToken)
        ));
    }

    #[test]
    fn an_api_error_body_becomes_code_and_message_and_anything_else_an_excerpt() {
        let url = Url::parse("http://x.test/api/v1/tasks").unwrap();
        let api = error_answer(
            &url,
            StatusCode::CONFLICT,
            br#"{"error":{"code":"conflict","message":"task 3 is not failed"}}"#,
        );
        assert_eq!(api.to_string(), "task 3 is not failed (HTTP 409, conflict)");
        let other = error_answer(&url, StatusCode::BAD_GATEWAY, b"<html>\nbad gateway</html>");
        assert_eq!(
            other.to_string(),
            "HTTP 502 Bad Gateway from http://x.test/api/v1/tasks: <html> bad gateway</html>"
        );
    }
}
