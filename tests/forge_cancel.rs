//! A forge task cancelled through the API (issue 14, point 12), end to end (a real daemon, the
//! demo agent on a local host, the fake Forgejo validated against the real swagger spec): the
//! issue's labels and comments match the one outcome, `cancelled`.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/forgejo.rs"]
mod forgejo;

use std::time::{Duration, Instant};

use daemon::{Fleet, Setup, story};
use forgejo::FakeForgejo;
use serde_json::{Value, json};

const FORGE_TOKEN: &str = "cancel-forge-token-5b18";
const SECRET: &str = "cancel-webhook-secret-a3f0";
const REPO: &str = "acme/widgets";
const LONG: Duration = Duration::from_secs(90);

/// The issue's `status:*` labels, sorted.
fn status_labels(forge: &FakeForgejo, n: u64) -> Vec<String> {
    let mut l: Vec<String> = forge
        .issue_labels(REPO, n)
        .into_iter()
        .filter(|l| l.starts_with("status:"))
        .collect();
    l.sort();
    l
}

/// Polls `pred` on task `id` until it holds; panics with the task and the log after [`LONG`].
async fn until(fleet: &Fleet, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let t = fleet.task(id).await;
        if pred(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never {what}:\n{}\nlog:\n{}",
            story(&t),
            fleet.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `pred` holds on the forge; panics with `what` after [`LONG`].
async fn forge_until(fleet: &Fleet, what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + LONG;
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "never {what}; daemon log:\n{}",
            fleet.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A daemon on the fake forge, the demo agent on a local host.
async fn rig() -> (FakeForgejo, Fleet) {
    let dir = tempfile::tempdir().unwrap();
    let forge = FakeForgejo::start(dir.path(), FORGE_TOKEN);
    forge.create_repo("acme", "widgets").await;
    let extra = format!(
        r#"
[forgejo]
base_url = "{url}"
token_env = "CANCEL_FORGE_TOKEN"
webhook_secret_env = "CANCEL_FORGE_SECRET"
repos = ["{REPO}"]
reconcile_interval = "1s"
default_agent = "demo"
"#,
        url = forge.url(),
    );
    let fleet = Fleet::start_in(
        dir,
        Setup {
            extra,
            env: vec![
                ("CANCEL_FORGE_TOKEN", FORGE_TOKEN.to_string()),
                ("CANCEL_FORGE_SECRET", SECRET.to_string()),
            ],
            ..Setup::default()
        },
    )
    .await;
    forge.set_webhook(&fleet.api("/webhooks/forgejo"), SECRET);
    (forge, fleet)
}

/// The id of issue `n`'s task, once the webhook created it.
async fn task_of(fleet: &Fleet, n: u64) -> String {
    let source = format!("{REPO}#{n}");
    let deadline = Instant::now() + LONG;
    loop {
        let (status, list) = fleet.get("/tasks").await;
        assert_eq!(status, 200, "{list}");
        let found = list["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["source"] == source.as_str())
            .and_then(|t| t["id"].as_str().map(str::to_string));
        if let Some(id) = found {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "issue #{n} got no task; log:\n{}",
            fleet.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cancels task `id` through the API, waits until it ended and checks the one outcome on the
/// forge: `cancelled`, no status label (for good), no receipt comment, nothing Forgejo refuses.
async fn cancel_and_check(forge: &FakeForgejo, fleet: &Fleet, id: &str, n: u64) {
    let (status, body) = fleet
        .post(
            &format!("/tasks/{id}/cancel"),
            json!({ "reason": "not needed" }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let t = until(fleet, id, "ended", |t| {
        ["completed", "failed", "cancelled"].contains(&t["status"].as_str().unwrap_or_default())
    })
    .await;
    assert_eq!(t["status"], "cancelled", "{}", story(&t));
    forge_until(fleet, "status labels removed after the cancel", || {
        status_labels(forge, n).is_empty()
    })
    .await;
    // And they stay so (no late delivery puts one back).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status_labels(forge, n), Vec::<String>::new());
    let receipts = forge
        .comments(REPO, n)
        .iter()
        .filter(|c| c.body.contains(":effect=receipt -->"))
        .count();
    assert_eq!(receipts, 0, "a cancelled task posts no receipt");
    let violations = forge.violations();
    assert!(
        violations.is_empty(),
        "requests the real Forgejo would refuse: {violations:#?}"
    );
}

/// A running forge task is cancelled through the API: it ends `cancelled`, the issue loses its
/// `status:doing` (a cancelled task has no status label) and gets no receipt comment.
#[tokio::test]
async fn a_forge_task_cancelled_through_the_api_while_running_leaves_no_status_label() {
    let (forge, fleet) = rig().await;
    let n = forge
        .open_issue(
            REPO,
            "Take your time",
            "Work slowly.\n\ndemo-agent: sleep 60\n",
            &["agent-fleet"],
        )
        .await;
    let id = task_of(&fleet, n).await;
    until(&fleet, &id, "ran", |t| t["status"] == "running").await;
    forge_until(&fleet, "status:doing on the issue", || {
        status_labels(&forge, n) == ["status:doing"]
    })
    .await;
    cancel_and_check(&forge, &fleet, &id, n).await;
}

/// A cancel lands while the step that verifies a merged pull request (and would complete the
/// task with its receipt and `status:done`) is still running on a slow forge: the cancel wins,
/// and the receipt and `status:done` of the racing step are never sent.
#[tokio::test]
async fn a_cancel_racing_the_step_that_completes_the_task_sends_no_receipt() {
    let (forge, fleet) = rig().await;
    let n = forge
        .open_issue(REPO, "Quick one", "Do it.", &["agent-fleet"])
        .await;
    let id = task_of(&fleet, n).await;
    let t = until(&fleet, &id, "got to review", |t| {
        t["status"] == "review_pending" && t["pr_number"].as_u64().is_some()
    })
    .await;
    forge_until(&fleet, "status:review on the issue", || {
        status_labels(&forge, n) == ["status:review"]
    })
    .await;
    // The merged step reads the pull request's commits: slowly.
    forge.slow_down(
        "GET",
        "/repos/{owner}/{repo}/pulls/{index}/commits",
        Duration::from_secs(3),
    );
    let commit_reads = || {
        forge
            .requests()
            .iter()
            .filter(|(m, p)| m == "GET" && p.contains("/commits"))
            .count()
    };
    let before = commit_reads();
    forge.merge(REPO, t["pr_number"].as_u64().unwrap()).await;
    forge_until(&fleet, "the merged step reading the commits", || {
        commit_reads() > before
    })
    .await;
    cancel_and_check(&forge, &fleet, &id, n).await;
}
