//! End to end through the real binary: tasks submitted over the API run the demo agent on the
//! localhost host, detached, and complete only with a receipt verified by git.

#[path = "support/daemon.rs"]
mod daemon;

use std::time::Duration;

use daemon::{Fleet, Setup, TOKEN, alive, eventually};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_submitted_task_completes_with_a_verified_receipt() {
    let fleet = Fleet::start(Setup::default()).await;
    let id = fleet
        .submit("Add a greeting", "Say hello in the README.")
        .await;
    let task = fleet.wait_status(&id, "completed", T).await;
    assert_eq!(task["execution_mode"], "ssh_cli");
    assert_eq!(task["assigned_host"], "local");
    daemon::assert_store_branch(task["branch_name"].as_str().unwrap(), &id);
    let receipt = &task["receipt"];
    assert_eq!(receipt["commits"].as_array().unwrap().len(), 1, "{task:#}");
    assert_eq!(receipt["files_changed"], json!(["DEMO-AGENT.md"]));
    assert_eq!(receipt["base"], "main");
    let run = &task["runs"][0];
    assert_eq!(run["outcome"], "succeeded");
    assert_eq!(run["exit_code"], 0);
    assert!(run["session_id"].is_string(), "{run}");
    assert_eq!(fleet.launches(), 1);
    let events = task["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["text"].as_str().unwrap().contains("receipt verified")),
        "{events:#?}"
    );
}

#[tokio::test]
async fn a_daemon_killed_while_the_agent_runs_reattaches_to_the_same_run() {
    let mut fleet = Fleet::start(Setup::default()).await;
    let id = fleet
        .submit("Slow work", "Take your time.\ndemo-agent: sleep 4\n")
        .await;
    fleet.wait_status(&id, "running", T).await;
    assert!(eventually(T, || fleet.launches() == 1).await);
    let pid = fleet.agent_pid().expect("the demo agent wrote its pid");
    fleet.kill();
    assert!(alive(pid), "the run must survive the daemon's SIGKILL");
    fleet.spawn().await;
    let task = fleet.wait_status(&id, "completed", T).await;
    assert_eq!(
        fleet.launches(),
        1,
        "the agent was launched again: {task:#}"
    );
    assert_eq!(task["runs"].as_array().unwrap().len(), 1);
    assert_eq!(task["runs"][0]["outcome"], "succeeded");
    assert!(task["receipt"]["head_sha"].is_string());
}

#[tokio::test]
async fn a_run_over_its_timeout_is_killed_with_its_group_and_the_task_fails_after_its_retries() {
    let fleet = Fleet::start(Setup {
        max_retries: 1,
        agent_timeout: "1s",
        ..Setup::default()
    })
    .await;
    let id = fleet.submit("Hang", "demo-agent: sleep 30\n").await;
    let task = fleet.wait_status(&id, "failed", T).await;
    let runs = task["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "one retry: {task:#}");
    assert!(
        runs.iter().all(|r| r["outcome"] == "timed_out"),
        "{runs:#?}"
    );
    assert_eq!(task["attempt"], 2);
    assert!(
        task["failure"].as_str().unwrap().contains("timed out"),
        "{task:#}"
    );
    assert_eq!(fleet.launches(), 2);
    let pid = fleet.agent_pid().unwrap();
    assert!(
        eventually(T, || !alive(pid)).await,
        "agent {pid} left running"
    );
}

#[tokio::test]
async fn cancelling_a_running_task_kills_the_agent_and_ends_it_cancelled() {
    let fleet = Fleet::start(Setup::default()).await;
    let id = fleet.submit("Long", "demo-agent: sleep 30\n").await;
    fleet.wait_status(&id, "running", T).await;
    assert!(eventually(T, || fleet.agent_pid().is_some()).await);
    let pid = fleet.agent_pid().unwrap();
    let (status, _) = fleet
        .post(
            &format!("/tasks/{id}/cancel"),
            json!({ "reason": "changed my mind" }),
        )
        .await;
    assert_eq!(status, 202);
    let task = fleet.wait_status(&id, "cancelled", T).await;
    assert!(
        eventually(T, || !alive(pid)).await,
        "agent {pid} left running"
    );
    assert!(
        task["failure"]
            .as_str()
            .unwrap()
            .contains("changed my mind")
    );
    let events = task["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["text"]
            .as_str()
            .unwrap()
            .contains("stopped the run's process group")),
        "{events:#?}"
    );
}

#[tokio::test]
async fn a_run_that_claims_success_without_a_commit_does_not_complete() {
    let fleet = Fleet::start(Setup::default()).await;
    let id = fleet.submit("Lie", "demo-agent: no-commit\n").await;
    let task = fleet.wait_status(&id, "failed", T).await;
    assert!(task["receipt"].is_null());
    assert!(
        task["failure"].as_str().unwrap().contains("made no commit"),
        "{task:#}"
    );
}

#[tokio::test]
async fn a_failed_task_can_be_retried_and_a_completed_one_cannot() {
    let fleet = Fleet::start(Setup::default()).await;
    let id = fleet.submit("Fail once", "demo-agent: fail\n").await;
    fleet.wait_status(&id, "failed", T).await;
    let (status, task) = fleet.post(&format!("/tasks/{id}/retry"), json!({})).await;
    assert_eq!(status, 202, "{task}");
    fleet
        .wait_for(&id, T, |t| {
            t["runs"].as_array().unwrap().len() == 2 && t["status"] == "failed"
        })
        .await;

    let done = fleet.submit("Fine", "").await;
    fleet.wait_status(&done, "completed", T).await;
    let (status, body) = fleet.post(&format!("/tasks/{done}/retry"), json!({})).await;
    assert_eq!(status, 409);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("completed"),
        "{body}"
    );
}

