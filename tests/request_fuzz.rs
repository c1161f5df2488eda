//! No request makes the API answer 5xx or panic. Generated requests (proptest; a fixed seed
//! unless `PROPTEST_RNG_SEED` is set, `PROPTEST_CASES` cases, 500 by default, about 2 s) go
//! to every POST route of the real router, in process, over a real engine and store whose
//! tasks are in every state a pull agent meets (open, held, running, pinned, failed,
//! completed, cancelled). Half are well-formed (the route's token, JSON, a task the agent
//! holds with its epoch and the commit pushed on its branch), so that they reach the tasks'
//! steps; the others may be wrong anywhere: fields of the wrong type, huge or malformed
//! numbers, missing and unknown fields, any JSON, any bytes, deep nesting, oversized or
//! truncated bodies, unicode; no token, the wrong one, garbage; odd `Content-Type`,
//! `Idempotency-Key` and task ids. Every answer is below 500, every error answer is
//! `{"error": {"code", "message"}}`, and every route answered a success at least once.
//! Afterwards nothing has panicked, no task's step has failed, and the daemon still runs a
//! whole pull-agent flow.
//! Tasks may be retried (`dispatch.max_retries`), so assignments meet tasks in every state,
//! `agent_lost` ones included.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_fleet::api::{self, AppState};
use agent_fleet::config::Config;
use agent_fleet::steps::{self, names::TaskNames, runtime::Runtime};
use agent_fleet::workflow::Engine;
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, header};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

const ADMIN: &str = "fuzz-admin-token";
const BODY_LIMIT: usize = 16 * 1024;
const CASES: u32 = 500;
const SEED: u64 = 0x5eed_f1ee_7000_0001;
/// `dispatch.max_retries` of the fuzzed daemon.
const MAX_RETRIES: u32 = 3;
/// The two pull agents whose tokens the requests use: name and kinds.
const AGENTS: [(&str, &[&str]); 2] = [
    ("fuzz-agent", &["remote", "claude"]),
    ("fuzz-other", &["remote"]),
];

/// Panics anywhere in the process (handlers, engine tasks, the writer thread).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

/// The daemon's error log: `ApiError::internal` logs there the cause of every 500.
static LOG: Mutex<String> = Mutex::new(String::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_errors() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::ERROR)
        .with_ansi(false)
        .with_writer(|| LogSink)
        .try_init();
}

