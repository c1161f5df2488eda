//! A fake model server for end-to-end tests of the REAL agent CLIs: an HTTP server on
//! 127.0.0.1:<free port> that speaks
//!
//! * the Anthropic Messages API as Claude Code 2.1 uses it: `HEAD /` (its connectivity check),
//!   `POST /v1/messages?beta=true` with `stream: true` (SSE: `message_start`,
//!   `content_block_start/delta/stop`, `message_delta`, `message_stop`; text blocks and a `Bash`
//!   `tool_use` block streamed as `input_json_delta`), errors in Anthropic's JSON shape;
//! * the OpenAI Responses API as Codex 0.169 uses it: `POST /v1/responses` (SSE:
//!   `response.created`, `response.output_item.added/done`, `response.output_text.delta`,
//!   `response.completed` with usage; an `exec_command` `function_call` item), errors in OpenAI's
//!   JSON shape, and the `usage_limit_reached` 429 that Codex turns into "You've hit your usage
//!   limit".
//!
//! What each model request gets is decided by the test's [`Script`], a function of the
//! [`Request`] (its number, its turn within its conversation, whether it carries a tool result):
//! [`Script::shell_then_text`] ("run this command, then say this"), [`Script::fail_first`]
//! ("the first N requests fail, then …"), [`Script::queue`], or any closure. Every request, model
//! or not, lands in the request log ([`ModelServer::requests`]); anything the server does not
//! know is logged and answered 404 in the API's error shape.
//!
//! Runtime: the server runs on a tokio runtime of its own (1 worker), so it keeps answering while a
//! test blocks on a child process; dropping the handle shuts it down (allowed inside an async
//! test). A delayed answer is bounded by its own delay and by the server's life.

#![allow(dead_code)] // each includer uses a part of it

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

/// The model name the fake reports when a request names none.
pub const DEFAULT_MODEL: &str = "fake-model";

/// Which API a model request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/messages` (Claude Code).
    Anthropic,
    /// `POST /v1/responses` (Codex).
    OpenAi,
}

