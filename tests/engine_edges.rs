//! Edge cases of the durable engine found in review: each test is a scenario that once broke a
//! guarantee (described above it) and now must hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agent_fleet::workflow::record::MAX_NOTE;
use agent_fleet::workflow::{
    CancelAck, Delivery, Effect, EffectError, EffectHandler, EngineConfig, EventKind, Outcome,
    Status, StepCtx, StepResult, Workflow,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Deserializer, Serialize};
use tempfile::TempDir;

#[path = "support/engine.rs"]
mod support;
use support::{T, builder, events, fast_config, wait_status};

// ---- 1. cancel of an instance whose state no longer decodes: hot loop, never ends ------------

/// A state whose committed form can fail to decode (value 13 is refused on decode), standing in
/// for any state the definition cannot read back.
#[derive(Debug, Clone, Serialize)]
struct Touchy(u32);

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if v == 13 {
            return Err(serde::de::Error::custom("state 13 cannot be read"));
        }
        Ok(Touchy(v))
    }
}

struct Poisoned;

impl Workflow for Poisoned {
    const NAME: &'static str = "poisoned";
    const VERSION: u32 = 1;
    type State = Touchy;
    type Signal = ();
    async fn step(&self, _ctx: &mut StepCtx<()>, _s: Touchy) -> StepResult<Touchy> {
        Ok(Outcome::wait(Touchy(13)))
    }
}

/// Scenario: the committed state does not decode; a cancel is requested. `Typed::run` decodes
/// the state before it checks for cancel, returns an `Error` plan (Sleeping with backoff), and
/// `transition` (writer.rs) turns every non-terminal status of a cancelled instance back
/// into `Runnable` *without the backoff timer*. The instance spins in a hot loop of
/// StepError transitions (one fsync each) and never ends `Cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_an_instance_whose_state_cannot_be_read_ends_cancelled() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Poisoned).open().await.unwrap();
    let id = engine.start::<Poisoned>(&Touchy(0), None).await.unwrap();
    wait_status(&engine, id, Status::Waiting).await;
    let step_before = engine.info(id).unwrap().step;
    assert_eq!(
        engine.cancel(id, "stop").await.unwrap(),
        CancelAck::Requested
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let info = engine.info(id).unwrap();
    let transitions = info.step - step_before;
    engine.shutdown().await.unwrap();
    // With a 20..100 ms error backoff, 1 s allows at most ~15 retries.
    assert!(
        transitions <= 20,
        "{transitions} transitions in 1 s after cancel (status {:?}): a hot loop without backoff",
        info.status
    );
    assert_eq!(info.status, Status::Cancelled, "cancel never completes");
}

// ---- 2. a panicking effect handler strands its effect until restart --------------------------

#[derive(Clone, Default)]
struct PanicsOnce {
    calls: Arc<AtomicU32>,
}

impl EffectHandler for PanicsOnce {
    fn deliver<'a>(&'a self, _d: &'a Delivery) -> BoxFuture<'a, Result<(), EffectError>> {
        Box::pin(async move {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("handler bug on first attempt");
            }
            Ok(())
        })
    }
}

struct Emit;

impl Workflow for Emit {
    const NAME: &'static str = "emit";
    const VERSION: u32 = 1;
    type State = u32;
    type Signal = ();
    async fn step(&self, _ctx: &mut StepCtx<()>, s: u32) -> StepResult<u32> {
        Ok(Outcome::complete(s).effect(Effect::new("fx", &s)?))
    }
}

/// Scenario: outbox.rs runs each attempt in a bare `tokio::spawn`; if the handler panics
/// the task dies before `requeue.send`, so the effect is never attempted again in this process
/// (steps are protected by `catch_unwind`, effect handlers are not). Delivery "at least once"
/// silently becomes "not until the next restart".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_effect_handler_is_retried() {
    let dir = TempDir::new().unwrap();
    let handler = PanicsOnce::default();
    let engine = builder(&dir)
        .register(Emit)
        .handler("fx", handler.clone())
        .open()
        .await
        .unwrap();
    let id = engine.start::<Emit>(&7, None).await.unwrap();
    assert_eq!(
        engine.wait_terminal(id, T).await.unwrap(),
        Status::Completed
    );
    // A bound, not a speed: a loaded CI machine may take seconds to print the panic.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while engine.pending_effects().unwrap() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending = engine.pending_effects().unwrap();
    let calls = handler.calls.load(Ordering::SeqCst);
    engine.shutdown().await.unwrap();
    assert_eq!(
        pending, 0,
        "effect still pending 30 s later; handler called {calls} time(s) (backoff is 20 ms)"
    );
}