/// What the daemon logged since `mark` (a length of [`LOG`]).
fn logged_since(mark: usize) -> String {
    LOG.lock()
        .unwrap()
        .get(mark..)
        .unwrap_or_default()
        .to_string()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// The daemon, in process

/// The real router over a real engine, with two pull agents and tasks in every state.
struct Daemon {
    router: Router,
    engine: Engine,
    /// The tokens of the two agents (the first one's is renewed when a case deregisters it).
    tokens: Mutex<[String; 2]>,
    agent_ids: [u64; 2],
    task_ids: Vec<u64>,
    /// The tasks' ids and the next ones (tasks the fuzzing creates get them).
    ids: Vec<u64>,
    /// For each of `ids`, the commit pushed on its branch (receipts name them).
    shas: Vec<String>,
    /// How the store names its tasks' branches.
    names: TaskNames,
    /// The last tasks each agent was handed (id, epoch): what `@TASK@` and `@EPOCH@` in an
    /// agent's request stand for.
    held: Mutex<[Vec<(u64, u64)>; 2]>,
    /// Every task, also those the requests created: what `@TASK@` in the admin's stands for.
    tasks: Mutex<Vec<u64>>,
    /// Answers by route and status.
    seen: Mutex<BTreeMap<(String, u16), usize>>,
    origin: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("origin");
        std::fs::create_dir(&origin).unwrap();
        git(&origin, &["init", "-q", "-b", "main"]);
        std::fs::write(origin.join("README.md"), "# fuzz\n").unwrap();
        git(&origin, &["add", "README.md"]);
        git(&origin, &["commit", "-q", "-m", "initial"]);
        let text = format!(
            r#"[server]
body_limit = {BODY_LIMIT}
registration_token_env = "FUZZ_REGISTRATION_TOKEN_NOT_SET"

[storage]
path = "{store}"

[dispatch]
max_retries = {MAX_RETRIES}
retry_backoff = "20ms"
default_repo = "{origin}"

[[agents]]
name = "remote"
cli_template = "remote {{prompt_file}}"
output_format = "raw"

# Only the flow run after the fuzzing uses this kind.
[[agents]]
name = "after"
cli_template = "after {{prompt_file}}"
output_format = "raw"
"#,
            store = dir.path().join("data/fleet.redb").display(),
            origin = origin.display(),
        );
        let config = Arc::new(Config::from_toml_str(&text).unwrap());
        let base = dir.path().to_path_buf();
        let rt = Arc::new(Runtime::new(config.clone(), base.clone()).unwrap());
        let engine = steps::register(Engine::builder(dir.path().join("data/fleet.redb")), &rt)
            .open()
            .await
            .unwrap();
        steps::recover(&engine, &rt).unwrap();
        let state = AppState::with(config, Some(ADMIN.into()), base, Some(rt));
        state.set_engine(engine.clone());
        let router = api::router(state);
        let names = TaskNames::of(&engine);
        let mut d = Daemon {
            router,
            engine,
            tokens: Mutex::new([String::new(), String::new()]),
            agent_ids: [0, 0],
            task_ids: Vec::new(),
            ids: Vec::new(),
            shas: Vec::new(),
            names,
            held: Mutex::new([Vec::new(), Vec::new()]),
            tasks: Mutex::new(Vec::new()),
            seen: Mutex::new(BTreeMap::new()),
            origin,
            _dir: dir,
        };
        d.populate().await;
        d
    }

    /// Sends one request; answers the status and the body's bytes.
    async fn send(&self, req: Request<Body>) -> (u16, Option<String>, Vec<u8>) {
        let answer = self.router.clone().oneshot(req).await.unwrap();
        let status = answer.status().as_u16();
        let ct = answer
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = to_bytes(answer.into_body(), usize::MAX).await.unwrap();
        (status, ct, body.to_vec())
    }

    async fn call(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let req = Request::post(format!("/api/v1{path}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, _, body) = self.send(req).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let req = Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = self.send(req).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn register(&self, name: &str, kinds: &[&str]) -> (u64, String) {
        let request = json!({ "name": name, "agent_kinds": kinds, "max_concurrent": 4 });
        let (status, body) = self.call("/agents/register", ADMIN, request).await;
        assert!(status == 201 || status == 200, "{status} {body}");
        (
            body["agent_id"].as_u64().unwrap(),
            body["token"].as_str().unwrap().to_string(),
        )
    }

    async fn submit(&self, task: Value) -> u64 {
        let (status, body) = self.call("/tasks", ADMIN, task).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Dequeues for `token` until a task comes; answers its id and epoch.
    async fn dequeue(&self, token: &str) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.call("/tasks/dequeue", token, json!({})).await;
            if status == 200 {
                return (
                    body["task"]["id"].as_str().unwrap().parse().unwrap(),
                    body["lease"]["epoch"].as_u64().unwrap(),
                );
            }
            assert_eq!(status, 204, "{body}");
            assert!(Instant::now() < deadline, "nothing to dequeue");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn report(&self, token: &str, path: String, body: Value) {
        let (status, answer) = self.call(&path, token, body).await;
        assert_eq!(status, 200, "{path}: {answer}");
    }

    /// Agents and tasks in every state a request can meet.
    async fn populate(&mut self) {
        let (a, first) = self.register(AGENTS[0].0, AGENTS[0].1).await;
        let (b, other) = self.register(AGENTS[1].0, AGENTS[1].1).await;
        self.agent_ids = [a, b];
        *self.tokens.lock().unwrap() = [first.clone(), other.clone()];
        for n in 0..16 {
            let id = self
                .submit(json!({ "title": format!("task {n}"), "agent": "remote" }))
                .await;
            self.task_ids.push(id);
        }
        // A task whose repository cannot be read, for the other agent first.
        let broken = self
            .submit(
                json!({ "title": "broken", "agent": "remote", "priority": "urgent",
                            "repo": "file:///nonexistent/repository.git" }),
            )
            .await;
        self.task_ids.push(broken);
        let (status, body) = self
            .call(
                &format!("/tasks/{broken}/assign"),
                ADMIN,
                json!({ "agent_id": b }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // Held by the first agent, one of them running.
        let (held, epoch) = self.dequeue(&first).await;
        self.report(
            &first,
            format!("/tasks/{held}/status"),
            json!({ "epoch": epoch, "status": "running" }),
        )
        .await;
        let second = self.dequeue(&first).await;
        self.held.lock().unwrap()[0] = vec![(held, epoch), second];
        // Failed (its receipt cannot be checked), completed, and held by the other agent.
        let (got, epoch) = self.dequeue(&other).await;
        assert_eq!(got, broken);
        let receipt = json!({ "task_id": broken, "epoch": epoch, "branch": self.names.branch(broken),
                              "commits": ["0123456789"] });
        self.report(&other, "/receipts".into(), receipt).await;
        let (done, epoch) = self.dequeue(&other).await;
        self.report(
            &other,
            format!("/tasks/{done}/complete"),
            json!({ "epoch": epoch }),
        )
        .await;
        let kept = self.dequeue(&other).await;
        self.held.lock().unwrap()[1] = vec![kept];
        // Cancelled, and pinned to the other agent; the others stay open.
        let (_, list) = self.get("/api/v1/tasks?status=created").await;
        let open: Vec<u64> = list["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(open.len() >= 3, "{open:?}");
        let (status, body) = self
            .call(&format!("/tasks/{}/cancel", open[0]), ADMIN, json!({}))
            .await;
        assert_eq!(status, 202, "{body}");
        let (status, body) = self
            .call(
                &format!("/tasks/{}/assign", open[1]),
                ADMIN,
                json!({ "agent_id": b }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, failed) = self.get(&format!("/api/v1/tasks/{broken}")).await;
        assert_eq!(failed["status"], "failed", "{failed:#}");
        *self.tasks.lock().unwrap() = self.task_ids.clone();
        // Work pushed for every task there is and for the next ones.
        let last = *self.task_ids.iter().max().unwrap();
        self.ids = self
            .task_ids
            .iter()
            .copied()
            .chain(last + 1..last + 60)
            .collect();
        for id in &self.ids {
            let message = format!("work of {id}");
            let sha = git(
                &self.origin,
                &["commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", &message],
            );
            git(
                &self.origin,
                &[
                    "update-ref",
                    &format!("refs/heads/{}", self.names.branch(*id)),
                    &sha,
                ],
            );
            self.shas.push(sha);
        }
    }

    fn token(&self, which: usize) -> String {
        self.tokens.lock().unwrap()[which].clone()
    }

    /// After a case deregistered agent `n`: registering it again gives it a new token.
    async fn revive(&self, n: usize) {
        let (id, token) = self.register(AGENTS[n].0, AGENTS[n].1).await;
        assert_eq!(id, self.agent_ids[n]);
        self.tokens.lock().unwrap()[n] = token;
    }
}

// ---------------------------------------------------------------------------------------------
// Generated requests

#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Register,
    Heartbeat,
    Deregister,
    Dequeue,
    Status,
    Complete,
    Receipts,
    Assign,
    Submit,
    Cancel,
    Retry,
    Signals,
}

const ROUTES: [Route; 12] = [
    Route::Register,
    Route::Heartbeat,
    Route::Deregister,
    Route::Dequeue,
    Route::Status,
    Route::Complete,
    Route::Receipts,
    Route::Assign,
    Route::Submit,
    Route::Cancel,
    Route::Retry,
    Route::Signals,
];

impl Route {
    fn path(self, id: &str) -> String {
        match self {
            Route::Register => "/api/v1/agents/register".into(),
            Route::Heartbeat => "/api/v1/agents/heartbeat".into(),
            Route::Deregister => "/api/v1/agents/deregister".into(),
            Route::Dequeue => "/api/v1/tasks/dequeue".into(),
            Route::Status => format!("/api/v1/tasks/{id}/status"),
            Route::Complete => format!("/api/v1/tasks/{id}/complete"),
            Route::Receipts => "/api/v1/receipts".into(),
            Route::Assign => format!("/api/v1/tasks/{id}/assign"),
            Route::Submit => "/api/v1/tasks".into(),
            Route::Cancel => format!("/api/v1/tasks/{id}/cancel"),
            Route::Retry => format!("/api/v1/tasks/{id}/retry"),
            Route::Signals => format!("/api/v1/tasks/{id}/signals"),
        }
    }
}

#[derive(Debug, Clone)]
enum Token {
    None,
    Admin,
    /// The first agent's (`0`) or the other one's (`1`).
    Agent(usize),
    /// An `Authorization` header value as given.
    Raw(Vec<u8>),
}

/// One generated request.
#[derive(Clone)]
struct Case {
    route: Route,
    /// The `{id}` path segment, already percent-encoded where needed.
    id: String,
    token: Token,
    content_type: Option<&'static str>,
    key: Option<Vec<u8>>,
    /// Which of its agent's tasks `@TASK@` stands for.
    pick: prop::sample::Index,
    body: Vec<u8>,
}

/// Shown as the request itself, so that a failure reads as a reproducer.
impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "POST {}", self.route.path(&self.id))?;
        writeln!(f, "Authorization: {:?}", self.token)?;
        if let Some(ct) = self.content_type {
            writeln!(f, "Content-Type: {ct}")?;
        }
        if let Some(k) = &self.key {
            writeln!(f, "Idempotency-Key: {}", String::from_utf8_lossy(k))?;
        }
        write!(f, "{}", shorten(&self.body))
    }
}

/// Any JSON value, up to a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{0,12}", inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// JSON text that no well-formed value of a field is: numbers out of every range, bad escapes,
/// truncated text.
fn raw_oddity() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "1e999",
        "-1e999",
        "18446744073709551616",
        "-9223372036854775809",
        "340282366920938463463374607431768211456",
        "1.5",
        "-0",
        "-1",
        "NaN",
        "Infinity",
        "0x10",
        "01",
        "\"\\ud800\"",
        "\"\\u0000\"",
        "\"\\uDFFF\\uD800\"",
        "tru",
        "[",
        "{",
        "\"unterminated",
        "[1,]",
        "{\"a\" 1}",
    ])
    .prop_map(str::to_string)
}

