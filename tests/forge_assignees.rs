//! What the daemon keeps in step on a forge issue besides its labels, end to end (a real daemon,
//! the demo agent on a local host, the fake Forgejo): the issue's ASSIGNEES follow the task
//! (`forgejo.assignee` while it runs, `forgejo.reviewer` in review and once done) without ever
//! undoing a person's own assignment; and a redelivered issue event costs no forge request.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/forgejo.rs"]
mod forgejo;

use std::time::Duration;

use daemon::{Fleet, Setup, story};
use forgejo::{ALICE, BOB, BOT, DeliveryMode, FakeForgejo, Outcome};
use serde_json::Value;

const FORGE_TOKEN: &str = "assignees-forge-token-41c2";
const SECRET: &str = "assignees-webhook-secret-0b9e";
const REPO: &str = "acme/widgets";
const LONG: Duration = Duration::from_secs(90);

struct Rig {
    forge: FakeForgejo,
    fleet: Fleet,
}

impl Rig {
    /// The fake forge with acme/widgets, a daemon with one local host running the demo agent,
    /// `keys` added to its `[forgejo]`, and the forge's webhooks pointed at it.
    async fn start(keys: &str, delivery: DeliveryMode) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let forge = FakeForgejo::start(dir.path(), FORGE_TOKEN);
        forge.create_repo("acme", "widgets").await;
        forge.set_delivery(delivery).await;
        let extra = format!(
            r#"
[forgejo]
base_url = "{url}"
token_env = "ASSIGNEES_FORGE_TOKEN"
webhook_secret_env = "ASSIGNEES_FORGE_SECRET"
repos = ["{REPO}"]
reconcile_interval = "30s"
review_debounce = "300ms"
default_agent = "demo"
{keys}
"#,
            url = forge.url(),
        );
        let hosts = format!(
            "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"demo\"]\nmax_concurrent = 2\nwork_root = \"{}\"\n",
            dir.path().join("work").display()
        );
        let fleet = Fleet::start_in(
            dir,
            Setup {
                extra,
                hosts: Some(hosts),
                env: vec![
                    ("ASSIGNEES_FORGE_TOKEN", FORGE_TOKEN.to_string()),
                    ("ASSIGNEES_FORGE_SECRET", SECRET.to_string()),
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
        let deadline = std::time::Instant::now() + LONG;
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

    /// Waits until issue `n` carries the status label `label` and is assigned to `who`.
    async fn issue_shows(&self, n: u64, label: &str, who: &[&str]) {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let labels = self.forge.issue_labels(REPO, n);
            let assignees = self.forge.issue_assignees(REPO, n);
            if labels.iter().any(|l| l == label) && assignees == who {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "issue #{n} never showed {label} assigned to {who:?}: labels {labels:?}, \
                 assignees {assignees:?}; daemon log:\n{}",
                self.fleet.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn assert_honest(&self) {
        let violations = self.forge.violations();
        assert!(violations.is_empty(), "swagger violations: {violations:#?}");
    }
}

#[tokio::test]
async fn the_assignee_is_the_daemons_account_while_the_task_runs_then_the_reviewer() {
    let keys = format!("assignee = \"{BOT}\"\nreviewer = \"{BOB}\"");
    let rig = Rig::start(&keys, DeliveryMode::Normal).await;
    let n = rig
        .forge
        .open_issue(
            REPO,
            "Add a changelog",
            "Do it.\n\ndemo-agent: sleep 3\n",
            &["agent-fleet"],
        )
        .await;
    let id = rig.task_of(n).await;
    rig.until(&id, "ran", |t| t["status"] == "running").await;
    rig.issue_shows(n, "status:doing", &[BOT]).await;
    let t = rig
        .until(&id, "got to review", |t| t["status"] == "review_pending")
        .await;
    rig.issue_shows(n, "status:review", &[BOB]).await;
    let pr = t["pr_number"].as_u64().expect("a pull request");
    rig.forge.merge(REPO, pr).await;
    rig.until(&id, "completed", |t| t["status"] == "completed")
        .await;
    rig.issue_shows(n, "status:done", &[BOB]).await;
    // The receipt comment links the pull request and the commits on this forge.
    let commit_url = format!("{}/{REPO}/commit/", rig.forge.url());
    let deadline = std::time::Instant::now() + LONG;
    let receipt = loop {
        let comments = rig.forge.comments(REPO, n);
        if let Some(c) = comments.iter().find(|c| c.body.contains("✅")) {
            break c.body.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no receipt comment: {comments:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(receipt.contains(&commit_url), "{receipt}");
    assert!(receipt.contains(&format!("/pulls/{pr})")), "{receipt}");
    rig.assert_honest();
}

#[tokio::test]
async fn a_persons_own_assignment_is_left_alone() {
    let keys = format!("assignee = \"{BOT}\"\nreviewer = \"{BOB}\"");
    let rig = Rig::start(&keys, DeliveryMode::Normal).await;
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
    rig.until(&id, "ran", |t| t["status"] == "running").await;
    rig.issue_shows(n, "status:doing", &[ALICE]).await;
    let t = rig
        .until(&id, "got to review", |t| t["status"] == "review_pending")
        .await;
    rig.issue_shows(n, "status:review", &[ALICE]).await;
    let pr = t["pr_number"].as_u64().expect("a pull request");
    rig.forge.merge(REPO, pr).await;
    rig.until(&id, "completed", |t| t["status"] == "completed")
        .await;
    rig.issue_shows(n, "status:done", &[ALICE]).await;
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
    let rig = Rig::start("", DeliveryMode::Duplicate).await;
    // Not triggered: the delivery is read from the forge, decided (ignored) and recorded.
    let n = rig
        .forge
        .open_issue(REPO, "Just a question", "No label.", &[])
        .await;
    rig.forge.flush().await;
    let issue_path = format!("/api/v1/repos/{REPO}/issues/{n}");
    let deadline = std::time::Instant::now() + LONG;
    let deliveries = loop {
        let d: Vec<_> = rig
            .forge
            .deliveries()
            .into_iter()
            .filter(|d| d.event == "issues")
            .collect();
        if d.len() == 2 {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "deliveries: {d:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    let rig = Rig::start(&keys, DeliveryMode::Normal).await;
    let n = rig
        .forge
        .open_issue(REPO, "Add a readme", "Do it.", &["agent-fleet"])
        .await;
    let id = rig.task_of(n).await;
    let t = rig
        .until(&id, "got to review", |t| t["status"] == "review_pending")
        .await;
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
    let pr = t["pr_number"].as_u64().expect("a pull request");
    rig.forge.merge(REPO, pr).await;
    rig.until(&id, "completed", |t| t["status"] == "completed")
        .await;
    rig.issue_shows(n, "status:done", &[]).await;
    rig.assert_honest();
}

#[tokio::test]
async fn the_fake_forge_assigns_like_forgejo_and_refuses_an_unknown_user_with_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let forge = FakeForgejo::start(dir.path(), FORGE_TOKEN);
    forge.create_repo("acme", "widgets").await;
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