#[tokio::test]
async fn hostile_titles_and_bodies_reach_the_agent_verbatim_and_execute_nothing() {
    let fleet = Fleet::start(Setup {
        body_limit: 4 << 20,
        ..Setup::default()
    })
    .await;
    let marker = fleet.path("pwned");
    let m = marker.display();
    let junk: String = (1u32..2000)
        .filter_map(|i| char::from_u32((i * 7919) % 0xD7FF + 1))
        .collect();
    let title = format!("$(touch {m}) `touch {m}` '; touch {m} #");
    let body = format!(
        "line one\n\"quoted\" 'single' $(touch {m}-2)\n`touch {m}-3`\n'; touch {m}-4 #\n{junk}\n{}",
        "x".repeat(1_000_000)
    );
    let id = fleet.submit(&title, &body).await;
    let task = fleet.wait_status(&id, "completed", T).await;
    let run_dir = task["runs"][0]["run_dir"].as_str().unwrap();
    let prompt = std::fs::read_to_string(format!("{run_dir}/prompt.md")).unwrap();
    assert!(prompt.contains(&title), "title not verbatim");
    assert!(prompt.contains(&body), "body not verbatim");
    for suffix in ["", "-2", "-3", "-4"] {
        assert!(
            !fleet.path(&format!("pwned{suffix}")).exists(),
            "pwned{suffix} exists"
        );
    }
    assert_eq!(task["title"], title);
}

#[tokio::test]
async fn the_api_needs_the_admin_token() {
    let fleet = Fleet::start(Setup::default()).await;
    let r = fleet.http.get(fleet.api("/tasks")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = fleet
        .http
        .get(fleet.api("/tasks"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn malformed_json_is_a_400_and_unknown_tasks_are_404() {
    let fleet = Fleet::start(Setup::default()).await;
    let r = fleet
        .http
        .post(fleet.api("/tasks"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"title\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = fleet.get("/tasks/999").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = fleet.get("/tasks/abc").await;
    assert_eq!(status, 404);
    let (status, body) = fleet
        .post("/tasks", json!({ "title": "x", "agent": "nope" }))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = fleet.post("/tasks", json!({ "title": "  " })).await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn a_resubmission_with_the_same_idempotency_key_returns_the_same_task() {
    let fleet = Fleet::start(Setup::default()).await;
    let body = json!({ "title": "Once", "idempotency_key": "issue-42" });
    let (s1, a) = fleet.post("/tasks", body.clone()).await;
    let (s2, b) = fleet.post("/tasks", body).await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(a["id"], b["id"]);
}

#[tokio::test]
async fn tasks_are_listed_by_status_with_paging() {
    let fleet = Fleet::start(Setup::default()).await;
    let a = fleet.submit("one", "").await;
    let b = fleet.submit("two", "").await;
    fleet.wait_status(&a, "completed", T).await;
    fleet.wait_status(&b, "completed", T).await;
    let (status, page) = fleet.get("/tasks?status=completed&limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);
    let next = page["next_after"].as_str().unwrap();
    let (_, page2) = fleet
        .get(&format!("/tasks?status=completed&after={next}"))
        .await;
    assert_eq!(page2["tasks"][0]["id"], b);
    assert!(page2["next_after"].is_null());
    let (status, _) = fleet.get("/tasks?status=bogus").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_cli_submits_watches_and_shows_a_task_of_the_real_daemon() {
    let fleet = Fleet::start(Setup::default()).await;
    let url = fleet.url.clone();
    let cli = move |args: &[&str]| {
        std::process::Command::new(daemon::BIN)
            .arg("task")
            .args(args)
            .env("AGENT_FLEET_SERVER", &url)
            .env("FLEET_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    let submit = cli(&[
        "submit",
        "--title",
        "Say hello",
        "--body",
        "Add a greeting.",
    ]);
    let out = String::from_utf8_lossy(&submit.stdout).into_owned();
    assert!(
        submit.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&submit.stderr)
    );
    assert!(out.contains("task 1 created"), "{out}");
    let watch = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || cli(&["watch", "1"])
    })
    .await
    .unwrap();
    let watched = String::from_utf8_lossy(&watch.stdout).into_owned();
    assert_eq!(watch.status.code(), Some(0), "{watched}");
    assert!(watched.contains("receipt verified"), "{watched}");
    let show = cli(&["show", "1"]);
    let shown = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(
        shown.contains("completed") && shown.contains("DEMO-AGENT.md"),
        "{shown}"
    );
}
