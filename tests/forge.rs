//! The Forgejo integration end to end: a real daemon, the demo agent on a local host, and the
//! fake Forgejo (`tests/support/forgejo.rs`, every request checked against the real swagger
//! spec, real bare repositories, signed webhooks that can be dropped or duplicated). An issue
//! goes all the way: webhook → task → run → branch pushed → one pull request → review round
//! with the feedback in the prompt and the session resumed → merge → verified receipt → one
//! receipt comment, `status:done`.

#[path = "support/forge_rig.rs"]
mod forge_rig;
#[path = "support/sshd.rs"]
mod sshd;

use std::time::Duration;

use forge_rig::daemon::{DEMO_AGENT, Setup, story};
use forge_rig::forgejo::{self, DeliveryMode, ReviewKind};
use forge_rig::{
    FORGE_TOKEN, REPO, Rig, SECRET, back_in_review, line_comment, pr_of, prompt_of_run, run_dir,
};
use sshd::{ClientKey, Sshd};

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

/// Reconciliation every second, webhooks delivered as `delivery` says.
fn reconciling(delivery: DeliveryMode) -> Options {
    Options {
        delivery,
        reconcile: "1s",
        ..Options::default()
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

/// The rig of these tests: the local host (or an SSH one) also offers `envdump`, an agent that
/// writes its environment to `envdump.txt` before it runs the demo agent.
async fn start(o: Options) -> Rig {
    let dir = tempfile::tempdir().unwrap();
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
[[agents]]
name = "envdump"
cli_template = "{envdump} --prompt-file {{prompt_file}}"
output_format = "claude-json"
"#,
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
    let options = forge_rig::Options {
        reconcile: Some(o.reconcile),
        delivery: o.delivery,
        setup: Setup {
            extra,
            hosts: Some(hosts),
            dispatch: format!("max_reviews = {}", o.max_reviews),
            env: vec![("ENVDUMP_FILE", envdump_file)],
            ..Setup::default()
        },
        ..forge_rig::Options::default()
    };
    let mut rig = Rig::start_in(dir, options).await;
    for server in servers {
        rig.servers.push(Box::new(server));
    }
    rig
}

/// The whole loop: issue → PR → "request changes" → second round (feedback in the prompt,
/// session resumed) → approve + merge → completed, one receipt comment, `status:done`.
async fn full_loop(rig: &mut Rig, kills: bool) {
    let (n, id) = rig
        .issue_task("Add a greeting", "Say hello in the README.")
        .await;
    if kills {
        rig.until_started(&id).await;
        rig.restart().await;
    }
    let t = rig.until_status(&id, "review_pending").await;
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
            line_comment("Say it in French too"),
        )
        .await;
    let t = rig
        .until(&id, "ran a second round", |t| back_in_review(t, 1))
        .await;
    if kills {
        rig.restart().await;
    }
    let prompt = prompt_of_run(&t, 1);
    assert!(prompt.contains("Say it in French too"), "{prompt}");
    assert!(prompt.contains("Almost: see the comment."), "{prompt}");
    let command = std::fs::read_to_string(format!("{}/command.sh", run_dir(&t, 1))).unwrap();
    let first_session = t["runs"][0]["session_id"].as_str().unwrap();
    assert!(
        command.contains(&format!("--resume {first_session}")),
        "the session is resumed: {command}"
    );

    rig.forge
        .review(REPO, pr, ReviewKind::Approve, "LGTM", vec![])
        .await;
    rig.forge.merge(REPO, pr).await;
    let t = rig.until_status(&id, "completed").await;
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
    let mut rig = start(Options::default()).await;
    full_loop(&mut rig, false).await;
}

#[tokio::test]
async fn duplicated_webhooks_and_three_sigkills_change_nothing() {
    let mut rig = start(reconciling(DeliveryMode::Duplicate)).await;
    full_loop(&mut rig, true).await;
}

#[tokio::test]
async fn on_an_ssh_host_duplicated_webhooks_and_three_sigkills_change_nothing() {
    let mut rig = start(Options {
        ssh: true,
        ..reconciling(DeliveryMode::Duplicate)
    })
    .await;
    full_loop(&mut rig, true).await;
}

#[tokio::test]
async fn reconciliation_alone_gets_there_when_every_webhook_is_lost() {
    let mut rig = start(reconciling(DeliveryMode::Drop)).await;
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
    let rig = start(Options {
        max_reviews: 1,
        ..Options::default()
    })
    .await;
    let (n, id) = rig.issue_task("Polish", "Make it shine.").await;
    let t = rig.until_status(&id, "review_pending").await;
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
    let t = rig.until_status(&id, "failed").await;
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
    let rig = start(Options::default()).await;
    let (n, id) = rig.issue_task("Maybe", "Try something.").await;
    let t = rig.until_status(&id, "review_pending").await;
    rig.forge.close_pull(REPO, pr_of(&t)).await;
    let t = rig.until_status(&id, "cancelled").await;
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
    let rig = start(Options::default()).await;
    let (n, id) = rig
        .issue_task("Lie", "Pretend.\n\ndemo-agent: no-commit\n")
        .await;
    let t = rig.until_status(&id, "failed").await;
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
    let rig = start(Options::default()).await;
    // No host offers this kind: the task waits, undecided.
    let (n, id) = rig
        .labelled_issue_task("Later", "Wait.", &["agent:claude"])
        .await;
    rig.forge.set_issue_labels(REPO, n, &["bug"]).await;
    let t = rig.until_status(&id, "cancelled").await;
    assert!(story(&t).contains("trigger label"), "{}", story(&t));
    rig.assert_honest();
}

#[tokio::test]
async fn the_forge_token_never_reaches_the_agent() {
    let rig = start(Options::default()).await;
    let (_, id) = rig
        .labelled_issue_task("Env", "Show me.", &["agent:envdump"])
        .await;
    let t = rig.until_status(&id, "review_pending").await;
    let prompt = prompt_of_run(&t, 0);
    let command = std::fs::read_to_string(format!("{}/command.sh", run_dir(&t, 0))).unwrap();
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
