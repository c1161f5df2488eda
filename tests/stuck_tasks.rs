//! Tasks that would never end (issue 14, points 7 and 8), against the real daemon: a task
//! whose pull agent is lost, or that no pull agent claims, goes back to the hosts; a host step
//! that keeps failing ends its run; a task whose host was removed from the config runs on
//! another host.

#[path = "support/daemon.rs"]
mod daemon;

use std::time::Duration;

use daemon::{Fleet, Setup, occupy_the_host, one_slot, rename_the_host, run_hosts, story};
use serde_json::{Value, json};

/// A fleet with one local host of ONE slot (a sleeping task keeps it busy), `dispatch` added to
/// its `[dispatch]`.
async fn start_one_slot(dispatch: &str) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let hosts = one_slot(dir.path());
    let setup = Setup {
        hosts: Some(hosts),
        dispatch: dispatch.to_string(),
        retry_backoff: "100ms",
        max_retries: 2,
        ..Setup::default()
    };
    Fleet::start_in(dir, setup).await
}

/// A pull agent over HTTP (registered with the admin token, then using its own).
struct Agent {
    token: String,
    http: reqwest::Client,
    base: String,
}

impl Agent {
    async fn register(fleet: &Fleet, name: &str) -> Agent {
        let (status, body) = fleet
            .post(
                "/agents/register",
                json!({ "name": name, "agent_kinds": ["demo"], "capabilities": [], "max_concurrent": 1 }),
            )
            .await;
        assert!(status == 201 || status == 200, "{status} {body}");
        Agent {
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

    async fn deregister(&self) {
        let (status, body) = self.post("/agents/deregister", json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// A task no pull agent claims: the only slot is busy for 5 s, an agent that could take the task
/// is online while it is left to pull agents, then leaves. The task's id.
async fn left_to_pull_agents(fleet: &Fleet) -> String {
    occupy_the_host(fleet, 5).await;
    let agent = Agent::register(fleet, "idle").await;
    let id = fleet.submit("wanted", "").await;
    fleet
        .wait_for(&id, Duration::from_secs(20), |t| {
            t["execution_mode"] == "http_pull"
        })
        .await;
    agent.deregister().await;
    id
}

/// Task `id` completes on the host `local`, routed to the hosts again.
async fn completes_routed_to_the_hosts_again(fleet: &Fleet, id: &str) {
    let task = fleet
        .wait_status(id, "completed", Duration::from_secs(40))
        .await;
    assert_eq!(run_hosts(&task), ["local"], "{}", story(&task));
    assert!(
        story(&task).contains("routed to hosts again"),
        "{}",
        story(&task)
    );
}

#[tokio::test]
async fn a_task_whose_pull_agent_is_lost_is_routed_to_the_hosts_again() {
    // No hand-over to pull agents by timeout, and the default pull timeout (10 min): only the
    // reset of the execution mode can bring the task back to the host.
    let fleet = start_one_slot("undecided_timeout = \"60s\"").await;
    let busy = occupy_the_host(&fleet, 4).await;
    let agent = Agent::register(&fleet, "flaky").await;
    let id = fleet.submit("wanted", "").await;
    let mut claimed = false;
    for _ in 0..200 {
        let (status, body) = agent.post("/tasks/dequeue", json!({})).await;
        if status == 200 {
            assert_eq!(body["task"]["id"], id.as_str(), "{body}");
            claimed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(claimed, "the agent never got the task");
    agent.deregister().await;
    let task = fleet
        .wait_status(&id, "completed", Duration::from_secs(40))
        .await;
    assert_eq!(run_hosts(&task), ["local"], "{}", story(&task));
    assert_eq!(task["execution_mode"], "ssh_cli", "{}", story(&task));
    fleet
        .wait_status(&busy, "completed", Duration::from_secs(20))
        .await;
}

#[tokio::test]
async fn a_task_no_pull_agent_claims_is_routed_to_the_hosts_after_the_pull_timeout() {
    // Left to pull agents after 1 s; nobody claims it, the agent even leaves.
    let fleet = start_one_slot("undecided_timeout = \"1s\"\npull_timeout = \"2s\"").await;
    let id = left_to_pull_agents(&fleet).await;
    completes_routed_to_the_hosts_again(&fleet, &id).await;
}

#[tokio::test]
async fn a_host_step_that_keeps_failing_ends_the_run_as_failed() {
    // A kind whose run deletes the work directory's repository: verifying its commits fails
    // on every try.
    let dir = tempfile::tempdir().unwrap();
    let hosts = format!(
        "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"demo\", \"breaker\"]\n\
         max_concurrent = 2\nwork_root = \"{}/work\"\n",
        dir.path().display()
    );
    let setup = Setup {
        hosts: Some(hosts),
        dispatch: "max_step_errors = 1".into(),
        extra: "[[agents]]\nname = \"breaker\"\ncli_template = \"rm -rf .git {prompt_file}\"\n\
                output_format = \"raw\"\n"
            .into(),
        ..Setup::default()
    };
    let fleet = Fleet::start_in(dir, setup).await;
    let (status, task) = fleet
        .post("/tasks", json!({ "title": "break it", "agent": "breaker" }))
        .await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap();
    let task = fleet
        .wait_status(id, "failed", Duration::from_secs(30))
        .await;
    let failure = task["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("verifying the run's commits on local failed 2 times in a row"),
        "{}",
        story(&task)
    );
    assert_eq!(task["runs"][0]["outcome"], "failed", "{}", story(&task));
    // The slot is free again: a demo task runs.
    let next = fleet.submit("after", "").await;
    fleet
        .wait_status(&next, "completed", Duration::from_secs(30))
        .await;
}

#[tokio::test]
async fn a_task_whose_host_was_removed_from_the_config_runs_on_another_host() {
    let mut fleet = Fleet::start(Setup::default()).await;
    let id = fleet.submit("moved", "demo-agent: sleep 3").await;
    fleet
        .wait_status(&id, "running", Duration::from_secs(20))
        .await;
    fleet.kill();
    // The same machine under another name and work root: `local` is gone from the config.
    rename_the_host(&fleet);
    fleet.spawn().await;
    // `max_retries = 0`: the move spends no attempt.
    let task = fleet
        .wait_status(&id, "completed", Duration::from_secs(40))
        .await;
    assert_eq!(run_hosts(&task), ["local", "spare"], "{}", story(&task));
    assert_eq!(task["runs"][0]["outcome"], "host_lost", "{}", story(&task));
    assert!(
        story(&task).contains("host local is no longer in the config"),
        "{}",
        story(&task)
    );
}

#[tokio::test]
async fn a_task_left_to_pull_agents_gets_the_pull_timeout_of_the_config_it_restarts_with() {
    // Parked in Pull under a deadline an hour away (an older build set none at all): after the
    // restart, the config's 2 s apply.
    let mut fleet = start_one_slot("undecided_timeout = \"1s\"\npull_timeout = \"1h\"").await;
    let id = left_to_pull_agents(&fleet).await;
    fleet.kill();
    let text = std::fs::read_to_string(&fleet.config).unwrap();
    let shorter = text.replace("pull_timeout = \"1h\"", "pull_timeout = \"2s\"");
    assert_ne!(shorter, text);
    std::fs::write(&fleet.config, shorter).unwrap();
    fleet.spawn().await;
    completes_routed_to_the_hosts_again(&fleet, &id).await;
}