/// One request as the server saw it (model requests and every other one).
#[derive(Debug, Clone)]
pub struct Request {
    /// 1-based order of arrival over all requests.
    pub seq: usize,
    /// When it arrived, since the server started.
    pub at: Duration,
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Value::Null` when empty or not JSON).
    pub body: Value,
    /// `Some` for a model request (the ones the script answers).
    pub api: Option<Api>,
    /// 1-based number among model requests (0 for other requests).
    pub model_request: usize,
    /// The conversation this request belongs to: Claude's `x-claude-code-session-id` header (or
    /// the `session_id` in `metadata.user_id`), which is the `session_id` of its JSON result;
    /// Codex's `session-id` header (or `prompt_cache_key`), which is its `thread_id`. A resumed
    /// session keeps its id.
    pub session: Option<String>,
    /// 0-based index of this model request among the model requests of the same `session`
    /// (retries of a failed request count too; sessionless requests share one count).
    pub turn: usize,
    /// `model` of the body.
    pub model: Option<String>,
    /// Names of the tools the request offers.
    pub tools: Vec<String>,
    /// The text of the last user message (Claude: its text blocks; Codex: the last `user`
    /// message item). Does not include tool results.
    pub user_text: String,
    /// Every user-authored text of the conversation, in order (earlier turns too).
    pub user_texts: Vec<String>,
    /// Every assistant text of the conversation the client sent back (earlier answers).
    pub assistant_texts: Vec<String>,
    /// The tool results that END the conversation (what the client sends after running a tool
    /// call): the output texts; empty when the request ends with a user message.
    pub tool_results: Vec<String>,
    /// What the server answered (`text`, `shell: <cmd>`, `error 401` …), set once answered.
    pub reply: String,
}

impl Request {
    /// The value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when the request ends with tool results (the client ran a tool call).
    pub fn has_tool_result(&self) -> bool {
        !self.tool_results.is_empty()
    }

    /// True when any user text of the conversation (this turn or earlier) contains `needle`.
    pub fn prompt_contains(&self, needle: &str) -> bool {
        self.user_texts.iter().any(|t| t.contains(needle))
    }

    pub fn is_model_request(&self) -> bool {
        self.api.is_some()
    }

    /// Claude Code's `HEAD /` before its first request.
    pub fn is_connectivity_check(&self) -> bool {
        self.method == "HEAD" && self.path == "/"
    }

    /// A one-line summary for logs and assertion messages.
    pub fn summary(&self) -> String {
        let mut text: String = self.user_text.chars().take(60).collect();
        text = text.replace('\n', "⏎");
        format!(
            "#{} +{}ms {} {} session={} turn={} tool_results={} user_text={:?} -> {}",
            self.seq,
            self.at.as_millis(),
            self.method,
            self.path,
            self.session.as_deref().unwrap_or("-"),
            self.turn,
            self.tool_results.len(),
            text,
            self.reply
        )
    }
}

/// One scripted answer to a model request; rendered in the request's API.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A final text answer (`end_turn` / a completed `message` item).
    Text(String),
    /// A shell tool call running `command` (Claude: `Bash {command, description}`; Codex:
    /// `exec_command {cmd}`), after an optional short text.
    Shell {
        command: String,
        text: Option<String>,
    },
    /// An HTTP error with the API's JSON error body (Anthropic's
    /// `{"type":"error","error":{"type":…,"message":…}}`, OpenAI's `{"error":{…}}`).
    Error { status: u16, message: String },
    /// A usage limit that resets at `resets_at` (seconds since the epoch): HTTP 429 with the
    /// headers Anthropic sends for a rejected unified (subscription) limit and a rate limit
    /// (`retry-after`, `anthropic-ratelimit-unified-status: rejected`,
    /// `anthropic-ratelimit-unified-reset: <epoch>`, `anthropic-ratelimit-requests-reset:
    /// <RFC 3339>` …), or for Codex `{"error":{"type":"usage_limit_reached","resets_at":…}}`.
    UsageLimit { resets_at: u64, window: LimitWindow },
    /// `reply`, after a pause (before any byte of the answer).
    Delayed(Duration, Box<Reply>),
}

/// Which subscription limit a [`Reply::UsageLimit`] is (Anthropic's
/// `anthropic-ratelimit-unified-representative-claim`; Codex's body does not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitWindow {
    /// `five_hour`: Claude prints "You've hit your session limit · resets …".
    FiveHour,
    /// `seven_day`: Claude prints "You've hit your weekly limit · resets …".
    Weekly,
}

impl LimitWindow {
    fn claim(self) -> &'static str {
        match self {
            LimitWindow::FiveHour => "five_hour",
            LimitWindow::Weekly => "seven_day",
        }
    }

    /// The infix of the per-window headers (`anthropic-ratelimit-unified-5h-reset`).
    fn header_infix(self) -> &'static str {
        match self {
            LimitWindow::FiveHour => "5h",
            LimitWindow::Weekly => "7d",
        }
    }
}

