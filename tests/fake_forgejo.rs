//! Tests of the fake Forgejo itself (`tests/support/forgejo.rs`): each one behaviour where the
//! fake must fail (or answer) the way real Forgejo does.

#[path = "support/forgejo.rs"]
mod forgejo;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use forgejo::{DeliveryMode, FakeForgejo, Outcome};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const TOKEN: &str = "fake-forgejo-test-token";
const SECRET: &str = "webhook-secret-for-tests";
const REPO: &str = "acme/widgets";
const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/reference/forgejo/webhooks"
);

/// What a webhook receiver got: (headers, raw body).
type Received = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A webhook receiver on the test's runtime; its URL and what it received.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| async move {
            sink.lock()
                .unwrap()
                .push((headers, String::from_utf8_lossy(&body).into_owned()));
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

async fn setup(dir: &Path) -> (FakeForgejo, Received) {
    let fake = FakeForgejo::start(dir, TOKEN);
    fake.create_repo("acme", "widgets").await;
    let (url, got) = receiver().await;
    fake.set_webhook(&url, SECRET);
    (fake, got)
}

fn api(fake: &FakeForgejo, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, format!("{}/api/v1{path}", fake.url()))
        .header("Authorization", format!("token {TOKEN}"))
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=agent-bot",
            "-c",
            "user.email=agent-bot@example.com",
            "-C",
        ])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// Clones the repository, commits `file` on `branch` and pushes it (as an agent would).
fn push_branch(fake: &FakeForgejo, dir: &Path, branch: &str, file: &str) {
    let clone_url = fake_clone_url(fake, dir);
    let work = dir.join(format!("work-{}", branch.replace('/', "-")));
    if !work.exists() {
        git(
            dir,
            &["clone", "--quiet", &clone_url, work.to_str().unwrap()],
        );
        git(&work, &["checkout", "--quiet", "-b", branch]);
    }
    std::fs::write(work.join(file), format!("{file}\n")).unwrap();
    git(&work, &["add", file]);
    git(&work, &["commit", "--quiet", "-m", &format!("Add {file}")]);
    git(&work, &["push", "--quiet", "origin", branch]);
}

