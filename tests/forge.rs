//! The Forgejo integration end to end: a real daemon, the demo agent on a local host, and the
//! fake Forgejo (`tests/support/forgejo.rs`, every request checked against the real swagger
//! spec, real bare repositories, signed webhooks that can be dropped or duplicated). An issue
//! goes all the way: webhook → task → run → branch pushed → one pull request → review round
//! with the feedback in the prompt and the session resumed → merge → verified receipt → one
//! receipt comment, `status:done`.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/forgejo.rs"]
mod forgejo;
#[path = "support/sshd.rs"]
mod sshd;

use std::time::Duration;

use daemon::{DEMO_AGENT, Fleet, Setup, story};
use forgejo::{DeliveryMode, FakeForgejo, ReviewKind};
use serde_json::Value;
use sshd::{ClientKey, Sshd};

const FORGE_TOKEN: &str = "e2e-forge-token-9c1d";
const SECRET: &str = "e2e-webhook-secret-77aa";
const REPO: &str = "acme/widgets";
const LONG: Duration = Duration::from_secs(90);

struct Rig {
    forge: FakeForgejo,
    /// Stopped before the fleet's directory goes.
    _servers: Vec<Sshd>,
    fleet: Fleet,
}

struct Options {
    reconcile: &'static str,
    max_reviews: u32,
    delivery: DeliveryMode,
    /// The agents run on a real sshd on 127.0.0.2 instead of `localhost`.
    ssh: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reconcile: "30s",
            max_reviews: 3,
            delivery: DeliveryMode::Normal,
            ssh: false,
        }
    }
}

/// One SSH host (a real sshd on 127.0.0.2) offering the demo agent, as a `[[hosts]]` entry.
fn ssh_host(root: &std::path::Path) -> (Sshd, String) {
    sshd::require_sshd();
    let key = ClientKey::generate(root, "client");
    let launches = root.join("launches").display().to_string();
    let server = Sshd::start(
        &root.join("sshd"),
        "alpha",
        "127.0.0.2",
        &key,
        &[("DEMO_AGENT_LAUNCHES", &launches)],
    );
    let known_hosts = root.join("known_hosts");
    sshd::known_hosts(&known_hosts, &[&server]);
    let entry = format!(
        "[[hosts]]\nhost_id = \"alpha\"\nhostname = \"127.0.0.2\"\nport = {port}\nuser = \"root\"\nkey_path = \"{key}\"\nknown_hosts = \"{kh}\"\nagents = [\"demo\"]\nmax_concurrent = 2\nwork_root = \"{work}\"\n",
        port = server.port,
        key = key.private.display(),
        kh = known_hosts.display(),
        work = root.join("hosts/alpha").display(),
    );
    (server, entry)
}

