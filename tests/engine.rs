//! The durable engine's guarantees (SPEC §3), one behaviour per test, on a real redb file.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agent_fleet::workflow::{
    CancelAck, Delivery, Effect, EffectError, EffectHandler, Engine, EngineConfig, EngineError,
    EventKind, Intent, Outcome, Status, StepCtx, StepError, StepResult, Timestamp, Workflow,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

#[path = "support/engine.rs"]
mod support;
use support::{T, builder, events, fast_config, wait_status};

// ---- workflows used by the tests --------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
enum Sig {
    Go(u32),
    Other(String),
}

/// Waits for `Go` signals until their values add up to `target`, then completes.
/// Each step that takes a signal also queues a `count` effect.
struct Adder;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct AddState {
    target: u32,
    sum: u32,
    deadline: Option<Timestamp>,
    timed_out: bool,
}

impl Workflow for Adder {
    const NAME: &'static str = "adder";
    const VERSION: u32 = 1;
    type State = AddState;
    type Signal = Sig;

    async fn step(&self, ctx: &mut StepCtx<Sig>, mut s: AddState) -> StepResult<AddState> {
        if let Some(d) = s.deadline
            && ctx.now() >= d
        {
            s.timed_out = true;
            return Ok(Outcome::complete(s).note("deadline passed"));
        }
        if let Some(Sig::Go(n)) = ctx.take(|g| matches!(g, Sig::Go(_))) {
            s.sum += n;
            let fx = Effect::new("count", &n)?;
            if s.sum >= s.target {
                return Ok(Outcome::complete(s).effect(fx));
            }
            return Ok(Outcome::next(s).effect(fx));
        }
        Ok(match s.deadline {
            Some(d) => Outcome::wait_until(s, d),
            None => Outcome::wait(s),
        })
    }
}

/// Records every delivery; fails the first `fail_first` attempts of each key.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<std::sync::Mutex<Vec<(String, u32, u32)>>>,
    fail_first: u32,
}

impl EffectHandler for Recorder {
    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), EffectError>> {
        Box::pin(async move {
            let n: u32 = d
                .decode()
                .map_err(|e| EffectError::Permanent(e.to_string()))?;
            self.seen
                .lock()
                .unwrap()
                .push((d.key.to_string(), d.attempt, n));
            if d.attempt < self.fail_first {
                return Err(EffectError::Transient("forge is down".into()));
            }
            Ok(())
        })
    }
}

async fn open_adder(dir: &TempDir, rec: &Recorder) -> Engine {
    builder(dir)
        .register(Adder)
        .handler("count", rec.clone())
        .open()
        .await
        .expect("engine opens")
}

/// Starts an `Adder` that completes when its signals add up to `target` (or at `deadline`).
async fn start_adder(engine: &Engine, target: u32, deadline: Option<Timestamp>) -> u64 {
    let state = AddState {
        target,
        deadline,
        ..Default::default()
    };
    engine.start::<Adder>(&state, None).await.unwrap()
}

// ---- 1. atomic transitions -----------------------------------------------------------------

