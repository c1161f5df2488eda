//! The engine's change feed (issue 15 §1): one gap-free sequence of committed changes that any
//! reader can follow from any cursor, and durable consumers that resume exactly after a crash.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_fleet::workflow::{
    Delivery, Effect, EffectError, EffectHandler, Engine, EngineError, FeedEvent, FeedRow, Outcome,
    Status, StepCtx, StepResult, Workflow,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

#[path = "support/engine.rs"]
mod support;
use support::{T, builder, wait_status};

/// Counts `Add` signals up to `target`, then completes; its phase is `counting` or `done`.
struct Tally;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Add(u32);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TallyState {
    target: u32,
    sum: u32,
}

impl Workflow for Tally {
    const NAME: &'static str = "tally";
    const VERSION: u32 = 1;
    type State = TallyState;
    type Signal = Add;

    fn phase(state: &TallyState) -> Option<String> {
        Some(
            if state.sum >= state.target {
                "done"
            } else {
                "counting"
            }
            .to_string(),
        )
    }

    async fn step(&self, ctx: &mut StepCtx<Add>, mut s: TallyState) -> StepResult<TallyState> {
        while let Some(Add(n)) = ctx.take(|_| true) {
            s.sum += n;
        }
        Ok(if s.sum >= s.target {
            Outcome::complete(s)
        } else {
            Outcome::wait(s)
        })
    }
}

/// Records every delivered `note` effect's payload.
#[derive(Clone, Default)]
struct Notes(Arc<Mutex<Vec<String>>>);

impl EffectHandler for Notes {
    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), EffectError>> {
        Box::pin(async move {
            let text: String = d
                .decode()
                .map_err(|e| EffectError::Permanent(e.to_string()))?;
            self.0.lock().unwrap().push(text);
            Ok(())
        })
    }
}

async fn open(dir: &TempDir, notes: &Notes) -> Engine {
    builder(dir)
        .register(Tally)
        .handler("note", notes.clone())
        .open()
        .await
        .expect("engine opens")
}

async fn tally(engine: &Engine, target: u32) -> u64 {
    let state = TallyState { target, sum: 0 };
    engine.start::<Tally>(&state, None).await.unwrap()
}

/// The last stored row's number, once it is published (just after its commit).
async fn last_row(engine: &Engine) -> u64 {
    let stored = engine
        .feed_page(0, usize::MAX)
        .unwrap()
        .last()
        .map_or(0, |r| r.seq);
    let deadline = tokio::time::Instant::now() + T;
    while engine.feed_last() < stored {
        assert!(tokio::time::Instant::now() < deadline, "never published");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stored
}

fn kinds(rows: &[FeedRow], id: u64) -> Vec<&'static str> {
    rows.iter()
        .filter(|r| r.instance == id)
        .map(|r| r.event.kind())
        .collect()
}

#[tokio::test]
async fn every_change_of_an_instance_is_one_row_numbered_without_gaps_in_commit_order() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir, &Notes::default()).await;
    let id = tally(&engine, 3).await;
    engine.signal::<Tally>(id, &Add(1), "a").await.unwrap();
    engine.signal::<Tally>(id, &Add(2), "b").await.unwrap();
    wait_status(&engine, id, Status::Completed).await;

    let rows = engine.feed_page(0, 1000).unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=rows.len() as u64).collect::<Vec<_>>());
    // The last row's number is published just after its commit.
    let deadline = tokio::time::Instant::now() + T;
    while engine.feed_last() < rows.len() as u64 {
        assert!(tokio::time::Instant::now() < deadline, "never published");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(engine.feed_last(), rows.len() as u64);
    let first = &rows[0];
    assert_eq!(first.event, FeedEvent::Started);
    assert_eq!(first.workflow, "tally");
    assert_eq!(first.phase.as_deref(), Some("counting"));
    let last = rows.last().unwrap();
    assert_eq!(last.event.kind(), "step");
    assert_eq!(last.status, Status::Completed);
    assert_eq!(last.phase.as_deref(), Some("done"));
    let k = kinds(&rows, id);
    assert_eq!(k.iter().filter(|k| **k == "signal").count(), 2, "{k:?}");
    assert!(rows.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test]
async fn a_refused_op_writes_no_row() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir, &Notes::default()).await;
    let id = tally(&engine, 1).await;
    engine.signal::<Tally>(id, &Add(1), "a").await.unwrap();
    wait_status(&engine, id, Status::Completed).await;
    let before = last_row(&engine).await;
    let late = engine.signal::<Tally>(id, &Add(1), "late").await;
    assert!(
        matches!(late, Err(EngineError::Finished { .. })),
        "{late:?}"
    );
    engine.signal::<Tally>(id, &Add(1), "a").await.unwrap(); // a duplicate: nothing new
    assert_eq!(engine.feed_last(), before);
    assert_eq!(engine.feed_page(before, 10).unwrap(), vec![]);
}

