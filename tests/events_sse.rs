//! `GET /api/v1/events`, the engine's change feed as Server-Sent Events, against the real
//! daemon: rows in order with their ids, resuming (`Last-Event-ID`, `?after=`), the filters,
//! the errors, and a stream that never holds up the daemon's shutdown.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/small_disk.rs"]
mod small_disk;

use std::time::{Duration, Instant};

use agent_fleet::api::{self, AppState};
use agent_fleet::config::Config;
use agent_fleet::workflow::Engine;
use daemon::{Fleet, Setup, TOKEN};
use serde_json::{Value, json};
use small_disk::{Parked, SmallDisk};

const T: Duration = Duration::from_secs(60);
/// How long a stream stays silent before a reader takes it to have shown everything stored.
const QUIET: Duration = Duration::from_millis(700);

/// One event of the stream, as sent.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: u64,
    event: String,
    data: Value,
}

/// An open `GET /api/v1/events`, read by hand: events are blocks of `field: value` lines that
/// end with a blank line; comments (keep-alives) start with `:`.
struct Stream {
    response: reqwest::Response,
    text: String,
}

impl Stream {
    async fn open(fleet: &Fleet, query: &str, last_event_id: Option<u64>) -> Stream {
        let mut request = fleet
            .http
            .get(fleet.api(&format!("/events{query}")))
            .bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Stream {
            response,
            text: String::new(),
        }
    }

    /// The next event within `within`: `None` when there is none by then; panics when the
    /// stream ends.
    async fn next(&mut self, within: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                if let Some(event) = parse(&block) {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .unwrap();
            let chunk = chunk.expect("the stream ended");
            self.text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every event until the stream stays quiet for [`QUIET`].
    async fn drain(&mut self) -> Vec<Sse> {
        let mut events = Vec::new();
        while let Some(e) = self.next(QUIET).await {
            events.push(e);
        }
        events
    }

    /// Waits (up to `within`) for the daemon to end the stream; whether it did.
    async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(None)) | Ok(Err(_)) => return true,
                Ok(Ok(Some(_))) => {}
            }
        }
    }
}

/// An event block, or `None` for a comment.
fn parse(block: &str) -> Option<Sse> {
    let mut id = None;
    let mut event = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().parse().unwrap());
        } else if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    Some(Sse {
        id: id?,
        event: event.expect("every event has a kind"),
        data: serde_json::from_str(&data).unwrap(),
    })
}