/// `haystack` with every `from` replaced by `to`.
fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// A body as a reader wants to see it in a failure: its size, and its start when it is long.
fn shorten(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.chars().count() <= 600 {
        return format!("({} bytes) {text}", body.len());
    }
    let start: String = text.chars().take(300).collect();
    format!("({} bytes) {start}…", body.len())
}

fn text(v: impl Into<Value>) -> String {
    v.into().to_string()
}

/// Strings a field may meet: short unicode, controls, long ones.
fn any_string() -> BoxedStrategy<String> {
    prop_oneof![
        12 => ".{0,40}",
        1 => Just(String::new()),
        1 => Just(" \t\n".to_string()),
        1 => (1usize..5000).prop_map(|n| "é".repeat(n)),
        1 => Just("\u{0}\u{1b}[31m\u{202e}🦀".to_string()),
    ]
    .boxed()
}

/// One field of a route's body: its name, well-formed values (`None`: left out) and odd ones.
struct Field {
    name: &'static str,
    valid: BoxedStrategy<Option<String>>,
    odd: BoxedStrategy<String>,
}

fn field(
    name: &'static str,
    valid: impl Strategy<Value = String> + 'static,
    odd: impl Strategy<Value = String> + 'static,
) -> Field {
    Field {
        name,
        valid: valid.prop_map(Some).boxed(),
        odd: odd.boxed(),
    }
}

