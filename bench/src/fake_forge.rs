//! A small, fast fake Forgejo on loopback for the `webhooks` benchmark: just enough REST API for
//! what the daemon asks while deliveries arrive. `GET /repos/{o}/{r}/issues/{n}` answers the
//! issue as it is "now" (the reference payload's issue, numbered `n`, open, with the trigger
//! label), `GET /repos/{o}/{r}` the repository; the repository's labels are kept as created
//! (listed after, like Forgejo does); the other label and comment calls of the tasks' status
//! effects get plausible empty answers; anything else is a 404. Requests are counted by
//! route, and the issue reads per second of the run are kept (to line them up with the acks).
//!
//! Deliberately not the integration tests' fake (tests/support/forgejo.rs), which validates
//! every request against the swagger spec: that costs more than the daemon's own work here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Where the fake listens, and what it saw.
pub struct FakeForge {
    pub base_url: String,
    shared: Arc<Shared>,
    stop: tokio::sync::oneshot::Sender<()>,
}

struct Shared {
    /// The reference payload's issue and repository objects (the repository's clone URL is on
    /// this fake).
    issue: Value,
    repo: Value,
    trigger_label: String,
    delay: Duration,
    started: Instant,
    counts: Mutex<BTreeMap<String, u64>>,
    /// The repository's labels, as created (like Forgejo, a created label is listed after).
    labels: Mutex<Vec<Value>>,
    /// Issue reads per whole second since the fake started.
    issue_reads: Mutex<Vec<u64>>,
}

impl FakeForge {
    /// Starts the fake on 127.0.0.1 (a free port) on the current tokio runtime. `payload` is a
    /// reference `issues` delivery; `delay` is added to every answer (0: none).
    pub async fn start(
        payload: &Value,
        trigger_label: &str,
        delay: Duration,
    ) -> anyhow::Result<FakeForge> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let mut repo = payload["repository"].clone();
        repo["clone_url"] = json!(format!("{base_url}/acme/widgets.git"));
        repo["html_url"] = json!(format!("{base_url}/acme/widgets"));
        let shared = Arc::new(Shared {
            issue: payload["issue"].clone(),
            repo,
            trigger_label: trigger_label.to_string(),
            delay,
            started: Instant::now(),
            counts: Mutex::new(BTreeMap::new()),
            labels: Mutex::new(Vec::new()),
            issue_reads: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                crate::report::note(format!("fake forge stopped: {e}"));
            }
        });
        Ok(FakeForge {
            base_url,
            shared,
            stop,
        })
    }

    /// Requests answered so far, by route (`GET issue`, `PUT labels`…).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        lock(&self.shared.counts).clone()
    }

    /// Issue reads in each whole second since the fake started.
    pub fn issue_reads_per_second(&self) -> Vec<u64> {
        lock(&self.shared.issue_reads).clone()
    }

    /// When the fake started (the origin of [`FakeForge::issue_reads_per_second`]).
    pub fn started(&self) -> Instant {
        self.shared.started
    }

    /// The repository's clone URL on this fake.
    pub fn clone_url(&self) -> String {
        self.shared.repo["clone_url"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent whatever panicked while holding them (single updates).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every request: routed by method and path segments.
async fn answer(State(s): State<Arc<Shared>>, method: Method, uri: Uri, body: Bytes) -> Response {
    if !s.delay.is_zero() {
        tokio::time::sleep(s.delay).await;
    }
    let path = uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path
        .strip_prefix("/api/v1/repos/")
        .map(|p| p.split('/').collect())
        .unwrap_or_default();
    let (route, status, value) = match (&method, segments.as_slice()) {
        (&Method::GET, [_, _]) => ("GET repo", StatusCode::OK, s.repo.clone()),
        (&Method::GET, [_, _, "issues", n]) => match n.parse::<u64>() {
            Ok(n) if n > 0 => {
                let second = s.started.elapsed().as_secs() as usize;
                let mut reads = lock(&s.issue_reads);
                if reads.len() <= second {
                    reads.resize(second + 1, 0);
                }
                reads[second] += 1;
                drop(reads);
                ("GET issue", StatusCode::OK, s.issue_now(n))
            }
            _ => ("GET issue", StatusCode::NOT_FOUND, not_found()),
        },
        (&Method::GET, [_, _, "labels"]) => (
            "GET repo labels",
            StatusCode::OK,
            Value::Array(lock(&s.labels).clone()),
        ),
        (&Method::POST, [_, _, "labels"]) => {
            let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut labels = lock(&s.labels);
            let label = json!({"id": labels.len() + 1, "name": asked["name"],
                "color": asked["color"], "description": "", "exclusive": false,
                "is_archived": false, "url": ""});
            labels.push(label.clone());
            ("POST repo label", StatusCode::CREATED, label)
        }
        (&Method::GET, [_, _, "issues", _, "labels"]) => {
            ("GET issue labels", StatusCode::OK, json!([]))
        }
        (&Method::POST | &Method::PUT, [_, _, "issues", _, "labels"]) => {
            // Like Forgejo: the issue's labels after the change (its trigger label, and the
            // asked ones the repository has).
            let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let labels = lock(&s.labels);
            let mut after: Vec<Value> = s.issue["labels"].as_array().cloned().unwrap_or_default();
            for id in asked["labels"].as_array().into_iter().flatten() {
                after.extend(labels.iter().find(|l| l["id"] == *id).cloned());
            }
            ("POST issue labels", StatusCode::OK, Value::Array(after))
        }
        (&Method::DELETE, [_, _, "issues", _, "labels", ..]) => {
            ("DELETE issue label", StatusCode::NO_CONTENT, Value::Null)
        }
        (&Method::GET, [_, _, "issues", _, "comments"]) => {
            ("GET comments", StatusCode::OK, json!([]))
        }
        (&Method::POST, [_, _, "issues", _, "comments"]) => (
            "POST comment",
            StatusCode::CREATED,
            json!({"id": 1, "body": "", "html_url": "", "user": {"login": "bot"}}),
        ),
        _ => ("other (404)", StatusCode::NOT_FOUND, not_found()),
    };
    *lock(&s.counts).entry(route.to_string()).or_default() += 1;
    if value.is_null() {
        status.into_response()
    } else {
        (status, axum::Json(value)).into_response()
    }
}

fn not_found() -> Value {
    json!({"message": "not found", "url": ""})
}

impl Shared {
    /// The issue `n` as the forge shows it now: open, with the trigger label only.
    fn issue_now(&self, n: u64) -> Value {
        let mut issue = self.issue.clone();
        issue["number"] = json!(n);
        issue["id"] = json!(100_000 + n);
        issue["title"] = json!(format!("Bench issue {n}"));
        issue["state"] = json!("open");
        issue["pull_request"] = Value::Null;
        issue["labels"] = json!([{"id": 11, "name": self.trigger_label, "exclusive": false,
            "is_archived": false, "color": "1d76db", "description": "", "url": ""}]);
        issue
    }
}
