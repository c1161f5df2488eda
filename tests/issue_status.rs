//! What a forge issue shows of its task from the start, end to end (a real daemon, the demo
//! agent on a local host, the fake Forgejo): a new task waiting for a host shows `status:todo`
//! on its issue; a person's own assignment of the issue, which the daemon leaves alone, is
//! noted in the task's history, once.

#[path = "support/forge_rig.rs"]
mod forge_rig;

use std::time::Duration;

use forge_rig::daemon::{Setup, story};
use forge_rig::daemon::{occupy_the_host, one_slot};
use forge_rig::forgejo::{ALICE, BOB, BOT};
use forge_rig::{Options, REPO, Rig, events};

/// The fake forge with acme/widgets and a daemon with one local host of ONE slot running the
/// demo agent, `keys` added to its `[forgejo]`, reconciling every 30 s; the forge's webhooks
/// point at it.
async fn start(keys: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let hosts = one_slot(dir.path());
    let options = Options {
        reconcile: Some("30s"),
        review_debounce: None,
        keys: keys.to_string(),
        setup: Setup {
            hosts: Some(hosts),
            ..Setup::default()
        },
        ..Options::default()
    };
    Rig::start_in(dir, options).await
}

/// Waits until issue `n` carries `label`.
async fn until_labelled(rig: &Rig, n: u64, label: &str) {
    rig.eventually(&format!("{label} on issue #{n}"), || {
        rig.forge.issue_labels(REPO, n).iter().any(|l| l == label)
    })
    .await;
}

#[tokio::test]
async fn a_new_task_waiting_for_a_host_shows_status_todo_on_its_issue() {
    let rig = start("").await;
    // The only slot is taken for a while: the issue's task waits for it.
    occupy_the_host(&rig.fleet, 20).await;
    let (n, id) = rig.issue_task("Add a changelog", "Do it.\n").await;
    until_labelled(&rig, n, "status:todo").await;
    assert_eq!(rig.status_labels(n), ["status:todo"]);
    let task = rig.fleet.task(&id).await;
    assert_eq!(task["status"], "created", "{}", story(&task));
    rig.assert_honest();
}

/// How many of the task's history entries say `text`.
fn mentions(task: &serde_json::Value, text: &str) -> usize {
    events(task).iter().filter(|e| e.contains(text)).count()
}

#[tokio::test]
async fn a_persons_own_assignment_of_the_issue_is_noted_in_the_tasks_history_once() {
    let rig = start(&format!("assignee = \"{BOT}\"\nreviewer = \"{BOB}\"")).await;
    // Alice takes the issue herself, then asks for an agent.
    let (n, id) = rig
        .self_assigned_issue_task(ALICE, "Add a licence", "Do it.\n\ndemo-agent: sleep 2\n")
        .await;
    let said = format!("is assigned to {ALICE}");
    // Several status changes (todo, doing, review), each delivering the labels effect.
    rig.until_status(&id, "review_pending").await;
    until_labelled(&rig, n, "status:review").await;
    rig.until(&id, "noted the assignment", |t| mentions(t, &said) > 0)
        .await;
    assert_eq!(rig.forge.issue_assignees(REPO, n), [ALICE]);
    // Later deliveries say nothing new.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let task = rig.fleet.task(&id).await;
    assert_eq!(mentions(&task, &said), 1, "{}", story(&task));
}
