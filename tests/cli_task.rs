//! `agent-fleet task …`, the real binary against a stub of the task API served in the test:
//! canned task views, a bearer token check, and the error answers the real daemon gives.

#![recursion_limit = "256"] // serde_json's json! macro, for the canned task view

use std::convert::Infallible;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_fleet::api::views::{CancelRequest, NewTask, SignalRequest, TaskView};
use axum::extract::{Path, Query, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

#[path = "support/stub.rs"]
mod stub;

use stub::StubServer;

const BIN: &str = env!("CARGO_BIN_EXE_agent-fleet");
const TOKEN: &str = "s3cret-token";
/// A command that has not exited by then is stuck (the machine may be busy compiling).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The stub daemon
// ---------------------------------------------------------------------------------------------

/// The task API (see [`stub_router`]); stops when dropped.
struct Stub;

impl Stub {
    fn start() -> StubServer {
        StubServer::serve(stub_router())
    }
}

fn stub_router() -> Router {
    let api = Router::new()
        .route("/tasks", post(submit).get(list))
        .route("/tasks/{id}", get(show))
        .route("/tasks/{id}/events", get(events))
        .route("/tasks/{id}/cancel", post(cancel))
        .route("/tasks/{id}/retry", post(retry))
        .route("/tasks/{id}/signals", post(signal))
        .route("/events", get(feed))
        .layer(middleware::from_fn(recovering_at_first))
        .layer(middleware::from_fn(require_token));
    Router::new().nest("/api/v1", api)
}

/// Task 9's first three requests find the daemon recovering (503 `recovering`), as right after
/// a restart; then task 9 is task 7.
async fn recovering_at_first(request: Request, next: Next) -> Response {
    static ASKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if request.uri().path().starts_with("/tasks/9")
        && ASKED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 3
    {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "recovering",
            "the daemon is recovering its workflows; retry shortly",
        );
    }
    next.run(request).await
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
}

async fn require_token(request: Request, next: Next) -> Response {
    let expected = format!("Bearer {TOKEN}");
    match request.headers().get(header::AUTHORIZATION) {
        Some(v) if v.as_bytes() == expected.as_bytes() => next.run(request).await,
        Some(_) => api_error(StatusCode::FORBIDDEN, "forbidden", "wrong bearer token"),
        None => api_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token",
        ),
    }
}

/// A complete task view. Task 7 is running with a run and a receipt; task 8 has failed.
fn task_json(id: &str, title: &str, status: &str) -> Value {
    let failed = status == "failed";
    json!({
        "id": id,
        "title": title,
        "body": "",
        "status": status,
        "execution_mode": "ssh_cli",
        "priority": "normal",
        "type": null,
        "labels": ["backend"],
        "agent": "claude",
        "capabilities": [],
        "repo": "/srv/repos/app",
        "source": "api",
        "assigned_host": "build-1",
        "assigned_agent": "claude",
        "branch_name": format!("fleet/task-{id}"),
        "pr_number": null,
        "pr_title": null,
        "pr_url": null,
        "pr_merged": false,
        "attempt": 1,
        "claim_epoch": 0,
        "review_count": 0,
        "created_at": "2026-11-21T10:00:00Z",
        "updated_at": "2026-11-21T10:05:00Z",
        "last_activity_at": "2026-11-21T10:05:00Z",
        "failure": if failed { json!("validation failed: cargo test exited 101") } else { Value::Null },
        "runs": [{
            "run_id": format!("run-{id}-1"),
            "host": "build-1",
            "agent": "claude",
            "attempt": 1,
            "run_dir": "/work/runs/1",
            "started_at": "2026-11-21T10:00:00Z",
            "ended_at": "2026-11-21T10:03:05Z",
            "exit_code": 0,
            "outcome": "succeeded",
            "summary": "Fixed the parser.\nMore details.",
            "session_id": null,
            "turns": 4,
            "input_tokens": 12345,
            "output_tokens": 678,
            "cost_usd": 0.42,
            "files_changed": ["src/parser.rs"],
            "notes": []
        }],
        "receipt": {
            "branch": format!("fleet/task-{id}"),
            "base": "main",
            "base_sha": "0123456789abcdef0123",
            "head_sha": "fedcba9876543210fedc",
            "commits": [{ "sha": "fedcba9876543210fedc", "subject": "Fix the parser" }],
            "files_changed": ["src/parser.rs"],
            "summary": "Fixed the parser.",
            "cost_usd": 0.42,
            "verified_at": "2026-11-21T10:04:00Z"
        }
    })
}