/// `GET /api/v1/events<query>` without reading a stream: the status and the JSON body.
async fn refused(fleet: &Fleet, query: &str, header: Option<(&str, &str)>) -> (u16, Value) {
    let mut request = fleet
        .http
        .get(fleet.api(&format!("/events{query}")))
        .bearer_auth(TOKEN);
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Every row stored so far.
async fn all_rows(fleet: &Fleet, query: &str) -> Vec<Sse> {
    let joined = if query.is_empty() {
        "?after=0".to_string()
    } else {
        format!("?after=0&{query}")
    };
    Stream::open(fleet, &joined, None).await.drain().await
}

/// A completed task's id.
async fn completed_task(fleet: &Fleet, title: &str) -> String {
    let id = fleet.submit(title, "").await;
    fleet.wait_status(&id, "completed", T).await;
    id
}

#[tokio::test]
async fn the_rows_of_a_submitted_task_arrive_in_order_with_their_ids() {
    let fleet = Fleet::start(Setup::default()).await;
    let mut stream = Stream::open(&fleet, "", None).await;
    let id = fleet.submit("Greet", "").await;

    let mut rows = Vec::new();
    let deadline = Instant::now() + T;
    loop {
        let row = stream.next(T).await.expect("a row");
        let done = row.data["task"] == id.as_str() && row.data["phase"] == "completed";
        rows.push(row);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:#?}");
    }
    for pair in rows.windows(2) {
        assert_eq!(pair[1].id, pair[0].id + 1, "{rows:#?}");
    }
    for row in &rows {
        assert_eq!(row.data["seq"], row.id);
        assert_eq!(row.data["kind"], row.event.as_str());
        assert!(row.data["at"].as_str().unwrap().ends_with('Z'), "{row:?}");
        // Committed by this daemon just now: when the commit was durable, to the µs.
        let durable = row.data["durable_at"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(durable).is_ok(), "{row:?}");
        assert_eq!(
            durable.len(),
            "2026-12-03T19:00:00.000000Z".len(),
            "{row:?}"
        );
    }
    let first = rows.iter().find(|r| r.data["task"] == id.as_str()).unwrap();
    assert_eq!(first.event, "started");
    assert_eq!(first.data["workflow"], "agent-task");
    assert_eq!(first.data["phase"], "created", "{first:?}");
    let last = rows.last().unwrap();
    assert_eq!(
        (last.event.as_str(), &last.data["outcome"]),
        ("step", &json!("complete"))
    );
    assert_eq!(last.data["status"], "completed");
}

#[tokio::test]
async fn a_stream_without_a_start_point_shows_only_what_commits_after_it_opened() {
    let fleet = Fleet::start(Setup::default()).await;
    completed_task(&fleet, "Before").await;
    let mut stream = Stream::open(&fleet, "", None).await;
    assert_eq!(stream.next(QUIET).await, None);
    let id = fleet.submit("After", "").await;
    let row = stream.next(T).await.expect("a row");
    assert_eq!(
        (row.event.as_str(), &row.data["task"]),
        ("started", &json!(id))
    );
}

#[tokio::test]
async fn resuming_with_last_event_id_or_after_yields_exactly_the_rows_after_it() {
    let fleet = Fleet::start(Setup::default()).await;
    completed_task(&fleet, "One").await;
    let rows = all_rows(&fleet, "").await;
    assert!(rows.len() > 4, "{rows:#?}");
    let cut = rows[rows.len() / 2].id;
    let after: Vec<Sse> = rows.iter().filter(|r| r.id > cut).cloned().collect();

    let resumed = Stream::open(&fleet, "", Some(cut)).await.drain().await;
    assert_eq!(resumed, after);
    let by_query = Stream::open(&fleet, &format!("?after={cut}"), None)
        .await
        .drain()
        .await;
    assert_eq!(by_query, after);
    // The header is what a reconnecting EventSource sends: it wins over the query.
    let both = Stream::open(&fleet, "?after=0", Some(cut))
        .await
        .drain()
        .await;
    assert_eq!(both, after);
}

#[tokio::test]
async fn the_task_and_kind_filters_pass_only_their_rows() {
    let fleet = Fleet::start(Setup::default()).await;
    let one = completed_task(&fleet, "One").await;
    let two = completed_task(&fleet, "Two").await;

    let of_one = all_rows(&fleet, &format!("task={one}")).await;
    assert!(of_one.len() > 2, "{of_one:#?}");
    assert!(of_one.iter().all(|r| r.data["task"] == one.as_str()));
    let of_two = all_rows(&fleet, &format!("task={two}")).await;
    assert!(of_two.iter().all(|r| r.data["task"] == two.as_str()));

    let starts_and_steps = all_rows(&fleet, "kind=started,step").await;
    let kinds: std::collections::BTreeSet<&str> =
        starts_and_steps.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(kinds, ["started", "step"].into());
    let started = all_rows(&fleet, &format!("kind=started&task={two}")).await;
    assert_eq!(started.len(), 1, "{started:#?}");
    assert_eq!(started[0].data["task"], two.as_str());
    let tasks_only = all_rows(&fleet, "workflow=agent-task").await;
    assert!(
        tasks_only
            .iter()
            .all(|r| r.data["workflow"] == "agent-task")
    );
    assert_eq!(all_rows(&fleet, "workflow=nothing-like-it").await, []);
}

#[tokio::test]
async fn an_unknown_kind_is_a_json_400_that_lists_the_valid_kinds() {
    let fleet = Fleet::start(Setup::default()).await;
    let (status, body) = refused(&fleet, "?kind=step,dance", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"dance\""), "{message}");
    for kind in agent_fleet::workflow::FeedEvent::KINDS {
        assert!(message.contains(kind), "{message}");
    }
}

