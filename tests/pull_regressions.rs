//! Daemon bugs found by `tests/request_fuzz.rs` and `docs/pull-agents.md`, each pinned by a
//! test of the behaviour the daemon has since they were fixed, against the real daemon.

#[path = "support/daemon.rs"]
mod daemon;

use std::time::{Duration, Instant};

use daemon::{Fleet, Setup, TOKEN, story};
use serde_json::{Value, json};

/// A kind no host offers: its tasks are left to pull agents.
const REMOTE: &str = r#"
[[agents]]
name = "remote"
cli_template = "remote {prompt_file}"
output_format = "raw"
"#;

fn setup() -> Setup {
    Setup {
        extra: REMOTE.to_string(),
        body_limit: 1024,
        max_retries: 2,
        retry_backoff: "30s",
        ..Setup::default()
    }
}

async fn register(fleet: &Fleet, name: &str) -> (u64, String) {
    let (status, body) = fleet
        .post(
            "/agents/register",
            json!({ "name": name, "agent_kinds": ["remote"] }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    (
        body["agent_id"].as_u64().unwrap(),
        body["token"].as_str().unwrap().to_string(),
    )
}

/// POSTs `body` to `path` with `token`; answers the status, the content type and the body.
async fn post_raw(fleet: &Fleet, path: &str, token: &str, body: Vec<u8>) -> (u16, String, String) {
    let r = fleet
        .http
        .post(fleet.api(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

fn json_error(status: u16, ct: &str, body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let ok = ct.starts_with("application/json")
        && v["error"]["code"].is_string()
        && v["error"]["message"].is_string();
    ok.then(|| format!("{status} {}", v["error"]["code"].as_str().unwrap()))
}

async fn dequeue_one(fleet: &Fleet, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = post_raw(fleet, "/tasks/dequeue", token, Vec::new()).await;
        if status == 200 {
            return serde_json::from_str(&body).unwrap();
        }
        assert_eq!(status, 204, "{body}");
        assert!(Instant::now() < deadline, "nothing to dequeue");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Today: `assign` during the `agent_lost` backoff moves the task back to routing with its
/// status still `agent_lost`; the next claim fails the step (`a task cannot go from
/// agent_lost to assigned`), again on every retry, so the task is wedged for good and every
/// request that reaches it (dequeue, status, assign…) waits 20 s for a 503 `pending`.
#[tokio::test]
async fn a_task_assigned_while_it_waits_after_losing_its_agent_can_be_claimed() {
    let fleet = Fleet::start(setup()).await;
    let (_, lost) = register(&fleet, "lost").await;
    let (next_id, next) = register(&fleet, "next").await;
    let (status, task) = fleet
        .post("/tasks", json!({ "title": "x", "agent": "remote" }))
        .await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    dequeue_one(&fleet, &lost).await;
    let (status, _, body) = post_raw(&fleet, "/agents/deregister", &lost, Vec::new()).await;
    assert_eq!(status, 200, "{body}");
    // Waiting 30 s before its second attempt, `agent_lost`: the coordinator sends it on.
    fleet
        .wait_status(&id, "agent_lost", Duration::from_secs(10))
        .await;
    let (status, body) = fleet
        .post(
            &format!("/tasks/{id}/assign"),
            json!({ "agent_id": next_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    let (status, _, body) = post_raw(&fleet, "/tasks/dequeue", &next, Vec::new()).await;
    let task = fleet.task(&id).await;
    assert_eq!(
        status,
        200,
        "dequeue answered {status} after {:?}: {body}\n{}",
        started.elapsed(),
        story(&task)
    );
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["task"]["id"], id.as_str());
    assert_eq!(got["lease"]["epoch"], 2);
    assert_eq!(fleet.task(&id).await["status"], "assigned");
}

/// Today: the routes that read their body as bytes (heartbeat, dequeue, cancel) answer an
/// oversized body with axum's `text/plain` "Failed to buffer the request body: length limit
/// exceeded".
#[tokio::test]
async fn an_oversized_body_is_refused_with_a_json_413_on_every_route() {
    let fleet = Fleet::start(setup()).await;
    let (_, agent) = register(&fleet, "big").await;
    let big = format!("{{\"reason\":\"{}\"}}", "x".repeat(4096)).into_bytes();
    let mut wrong = Vec::new();
    for (path, token) in [
        ("/agents/register", TOKEN),
        ("/agents/heartbeat", agent.as_str()),
        ("/tasks/dequeue", agent.as_str()),
        ("/tasks/1/status", agent.as_str()),
        ("/tasks/1/complete", agent.as_str()),
        ("/receipts", agent.as_str()),
        ("/tasks", TOKEN),
        ("/tasks/1/assign", TOKEN),
        ("/tasks/1/cancel", TOKEN),
        ("/tasks/1/signals", TOKEN),
    ] {
        let (status, ct, body) = post_raw(&fleet, path, token, big.clone()).await;
        if json_error(status, &ct, &body).as_deref() != Some("413 payload_too_large") {
            wrong.push(format!("POST {path}: {status} {ct}: {body}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Today: axum's own rejections of the URL (a path segment whose percent-decoding is not
/// UTF-8, a query string that does not fit) are answered as `text/plain`.
#[tokio::test]
async fn a_task_id_that_is_not_utf8_or_a_malformed_query_is_refused_with_a_json_error() {
    let fleet = Fleet::start(setup()).await;
    let (_, agent) = register(&fleet, "odd").await;
    let mut wrong = Vec::new();
    for (path, token) in [
        ("/tasks/%FF/status", agent.as_str()),
        ("/tasks/%C3%28/complete", agent.as_str()),
        ("/tasks/%FF/cancel", TOKEN),
        ("/tasks/%FF/retry", TOKEN),
        ("/tasks/%FF/assign", TOKEN),
        ("/tasks/%FF/signals", TOKEN),
    ] {
        let (status, ct, body) = post_raw(&fleet, path, token, b"{}".to_vec()).await;
        if json_error(status, &ct, &body).is_none() || status >= 500 {
            wrong.push(format!("POST {path}: {status} {ct}: {body}"));
        }
    }
    for path in [
        "/tasks/%FF",
        "/tasks?limit=abc",
        "/tasks?bogus=1",
        "/agents?zzz=1",
    ] {
        let r = fleet
            .http
            .get(fleet.api(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        let body = r.text().await.unwrap();
        if json_error(status, &ct, &body).is_none() || status >= 500 {
            wrong.push(format!("GET {path}: {status} {ct}: {body}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