fn event(seq: u64, kind: &str, text: &str) -> Value {
    json!({ "seq": seq, "at": format!("2026-11-21T10:00:{seq:02}Z"), "kind": kind, "text": text })
}

fn known(id: &str) -> Option<Value> {
    match id {
        "7" | "9" | "10" | "11" => Some(task_json(id, "Fix the parser", "running")),
        "8" => Some(task_json("8", "Speed up the build", "failed")),
        _ => None,
    }
}

fn no_such_task(id: &str) -> Response {
    api_error(StatusCode::NOT_FOUND, "not_found", &format!("no task {id}"))
}

/// `POST /tasks`: a new task 42, or task 41 for the idempotency key `seen`; echoes the body.
async fn submit(Json(new): Json<NewTask>) -> Response {
    let (status, id) = match new.idempotency_key.as_deref() {
        Some("seen") => (StatusCode::OK, "41"),
        _ => (StatusCode::CREATED, "42"),
    };
    let mut task = task_json(id, &new.title, "created");
    task["body"] = json!(new.body);
    task["labels"] = json!(new.labels);
    task["priority"] = json!(new.priority.unwrap_or_else(|| "normal".into()));
    task["runs"] = json!([]);
    task["receipt"] = Value::Null;
    (status, Json(task)).into_response()
}

#[derive(Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /tasks`: three tasks, 9, 8, 7, paged by `limit` and `after`.
async fn list(Query(p): Query<ListParams>) -> Response {
    let all = [
        task_json("9", "Write the release notes", "created"),
        task_json("8", "Speed up the build", "failed"),
        task_json("7", "Fix the parser", "running"),
    ];
    let tasks: Vec<Value> = all
        .into_iter()
        .filter(|t| p.status.as_deref().is_none_or(|s| t["status"] == s))
        .skip_while(|t| p.after.as_deref().is_some_and(|a| t["id"] != a))
        .skip(usize::from(p.after.is_some()))
        .collect();
    let limit = p.limit.unwrap_or(50);
    let more = tasks.len() > limit;
    let page: Vec<Value> = tasks.into_iter().take(limit).collect();
    let next_after = if more {
        page.last().map(|t| t["id"].clone())
    } else {
        None
    };
    Json(json!({ "tasks": page, "next_after": next_after })).into_response()
}

async fn show(Path(id): Path<String>) -> Response {
    let Some(mut task) = known(&id) else {
        return no_such_task(&id);
    };
    task["events"] = json!([
        event(1, "started", "task created"),
        event(2, "step", "launched claude on build-1"),
    ]);
    Json(task).into_response()
}

#[derive(Deserialize)]
struct After {
    after: Option<u64>,
}

/// Every `GET /events` and `GET /tasks/{id}/events` the stub answered: (task, `Last-Event-ID`)
/// and (task, `after`).
static FEEDS_OPENED: Mutex<Vec<(String, Option<String>)>> = Mutex::new(Vec::new());
static EVENTS_ASKED: Mutex<Vec<(String, Option<u64>)>> = Mutex::new(Vec::new());
/// Task 10 completes once its feed row is sent; task 11 once its feed is opened again.
static TASK_10_ROW_SENT: AtomicBool = AtomicBool::new(false);
static TASK_11_RESUMED: AtomicBool = AtomicBool::new(false);

fn feed_row(seq: u64, task: &str) -> Event {
    let row = json!({ "seq": seq, "task": task, "workflow": "agent-task", "status": "runnable",
                      "phase": "running", "kind": "step", "outcome": "continue",
                      "at": "2026-11-21T10:00:05Z" });
    Event::default()
        .id(seq.to_string())
        .event("step")
        .json_data(row)
        .unwrap()
}

#[derive(Deserialize)]
struct FeedParams {
    task: String,
}

/// `GET /events?task=`: one row of the task, then the stream stays open. Task 10's row comes
/// after a second; task 11's first stream ends after row 5, its second sends row 6.
async fn feed(Query(q): Query<FeedParams>, headers: HeaderMap) -> Response {
    let resumed = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap().to_string());
    FEEDS_OPENED
        .lock()
        .unwrap()
        .push((q.task.clone(), resumed.clone()));
    let rows: BoxStream<'static, Result<Event, Infallible>> = match q.task.as_str() {
        "10" => {
            let task = q.task.clone();
            stream::once(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                TASK_10_ROW_SENT.store(true, Ordering::SeqCst);
                Ok(feed_row(20, &task))
            })
            .chain(stream::pending())
            .boxed()
        }
        "11" if resumed.is_none() => stream::iter([Ok(feed_row(5, "11"))]).boxed(),
        "11" => {
            TASK_11_RESUMED.store(true, Ordering::SeqCst);
            stream::iter([Ok(feed_row(6, "11"))])
                .chain(stream::pending())
                .boxed()
        }
        task => stream::iter([Ok(feed_row(1, task))])
            .chain(stream::pending())
            .boxed(),
    };
    Sse::new(rows).into_response()
}

