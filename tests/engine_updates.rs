//! Updates (a signal answered by the step that takes it), steps woken by a signal while they
//! block, and definitions that upgrade the state of instances pinned to an older version.

use std::time::Duration;

use agent_fleet::workflow::codec::{CodecError, decode_value};
use agent_fleet::workflow::{EngineError, Outcome, Status, StepCtx, StepResult, Update, Workflow};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

#[path = "support/engine.rs"]
mod support;
use support::{T, builder, wait_status};

/// Answers `Ask(n)` with `n * 2` while open; `Close` completes it. A step parked with nothing
/// to do blocks on [`StepCtx::signalled`] instead of returning when `block` is set.
struct Doubler;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Ask {
    Double(u32),
    Close,
    Ignore,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Asked {
    answered: u32,
    block: bool,
    woken: u32,
}

impl Workflow for Doubler {
    const NAME: &'static str = "doubler";
    const VERSION: u32 = 1;
    type State = Asked;
    type Signal = Ask;

    async fn step(&self, ctx: &mut StepCtx<Ask>, mut s: Asked) -> StepResult<Asked> {
        if let Some(a) = ctx.take_inbound(|a| matches!(a, Ask::Double(_))) {
            if let Ask::Double(n) = a.signal {
                ctx.reply(a.seq, &(n * 2))?;
            }
            s.answered += 1;
            return Ok(Outcome::next(s));
        }
        if ctx.take(|a| *a == Ask::Ignore).is_some() {
            return Ok(Outcome::next(s));
        }
        if ctx.take(|a| *a == Ask::Close).is_some() {
            return Ok(Outcome::complete(s));
        }
        if s.block {
            // Stands for a step waiting on something else (a host slot): a signal ends it.
            tokio::select! {
                _ = ctx.signalled() => {}
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
            s.woken += 1;
            return Ok(Outcome::next(s));
        }
        Ok(Outcome::wait(s))
    }
}

async fn ask(engine: &agent_fleet::workflow::Engine, id: u64, n: u32, key: &str) -> Update<u32> {
    engine
        .update::<Doubler, u32>(id, &Ask::Double(n), key, T)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_update_returns_the_reply_of_the_step_that_took_it() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Doubler).open().await.unwrap();
    let id = engine
        .start::<Doubler>(&Asked::default(), None)
        .await
        .unwrap();
    assert_eq!(ask(&engine, id, 21, "a").await, Update::Replied(42));
    assert_eq!(ask(&engine, id, 5, "b").await, Update::Replied(10));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_redelivered_update_gets_the_first_answer_and_runs_no_step() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Doubler).open().await.unwrap();
    let id = engine
        .start::<Doubler>(&Asked::default(), None)
        .await
        .unwrap();
    assert_eq!(ask(&engine, id, 21, "same").await, Update::Replied(42));
    // Same key, another payload: the first answer, and the step did not run again.
    assert_eq!(ask(&engine, id, 1, "same").await, Update::Replied(42));
    assert_eq!(engine.state::<Doubler>(id).unwrap().answered, 1);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_answer_survives_a_restart() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Doubler).open().await.unwrap();
    let id = engine
        .start::<Doubler>(&Asked::default(), None)
        .await
        .unwrap();
    assert_eq!(ask(&engine, id, 4, "k").await, Update::Replied(8));
    engine.shutdown().await.unwrap();
    drop(engine);
    let engine = builder(&dir).register(Doubler).open().await.unwrap();
    assert_eq!(ask(&engine, id, 4, "k").await, Update::Replied(8));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_signal_taken_without_a_reply_is_unanswered() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Doubler).open().await.unwrap();
    let id = engine
        .start::<Doubler>(&Asked::default(), None)
        .await
        .unwrap();
    let answer = engine
        .update::<Doubler, u32>(id, &Ask::Ignore, "i", T)
        .await
        .unwrap();
    assert_eq!(answer, Update::Unanswered);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_update_to_an_instance_that_ends_first_says_it_ended() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Doubler).open().await.unwrap();
    let id = engine
        .start::<Doubler>(&Asked::default(), None)
        .await
        .unwrap();
    wait_status(&engine, id, Status::Waiting).await;
    engine.cancel(id, "test").await.unwrap();
    engine.wait_terminal(id, T).await.unwrap();
    let err = engine
        .update::<Doubler, u32>(id, &Ask::Double(1), "late", T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Finished {
                status: Status::Cancelled,
                ..
            }
        ),
        "{err}"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_update_sent_to_a_stopped_engine_fails_clearly_and_can_be_sent_again() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Doubler).open().await.unwrap();
    let id = engine
        .start::<Doubler>(&Asked::default(), None)
        .await
        .unwrap();
    wait_status(&engine, id, Status::Waiting).await;
    engine.shutdown().await.unwrap();
    let answer = engine
        .update::<Doubler, u32>(id, &Ask::Double(3), "slow", Duration::from_millis(50))
        .await;
    // A stopped engine takes no signal at all: a clear error, never a hang.
    assert!(answer.is_err());
    drop(engine);
    let engine = builder(&dir).register(Doubler).open().await.unwrap();
    assert_eq!(ask(&engine, id, 3, "slow").await, Update::Replied(6));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_blocked_step_is_woken_by_a_signal_committed_while_it_runs() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Doubler).open().await.unwrap();
    let state = Asked {
        block: true,
        ..Asked::default()
    };
    let id = engine.start::<Doubler>(&state, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.info(id).unwrap().status, Status::Runnable);
    // The step blocks for an hour unless the signal wakes it.
    assert_eq!(ask(&engine, id, 7, "wake").await, Update::Replied(14));
    assert!(engine.state::<Doubler>(id).unwrap().woken >= 1);
    engine.cancel(id, "done").await.unwrap();
    engine.shutdown().await.unwrap();
}

