//! Webhook deliveries replayed, reordered and forged against a real daemon and the fake Forgejo
//! (which answers the daemon's reads: the issue's current labels, the repository). The reference
//! payloads (`tests/fixtures/reference/forgejo/webhooks`, issue acme/widgets#42) are sent verbatim
//! with their own headers and signatures, or re-signed after a change.
//!
//! What must hold: a delivery id is acted on once, whatever happened to the issue since; a stale
//! or reordered label event never withdraws a task nor starts one the forge no longer asks for;
//! an issue from a webhook is checked like an API submission; a payload never chooses where a
//! task clones from; every refusal is the API's JSON error.

#[path = "support/forge_rig.rs"]
mod forge_rig;

use std::time::Duration;

use forge_rig::daemon::story;
use forge_rig::{Delivery, Options, REPO, Rig};
use serde_json::{Value, json};

/// The reference deliveries' issue.
const ISSUE: u64 = 42;
/// With trigger label `agent:ready`, `issues-labeled` (labels `agent:task`, `agent:ready`)
/// triggers the issue and `issues-unlabeled` (`agent:task` only) withdraws it.
const TRIGGERED: &[&str] = &["agent:task", "agent:ready"];
const UNTRIGGERED: &[&str] = &["agent:task"];
/// The outcome of a delivery whose id was handled before.
const DUPLICATE: &str = "delivery handled before: nothing done";

/// The fake forge with acme/widgets and its issues #1..=`issues` (the last ones labelled
/// `TRIGGERED`), and a daemon whose `base_url` is the fake. No webhook target is set: the test
/// sends every delivery itself. `repos` is empty, so reconciliation lists nothing.
async fn start(issues: u64) -> Rig {
    Rig::start(Options {
        issues: (1..=issues)
            .map(|n| if n >= ISSUE { TRIGGERED } else { &[] })
            .collect(),
        ..Options::deliveries_only("agent:ready")
    })
    .await
}

impl Rig {
    async fn labels(&self, labels: &[&str]) {
        self.forge.set_issue_labels(REPO, ISSUE, labels).await;
    }

    /// The forge shows the trigger and `labeled` is sent: its outcome, and the only task there is.
    async fn trigger(&self, labeled: &Delivery) -> (String, String) {
        self.labels(TRIGGERED).await;
        let outcome = self.send_ok(labeled).await;
        (outcome, self.only_task().await)
    }

    /// The forge shows the trigger gone and `unlabeled` is sent: task `id` is cancelled.
    async fn withdraw(&self, id: &str, unlabeled: &Delivery) {
        self.labels(UNTRIGGERED).await;
        self.send_ok(unlabeled).await;
        self.fleet
            .wait_status(id, "cancelled", Duration::from_secs(20))
            .await;
    }

    /// The only task there is.
    async fn only_task(&self) -> String {
        let tasks = self.tasks().await;
        assert_eq!(tasks.len(), 1, "{tasks:#?}");
        tasks[0]["id"].as_str().unwrap().to_string()
    }
}

// ---- point 3: a delivery id is acted on once; stale events never withdraw -------------------

/// labeled → unlabeled → the first labeled delivery again (same id): no second task.
#[tokio::test]
async fn a_labeled_delivery_replayed_after_unlabeling_starts_no_second_task() {
    let rig = start(ISSUE).await;
    let labeled = Delivery::reference("issues-labeled");
    let unlabeled = Delivery::reference("issues-unlabeled");

    let (outcome, first) = rig.trigger(&labeled).await;
    assert!(outcome.contains("created"), "{outcome}");
    rig.withdraw(&first, &unlabeled).await;

    // Forgejo's "redeliver" (or a proxy's retry): the very same delivery, later.
    let outcome = rig.send_ok(&labeled).await;
    assert_eq!(outcome, DUPLICATE);
    let tasks = rig.tasks().await;
    assert_eq!(
        tasks.len(),
        1,
        "a replayed delivery started a task: {tasks:#?}"
    );
    // Even with the trigger back on the forge, the old delivery stays a no-op.
    rig.labels(TRIGGERED).await;
    let outcome = rig.send_ok(&labeled).await;
    assert_eq!(outcome, DUPLICATE);
    assert_eq!(rig.tasks().await.len(), 1);
    assert!(
        rig.forge.violations().is_empty(),
        "{:?}",
        rig.forge.violations()
    );
}