impl Reply {
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Text(text.into())
    }

    pub fn shell(command: impl Into<String>) -> Reply {
        Reply::Shell {
            command: command.into(),
            text: None,
        }
    }

    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply::Error {
            status,
            message: message.into(),
        }
    }

    /// 401 with an "invalid key" message in the API's shape.
    pub fn unauthorized() -> Reply {
        Reply::error(401, "invalid x-api-key")
    }

    /// 500 with the API's generic internal-error message.
    pub fn server_error() -> Reply {
        Reply::error(500, "Internal server error")
    }

    /// The five-hour usage limit, resetting at `resets_at` (seconds since the epoch).
    pub fn usage_limit(resets_at: u64) -> Reply {
        Reply::UsageLimit {
            resets_at,
            window: LimitWindow::FiveHour,
        }
    }

    /// The weekly usage limit, resetting at `resets_at` (seconds since the epoch).
    pub fn weekly_limit(resets_at: u64) -> Reply {
        Reply::UsageLimit {
            resets_at,
            window: LimitWindow::Weekly,
        }
    }

    /// The five-hour usage limit, resetting `after` from now (rounded up to whole seconds).
    pub fn usage_limit_in(after: Duration) -> Reply {
        Reply::usage_limit(epoch_now() + after.as_secs() + u64::from(after.subsec_nanos() > 0))
    }

    /// This reply after a pause.
    pub fn delayed(self, pause: Duration) -> Reply {
        Reply::Delayed(pause, Box::new(self))
    }

    fn describe(&self) -> String {
        match self {
            Reply::Text(t) => format!("text {:?}", t.chars().take(40).collect::<String>()),
            Reply::Shell { command, .. } => format!("shell {command:?}"),
            Reply::Error { status, .. } => format!("error {status}"),
            Reply::UsageLimit { resets_at, window } => {
                format!("usage limit 429 {} resets_at={resets_at}", window.claim())
            }
            Reply::Delayed(d, r) => format!("after {}ms {}", d.as_millis(), r.describe()),
        }
    }
}

type ScriptFn = dyn FnMut(&Request) -> Reply + Send;

/// Decides the answer to each model request.
pub struct Script(Box<ScriptFn>);

impl Script {
    /// Any function of the request (see [`Request::model_request`], [`Request::turn`],
    /// [`Request::has_tool_result`], [`Request::prompt_contains`]).
    pub fn new(f: impl FnMut(&Request) -> Reply + Send + 'static) -> Script {
        Script(Box::new(f))
    }

    /// The same answer to every request.
    pub fn always(reply: Reply) -> Script {
        Script::new(move |_| reply.clone())
    }

    /// A text answer to every request.
    pub fn text(text: impl Into<String>) -> Script {
        Script::always(Reply::Text(text.into()))
    }

    /// The coding task: a request that does not end with a tool result (the first request of
    /// each conversation, and each new prompt of a resumed one) gets a shell call of `command`;
    /// a request carrying the tool's result gets `final_text`.
    pub fn shell_then_text(command: impl Into<String>, final_text: impl Into<String>) -> Script {
        let (command, final_text) = (command.into(), final_text.into());
        Script::new(move |req| {
            if req.has_tool_result() {
                Reply::Text(final_text.clone())
            } else {
                Reply::shell(command.clone())
            }
        })
    }

    /// `replies` in order to the first model requests, then `then` answers the rest (their
    /// [`Request::model_request`] numbers go on counting from the queue's).
    pub fn queue(replies: Vec<Reply>, then: Script) -> Script {
        let mut queue = std::collections::VecDeque::from(replies);
        let mut then = then.0;
        Script::new(move |req| match queue.pop_front() {
            Some(reply) => reply,
            None => then(req),
        })
    }

    /// The first `n` model requests get `reply` (e.g. [`Reply::server_error`]), the rest `then`.
    pub fn fail_first(n: usize, reply: Reply, then: Script) -> Script {
        Script::queue(vec![reply; n], then)
    }

    /// By turn within the conversation: `replies[turn]`, `then` past the end.
    pub fn by_turn(replies: Vec<Reply>, then: Script) -> Script {
        let mut then = then.0;
        Script::new(move |req| match replies.get(req.turn) {
            Some(reply) => reply.clone(),
            None => then(req),
        })
    }
}

struct Log {
    requests: Vec<Request>,
    script: Script,
}

