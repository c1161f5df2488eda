//! `POST /api/v1/webhooks/forgejo` on a real daemon, fed the reference deliveries (real HMAC
//! signatures over the exact bytes, secret `webhook-secret-for-tests`): what is accepted, what is
//! refused and why, and that a redelivery changes nothing.

#[path = "support/forge_rig.rs"]
mod forge_rig;

use forge_rig::daemon::Fleet;
use forge_rig::{Delivery, Options};
use serde_json::Value;

/// A daemon whose forge is nowhere (`base_url` refuses connections): issues labelled
/// `agent:task` go to an agent kind no host offers, so their tasks wait (nothing is cloned).
async fn fleet() -> Fleet {
    Fleet::start(forge_rig::setup(
        "http://127.0.0.1:9",
        Options::deliveries_only("agent:task"),
    ))
    .await
}

const ALL: &[&str] = &[
    "issues-opened",
    "issues-labeled",
    "issues-unlabeled",
    "issue_comment-created",
    "issue_comment-created-on-pr",
    "pull_request-opened",
    "pull_request-closed-merged",
    "pull_request_review-approved",
    "pull_request_review-rejected",
    "pull_request_review-comment",
    "push-task-branch",
];

#[tokio::test]
async fn every_reference_delivery_is_accepted() {
    let fleet = fleet().await;
    for name in ALL {
        let (status, answer) = Delivery::reference(name).send(&fleet).await;
        assert_eq!(status, 200, "{name}: {answer}");
    }
}

#[tokio::test]
async fn a_one_byte_change_is_refused_with_401() {
    let fleet = fleet().await;
    let mut d = Delivery::reference("issues-opened");
    let i = d.body.iter().position(|b| *b == b'1').unwrap();
    d.body[i] = b'2';
    let (status, answer) = d.send(&fleet).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_signature");
}

#[tokio::test]
async fn the_gitea_headers_alone_are_accepted() {
    let fleet = fleet().await;
    let d = Delivery::reference("issues-opened").without(|k| k.starts_with("X-Forgejo-"));
    let (status, answer) = d.send(&fleet).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_delivery_without_signature_is_refused_with_401() {
    let fleet = fleet().await;
    let d = Delivery::reference("issues-opened").without(|k| k.ends_with("-Signature"));
    let (status, _) = d.send(&fleet).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_redelivered_issue_makes_one_task() {
    let fleet = fleet().await;
    let d = Delivery::reference("issues-opened");
    let (_, first) = d.send(&fleet).await;
    let (status, again) = d.send(&fleet).await;
    assert_eq!(status, 200, "{again}");
    assert!(
        first["outcome"].as_str().unwrap().contains("created"),
        "{first}"
    );
    let (_, list) = fleet.get("/tasks").await;
    let tasks = list["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{list}");
    assert_eq!(tasks[0]["source"], "acme/widgets#42");
}

#[tokio::test]
async fn an_unknown_event_is_acknowledged_and_ignored() {
    let fleet = fleet().await;
    let mut d = Delivery::reference("issues-opened");
    for (k, v) in &mut d.headers {
        if k.ends_with("-Event-Type") {
            *v = "wiki".to_string();
        }
    }
    let (status, answer) = d.send(&fleet).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["outcome"].as_str().unwrap().starts_with("ignored"));
    let (_, list) = fleet.get("/tasks").await;
    assert!(list["tasks"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_delivery_without_event_type_is_refused_with_400() {
    let fleet = fleet().await;
    let d = Delivery::reference("issues-opened").without(|k| k.ends_with("-Event-Type"));
    let (status, answer) = d.send(&fleet).await;
    assert_eq!(status, 400, "{answer}");
}

/// `name`'s reference delivery with its Forgejo headers only, under a delivery id of its own,
/// its body changed by `edit` and signed again.
fn edited(name: &str, delivery_id: &str, edit: impl FnOnce(&mut Value)) -> Delivery {
    Delivery::reference(name)
        .without(|k| !(k.starts_with("X-Forgejo-") || k == "Content-Type"))
        .with_id(delivery_id)
        .edited(edit)
}

#[tokio::test]
async fn pushes_and_pull_requests_find_a_task_by_this_stores_branch_and_by_no_other() {
    let fleet = fleet().await;
    let (status, created) = Delivery::reference("issues-opened").send(&fleet).await;
    assert_eq!(status, 200, "{created}");
    let (_, list) = fleet.get("/tasks").await;
    let id = list["tasks"][0]["id"].as_str().unwrap().to_string();
    let branch = fleet.branch(&id).await;
    let other_store = if branch.ends_with("-aaaaaa") {
        "bbbbbb"
    } else {
        "aaaaaa"
    };
    let cases = [
        (branch.clone(), true),
        (format!("task/{id}"), false),
        (format!("task/{id}-{other_store}"), false),
    ];
    for (n, (head, ours)) in cases.into_iter().enumerate() {
        let push = edited("push-task-branch", &format!("push-{n}"), |b| {
            b["ref"] = format!("refs/heads/{head}").into();
        });
        let pull = edited("pull_request-opened", &format!("pull-{n}"), |b| {
            b["pull_request"]["head"]["ref"] = head.clone().into();
            b["pull_request"]["head"]["label"] = head.clone().into();
        });
        for (what, d) in [("push", push), ("pull request", pull)] {
            let (status, answer) = d.send(&fleet).await;
            assert_eq!(status, 200, "{what} on {head}: {answer}");
            let outcome = answer["outcome"].as_str().unwrap_or_default();
            if ours {
                assert_eq!(outcome, format!("task {id} signalled"), "{what} on {head}");
            } else {
                assert!(outcome.starts_with("ignored"), "{what} on {head}: {answer}");
            }
        }
    }
}