/// Task 7: event 3 after 2 (still running), event 4 after 3 (completed). Task 8: failed. Tasks
/// 10 and 11 as task 7, but event 4 waits for their feed (see [`feed`]).
async fn events(Path(id): Path<String>, Query(q): Query<After>) -> Response {
    EVENTS_ASKED.lock().unwrap().push((id.clone(), q.after));
    let page = match (id.as_str(), q.after) {
        ("10", Some(3)) if !TASK_10_ROW_SENT.load(Ordering::SeqCst) => {
            json!({ "status": "running", "settled": false, "events": [] })
        }
        ("11", Some(3)) if !TASK_11_RESUMED.load(Ordering::SeqCst) => {
            json!({ "status": "running", "settled": false, "events": [] })
        }
        ("7" | "9" | "10" | "11", Some(2)) => json!({
            "status": "running", "settled": false,
            "events": [event(3, "step", "agent finished; verifying")],
        }),
        ("7" | "9" | "10" | "11", Some(3)) => json!({
            "status": "completed", "settled": true,
            "events": [event(4, "completed", "receipt verified")],
        }),
        ("8", Some(2)) => json!({
            "status": "failed", "settled": true,
            "events": [event(3, "error", "validation failed")],
        }),
        (id, after) if known(id).is_some() => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("the stub has no events after {after:?}"),
            );
        }
        (id, _) => return no_such_task(id),
    };
    Json(page).into_response()
}

async fn cancel(Path(id): Path<String>, Json(request): Json<CancelRequest>) -> Response {
    let Some(mut task) = known(&id) else {
        return no_such_task(&id);
    };
    task["status"] = json!("cancelled");
    task["failure"] = json!(request.reason);
    (StatusCode::ACCEPTED, Json(task)).into_response()
}

async fn retry(Path(id): Path<String>) -> Response {
    match known(&id) {
        Some(task) if task["status"] != "failed" => api_error(
            StatusCode::CONFLICT,
            "conflict",
            &format!(
                "task {id} is {}; only a failed task can be retried",
                task["status"].as_str().unwrap_or("?")
            ),
        ),
        Some(mut task) => {
            task["status"] = json!("created");
            task["attempt"] = json!(2);
            (StatusCode::ACCEPTED, Json(task)).into_response()
        }
        None => no_such_task(&id),
    }
}

/// Accepts exactly `{"type": "note", "text": "look at the tests first"}` under key `k-1`.
async fn signal(Path(id): Path<String>, Json(request): Json<SignalRequest>) -> Response {
    if known(&id).is_none() {
        return no_such_task(&id);
    }
    let expected = json!({ "type": "note", "text": "look at the tests first" });
    if request.signal != expected || request.idempotency_key != "k-1" {
        let message = format!("unexpected signal {request:?}");
        return api_error(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", &message);
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({ "seq": 5, "duplicate": false })),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `agent-fleet task <args…>` with a clean environment for the connection settings.
fn task_command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("task")
        .args(args)
        .env_remove("AGENT_FLEET_SERVER")
        .env_remove("FLEET_ADMIN_TOKEN")
        .env("RUST_LOG", "warn");
    command
}

/// Runs `command` to its end (killing it after [`RUN_TIMEOUT`]), feeding it `stdin`.
fn run(mut command: Command, stdin: &str) -> Run {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agent-fleet");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent-fleet did not exit within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "agent-fleet panicked:\n{}",
        run.stderr
    );
    run
}

/// `agent-fleet task <args…> --server <stub> --token <TOKEN>`.
fn fleet(stub: &StubServer, args: &[&str]) -> Run {
    fleet_with_stdin(stub, args, "")
}

fn fleet_with_stdin(stub: &StubServer, args: &[&str], stdin: &str) -> Run {
    let mut command = task_command(args);
    command.args(["--server", &stub.url(), "--token", TOKEN]);
    run(command, stdin)
}

