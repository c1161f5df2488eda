//! A forge task cancelled through the API (issue 14, point 12), end to end (a real daemon, the
//! demo agent on a local host, the fake Forgejo validated against the real swagger spec): the
//! issue's labels and comments match the one outcome, `cancelled`.

#[path = "support/forge_rig.rs"]
mod forge_rig;

use std::time::Duration;

use forge_rig::daemon::story;
use forge_rig::{Options, REPO, Rig, pr_of};
use serde_json::json;

/// A daemon on the fake forge, the demo agent on a local host.
async fn rig() -> Rig {
    Rig::start(Options {
        review_debounce: None,
        ..Options::default()
    })
    .await
}

/// Cancels task `id` through the API, waits until it ended and checks the one outcome on the
/// forge: `cancelled`, no status label (for good), no receipt comment, nothing Forgejo refuses.
async fn cancel_and_check(rig: &Rig, id: &str, n: u64) {
    rig.cancel(id, json!({ "reason": "not needed" })).await;
    let t = rig
        .until(id, "ended", |t| {
            ["completed", "failed", "cancelled"].contains(&t["status"].as_str().unwrap_or_default())
        })
        .await;
    assert_eq!(t["status"], "cancelled", "{}", story(&t));
    rig.eventually("status labels removed after the cancel", || {
        rig.status_labels(n).is_empty()
    })
    .await;
    // And they stay so (no late delivery puts one back).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.status_labels(n), Vec::<String>::new());
    assert_eq!(rig.receipts(n), 0, "a cancelled task posts no receipt");
    rig.assert_honest();
}

/// A running forge task is cancelled through the API: it ends `cancelled`, the issue loses its
/// `status:doing` (a cancelled task has no status label) and gets no receipt comment.
#[tokio::test]
async fn a_forge_task_cancelled_through_the_api_while_running_leaves_no_status_label() {
    let rig = rig().await;
    let (n, id) = rig
        .issue_task("Take your time", "Work slowly.\n\ndemo-agent: sleep 60\n")
        .await;
    rig.until_status(&id, "running").await;
    rig.eventually("status:doing on the issue", || {
        rig.status_labels(n) == ["status:doing"]
    })
    .await;
    cancel_and_check(&rig, &id, n).await;
}

/// A cancel lands while the step that verifies a merged pull request (and would complete the
/// task with its receipt and `status:done`) is still running on a slow forge: the cancel wins,
/// and the receipt and `status:done` of the racing step are never sent.
#[tokio::test]
async fn a_cancel_racing_the_step_that_completes_the_task_sends_no_receipt() {
    let rig = rig().await;
    let (n, id) = rig.issue_task("Quick one", "Do it.").await;
    let t = rig
        .until(&id, "got to review", |t| {
            t["status"] == "review_pending" && t["pr_number"].as_u64().is_some()
        })
        .await;
    rig.eventually("status:review on the issue", || {
        rig.status_labels(n) == ["status:review"]
    })
    .await;
    // The merged step reads the pull request's commits: slowly enough that the cancel lands
    // while it waits, even on a loaded machine.
    rig.forge.slow_down(
        "GET",
        "/repos/{owner}/{repo}/pulls/{index}/commits",
        Duration::from_secs(8),
    );
    let commit_reads = || {
        rig.forge
            .requests()
            .iter()
            .filter(|(m, p)| m == "GET" && p.contains("/commits"))
            .count()
    };
    let before = commit_reads();
    rig.forge.merge(REPO, pr_of(&t)).await;
    rig.eventually("the merged step reading the commits", || {
        commit_reads() > before
    })
    .await;
    cancel_and_check(&rig, &id, n).await;
}
