//! Fifty pull agents (tokio tasks over real HTTP) drain a thousand tasks from the real daemon:
//! every task is claimed exactly once and none is lost — also with the daemon SIGKILLed twice
//! during the drain.

#[path = "support/daemon.rs"]
mod daemon;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use daemon::{Fleet, Setup, TOKEN};
use serde_json::{Value, json};

const AGENTS: usize = 50;
const TASKS: usize = 1000;
const LIMIT: Duration = Duration::from_secs(300);

/// What the agents saw, shared by all of them.
#[derive(Default)]
struct Ledger {
    /// Task → the agents that were granted it (by a dequeue answer or a heartbeat).
    granted: HashMap<u64, Vec<usize>>,
    completed: HashSet<u64>,
}

struct Shared {
    base: RwLock<String>,
    ledger: Mutex<Ledger>,
    http: reqwest::Client,
}

impl Shared {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base.read().unwrap())
    }

    /// One request; `None` while the daemon is down or restarting. A retried report carries
    /// the same `key`, so the daemon answers it once.
    async fn post(&self, token: &str, path: &str, body: Value) -> Option<(u16, Value)> {
        let mut request = self.http.post(self.url(path)).bearer_auth(token);
        if path.ends_with("/status") || path.ends_with("/complete") {
            request = request.header("Idempotency-Key", path.replace('/', "_"));
        }
        let r = request
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.unwrap_or(Value::Null)))
    }

    fn done(&self) -> bool {
        self.ledger.lock().unwrap().completed.len() >= TASKS
    }
}

