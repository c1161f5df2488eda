//! What the daemon keeps in step on a forge issue besides its labels, end to end (a real daemon,
//! the demo agent on a local host, the fake Forgejo): the issue's ASSIGNEES follow the task
//! (`forgejo.assignee` while it runs, `forgejo.reviewer` in review and once done) without ever
//! undoing a person's own assignment; and a redelivered issue event costs no forge request.

#[path = "support/forge_rig.rs"]
mod forge_rig;

use std::time::Duration;

use forge_rig::forgejo::{ALICE, BOB, BOT, DeliveryMode, Outcome};
use forge_rig::{FORGE_TOKEN, Options, REPO, Rig, forge_with_widgets, pr_of};
use serde_json::Value;

/// The fake forge with acme/widgets, a daemon with one local host running the demo agent,
/// `keys` added to its `[forgejo]`, reconciling every 30 s, and the forge's webhooks pointed at it.
async fn start(keys: &str, delivery: DeliveryMode) -> Rig {
    Rig::start(Options {
        reconcile: Some("30s"),
        keys: keys.to_string(),
        delivery,
        ..Options::default()
    })
    .await
}

/// Task `id` of issue `n` runs with the issue showing `status:doing` assigned to `doing`, then
/// gets to review with `status:review` assigned to `review`. Its pull request.
async fn to_review(rig: &Rig, n: u64, id: &str, doing: &[&str], review: &[&str]) -> u64 {
    rig.until_status(id, "running").await;
    rig.issue_shows(n, "status:doing", doing).await;
    let t = rig.until_status(id, "review_pending").await;
    rig.issue_shows(n, "status:review", review).await;
    pr_of(&t)
}

/// Pull request `pr` of task `id` is merged: the task completes, the issue shows `status:done`
/// assigned to `done`.
async fn merge_to_done(rig: &Rig, n: u64, id: &str, pr: u64, done: &[&str]) {
    rig.forge.merge(REPO, pr).await;
    rig.until_status(id, "completed").await;
    rig.issue_shows(n, "status:done", done).await;
}

#[tokio::test]
async fn the_assignee_is_the_daemons_account_while_the_task_runs_then_the_reviewer() {
    let keys = format!("assignee = \"{BOT}\"\nreviewer = \"{BOB}\"");
    let rig = start(&keys, DeliveryMode::Normal).await;
    let (n, id) = rig
        .issue_task("Add a changelog", "Do it.\n\ndemo-agent: sleep 3\n")
        .await;
    let pr = to_review(&rig, n, &id, &[BOT], &[BOB]).await;
    merge_to_done(&rig, n, &id, pr, &[BOB]).await;
    // The receipt comment links the pull request and the commits on this forge.
    let commit_url = format!("{}/{REPO}/commit/", rig.forge.url());
    let receipt = rig
        .poll(Duration::from_millis(50), async || {
            let comments = rig.forge.comments(REPO, n);
            let receipt = comments.iter().find(|c| c.body.contains("✅"));
            receipt
                .map(|c| c.body.clone())
                .ok_or_else(|| format!("no receipt comment: {comments:#?}"))
        })
        .await;
    assert!(receipt.contains(&commit_url), "{receipt}");
    assert!(receipt.contains(&format!("/pulls/{pr})")), "{receipt}");
    rig.assert_honest();
}

#[tokio::test]
async fn a_persons_own_assignment_is_left_alone() {
    let keys = format!("assignee = \"{BOT}\"\nreviewer = \"{BOB}\"");
    let rig = start(&keys, DeliveryMode::Normal).await;
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
    let pr = to_review(&rig, n, &id, &[ALICE], &[ALICE]).await;
    merge_to_done(&rig, n, &id, pr, &[ALICE]).await;
    let edits: Vec<_> = rig
        .forge
        .requests()
        .into_iter()
        .filter(|(m, p)| m == "PATCH" && *p == format!("/api/v1/repos/{REPO}/issues/{n}"))
        .collect();
    assert!(edits.is_empty(), "the issue was edited: {edits:#?}");
    rig.assert_honest();
}

