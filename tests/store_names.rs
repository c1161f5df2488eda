//! Task ids restart at 1 in every store (issue 14, point 10): the names a task goes by outside
//! its store carry the store's id, so two daemons (or a fresh store) on the same hosts, work
//! root and repository never take each other's runs, clones or branches; and a store made
//! before store ids keeps the names it always had.

#[path = "support/daemon.rs"]
mod daemon;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agent_fleet::workflow::Engine;
use daemon::{Fleet, Setup, assert_store_branch, story};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The localhost host with its work root at `work_root`.
fn host_at(work_root: &Path) -> Option<String> {
    Some(format!(
        "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"demo\"]\n\
         max_concurrent = 2\nwork_root = \"{}\"\n",
        work_root.display()
    ))
}

/// `git -C dir args…`'s output, trimmed.
fn git_out(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?} in {}", dir.display());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what} missing"))
}

#[tokio::test]
async fn two_fresh_stores_on_one_work_root_and_origin_never_adopt_each_others_task() {
    let shared = tempfile::tempdir().unwrap();
    let work = shared.path().join("work");
    let a = Fleet::start(Setup {
        hosts: host_at(&work),
        ..Setup::default()
    })
    .await;
    let a_id = a.submit("Work of store A", "A's change.").await;
    let a_task = a.wait_status(&a_id, "completed", T).await;

    // A second daemon with a store of its own, on the same host, work root and repository.
    let b = Fleet::start(Setup {
        hosts: host_at(&work),
        ..Setup::default()
    })
    .await;
    let origin = a.path("origin").display().to_string();
    let (status, created) = b
        .post(
            "/tasks",
            json!({ "title": "Work of store B", "body": "B's change.", "repo": origin }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let b_id = str_of(&created["id"], "id").to_string();
    assert_eq!(
        (a_id.as_str(), b_id.as_str()),
        ("1", "1"),
        "both stores' first task"
    );
    let b_task = b.wait_status(&b_id, "completed", T).await;

    // B ran an agent of its own, in a run directory of its own…
    assert_eq!(
        b.launches(),
        1,
        "B re-attached to A's run:\n{}",
        story(&b_task)
    );
    let (a_run, b_run) = (&a_task["runs"][0]["run_dir"], &b_task["runs"][0]["run_dir"]);
    assert_ne!(a_run, b_run);
    for run in [a_run, b_run] {
        let run = Path::new(str_of(run, "run_dir"));
        assert_eq!(run.parent(), Some(work.join(".runs").as_path()));
    }
    // …on a branch of its own…
    let a_branch = a.branch(&a_id).await;
    let b_branch = b.branch(&b_id).await;
    assert_ne!(
        assert_store_branch(&a_branch, &a_id),
        assert_store_branch(&b_branch, &b_id),
        "two fresh stores drew the same id"
    );
    assert_eq!(b_task["receipt"]["branch"], b_branch.as_str());
    // …in a clone of its own, holding its own work and none of A's.
    let b_commits = b_task["receipt"]["commits"].as_array().unwrap();
    assert_eq!(b_commits.len(), 1, "{}", story(&b_task));
    assert_eq!(b_commits[0]["subject"], "demo-agent: Work of store B");
    assert_ne!(b_task["receipt"]["head_sha"], a_task["receipt"]["head_sha"]);
    let stem = |branch: &str| branch.strip_prefix("task/").unwrap().to_string();
    let (a_clone, b_clone) = (work.join(stem(&a_branch)), work.join(stem(&b_branch)));
    assert_eq!(
        std::fs::read_to_string(b_clone.join("DEMO-AGENT.md")).unwrap(),
        "Work of store B\n"
    );
    // A's clone and branch are as A left them.
    assert_eq!(
        git_out(&a_clone, &["rev-parse", &format!("refs/heads/{a_branch}")]),
        str_of(&a_task["receipt"]["head_sha"], "head_sha")
    );
    assert_eq!(
        std::fs::read_to_string(a_clone.join("DEMO-AGENT.md")).unwrap(),
        "Work of store A\n"
    );
}

#[tokio::test]
async fn a_store_older_than_store_ids_keeps_naming_tasks_by_their_id() {
    // The golden stores written before store ids existed (formats 1 and 2); later ones have one.
    let fixtures: Vec<_> = ["golden-v1.redb", "golden-v2.redb"]
        .iter()
        .map(|name| Path::new(FIXTURES).join(name))
        .collect();
    for fixture in fixtures {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::copy(&fixture, dir.path().join("data/fleet.redb")).unwrap();
        let fleet = Fleet::start_in(dir, Setup::default()).await;
        let id = fleet.submit("An old store's task", "Change.").await;
        let task = fleet.wait_status(&id, "completed", T).await;
        let shown = fixture.display();
        assert_eq!(task["branch_name"], format!("task/{id}"), "{shown}");
        assert_eq!(task["receipt"]["branch"], format!("task/{id}"), "{shown}");
        let run = str_of(&task["runs"][0]["run_dir"], "run_dir");
        let work = fleet.path("work");
        assert_eq!(
            Path::new(run),
            work.join(format!(".runs/{id}-1")),
            "{shown}"
        );
        let clone = work.join(&id);
        assert_eq!(
            git_out(&clone, &["symbolic-ref", "--short", "HEAD"]),
            format!("task/{id}"),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn a_new_store_draws_its_id_once_and_an_old_one_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.redb");
    let engine = Engine::builder(&path).open().await.unwrap();
    let id = engine.store_id().expect("a new store has an id");
    engine.shutdown().await.unwrap();
    drop(engine);
    let engine = Engine::builder(&path).open().await.unwrap();
    assert_eq!(engine.store_id(), Some(id), "the id is kept across opens");
    engine.shutdown().await.unwrap();

    for v in [1, 2] {
        let old = dir.path().join(format!("old-v{v}.redb"));
        std::fs::copy(format!("{FIXTURES}/golden-v{v}.redb"), &old).unwrap();
        let engine = Engine::builder(&old).open().await.unwrap();
        assert_eq!(engine.store_id(), None, "golden-v{v}");
        engine.shutdown().await.unwrap();
        drop(engine);
        let engine = Engine::builder(&old).open().await.unwrap();
        assert_eq!(engine.store_id(), None, "golden-v{v}, opened again");
        engine.shutdown().await.unwrap();
    }
}