struct Inner {
    started: Instant,
    log: Mutex<Log>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running fake; dropping it stops the server.
pub struct ModelServer {
    inner: Arc<Inner>,
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl ModelServer {
    /// Starts the server on 127.0.0.1:<free port>, answering model requests with `script`.
    pub fn start(script: Script) -> ModelServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-model")
            .enable_all()
            .build()
            .expect("fake model runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake model");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let inner = Arc::new(Inner {
            started: Instant::now(),
            log: Mutex::new(Log {
                requests: Vec::new(),
                script,
            }),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let _context = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        runtime.spawn(async move { axum::serve(listener, app).await });
        ModelServer {
            inner,
            port,
            runtime: Some(runtime),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>` (Claude's `ANTHROPIC_BASE_URL`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>/v1` (a Codex provider's `base_url`).
    pub fn openai_base_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// Replaces the script (for the requests still to come).
    pub fn set_script(&self, script: Script) {
        self.inner.lock().script = script;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().requests.clone()
    }

    /// The model requests so far (the ones the script answered).
    pub fn model_requests(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(Request::is_model_request)
            .collect()
    }

    /// How many model requests arrived.
    pub fn count(&self) -> usize {
        self.inner
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_model_request())
            .count()
    }

    /// The model requests whose conversation has a user text containing `needle`.
    pub fn requests_with_prompt(&self, needle: &str) -> Vec<Request> {
        self.model_requests()
            .into_iter()
            .filter(|r| r.prompt_contains(needle))
            .collect()
    }

    /// The distinct conversations (sessions) of the model requests, in order of appearance.
    pub fn sessions(&self) -> Vec<Option<String>> {
        let mut sessions: Vec<Option<String>> = Vec::new();
        for r in self.model_requests() {
            if !sessions.contains(&r.session) {
                sessions.push(r.session.clone());
            }
        }
        sessions
    }

    /// Requests that were not model requests nor the connectivity check (`HEAD /`).
    pub fn unknown_requests(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| !r.is_model_request() && !r.is_connectivity_check())
            .collect()
    }

    /// The request log, one summary line each (for assertion messages).
    pub fn log_text(&self) -> String {
        self.requests()
            .iter()
            .map(Request::summary)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (polling, bounded by `timeout`) until at least `n` model requests arrived.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.count() >= n
    }
}

// ---- serving ---------------------------------------------------------------------------------

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string());
    let bare_path = uri.path().trim_end_matches('/').to_string();
    let api = match (&method, bare_path.as_str()) {
        (&Method::POST, "/v1/messages") => Some(Api::Anthropic),
        (&Method::POST, "/v1/responses") => Some(Api::OpenAi),
        _ => None,
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let header_list: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut request = Request {
        seq: 0,
        at: inner.started.elapsed(),
        method: method.to_string(),
        path,
        headers: header_list,
        body,
        api,
        model_request: 0,
        session: None,
        turn: 0,
        model: None,
        tools: Vec::new(),
        user_text: String::new(),
        user_texts: Vec::new(),
        assistant_texts: Vec::new(),
        tool_results: Vec::new(),
        reply: String::new(),
    };
    match api {
        Some(Api::Anthropic) => read_anthropic(&mut request),
        Some(Api::OpenAi) => read_openai(&mut request),
        None => {}
    }

    // Log it and ask the script, under one lock (numbers and turns stay consistent).
    let reply = {
        let mut log = inner.lock();
        request.seq = log.requests.len() + 1;
        let reply = if api.is_some() {
            request.model_request = log.requests.iter().filter(|r| r.api.is_some()).count() + 1;
            request.turn = log
                .requests
                .iter()
                .filter(|r| r.api.is_some() && r.session == request.session)
                .count();
            let reply = (log.script.0)(&request);
            request.reply = reply.describe();
            Some(reply)
        } else if method == Method::HEAD && bare_path.is_empty() {
            request.reply = "200 (connectivity check)".into();
            None
        } else {
            request.reply = "404 (unknown to the fake)".into();
            None
        };
        eprintln!("fake model: {}", request.summary());
        log.requests.push(request.clone());
        reply
    };

    match (api, reply) {
        (Some(api), Some(reply)) => answer(api, &request, reply).await,
        _ if method == Method::HEAD && bare_path.is_empty() => plain(StatusCode::OK, ""),
        _ => {
            // In the shape of the API the client speaks (Anthropic's clients send a version).
            let message = format!("Unknown path {}", request.path);
            let body = if request.header("anthropic-version").is_some()
                || request.header("x-api-key").is_some()
            {
                anthropic_error_body(404, &message)
            } else {
                openai_error_body(404, &message)
            };
            json_response(404, &body, &[])
        }
    }
}

async fn answer(api: Api, request: &Request, reply: Reply) -> Response {
    let mut reply = reply;
    while let Reply::Delayed(pause, inner) = reply {
        tokio::time::sleep(pause).await;
        reply = *inner;
    }
    let model = request
        .model
        .clone()
        .unwrap_or_else(|| DEFAULT_MODEL.to_string());
    let n = request.model_request;
    match (api, reply) {
        (Api::Anthropic, Reply::Text(text)) => sse(anthropic_stream(&model, n, None, Some(&text))),
        (Api::Anthropic, Reply::Shell { command, text }) => {
            sse(anthropic_stream(&model, n, Some(&command), text.as_deref()))
        }
        (Api::OpenAi, Reply::Text(text)) => sse(openai_stream(&model, n, None, Some(&text))),
        (Api::OpenAi, Reply::Shell { command, text }) => {
            sse(openai_stream(&model, n, Some(&command), text.as_deref()))
        }
        (Api::Anthropic, Reply::Error { status, message }) => json_response(
            status,
            &anthropic_error_body(status, &message),
            &[("request-id", format!("req_fake{n:08}"))],
        ),
        (Api::OpenAi, Reply::Error { status, message }) => json_response(
            status,
            &openai_error_body(status, &message),
            &[("x-request-id", format!("req_fake{n:08}"))],
        ),
        (Api::Anthropic, Reply::UsageLimit { resets_at, window }) => {
            anthropic_usage_limit(n, resets_at, window)
        }
        (Api::OpenAi, Reply::UsageLimit { resets_at, .. }) => openai_usage_limit(n, resets_at),
        (_, Reply::Delayed(..)) => unreachable!("delays are taken above"),
    }
}

// ---- reading requests ----------------------------------------------------------------------

/// Text of an Anthropic content value: a string or an array of blocks (text blocks only).
fn anthropic_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            // Claude Code's injected context blocks are not what the user said.
            .filter(|t| !t.trim_start().starts_with("<system-reminder>"))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn read_anthropic(r: &mut Request) {
    let body = r.body.clone();
    r.model = body["model"].as_str().map(str::to_string);
    r.tools = body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    r.session = r
        .header("x-claude-code-session-id")
        .map(str::to_string)
        .or_else(|| session_in_user_id(&body["metadata"]["user_id"]));
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    for (i, message) in messages.iter().enumerate() {
        let last = i + 1 == messages.len();
        match message["role"].as_str() {
            Some("user") => {
                let text = anthropic_text(&message["content"]);
                let results: Vec<String> = message["content"]
                    .as_array()
                    .map(|blocks| {
                        blocks
                            .iter()
                            .filter(|b| b["type"] == "tool_result")
                            .map(|b| match &b["content"] {
                                Value::String(s) => s.clone(),
                                other => anthropic_text(other),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if last {
                    r.tool_results = results.clone();
                }
                if !text.is_empty() {
                    r.user_texts.push(text.clone());
                    r.user_text = text;
                }
            }
            Some("assistant") => {
                let text = anthropic_text(&message["content"]);
                if !text.is_empty() {
                    r.assistant_texts.push(text);
                }
            }
            _ => {}
        }
    }
}

/// Claude Code's `metadata.user_id`: either `user_<hash>_account_<id>_session_<uuid>` or a JSON
/// string with a `session_id`.
fn session_in_user_id(user_id: &Value) -> Option<String> {
    let s = user_id.as_str()?;
    if let Ok(v) = serde_json::from_str::<Value>(s)
        && let Some(id) = v["session_id"].as_str()
    {
        return Some(id.to_string());
    }
    s.split_once("_session_").map(|(_, id)| id.to_string())
}

/// Text of a Responses API message item's content (input_text / output_text parts).
fn openai_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn read_openai(r: &mut Request) {
    let body = r.body.clone();
    r.model = body["model"].as_str().map(str::to_string);
    r.tools = body["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| {
                    t["name"]
                        .as_str()
                        .or_else(|| t["type"].as_str())
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    r.session = r
        .header("session-id")
        .or_else(|| r.header("session_id"))
        .or_else(|| r.header("thread-id"))
        .map(str::to_string)
        .or_else(|| body["prompt_cache_key"].as_str().map(str::to_string));
    let items = body["input"].as_array().cloned().unwrap_or_default();
    let mut trailing_results: Vec<String> = Vec::new();
    for item in &items {
        let kind = item["type"].as_str().unwrap_or("message");
        match (kind, item["role"].as_str()) {
            ("message", Some("user")) => {
                trailing_results.clear();
                let text = openai_text(&item["content"]);
                // Codex sends its environment context and instructions as user messages too;
                // they are part of the conversation text but not "the prompt".
                if !text.is_empty() {
                    r.user_texts.push(text.clone());
                    if !is_codex_context(&text) {
                        r.user_text = text;
                    }
                }
            }
            ("message", Some("assistant")) => {
                trailing_results.clear();
                let text = openai_text(&item["content"]);
                if !text.is_empty() {
                    r.assistant_texts.push(text);
                }
            }
            ("function_call_output" | "custom_tool_call_output", _) => {
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => o
                        .get("content")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    other => openai_text(other),
                };
                trailing_results.push(output);
            }
            _ => {}
        }
    }
    r.tool_results = trailing_results;
}

/// The context messages Codex puts into the conversation as `user` items.
fn is_codex_context(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with("<environment_context>")
        || t.starts_with("<user_instructions>")
        || t.starts_with("# AGENTS.md")
        || t.starts_with("<permissions")
}

// ---- answers: Anthropic ----------------------------------------------------------------------

fn sse_event(out: &mut String, event: &str, data: &Value) {
    out.push_str("event: ");
    out.push_str(event);
    out.push_str("\ndata: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

/// An Anthropic message stream: optional text block, then optional `Bash` tool_use block.
fn anthropic_stream(model: &str, n: usize, command: Option<&str>, text: Option<&str>) -> String {
    let mut out = String::new();
    let usage = json!({
        "input_tokens": 12, "output_tokens": 1,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
        "service_tier": "standard"
    });
    sse_event(
        &mut out,
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": format!("msg_fake{n:08}"), "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": usage}}),
    );
    let mut index = 0;
    if let Some(text) = text {
        sse_event(
            &mut out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "text", "text": ""}}),
        );
        sse_event(&mut out, "ping", &json!({"type": "ping"}));
        for piece in chunks(text, 24) {
            sse_event(
                &mut out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": piece}}),
            );
        }
        sse_event(
            &mut out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
        index += 1;
    }
    if let Some(command) = command {
        let input =
            json!({"command": command, "description": "Run the task's shell command"}).to_string();
        sse_event(
            &mut out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": format!("toolu_fake{n:08}"), "name": "Bash",
                "input": {}}}),
        );
        for piece in chunks(&input, 32) {
            sse_event(
                &mut out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}),
            );
        }
        sse_event(
            &mut out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }
    let stop_reason = if command.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    sse_event(
        &mut out,
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"input_tokens": 12, "output_tokens": 18,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}),
    );
    sse_event(&mut out, "message_stop", &json!({"type": "message_stop"}));
    out
}

fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn anthropic_error_body(status: u16, message: &str) -> Value {
    json!({"type": "error",
           "error": {"type": anthropic_error_type(status), "message": message}})
}

/// What api.anthropic.com answers when a subscription's usage limit (the "unified" 5-hour
/// limit) is exhausted, plus the classic per-minute rate-limit headers.
fn anthropic_usage_limit(n: usize, resets_at: u64, window: LimitWindow) -> Response {
    let now = epoch_now();
    let wait = resets_at.saturating_sub(now).max(1);
    let reset_rfc3339 = rfc3339(resets_at);
    let infix = window.header_infix();
    let (window_status, window_reset, window_utilization) = (
        format!("anthropic-ratelimit-unified-{infix}-status"),
        format!("anthropic-ratelimit-unified-{infix}-reset"),
        format!("anthropic-ratelimit-unified-{infix}-utilization"),
    );
    let headers: Vec<(&str, String)> = vec![
        ("request-id", format!("req_fake{n:08}")),
        ("retry-after", wait.to_string()),
        ("anthropic-ratelimit-unified-status", "rejected".into()),
        ("anthropic-ratelimit-unified-reset", resets_at.to_string()),
        (
            "anthropic-ratelimit-unified-representative-claim",
            window.claim().into(),
        ),
        (&window_status, "rejected".into()),
        (&window_reset, resets_at.to_string()),
        (&window_utilization, "1.0".into()),
        (
            "anthropic-ratelimit-unified-overage-status",
            "rejected".into(),
        ),
        (
            "anthropic-ratelimit-unified-overage-disabled-reason",
            "org_level_disabled".into(),
        ),
        (
            "anthropic-ratelimit-unified-fallback-percentage",
            "0.5".into(),
        ),
        ("anthropic-ratelimit-requests-limit", "50".into()),
        ("anthropic-ratelimit-requests-remaining", "0".into()),
        ("anthropic-ratelimit-requests-reset", reset_rfc3339.clone()),
        ("anthropic-ratelimit-tokens-limit", "40000".into()),
        ("anthropic-ratelimit-tokens-remaining", "0".into()),
        ("anthropic-ratelimit-tokens-reset", reset_rfc3339.clone()),
        ("anthropic-ratelimit-input-tokens-limit", "40000".into()),
        ("anthropic-ratelimit-input-tokens-remaining", "0".into()),
        (
            "anthropic-ratelimit-input-tokens-reset",
            reset_rfc3339.clone(),
        ),
        ("anthropic-ratelimit-output-tokens-limit", "8000".into()),
        ("anthropic-ratelimit-output-tokens-remaining", "0".into()),
        ("anthropic-ratelimit-output-tokens-reset", reset_rfc3339),
    ];
    let body = json!({"type": "error", "error": {"type": "rate_limit_error",
        "message": "This request would exceed your account's rate limit. Please try again later."},
        "request_id": format!("req_fake{n:08}")});
    json_response(429, &body, &headers)
}

// ---- answers: OpenAI Responses ---------------------------------------------------------------

/// A Responses API stream: optional message item with `text`, then optional `exec_command`
/// function call.
fn openai_stream(model: &str, n: usize, command: Option<&str>, text: Option<&str>) -> String {
    let mut out = String::new();
    let response_id = format!("resp_fake{n:08}");
    let created = epoch_now();
    sse_event(
        &mut out,
        "response.created",
        &json!({"type": "response.created", "sequence_number": 0, "response": {
            "id": response_id, "object": "response", "created_at": created,
            "status": "in_progress", "model": model, "output": []}}),
    );
    let mut output_index = 0;
    let mut items = Vec::new();
    if let Some(text) = text {
        let item_id = format!("msg_fake{n:08}");
        sse_event(
            &mut out,
            "response.output_item.added",
            &json!({"type": "response.output_item.added", "output_index": output_index,
                    "item": {"type": "message", "id": item_id, "status": "in_progress",
                             "role": "assistant", "content": []}}),
        );
        sse_event(
            &mut out,
            "response.content_part.added",
            &json!({"type": "response.content_part.added", "item_id": item_id,
                    "output_index": output_index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
        );
        for piece in chunks(text, 24) {
            sse_event(
                &mut out,
                "response.output_text.delta",
                &json!({"type": "response.output_text.delta", "item_id": item_id,
                        "output_index": output_index, "content_index": 0, "delta": piece}),
            );
        }
        sse_event(
            &mut out,
            "response.output_text.done",
            &json!({"type": "response.output_text.done", "item_id": item_id,
                    "output_index": output_index, "content_index": 0, "text": text}),
        );
        let item = json!({"type": "message", "id": item_id, "status": "completed",
                          "role": "assistant",
                          "content": [{"type": "output_text", "text": text, "annotations": []}]});
        sse_event(
            &mut out,
            "response.output_item.done",
            &json!({"type": "response.output_item.done", "output_index": output_index,
                    "item": item}),
        );
        items.push(item);
        output_index += 1;
    }
    if let Some(command) = command {
        let arguments = json!({"cmd": command}).to_string();
        let item_id = format!("fc_fake{n:08}");
        let call_id = format!("call_fake{n:08}");
        sse_event(
            &mut out,
            "response.output_item.added",
            &json!({"type": "response.output_item.added", "output_index": output_index,
                    "item": {"type": "function_call", "id": item_id, "call_id": call_id,
                             "name": "exec_command", "arguments": "",
                             "status": "in_progress"}}),
        );
        sse_event(
            &mut out,
            "response.function_call_arguments.delta",
            &json!({"type": "response.function_call_arguments.delta", "item_id": item_id,
                    "output_index": output_index, "delta": arguments}),
        );
        sse_event(
            &mut out,
            "response.function_call_arguments.done",
            &json!({"type": "response.function_call_arguments.done", "item_id": item_id,
                    "output_index": output_index, "arguments": arguments}),
        );
        let item = json!({"type": "function_call", "id": item_id, "call_id": call_id,
                          "name": "exec_command", "arguments": arguments,
                          "status": "completed"});
        sse_event(
            &mut out,
            "response.output_item.done",
            &json!({"type": "response.output_item.done", "output_index": output_index,
                    "item": item}),
        );
        items.push(item);
    }
    sse_event(
        &mut out,
        "response.completed",
        &json!({"type": "response.completed", "response": {
            "id": response_id, "object": "response", "created_at": created,
            "status": "completed", "model": model, "output": items,
            "usage": {"input_tokens": 30, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 42}}}),
    );
    out
}

fn openai_error_body(status: u16, message: &str) -> Value {
    let (kind, code) = match status {
        401 => ("invalid_request_error", json!("invalid_api_key")),
        403 => (
            "invalid_request_error",
            json!("unsupported_country_region_territory"),
        ),
        404 => ("invalid_request_error", json!("not_found")),
        429 => ("rate_limit_exceeded", json!("rate_limit_exceeded")),
        400..=499 => ("invalid_request_error", Value::Null),
        _ => ("server_error", Value::Null),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// What the ChatGPT backend answers Codex when a plan's usage limit is reached; Codex parses
/// `error.type == "usage_limit_reached"` and `error.resets_at` (codex-rs/codex-api
/// `api_bridge.rs`).
fn openai_usage_limit(n: usize, resets_at: u64) -> Response {
    let wait = resets_at.saturating_sub(epoch_now());
    let body = json!({"error": {
        "type": "usage_limit_reached",
        "message": "The usage limit has been reached",
        "resets_at": resets_at,
        "resets_in_seconds": wait}});
    json_response(
        429,
        &body,
        &[
            ("x-request-id", format!("req_fake{n:08}")),
            ("retry-after", wait.max(1).to_string()),
        ],
    )
}

// ---- helpers ---------------------------------------------------------------------------------

fn chunks(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

fn sse(body: String) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(body))
        .expect("sse response")
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    Response::builder()
        .status(status)
        .body(Body::from(body))
        .expect("plain response")
}

fn json_response(status: u16, body: &Value, headers: &[(&str, String)]) -> Response {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("json response");
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

pub fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-11-21T17:05:00Z` for seconds since the epoch.
pub fn rfc3339(epoch_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(epoch_seconds)).to_string()
}
