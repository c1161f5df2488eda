//! Tasks parked waiting for a host slot survive a daemon crash (issue 14, point 9): recovery puts
//! them back in the host queue, so the slot freed by the recovered run wakes the next in line.

#[path = "support/daemon.rs"]
mod daemon;

use std::time::Duration;

use daemon::{Fleet, Setup};

/// One local host with a single slot, the demo agent.
fn one_slot(dir: &std::path::Path) -> String {
    format!(
        "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"demo\"]\n\
         max_concurrent = 1\nwork_root = \"{}\"\n",
        dir.join("work").display()
    )
}

/// Five tasks on a host with `max_concurrent = 1`: the daemon is SIGKILLed while the first runs
/// and four are parked in Route (no deadline: `undecided_timeout` is an hour); after the restart
/// all five complete, woken by the queue recovery rebuilt.
#[tokio::test]
async fn parked_route_tasks_run_after_a_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = one_slot(dir.path());
    let mut fleet = Fleet::start_in(
        dir,
        Setup {
            hosts: Some(hosts),
            // No deadline wakes a parked task in this test: only the host queue does.
            dispatch: "undecided_timeout = \"1h\"".to_string(),
            ..Setup::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            fleet
                .submit(&format!("task {i}"), "Do it.\n\ndemo-agent: sleep 1\n")
                .await,
        );
    }
    // One runs; the others wait for the slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut running = 0;
        for id in &ids {
            running += usize::from(fleet.task(id).await["status"] == "running");
        }
        if running == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no task ran; log:\n{}",
            fleet.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet.kill();
    fleet.spawn().await;
    for id in &ids {
        fleet
            .wait_status(id, "completed", Duration::from_secs(90))
            .await;
    }
}
