//! The workspace sweeper (issue 15 §3), against the real daemon: what an ended task left on its
//! host — its clone, its run directories, its branch's refs in the host's mirror — is removed
//! `storage.workspace_retention` after the task ended, never before, never what a live task or
//! another task uses, and a restart neither redoes nor skips a task.

#[path = "support/daemon.rs"]
mod daemon;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use daemon::{Fleet, Setup, assert_store_branch, eventually, story};

/// `storage.workspace_retention` of these tests (`storage.retention` stays 30 days).
const RETENTION: Duration = Duration::from_secs(3);
/// Long enough for the sweeper to have come round (every `RETENTION / 4`) on a busy machine.
const SWEPT_WITHIN: Duration = Duration::from_secs(20);
const T: Duration = Duration::from_secs(30);

async fn start() -> Fleet {
    Fleet::start(Setup {
        storage: format!("workspace_retention = \"{}s\"\n", RETENTION.as_secs()),
        ..Setup::default()
    })
    .await
}

/// The task's clone (named after its branch: `<work_root>/<id>-<store>`) and run directories.
async fn leftovers(fleet: &Fleet, id: &str) -> (PathBuf, Vec<PathBuf>) {
    let branch = fleet.branch(id).await;
    let clone = fleet
        .path("work")
        .join(branch.strip_prefix("task/").unwrap());
    let runs = fleet.task(id).await["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| PathBuf::from(r["run_dir"].as_str().unwrap()))
        .collect();
    (clone, runs)
}

fn all_exist(clone: &Path, runs: &[PathBuf]) -> bool {
    clone.is_dir() && !runs.is_empty() && runs.iter().all(|r| r.is_dir())
}

fn none_exist(clone: &Path, runs: &[PathBuf]) -> bool {
    !clone.exists() && runs.iter().all(|r| !r.exists())
}

/// Submits a task and waits until it completes: its id and an instant no later than its end
/// (the last time it was seen unfinished).
async fn completed(fleet: &Fleet, title: &str) -> (String, Instant) {
    let id = fleet.submit(title, "").await;
    let deadline = Instant::now() + T;
    loop {
        let before = Instant::now();
        let task = fleet.task(&id).await;
        if task["status"] == "completed" {
            return (id, before);
        }
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            story(&task),
            fleet.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A task that runs (the demo agent sleeps a minute) until the test ends.
async fn running(fleet: &Fleet) -> String {
    let id = fleet.submit("Live", "demo-agent: sleep 60").await;
    fleet.wait_status(&id, "running", T).await;
    id
}

/// The host's one mirror of the origin repository.
fn mirror(fleet: &Fleet) -> PathBuf {
    let mut all: Vec<PathBuf> = std::fs::read_dir(fleet.path("work/.mirrors"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "git"))
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn git(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn has_ref(mirror: &Path, name: &str) -> bool {
    git(mirror, &["show-ref", "--verify", "--quiet", name]).0
}

#[tokio::test]
async fn an_ended_tasks_clone_and_run_dirs_go_after_the_retention_and_a_live_tasks_stay() {
    let fleet = start().await;
    let live = running(&fleet).await;
    let (done, _) = completed(&fleet, "Done").await;
    let (clone, runs) = leftovers(&fleet, &done).await;
    assert!(all_exist(&clone, &runs), "{clone:?} {runs:?}");

    assert!(
        eventually(SWEPT_WITHIN, || none_exist(&clone, &runs)).await,
        "the ended task's clone or run directories are still there:\n{}",
        fleet.log()
    );
    let (live_clone, live_runs) = leftovers(&fleet, &live).await;
    assert!(
        all_exist(&live_clone, &live_runs),
        "{live_clone:?} {live_runs:?}"
    );
    assert_eq!(fleet.task(&live).await["status"], "running");
}

#[tokio::test]
async fn nothing_is_removed_before_its_task_ended_the_retention_ago() {
    let fleet = start().await;
    let (first, first_end) = completed(&fleet, "First").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (second, second_end) = completed(&fleet, "Second").await;
    let tasks = [
        (leftovers(&fleet, &first).await, first_end),
        (leftovers(&fleet, &second).await, second_end),
    ];
    let deadline = Instant::now() + SWEPT_WITHIN + RETENTION;
    loop {
        let now = Instant::now();
        let mut gone = 0;
        for ((clone, runs), ended_by) in &tasks {
            if !all_exist(clone, runs) {
                assert!(
                    now >= *ended_by + RETENTION,
                    "{clone:?} or a run directory went {:?} after its task ended:\n{}",
                    now - *ended_by,
                    fleet.log()
                );
            }
            gone += usize::from(none_exist(clone, runs));
        }
        if gone == tasks.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not swept in time:\n{}",
            fleet.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn only_the_ended_tasks_refs_leave_the_mirror_and_the_mirror_serves_the_next_task() {
    let fleet = start().await;
    let live = running(&fleet).await;
    let (done, _) = completed(&fleet, "Done").await;
    let (clone, _) = leftovers(&fleet, &done).await;
    let mirror = mirror(&fleet);
    let done_branch = fleet.branch(&done).await;
    let live_branch = fleet.branch(&live).await;
    let store = assert_store_branch(&done_branch, &done);
    let other_store = if store == "aaaaaa" {
        "bbbbbb"
    } else {
        "aaaaaa"
    };
    // What publishing and later fetches (or an earlier version's worktree) leave in a mirror:
    // the task's branch as a local and as a remote-tracking ref; and refs that are not the
    // ended task's: the live task's, another store's task of the same id, the old form of the
    // name, a task whose id starts with the same digits.
    let (ok, main) = git(&mirror, &["rev-parse", "refs/remotes/origin/main"]);
    assert!(ok);
    let gone = [
        format!("refs/heads/{done_branch}"),
        format!("refs/remotes/origin/{done_branch}"),
    ];
    let kept = [
        format!("refs/heads/{live_branch}"),
        format!("refs/remotes/origin/{live_branch}"),
        format!("refs/heads/task/{done}-{other_store}"),
        format!("refs/heads/task/{done}"),
        format!("refs/heads/task/{done}1-{store}"),
        "refs/remotes/origin/main".to_string(),
    ];
    for r in gone.iter().chain(&kept) {
        assert!(git(&mirror, &["update-ref", r, &main]).0, "{r}");
    }

    assert!(
        eventually(SWEPT_WITHIN, || !clone.exists()
            && gone.iter().all(|r| !has_ref(&mirror, r)))
        .await,
        "the ended task's clone or refs are still there:\n{}",
        fleet.log()
    );
    for r in &kept {
        assert!(has_ref(&mirror, r), "{r} was removed");
    }

    let (next, _) = completed(&fleet, "Next").await;
    let (next_clone, _) = leftovers(&fleet, &next).await;
    let (ok, log) = git(&next_clone, &["log", "--format=%s"]);
    assert!(ok && log.lines().count() >= 2, "{log}");
    assert!(git(&mirror, &["fsck", "--no-dangling"]).0);
}

#[tokio::test]
async fn a_restart_neither_redoes_nor_skips_a_task() {
    let mut fleet = start().await;
    let (swept, _) = completed(&fleet, "Swept before the restart").await;
    let (swept_clone, swept_runs) = leftovers(&fleet, &swept).await;
    assert!(
        eventually(SWEPT_WITHIN, || none_exist(&swept_clone, &swept_runs)).await,
        "{}",
        fleet.log()
    );
    // The step that removed it commits right after; then a directory appears where its clone
    // was: a sweep that came back to the task would remove it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::create_dir(&swept_clone).unwrap();
    std::fs::write(swept_clone.join("not-the-sweepers"), "x").unwrap();

    let (pending, _) = completed(&fleet, "Ended before the restart").await;
    let (pending_clone, pending_runs) = leftovers(&fleet, &pending).await;
    fleet.kill();
    assert!(all_exist(&pending_clone, &pending_runs));
    fleet.spawn().await;

    assert!(
        eventually(SWEPT_WITHIN, || none_exist(&pending_clone, &pending_runs)).await,
        "the task that ended before the restart was skipped:\n{}",
        fleet.log()
    );
    // Two more rounds at least.
    tokio::time::sleep(RETENTION / 2 + Duration::from_secs(1)).await;
    assert!(swept_clone.join("not-the-sweepers").exists());

    fleet.kill();
    let notes = sweeper_notes(&fleet).await;
    for id in [&swept, &pending] {
        let about = notes
            .iter()
            .filter(|n| n.contains(&format!("task {id}: ")))
            .count();
        assert_eq!(about, 1, "task {id} in the sweeper's notes: {notes:#?}");
    }
}

/// The notes of the sweeper's steps, read from the store of the stopped daemon.
async fn sweeper_notes(fleet: &Fleet) -> Vec<String> {
    use agent_fleet::workflow::{Engine, EventKind};
    let engine = Engine::builder(fleet.path("data/fleet.redb"))
        .open()
        .await
        .unwrap();
    let id = engine
        .started("workspace-gc", "workspace-gc")
        .unwrap()
        .expect("the sweeper was started");
    let notes = engine
        .history(id)
        .unwrap()
        .into_iter()
        .filter_map(|(_, e)| match e.kind {
            EventKind::Step { note, .. } => note,
            _ => None,
        })
        .collect();
    engine.shutdown().await.unwrap();
    notes
}
