//! A forge task caught in Publish when its host is removed from the config (a real daemon,
//! SIGKILLed and restarted with the host renamed, the demo agent, the fake Forgejo). The
//! verified commits live in the task's workspace on that host: when they never reached the
//! forge, the work is done again on another host (no attempt spent); when the branch is on
//! the forge at the verified commit, it is published from there. Never retried for ever.

#[path = "support/forge_rig.rs"]
mod forge_rig;

use std::path::Path;

use forge_rig::daemon::run_hosts;
use forge_rig::daemon::story;
use forge_rig::{Options, REPO, Rig};

/// The fake forge with acme/widgets and a daemon with one local host `local` running the demo
/// agent, reconciling every 30 s; the forge's webhooks point at it.
async fn start() -> Rig {
    Rig::start(Options {
        reconcile: Some("30s"),
        review_debounce: None,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_task_whose_host_was_removed_before_its_work_was_pushed_does_the_work_again_elsewhere() {
    let mut rig = start().await;
    // Pushes to the forge hang (and are then refused): the task stays in Publish.
    let started = rig.fleet.path("push-started");
    let hook = Path::new(&rig.repo.clone_url).join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ntouch '{}'\nsleep 20\nexit 1\n",
            started.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (_, id) = rig.issue_task("Add a changelog", "Do it.\n").await;
    rig.eventually("the task pushed", || started.exists()).await;
    // Pushes work again; the one in flight is refused.
    std::fs::remove_file(&hook).unwrap();
    rig.restart_with_the_host_renamed().await;
    let task = rig.until_status(&id, "review_pending").await;
    assert_eq!(run_hosts(&task), ["local", "spare"], "{}", story(&task));
    let told = story(&task);
    assert!(
        told.contains("host local is no longer in the config (publishing the work)")
            && told.contains("never pushed to the forge"),
        "{told}"
    );
    assert_eq!(rig.forge.pulls(REPO).len(), 1);
}

#[tokio::test]
async fn a_task_whose_host_was_removed_after_its_work_was_pushed_publishes_it_from_the_forge() {
    let mut rig = start().await;
    // The branch gets pushed, but the forge cannot compare it: the task stays in Publish.
    rig.forge.fail(
        "GET",
        "/repos/{owner}/{repo}/compare/{basehead}",
        503,
        10_000,
    );
    let (_, id) = rig.issue_task("Add a changelog", "Do it.\n").await;
    let pushes = rig.fleet.path("fake-forgejo-pushes.log");
    rig.eventually("the task pushed", || {
        std::fs::read_to_string(&pushes).is_ok_and(|p| p.contains("refs/heads/task/"))
    })
    .await;
    rig.forge.clear_faults();
    rig.restart_with_the_host_renamed().await;
    let task = rig.until_status(&id, "review_pending").await;
    assert_eq!(run_hosts(&task), ["local"], "{}", story(&task));
    assert!(
        story(&task).contains("is on the forge at the verified commit: published from there"),
        "{}",
        story(&task)
    );
    assert_eq!(rig.forge.pulls(REPO).len(), 1);
}