// ---- 3. history events are not bounded in size ----------------------------------------------

fn longest_text(ev: &[EventKind]) -> (usize, String) {
    ev.iter()
        .map(|e| {
            let (len, what) = match e {
                EventKind::CancelRequested { reason } => (reason.len(), "CancelRequested.reason"),
                EventKind::EffectAbandoned { error, .. } => (error.len(), "EffectAbandoned.error"),
                EventKind::SignalReceived { key, .. } => (key.len(), "SignalReceived.key"),
                EventKind::Step { note: Some(n), .. } => (n.len(), "Step.note"),
                _ => (0, ""),
            };
            (len, what.to_string())
        })
        .max()
        .unwrap_or_default()
}

#[derive(Clone)]
struct Refuses;

impl EffectHandler for Refuses {
    fn deliver<'a>(&'a self, _d: &'a Delivery) -> BoxFuture<'a, Result<(), EffectError>> {
        // e.g. a forge's 4xx body handed back verbatim
        Box::pin(async move { Err(EffectError::Permanent("x".repeat(200_000))) })
    }
}

struct Noisy;

impl Workflow for Noisy {
    const NAME: &'static str = "noisy";
    const VERSION: u32 = 1;
    type State = u32;
    type Signal = ();
    async fn step(&self, _ctx: &mut StepCtx<()>, s: u32) -> StepResult<u32> {
        if s == 0 {
            // `note` is a public field: setting it bypasses `Outcome::note`'s truncation.
            let mut o = Outcome::wait(1).effect(Effect::new("fx", &s)?);
            o.note = Some("n".repeat(200_000));
            return Ok(o);
        }
        Ok(Outcome::wait(s))
    }
}

/// Scenario: SPEC §3.8 / ARCHITECTURE ("notes ≤ 1 KiB", history "never grows without bound").
/// Only `Outcome::note`, `Failed.reason`, `StepError.error` and `CleanedUp.report` go through
/// `short()`. A cancel reason (writer.rs), an abandoned effect's error (writer.rs), a
/// signal's idempotency key (writer.rs) and a note set on the public `Outcome::note` field
/// (definition.rs) are stored verbatim: one event can hold megabytes, and the cap of N
/// events no longer bounds the history's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_history_text_is_bounded_and_long_keys_are_refused() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir)
        .register(Noisy)
        .handler("fx", Refuses)
        .open()
        .await
        .unwrap();
    let id = engine.start::<Noisy>(&0, None).await.unwrap();
    wait_status(&engine, id, Status::Waiting).await;
    let err = engine
        .signal::<Noisy>(id, &(), &"k".repeat(200_000))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "idempotency key of 200000 bytes: it must be 1 to 256 bytes"
    );
    engine
        .signal::<Noisy>(id, &(), &"k".repeat(256))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while engine.pending_effects().unwrap() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.cancel(id, &"r".repeat(200_000)).await.unwrap();
    engine.wait_terminal(id, T).await.unwrap();
    let ev = events(&engine, id);
    engine.shutdown().await.unwrap();
    let oversized: Vec<String> = ev
        .iter()
        .filter_map(|e| {
            let (len, what) = longest_text(std::slice::from_ref(e));
            (len > MAX_NOTE + 32).then(|| format!("{what}: {len} bytes"))
        })
        .collect();
    assert!(
        oversized.is_empty(),
        "history events over {MAX_NOTE} bytes: {oversized:?}"
    );
}

// ---- 4. wait_terminal(…, Duration::MAX) panics ----------------------------------------------