/// Reports a held task to the end: running, then complete (retried while the daemon is down).
async fn finish(shared: &Shared, token: &str, task: u64, epoch: u64) {
    for path in ["status", "complete"] {
        let body = if path == "status" {
            json!({ "epoch": epoch, "status": "running" })
        } else {
            json!({ "epoch": epoch, "summary": "drained" })
        };
        loop {
            match shared
                .post(token, &format!("/tasks/{task}/{path}"), body.clone())
                .await
            {
                Some((200, _)) => break,
                // Already done (a retry after a lost answer): the task ended.
                Some((409, b)) if path == "complete" || b["error"]["code"] != "stale_epoch" => {
                    if b["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("ended"))
                    {
                        break;
                    }
                    panic!("task {task} {path}: 409 {b}");
                }
                Some((503, _)) | None => tokio::time::sleep(Duration::from_millis(100)).await,
                Some((status, b)) => panic!("task {task} {path}: {status} {b}"),
            }
        }
    }
    shared.ledger.lock().unwrap().completed.insert(task);
}

async fn agent_loop(shared: Arc<Shared>, n: usize, token: String) {
    let mut last_beat = Instant::now();
    while !shared.done() {
        if last_beat.elapsed() > Duration::from_millis(500) {
            last_beat = Instant::now();
            // Tasks granted whose dequeue answer was lost (a SIGKILL mid-request).
            if let Some((200, beat)) = shared.post(&token, "/agents/heartbeat", json!({})).await {
                for h in beat["held"].as_array().cloned().unwrap_or_default() {
                    let (task, epoch) =
                        (h["task_id"].as_u64().unwrap(), h["epoch"].as_u64().unwrap());
                    let new = {
                        let mut l = shared.ledger.lock().unwrap();
                        let seen = l.granted.get(&task).is_some_and(|g| g.contains(&n));
                        if !seen {
                            l.granted.entry(task).or_default().push(n);
                        }
                        !seen && !l.completed.contains(&task)
                    };
                    if new {
                        finish(&shared, &token, task, epoch).await;
                    }
                }
            }
        }
        match shared.post(&token, "/tasks/dequeue", json!({})).await {
            Some((200, got)) => {
                let task: u64 = got["task"]["id"].as_str().unwrap().parse().unwrap();
                let epoch = got["lease"]["epoch"].as_u64().unwrap();
                shared
                    .ledger
                    .lock()
                    .unwrap()
                    .granted
                    .entry(task)
                    .or_default()
                    .push(n);
                finish(&shared, &token, task, epoch).await;
            }
            Some((204, _)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Some((503, _)) | None => tokio::time::sleep(Duration::from_millis(100)).await,
            Some((status, b)) => panic!("agent {n}: dequeue answered {status} {b}"),
        }
    }
}

async fn drain(kills: usize) {
    let mut fleet = Fleet::start(Setup {
        extra: "[[agents]]\nname = \"remote\"\ncli_template = \"remote {prompt_file}\"\noutput_format = \"raw\"\n".into(),
        dispatch: "heartbeat_interval = \"10s\"\nheartbeat_misses = 6\n".into(),
        ..Setup::default()
    })
    .await;
    let started = Instant::now();
    // Submit concurrently, 20 at a time.
    let ids: Vec<u64> = futures::future::join_all((0..20).map(|w| {
        let (http, url) = (fleet.http.clone(), fleet.api("/tasks"));
        async move {
            let mut ids = Vec::new();
            for i in (w..TASKS).step_by(20) {
                let r = http
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .json(&json!({ "title": format!("drain {i}"), "agent": "remote" }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
                let v: Value = r.json().await.unwrap();
                ids.push(v["id"].as_str().unwrap().parse().unwrap());
            }
            ids
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    let submitted = started.elapsed();
    let shared = Arc::new(Shared {
        base: RwLock::new(fleet.url.clone()),
        ledger: Mutex::default(),
        http: reqwest::Client::new(),
    });
    let mut agents = Vec::new();
    for n in 0..AGENTS {
        let (status, body) = fleet
            .post("/agents/register", json!({ "name": format!("drainer-{n}"), "agent_kinds": ["remote"], "max_concurrent": 2 }))
            .await;
        assert_eq!(status, 201, "{body}");
        let token = body["token"].as_str().unwrap().to_string();
        agents.push(tokio::spawn(agent_loop(shared.clone(), n, token)));
    }
    let drain_start = Instant::now();
    for k in 0..kills {
        let target = TASKS * (k + 1) / (kills + 1);
        while shared.ledger.lock().unwrap().completed.len() < target {
            assert!(drain_start.elapsed() < LIMIT, "stuck before kill {k}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fleet.kill();
        fleet.spawn().await;
        *shared.base.write().unwrap() = fleet.url.clone();
    }
    let all = tokio::time::timeout(LIMIT, futures::future::join_all(agents)).await;
    assert!(all.is_ok(), "the drain did not finish in {LIMIT:?}");
    for a in all.unwrap() {
        a.expect("an agent panicked");
    }
    let drained = drain_start.elapsed();
    {
        let ledger = shared.ledger.lock().unwrap();
        assert_eq!(ledger.completed.len(), TASKS);
        let twice: Vec<_> = ledger
            .granted
            .iter()
            .filter(|(_, g)| g.len() != 1)
            .collect();
        assert!(twice.is_empty(), "granted more than once: {twice:?}");
    }
    // The daemon's own record: every task completed, claimed once (epoch 1).
    let mut completed = 0;
    let mut after = String::new();
    loop {
        let (status, page) = fleet.get(&format!("/tasks?limit=500{after}")).await;
        assert_eq!(status, 200);
        for t in page["tasks"].as_array().unwrap() {
            assert_eq!(t["status"], "completed", "task {}", t["id"]);
            assert_eq!(
                t["claim_epoch"], 1,
                "task {} claimed more than once",
                t["id"]
            );
            completed += 1;
        }
        match page["next_after"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => break,
        }
    }
    assert_eq!(completed, ids.len());
    eprintln!(
        "{TASKS} tasks submitted in {submitted:?}, drained by {AGENTS} agents in {drained:?} with {kills} SIGKILL(s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_agents_drain_a_thousand_tasks_each_claimed_exactly_once() {
    drain(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_survives_two_sigkills_with_no_task_lost_or_claimed_twice() {
    drain(2).await;
}
