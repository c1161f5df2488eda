//! The forge's edges, end to end (a real daemon, the demo agent on a local host, the fake Forgejo
//! validated against the real swagger spec):
//!
//! - Publish finds the task's pull request by base and head (one request, never the list of every
//!   pull request of a large repository), and a 409 on create (an earlier create that succeeded
//!   though its answer was lost) is looked up again instead of failing the task;
//! - the status labels of an issue end matching the status of its LATEST task, whatever order the
//!   label deliveries of its tasks land in on a slow, failing forge;
//! - reconciliation covers every repository with live tasks (not only `forgejo.repos`), and the
//!   memory that an issue's trigger was removed after its task ended survives a restart.

#[path = "support/forge_rig.rs"]
mod forge_rig;

use std::time::Duration;

use forge_rig::daemon::story;
use forge_rig::forgejo::DeliveryMode;
use forge_rig::{Options, REPO, Rig, events, history, pr_of};
use serde_json::Value;

const CREATE_PULL: &str = "/repos/{owner}/{repo}/pulls";

/// A daemon on the fake forge; `repos`: the `forgejo.repos` list (TOML).
async fn start(repos: &str) -> Rig {
    Rig::start(Options {
        repos: Some(repos.to_string()),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn publish_looks_the_pull_request_up_by_base_and_head_without_listing_every_pull() {
    let rig = start(&format!("[\"{REPO}\"]")).await;
    let n = rig.open_triggered("Add a changelog", "Do it.").await;
    let id = rig.nth_task(n, 1).await;
    let t = rig.until_status(&id, "review_pending").await;
    let pr = pr_of(&t);
    let head = rig.forge.pull(REPO, pr).expect("the pull request").head;
    let requests = rig.forge.requests();
    let lookup = format!(
        "/api/v1/repos/{REPO}/pulls/main/{}",
        head.replace('/', "%2F")
    );
    assert!(
        requests.iter().any(|(m, p)| m == "GET" && *p == lookup),
        "no GET {lookup}: {requests:#?}"
    );
    let listed: Vec<_> = requests
        .iter()
        .filter(|(m, p)| m == "GET" && p.starts_with(&format!("/api/v1/repos/{REPO}/pulls?")))
        .collect();
    assert!(
        listed.is_empty(),
        "the repository's pull requests were listed: {listed:#?}"
    );
    rig.assert_honest();
}

#[tokio::test]
async fn a_409_from_a_create_that_had_succeeded_finds_the_pull_request_and_the_task_goes_on() {
    let rig = start(&format!("[\"{REPO}\"]")).await;
    // The first create is carried out, but its answer is lost behind a 503 (a proxy), which the
    // client takes as "not acted on" and sends again: the forge answers 409.
    rig.forge.fail_after_acting("POST", CREATE_PULL, 503, 1);
    let n = rig.open_triggered("Add a licence", "Do it.").await;
    let id = rig.nth_task(n, 1).await;
    let t = rig
        .until(&id, "got to review or failed", |t| {
            t["status"] == "review_pending" || t["status"] == "failed"
        })
        .await;
    assert_eq!(t["status"], "review_pending", "{}", story(&t));
    let pulls = rig.forge.pulls(REPO);
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(t["pr_number"].as_u64(), Some(pulls[0].number));
    assert!(
        history(&t).contains("already open"),
        "the 409 is not in the history:\n{}",
        story(&t)
    );
    let posts = rig
        .forge
        .requests()
        .into_iter()
        .filter(|(m, p)| m == "POST" && *p == format!("/api/v1/repos/{REPO}/pulls"))
        .count();
    assert_eq!(posts, 2, "the create and its repetition");
    // The merge completes it: the pull request found again is the task's.
    rig.forge.merge(REPO, pulls[0].number).await;
    rig.until_status(&id, "completed").await;
    rig.assert_honest();
}

/// Whether every `forge.labels` effect queued on the task has been delivered.
fn labels_delivered(t: &Value) -> bool {
    let texts = events(t);
    let queued: Vec<String> = texts
        .iter()
        .filter_map(|x| x.strip_suffix(" (forge.labels) queued"))
        .filter_map(|x| x.strip_prefix("effect "))
        .map(str::to_string)
        .collect();
    !queued.is_empty()
        && queued.iter().all(|id| {
            let done = format!("effect {id} delivered");
            texts.iter().any(|x| x.starts_with(&done))
        })
}

#[tokio::test]
async fn an_older_tasks_late_label_delivery_does_not_overwrite_the_newer_tasks_status() {
    let rig = start(&format!("[\"{REPO}\"]")).await;
    rig.forge.set_latency(Duration::from_millis(30)); // a slow forge
    let n = rig.open_triggered("Add a notice", "Do it.").await;
    let first = rig.nth_task(n, 1).await;
    let t = rig
        .until(&first, "got to review with its labels", |t| {
            t["status"] == "review_pending" && labels_delivered(t)
        })
        .await;
    rig.labels_settle(n, &["status:review"]).await;
    // `status:done` does not exist yet: creating it fails until the test says otherwise, so the
    // first task's last label delivery keeps failing and is retried with backoff.
    rig.forge
        .fail("POST", "/repos/{owner}/{repo}/labels", 503, u32::MAX);
    rig.forge.merge(REPO, pr_of(&t)).await;
    rig.until_status(&first, "completed").await;
    // Meanwhile the issue (closed by the merge) is taken up again: reopened, its trigger
    // removed, then added back; a second task.
    rig.forge.reopen_issue(REPO, n).await;
    rig.forge.set_issue_labels(REPO, n, &[]).await;
    rig.forge.flush().await;
    rig.forge.set_issue_labels(REPO, n, &["agent-fleet"]).await;
    let second = rig.nth_task(n, 2).await;
    rig.until(&second, "got to review with its labels", |t| {
        t["status"] == "review_pending" && labels_delivered(t)
    })
    .await;
    rig.labels_settle(n, &["status:review"]).await;
    // Now the first task's delivery gets through: the issue keeps the second task's status.
    rig.forge.clear_faults();
    rig.until(&first, "delivered its labels", labels_delivered)
        .await;
    rig.labels_settle(n, &["status:review"]).await;
    rig.assert_honest();
}

#[tokio::test]
async fn reconciliation_covers_a_repository_with_live_tasks_when_forgejo_repos_is_empty() {
    // `repos = []`: webhooks are taken from every repository.
    let rig = start("[]").await;
    let busy = rig
        .open_triggered("Take your time", "demo-agent: sleep 60\n")
        .await;
    let live = rig.nth_task(busy, 1).await;
    rig.until_started(&live).await;
    // The next issue's webhook is lost (as one refused with 503 while the daemon recovers is).
    rig.forge.set_delivery(DeliveryMode::Drop).await;
    let n = rig.open_triggered("Add a readme badge", "Do it.").await;
    // Reconciliation (every second) finds it in the repository of the live task.
    let id = rig.nth_task(n, 1).await;
    rig.until_status(&id, "review_pending").await;
    rig.assert_honest();
}

#[tokio::test]
async fn an_issue_rearmed_before_a_restart_gets_a_new_task_when_its_trigger_comes_back() {
    let mut rig = start(&format!("[\"{REPO}\"]")).await;
    let n = rig
        .open_triggered("Try again later", "demo-agent: sleep 60\n")
        .await;
    let first = rig.nth_task(n, 1).await;
    rig.cancel(&first, serde_json::json!({})).await;
    rig.until_status(&first, "cancelled").await;
    // The trigger is removed after the task ended: the issue is re-armed (acknowledged webhook).
    rig.forge.set_issue_labels(REPO, n, &[]).await;
    rig.forge.flush().await;
    // A restart (SIGKILL) in between.
    rig.restart().await;
    rig.forge.set_issue_labels(REPO, n, &["agent-fleet"]).await;
    let second = rig.nth_task(n, 2).await;
    assert_ne!(second, first);
    rig.until_started(&second).await;
    rig.assert_honest();
}

#[tokio::test]
async fn label_deliveries_of_many_issues_at_once_create_each_status_label_once() {
    let rig = start(&format!("[\"{REPO}\"]")).await;
    rig.forge.set_latency(Duration::from_millis(20));
    // Creating a label is slow: a delivery that does not wait for another's creation to end
    // creates the same label again (Forgejo does not refuse a duplicate name).
    rig.forge.slow_down(
        "POST",
        "/repos/{owner}/{repo}/labels",
        Duration::from_secs(2),
    );
    let mut issues = Vec::new();
    for i in 0..4 {
        let n = rig.open_triggered(&format!("Chore {i}"), "Do it.").await;
        issues.push(n);
    }
    for &n in &issues {
        let id = rig.nth_task(n, 1).await;
        rig.until(&id, "got to review with its labels", |t| {
            t["status"] == "review_pending" && labels_delivered(t)
        })
        .await;
    }
    for &n in &issues {
        rig.labels_settle(n, &["status:review"]).await;
    }
    let status: Vec<String> = rig
        .forge
        .repo_labels(REPO)
        .into_iter()
        .filter(|l| l.starts_with("status:"))
        .collect();
    assert_eq!(status, ["status:doing", "status:review", "status:todo"]);
    rig.assert_honest();
}

/// The daemon remembers the ids of the status labels it found or created, so a status change
/// costs no listing of the repository's labels. A label deleted on the forge meanwhile (Forgejo
/// silently skips an unknown id when adding) is looked up and created again: the next issue
/// still gets it, once.
#[tokio::test]
async fn a_status_label_deleted_from_the_repository_is_created_again_when_next_needed() {
    let rig = Rig::start(Options::default()).await;
    let (first, id) = rig.issue_task("First", "Do it.").await;
    rig.until_status(&id, "review_pending").await;
    rig.labels_settle(first, &["status:review"]).await;
    assert!(rig.forge.delete_label(REPO, "status:review").await);
    let (second, id) = rig.issue_task("Second", "Do it too.").await;
    rig.until_status(&id, "review_pending").await;
    rig.labels_settle(second, &["status:review"]).await;
    let review: Vec<String> = rig
        .forge
        .repo_labels(REPO)
        .into_iter()
        .filter(|l| l == "status:review")
        .collect();
    assert_eq!(review, ["status:review"], "created again, once");
    rig.assert_honest();
}
