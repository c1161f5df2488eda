//! Writes `tests/fixtures/golden-v<STORE_FORMAT>.redb`: a small store with instances in every parked shape
//! (waiting, timer, early signal, unresolved intent, completed) and effects left undelivered.
//! Run once per store format: `cargo run --example make_golden`; commit the file; never rewrite
//! an existing fixture (later versions must keep reading it).

#[path = "../tests/support/golden.rs"]
mod golden;

use std::time::Duration;

use agent_fleet::workflow::{Engine, EngineConfig, STORE_FORMAT, Status, Timestamp};
use golden::{GoldenFlow, GoldenSignal, GoldenState};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = format!("tests/fixtures/golden-v{STORE_FORMAT}.redb");
    let path = std::path::Path::new(&path);
    anyhow::ensure!(
        !path.exists(),
        "{} exists: fixtures are never rewritten",
        path.display()
    );
    // No effect handler: every effect stays pending in the outbox.
    let engine = Engine::builder(path)
        .config(EngineConfig {
            shutdown_grace: Duration::from_millis(300),
            ..Default::default()
        })
        .register(GoldenFlow)
        .open()
        .await?;
    let state = |name: &str| GoldenState {
        name: name.into(),
        ..Default::default()
    };
    let waiting = engine
        .start::<GoldenFlow>(&state("waiting"), Some("waiting"))
        .await?;
    let timer = engine
        .start::<GoldenFlow>(
            &GoldenState {
                deadline: Some(Timestamp::now().after(Duration::from_secs(1))),
                ..state("timer")
            },
            Some("timer"),
        )
        .await?;
    let early = engine
        .start::<GoldenFlow>(&state("early"), Some("early"))
        .await?;
    engine
        .signal::<GoldenFlow>(early, &GoldenSignal::Other(7), "other-7")
        .await?;
    let done = engine
        .start::<GoldenFlow>(&state("done"), Some("done"))
        .await?;
    engine
        .signal::<GoldenFlow>(done, &GoldenSignal::Go("generator".into()), "go")
        .await?;
    assert_eq!(
        engine.wait_terminal(done, Duration::from_secs(5)).await?,
        Status::Completed
    );
    for id in [waiting, timer, early] {
        while engine.info(id)?.status != Status::Waiting {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let intent = engine
        .start::<GoldenFlow>(
            &GoldenState {
                hang: true,
                ..state("intent")
            },
            Some("intent"),
        )
        .await?;
    while engine.info(intent)?.step == 0 && engine.history(intent)?.len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.shutdown().await?;
    println!(
        "wrote {}: waiting={waiting} timer={timer} early={early} done={done} intent={intent}",
        path.display()
    );
    Ok(())
}