/// labeled → unlabeled → labeled (new id: a new task) → the old unlabeled delivery again: the
/// newer task is not touched.
#[tokio::test]
async fn an_unlabeled_delivery_replayed_never_cancels_the_newer_task() {
    let rig = start(ISSUE).await;
    let labeled = Delivery::reference("issues-labeled");
    let unlabeled = Delivery::reference("issues-unlabeled");

    let (_, first) = rig.trigger(&labeled).await;
    rig.withdraw(&first, &unlabeled).await;

    rig.labels(TRIGGERED).await;
    let relabeled = labeled
        .clone()
        .with_id("6f1c2a52-3b8e-4d0f-9a7c-1e2d3f4a5b99");
    assert_ne!(relabeled.id(), labeled.id());
    let outcome = rig.send_ok(&relabeled).await;
    assert!(outcome.contains("created"), "{outcome}");
    let tasks = rig.tasks().await;
    assert_eq!(tasks.len(), 2, "{tasks:#?}");
    let second = tasks[1]["id"].as_str().unwrap().to_string();
    assert_ne!(second, first);

    // The issue changes on the forge (still triggered): only the delivery id tells the old
    // delivery from news.
    rig.labels(&["agent:ready"]).await;
    let outcome = rig.send_ok(&unlabeled).await;
    assert_eq!(outcome, DUPLICATE);
    rig.stays(&second, "created").await;
    let task = rig.fleet.task(&second).await;
    assert_eq!(task["labels"], json!(TRIGGERED), "{}", story(&task));
    assert_eq!(rig.tasks().await.len(), 2);
}

/// An unlabeled event that arrives late with its own, new id (the label was removed and added
/// back; the events crossed): the forge shows the trigger, the task stays.
#[tokio::test]
async fn a_stale_unlabeled_event_never_withdraws_the_task() {
    let rig = start(ISSUE).await;
    let (_, id) = rig.trigger(&Delivery::reference("issues-labeled")).await;

    let late = Delivery::reference("issues-unlabeled").with_id("late-unlabeled-1");
    rig.send_ok(&late).await;
    rig.stays(&id, "created").await;

    // Once the forge really shows the trigger gone, a (new) event withdraws it.
    let real = Delivery::reference("issues-unlabeled").with_id("real-unlabeled-2");
    rig.withdraw(&id, &real).await;
}

/// A labeled event that arrives after the trigger was removed on the forge starts nothing.
#[tokio::test]
async fn a_stale_labeled_event_starts_no_task_the_forge_no_longer_asks_for() {
    let rig = start(ISSUE).await;
    rig.labels(UNTRIGGERED).await;
    let outcome = rig.send_ok(&Delivery::reference("issues-labeled")).await;
    assert!(!outcome.contains("created"), "{outcome}");
    assert!(rig.tasks().await.is_empty());
}

// ---- point 4: webhook issues are checked like API submissions -------------------------------

/// A 200 KB title and issue number 0 are refused like the API refuses them (422, JSON error).
#[tokio::test]
async fn a_webhook_issue_is_checked_like_an_api_submission() {
    let rig = start(ISSUE).await;
    let long = "t".repeat(200 * 1024);

    let (status, api) = rig
        .fleet
        .post("/tasks", json!({ "title": long.clone() }))
        .await;
    assert_eq!(status, 422, "{api}");

    let huge = Delivery::reference("issues-labeled")
        .with_id("huge-title")
        .edited(|p| p["issue"]["title"] = json!(long.clone()));
    let (status, answer) = huge.send(&rig.fleet).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], api["error"]["code"], "{answer}");
    assert_eq!(
        answer["error"]["message"], api["error"]["message"],
        "{answer}"
    );

    let zero = Delivery::reference("issues-labeled")
        .with_id("issue-zero")
        .edited(|p| {
            p["issue"]["number"] = json!(0);
        });
    let (status, answer) = zero.send(&rig.fleet).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"]["message"].is_string(), "{answer}");

    let blank = Delivery::reference("issues-labeled")
        .with_id("blank-title")
        .edited(|p| p["issue"]["title"] = json!("   "));
    let (status, answer) = blank.send(&rig.fleet).await;
    assert_eq!(status, 422, "{answer}");

    assert!(rig.tasks().await.is_empty(), "{:#?}", rig.tasks().await);
}