/// A field that may be left out.
fn optional(mut f: Field) -> Field {
    f.valid = prop::option::of(f.valid).prop_map(Option::flatten).boxed();
    f
}

fn quoted(s: impl Strategy<Value = String> + 'static) -> BoxedStrategy<String> {
    s.prop_map(text).boxed()
}

fn one_of(choices: &[&str]) -> BoxedStrategy<String> {
    let choices: Vec<String> = choices.iter().map(|s| s.to_string()).collect();
    prop::sample::select(choices).boxed()
}

/// A JSON list of 1 to 3 of `s`.
fn list_of(s: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop::collection::vec(s, 1..4).prop_map(text).boxed()
}

/// Odd lists: empty, too long, or of odd strings.
fn odd_list(s: BoxedStrategy<String>, most: usize) -> BoxedStrategy<String> {
    prop_oneof![
        Just("[]".to_string()),
        prop::collection::vec(s.clone(), most..most + 3).prop_map(text),
        prop::collection::vec(prop_oneof![s, any_string()], 1..4).prop_map(text),
    ]
    .boxed()
}

/// Numbers no field takes: out of range, negative, too big for u64.
fn odd_number() -> BoxedStrategy<String> {
    prop_oneof![
        Just(u64::MAX.to_string()),
        Just("0".to_string()),
        any::<u64>().prop_map(text),
        any::<i64>().prop_map(text),
        raw_oddity(),
    ]
    .boxed()
}