#[tokio::test]
async fn transition_commits_state_history_timer_and_effect_together() {
    let dir = TempDir::new().unwrap();
    let rec = Recorder::default();
    let engine = open_adder(&dir, &rec).await;
    let deadline = Timestamp::now().after(Duration::from_secs(3600));
    let id = start_adder(&engine, 5, Some(deadline)).await;
    wait_status(&engine, id, Status::Waiting).await;
    engine.signal::<Adder>(id, &Sig::Go(2), "k1").await.unwrap();
    // After the signal: one step took it (state), queued an effect, and waited again with the
    // same absolute deadline (timer).
    let deadline_again = tokio::time::Instant::now() + T;
    while engine.state::<Adder>(id).unwrap().sum != 2
        || engine.info(id).unwrap().status != Status::Waiting
    {
        assert!(tokio::time::Instant::now() < deadline_again);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let info = engine.info(id).unwrap();
    assert_eq!(info.wake_at, Some(deadline));
    let ev = events(&engine, id);
    let consumed = ev
        .iter()
        .position(|e| matches!(e, EventKind::SignalConsumed { .. }))
        .unwrap();
    assert!(
        matches!(ev[consumed + 1], EventKind::Step { ref outcome, .. } if outcome == "continue")
    );
    assert!(
        matches!(ev[consumed + 2], EventKind::EffectQueued { ref kind, .. } if kind == "count")
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn refused_request_fails_only_its_own_caller() {
    let dir = TempDir::new().unwrap();
    let rec = Recorder::default();
    let engine = open_adder(&dir, &rec).await;
    let id = start_adder(&engine, 100, None).await;
    wait_status(&engine, id, Status::Waiting).await;
    let commits_before = engine.commits();
    // Submitted together: the bad ones are refused, the good ones commit, in few transactions.
    let mut handles = Vec::new();
    for i in 0..50u32 {
        let e = engine.clone();
        let target = if i % 2 == 0 { id } else { 999_999 };
        handles.push(tokio::spawn(async move {
            e.signal::<Adder>(target, &Sig::Other(i.to_string()), &format!("k{i}"))
                .await
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(EngineError::UnknownInstance(999_999)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(ok, 25);
    assert_eq!(engine.info(id).unwrap().pending_signals, 25);
    assert!(engine.commits() - commits_before < 50);
    engine.shutdown().await.unwrap();
}

// ---- 2. durable signals --------------------------------------------------------------------

#[tokio::test]
async fn duplicate_signal_key_is_a_noop_that_still_succeeds() {
    let dir = TempDir::new().unwrap();
    let rec = Recorder::default();
    let engine = open_adder(&dir, &rec).await;
    let id = start_adder(&engine, 3, None).await;
    let first = engine
        .signal::<Adder>(id, &Sig::Go(1), "delivery-1")
        .await
        .unwrap();
    let again = engine
        .signal::<Adder>(id, &Sig::Go(1), "delivery-1")
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.seq, again.seq);
    engine
        .signal::<Adder>(id, &Sig::Go(2), "delivery-2")
        .await
        .unwrap();
    assert_eq!(
        engine.wait_terminal(id, T).await.unwrap(),
        Status::Completed
    );
    assert_eq!(engine.state::<Adder>(id).unwrap().sum, 3);
    // Redelivery after the instance ended still answers success.
    assert!(
        engine
            .signal::<Adder>(id, &Sig::Go(1), "delivery-1")
            .await
            .unwrap()
            .duplicate
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn signal_sent_before_the_workflow_waits_is_kept() {
    let dir = TempDir::new().unwrap();
    let rec = Recorder::default();
    let engine = open_adder(&dir, &rec).await;
    // `Other` is never taken by Adder: it must stay in the inbox, not be dropped, while the
    // `Go` sent in the same breath is taken.
    let id = start_adder(&engine, 4, None).await;
    engine
        .signal::<Adder>(id, &Sig::Other("early".into()), "a")
        .await
        .unwrap();
    engine.signal::<Adder>(id, &Sig::Go(4), "b").await.unwrap();
    assert_eq!(
        engine.wait_terminal(id, T).await.unwrap(),
        Status::Completed
    );
    let ev = events(&engine, id);
    assert!(ev.contains(&EventKind::SignalConsumed { seq: 1 }));
    assert!(
        ev.iter()
            .any(|e| matches!(e, EventKind::SignalDiscarded { seq: 0, .. })),
        "untaken signal is recorded when the instance ends: {ev:?}"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn signal_kept_across_a_restart() {
    let dir = TempDir::new().unwrap();
    let rec = Recorder::default();
    let engine = open_adder(&dir, &rec).await;
    let id = start_adder(&engine, 9, None).await;
    wait_status(&engine, id, Status::Waiting).await;
    engine.shutdown().await.unwrap();
    drop(engine);
    let engine = open_adder(&dir, &rec).await;
    engine.signal::<Adder>(id, &Sig::Go(9), "x").await.unwrap();
    assert_eq!(
        engine.wait_terminal(id, T).await.unwrap(),
        Status::Completed
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn signal_to_unknown_instance_is_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let engine = open_adder(&dir, &Recorder::default()).await;
    let err = engine
        .signal::<Adder>(42, &Sig::Go(1), "k")
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::UnknownInstance(42)));
    assert_eq!(err.to_string(), "unknown workflow instance 42");
    engine.shutdown().await.unwrap();
}

// ---- 4. durable timers ---------------------------------------------------------------------

#[tokio::test]
async fn overdue_timer_fires_right_after_restart() {
    let dir = TempDir::new().unwrap();
    let rec = Recorder::default();
    let engine = open_adder(&dir, &rec).await;
    let deadline = Timestamp::now().after(Duration::from_millis(400));
    let id = start_adder(&engine, 1, Some(deadline)).await;
    wait_status(&engine, id, Status::Waiting).await;
    engine.shutdown().await.unwrap();
    drop(engine);
    tokio::time::sleep(Duration::from_millis(600)).await; // the deadline passes while stopped
    let engine = open_adder(&dir, &rec).await;
    assert_eq!(
        engine
            .wait_terminal(id, Duration::from_secs(2))
            .await
            .unwrap(),
        Status::Completed
    );
    let s = engine.state::<Adder>(id).unwrap();
    assert!(s.timed_out);
    assert!(events(&engine, id).contains(&EventKind::TimerFired { due: deadline }));
    engine.shutdown().await.unwrap();
}

// ---- 5. outbox -----------------------------------------------------------------------------

#[tokio::test]
async fn effect_is_retried_with_backoff_until_delivered_under_one_key() {
    let dir = TempDir::new().unwrap();
    let rec = Recorder {
        fail_first: 3,
        ..Default::default()
    };
    let engine = open_adder(&dir, &rec).await;
    let id = start_adder(&engine, 7, None).await;
    engine.signal::<Adder>(id, &Sig::Go(7), "s").await.unwrap();
    engine.wait_terminal(id, T).await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while !events(&engine, id)
        .iter()
        .any(|e| matches!(e, EventKind::EffectDelivered { .. }))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "effect never delivered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|(k, _, n)| *k == seen[0].0 && *n == 7));
    assert_eq!(
        seen.iter().map(|(_, a, _)| *a).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert!(events(&engine, id).contains(&EventKind::EffectDelivered {
        effect: 1,
        attempts: 4
    }));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn pending_effect_is_delivered_after_restart() {
    let dir = TempDir::new().unwrap();
    let failing = Recorder {
        fail_first: u32::MAX,
        ..Default::default()
    };
    let engine = open_adder(&dir, &failing).await;
    let id = start_adder(&engine, 1, None).await;
    engine.signal::<Adder>(id, &Sig::Go(1), "s").await.unwrap();
    engine.wait_terminal(id, T).await.unwrap();
    engine.shutdown().await.unwrap();
    drop(engine);
    let rec = Recorder::default();
    let engine = open_adder(&dir, &rec).await;
    assert_eq!(engine.recovery().pending_effects, 1);
    let deadline = tokio::time::Instant::now() + T;
    while rec.seen.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        rec.seen.lock().unwrap()[0].0,
        failing.seen.lock().unwrap()[0].0,
        "same effect key after restart"
    );
    engine.shutdown().await.unwrap();
}

// ---- 3. intents and reconcile --------------------------------------------------------------

/// Launches something once: records an intent, then (first run only) hangs as if the daemon
/// died before recording the result.
struct Launcher {
    hang: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct LaunchState {
    launched: u32,
    reconciled: bool,
}

static LAUNCHES: AtomicU32 = AtomicU32::new(0);

impl Workflow for Launcher {
    const NAME: &'static str = "launcher";
    const VERSION: u32 = 1;
    type State = LaunchState;
    type Signal = ();

    async fn step(&self, ctx: &mut StepCtx<()>, mut s: LaunchState) -> StepResult<LaunchState> {
        match ctx
            .intent::<String, u32>("launch", &"run-1".to_string())
            .await?
        {
            Intent::Fresh => {
                LAUNCHES.fetch_add(1, Ordering::SeqCst);
                s.launched += 1;
                if self.hang {
                    ctx.shutdown().cancelled().await;
                    return Err(StepError::msg("daemon stopping"));
                }
                ctx.resolve("launch", &s.launched).await?;
            }
            Intent::Unresolved(run) => {
                assert_eq!(run, "run-1");
                s.reconciled = true;
                ctx.resolve("launch", &1u32).await?;
            }
            Intent::Resolved(_) => {}
        }
        Ok(Outcome::complete(s))
    }
}

#[tokio::test]
async fn intent_without_result_is_reconciled_not_repeated_after_restart() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir)
        .register(Launcher { hang: true })
        .open()
        .await
        .unwrap();
    let id = engine
        .start::<Launcher>(&LaunchState::default(), None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while LAUNCHES.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.shutdown().await.unwrap(); // the step's outcome is never committed
    drop(engine);
    let engine = builder(&dir)
        .register(Launcher { hang: false })
        .open()
        .await
        .unwrap();
    assert_eq!(engine.recovery().instances, 1);
    assert_eq!(
        engine.wait_terminal(id, T).await.unwrap(),
        Status::Completed
    );
    let s = engine.state::<Launcher>(id).unwrap();
    assert!(s.reconciled);
    assert_eq!(LAUNCHES.load(Ordering::SeqCst), 1, "launched exactly once");
    let ev = events(&engine, id);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, EventKind::IntentRecorded { .. }))
            .count(),
        1
    );
    assert!(
        ev.iter()
            .any(|e| matches!(e, EventKind::IntentResolved { .. }))
    );
    engine.shutdown().await.unwrap();
}

// ---- 9. cancellation -----------------------------------------------------------------------

/// A step that runs until cancelled; cleanup reports what it stopped.
struct LongRun;

impl Workflow for LongRun {
    const NAME: &'static str = "long-run";
    const VERSION: u32 = 1;
    type State = u32;
    type Signal = ();

    async fn step(&self, ctx: &mut StepCtx<()>, s: u32) -> StepResult<u32> {
        if s == 0 {
            ctx.cancellation().cancelled().await;
            return Ok(Outcome::next(1).note("interrupted"));
        }
        Ok(Outcome::wait(s))
    }

    async fn cleanup(
        &self,
        _ctx: &mut StepCtx<()>,
        s: &u32,
        reason: &str,
    ) -> agent_fleet::workflow::Cleanup<u32> {
        format!("killed process group of run {s} ({reason})").into()
    }
}

#[tokio::test]
async fn cancel_reaches_the_running_step_and_records_cleanup() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(LongRun).open().await.unwrap();
    let id = engine.start::<LongRun>(&0, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        engine.cancel(id, "user asked").await.unwrap(),
        CancelAck::Requested
    );
    assert_eq!(
        engine.wait_terminal(id, T).await.unwrap(),
        Status::Cancelled
    );
    let ev = events(&engine, id);
    assert!(
        ev.contains(&EventKind::CleanedUp {
            report: "killed process group of run 1 (user asked)".into()
        }),
        "{ev:?}"
    );
    assert_eq!(ev.last(), Some(&EventKind::Cancelled));
    assert_eq!(
        engine.cancel(id, "again").await.unwrap(),
        CancelAck::AlreadyEnded(Status::Cancelled)
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_of_a_parked_instance_runs_cleanup() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(LongRun).open().await.unwrap();
    let id = engine.start::<LongRun>(&5, None).await.unwrap();
    wait_status(&engine, id, Status::Waiting).await;
    engine.cancel(id, "no longer needed").await.unwrap();
    assert_eq!(
        engine.wait_terminal(id, T).await.unwrap(),
        Status::Cancelled
    );
    assert!(
        events(&engine, id)
            .iter()
            .any(|e| matches!(e, EventKind::CleanedUp { report } if report.contains("run 5")))
    );
    engine.shutdown().await.unwrap();
}

/// A step that withdraws its own instance: it ends `cancelled` with its state and note, and
/// the cleanup (meant for cancels from outside) does not run.
struct Withdraws;

impl Workflow for Withdraws {
    const NAME: &'static str = "withdraws";
    const VERSION: u32 = 1;
    type State = u32;
    type Signal = ();

    async fn step(&self, _ctx: &mut StepCtx<()>, s: u32) -> StepResult<u32> {
        Ok(Outcome::cancel(s + 1, "the work was withdrawn"))
    }

    async fn cleanup(
        &self,
        _ctx: &mut StepCtx<()>,
        _s: &u32,
        _reason: &str,
    ) -> agent_fleet::workflow::Cleanup<u32> {
        agent_fleet::workflow::Cleanup::report("cleanup ran")
    }
}

#[tokio::test]
async fn a_step_can_end_its_instance_cancelled() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Withdraws).open().await.unwrap();
    let id = engine.start::<Withdraws>(&1, None).await.unwrap();
    assert_eq!(
        engine.wait_terminal(id, T).await.unwrap(),
        Status::Cancelled
    );
    assert_eq!(engine.state::<Withdraws>(id).unwrap(), 2);
    let ev = events(&engine, id);
    assert_eq!(ev.last(), Some(&EventKind::Cancelled));
    assert!(
        !ev.iter().any(|e| matches!(e, EventKind::CleanedUp { .. })),
        "{ev:?}"
    );
    assert!(
        format!("{ev:?}").contains("the work was withdrawn"),
        "{ev:?}"
    );
    engine.shutdown().await.unwrap();
}

// ---- 10. definition versions ---------------------------------------------------------------

struct FlowV1;
struct FlowV2;

impl Workflow for FlowV1 {
    const NAME: &'static str = "flow";
    const VERSION: u32 = 1;
    type State = Vec<String>;
    type Signal = ();
    async fn step(&self, ctx: &mut StepCtx<()>, mut s: Vec<String>) -> StepResult<Vec<String>> {
        if ctx.take(|_| true).is_some() {
            s.push("v1 finished".into());
            return Ok(Outcome::complete(s));
        }
        s.push("v1 waiting".into());
        Ok(Outcome::wait(s))
    }
}

impl Workflow for FlowV2 {
    const NAME: &'static str = "flow";
    const VERSION: u32 = 2;
    type State = Vec<String>;
    type Signal = ();
    async fn step(&self, _ctx: &mut StepCtx<()>, mut s: Vec<String>) -> StepResult<Vec<String>> {
        s.push("v2".into());
        Ok(Outcome::complete(s))
    }
}

#[tokio::test]
async fn instance_stays_pinned_to_the_version_it_started_on() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(FlowV1).open().await.unwrap();
    let old = engine.start::<FlowV1>(&vec![], None).await.unwrap();
    wait_status(&engine, old, Status::Waiting).await;
    engine.shutdown().await.unwrap();
    drop(engine);
    // The upgraded daemon knows both versions; new instances start on v2.
    let engine = builder(&dir)
        .register(FlowV1)
        .register(FlowV2)
        .open()
        .await
        .unwrap();
    let new = engine.start::<FlowV2>(&vec![], None).await.unwrap();
    assert_eq!(
        engine.wait_terminal(new, T).await.unwrap(),
        Status::Completed
    );
    engine.signal::<FlowV2>(old, &(), "go").await.unwrap();
    assert_eq!(
        engine.wait_terminal(old, T).await.unwrap(),
        Status::Completed
    );
    assert_eq!(
        engine.state::<FlowV1>(old).unwrap(),
        vec!["v1 waiting", "v1 finished"]
    );
    assert_eq!(engine.info(old).unwrap().def_version, 1);
    assert_eq!(engine.state::<FlowV2>(new).unwrap(), vec!["v2"]);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn instance_of_an_unregistered_version_is_left_untouched() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(FlowV1).open().await.unwrap();
    let old = engine.start::<FlowV1>(&vec![], None).await.unwrap();
    wait_status(&engine, old, Status::Waiting).await;
    engine.shutdown().await.unwrap();
    drop(engine);
    let engine = builder(&dir).register(FlowV2).open().await.unwrap();
    engine.signal::<FlowV2>(old, &(), "go").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let info = engine.info(old).unwrap();
    assert!(!info.status.is_terminal(), "never failed or lost: {info:?}");
    let err = engine.start::<FlowV1>(&vec![], None).await.unwrap_err();
    assert!(matches!(
        err,
        EngineError::UnknownDefinition { version: 1, .. }
    ));
    engine.shutdown().await.unwrap();
}

// ---- 6. group commit -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_far_fewer_transactions() {
    let dir = TempDir::new().unwrap();
    let engine = open_adder(&dir, &Recorder::default()).await;
    let before = engine.commits();
    let ops_before = engine.committed_ops();
    let mut handles = Vec::new();
    for i in 0..1000u32 {
        let e = engine.clone();
        handles.push(tokio::spawn(async move {
            e.start::<Adder>(
                &AddState {
                    target: 1000,
                    ..Default::default()
                },
                Some(&i.to_string()),
            )
            .await
        }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    let commits = engine.commits() - before;
    let ops = engine.committed_ops() - ops_before;
    assert!(ops >= 1000, "every start is an op ({ops})");
    assert!(
        commits * 5 < ops,
        "{ops} requests took {commits} transactions"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn repeated_start_key_returns_the_same_instance() {
    let dir = TempDir::new().unwrap();
    let engine = open_adder(&dir, &Recorder::default()).await;
    let a = engine
        .start::<Adder>(&AddState::default(), Some("issue-7"))
        .await
        .unwrap();
    let b = engine
        .start::<Adder>(&AddState::default(), Some("issue-7"))
        .await
        .unwrap();
    assert_eq!(a, b);
    engine.shutdown().await.unwrap();
}

/// A once-key (a caller's own idempotency key: a webhook delivery id, say) guards whichever op
/// comes first, start or signal, across a restart; nothing is done for it twice.
#[tokio::test]
async fn a_once_key_guards_one_op_of_any_kind_across_a_restart() {
    let dir = TempDir::new().unwrap();
    let rec = Recorder::default();
    let engine = open_adder(&dir, &rec).await;
    assert!(!engine.once_seen("delivery-1").unwrap());
    let started = engine
        .start_once::<Adder>(
            &AddState {
                target: 5,
                ..Default::default()
            },
            None,
            "delivery-1",
        )
        .await
        .unwrap()
        .expect("a new once-key starts the instance");
    assert!(engine.once_seen("delivery-1").unwrap());
    let again = engine
        .start_once::<Adder>(&AddState::default(), Some("other-start-key"), "delivery-1")
        .await
        .unwrap();
    assert!(again.is_none(), "the once-key was used: nothing started");
    let signal = engine
        .signal_once::<Adder>(started.id, &Sig::Go(1), "go-1", "delivery-1")
        .await
        .unwrap();
    assert!(signal.is_none(), "nor signalled");
    engine.shutdown().await.unwrap();
    drop(engine);

    let engine = open_adder(&dir, &rec).await;
    assert!(
        engine.once_seen("delivery-1").unwrap(),
        "kept across a restart"
    );
    assert!(!engine.record_once("delivery-1").await.unwrap());
    let sent = engine
        .signal_once::<Adder>(started.id, &Sig::Go(5), "go-5", "delivery-2")
        .await
        .unwrap();
    assert!(sent.is_some_and(|a| !a.duplicate));
    assert_eq!(
        engine.wait_terminal(started.id, T).await.unwrap(),
        Status::Completed
    );
    assert_eq!(engine.state::<Adder>(started.id).unwrap().sum, 5);
    assert_eq!(
        engine.list().unwrap().len(),
        1,
        "one instance was ever started"
    );
    engine.shutdown().await.unwrap();
}

/// A refused op records nothing under its once-key: the key stays free for a later op.
#[tokio::test]
async fn a_refused_op_leaves_its_once_key_unused() {
    let dir = TempDir::new().unwrap();
    let engine = open_adder(&dir, &Recorder::default()).await;
    let err = engine
        .signal_once::<Adder>(999, &Sig::Go(1), "go", "delivery-9")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("999"), "{err}");
    assert!(!engine.once_seen("delivery-9").unwrap());
    assert!(engine.record_once("delivery-9").await.unwrap(), "new");
    assert!(!engine.record_once("delivery-9").await.unwrap(), "recorded");
    engine.shutdown().await.unwrap();
}

// ---- 8. bounded history, step errors -------------------------------------------------------

struct Counter;

impl Workflow for Counter {
    const NAME: &'static str = "counter";
    const VERSION: u32 = 1;
    type State = u32;
    type Signal = ();
    async fn step(&self, ctx: &mut StepCtx<()>, s: u32) -> StepResult<u32> {
        if s == 3 && ctx.errors() < 2 {
            return Err(StepError::msg("remote not reachable"));
        }
        Ok(if s >= 50 {
            Outcome::complete(s)
        } else {
            Outcome::next(s + 1).note("x".repeat(5000))
        })
    }
}

#[tokio::test]
async fn history_stays_bounded_and_notes_are_truncated() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir)
        .config(EngineConfig {
            history_cap: 20,
            ..fast_config()
        })
        .register(Counter)
        .open()
        .await
        .unwrap();
    let id = engine.start::<Counter>(&0, None).await.unwrap();
    assert_eq!(
        engine.wait_terminal(id, T).await.unwrap(),
        Status::Completed
    );
    let h = engine.history(id).unwrap();
    assert_eq!(h.len(), 20);
    assert_eq!(h.last().unwrap().1.kind, EventKind::Completed);
    assert!(
        h.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "contiguous sequence numbers"
    );
    for (_, e) in &h {
        if let EventKind::Step { note: Some(n), .. } = &e.kind {
            assert!(n.len() < 1100, "note kept short");
        }
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn failing_step_is_retried_from_the_last_committed_state() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Counter).open().await.unwrap();
    let id = engine.start::<Counter>(&0, None).await.unwrap();
    assert_eq!(
        engine.wait_terminal(id, T).await.unwrap(),
        Status::Completed
    );
    assert_eq!(engine.state::<Counter>(id).unwrap(), 50);
    let errors = events(&engine, id)
        .into_iter()
        .filter(
            |e| matches!(e, EventKind::StepError { error, .. } if error == "remote not reachable"),
        )
        .count();
    assert_eq!(errors, 2);
    engine.shutdown().await.unwrap();
}

// ---- 7. versioned records, bad input -------------------------------------------------------

#[tokio::test]
async fn record_with_unknown_schema_version_is_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("fleet.redb");
    let engine = open_adder(&dir, &Recorder::default()).await;
    let id = engine
        .start::<Adder>(&AddState::default(), None)
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
    drop(engine);
    {
        use redb::{ReadableTable, TableDefinition};
        // Records and history (see `src/workflow/store.rs`): a record is at (id, u64::MAX).
        let table: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("instance_rows");
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(table).unwrap();
            let mut bytes = t.get((id, u64::MAX)).unwrap().unwrap().value().to_vec();
            bytes[0] = 99;
            t.insert((id, u64::MAX), bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = builder(&dir)
        .register(Adder)
        .open()
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("instance {id}")) && msg.contains("schema version 99"),
        "{msg}"
    );
}

#[tokio::test]
async fn truncated_store_file_is_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("fleet.redb");
    let engine = open_adder(&dir, &Recorder::default()).await;
    for i in 0..50 {
        engine
            .start::<Adder>(&AddState::default(), Some(&i.to_string()))
            .await
            .unwrap();
    }
    engine.shutdown().await.unwrap();
    drop(engine);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    let err = builder(&dir)
        .register(Adder)
        .open()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("fleet.redb"), "{err}");
}

#[tokio::test]
async fn garbage_store_file_is_a_clear_error() {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("fleet.redb"), vec![0x5a; 64 * 1024]).unwrap();
    let err = builder(&dir)
        .register(Adder)
        .open()
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .starts_with("store error: cannot open store"),
        "{err}"
    );
}

#[tokio::test]
async fn store_of_a_newer_format_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("fleet.redb");
    let engine = open_adder(&dir, &Recorder::default()).await;
    engine.shutdown().await.unwrap();
    drop(engine);
    {
        let table: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(table).unwrap().insert("format", 99).unwrap();
        txn.commit().unwrap();
    }
    let err = builder(&dir)
        .register(Adder)
        .open()
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("written by a newer agent-fleet (store format 99"),
        "{err}"
    );
}
