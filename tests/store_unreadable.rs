//! A stored record that cannot be read (issue 15, §2), against the real daemon: an ended task's
//! does not stop the daemon (recovery does not read it; the first read that meets it reports it
//! by `/readyz`, it is left untouched, the other tasks are served); a live task's does, with a clear message naming it.

#[path = "support/daemon.rs"]
mod daemon;

use std::process::Command;
use std::time::Duration;

use daemon::{BIN, Fleet, REMOTE_AGENT, Setup, TOKEN};
use redb::{Database, ReadableTable, TableDefinition};

/// The engine's table of instance records and history (see `src/workflow/store.rs`): a record
/// is at (id, u64::MAX).
const INSTANCES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("instance_rows");

/// Overwrites the stored record of instance `id` with bytes no build can decode.
fn damage(fleet: &Fleet, id: &str) {
    let db = Database::open(fleet.path("data/fleet.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(INSTANCES).unwrap();
        let id: u64 = id.parse().unwrap();
        assert!(
            table.get((id, u64::MAX)).unwrap().is_some(),
            "no record {id}"
        );
        table
            .insert((id, u64::MAX), &[0xff, 0xfe, 0x00, 0x13][..])
            .unwrap();
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn an_unreadable_ended_task_is_reported_and_the_daemon_serves_the_others() {
    let mut fleet = Fleet::start(Setup::default()).await;
    let lost = fleet.submit("Lost", "demo-agent: echo one").await;
    let kept = fleet.submit("Kept", "demo-agent: echo two").await;
    for id in [&lost, &kept] {
        fleet
            .wait_status(id, "completed", Duration::from_secs(60))
            .await;
    }
    fleet.kill();
    damage(&fleet, &lost);

    // Recovery reads no ended record: the daemon starts as if nothing were wrong…
    fleet.spawn().await;
    let (status, list) = fleet.get("/tasks").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, [kept.as_str()], "the readable task is listed");
    // …and the first read that meets the damaged record (the list) passes over it, logs it and
    // has `/readyz` list it.
    let r = fleet
        .http
        .get(format!("{}/readyz", fleet.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", fleet.log());
    let ready: serde_json::Value = r.json().await.unwrap();
    let unreadable = ready["unreadable"].as_array().cloned().unwrap_or_default();
    assert_eq!(unreadable.len(), 1, "{ready}");
    assert_eq!(unreadable[0]["id"].as_u64(), lost.parse::<u64>().ok());
    assert!(
        fleet.log().contains("cannot be read"),
        "logged:\n{}",
        fleet.log()
    );
    // And new work is taken.
    let next = fleet.submit("Next", "demo-agent: echo three").await;
    fleet
        .wait_status(&next, "completed", Duration::from_secs(60))
        .await;
}

#[tokio::test]
async fn an_unreadable_live_task_stops_the_daemon_with_a_message_naming_it() {
    let mut fleet = Fleet::start(Setup {
        extra: REMOTE_AGENT.to_string(),
        ..Setup::default()
    })
    .await;
    // No host offers `remote`: the task waits, live.
    let (status, task) = fleet
        .post(
            "/tasks",
            serde_json::json!({"title": "Waits", "body": "x", "agent": "remote"}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    fleet.kill();
    damage(&fleet, &id);

    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&fleet.config)
        .current_dir(fleet.dir.path())
        .env("E2E_FLEET_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not run: {stderr}");
    assert!(
        stderr.contains(&format!("instance {id}")) && stderr.contains("fleet.redb"),
        "names the instance and the store:\n{stderr}"
    );
}

/// Runs `agent-fleet store check` on the fleet's config: (success, stdout).
fn store_check(fleet: &Fleet) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["store", "check", "--config"])
        .arg(&fleet.config)
        .current_dir(fleet.dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.success(), format!("{stdout}{stderr}"))
}

#[tokio::test]
async fn store_check_lists_the_records_that_cannot_be_read() {
    let mut fleet = Fleet::start(Setup::default()).await;
    let id = fleet.submit("One", "demo-agent: echo one").await;
    fleet
        .wait_status(&id, "completed", Duration::from_secs(60))
        .await;
    let (ok, _) = store_check(&fleet);
    assert!(
        !ok,
        "the daemon holds the store: the check says so and fails"
    );
    fleet.kill();
    let (ok, out) = store_check(&fleet);
    assert!(ok, "{out}");
    assert!(out.contains("0 unreadable"), "{out}");
    damage(&fleet, &id);
    let (ok, out) = store_check(&fleet);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("instance {id} (ended")),
        "names it: {out}"
    );
}