/// The fields of `route`'s body. `@TASK@`, `@BRANCH@`, `@EPOCH@` and `@SHA@` are filled in
/// when the request is sent (see [`Daemon::resolve`]).
fn fields(route: Route, d: &Daemon) -> Vec<Field> {
    let ids = || -> Vec<u64> { d.ids.iter().copied().chain([0, u64::MAX]).collect() };
    let [a, b] = d.agent_ids;
    let kinds = || one_of(&["remote", "claude", "demo"]);
    let odd_names = || one_of(&["", "bad name", "nope", "ünï", &"x".repeat(65)]);
    let epoch = || field("epoch", Just("@EPOCH@".to_string()), odd_number());
    let branches: Vec<String> = d.ids.iter().map(|id| d.names.branch(*id)).collect();
    let shas = d.shas.clone();
    match route {
        Route::Register => vec![
            field("name", quoted("[a-z]{1,8}"), quoted(odd_names())),
            field("agent_kinds", list_of(kinds()), odd_list(odd_names(), 33)),
            optional(field(
                "capabilities",
                list_of(one_of(&["gpu", "rust", "a:b/c.d-e_f"])),
                odd_list(odd_names(), 65),
            )),
            optional(field(
                "max_concurrent",
                one_of(&["1", "2", "4", "1000"]),
                prop_oneof![one_of(&["1001", "4294967296"]), odd_number()],
            )),
        ],
        Route::Heartbeat | Route::Deregister | Route::Dequeue | Route::Retry => vec![],
        Route::Status => vec![
            epoch(),
            field(
                "status",
                quoted(
                    prop_oneof![4 => Just("running".to_string()), 1 => Just("failed".to_string())],
                ),
                quoted(prop_oneof![
                    one_of(&["completed", "RUNNING", ""]),
                    any_string()
                ]),
            ),
            optional(field(
                "message",
                quoted(any_string()),
                any_json().prop_map(|v| v.to_string()),
            )),
        ],
        Route::Complete => vec![
            epoch(),
            optional(field("summary", quoted(any_string()), odd_number())),
        ],
        Route::Receipts => vec![
            field(
                "task_id",
                Just("@TASK@".to_string()),
                prop_oneof![prop::sample::select(ids()).prop_map(text), odd_number()],
            ),
            epoch(),
            field(
                "branch",
                quoted(Just("@BRANCH@".to_string())),
                quoted(prop_oneof![
                    prop::sample::select(branches),
                    one_of(&["main", "task/", "-x", "task/1/../2", &"a".repeat(300)]),
                    any_string(),
                ]),
            ),
            field(
                "commits",
                prop_oneof![
                    Just(text(["@SHA@"])),
                    Just(text(["@SHA@".to_string(), "@SHA@".to_string()])),
                ],
                prop_oneof![
                    prop::collection::vec(
                        prop_oneof![
                            prop::sample::select(shas),
                            "[0-9a-f]{0,70}".boxed(),
                            any_string(),
                        ],
                        0..4,
                    )
                    .prop_map(text),
                    (999usize..1003).prop_map(|n| text(vec!["abcdef0"; n])),
                ],
            ),
            optional(field("summary", quoted(any_string()), odd_number())),
            optional(field("pr_number", one_of(&["1", "42"]), odd_number())),
            optional(field(
                "pr_url",
                quoted(Just("https://forge.example/pulls/1".to_string())),
                quoted(prop_oneof![Just("u".repeat(3000)), any_string()]),
            )),
        ],
        Route::Assign => vec![
            field(
                "agent_id",
                prop::sample::select(vec![a, b]).prop_map(text),
                prop_oneof![one_of(&["999999", "0"]), odd_number()],
            ),
            optional(field(
                "host_id",
                quoted(one_of(&["local"])),
                quoted(prop_oneof![one_of(&["", "nope"]), any_string()]),
            )),
            optional(field(
                "execution_mode",
                quoted(one_of(&["http_pull", "ssh_cli"])),
                quoted(prop_oneof![one_of(&["undecided", ""]), any_string()]),
            )),
        ],
        Route::Submit => vec![
            field(
                "title",
                quoted("[A-Za-z][A-Za-z ]{0,30}"),
                quoted(prop_oneof![
                    one_of(&["", " "]),
                    Just("t".repeat(1025)),
                    any_string()
                ]),
            ),
            optional(field("body", quoted(any_string()), odd_number())),
            optional(field(
                "repo",
                quoted(one_of(&["origin", "./origin", "file:///nonexistent/x.git"])),
                quoted(prop_oneof![
                    one_of(&["/nonexistent", "", "x@:"]),
                    any_string()
                ]),
            )),
            optional(field(
                "base",
                quoted(one_of(&["main"])),
                quoted(any_string()),
            )),
            optional(field(
                "agent",
                quoted(one_of(&["remote", "claude"])),
                quoted(prop_oneof![odd_names(), any_string()]),
            )),
            optional(field("labels", list_of(any_string()), odd_number())),
            optional(field(
                "priority",
                quoted(one_of(&["low", "normal", "high", "urgent"])),
                quoted(prop_oneof![one_of(&["HIGH", ""]), any_string()]),
            )),
            optional(field(
                "type",
                quoted(one_of(&["bug", "feature"])),
                odd_number(),
            )),
            optional(field(
                "capabilities",
                list_of(one_of(&["gpu"])),
                odd_number(),
            )),
            optional(field("file_scope", list_of(any_string()), odd_number())),
            optional(field("validation", list_of(any_string()), odd_number())),
            optional(field(
                "idempotency_key",
                quoted("[a-z0-9]{1,12}"),
                quoted(prop_oneof![one_of(&["", &"k".repeat(300)]), any_string()]),
            )),
        ],
        Route::Cancel => vec![optional(field(
            "reason",
            quoted(any_string()),
            odd_number(),
        ))],
        Route::Signals => vec![
            field(
                "signal",
                prop_oneof![
                    Just(r#"{"type":"retry"}"#.to_string()),
                    any_string().prop_map(|t| json!({ "type": "note", "text": t }).to_string()),
                ],
                prop_oneof![
                    Just(r#"{"type":"nope"}"#.to_string()),
                    Just(r#"{"type":"note"}"#.to_string()),
                    any_json().prop_map(|v| v.to_string()),
                ],
            ),
            field(
                "idempotency_key",
                quoted("[a-z0-9]{1,12}"),
                quoted(prop_oneof![one_of(&["", &"s".repeat(300)]), any_string()]),
            ),
        ],
    }
}

fn render(fields: Vec<(String, String)>) -> Vec<u8> {
    let parts: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{}:{v}", text(k)))
        .collect();
    format!("{{{}}}", parts.join(",")).into_bytes()
}

/// A well-formed body of `route`.
fn valid_body(route: Route, d: &Daemon) -> BoxedStrategy<Vec<u8>> {
    let fields: Vec<BoxedStrategy<Option<(String, String)>>> = fields(route, d)
        .into_iter()
        .map(|f| {
            let name = f.name;
            f.valid
                .prop_map(move |v| v.map(|v| (name.to_string(), v)))
                .boxed()
        })
        .collect();
    fields
        .prop_map(move |fields| {
            let mut fields: Vec<(String, String)> = fields.into_iter().flatten().collect();
            if route == Route::Assign {
                // To an agent (the config has no host), with the mode that fits it or none.
                fields.retain(|(k, v)| {
                    k == "agent_id" || (k == "execution_mode" && v.contains("http_pull"))
                });
            }
            render(fields)
        })
        .boxed()
}

/// Any body: `route`'s own fields, each well-formed, odd, of any type, malformed JSON text or
/// left out, plus unknown fields, sometimes cut short; or any JSON, any bytes, deep nesting,
/// an oversized body, or none.
fn any_body(route: Route, d: &Daemon) -> BoxedStrategy<Vec<u8>> {
    let fields: Vec<BoxedStrategy<Option<(String, String)>>> = fields(route, d)
        .into_iter()
        .map(|f| {
            let name = f.name;
            let pair = move |v: String| Some((name.to_string(), v));
            prop_oneof![
                4 => f.valid.prop_map(move |v| v.map(|v| (name.to_string(), v))),
                2 => f.odd.prop_map(pair),
                1 => any_json().prop_map(move |v| pair(v.to_string())),
                1 => raw_oddity().prop_map(pair),
                1 => Just(None),
            ]
            .boxed()
        })
        .collect();
    let extra = prop::collection::vec(("[a-z_]{1,10}", any_json()), 0..2);
    let mutated = (
        fields,
        extra,
        prop::bool::weighted(0.1),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(fields, extra, truncate, cut)| {
            let all = fields
                .into_iter()
                .flatten()
                .chain(extra.into_iter().map(|(k, v)| (k, v.to_string())))
                .collect();
            let mut s = render(all);
            if truncate {
                // Anywhere, also inside a character: invalid UTF-8 too.
                s.truncate(cut.index(s.len()));
            }
            s
        });
    let deep = (
        prop::sample::select(vec![64usize, 129, 1000, 7000]),
        any::<bool>(),
    )
        .prop_map(|(n, arrays)| {
            if arrays {
                format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()
            } else {
                format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)).into_bytes()
            }
        });
    prop_oneof![
        50 => mutated,
        10 => any_json().prop_map(|v| v.to_string().into_bytes()),
        10 => prop::collection::vec(any::<u8>(), 0..200),
        10 => Just(Vec::new()),
        10 => deep,
        10 => (BODY_LIMIT - 8..BODY_LIMIT * 2)
            .prop_map(|n| format!("{{\"title\":\"{}\"}}", "x".repeat(n)).into_bytes()),
    ]
    .boxed()
}

/// The token `route` wants.
fn right_token(route: Route) -> BoxedStrategy<Token> {
    match route {
        Route::Register
        | Route::Assign
        | Route::Submit
        | Route::Cancel
        | Route::Retry
        | Route::Signals => Just(Token::Admin).boxed(),
        _ => prop_oneof![3 => Just(Token::Agent(0)), 1 => Just(Token::Agent(1))].boxed(),
    }
}

/// Mostly the token the route wants; otherwise a wrong one, none, or a malformed header.
fn any_token(route: Route) -> BoxedStrategy<Token> {
    prop_oneof![
        6 => right_token(route),
        2 => prop::sample::select(vec![Token::None, Token::Admin, Token::Agent(0), Token::Agent(1)]),
        2 => prop_oneof![
            Just(b"Bearer fleet_agent_00".to_vec()),
            Just(b"Bearer ".to_vec()),
            Just(b"Bearer".to_vec()),
            Just(format!("bearer {ADMIN}").into_bytes()),
            Just(format!("Basic {ADMIN}").into_bytes()),
            Just(format!("Bearer  {ADMIN}  ").into_bytes()),
            prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..40),
        ]
        .prop_map(Token::Raw),
    ]
    .boxed()
}

