//! A disk that fails (issue 15 §4): the store on a small tmpfs, filled until `ENOSPC`. The
//! failed commit makes the engine "failed": it refuses every later op with a typed error, the
//! API answers writes and `/readyz` with 503 and the reason, and the daemon exits non-zero. Once
//! space is freed, a restart on the same store finds everything that was acknowledged.
//!
//! Needs root (to mount the tmpfs): the tests run as root here and in CI. Without it they are
//! skipped, loudly, except under `CI=true`, where that is a failure.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/engine.rs"]
mod engine_support;
#[path = "support/small_disk.rs"]
mod small_disk;

use std::time::{Duration, Instant};

use agent_fleet::workflow::{EngineError, StoreError};
use daemon::{Fleet, REMOTE_AGENT, Setup};
use serde_json::{Value, json};
use small_disk::{Parked, SmallDisk};

/// What one task or instance carries, so that a few of them need new pages of the store.
const BLOB: usize = 256 * 1024;

// ---- the real daemon -------------------------------------------------------------------------

/// A task of the `remote` kind, which no host offers: its first step parks it (execution mode
/// `undecided`, for an hour), so nothing but the test's own requests writes to the store while the disk fills.
fn parked_task(n: usize) -> Value {
    json!({
        "title": format!("task {n}"),
        "body": "x".repeat(BLOB),
        "agent": "remote",
        "idempotency_key": format!("disk-full-{n}"),
    })
}

/// The store on a 4 MiB tmpfs; tasks submitted and acknowledged; the disk filled; more tasks
/// submitted: one answers 503 `store_failed`, `/readyz` answers 503 `failed` with the reason,
/// and the daemon exits non-zero within seconds. The space freed and the daemon restarted on
/// the same store, every acknowledged task is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_daemon_and_a_restart_keeps_every_acknowledged_task() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The fleet's store is `<dir>/data/fleet.redb`: `data` is the tmpfs.
    std::os::unix::fs::symlink(disk.path(), dir.path().join("data")).unwrap();
    let mut fleet = Fleet::start_in(
        dir,
        Setup {
            extra: REMOTE_AGENT.to_string(),
            dispatch: "undecided_timeout = \"1h\"".to_string(),
            body_limit: 2 * BLOB,
            ..Setup::default()
        },
    )
    .await;

    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for n in 0..3 {
        let (status, task) = fleet.post("/tasks", parked_task(n)).await;
        assert_eq!(status, 201, "{task}");
        acknowledged.push((
            task["id"].as_str().unwrap().to_string(),
            format!("task {n}"),
        ));
    }
    for (id, _) in &acknowledged {
        fleet
            .wait_for(id, Duration::from_secs(20), |t| {
                t["execution_mode"] == "undecided"
            })
            .await;
    }

    let filler = disk.fill();
    let mut refused: Option<Value> = None;
    for n in 3..100 {
        let (status, body) = fleet.post("/tasks", parked_task(n)).await;
        match status {
            200 | 201 => acknowledged.push((
                body["id"].as_str().unwrap().to_string(),
                format!("task {n}"),
            )),
            503 => {
                refused = Some(body);
                break;
            }
            other => panic!(
                "submit {n} on a full disk: {other} {body}\nlog:\n{}",
                fleet.log()
            ),
        }
    }
    let refused = refused.unwrap_or_else(|| {
        panic!(
            "no submission was refused on a full disk\nlog:\n{}",
            fleet.log()
        )
    });
    let failed_at = Instant::now();
    assert_eq!(refused["error"]["code"], "store_failed", "{refused}");

    let ready = fleet
        .http
        .get(format!("{}/readyz", fleet.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "failed", "{ready}");
    let reason = ready["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("No space left on device"),
        "the reason says why: {ready}"
    );

    let exit = fleet.wait_exit(Duration::from_secs(15)).await;
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "the daemon still runs {:?} after its store failed\nlog:\n{}",
            failed_at.elapsed(),
            fleet.log()
        )
    });
    assert!(
        !exit.success(),
        "exit status {exit:?}\nlog:\n{}",
        fleet.log()
    );
    assert!(
        fleet.log().contains("the store failed"),
        "the log says why it stopped:\n{}",
        fleet.log()
    );

    std::fs::remove_file(filler).unwrap();
    fleet.spawn().await;
    for (id, title) in &acknowledged {
        let task = fleet.task(id).await;
        assert_eq!(task["title"], title.as_str(), "{}", daemon::story(&task));
        assert_eq!(task["body"].as_str().map(str::len), Some(BLOB));
    }
    // The restarted daemon takes work again.
    let (status, task) = fleet.post("/tasks", parked_task(1000)).await;
    assert_eq!(status, 201, "{task}");
}

// ---- the engine ------------------------------------------------------------------------------

fn is_failed(e: &EngineError) -> bool {
    matches!(e, EngineError::Store(StoreError::Failed { .. }))
}

/// On a full disk a start fails with `StoreError::Failed`; from then on the engine reports the
/// failure (`failure`, `failed`), refuses every op at once with the same typed error, and shuts
/// down without waiting on its writer. Reopened with space freed, every acknowledged instance
/// is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_commit_the_engine_refuses_every_op_and_keeps_what_it_acknowledged() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let path = disk.path().join("fleet.redb");
    let open = || {
        agent_fleet::workflow::Engine::builder(&path)
            .config(engine_support::fast_config())
            .register(Parked)
            .open()
    };
    let engine = open().await.unwrap();
    assert_eq!(engine.failure(), None);

    let filler = disk.fill();
    let mut acknowledged = Vec::new();
    let error = loop {
        assert!(acknowledged.len() < 100, "no start failed on a full disk");
        let blob = vec![acknowledged.len() as u8; BLOB];
        match engine.start::<Parked>(&blob, None).await {
            Ok(id) => acknowledged.push((id, blob)),
            Err(e) => break e,
        }
    };
    assert!(is_failed(&error), "a typed failure: {error:?}");
    let reason = engine.failure().expect("the engine knows it failed");
    assert!(reason.contains("No space left on device"), "{reason}");
    let waited = tokio::time::timeout(engine_support::T, engine.failed()).await;
    assert_eq!(waited.ok().as_deref(), Some(reason.as_str()));

    let again = engine.start::<Parked>(&vec![1], None).await.unwrap_err();
    assert!(is_failed(&again), "{again:?}");
    if let Some((id, _)) = acknowledged.first() {
        let signal = engine.signal::<Parked>(*id, &(), "k").await.unwrap_err();
        assert!(is_failed(&signal), "{signal:?}");
    }
    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), engine.shutdown())
        .await
        .expect("shutdown does not hang on the failed writer")
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "{:?}",
        began.elapsed()
    );
    drop(engine);

    std::fs::remove_file(filler).unwrap();
    let engine = open().await.unwrap();
    for (id, blob) in &acknowledged {
        assert_eq!(&engine.state::<Parked>(*id).unwrap(), blob, "instance {id}");
    }
    engine.start::<Parked>(&vec![2], None).await.unwrap();
    engine.shutdown().await.unwrap();
}