fn ok(run: Run) -> Run {
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    run
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn submit_prints_the_new_task_id_and_how_to_follow_it() {
    let stub = Stub::start();
    let out = ok(fleet(
        &stub,
        &[
            "submit",
            "--title",
            "Add a --dry-run flag",
            "--label",
            "cli",
        ],
    ));
    assert_eq!(
        out.stdout,
        "task 42 created: Add a --dry-run flag\nfollow it: agent-fleet task watch 42\n"
    );
}

#[test]
fn submit_json_prints_the_task_with_the_body_read_from_stdin() {
    let stub = Stub::start();
    let out = ok(fleet_with_stdin(
        &stub,
        &[
            "submit",
            "--title",
            "T",
            "--body-file",
            "-",
            "--label",
            "a",
            "--label",
            "b",
            "--priority",
            "high",
            "--json",
        ],
        "line one\nline two\n",
    ));
    let task: TaskView = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(task.id, "42");
    assert_eq!(task.body, "line one\nline two\n");
    assert_eq!(task.labels, ["a", "b"]);
    assert_eq!(task.priority, "high");
}

#[test]
fn resubmitting_with_a_seen_idempotency_key_says_the_task_already_exists() {
    let stub = Stub::start();
    let out = ok(fleet(
        &stub,
        &["submit", "--title", "T", "--idempotency-key", "seen"],
    ));
    assert!(
        out.stdout
            .starts_with("task 41 already exists (same idempotency key): T\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn list_shows_a_header_and_one_aligned_row_per_task() {
    let stub = Stub::start();
    let out = ok(fleet(&stub, &["list"]));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    let title_at = lines[0].find("TITLE").unwrap();
    assert!(lines[0].starts_with("ID  STATUS   MODE     HOST     AGENT   ATTEMPT  UPDATED"));
    assert!(lines[2].starts_with("8   failed   ssh_cli  build-1  claude        1  "));
    assert_eq!(&lines[2][title_at..], "Speed up the build");
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn list_filters_by_status_and_all_follows_every_page() {
    let stub = Stub::start();
    let failed = ok(fleet(&stub, &["list", "--status", "failed"]));
    assert_eq!(failed.stdout.lines().count(), 2, "{}", failed.stdout);

    let first = ok(fleet(&stub, &["list", "--limit", "1"]));
    assert_eq!(first.stdout.lines().count(), 2, "{}", first.stdout);
    assert!(first.stderr.contains("more tasks"), "{}", first.stderr);

    let all = ok(fleet(&stub, &["list", "--limit", "1", "--all", "--json"]));
    let list: Value = serde_json::from_str(&all.stdout).unwrap();
    let ids: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["9", "8", "7"]);
    assert_eq!(list["next_after"], Value::Null);
}

#[test]
fn show_json_round_trips_the_task_view() {
    let stub = Stub::start();
    let out = ok(fleet(&stub, &["show", "7", "--json"]));
    let printed: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut served = task_json("7", "Fix the parser", "running");
    served["events"] = json!([
        event(1, "started", "task created"),
        event(2, "step", "launched claude on build-1"),
    ]);
    assert_eq!(printed, served);
}

#[test]
fn show_tells_the_story_of_the_task() {
    let stub = Stub::start();
    let out = ok(fleet(&stub, &["show", "8"]));

    for expected in [
        "task 8  Speed up the build\n",
        "  status    failed (attempt 1, priority normal)\n",
        "  failure   validation failed: cargo test exited 101\n",
        "  run-8-1  build-1  succeeded     0  3m05s  12.3k/678  $0.42  Fixed the parser.\n",
        "    fedcba9 Fix the parser\n",
        "   2  10:00:02  step      launched claude on build-1\n",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?} in:\n{}",
            out.stdout
        );
    }
}

#[test]
fn watch_prints_new_events_until_the_task_completes_then_exits_0() {
    let stub = Stub::start();
    let out = ok(fleet(&stub, &["watch", "7"]));
    assert_eq!(
        out.stdout,
        "   1  10:00:01  started   task created\n\
         \x20  2  10:00:02  step      launched claude on build-1\n\
         \x20  3  10:00:03  step      agent finished; verifying\n\
         \x20  4  10:00:04  completed  receipt verified\n\
         task 7 completed\n"
    );
}

#[test]
fn watch_waits_through_a_recovering_daemon_instead_of_failing() {
    let stub = Stub::start();
    let out = ok(fleet(&stub, &["watch", "9"]));
    assert!(out.stdout.ends_with("task 9 completed\n"), "{}", out.stdout);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn watch_follows_the_task_on_the_change_feed_instead_of_polling() {
    let stub = Stub::start();
    let out = ok(fleet(&stub, &["watch", "10"]));
    assert!(
        out.stdout.ends_with("task 10 completed\n"),
        "{}",
        out.stdout
    );
    let opened: Vec<_> = FEEDS_OPENED
        .lock()
        .unwrap()
        .iter()
        .filter(|(task, _)| task == "10")
        .cloned()
        .collect();
    assert_eq!(opened, [("10".to_string(), None)]);
    // Once after the stream opened, once for its one row: polling would have asked every
    // 300 ms during the second the row took.
    let asked: Vec<_> = EVENTS_ASKED
        .lock()
        .unwrap()
        .iter()
        .filter(|(task, _)| task == "10")
        .map(|(_, after)| *after)
        .collect();
    assert_eq!(asked, [Some(2), Some(3)]);
}

#[test]
fn watch_resumes_an_ended_stream_after_the_last_row_it_saw() {
    let stub = Stub::start();
    let out = ok(fleet(&stub, &["watch", "11"]));
    assert!(
        out.stdout.ends_with("task 11 completed\n"),
        "{}",
        out.stdout
    );
    let opened: Vec<_> = FEEDS_OPENED
        .lock()
        .unwrap()
        .iter()
        .filter(|(task, _)| task == "11")
        .map(|(_, resumed)| resumed.clone())
        .collect();
    assert_eq!(opened, [None, Some("5".to_string())]);
}

#[test]
fn watch_json_prints_one_event_per_line_and_exits_1_when_the_task_failed() {
    let stub = Stub::start();
    let out = fleet(&stub, &["watch", "8", "--json"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let seqs: Vec<u64> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert!(
        out.stderr
            .contains("task 8 failed: validation failed: cargo test exited 101"),
        "{}",
        out.stderr
    );
}

#[test]
fn retry_of_a_task_that_has_not_failed_prints_the_apis_message_and_exits_1() {
    let stub = Stub::start();
    let out = fleet(&stub, &["retry", "7"]);
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stderr,
        "error: task 7 is running; only a failed task can be retried (HTTP 409, conflict)\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn retry_of_a_failed_task_says_it_is_queued_again() {
    let stub = Stub::start();
    let out = ok(fleet(&stub, &["retry", "8"]));
    assert!(
        out.stdout
            .starts_with("task 8 queued again (status created, attempt 2)\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn cancel_sends_the_reason() {
    let stub = Stub::start();
    let out = ok(fleet(
        &stub,
        &["cancel", "7", "--reason", "wrong repo", "--json"],
    ));
    let task: TaskView = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(task.status, "cancelled");
    assert_eq!(task.failure.as_deref(), Some("wrong repo"));
}

#[test]
fn signal_sends_its_type_and_text_under_the_key() {
    let stub = Stub::start();
    let args = [
        "signal",
        "7",
        "--type",
        "note",
        "--text",
        "look at the tests first",
        "--key",
        "k-1",
    ];
    let out = ok(fleet(&stub, &args));
    assert_eq!(out.stdout, "signal note delivered to task 7 (seq 5)\n");
}

#[test]
fn an_unknown_task_is_the_apis_404_message() {
    let stub = Stub::start();
    let out = fleet(&stub, &["show", "99"]);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stderr, "error: no task 99 (HTTP 404, not_found)\n");
}

#[test]
fn a_missing_token_prints_the_401_message_and_where_the_token_goes() {
    let stub = Stub::start();
    let out = run(task_command(&["list", "--server", &stub.url()]), "");
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stderr,
        "error: missing bearer token (HTTP 401, unauthorized); pass --token or set FLEET_ADMIN_TOKEN\n"
    );
}

#[test]
fn the_token_and_server_come_from_the_environment() {
    let stub = Stub::start();
    let mut command = task_command(&["show", "7", "--json"]);
    command
        .env("AGENT_FLEET_SERVER", stub.url())
        .env("FLEET_ADMIN_TOKEN", TOKEN);
    ok(run(command, ""));
}

#[test]
fn a_config_file_gives_the_address_and_names_the_token_variable() {
    let stub = Stub::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    let listen = format!("0.0.0.0:{}", stub.addr.port());
    let text = format!("[server]\nlisten = \"{listen}\"\nadmin_token_env = \"MY_FLEET_TOKEN\"\n");
    std::fs::write(&config, text).unwrap();
    let mut command = task_command(&["show", "7", "--config", config.to_str().unwrap()]);
    command.env("MY_FLEET_TOKEN", TOKEN);
    let out = ok(run(command, ""));
    assert!(
        out.stdout.starts_with("task 7  Fix the parser\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn an_unreachable_server_says_cannot_reach_the_daemon() {
    // A port that was free a moment ago: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = run(
        task_command(&["list", "--server", &url, "--token", TOKEN]),
        "",
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .starts_with(&format!("error: cannot reach the daemon at {url}: ")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.ends_with("is `agent-fleet serve` running?\n"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1);
}