/// About half the requests are well-formed (the route's token, JSON, a known id, plausible fields),
/// so that they reach the tasks' steps; the others may be wrong anywhere.
fn case(d: &Daemon) -> impl Strategy<Value = Case> + use<> {
    let tasks: Vec<String> = d.task_ids.iter().map(u64::to_string).collect();
    let others: Vec<String> = d
        .ids
        .iter()
        .chain(&d.agent_ids)
        .map(u64::to_string)
        .collect();
    let known_id = prop_oneof![
        2 => Just("@TASK@".to_string()),
        1 => prop::sample::select(tasks),
        1 => prop::sample::select(others),
    ]
    .boxed();
    let any_id = prop_oneof![
        5 => known_id.clone(),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        3 => prop::sample::select(vec![
            "0", "-1", "18446744073709551615", "18446744073709551616", "abc", "1.0", "+1",
            "01", "%201", "%2F", "1%2F2", "%E2%9C%93", "%F0%9F%A6%80", "%00", "%FF",
            "%C3%28",
        ])
        .prop_map(str::to_string),
        1 => Just("9".repeat(400)),
    ]
    .boxed();
    let any_content_type = prop_oneof![
        5 => Just(Some("application/json")),
        1 => Just(None),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/json; charset=utf-8")),
        1 => Just(Some("application/problem+json")),
        1 => Just(Some("multipart/form-data; boundary=x")),
    ]
    .boxed();
    let fine_key = prop_oneof![
        Just(None),
        "[a-z0-9-]{1,16}".prop_map(|k| Some(k.into_bytes()))
    ];
    let any_key = prop_oneof![
        4 => fine_key.clone(),
        1 => Just(Some(b"same-key".to_vec())),
        1 => Just(Some(Vec::new())),
        1 => Just(Some(vec![b'k'; 129])),
        1 => "[ -~]{1,20}".prop_map(|k| Some(k.into_bytes())),
        1 => prop::collection::vec(0x80u8..=0xff, 1..8).prop_map(Some),
    ]
    .boxed();
    let fine_key = fine_key.boxed();
    let mut routes: Vec<(u32, BoxedStrategy<Case>)> = Vec::new();
    for route in ROUTES {
        let well_formed = (
            right_token(route),
            known_id.clone(),
            fine_key.clone(),
            any::<prop::sample::Index>(),
            valid_body(route, d),
        )
            .prop_map(move |(token, id, key, pick, body)| Case {
                route,
                id,
                token,
                content_type: Some("application/json"),
                key,
                pick,
                body,
            });
        let anything = (
            any_token(route),
            any_id.clone(),
            any_content_type.clone(),
            any_key.clone(),
            any::<prop::sample::Index>(),
            any_body(route, d),
        )
            .prop_map(move |(token, id, content_type, key, pick, body)| Case {
                route,
                id,
                token,
                content_type,
                key,
                pick,
                body,
            });
        // Cancels and deregistrations would soon leave nothing to work on.
        let weight = match route {
            Route::Cancel | Route::Deregister => 1,
            _ => 4,
        };
        routes.push((weight, well_formed.boxed()));
        routes.push((weight, anything.boxed()));
    }
    prop::strategy::Union::new_weighted(routes)
}