fn fake_clone_url(_fake: &FakeForgejo, dir: &Path) -> String {
    dir.join("forge/acme/widgets.git").display().to_string()
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn create_pull(fake: &FakeForgejo, head: &str) -> reqwest::Response {
    api(fake, reqwest::Method::POST, "/repos/acme/widgets/pulls")
        .json(&json!({"head": head, "base": "main", "title": "Task", "body": "Closes #1"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn unknown_path_is_404_and_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _) = setup(dir.path()).await;
    let resp = api(
        &fake,
        reqwest::Method::GET,
        "/repos/acme/widgets/no-such-thing",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "The target couldn't be found.");
    let violations = fake.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("/no-such-thing"), "{violations:?}");
}

#[tokio::test]
async fn create_pull_without_head_is_422_and_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _) = setup(dir.path()).await;
    let resp = api(&fake, reqwest::Method::POST, "/repos/acme/widgets/pulls")
        .json(&json!({"base": "main", "title": "No head"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let violations = fake.violations();
    assert!(
        violations.iter().any(|v| v.contains("[head]: Required")),
        "{violations:?}"
    );
}

#[tokio::test]
async fn string_for_an_integer_label_id_is_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _) = setup(dir.path()).await;
    let resp = api(&fake, reqwest::Method::POST, "/repos/acme/widgets/pulls")
        .json(&json!({"head": "task/1", "base": "main", "title": "T", "labels": ["agent:ready"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let violations = fake.violations();
    assert!(
        violations.iter().any(|v| v.contains("body.labels[0]")),
        "{violations:?}"
    );
}

#[tokio::test]
async fn request_without_token_is_401_and_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _) = setup(dir.path()).await;
    let resp = reqwest::get(format!("{}/api/v1/repos/acme/widgets", fake.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(fake.violations().len(), 1);
    let bearer = reqwest::Client::new()
        .get(format!("{}/api/v1/repos/acme/widgets", fake.url()))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200, "bearer is accepted too");
    assert_eq!(fake.violations().len(), 1);
}

#[tokio::test]
async fn duplicate_pull_request_is_409() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _) = setup(dir.path()).await;
    push_branch(&fake, dir.path(), "task/1", "one.txt");
    let first = create_pull(&fake, "task/1").await;
    assert_eq!(first.status(), 201);
    let pr: Value = first.json().await.unwrap();
    assert_eq!(pr["head"]["ref"], "task/1");
    assert_eq!(pr["base"]["ref"], "main");
    let second = create_pull(&fake, "task/1").await;
    assert_eq!(second.status(), 409);
    let missing = create_pull(&fake, "task/none").await;
    assert_eq!(missing.status(), 404, "a head branch that does not exist");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn label_change_sends_issue_label_with_the_full_set_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, got) = setup(dir.path()).await;
    let n = fake
        .open_issue(REPO, "Do it", "Please", &["agent:task"])
        .await;
    fake.set_issue_labels(REPO, n, &["agent:task", "agent:ready"])
        .await;
    fake.flush().await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "opened + label_updated");
    let (headers, body) = &got[1];
    assert_eq!(header(headers, "X-Forgejo-Event"), "issues");
    assert_eq!(header(headers, "X-Forgejo-Event-Type"), "issue_label");
    assert_eq!(
        header(headers, "X-Forgejo-Signature"),
        hmac_hex(SECRET, body.as_bytes())
    );
    assert_eq!(
        header(headers, "X-Hub-Signature-256"),
        format!("sha256={}", hmac_hex(SECRET, body.as_bytes()))
    );
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["action"], "label_updated");
    let names: Vec<&str> = payload["issue"]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["agent:task", "agent:ready"]);
    assert!(
        !body.contains("forge.example.com"),
        "every reference URL is replaced"
    );
    assert!(
        !body.ends_with('\n') && body.contains("\n  \"action\""),
        "2-space indent, no trailing newline"
    );
}

#[tokio::test]
async fn api_label_change_sends_issue_label_too() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, got) = setup(dir.path()).await;
    let n = fake
        .open_issue(REPO, "Do it", "Please", &["agent:ready"])
        .await;
    let resp = api(
        &fake,
        reqwest::Method::PUT,
        &format!("/repos/acme/widgets/issues/{n}/labels"),
    )
    .json(&json!({"labels": []}))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    fake.flush().await;
    let got = got.lock().unwrap().clone();
    let payload: Value = serde_json::from_str(&got[1].1).unwrap();
    assert_eq!(payload["action"], "label_cleared");
    assert_eq!(payload["sender"]["login"], "agent-bot");
    assert!(fake.issue_labels(REPO, n).is_empty());
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn duplicate_mode_sends_each_delivery_twice_with_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, got) = setup(dir.path()).await;
    fake.set_delivery(DeliveryMode::Duplicate).await;
    fake.open_issue(REPO, "Twice", "", &[]).await;
    fake.flush().await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, got[1].1);
    let id = header(&got[0].0, "X-Forgejo-Delivery");
    assert!(!id.is_empty());
    assert_eq!(id, header(&got[1].0, "X-Forgejo-Delivery"));
    let records = fake.deliveries();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r.outcome == Outcome::Answered(200) && r.delivery_id == id)
    );
}

#[tokio::test]
async fn drop_mode_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, got) = setup(dir.path()).await;
    fake.set_delivery(DeliveryMode::Drop).await;
    fake.open_issue(REPO, "Lost", "", &["agent:ready"]).await;
    fake.flush().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(got.lock().unwrap().is_empty());
    assert_eq!(fake.deliveries()[0].outcome, Outcome::Dropped);
}