impl Rig {
    async fn start(o: Options) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let forge = FakeForgejo::start(dir.path(), FORGE_TOKEN);
        forge.create_repo("acme", "widgets").await;
        forge.set_delivery(o.delivery).await;
        let envdump = dir.path().join("envdump-agent");
        std::fs::write(
            &envdump,
            format!("#!/bin/sh\nenv > \"$ENVDUMP_FILE\"\nexec {DEMO_AGENT} \"$@\"\n"),
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&envdump)
            .status()
            .unwrap();
        let envdump_file = dir.path().join("envdump.txt").display().to_string();
        let extra = format!(
            r#"
[forgejo]
base_url = "{url}"
token_env = "E2E_FORGE_TOKEN"
webhook_secret_env = "E2E_FORGE_SECRET"
repos = ["{REPO}"]
reconcile_interval = "{reconcile}"
review_debounce = "300ms"
default_agent = "demo"

[[agents]]
name = "envdump"
cli_template = "{envdump} --prompt-file {{prompt_file}}"
output_format = "claude-json"
"#,
            url = forge.url(),
            reconcile = o.reconcile,
            envdump = envdump.display(),
        );
        let mut servers = Vec::new();
        let hosts = if o.ssh {
            let (server, entry) = ssh_host(dir.path());
            servers.push(server);
            entry
        } else {
            format!(
                "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"demo\", \"envdump\"]\nmax_concurrent = 2\nwork_root = \"{}\"\n",
                dir.path().join("work").display()
            )
        };
        let fleet = Fleet::start_in(
            dir,
            Setup {
                extra,
                hosts: Some(hosts),
                dispatch: format!("max_reviews = {}", o.max_reviews),
                env: vec![
                    ("E2E_FORGE_TOKEN", FORGE_TOKEN.to_string()),
                    ("E2E_FORGE_SECRET", SECRET.to_string()),
                    ("ENVDUMP_FILE", envdump_file),
                ],
                ..Setup::default()
            },
        )
        .await;
        let rig = Rig {
            forge,
            _servers: servers,
            fleet,
        };
        rig.hook();
        rig
    }

    /// Points the forge's webhook at the daemon (its port changes on every start).
    fn hook(&self) {
        self.forge
            .set_webhook(&self.fleet.api("/webhooks/forgejo"), SECRET);
    }

    async fn restart(&mut self) {
        self.fleet.kill();
        self.fleet.spawn().await;
        self.hook();
    }

    /// The task of issue `n`, once there is one.
    async fn task_of(&self, n: u64) -> Value {
        let source = format!("{REPO}#{n}");
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let (status, list) = self.fleet.get("/tasks").await;
            if status == 200
                && let Some(t) = list["tasks"]
                    .as_array()
                    .and_then(|ts| ts.iter().find(|t| t["source"] == source.as_str()))
            {
                return t.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no task for issue #{n}; daemon log:\n{}",
                self.fleet.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn until(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let t = self.fleet.task(id).await;
            if pred(&t) {
                return t;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "task {id} never {what}:\n{}",
                story(&t)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn eventually(&self, what: &str, pred: impl Fn() -> bool) {
        assert!(
            daemon::eventually(LONG, pred).await,
            "never {what}; daemon log:\n{}",
            self.fleet.log()
        );
    }

    fn receipts(&self, n: u64) -> usize {
        self.marked(n, ":effect=receipt -->")
    }

    fn marked(&self, n: u64, marker: &str) -> usize {
        self.forge
            .comments(REPO, n)
            .iter()
            .filter(|c| c.body.contains(marker))
            .count()
    }

    fn status_labels(&self, n: u64) -> Vec<String> {
        self.forge
            .issue_labels(REPO, n)
            .into_iter()
            .filter(|l| l.starts_with("status:"))
            .collect()
    }

    fn assert_honest(&self) {
        let v = self.forge.violations();
        assert!(
            v.is_empty(),
            "requests the real Forgejo would refuse: {v:#?}"
        );
    }
}

fn id_of(t: &Value) -> String {
    t["id"].as_str().unwrap().to_string()
}

fn pr_of(t: &Value) -> u64 {
    t["pr_number"].as_u64().expect("a pull request number")
}

/// The whole loop: issue → PR → "request changes" → second round (feedback in the prompt,
/// session resumed) → approve + merge → completed, one receipt comment, `status:done`.
async fn full_loop(rig: &mut Rig, kills: bool) {
    let n = rig
        .forge
        .open_issue(
            REPO,
            "Add a greeting",
            "Say hello in the README.",
            &["agent-fleet"],
        )
        .await;
    let task = rig.task_of(n).await;
    let id = id_of(&task);
    if kills {
        rig.until(&id, "started", |t| {
            t["runs"].as_array().is_some_and(|r| !r.is_empty())
        })
        .await;
        rig.restart().await;
    }
    let t = rig
        .until(&id, "got to review", |t| t["status"] == "review_pending")
        .await;
    let pr = pr_of(&t);
    let pulls = rig.forge.pulls(REPO);
    assert_eq!(pulls.len(), 1, "exactly one pull request: {pulls:?}");
    assert_eq!(pulls[0].head, rig.fleet.branch(&id).await);
    rig.eventually("status:review on the issue", || {
        rig.status_labels(n) == ["status:review"]
    })
    .await;
    if kills {
        rig.restart().await;
    }

    rig.forge
        .review(
            REPO,
            pr,
            ReviewKind::RequestChanges,
            "Almost: see the comment.",
            vec![(
                "DEMO-AGENT.md".to_string(),
                1,
                "Say it in French too".to_string(),
            )],
        )
        .await;
    let t = rig
        .until(&id, "ran a second round", |t| {
            t["review_count"] == 1
                && t["runs"].as_array().is_some_and(|r| r.len() == 2)
                && t["status"] == "review_pending"
        })
        .await;
    if kills {
        rig.restart().await;
    }
    let second = &t["runs"][1];
    let run_dir = second["run_dir"].as_str().unwrap();
    let prompt = std::fs::read_to_string(format!("{run_dir}/prompt.md")).unwrap();
    assert!(prompt.contains("Say it in French too"), "{prompt}");
    assert!(prompt.contains("Almost: see the comment."), "{prompt}");
    let command = std::fs::read_to_string(format!("{run_dir}/command.sh")).unwrap();
    let first_session = t["runs"][0]["session_id"].as_str().unwrap();
    assert!(
        command.contains(&format!("--resume {first_session}")),
        "the session is resumed: {command}"
    );

    rig.forge
        .review(REPO, pr, ReviewKind::Approve, "LGTM", vec![])
        .await;
    rig.forge.merge(REPO, pr).await;
    let t = rig
        .until(&id, "completed", |t| t["status"] == "completed")
        .await;
    assert_eq!(t["pr_merged"], true, "{}", story(&t));
    rig.eventually("one receipt comment and status:done", || {
        rig.receipts(n) == 1 && rig.status_labels(n) == ["status:done"]
    })
    .await;
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.receipts(n), 1);
    assert_eq!(rig.forge.pulls(REPO).len(), 1);
    assert_eq!(rig.fleet.launches(), 2, "two runs, never one twice");
    rig.assert_honest();
}

#[tokio::test]
async fn an_issue_goes_all_the_way_to_a_merged_pull_request() {
    let mut rig = Rig::start(Options::default()).await;
    full_loop(&mut rig, false).await;
}

#[tokio::test]
async fn duplicated_webhooks_and_three_sigkills_change_nothing() {
    let mut rig = Rig::start(Options {
        delivery: DeliveryMode::Duplicate,
        reconcile: "1s",
        ..Options::default()
    })
    .await;
    full_loop(&mut rig, true).await;
}

#[tokio::test]
async fn on_an_ssh_host_duplicated_webhooks_and_three_sigkills_change_nothing() {
    let mut rig = Rig::start(Options {
        delivery: DeliveryMode::Duplicate,
        reconcile: "1s",
        ssh: true,
        ..Options::default()
    })
    .await;
    full_loop(&mut rig, true).await;
}

#[tokio::test]
async fn reconciliation_alone_gets_there_when_every_webhook_is_lost() {
    let mut rig = Rig::start(Options {
        delivery: DeliveryMode::Drop,
        reconcile: "1s",
        ..Options::default()
    })
    .await;
    full_loop(&mut rig, false).await;
    let delivered = rig
        .forge
        .deliveries()
        .iter()
        .filter(|d| d.outcome != forgejo::Outcome::Dropped)
        .count();
    assert_eq!(delivered, 0);
}

#[tokio::test]
async fn too_many_review_rounds_fail_the_task_and_escalate() {
    let rig = Rig::start(Options {
        max_reviews: 1,
        ..Options::default()
    })
    .await;
    let n = rig
        .forge
        .open_issue(REPO, "Polish", "Make it shine.", &["agent-fleet"])
        .await;
    let id = id_of(&rig.task_of(n).await);
    let t = rig
        .until(&id, "got to review", |t| t["status"] == "review_pending")
        .await;
    let pr = pr_of(&t);
    for round in 1..=2u32 {
        rig.forge
            .review(
                REPO,
                pr,
                ReviewKind::RequestChanges,
                &format!("Not yet ({round})."),
                vec![],
            )
            .await;
        if round == 1 {
            rig.until(&id, "ran round 1", |t| {
                t["review_count"] == 1 && t["status"] == "review_pending"
            })
            .await;
        }
    }
    let t = rig.until(&id, "failed", |t| t["status"] == "failed").await;
    assert!(
        t["failure"].as_str().unwrap().contains("max_reviews"),
        "{}",
        story(&t)
    );
    rig.eventually("the escalation label and one failure comment", || {
        let labels = rig.forge.issue_labels(REPO, n);
        labels.iter().any(|l| l == "needs-human")
            && labels.iter().any(|l| l == "status:failed")
            && rig.marked(n, ":effect=failure-1 -->") == 1
    })
    .await;
    assert_eq!(rig.marked(n, ":effect=failure-"), 1);
    rig.assert_honest();
}

#[tokio::test]
async fn a_pull_request_closed_without_merging_cancels_the_task() {
    let rig = Rig::start(Options::default()).await;
    let n = rig
        .forge
        .open_issue(REPO, "Maybe", "Try something.", &["agent-fleet"])
        .await;
    let id = id_of(&rig.task_of(n).await);
    let t = rig
        .until(&id, "got to review", |t| t["status"] == "review_pending")
        .await;
    rig.forge.close_pull(REPO, pr_of(&t)).await;
    let t = rig
        .until(&id, "cancelled", |t| t["status"] == "cancelled")
        .await;
    assert!(
        t["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("closed without merging")
            || story(&t).contains("closed without merging"),
        "{}",
        story(&t)
    );
    assert_eq!(rig.receipts(n), 0);
    rig.assert_honest();
}

#[tokio::test]
async fn an_agent_that_claims_success_without_commits_gets_no_pull_request() {
    let rig = Rig::start(Options::default()).await;
    let n = rig
        .forge
        .open_issue(
            REPO,
            "Lie",
            "Pretend.\n\ndemo-agent: no-commit\n",
            &["agent-fleet"],
        )
        .await;
    let id = id_of(&rig.task_of(n).await);
    let t = rig.until(&id, "failed", |t| t["status"] == "failed").await;
    assert!(
        t["failure"].as_str().unwrap().contains("made no commit"),
        "{}",
        story(&t)
    );
    assert!(rig.forge.pulls(REPO).is_empty());
    rig.eventually("one failure comment and status:failed", || {
        rig.marked(n, ":effect=failure-1 -->") == 1 && rig.status_labels(n) == ["status:failed"]
    })
    .await;
    rig.assert_honest();
}

#[tokio::test]
async fn removing_the_trigger_label_before_the_start_cancels_the_task() {
    let rig = Rig::start(Options::default()).await;
    // No host offers this kind: the task waits, undecided.
    let n = rig
        .forge
        .open_issue(REPO, "Later", "Wait.", &["agent:claude"])
        .await;
    let id = id_of(&rig.task_of(n).await);
    rig.forge.set_issue_labels(REPO, n, &["bug"]).await;
    let t = rig
        .until(&id, "cancelled", |t| t["status"] == "cancelled")
        .await;
    assert!(story(&t).contains("trigger label"), "{}", story(&t));
    rig.assert_honest();
}

#[tokio::test]
async fn the_forge_token_never_reaches_the_agent() {
    let rig = Rig::start(Options::default()).await;
    let n = rig
        .forge
        .open_issue(REPO, "Env", "Show me.", &["agent:envdump"])
        .await;
    let id = id_of(&rig.task_of(n).await);
    let t = rig
        .until(&id, "got to review", |t| t["status"] == "review_pending")
        .await;
    let run_dir = t["runs"][0]["run_dir"].as_str().unwrap().to_string();
    let prompt = std::fs::read_to_string(format!("{run_dir}/prompt.md")).unwrap();
    let command = std::fs::read_to_string(format!("{run_dir}/command.sh")).unwrap();
    let env = std::fs::read_to_string(rig.fleet.path("envdump.txt")).unwrap();
    assert!(
        env.contains("PATH="),
        "the agent wrote its environment: {env}"
    );
    for text in [&prompt, &command, &env] {
        assert!(!text.contains(FORGE_TOKEN), "the forge token leaked");
        assert!(!text.contains(SECRET), "the webhook secret leaked");
    }
    rig.assert_honest();
}
