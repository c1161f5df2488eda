//! What a forge issue shows of its task from the start, end to end (a real daemon, the demo
//! agent on a local host, the fake Forgejo): a new task waiting for a host shows `status:todo`
//! on its issue; a person's own assignment of the issue, which the daemon leaves alone, is
//! noted in the task's history, once.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/forgejo.rs"]
mod forgejo;

use std::time::{Duration, Instant};

use daemon::{Fleet, Setup, story};
use forgejo::{ALICE, BOB, BOT, FakeForgejo};
use serde_json::Value;

const FORGE_TOKEN: &str = "status-forge-token-7d1e";
const SECRET: &str = "status-webhook-secret-52aa";
const REPO: &str = "acme/widgets";
const LONG: Duration = Duration::from_secs(60);

struct Rig {
    forge: FakeForgejo,
    fleet: Fleet,
}

impl Rig {
    /// The fake forge with acme/widgets and a daemon with one local host of ONE slot running the
    /// demo agent, `keys` added to its `[forgejo]`; the forge's webhooks point at it.
    async fn start(keys: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let forge = FakeForgejo::start(dir.path(), FORGE_TOKEN);
        forge.create_repo("acme", "widgets").await;
        let extra = format!(
            r#"
[forgejo]
base_url = "{url}"
token_env = "STATUS_FORGE_TOKEN"
webhook_secret_env = "STATUS_FORGE_SECRET"
repos = ["{REPO}"]
reconcile_interval = "30s"
default_agent = "demo"
{keys}
"#,
            url = forge.url(),
        );
        let hosts = format!(
            "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"demo\"]\n\
             max_concurrent = 1\nwork_root = \"{}\"\n",
            dir.path().join("work").display()
        );
        let fleet = Fleet::start_in(
            dir,
            Setup {
                extra,
                hosts: Some(hosts),
                env: vec![
                    ("STATUS_FORGE_TOKEN", FORGE_TOKEN.to_string()),
                    ("STATUS_FORGE_SECRET", SECRET.to_string()),
                ],
                ..Setup::default()
            },
        )
        .await;
        forge.set_webhook(&fleet.api("/webhooks/forgejo"), SECRET);
        Rig { forge, fleet }
    }

    /// The task of issue `n`, once there is one.
    async fn task_of(&self, n: u64) -> String {
        let source = format!("{REPO}#{n}");
        let deadline = Instant::now() + LONG;
        loop {
            let (status, list) = self.fleet.get("/tasks").await;
            if status == 200
                && let Some(t) = list["tasks"]
                    .as_array()
                    .and_then(|ts| ts.iter().find(|t| t["source"] == source.as_str()))
            {
                return t["id"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no task for issue #{n}; daemon log:\n{}",
                self.fleet.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until issue `n` carries `label`; returns its labels then.
    async fn issue_labelled(&self, n: u64, label: &str) -> Vec<String> {
        let deadline = Instant::now() + LONG;
        loop {
            let labels = self.forge.issue_labels(REPO, n);
            if labels.iter().any(|l| l == label) {
                return labels;
            }
            assert!(
                Instant::now() < deadline,
                "issue #{n} never showed {label}: labels {labels:?}; daemon log:\n{}",
                self.fleet.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The status labels among `labels`.
fn status_labels(labels: &[String]) -> Vec<&str> {
    labels
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("status:"))
        .collect()
}

#[tokio::test]
async fn a_new_task_waiting_for_a_host_shows_status_todo_on_its_issue() {
    let rig = Rig::start("").await;
    // The only slot is taken for a while: the issue's task waits for it.
    let busy = rig.fleet.submit("busy", "demo-agent: sleep 20").await;
    rig.fleet
        .wait_status(&busy, "running", Duration::from_secs(20))
        .await;
    let n = rig
        .forge
        .open_issue(REPO, "Add a changelog", "Do it.\n", &["agent-fleet"])
        .await;
    let id = rig.task_of(n).await;
    let labels = rig.issue_labelled(n, "status:todo").await;
    assert_eq!(status_labels(&labels), ["status:todo"], "{labels:?}");
    let task = rig.fleet.task(&id).await;
    assert_eq!(task["status"], "created", "{}", story(&task));
    let violations = rig.forge.violations();
    assert!(violations.is_empty(), "swagger violations: {violations:#?}");
}

/// How many of the task's history entries say `text`.
fn mentions(task: &Value, text: &str) -> usize {
    task["events"].as_array().map_or(0, |es| {
        es.iter().filter(|e| e.to_string().contains(text)).count()
    })
}

#[tokio::test]
async fn a_persons_own_assignment_of_the_issue_is_noted_in_the_tasks_history_once() {
    let rig = Rig::start(&format!("assignee = \"{BOT}\"\nreviewer = \"{BOB}\"")).await;
    let n = rig
        .forge
        .open_issue(
            REPO,
            "Add a licence",
            "Do it.\n\ndemo-agent: sleep 2\n",
            &[],
        )
        .await;
    // Alice takes the issue herself, then asks for an agent.
    rig.forge.assign(REPO, n, &[ALICE]).await;
    rig.forge.set_issue_labels(REPO, n, &["agent-fleet"]).await;
    let id = rig.task_of(n).await;
    let said = format!("is assigned to {ALICE}");
    // Several status changes (todo, doing, review), each delivering the labels effect.
    rig.fleet
        .wait_for(&id, LONG, |t| t["status"] == "review_pending")
        .await;
    rig.issue_labelled(n, "status:review").await;
    rig.fleet
        .wait_for(&id, LONG, |t| mentions(t, &said) > 0)
        .await;
    assert_eq!(rig.forge.issue_assignees(REPO, n), [ALICE]);
    // Later deliveries say nothing new.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let task = rig.fleet.task(&id).await;
    assert_eq!(mentions(&task, &said), 1, "{}", story(&task));
}