#[tokio::test]
async fn merge_puts_the_head_commits_on_base_and_sends_closed_merged() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, got) = setup(dir.path()).await;
    let issue = fake.open_issue(REPO, "Task", "", &[]).await;
    push_branch(&fake, dir.path(), "task/1", "one.txt");
    let pr: Value = create_pull(&fake, "task/1").await.json().await.unwrap();
    let number = pr["number"].as_u64().unwrap();
    assert_eq!(number, issue + 1, "pull requests share the issues' numbers");
    let head = pr["head"]["sha"].as_str().unwrap().to_string();
    fake.merge(REPO, number).await;
    let bare = Path::new(&fake_clone_url(&fake, dir.path())).to_path_buf();
    let contained = Command::new("git")
        .arg("-C")
        .arg(&bare)
        .args(["merge-base", "--is-ancestor", &head, "refs/heads/main"])
        .status()
        .unwrap();
    assert!(contained.success(), "main contains the head commit");
    let info = fake.pull(REPO, number).unwrap();
    assert!(info.merged && !info.open);
    assert_eq!(
        fake.issue_is_open(REPO, issue),
        Some(false),
        "`Closes #1` closes the issue"
    );
    fake.flush().await;
    let got = got.lock().unwrap().clone();
    let merged = got
        .iter()
        .map(|(h, b)| {
            (
                header(h, "X-Forgejo-Event-Type").to_string(),
                serde_json::from_str::<Value>(b).unwrap(),
            )
        })
        .find(|(t, p)| t == "pull_request" && p["action"] == "closed")
        .expect("a closed pull_request webhook");
    assert_eq!(merged.1["pull_request"]["merged"], true);
    assert_eq!(
        merged.1["pull_request"]["merge_commit_sha"],
        json!(info.merge_commit)
    );
    let commits: Value = api(
        &fake,
        reqwest::Method::GET,
        &format!("/repos/acme/widgets/pulls/{number}/commits"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        commits.as_array().unwrap().len(),
        1,
        "a merged PR keeps its commits"
    );
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn push_sends_a_push_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, got) = setup(dir.path()).await;
    push_branch(&fake, dir.path(), "task/7", "seven.txt");
    for _ in 0..50 {
        if fake.deliveries().iter().any(|d| d.event_type == "push") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.flush().await;
    let got = got.lock().unwrap().clone();
    let (_, body) = got
        .iter()
        .find(|(h, _)| header(h, "X-Forgejo-Event") == "push")
        .expect("a push webhook");
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["ref"], "refs/heads/task/7");
    assert_eq!(payload["total_commits"], 1);
}

#[tokio::test]
async fn issues_paginate_at_most_50_with_total_count() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _) = setup(dir.path()).await;
    for i in 0..60 {
        fake.open_issue(REPO, &format!("Issue {i}"), "", &["agent:ready"])
            .await;
    }
    let page = |p: u32| {
        api(
            &fake,
            reqwest::Method::GET,
            &format!(
                "/repos/acme/widgets/issues?state=open&type=issues&labels=agent:ready&page={p}&limit=100"
            ),
        )
    };
    let first = page(1).send().await.unwrap();
    assert_eq!(first.headers()["X-Total-Count"], "60");
    let link = first.headers()["Link"].to_str().unwrap().to_string();
    assert!(
        link.contains("page=2") && link.contains("rel=\"next\""),
        "{link}"
    );
    assert_eq!(first.json::<Vec<Value>>().await.unwrap().len(), 50);
    let second: Vec<Value> = page(2).send().await.unwrap().json().await.unwrap();
    assert_eq!(second.len(), 10);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn reference_payloads_verify_with_the_secret() {
    let mut checked = 0;
    for entry in std::fs::read_dir(REFERENCE).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "headers") {
            continue;
        }
        let headers = std::fs::read_to_string(&path).unwrap();
        let signature = headers
            .lines()
            .find_map(|l| l.strip_prefix("X-Forgejo-Signature: "))
            .expect("an X-Forgejo-Signature line");
        let body = std::fs::read(path.with_extension("json")).unwrap();
        assert_eq!(
            hmac_hex(SECRET, &body),
            signature.trim(),
            "{}",
            path.display()
        );
        checked += 1;
    }
    assert_eq!(checked, 11);
}