/// Scenario: engine.rs `tokio::time::Instant::now() + timeout` overflows (std `Instant + Duration`
/// panics) for a caller that passes `Duration::MAX` to mean "no timeout" — even when the instance
/// has already ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_terminal_accepts_an_unbounded_timeout() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Emit).open().await.unwrap();
    let id = engine.start::<Emit>(&1, None).await.unwrap();
    engine.wait_terminal(id, T).await.unwrap();
    let e2 = engine.clone();
    let r = tokio::spawn(async move { e2.wait_terminal(id, Duration::MAX).await }).await;
    engine.shutdown().await.unwrap();
    match r {
        Ok(s) => assert_eq!(s.unwrap(), Status::Completed),
        Err(join) => panic!("wait_terminal panicked: {join}"),
    }
}

// ---- 5. a cancel acknowledged as Requested can end Completed without cleanup ------------------

static CLEANUPS: AtomicU32 = AtomicU32::new(0);

struct SlowFinish;

impl Workflow for SlowFinish {
    const NAME: &'static str = "slow-finish";
    const VERSION: u32 = 1;
    type State = u32;
    type Signal = ();
    async fn step(&self, _ctx: &mut StepCtx<()>, s: u32) -> StepResult<u32> {
        // Work that does not (or cannot) stop at the cancellation token, e.g. a remote run
        // that was already finishing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Outcome::complete(s))
    }
    async fn cleanup(
        &self,
        _ctx: &mut StepCtx<()>,
        _s: &u32,
        _reason: &str,
    ) -> agent_fleet::workflow::Cleanup<u32> {
        CLEANUPS.fetch_add(1, Ordering::SeqCst);
        agent_fleet::workflow::Cleanup::report("stopped process group")
    }
}

/// Scenario: `Engine::cancel` answers `CancelAck::Requested` ("Recorded now; the instance will
/// run its cleanup and end cancelled", engine.rs, SPEC §3.9) while a step runs. The step then
/// returns `Complete` (or `Fail`): writer.rs finish the instance at once; the check at
/// writer.rs only catches non-terminal outcomes. The instance ends `Completed`, `cleanup`
/// never runs and no `CleanedUp` event is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_cancel_wins_over_a_step_that_completes() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(SlowFinish).open().await.unwrap();
    let id = engine.start::<SlowFinish>(&1, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        engine.cancel(id, "user asked").await.unwrap(),
        CancelAck::Requested
    );
    let status = engine.wait_terminal(id, T).await.unwrap();
    let ev = events(&engine, id);
    engine.shutdown().await.unwrap();
    assert_eq!(
        (status, CLEANUPS.load(Ordering::SeqCst)),
        (Status::Cancelled, 1),
        "cancel acknowledged as Requested, but: {ev:?}"
    );
}

// ---- 6. the outbox starts deliveries after shutdown was asked for, and shutdown does not wait -

/// Effect key, when the delivery started, when it finished.
type Attempt = (String, std::time::Instant, Option<std::time::Instant>);

#[derive(Clone, Default)]
struct Slow {
    log: Arc<std::sync::Mutex<Vec<Attempt>>>,
}

impl EffectHandler for Slow {
    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), EffectError>> {
        Box::pin(async move {
            let idx = {
                let mut log = self.log.lock().unwrap();
                log.push((d.key.to_string(), std::time::Instant::now(), None));
                log.len() - 1
            };
            tokio::time::sleep(Duration::from_millis(1500)).await; // e.g. a slow forge API
            self.log.lock().unwrap()[idx].2 = Some(std::time::Instant::now());
            Ok(())
        })
    }
}

struct TwoEffects;

impl Workflow for TwoEffects {
    const NAME: &'static str = "two-effects";
    const VERSION: u32 = 1;
    type State = u32;
    type Signal = ();
    async fn step(&self, _ctx: &mut StepCtx<()>, s: u32) -> StepResult<u32> {
        Ok(Outcome::complete(s)
            .effect(Effect::new("slow", &1u32)?)
            .effect(Effect::new("slow", &2u32)?))
    }
}

