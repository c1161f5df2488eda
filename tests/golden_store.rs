//! A store written by the first version of the engine (`tests/fixtures/golden-v1.redb`, made by
//! `examples/make_golden.rs`) opens in this version and its workflows run to completion:
//! parked waits, an overdue timer, an early signal, an unresolved intent and undelivered
//! effects all survive the upgrade.

#[path = "support/golden.rs"]
mod golden;

use std::time::Duration;

use agent_fleet::workflow::{Engine, EventKind, Status};
use golden::{GoldenFlow, GoldenSignal, GoldenSink};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden-v1.redb");
const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn store_written_by_version_one_runs_to_completion() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("fleet.redb");
    std::fs::copy(FIXTURE, &path).expect("fixture present");
    let sink = GoldenSink::default();
    let engine = Engine::builder(&path)
        .register(GoldenFlow)
        .handler("golden-fx", sink.clone())
        .open()
        .await
        .expect("a version-one store opens");
    let report = engine.recovery().clone();
    assert_eq!(report.instances, 5);
    assert_eq!(report.terminal, 1);
    assert_eq!(report.pending_effects, 4);

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