// ---------------------------------------------------------------------------------------------
// The property

impl Daemon {
    /// The path and body of `c`, `@TASK@`, `@BRANCH@`, `@EPOCH@` and `@SHA@` replaced by one
    /// of the tasks its agent was handed (any task for other tokens), its branch, its epoch and
    /// its pushed commit.
    fn resolve(&self, c: &Case) -> (String, Vec<u8>) {
        let (task, epoch) = match c.token {
            Token::Agent(n) => {
                let held = &self.held.lock().unwrap()[n];
                if held.is_empty() {
                    (0, 1)
                } else {
                    held[c.pick.index(held.len())]
                }
            }
            _ => {
                let tasks = self.tasks.lock().unwrap();
                (tasks[c.pick.index(tasks.len())], 1)
            }
        };
        let sha = self
            .ids
            .iter()
            .position(|&id| id == task)
            .map_or("0000000", |i| self.shas[i].as_str());
        let fill = |bytes: &[u8]| {
            let mut out = bytes.to_vec();
            for (from, to) in [
                ("@BRANCH@", self.names.branch(task)),
                ("@TASK@", task.to_string()),
                ("@EPOCH@", epoch.to_string()),
                ("@SHA@", sha.to_string()),
            ] {
                out = replace(&out, from.as_bytes(), to.as_bytes());
            }
            out
        };
        let path = String::from_utf8(fill(c.route.path(&c.id).as_bytes())).unwrap();
        (path, fill(&c.body))
    }

    fn request(&self, c: &Case, path: &str, body: Vec<u8>) -> Request<Body> {
        let mut r = Request::post(path);
        let auth = match &c.token {
            Token::None => None,
            Token::Admin => Some(format!("Bearer {ADMIN}").into_bytes()),
            Token::Agent(n) => Some(format!("Bearer {}", self.token(*n)).into_bytes()),
            Token::Raw(v) => Some(v.clone()),
        };
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        if let Some(ct) = c.content_type {
            r = r.header(header::CONTENT_TYPE, ct);
        }
        if let Some(k) = &c.key {
            r = r.header("idempotency-key", k.clone());
        }
        r.body(Body::from(body)).unwrap()
    }

    async fn check(&self, c: &Case) -> Result<(), TestCaseError> {
        let (path, body) = self.resolve(c);
        let sent = format!("POST {path} {}", shorten(&body));
        let mark = LOG.lock().unwrap().len();
        let (status, ct, answer) = self.send(self.request(c, &path, body)).await;
        *self
            .seen
            .lock()
            .unwrap()
            .entry((format!("{:?}", c.route), status))
            .or_default() += 1;
        let shown = String::from_utf8_lossy(&answer);
        let logged = logged_since(mark);
        prop_assert!(
            status < 500,
            "{sent}\nanswered {status}: {shown}\ndaemon log: {logged}"
        );
        if status >= 400 {
            prop_assert!(
                ct.as_deref()
                    .is_some_and(|t| t.starts_with("application/json")),
                "{sent}\nerror {status} answered as {ct:?}, not JSON: {shown}"
            );
            let v: Value = serde_json::from_slice(&answer).map_err(|e| {
                TestCaseError::fail(format!("{sent}\nerror {status} is not JSON ({e}): {shown}"))
            })?;
            prop_assert!(
                v["error"]["code"].as_str().is_some_and(|s| !s.is_empty())
                    && v["error"]["message"]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                "{sent}\nerror {status} without {{\"error\": {{\"code\", \"message\"}}}}: {shown}"
            );
        } else if status == 204 {
            prop_assert!(answer.is_empty(), "{sent}\n204 with a body: {shown}");
        } else {
            let v = serde_json::from_slice::<Value>(&answer);
            prop_assert!(
                v.is_ok(),
                "{sent}\n{status} answered something else than JSON: {shown}"
            );
            if let (Route::Submit, Ok(v)) = (c.route, &v) {
                let id = v["id"].as_str().and_then(|s| s.parse().ok());
                prop_assert!(id.is_some(), "{sent}\n{shown}");
                let mut tasks = self.tasks.lock().unwrap();
                if !tasks.contains(&id.unwrap()) {
                    tasks.push(id.unwrap());
                }
            }
            if let (Route::Dequeue, Token::Agent(n), Ok(v)) = (c.route, &c.token, v) {
                let task = v["task"]["id"].as_str().and_then(|s| s.parse().ok());
                let epoch = v["lease"]["epoch"].as_u64();
                prop_assert!(task.is_some() && epoch.is_some(), "{sent}\n{shown}");
                let held = &mut self.held.lock().unwrap()[*n];
                held.push((task.unwrap(), epoch.unwrap()));
                if held.len() > 3 {
                    held.remove(0);
                }
            }
        }
        if let (Route::Deregister, 200, Token::Agent(n)) = (c.route, status, &c.token) {
            self.revive(*n).await;
        }
        Ok(())
    }