/// Whatever `clone_url` a payload names, a task clones from the configured forge: a URL off the
/// forge (or not a URL at all) is never used; one on the forge is.
#[tokio::test]
async fn a_payloads_clone_url_off_the_forge_is_never_used() {
    let rig = start(ISSUE + 3).await;
    let hostile = [
        "::::",
        "https://evil.example/acme/widgets.git",
        "file:///etc",
    ];
    for (i, url) in hostile.iter().enumerate() {
        let n = ISSUE + i as u64;
        let d = Delivery::reference("issues-labeled")
            .with_id(&format!("hostile-{i}"))
            .edited(|p| {
                p["issue"]["number"] = json!(n);
                p["repository"]["clone_url"] = json!(url);
            });
        let (status, answer) = d.send(&rig.fleet).await;
        assert!(status == 200 || status == 422, "{url}: {status} {answer}");
    }
    let on_forge = format!("{}/acme/widgets.git", rig.forge.url());
    let d = Delivery::reference("issues-labeled")
        .with_id("on-forge")
        .edited(|p| {
            p["issue"]["number"] = json!(ISSUE + 3);
            p["repository"]["clone_url"] = json!(on_forge.clone());
        });
    let outcome = rig.send_ok(&d).await;
    assert!(outcome.contains("created"), "{outcome}");

    let tasks = rig.tasks().await;
    for t in &tasks {
        let repo = t["repo"].as_str().unwrap();
        assert!(
            repo == rig.repo.clone_url || repo == on_forge,
            "task {} clones from {repo}",
            t["id"]
        );
    }
    assert!(tasks.iter().any(|t| t["repo"] == on_forge.as_str()));
}

/// A delivery id with a control character (a tab, a C0 control, DEL; bytes outside ASCII; one too
/// long to be a key) is refused with the API's JSON error, never an empty 400.
#[tokio::test]
async fn a_control_character_in_the_delivery_id_is_a_json_error() {
    let rig = start(1).await;
    let long = "d".repeat(300);
    let bad: [&[u8]; 7] = [
        b"abc\tdef",
        b"abc\x01def",
        b"abc\x1bdef",
        b"abc\x7fdef",
        b"abc\x80def",
        "caf\u{e9}".as_bytes(),
        long.as_bytes(),
    ];
    for value in bad {
        let (status, body) = raw_post(&rig, &Delivery::reference("issues-labeled"), value).await;
        assert_eq!(status, 400, "{value:?}: {body}");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{value:?}: not JSON ({e}): {body:?}"));
        assert_eq!(v["error"]["code"], "bad_request", "{value:?}: {body}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("delivery")),
            "{body}"
        );
    }
    assert!(rig.tasks().await.is_empty());
}

/// POSTs `d` over a raw connection with `delivery` as the delivery id's bytes (which no HTTP
/// client library would send): the status and the body.
async fn raw_post(rig: &Rig, d: &Delivery, delivery: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let addr = rig.fleet.url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut head =
        format!("POST /api/v1/webhooks/forgejo HTTP/1.1\r\nHost: {addr}\r\n").into_bytes();
    for (k, v) in &d.headers {
        head.extend_from_slice(format!("{k}: ").as_bytes());
        if k.ends_with("-Delivery") {
            head.extend_from_slice(delivery);
        } else {
            head.extend_from_slice(v.as_bytes());
        }
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            d.body.len()
        )
        .as_bytes(),
    );
    stream.write_all(&head).await.unwrap();
    stream.write_all(&d.body).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, dechunk(body))
}

/// The body of a `Transfer-Encoding: chunked` answer (or the body itself when not chunked).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_string();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}
