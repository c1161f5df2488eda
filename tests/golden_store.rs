//! Stores written by earlier versions of the engine (`tests/fixtures/golden-v<format>.redb`,
//! made by `examples/make_golden.rs`, one per store format, never rewritten) open in this
//! version and their workflows run to completion: parked waits, an overdue timer, an early
//! signal, an unresolved intent and undelivered effects all survive the upgrade. Format 1 is
//! upgraded on open (the `live` index), and formats 1 and 2 get records and history moved into
//! one table (format 3).

#[path = "support/golden.rs"]
mod golden;

use std::time::Duration;

use agent_fleet::workflow::{Engine, EventKind, Status};
use golden::{GoldenFlow, GoldenSignal, GoldenSink};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn store_of_format_1_is_upgraded_and_runs_to_completion() {
    runs_to_completion("golden-v1.redb").await;
}

#[tokio::test]
async fn store_of_format_2_is_upgraded_and_runs_to_completion() {
    runs_to_completion("golden-v2.redb").await;
}

#[tokio::test]
async fn store_of_format_3_runs_to_completion() {
    runs_to_completion("golden-v3.redb").await;
}

async fn runs_to_completion(fixture: &str) {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("fleet.redb");
    std::fs::copy(format!("{FIXTURES}/{fixture}"), &path).expect("fixture present");
    let sink = GoldenSink::default();
    let engine = Engine::builder(&path)
        .register(GoldenFlow)
        .handler("golden-fx", sink.clone())
        .open()
        .await
        .expect("an older store opens");
    let report = engine.recovery().clone();
    assert_eq!(report.instances, 5);
    assert_eq!(report.terminal, 1);
    assert_eq!(report.pending_effects, 4);
    // The ended instance's history came through the upgrade, from its start on.
    let history = engine.history(4).unwrap();
    assert!(
        matches!(history.first(), Some((0, e)) if matches!(e.kind, EventKind::Started { .. })),
        "{history:?}"
    );

    let (waiting, timer, early, done, intent) = (1, 2, 3, 4, 5);
    for id in [waiting, early, intent] {
        engine
            .signal::<GoldenFlow>(id, &GoldenSignal::Go("test".into()), "go")
            .await
            .unwrap();
    }
    for id in [waiting, timer, early, intent] {
        assert_eq!(
            engine.wait_terminal(id, T).await.unwrap(),
            Status::Completed,
            "instance {id}"
        );
    }
    let log = |id| engine.state::<GoldenFlow>(id).unwrap().log;
    assert_eq!(log(waiting), vec!["touched", "go from test"]);
    assert_eq!(log(timer), vec!["touched", "deadline"]);
    assert_eq!(log(early), vec!["touched", "go from test"]);
    assert_eq!(log(done), vec!["touched", "go from generator"]);
    assert_eq!(log(intent), vec!["reconciled intent", "go from test"]);
    // The early `Other` signal was kept in the inbox until the instance ended.
    assert!(
        engine
            .history(early)
            .unwrap()
            .iter()
            .any(|(_, e)| matches!(e.kind, EventKind::SignalDiscarded { seq: 0, .. }))
    );

    let deadline = tokio::time::Instant::now() + T;
    while engine.pending_effects().unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "effects stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut delivered = sink.0.lock().unwrap().clone();
    delivered.sort();
    assert_eq!(
        delivered,
        vec!["done", "early", "intent", "timer", "waiting"]
    );
    engine.shutdown().await.unwrap();
}