    /// The step errors in every task's history.
    async fn step_errors(&self) -> Vec<String> {
        let (_, list) = self.get("/api/v1/tasks?limit=500").await;
        let mut errors = Vec::new();
        for t in list["tasks"].as_array().into_iter().flatten() {
            let id = t["id"].as_str().unwrap_or_default();
            let (_, task) = self.get(&format!("/api/v1/tasks/{id}")).await;
            for e in task["events"].as_array().into_iter().flatten() {
                if e["kind"] == "error" {
                    errors.push(format!("task {id} ({}): {}", task["status"], e["text"]));
                }
            }
        }
        errors
    }

    /// The answers by route: status × count.
    fn coverage(&self) -> String {
        let mut lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for ((route, status), n) in self.seen.lock().unwrap().iter() {
            lines
                .entry(route.clone())
                .or_default()
                .push(format!("{status}×{n}"));
        }
        lines
            .iter()
            .map(|(route, counts)| format!("{route:>10}: {}", counts.join(" ")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The daemon after the storm: nothing panicked, no step failed, and a whole pull-agent
    /// flow still runs.
    async fn still_healthy(&self) {
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
        for path in ["/healthz", "/readyz"] {
            let (status, body) = self.get(path).await;
            assert_eq!(status, 200, "{path}: {body}");
        }
        let errors = self.step_errors().await;
        assert!(errors.is_empty(), "steps failed:\n{}", errors.join("\n"));
        let (_, token) = self.register("after-the-fuzz", &["after"]).await;
        let id = self
            .submit(json!({ "title": "after the fuzz", "agent": "after" }))
            .await;
        let (got, epoch) = self.dequeue(&token).await;
        assert_eq!(got, id);
        self.report(
            &token,
            format!("/tasks/{id}/status"),
            json!({ "epoch": epoch, "status": "running" }),
        )
        .await;
        self.report(
            &token,
            format!("/tasks/{id}/complete"),
            json!({ "epoch": epoch, "summary": "still works" }),
        )
        .await;
        let (_, task) = self.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(task["status"], "completed", "{task:#}");
    }
}

fn proptest_config() -> ProptestConfig {
    let from_env = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            from_env.cases
        } else {
            CASES
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(SEED)
        },
        failure_persistence: None,
        // The daemon's state moves on under shrinking: a bounded search is enough.
        max_shrink_iters: 64,
        max_shrink_time: 30_000,
        ..from_env
    }
}

#[test]
fn no_request_to_a_post_route_answers_5xx_or_an_error_of_another_shape_or_panics() {
    count_panics();
    capture_errors();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let daemon = rt.block_on(Daemon::start());
    let started = Instant::now();
    let mut runner = TestRunner::new(proptest_config());
    let result = runner.run(&case(&daemon), |c| rt.block_on(daemon.check(&c)));
    let elapsed = started.elapsed();
    if let Err(e) = result {
        let errors = rt.block_on(daemon.step_errors());
        panic!(
            "{e}\n\nsteps that failed meanwhile:\n{}\n\nanswers so far:\n{}",
            errors.join("\n"),
            daemon.coverage()
        );
    }
    let coverage = daemon.coverage();
    eprintln!(
        "{} generated requests in {elapsed:?}; answers by route:\n{coverage}",
        runner.config().cases
    );
    // The requests reach the tasks' steps, not only the extractors: every route answered a
    // success at least once (a retry needs a failed task: its refusal counts too).
    let seen = daemon.seen.lock().unwrap().clone();
    for route in ROUTES {
        let name = format!("{route:?}");
        let reached = |status: u16| status < 300 || (route == Route::Retry && status == 409);
        assert!(
            seen.iter()
                .any(|((r, status), _)| *r == name && reached(*status)),
            "no request to {name} succeeded: the generator no longer reaches it\n{coverage}"
        );
    }
    rt.block_on(daemon.still_healthy());
    rt.block_on(daemon.engine.shutdown()).unwrap();
}
