//! A forge task caught in Publish when its host is removed from the config (a real daemon,
//! SIGKILLed and restarted with the host renamed, the demo agent, the fake Forgejo). The
//! verified commits live in the task's workspace on that host: when they never reached the
//! forge, the work is done again on another host (no attempt spent); when the branch is on
//! the forge at the verified commit, it is published from there. Never retried for ever.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/forgejo.rs"]
mod forgejo;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use daemon::{Fleet, Setup, eventually, story};
use forgejo::FakeForgejo;
use serde_json::Value;

const FORGE_TOKEN: &str = "removed-forge-token-3b7f";
const SECRET: &str = "removed-webhook-secret-e04c";
const REPO: &str = "acme/widgets";
const LONG: Duration = Duration::from_secs(60);

struct Rig {
    forge: FakeForgejo,
    fleet: Fleet,
}

impl Rig {
    /// The fake forge with acme/widgets and a daemon with one local host `local` running the
    /// demo agent; the forge's webhooks point at it.
    async fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let forge = FakeForgejo::start(dir.path(), FORGE_TOKEN);
        forge.create_repo("acme", "widgets").await;
        let extra = format!(
            r#"
[forgejo]
base_url = "{url}"
token_env = "REMOVED_FORGE_TOKEN"
webhook_secret_env = "REMOVED_FORGE_SECRET"
repos = ["{REPO}"]
reconcile_interval = "30s"
default_agent = "demo"
"#,
            url = forge.url(),
        );
        let fleet = Fleet::start_in(
            dir,
            Setup {
                extra,
                env: vec![
                    ("REMOVED_FORGE_TOKEN", FORGE_TOKEN.to_string()),
                    ("REMOVED_FORGE_SECRET", SECRET.to_string()),
                ],
                ..Setup::default()
            },
        )
        .await;
        forge.set_webhook(&fleet.api("/webhooks/forgejo"), SECRET);
        Rig { forge, fleet }
    }

    /// The forge's bare repository of acme/widgets.
    fn forge_repo(&self) -> PathBuf {
        self.fleet.path("forge/acme/widgets.git")
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

    /// SIGKILL, then the same daemon restarted with `local` renamed `spare` (another work
    /// root): the task's host is gone from the config.
    async fn restart_with_the_host_renamed(&mut self) {
        self.fleet.kill();
        let text = std::fs::read_to_string(&self.fleet.config).unwrap();
        let work = self.fleet.path("work").display().to_string();
        let spare = self.fleet.path("spare").display().to_string();
        let moved = text
            .replace("host_id = \"local\"", "host_id = \"spare\"")
            .replace(
                &format!("work_root = \"{work}\""),
                &format!("work_root = \"{spare}\""),
            );
        assert_ne!(moved, text);
        std::fs::write(&self.fleet.config, moved).unwrap();
        self.fleet.spawn().await;
        self.forge
            .set_webhook(&self.fleet.api("/webhooks/forgejo"), SECRET);
    }
}

/// The hosts of the task's runs, in order.
fn run_hosts(task: &Value) -> Vec<String> {
    task["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_task_whose_host_was_removed_before_its_work_was_pushed_does_the_work_again_elsewhere() {
    let mut rig = Rig::start().await;
    // Pushes to the forge hang (and are then refused): the task stays in Publish.
    let started = rig.fleet.path("push-started");
    let hook = rig.forge_repo().join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ntouch '{}'\nsleep 20\nexit 1\n",
            started.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let n = rig
        .forge
        .open_issue(REPO, "Add a changelog", "Do it.\n", &["agent-fleet"])
        .await;
    let id = rig.task_of(n).await;
    assert!(
        eventually(LONG, || started.exists()).await,
        "the task never pushed:\n{}",
        story(&rig.fleet.task(&id).await)
    );
    // Pushes work again; the one in flight is refused.
    std::fs::remove_file(&hook).unwrap();
    rig.restart_with_the_host_renamed().await;
    let task = rig.fleet.wait_status(&id, "review_pending", LONG).await;
    assert_eq!(run_hosts(&task), ["local", "spare"], "{}", story(&task));
    let told = story(&task);
    assert!(
        told.contains("host local is no longer in the config (publishing the work)")
            && told.contains("never pushed to the forge"),
        "{told}"
    );
    assert_eq!(rig.forge.pulls(REPO).len(), 1);
}

#[tokio::test]
async fn a_task_whose_host_was_removed_after_its_work_was_pushed_publishes_it_from_the_forge() {
    let mut rig = Rig::start().await;
    // The branch gets pushed, but the forge cannot compare it: the task stays in Publish.
    rig.forge.fail(
        "GET",
        "/repos/{owner}/{repo}/compare/{basehead}",
        503,
        10_000,
    );
    let n = rig
        .forge
        .open_issue(REPO, "Add a changelog", "Do it.\n", &["agent-fleet"])
        .await;
    let id = rig.task_of(n).await;
    let pushes = rig.fleet.path("fake-forgejo-pushes.log");
    assert!(
        eventually(LONG, || std::fs::read_to_string(&pushes)
            .is_ok_and(|p| p.contains("refs/heads/task/")))
        .await,
        "the task never pushed:\n{}",
        story(&rig.fleet.task(&id).await)
    );
    rig.forge.clear_faults();
    rig.restart_with_the_host_renamed().await;
    let task = rig.fleet.wait_status(&id, "review_pending", LONG).await;
    assert_eq!(run_hosts(&task), ["local"], "{}", story(&task));
    assert!(
        story(&task).contains("is on the forge at the verified commit: published from there"),
        "{}",
        story(&task)
    );
    assert_eq!(rig.forge.pulls(REPO).len(), 1);
}
