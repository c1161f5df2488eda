//! Pull agents end to end, against the real daemon over HTTP: registration and tokens,
//! dequeue and leases, status, completion and receipts checked with git, lost agents, the
//! coordinator's assign, and the dispatcher-versus-dequeue race.

#[path = "support/daemon.rs"]
mod daemon;

use std::process::Command;
use std::time::Duration;

use daemon::{Fleet, Setup, TOKEN, story};
use serde_json::{Value, json};

/// A kind no host offers: its tasks are left to pull agents.
const REMOTE: &str = r#"
[[agents]]
name = "remote"
cli_template = "remote {prompt_file}"
output_format = "raw"
"#;

fn setup(dispatch: &str) -> Setup {
    Setup {
        extra: REMOTE.to_string(),
        dispatch: dispatch.to_string(),
        retry_backoff: "100ms",
        max_retries: 2,
        ..Setup::default()
    }
}

/// A pull agent over HTTP.
struct Agent {
    id: u64,
    token: String,
    http: reqwest::Client,
    base: String,
}

impl Agent {
    async fn register(fleet: &Fleet, name: &str, kinds: &[&str], caps: &[&str]) -> Agent {
        let (status, body) = fleet
            .post(
                "/agents/register",
                json!({ "name": name, "agent_kinds": kinds, "capabilities": caps, "max_concurrent": 4 }),
            )
            .await;
        assert!(status == 201 || status == 200, "{status} {body}");
        Agent {
            id: body["agent_id"].as_u64().unwrap(),
            token: body["token"].as_str().unwrap().to_string(),
            http: reqwest::Client::new(),
            base: fleet.api(""),
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn dequeue(&self) -> (u16, Value) {
        self.post("/tasks/dequeue", json!({})).await
    }

    async fn heartbeat(&self) -> Value {
        let (status, body) = self.post("/agents/heartbeat", json!({})).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

async fn submit_remote(fleet: &Fleet, title: &str) -> String {
    let (status, task) = fleet
        .post("/tasks", json!({ "title": title, "agent": "remote" }))
        .await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().unwrap().to_string()
}

/// Dequeues until a task comes (tasks become claimable once their route step ran).
async fn dequeue_one(agent: &Agent) -> Value {
    for _ in 0..200 {
        let (status, body) = agent.dequeue().await;
        if status == 200 {
            return body;
        }
        assert_eq!(status, 204, "{body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing to dequeue");
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Commits on `branch` in a clone of the origin and pushes it; returns the commit.
fn push_work(fleet: &Fleet, branch: &str) -> String {
    let clone = fleet.path(&format!("clone-{}", branch.replace('/', "-")));
    let origin = fleet.path("origin");
    git(
        fleet.dir.path(),
        &[
            "clone",
            "-q",
            origin.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    git(&clone, &["checkout", "-q", "-b", branch]);
    std::fs::write(clone.join("pulled.txt"), "done by a pull agent\n").unwrap();
    git(&clone, &["add", "pulled.txt"]);
    git(&clone, &["commit", "-q", "-m", "pull agent work"]);
    git(&clone, &["push", "-q", "origin", branch]);
    git(&clone, &["rev-parse", "HEAD"])
}

#[tokio::test]
async fn a_pull_agent_dequeues_reports_running_and_completes_a_task() {
    let fleet = Fleet::start(setup("")).await;
    let agent = Agent::register(&fleet, "jeeves", &["remote"], &[]).await;
    let id = submit_remote(&fleet, "summarise the README").await;
    let got = dequeue_one(&agent).await;
    assert_eq!(got["task"]["id"], id.as_str());
    assert_eq!(got["task"]["branch"], fleet.branch(&id).await);
    assert!(
        got["task"]["prompt"]
            .as_str()
            .unwrap()
            .contains("summarise the README")
    );
    let epoch = got["lease"]["epoch"].as_u64().unwrap();
    assert_eq!(epoch, 1);
    let task = fleet.task(&id).await;
    assert_eq!(
        (task["status"].as_str(), task["execution_mode"].as_str()),
        (Some("assigned"), Some("http_pull"))
    );
    assert_eq!(task["assigned_agent"], "jeeves");
    let (status, body) = agent
        .post(
            &format!("/tasks/{id}/status"),
            json!({ "epoch": epoch, "status": "running" }),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("running")),
        "{body}"
    );
    let (status, body) = agent
        .post(
            &format!("/tasks/{id}/complete"),
            json!({ "epoch": epoch, "summary": "it is short" }),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("completed")),
        "{body}"
    );
    let task = fleet.task(&id).await;
    assert_eq!(task["status"], "completed", "{}", story(&task));
    // Nothing left.
    assert_eq!(agent.dequeue().await.0, 204);
}

#[tokio::test]
async fn a_receipt_completes_the_task_only_when_git_shows_its_commits() {
    let fleet = Fleet::start(setup("")).await;
    let agent = Agent::register(&fleet, "hermes", &["remote"], &[]).await;
    let id = submit_remote(&fleet, "add a file").await;
    let got = dequeue_one(&agent).await;
    let epoch = got["lease"]["epoch"].as_u64().unwrap();
    let branch = fleet.branch(&id).await;
    let receipt = |commits: Value, branch: &str| {
        json!({ "task_id": id.parse::<u64>().unwrap(), "epoch": epoch, "branch": branch,
                "commits": commits, "summary": "added pulled.txt" })
    };
    // Nothing pushed yet: refused, and the task stays with the agent.
    let (status, body) = agent
        .post("/receipts", receipt(json!(["deadbeef00"]), &branch))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no branch"),
        "{body}"
    );
    let sha = push_work(&fleet, &branch);
    let (status, body) = agent.post("/receipts", receipt(json!([sha]), "main")).await;
    assert_eq!(status, 422, "another branch: {body}");
    let (status, body) = agent
        .post("/receipts", receipt(json!(["0123456789abcdef"]), &branch))
        .await;
    assert_eq!(status, 422, "a commit not on the branch: {body}");
    let (status, body) = agent
        .post("/receipts", receipt(json!([sha.clone()]), &branch))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("completed")),
        "{body}"
    );
    assert_eq!(body["verified"], true);
    let task = fleet.task(&id).await;
    assert_eq!(
        task["receipt"]["commits"][0]["sha"],
        sha.as_str(),
        "{}",
        story(&task)
    );
}

#[tokio::test]
async fn a_silent_agent_loses_its_task_to_another_and_its_late_complete_is_refused() {
    let fleet = Fleet::start(setup(
        "heartbeat_interval = \"300ms\"\nheartbeat_misses = 2\n",
    ))
    .await;
    let first = Agent::register(&fleet, "first", &["remote"], &[]).await;
    let id = submit_remote(&fleet, "some work").await;
    let got = dequeue_one(&first).await;
    let old_epoch = got["lease"]["epoch"].as_u64().unwrap();
    // `first` never heartbeats again: offline after 600 ms, its task agent_lost and re-queued.
    let lost = fleet
        .wait_for(&id, Duration::from_secs(10), |t| {
            t["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["text"].as_str().is_some_and(|n| n.contains("agent_lost")))
        })
        .await;
    assert!(
        story(&lost).contains("missed 2 heartbeats"),
        "{}",
        story(&lost)
    );
    let second = Agent::register(&fleet, "second", &["remote"], &[]).await;
    let got = dequeue_one(&second).await;
    let epoch = got["lease"]["epoch"].as_u64().unwrap();
    assert_eq!(epoch, old_epoch + 1);
    let (status, body) = first
        .post(
            &format!("/tasks/{id}/complete"),
            json!({ "epoch": old_epoch, "summary": "late" }),
        )
        .await;
    assert!(status == 409 || status == 403, "{status} {body}");
    let (status, body) = second
        .post(
            &format!("/tasks/{id}/complete"),
            json!({ "epoch": epoch, "summary": "done" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let agents = fleet.get("/agents?status=offline").await.1;
    let names: Vec<_> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("first")]);
}

#[tokio::test]
async fn a_stale_epoch_is_refused_with_409_even_from_the_holder() {
    let fleet = Fleet::start(setup("")).await;
    let agent = Agent::register(&fleet, "a1", &["remote"], &[]).await;
    let id = submit_remote(&fleet, "x").await;
    let got = dequeue_one(&agent).await;
    let epoch = got["lease"]["epoch"].as_u64().unwrap();
    let (status, body) = agent
        .post(
            &format!("/tasks/{id}/status"),
            json!({ "epoch": epoch + 5, "status": "running" }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "stale_epoch");
}

#[tokio::test]
async fn tokens_missing_wrong_or_of_another_agent_are_refused() {
    let fleet = Fleet::start(setup("")).await;
    let owner = Agent::register(&fleet, "owner", &["remote"], &[]).await;
    let other = Agent::register(&fleet, "other", &["remote"], &[]).await;
    let id = submit_remote(&fleet, "x").await;
    let epoch = dequeue_one(&owner).await["lease"]["epoch"]
        .as_u64()
        .unwrap();
    let url = fleet.api("/tasks/dequeue");
    let none = reqwest::Client::new().post(&url).send().await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    let wrong = reqwest::Client::new()
        .post(&url)
        .bearer_auth("fleet_agent_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let admin = reqwest::Client::new()
        .post(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.status().as_u16(),
        401,
        "the admin token is not an agent's"
    );
    let (status, body) = other
        .post(
            &format!("/tasks/{id}/status"),
            json!({ "epoch": epoch, "status": "running" }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // Registering needs the admin (or registration) token.
    let r = reqwest::Client::new()
        .post(fleet.api("/agents/register"))
        .bearer_auth(&owner.token)
        .json(&json!({ "name": "sneaky", "agent_kinds": ["remote"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn tokens_are_stored_only_as_hashes() {
    let mut fleet = Fleet::start(setup("")).await;
    let agent = Agent::register(&fleet, "keeper", &["remote"], &[]).await;
    agent.heartbeat().await;
    fleet.kill();
    let store = std::fs::read(fleet.path("data/fleet.redb")).unwrap();
    let token = agent.token.as_bytes();
    assert!(
        !store.windows(token.len()).any(|w| w == token),
        "token in clear in the store"
    );
    let hex = &agent.token["fleet_agent_".len()..];
    assert!(!store.windows(hex.len()).any(|w| w == hex.as_bytes()));
}

#[tokio::test]
async fn registering_the_same_name_again_keeps_the_id_and_rotates_the_token() {
    let fleet = Fleet::start(setup("")).await;
    let first = Agent::register(&fleet, "same", &["remote"], &[]).await;
    let again = Agent::register(&fleet, "same", &["remote"], &["gpu"]).await;
    assert_eq!(first.id, again.id);
    assert_eq!(again.heartbeat().await["agent_id"], first.id);
    assert_eq!(
        first.post("/agents/heartbeat", json!({})).await.0,
        401,
        "old token"
    );
    let list = fleet.get("/agents?capability=gpu").await.1;
    assert_eq!(list["agents"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn deregistering_puts_the_agents_tasks_back_in_the_queue() {
    let fleet = Fleet::start(setup("")).await;
    let leaving = Agent::register(&fleet, "leaving", &["remote"], &[]).await;
    let id = submit_remote(&fleet, "x").await;
    dequeue_one(&leaving).await;
    let (status, body) = leaving.post("/agents/deregister", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["requeued"], json!([id.parse::<u64>().unwrap()]));
    let staying = Agent::register(&fleet, "staying", &["remote"], &[]).await;
    let got = dequeue_one(&staying).await;
    assert_eq!(got["task"]["id"], id.as_str());
    assert_eq!(got["lease"]["epoch"], 2);
}

#[tokio::test]
async fn an_agent_gets_only_tasks_of_its_kinds_and_capabilities() {
    let fleet = Fleet::start(setup("")).await;
    let plain = Agent::register(&fleet, "plain", &["remote"], &[]).await;
    let gpu = Agent::register(&fleet, "gpu", &["remote"], &["gpu"]).await;
    let (status, task) = fleet
        .post(
            "/tasks",
            json!({ "title": "train", "agent": "remote", "capabilities": ["gpu"] }),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(plain.dequeue().await.0, 204);
    assert_eq!(dequeue_one(&gpu).await["task"]["id"], id.as_str());
}

#[tokio::test]
async fn assign_pins_a_task_to_one_agent_and_refuses_unknown_targets_and_busy_tasks() {
    let fleet = Fleet::start(setup("")).await;
    let chosen = Agent::register(&fleet, "chosen", &["remote"], &[]).await;
    let other = Agent::register(&fleet, "other", &["remote"], &[]).await;
    let id = submit_remote(&fleet, "x").await;
    let (status, body) = fleet
        .post(
            &format!("/tasks/{id}/assign"),
            json!({ "agent_id": 999_999 }),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = fleet
        .post(&format!("/tasks/{id}/assign"), json!({ "host_id": "nope" }))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = fleet
        .post(
            &format!("/tasks/{id}/assign"),
            json!({ "agent_id": chosen.id, "execution_mode": "ssh_cli" }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = fleet
        .post(
            &format!("/tasks/{id}/assign"),
            json!({ "agent_id": chosen.id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["execution_mode"], "http_pull");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(other.dequeue().await.0, 204, "pinned to `chosen`");
    dequeue_one(&chosen).await;
    let (status, body) = fleet
        .post(
            &format!("/tasks/{id}/assign"),
            json!({ "agent_id": other.id }),
        )
        .await;
    assert_eq!(status, 409, "held by an agent: {body}");
}

#[tokio::test]
async fn an_undecided_task_no_host_takes_in_time_becomes_http_pull() {
    // The local host offers `demo` but is full: a second `demo` task waits undecided, then is
    // handed to pull agents because one could take it.
    let fleet = Fleet::start(Setup {
        hosts: Some(format!(
            "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"demo\"]\nmax_concurrent = 1\nwork_root = \"{}\"\n",
            tempfile::tempdir().unwrap().keep().display()
        )),
        ..setup("undecided_timeout = \"500ms\"\n")
    })
    .await;
    let _agent = Agent::register(&fleet, "helper", &["demo"], &[]).await;
    let busy = fleet.submit("busy", "demo-agent: sleep 30").await;
    fleet
        .wait_status(&busy, "running", Duration::from_secs(20))
        .await;
    let waiting = fleet.submit("second", "").await;
    let task = fleet
        .wait_for(&waiting, Duration::from_secs(10), |t| {
            t["execution_mode"] == "http_pull"
        })
        .await;
    assert_eq!(task["status"], "created", "{}", story(&task));
    fleet
        .post(&format!("/tasks/{busy}/cancel"), json!({}))
        .await;
}

#[tokio::test]
async fn an_undecided_task_wanted_by_a_host_and_an_agent_goes_to_exactly_one() {
    let fleet = Fleet::start(Setup {
        hosts: Some(format!(
            "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"demo\"]\nmax_concurrent = 1\nwork_root = \"{}\"\n",
            tempfile::tempdir().unwrap().keep().display()
        )),
        ..setup("undecided_timeout = \"1h\"\n")
    })
    .await;
    let agent = Agent::register(&fleet, "racer", &["demo"], &[]).await;
    for round in 0..6 {
        let busy = fleet
            .submit(&format!("busy {round}"), "demo-agent: sleep 30")
            .await;
        fleet
            .wait_status(&busy, "running", Duration::from_secs(20))
            .await;
        let wanted = fleet.submit(&format!("wanted {round}"), "").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Free the host and dequeue at the same moment.
        let cancel_path = format!("/tasks/{busy}/cancel");
        let (cancel, claim) = tokio::join!(fleet.post(&cancel_path, json!({})), agent.dequeue());
        assert_eq!(cancel.0, 202);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let task = fleet.task(&wanted).await;
        let mode = task["execution_mode"].as_str().unwrap().to_string();
        match claim.0 {
            200 => {
                assert_eq!(claim.1["task"]["id"], wanted.as_str());
                assert_eq!(mode, "http_pull", "{}", story(&task));
                assert!(
                    task["runs"].as_array().unwrap().is_empty(),
                    "{}",
                    story(&task)
                );
                let epoch = claim.1["lease"]["epoch"].as_u64().unwrap();
                agent
                    .post(
                        &format!("/tasks/{wanted}/complete"),
                        json!({ "epoch": epoch }),
                    )
                    .await;
            }
            204 => {
                assert_eq!(mode, "ssh_cli", "{}", story(&task));
                assert!(task["assigned_agent"] != "racer");
                fleet
                    .wait_status(&wanted, "completed", Duration::from_secs(30))
                    .await;
            }
            other => panic!("dequeue answered {other}: {}", claim.1),
        }
    }
}

#[tokio::test]
async fn a_dequeue_sent_again_with_the_same_key_answers_the_same_task() {
    let fleet = Fleet::start(setup("")).await;
    let agent = Agent::register(&fleet, "resender", &["remote"], &[]).await;
    let first = submit_remote(&fleet, "one").await;
    let second = submit_remote(&fleet, "two").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dequeue = |key: &'static str| {
        agent
            .http
            .post(format!("{}/tasks/dequeue", agent.base))
            .bearer_auth(&agent.token)
            .header("Idempotency-Key", key)
            .send()
    };
    let a: Value = dequeue("k1").await.unwrap().json().await.unwrap();
    let again: Value = dequeue("k1").await.unwrap().json().await.unwrap();
    assert_eq!(a["task"]["id"], again["task"]["id"]);
    assert_eq!(a["lease"]["epoch"], again["lease"]["epoch"]);
    let b: Value = dequeue("k2").await.unwrap().json().await.unwrap();
    let ids = [a["task"]["id"].clone(), b["task"]["id"].clone()];
    assert!(
        ids.contains(&json!(first)) && ids.contains(&json!(second)),
        "{ids:?}"
    );
    let held = agent.heartbeat().await["held"].clone();
    assert_eq!(held.as_array().unwrap().len(), 2, "{held}");
}