#[tokio::test]
async fn a_redelivered_issue_event_makes_no_forge_request() {
    let rig = start("", DeliveryMode::Duplicate).await;
    // Not triggered: the delivery is read from the forge, decided (ignored) and recorded.
    let n = rig
        .forge
        .open_issue(REPO, "Just a question", "No label.", &[])
        .await;
    rig.forge.flush().await;
    let issue_path = format!("/api/v1/repos/{REPO}/issues/{n}");
    let deliveries = rig
        .poll(Duration::from_millis(50), async || {
            let d: Vec<_> = rig
                .forge
                .deliveries()
                .into_iter()
                .filter(|d| d.event == "issues")
                .collect();
            if d.len() == 2 {
                Ok(d)
            } else {
                Err(format!("deliveries: {d:#?}"))
            }
        })
        .await;
    assert_eq!(deliveries[0].delivery_id, deliveries[1].delivery_id);
    for d in &deliveries {
        assert_eq!(d.outcome, Outcome::Answered(200), "{d:#?}");
    }
    let reads = rig
        .forge
        .requests()
        .into_iter()
        .filter(|(m, p)| m == "GET" && *p == issue_path)
        .count();
    assert_eq!(
        reads, 1,
        "GET {issue_path}, once for the first delivery only"
    );
    rig.assert_honest();
}

#[tokio::test]
async fn a_reviewer_the_forge_refuses_is_left_out_and_the_task_goes_on() {
    // Forgejo refuses to assign a login that is no user (500, nothing changed).
    let keys = format!("assignee = \"{BOT}\"\nreviewer = \"nobody-by-that-name\"");
    let rig = start(&keys, DeliveryMode::Normal).await;
    let (n, id) = rig.issue_task("Add a readme", "Do it.").await;
    let t = rig.until_status(&id, "review_pending").await;
    // The daemon's account is unassigned all the same, and the labels follow.
    rig.issue_shows(n, "status:review", &[]).await;
    let refused = rig
        .forge
        .requests()
        .iter()
        .any(|(m, p)| m == "GET" && *p == format!("/api/v1/repos/{REPO}/assignees"));
    assert!(refused, "the forge was not asked who can be assigned");
    assert!(
        rig.fleet
            .log()
            .contains("nobody-by-that-name cannot be assigned"),
        "no warning naming the login:\n{}",
        rig.fleet.log()
    );
    merge_to_done(&rig, n, &id, pr_of(&t), &[]).await;
    rig.assert_honest();
}

#[tokio::test]
async fn the_fake_forge_assigns_like_forgejo_and_refuses_an_unknown_user_with_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let (forge, _) = forge_with_widgets(dir.path()).await;
    let n = forge.open_issue(REPO, "Anything", "", &[]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/repos/{REPO}/issues/{n}", forge.url());
    let edit = |body: Value| {
        http.patch(&url)
            .header("Authorization", format!("token {FORGE_TOKEN}"))
            .json(&body)
            .send()
    };
    let r = edit(serde_json::json!({"assignees": [BOB, BOT]}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let issue: Value = r.json().await.unwrap();
    assert_eq!(issue["assignee"]["login"], BOB);
    assert_eq!(issue["assignees"][1]["login"], BOT);
    // No such user: 500 with the message hidden, nothing changed.
    let r = edit(serde_json::json!({"assignees": ["nobody-by-that-name"]}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    assert_eq!(forge.issue_assignees(REPO, n), [BOB, BOT]);
    // A user without write access cannot be assigned either.
    forge.set_permission(REPO, "carol", "read").await;
    let r = edit(serde_json::json!({"assignees": ["carol"]}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    // `[]` clears them; only writers are listed as assignable.
    let r = edit(serde_json::json!({"assignees": []})).await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert!(r.json::<Value>().await.unwrap()["assignees"].is_null());
    let assignable: Value = http
        .get(format!("{}/api/v1/repos/{REPO}/assignees", forge.url()))
        .header("Authorization", format!("token {FORGE_TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let logins: Vec<&str> = assignable
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["login"].as_str())
        .collect();
    assert!(
        logins.contains(&BOB) && !logins.contains(&"carol"),
        "{logins:?}"
    );
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
}