// ---- upgrades ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CountV1 {
    count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CountV2 {
    count: u32,
    label: String,
}

struct CounterV1;
struct CounterV2;

impl Workflow for CounterV1 {
    const NAME: &'static str = "counter";
    const VERSION: u32 = 1;
    type State = CountV1;
    type Signal = ();
    async fn step(&self, ctx: &mut StepCtx<()>, mut s: CountV1) -> StepResult<CountV1> {
        if ctx.take(|_| true).is_some() {
            s.count += 1;
        }
        Ok(Outcome::wait(s))
    }
}

impl Workflow for CounterV2 {
    const NAME: &'static str = "counter";
    const VERSION: u32 = 2;
    type State = CountV2;
    type Signal = ();
    const UPGRADES_FROM: &'static [u32] = &[1];

    fn upgrade(from: u32, state: &[u8]) -> Result<CountV2, CodecError> {
        assert_eq!(from, 1);
        let old: CountV1 = decode_value("workflow state", state)?;
        Ok(CountV2 {
            count: old.count,
            label: "upgraded".into(),
        })
    }

    async fn step(&self, ctx: &mut StepCtx<()>, mut s: CountV2) -> StepResult<CountV2> {
        if ctx.take(|_| true).is_some() {
            s.count += 10;
            return Ok(Outcome::complete(s));
        }
        Ok(Outcome::wait(s))
    }
}

#[tokio::test]
async fn a_new_definition_upgrades_the_state_of_an_old_instance_and_repins_it() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(CounterV1).open().await.unwrap();
    let id = engine
        .start::<CounterV1>(&CountV1 { count: 0 }, None)
        .await
        .unwrap();
    engine.signal::<CounterV1>(id, &(), "one").await.unwrap();
    wait_status(&engine, id, Status::Waiting).await;
    engine.shutdown().await.unwrap();
    drop(engine);
    // Only v2 is registered: it reads v1's state through `upgrade`.
    let engine = builder(&dir).register(CounterV2).open().await.unwrap();
    let state = engine.state::<CounterV2>(id).unwrap();
    assert_eq!((state.count, state.label.as_str()), (1, "upgraded"));
    engine.signal::<CounterV2>(id, &(), "two").await.unwrap();
    assert_eq!(
        engine.wait_terminal(id, T).await.unwrap(),
        Status::Completed
    );
    let info = engine.info(id).unwrap();
    assert_eq!(info.def_version, 2, "re-pinned by its first v2 step");
    assert_eq!(engine.state::<CounterV2>(id).unwrap().count, 11);
    engine.shutdown().await.unwrap();
}