#[tokio::test]
async fn numbering_goes_on_after_a_restart_and_old_rows_read_the_same() {
    let dir = TempDir::new().unwrap();
    let notes = Notes::default();
    let engine = open(&dir, &notes).await;
    let id = tally(&engine, 5).await;
    engine.signal::<Tally>(id, &Add(1), "a").await.unwrap();
    wait_status(&engine, id, Status::Waiting).await;
    let before = engine.feed_page(0, 1000).unwrap();
    engine.shutdown().await.unwrap();
    drop(engine);

    let engine = open(&dir, &notes).await;
    // The same rows; when their commits were durable is known only to the engine that made them.
    let forgotten: Vec<FeedRow> = before
        .into_iter()
        .map(|r| FeedRow {
            durable_at: None,
            ..r
        })
        .collect();
    assert_eq!(engine.feed_page(0, 1000).unwrap(), forgotten);
    let before = forgotten;
    assert_eq!(engine.feed_last(), before.len() as u64);
    engine.signal::<Tally>(id, &Add(4), "b").await.unwrap();
    wait_status(&engine, id, Status::Completed).await;
    let after = engine.feed_page(before.len() as u64, 1000).unwrap();
    assert_eq!(after[0].seq, before.len() as u64 + 1);
    assert_eq!(after[0].event, FeedEvent::Signal { key: "b".into() });
}

#[tokio::test]
async fn rows_of_this_engine_s_commits_tell_when_each_commit_was_durable() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir, &Notes::default()).await;
    let id = tally(&engine, 5).await;
    engine.signal::<Tally>(id, &Add(5), "a").await.unwrap();
    wait_status(&engine, id, Status::Completed).await;
    let rows = engine.feed_page(0, 1000).unwrap();
    assert!(rows.len() >= 3, "{rows:#?}");
    for row in &rows {
        let durable = row.durable_at.expect("a row of this engine's commits");
        let began = std::time::UNIX_EPOCH + Duration::from_millis(row.at.0);
        assert!(durable >= began, "{row:#?}");
    }
    // Rows of one commit share its time, and a later commit is not durable before an earlier one.
    for pair in rows.windows(2) {
        assert!(pair[1].durable_at >= pair[0].durable_at, "{rows:#?}");
    }
}

#[tokio::test]
async fn a_reader_waits_for_the_next_commit_and_a_late_one_loses_nothing() {
    let dir = TempDir::new().unwrap();
    let engine = open(&dir, &Notes::default()).await;
    let mut live = Box::pin(engine.feed(engine.feed_last()));
    let waiting = tokio::time::timeout(Duration::from_millis(100), live.next()).await;
    assert!(waiting.is_err(), "no row before a commit: {waiting:?}");

    // A reader that does not read while thousands of rows commit.
    let mut late = Box::pin(engine.feed(0));
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(tally(&engine, 1).await);
    }
    for id in &ids {
        engine.signal::<Tally>(*id, &Add(1), "go").await.unwrap();
    }
    for id in &ids {
        wait_status(&engine, *id, Status::Completed).await;
    }
    let first = tokio::time::timeout(T, live.next()).await.unwrap().unwrap();
    assert_eq!(first.unwrap().event, FeedEvent::Started);
    let last = last_row(&engine).await;
    assert!(last > 1000, "{last} rows");
    let mut seq = 0;
    while seq < last {
        let row = tokio::time::timeout(T, late.next()).await.unwrap().unwrap();
        let row = row.unwrap();
        assert_eq!(row.seq, seq + 1, "rows in order, none missing");
        seq = row.seq;
    }
}

