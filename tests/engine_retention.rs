//! Retention (issue 15 §3): the writer prunes, inside its ordinary commits, ended instances
//! past `retention`, idempotency keys past `dedupe_window` and feed rows every durable consumer
//! has passed — so the store stays bounded — and keeps what is still in use.

use std::time::Duration;

use agent_fleet::workflow::{
    Engine, EngineConfig, EngineError, Outcome, Status, StepCtx, StepResult, Workflow,
};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

#[path = "support/engine.rs"]
mod support;
use support::{T, fast_config, wait_status};

/// Waits for signals; `stop` completes it. Phase `open`, keyed by its name.
struct Box_;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BoxState {
    name: String,
    got: Vec<String>,
}

impl Workflow for Box_ {
    const NAME: &'static str = "box";
    const VERSION: u32 = 1;
    type State = BoxState;
    type Signal = String;

    fn phase(_: &BoxState) -> Option<String> {
        Some("open".into())
    }

    fn keys(s: &BoxState) -> Vec<String> {
        vec![format!("name/{}", s.name)]
    }

    async fn step(&self, ctx: &mut StepCtx<String>, mut s: BoxState) -> StepResult<BoxState> {
        for sig in ctx.take_all() {
            if sig == "stop" {
                return Ok(Outcome::complete(s));
            }
            s.got.push(sig);
        }
        Ok(Outcome::wait(s))
    }
}

const SHORT: Duration = Duration::from_millis(300);

async fn open(dir: &TempDir, retention: Option<Duration>, dedupe: Option<Duration>) -> Engine {
    let config = EngineConfig {
        retention,
        dedupe_window: dedupe,
        ..fast_config()
    };
    Engine::builder(dir.path().join("fleet.redb"))
        .config(config)
        .register(Box_)
        .open()
        .await
        .expect("engine opens")
}

async fn new_box(engine: &Engine, name: &str) -> u64 {
    let state = BoxState {
        name: name.into(),
        got: Vec::new(),
    };
    engine.start::<Box_>(&state, Some(name)).await.unwrap()
}

/// Commits something (pruning rides on commits) until `done`, for at most [`T`].
async fn commit_until(engine: &Engine, what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    let mut n = 0;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        n += 1;
        new_box(engine, &format!("tick-{n}")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_ended_instance_is_removed_after_the_retention_with_its_history_and_index_rows() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir, Some(SHORT), None).await;
    let ended = new_box(&engine, "ended").await;
    let live = new_box(&engine, "live").await;
    engine
        .signal::<Box_>(ended, &"stop".into(), "s")
        .await
        .unwrap();
    wait_status(&engine, ended, Status::Completed).await;
    wait_status(&engine, live, Status::Waiting).await;
    assert_eq!(engine.keyed("box", "name/ended").unwrap(), vec![ended]);

    commit_until(&engine, "the ended instance pruned", || {
        matches!(engine.info(ended), Err(EngineError::UnknownInstance(_)))
    })
    .await;
    assert!(matches!(
        engine.history(ended),
        Err(EngineError::UnknownInstance(_))
    ));
    assert_eq!(
        engine.keyed("box", "name/ended").unwrap(),
        Vec::<u64>::new()
    );
    let open_ids: Vec<u64> = engine
        .list_phase("box", "open", 0, 1000)
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert!(!open_ids.contains(&ended));
    // The live one is kept, whole.
    assert_eq!(engine.info(live).unwrap().status, Status::Waiting);
    assert!(open_ids.contains(&live));
    assert_eq!(engine.keyed("box", "name/live").unwrap(), vec![live]);
    assert!(!engine.history(live).unwrap().is_empty());
}

#[tokio::test]
async fn nothing_is_removed_without_a_retention() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir, None, None).await;
    let ended = new_box(&engine, "ended").await;
    engine
        .signal::<Box_>(ended, &"stop".into(), "s")
        .await
        .unwrap();
    wait_status(&engine, ended, Status::Completed).await;
    tokio::time::sleep(SHORT * 2).await;
    for n in 0..5 {
        new_box(&engine, &format!("tick-{n}")).await;
    }
    assert_eq!(engine.info(ended).unwrap().status, Status::Completed);
}

#[tokio::test]
async fn a_signal_key_is_forgotten_after_the_dedupe_window_but_a_live_instance_keeps_its_start_key()
{
    let dir = TempDir::new().unwrap();
    let engine = open(&dir, None, Some(SHORT)).await;
    let id = new_box(&engine, "kept").await;
    let first = engine.signal::<Box_>(id, &"a".into(), "k").await.unwrap();
    let again = engine.signal::<Box_>(id, &"a".into(), "k").await.unwrap();
    assert!(again.duplicate, "a repeat inside the window is a no-op");
    tokio::time::sleep(SHORT * 2).await;
    let mut later = engine.signal::<Box_>(id, &"a".into(), "k").await.unwrap();
    // Pruning rides on commits: the first commit after the window may come before it ran.
    let deadline = tokio::time::Instant::now() + T;
    while later.duplicate {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key never expired"
        );
        new_box(&engine, &format!("tick-{}", later.seq)).await;
        later = engine.signal::<Box_>(id, &"a".into(), "k").await.unwrap();
    }
    assert!(later.seq > first.seq, "a new signal after the window");
    // The instance has not ended: its start key still finds it.
    assert_eq!(engine.started("box", "kept").unwrap(), Some(id));
    let same = new_box(&engine, "kept").await;
    assert_eq!(same, id);
}

#[tokio::test]
async fn a_signal_sent_unkeyed_is_taken_every_time() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir, None, None).await;
    let id = new_box(&engine, "beats").await;
    for _ in 0..3 {
        let ack = engine
            .signal_unkeyed::<Box_>(id, &"beat".into(), "heartbeat")
            .await
            .unwrap();
        assert!(!ack.duplicate);
    }
    let deadline = tokio::time::Instant::now() + T;
    while engine.state::<Box_>(id).unwrap().got.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn feed_rows_are_removed_only_once_every_durable_consumer_has_passed_them() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir, Some(SHORT), None).await;
    let mut slow = engine.consumer("slow").await.unwrap();
    new_box(&engine, "a").await;
    let through = engine.feed_last();
    tokio::time::sleep(SHORT * 2).await;
    for n in 0..20 {
        new_box(&engine, &format!("tick-{n}")).await;
    }
    assert_eq!(
        engine.feed_page(0, 1).unwrap()[0].seq,
        1,
        "kept for the consumer"
    );
    slow.commit(through, Vec::new()).await.unwrap();
    commit_until(&engine, "rows the consumer passed pruned", || {
        engine.feed_page(0, 1).unwrap()[0].seq > through
    })
    .await;
    // Numbering goes on without reuse.
    let last = engine.feed_last();
    new_box(&engine, "after").await;
    assert_eq!(engine.feed_page(last, 1).unwrap()[0].seq, last + 1);
}
