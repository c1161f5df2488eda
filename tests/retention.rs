//! Retention on the real daemon (issue 15 §3): a failed task nobody retries ends after
//! `storage.retention`, and an ended task is removed from the store after it.

#[path = "support/daemon.rs"]
mod daemon;

use std::time::Duration;

use daemon::{Fleet, Setup};
use serde_json::json;

#[tokio::test]
async fn a_failed_task_nobody_retries_ends_after_the_retention_and_is_then_removed() {
    let setup = Setup {
        storage: "retention = \"2s\"\nworkspace_retention = \"2s\"\ndedupe_window = \"2s\"\n"
            .into(),
        ..Setup::default()
    };
    let fleet = Fleet::start(setup).await;
    let id = fleet.submit("Fail once", "demo-agent: fail\n").await;
    fleet
        .wait_status(&id, "failed", Duration::from_secs(30))
        .await;
    // Nobody retries it within the retention (2 s): the task ends, still failed, and a retry is
    // refused from then on.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (code, body) = fleet.post(&format!("/tasks/{id}/retry"), json!({})).await;
    assert_eq!(code, 409, "{body}");
    let (_, task) = fleet.get(&format!("/tasks/{id}")).await;
    assert_eq!(task["status"], "failed", "{task}");
    // Commits go on (other tasks); pruning rides on them: the ended task is removed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        let (code, body) = fleet.get(&format!("/tasks/{id}")).await;
        if code == 404 {
            break;
        }
        assert_eq!(code, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task was never removed: {body}"
        );
        n += 1;
        fleet.submit(&format!("Tick {n}"), "Do it.").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
