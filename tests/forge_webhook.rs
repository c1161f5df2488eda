//! `POST /api/v1/webhooks/forgejo` on a real daemon, fed the reference deliveries (real HMAC
//! signatures over the exact bytes, secret `webhook-secret-for-tests`): what is accepted, what is
//! refused and why, and that a redelivery changes nothing.

#[path = "support/daemon.rs"]
mod daemon;

use daemon::{Fleet, Setup};
use serde_json::Value;

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/reference/forgejo/webhooks"
);

async fn fleet() -> Fleet {
    Fleet::start(Setup {
        // `remote`: no host offers it, so the issue's task waits (nothing is cloned).
        extra: r#"
[forgejo]
base_url = "http://127.0.0.1:9"
token_env = "E2E_FORGE_TOKEN"
webhook_secret_env = "E2E_FORGE_SECRET"
trigger_label = "agent:task"
default_agent = "remote"

[[agents]]
name = "remote"
cli_template = "remote {prompt_file}"
output_format = "raw"
"#
        .to_string(),
        env: vec![
            ("E2E_FORGE_TOKEN", "unused".to_string()),
            ("E2E_FORGE_SECRET", "webhook-secret-for-tests".to_string()),
        ],
        // Pull agents may register: the kind no host offers is theirs.
        server: "registration_token_env = \"E2E_FLEET_REGISTRATION_TOKEN\"".into(),
        ..Setup::default()
    })
    .await
}

/// A reference delivery: its headers (name, value) and its exact body.
fn delivery(name: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let headers = std::fs::read_to_string(format!("{REFERENCE}/{name}.headers")).unwrap();
    let headers = headers
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (
        headers,
        std::fs::read(format!("{REFERENCE}/{name}.json")).unwrap(),
    )
}

async fn send(fleet: &Fleet, headers: &[(String, String)], body: Vec<u8>) -> (u16, Value) {
    let mut req = fleet.http.post(fleet.api("/webhooks/forgejo"));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let r = req.body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn without(headers: &[(String, String)], prefix: &str) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| !k.starts_with(prefix))
        .cloned()
        .collect()
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
        let (headers, body) = delivery(name);
        let (status, answer) = send(&fleet, &headers, body).await;
        assert_eq!(status, 200, "{name}: {answer}");
    }
}

#[tokio::test]
async fn a_one_byte_change_is_refused_with_401() {
    let fleet = fleet().await;
    let (headers, mut body) = delivery("issues-opened");
    let i = body.iter().position(|b| *b == b'1').unwrap();
    body[i] = b'2';
    let (status, answer) = send(&fleet, &headers, body).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_signature");
}

#[tokio::test]
async fn the_gitea_headers_alone_are_accepted() {
    let fleet = fleet().await;
    let (headers, body) = delivery("issues-opened");
    let (status, answer) = send(&fleet, &without(&headers, "X-Forgejo-"), body).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_delivery_without_signature_is_refused_with_401() {
    let fleet = fleet().await;
    let (headers, body) = delivery("issues-opened");
    let headers: Vec<_> = headers
        .into_iter()
        .filter(|(k, _)| !k.ends_with("-Signature"))
        .collect();
    let (status, _) = send(&fleet, &headers, body).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_redelivered_issue_makes_one_task() {
    let fleet = fleet().await;
    let (headers, body) = delivery("issues-opened");
    let (_, first) = send(&fleet, &headers, body.clone()).await;
    let (status, again) = send(&fleet, &headers, body).await;
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
    let (headers, body) = delivery("issues-opened");
    let headers: Vec<_> = headers
        .into_iter()
        .map(|(k, v)| {
            if k.ends_with("-Event-Type") {
                (k, "wiki".to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    let (status, answer) = send(&fleet, &headers, body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["outcome"].as_str().unwrap().starts_with("ignored"));
    let (_, list) = fleet.get("/tasks").await;
    assert!(list["tasks"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_delivery_without_event_type_is_refused_with_400() {
    let fleet = fleet().await;
    let (headers, body) = delivery("issues-opened");
    let headers: Vec<_> = headers
        .into_iter()
        .filter(|(k, _)| !k.ends_with("-Event-Type"))
        .collect();
    let (status, answer) = send(&fleet, &headers, body).await;
    assert_eq!(status, 400, "{answer}");
}

/// `name`'s reference body with `edit` applied, signed again, under a delivery id of its own.
fn edited(
    name: &str,
    delivery_id: &str,
    edit: impl FnOnce(&mut Value),
) -> (Vec<(String, String)>, Vec<u8>) {
    use hmac::{Hmac, Mac};
    let (headers, body) = delivery(name);
    let mut body: Value = serde_json::from_slice(&body).unwrap();
    edit(&mut body);
    let body = serde_json::to_vec(&body).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"webhook-secret-for-tests").unwrap();
    mac.update(&body);
    let signature = hex::encode(mac.finalize().into_bytes());
    let headers = headers
        .into_iter()
        .filter(|(k, _)| k.starts_with("X-Forgejo-") || k == "Content-Type")
        .map(|(k, v)| match k.as_str() {
            "X-Forgejo-Signature" => (k, signature.clone()),
            "X-Forgejo-Delivery" => (k, delivery_id.to_string()),
            _ => (k, v),
        })
        .collect();
    (headers, body)
}

#[tokio::test]
async fn pushes_and_pull_requests_find_a_task_by_this_stores_branch_and_by_no_other() {
    let fleet = fleet().await;
    let (headers, body) = delivery("issues-opened");
    let (status, created) = send(&fleet, &headers, body).await;
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
        for (what, (headers, body)) in [("push", push), ("pull request", pull)] {
            let (status, answer) = send(&fleet, &headers, body).await;
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