/// Scenario: outbox.rs — while due effects wait for a delivery permit the loop sits in
/// `permits.acquire_owned().await`, which does not watch `stop`; once a permit frees it spawns
/// the next delivery without checking `stop`. The attempts themselves run in untracked
/// `tokio::spawn` tasks (outbox.rs), so `Engine::shutdown` (engine.rs) neither waits
/// for them nor prevents new ones: with `effect_concurrency = 1`, a delivery *starts* after
/// `shutdown()` was called, and it is still acting on the outside world after `shutdown()`
/// returned and the writer stopped — its success can never be recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_deliveries_in_flight_and_starts_no_new_one() {
    let dir = TempDir::new().unwrap();
    let slow = Slow::default();
    let engine = builder(&dir)
        .config(EngineConfig {
            effect_concurrency: 1,
            ..fast_config()
        })
        .register(TwoEffects)
        .handler("slow", slow.clone())
        .open()
        .await
        .unwrap();
    let id = engine.start::<TwoEffects>(&0, None).await.unwrap();
    engine.wait_terminal(id, T).await.unwrap();
    while slow.log.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shutdown_called = std::time::Instant::now();
    engine.shutdown().await.unwrap();
    let shutdown_returned = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let log = slow.log.lock().unwrap().clone();
    let started_after_shutdown: Vec<_> = log
        .iter()
        .filter(|(_, start, _)| *start > shutdown_called)
        .map(|(k, start, _)| {
            format!(
                "{k} started {:?} after shutdown()",
                *start - shutdown_called
            )
        })
        .collect();
    let finished_after_return: Vec<_> = log
        .iter()
        .filter(|(_, _, end)| end.is_some_and(|e| e > shutdown_returned))
        .map(|(k, _, end)| {
            format!(
                "{k} completed {:?} after shutdown() returned",
                end.unwrap() - shutdown_returned
            )
        })
        .collect();
    assert!(
        started_after_shutdown.is_empty() && finished_after_return.is_empty(),
        "{started_after_shutdown:?} {finished_after_return:?}"
    );
}

// ---- 7. a step that completes with an effect while a cancel is committed ----------------------

/// Records the kind of every effect delivered.
#[derive(Clone, Default)]
struct Kinds {
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl EffectHandler for Kinds {
    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), EffectError>> {
        Box::pin(async move {
            self.log.lock().unwrap().push(d.kind.clone());
            Ok(())
        })
    }
}

struct ReceiptOnFinish;

impl Workflow for ReceiptOnFinish {
    const NAME: &'static str = "receipt-on-finish";
    const VERSION: u32 = 1;
    type State = u32;
    type Signal = ();
    async fn step(&self, _ctx: &mut StepCtx<()>, s: u32) -> StepResult<u32> {
        // Work that finishes whatever the cancellation token says (a run that was ending).
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Outcome::complete(s).effect(Effect::new("receipt", &s)?))
    }
    async fn cleanup(
        &self,
        _ctx: &mut StepCtx<()>,
        s: &u32,
        _reason: &str,
    ) -> agent_fleet::workflow::Cleanup<u32> {
        agent_fleet::workflow::Cleanup::report("told the outside world")
            .state(s + 100)
            .effects([Effect::new("cancelled", s).unwrap()])
    }
}

/// Scenario (issue 14, point 12): a cancel is committed while a step runs that then completes
/// with an effect (e.g. the receipt comment and `status:done`). One outcome: the instance ends
/// cancelled, only the cleanup's effects are queued and delivered, and its final state is
/// the cleanup's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_completing_step_queues_only_the_cleanups_effects() {
    let dir = TempDir::new().unwrap();
    let kinds = Kinds::default();
    let engine = builder(&dir)
        .register(ReceiptOnFinish)
        .handler("receipt", kinds.clone())
        .handler("cancelled", kinds.clone())
        .open()
        .await
        .unwrap();
    let id = engine.start::<ReceiptOnFinish>(&1, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        engine.cancel(id, "user asked").await.unwrap(),
        CancelAck::Requested
    );
    let status = engine.wait_terminal(id, T).await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while engine.pending_effects().unwrap() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pending = engine.pending_effects().unwrap();
    let state = engine.state::<ReceiptOnFinish>(id).unwrap();
    let ev = events(&engine, id);
    engine.shutdown().await.unwrap();
    assert_eq!(status, Status::Cancelled, "{ev:?}");
    assert_eq!(
        (kinds.log.lock().unwrap().clone(), pending),
        (vec!["cancelled".to_string()], 0),
        "{ev:?}"
    );
    assert_eq!(state, 101, "the cleanup's final state is kept");
}