/// A consumer that queues one `note` effect per started row it reads.
async fn consume_starts(engine: &Engine, limit: usize) -> Result<u64, EngineError> {
    let mut consumer = engine.consumer("notifier").await?;
    let rows = consumer.next(limit).await?.expect("engine alive");
    let through = rows.last().map(|r| r.seq).unwrap_or(consumer.cursor());
    let effects = rows
        .iter()
        .filter(|r| r.event == FeedEvent::Started)
        .map(|r| {
            (
                r.instance,
                Effect::new("note", &format!("started {}", r.instance)).unwrap(),
            )
        })
        .collect();
    consumer.commit(through, effects).await?;
    Ok(through)
}

#[tokio::test]
async fn a_durable_consumer_resumes_after_its_last_commit_and_its_effects_are_queued_once() {
    let dir = TempDir::new().unwrap();
    let notes = Notes::default();
    let engine = open(&dir, &notes).await;
    let a = tally(&engine, 9).await;
    let b = tally(&engine, 9).await;
    // Reads both starts but "crashes" before committing: nothing is kept.
    let consumer = engine.consumer("notifier").await.unwrap();
    let read = consumer.next(10).await.unwrap().unwrap();
    assert_eq!(
        read.iter()
            .filter(|r| r.event == FeedEvent::Started)
            .count(),
        2
    );
    drop(consumer);
    engine.shutdown().await.unwrap();
    drop(engine);

    let engine = open(&dir, &notes).await;
    assert_eq!(engine.consumer("notifier").await.unwrap().cursor(), 0);
    let through = consume_starts(&engine, 1).await.unwrap();
    assert_eq!(through, 1);
    engine.shutdown().await.unwrap();
    drop(engine);

    let engine = open(&dir, &notes).await;
    assert_eq!(engine.consumer("notifier").await.unwrap().cursor(), 1);
    consume_starts(&engine, 10).await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while notes.0.lock().unwrap().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seen = notes.0.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, vec![format!("started {a}"), format!("started {b}")]);
    // The effects show in their instances' histories like a step's.
    let history = engine.history(a).unwrap();
    assert!(
        history
            .iter()
            .any(|(_, e)| matches!(&e.kind, agent_fleet::workflow::EventKind::EffectQueued { kind, .. } if kind == "note"))
    );
}

#[tokio::test]
async fn a_second_copy_of_a_consumer_is_refused_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let notes = Notes::default();
    let engine = open(&dir, &notes).await;
    let a = tally(&engine, 9).await;
    let mut one = engine.consumer("notifier").await.unwrap();
    let mut two = engine.consumer("notifier").await.unwrap();
    one.commit(1, Vec::new()).await.unwrap();
    let effect = Effect::new("note", &"twice".to_string()).unwrap();
    let refused = two.commit(1, vec![(a, effect)]).await;
    assert!(
        matches!(refused, Err(EngineError::ConsumerMoved { found: 1, .. })),
        "{refused:?}"
    );
    assert_eq!(engine.pending_effects().unwrap(), 0);
    // Nor can a consumer move past the feed's end.
    let past = one.commit(engine.feed_last() + 1, Vec::new()).await;
    assert!(
        matches!(past, Err(EngineError::ConsumerMoved { .. })),
        "{past:?}"
    );
    assert_eq!(engine.consumer("notifier").await.unwrap().cursor(), 1);
}