#[tokio::test]
async fn start_points_and_task_ids_that_are_not_numbers_are_json_errors() {
    let fleet = Fleet::start(Setup::default()).await;
    for (query, header) in [
        ("?after=soon", None),
        ("?task=abc", None),
        ("?colour=red", None),
        ("", Some(("Last-Event-ID", "seven"))),
    ] {
        let (status, body) = refused(&fleet, query, header).await;
        assert_eq!(status, 400, "{query} {header:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
    }
    let (status, body) = refused(&fleet, "?task=999", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn without_the_token_the_stream_is_refused_with_401() {
    let fleet = Fleet::start(Setup::default()).await;
    let r = fleet.http.get(fleet.api("/events")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn a_reader_that_comes_after_many_commits_gets_every_row_without_a_gap() {
    let fleet = Fleet::start(Setup::default()).await;
    let id = fleet.submit("Wait", "demo-agent: sleep 60\n").await;
    // More rows than the feed reads from the store at a time (256).
    const NOTES: usize = 300;
    for n in 0..NOTES {
        let note = json!({ "signal": { "type": "note", "text": "hi" },
                           "idempotency_key": format!("note-{n}") });
        let (status, body) = fleet.post(&format!("/tasks/{id}/signals"), note).await;
        assert_eq!(status, 202, "{body}");
    }

    let rows = all_rows(&fleet, "").await;
    assert!(rows.len() > 256, "{}", rows.len());
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    let expected: Vec<u64> = (1..=rows.len() as u64).collect();
    assert_eq!(ids, expected);
    let notes = rows
        .iter()
        .filter(|r| r.event == "signal" && r.data["key"].as_str().unwrap().starts_with("note-"))
        .count();
    assert_eq!(notes, NOTES);
}

#[tokio::test]
async fn an_open_stream_ends_when_the_daemon_shuts_down_and_does_not_delay_it() {
    let mut fleet = Fleet::start(Setup::default()).await;
    let mut stream = Stream::open(&fleet, "", None).await;
    let pid = daemon_pid(&fleet);
    let asked = Instant::now();
    // SAFETY: kill(2) with a pid this test's daemon owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

    assert!(stream.ends_within(Duration::from_secs(5)).await);
    // The HTTP server would wait 10 s for a stream that does not end.
    let exit = fleet.wait_exit(Duration::from_secs(8)).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?} after {:?}\n{}",
        asked.elapsed(),
        fleet.log()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}

/// The pid of the daemon serving `fleet`: the process whose command line names its config.
fn daemon_pid(fleet: &Fleet) -> i32 {
    let config = fleet.config.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&b"serve".as_slice()) && args.contains(&config.as_bytes()) {
            return pid;
        }
    }
    panic!("no daemon process serves {config}");
}

#[tokio::test]
async fn task_watch_follows_a_real_task_to_its_completion_on_the_stream() {
    let fleet = Fleet::start(Setup::default()).await;
    let id = fleet.submit("Slowly", "demo-agent: sleep 2\n").await;
    let watch = tokio::process::Command::new(daemon::BIN)
        .args([
            "task", "watch", &id, "--server", &fleet.url, "--token", TOKEN,
        ])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(T, watch).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.ends_with(&format!("task {id} completed\n")),
        "{stdout}"
    );
    // Every event of the task, each printed once, in order.
    let task = fleet.task(&id).await;
    let printed: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let events: Vec<u64> = task["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(printed, events, "{stdout}");
}

// ---- the store fails -------------------------------------------------------------------------

/// Without a server stopping it (the bare router), an open stream still ends once a commit
/// fails: the store takes nothing more, so no row will ever come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_when_the_store_fails() {
    use axum::body::Body;
    use futures::StreamExt as _;
    use tower::ServiceExt as _;

    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let engine = Engine::builder(disk.path().join("fleet.redb"))
        .register(Parked)
        .open()
        .await
        .unwrap();
    let state = AppState::with(
        std::sync::Arc::new(Config::default()),
        Some(TOKEN.to_string()),
        std::path::PathBuf::from("."),
        None,
    );
    state.set_engine(engine.clone());
    let request = axum::http::Request::get("/api/v1/events?after=0")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = api::router(state).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body().into_data_stream();
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        text
    });
    engine.start::<Parked>(&vec![1], None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!reader.is_finished());

    disk.fill();
    let mut started = 0;
    while engine
        .start::<Parked>(&vec![7; 256 * 1024], None)
        .await
        .is_ok()
    {
        started += 1;
        assert!(started < 100, "no start failed on a full disk");
    }
    assert!(engine.failure().is_some());
    let text = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the stream is still open after the store failed")
        .unwrap();
    // The rows committed before the failure came first.
    assert!(text.starts_with("id: 1\nevent: started\n"), "{text}");
    engine.shutdown().await.unwrap();
}
