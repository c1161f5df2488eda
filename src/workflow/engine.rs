//! The engine: registry of definitions and effect handlers, recovery on open, the scheduler
//! that runs runnable instances (one task per *runnable* instance, none per parked one), and the
//! public API (start, signal, cancel, queries, shutdown).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::InstanceId;
use super::codec;
use super::context::RunInput;
use super::definition::{Definition, Typed, Workflow};
use super::error::{EngineError, StoreError};
use super::feed::DurableClock;
use super::outbox::{Backoff, EffectHandler, Outbox};
use super::record::{Event, InstanceRecord, Status, Timestamp};
use super::store::Store;
use super::timers::{self, TimerWake};
use super::writer::{Commit, Limits, NewInstance, NewSignal, Notices, Op, Reply, Writer};

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Steps running at once, across all instances.
    pub max_active_steps: usize,
    /// Effect deliveries in flight at once.
    pub effect_concurrency: usize,
    pub effect_backoff: Backoff,
    /// Delay before re-running a step that returned an error (doubles per consecutive error).
    pub step_error_backoff: Backoff,
    /// History events kept per instance; older ones are dropped.
    pub history_cap: u64,
    /// Ended instances (record, history, replies, indexes) are removed this long after they
    /// ended, and feed rows this old once every durable consumer has passed them; `None`
    /// keeps everything.
    pub retention: Option<Duration>,
    /// Idempotency keys (signal, start and once-keys) are forgotten this long after they were
    /// recorded (a start key of an instance that has not ended is kept); `None` keeps them.
    pub dedupe_window: Option<Duration>,
    /// How long shutdown waits for running steps before leaving them to recovery.
    pub shutdown_grace: Duration,
}

impl EngineConfig {
    fn limits(&self) -> Limits {
        Limits {
            history_cap: self.history_cap,
            retention: self.retention,
            dedupe_window: self.dedupe_window,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_active_steps: 1024,
            effect_concurrency: 64,
            effect_backoff: Backoff {
                base: Duration::from_millis(200),
                max: Duration::from_secs(60),
            },
            step_error_backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(300),
            },
            history_cap: 4096,
            retention: None,
            dedupe_window: None,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// What recovery found when the engine opened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    pub instances: u64,
    pub runnable: u64,
    pub parked: u64,
    pub terminal: u64,
    pub pending_effects: u64,
    pub elapsed_ms: u64,
}

/// A status change of an instance, published after its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub id: InstanceId,
    pub status: Status,
}

/// Summary of one instance, for queries.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    pub id: InstanceId,
    pub workflow: String,
    pub def_version: u32,
    pub status: Status,
    pub step: u64,
    pub wake_at: Option<Timestamp>,
    pub pending_signals: u32,
    pub cancel_requested: Option<String>,
    pub created: Timestamp,
    pub updated: Timestamp,
}

/// How long a shutdown after a store failure waits for running steps (they cannot commit).
const FAILED_GRACE: Duration = Duration::from_secs(1);

/// Longest idempotency key accepted (a delivery id or a client key, never a payload).
pub const MAX_KEY_LEN: usize = 256;

fn check_key(key: &str) -> Result<(), EngineError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(EngineError::InvalidKey {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

impl InstanceInfo {
    fn of(id: InstanceId, rec: InstanceRecord) -> Self {
        InstanceInfo {
            id,
            workflow: rec.workflow,
            def_version: rec.def_version,
            status: rec.status,
            step: rec.step,
            wake_at: rec.wake_at,
            pending_signals: rec.pending_signals,
            cancel_requested: rec.cancel,
            created: rec.created,
            updated: rec.updated,
        }
    }
}

/// Acknowledgement of a committed (or deduplicated) start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartAck {
    pub id: InstanceId,
    /// The idempotency key had started this instance before: nothing new was created.
    pub duplicate: bool,
}

/// Acknowledgement of a committed (or deduplicated) signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalAck {
    pub seq: u64,
    pub duplicate: bool,
}

/// What became of a signal sent with [`Engine::update`].
#[derive(Debug, Clone, PartialEq)]
pub enum Update<R> {
    /// The step that took the signal answered this.
    Replied(R),
    /// A step took the signal without answering it.
    Unanswered,
    /// The instance ended before any step took the signal.
    Ended(Status),
    /// Not taken within the wait: it stays in the inbox; send it again with the same key to
    /// wait for the answer.
    Pending,
}

/// How a waiting update is answered by the notice loop.
#[derive(Debug)]
enum Answer {
    Taken(Option<Vec<u8>>),
    Ended(Status),
}

/// Result of a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAck {
    /// Recorded now; the instance will run its cleanup and end cancelled.
    Requested,
    /// Was already requested.
    AlreadyRequested,
    /// The instance had already ended.
    AlreadyEnded(Status),
}

/// Wakes parked instances ([`Engine::wake`]) without waiting; see [`Engine::waker`].
#[derive(Clone)]
pub struct Waker {
    writer: Writer,
}

impl Waker {
    /// Queues a wake-up of `id` for the next commit. After shutdown it does nothing (recovery
    /// runs whatever was runnable).
    pub fn wake(&self, id: InstanceId) {
        if self.writer.send(Op::Wake { id }).is_err() {
            tracing::debug!(instance = id, "wake-up after the engine stopped: ignored");
        }
    }
}

/// Registers definitions and handlers, then opens the store and recovers.
pub struct EngineBuilder {
    path: PathBuf,
    config: EngineConfig,
    defs: HashMap<(String, u32), Arc<dyn Definition>>,
    handlers: HashMap<String, Arc<dyn EffectHandler>>,
}

impl EngineBuilder {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EngineBuilder {
            path: path.into(),
            config: EngineConfig::default(),
            defs: HashMap::new(),
            handlers: HashMap::new(),
        }
    }

    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers a definition version. Register every version that may still have instances,
    /// unless this one lists it in [`Workflow::UPGRADES_FROM`] (an old version registered on
    /// its own keeps driving its instances).
    pub fn register<W: Workflow>(mut self, workflow: W) -> Self {
        let workflow = Arc::new(workflow);
        for &from in W::UPGRADES_FROM {
            self.defs
                .entry((W::NAME.to_string(), from))
                .or_insert_with(|| {
                    Arc::new(Typed {
                        workflow: workflow.clone(),
                        from: Some(from),
                    })
                });
        }
        self.defs.insert(
            (W::NAME.to_string(), W::VERSION),
            Arc::new(Typed {
                workflow,
                from: None,
            }),
        );
        self
    }

    /// Registers the handler for effects of `kind`.
    pub fn handler(mut self, kind: impl Into<String>, handler: impl EffectHandler) -> Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// Opens (or creates) the store, checks every instance record, and schedules every
    /// unfinished instance that is runnable; parked ones wait for their signal or timer.
    pub async fn open(self) -> Result<Engine, EngineError> {
        let started = Instant::now();
        let path = self.path.clone();
        let defs = self.defs.clone();
        let (store, report, runnable, effects) = tokio::task::spawn_blocking(move || {
            let store = Store::open(&path)?;
            if !store.indexed()? {
                let indexed = store.build_indexes(|workflow, version, state| {
                    defs.get(&(workflow.to_string(), version))
                        .map(|d| d.index(state))
                        .unwrap_or_default()
                })?;
                tracing::info!(
                    instances = indexed,
                    "store indexed by phase, key and end time"
                );
            }
            let mut report = RecoveryReport::default();
            let mut runnable = Vec::new();
            // Only unfinished instances are read (and checked); ended ones stay on disk.
            store.scan_live(|id, rec| match rec.status {
                Status::Runnable => runnable.push(id),
                s if s.is_terminal() => {}
                _ => report.parked += 1,
            })?;
            report.runnable = runnable.len() as u64;
            report.instances = store.instance_count()?;
            report.terminal = report.instances - report.runnable - report.parked;
            let effects: Vec<(u64, Timestamp)> = store
                .pending_effects()?
                .into_iter()
                .map(|(id, r)| (id, r.next_attempt))
                .collect();
            report.pending_effects = effects.len() as u64;
            Ok::<_, EngineError>((store, report, runnable, effects))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("recovery task failed: {e}")))??;

        let (notice_tx, notice_rx) = mpsc::unbounded_channel::<Commit>();
        let (writer, writer_thread) =
            Writer::spawn(store.clone(), self.config.limits(), move |commit| {
                // If the engine is gone, answer here: callers must never hang.
                if let Err(mpsc::error::SendError(commit)) = notice_tx.send(commit) {
                    commit.answer();
                }
            })
            .map_err(|e| EngineError::Internal(format!("cannot start writer thread: {e}")))?;
        let (changes, _) = broadcast::channel(4096);
        let (feed, _) = watch::channel(store.feed_last()?);
        let (effect_tx, effect_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            store: store.clone(),
            writer: writer.clone(),
            defs: self.defs,
            active: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(self.config.max_active_steps.max(1))),
            stop: CancellationToken::new(),
            background_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            background: TaskTracker::new(),
            timer_wake: Arc::new(TimerWake::default()),
            effects: effect_tx.clone(),
            changes,
            feed,
            durable_clock: DurableClock::default(),
            config: self.config.clone(),
            writer_thread: Mutex::new(Some(writer_thread)),
            closed: AtomicBool::new(false),
            waiters: Mutex::new(HashMap::new()),
            unreadable: Mutex::new(std::collections::BTreeMap::new()),
        });
        let outbox = Arc::new(Outbox {
            store: store.clone(),
            writer: writer.clone(),
            handlers: self.handlers,
            backoff: self.config.effect_backoff,
            concurrency: self.config.effect_concurrency.max(1),
        });
        inner.background.spawn(outbox.run(
            effects,
            effect_rx,
            effect_tx,
            inner.background_stop.clone(),
            inner.background.clone(),
        ));
        inner.background.spawn(timers::run(
            store,
            writer,
            inner.timer_wake.clone(),
            inner.background_stop.clone(),
        ));
        // Runs until the writer thread ends (it owns the sending side).
        tokio::spawn(notice_loop(Arc::downgrade(&inner), notice_rx));
        tokio::spawn(stop_on_failure(
            Arc::downgrade(&inner),
            inner.writer.watch_failure(),
        ));
        for id in runnable {
            inner.schedule(id);
        }
        let mut report = report;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(?report, "engine recovered");
        Ok(Engine { inner, report })
    }
}

/// A running engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    report: RecoveryReport,
}

struct Active {
    cancel: CancellationToken,
    rerun: bool,
    /// The instance's `next_signal` as signals commit (see `StepCtx::signalled`).
    signals: watch::Sender<u64>,
}

type Waiters = HashMap<(InstanceId, u64), Vec<oneshot::Sender<Answer>>>;

struct Inner {
    store: Store,
    writer: Writer,
    defs: HashMap<(String, u32), Arc<dyn Definition>>,
    active: Mutex<HashMap<InstanceId, Active>>,
    permits: Arc<Semaphore>,
    /// Stops scheduling steps.
    stop: CancellationToken,
    /// Stops timers and outbox (after the steps).
    background_stop: CancellationToken,
    tasks: TaskTracker,
    background: TaskTracker,
    timer_wake: Arc<TimerWake>,
    effects: mpsc::UnboundedSender<(u64, Timestamp)>,
    changes: broadcast::Sender<Change>,
    /// The last committed feed row.
    feed: watch::Sender<u64>,
    /// When the recent commits that wrote feed rows were durable.
    durable_clock: DurableClock,
    config: EngineConfig,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Callers of `update` waiting for a step to take their signal.
    waiters: Mutex<Waiters>,
    /// Ended instances that cannot be read (see [`Engine::report_unreadable`]).
    unreadable: Mutex<std::collections::BTreeMap<InstanceId, String>>,
}

/// Acts on each committed batch (schedule, trip cancel tokens, wake timers, queue effects,
/// publish changes), then answers its callers.
async fn notice_loop(inner: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Commit>) {
    while let Some(commit) = rx.recv().await {
        if let Some(inner) = inner.upgrade() {
            inner.act_on(commit.notices, commit.durable_at);
        }
        for (tx, result) in commit.replies {
            let _ = tx.send(result);
        }
    }
}

/// Once a commit failed, stops taking work: no step is scheduled any more, running steps see
/// their shutdown token, timers and outbox stop (nothing they do could be committed).
async fn stop_on_failure(
    inner: std::sync::Weak<Inner>,
    mut failure: watch::Receiver<Option<String>>,
) {
    // An error means the writer is gone without a failure: nothing to do.
    if failure.wait_for(Option::is_some).await.is_err() {
        return;
    }
    if let Some(inner) = inner.upgrade() {
        tracing::error!("the engine stops taking work: its store failed");
        inner.stop.cancel();
        inner.background_stop.cancel();
    }
}

impl Inner {
    fn act_on(self: &Arc<Self>, n: Notices, durable_at: std::time::SystemTime) {
        for id in n.cancelled {
            self.trip_cancel(id);
        }
        for id in n.runnable {
            self.schedule(id);
        }
        if let Some(at) = n.earliest_timer {
            self.timer_wake.timer_set(at);
        }
        for e in n.effects {
            let _ = self.effects.send(e);
        }
        if !n.signalled.is_empty() {
            let active = self.lock_active();
            for (id, next) in n.signalled {
                if let Some(a) = active.get(&id) {
                    a.signals.send_if_modified(|v| {
                        let newer = next > *v;
                        *v = (*v).max(next);
                        newer
                    });
                }
            }
        }
        let ended: Vec<(InstanceId, Status)> = n
            .changed
            .iter()
            .filter(|(_, s)| s.is_terminal())
            .copied()
            .collect();
        if !n.answers.is_empty() || !ended.is_empty() {
            let mut waiters = self.lock_waiters();
            for (id, seq, reply) in n.answers {
                for tx in waiters.remove(&(id, seq)).unwrap_or_default() {
                    let _ = tx.send(Answer::Taken(reply.clone()));
                }
            }
            for (id, status) in ended {
                let keys: Vec<_> = waiters.keys().filter(|k| k.0 == id).copied().collect();
                for k in keys {
                    for tx in waiters.remove(&k).unwrap_or_default() {
                        let _ = tx.send(Answer::Ended(status));
                    }
                }
            }
        }
        for (id, status) in n.changed {
            let _ = self.changes.send(Change { id, status });
        }
        if let (Some(first), Some(last)) = (n.feed_first, n.feed_last) {
            self.durable_clock.record(first, last, durable_at);
        }
        if let Some(last) = n.feed_last {
            self.feed.send_if_modified(|v| {
                let newer = last > *v;
                *v = (*v).max(last);
                newer
            });
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        // Plain bookkeeping; a panic elsewhere cannot leave it half-done.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Active>> {
        // A panic while holding this lock can only come from HashMap itself; keep going with
        // the data as it is (it holds no invariant a half-done operation could break).
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn trip_cancel(&self, id: InstanceId) {
        if let Some(a) = self.lock_active().get(&id) {
            a.cancel.cancel();
        }
    }

    /// Makes sure a task runs `id` (at most one task per instance).
    fn schedule(self: &Arc<Self>, id: InstanceId) {
        if self.stop.is_cancelled() {
            return;
        }
        {
            let mut active = self.lock_active();
            if let Some(a) = active.get_mut(&id) {
                a.rerun = true;
                return;
            }
            active.insert(
                id,
                Active {
                    cancel: CancellationToken::new(),
                    rerun: false,
                    signals: watch::channel(0).0,
                },
            );
        }
        let this = self.clone();
        self.tasks.spawn(async move { this.drive(id).await });
    }

    /// Runs `id` while it stays runnable, then releases it.
    async fn drive(self: Arc<Self>, id: InstanceId) {
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        loop {
            self.run_while_runnable(id).await;
            let mut active = self.lock_active();
            match active.get_mut(&id) {
                Some(a) if a.rerun && !self.stop.is_cancelled() => a.rerun = false,
                _ => {
                    active.remove(&id);
                    return;
                }
            }
        }
    }

    async fn run_while_runnable(&self, id: InstanceId) {
        // The record this loop committed last. A signal or cancel committed after it is not in
        // it, and that is safe: the writer compares the step's view (`next_signal`, `step`) with
        // the stored record and keeps the instance runnable, and the next reply carries it.
        let mut committed: Option<Box<InstanceRecord>> = None;
        // Consecutive failures to read or commit: nothing else would wake a runnable instance,
        // so this loop retries them itself, with backoff.
        let mut failures: u32 = 0;
        loop {
            if failures > 0 {
                let delay = self.config.step_error_backoff.delay(failures - 1);
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            if self.stop.is_cancelled() {
                return;
            }
            let rec = match committed.take() {
                Some(r) => *r,
                None => match self.store.instance(id) {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::error!(instance = id, error = %e, "cannot load instance; will retry");
                        failures += 1;
                        continue;
                    }
                },
            };
            if rec.status != Status::Runnable {
                return;
            }
            let Some(def) = self.defs.get(&(rec.workflow.clone(), rec.def_version)) else {
                tracing::error!(
                    instance = id,
                    error = %EngineError::UnknownDefinition { name: rec.workflow.clone(), version: rec.def_version },
                    "instance left as it is until a daemon with its definition runs it"
                );
                return;
            };
            let inbox = if rec.pending_signals > 0 {
                match self.store.inbox(id) {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::error!(instance = id, error = %e, "cannot load inbox; will retry");
                        failures += 1;
                        continue;
                    }
                }
            } else {
                Vec::new()
            };
            let (cancel_token, signals) = match self.lock_active().get(&id) {
                Some(a) => (a.cancel.clone(), a.signals.subscribe()),
                None => (CancellationToken::new(), watch::channel(0).1),
            };
            let input = RunInput {
                id,
                step: rec.step,
                wake: rec.wake,
                errors: rec.errors,
                now: Timestamp::now(),
                next_signal: rec.next_signal,
                cancel: rec.cancel.clone(),
                state: rec.state,
                inbox,
                cancel_token,
                shutdown: self.stop.clone(),
                writer: self.writer.clone(),
                error_backoff: self.config.step_error_backoff.delay(rec.errors),
                signals,
            };
            let plan = def.run(input).await;
            if self.stop.is_cancelled() && self.closed.load(Ordering::Acquire) {
                return;
            }
            let op = Op::Transition {
                id,
                expected_step: rec.step,
                plan,
            };
            match self.writer.submit(op).await {
                Ok(Reply::Transitioned(rec)) if rec.status == Status::Runnable => {
                    failures = 0;
                    committed = Some(rec);
                }
                Ok(_) => return,
                // Someone else advanced or ended it: nothing left for this loop.
                Err(EngineError::Conflict { .. } | EngineError::Finished { .. }) => return,
                Err(EngineError::UnknownInstance(_)) => return,
                // Nothing commits any more; the instance resumes after the restart.
                Err(e) if e.is_store_failed() => return,
                Err(e) => {
                    tracing::error!(instance = id, error = %e, "transition not committed; will retry");
                    failures += 1;
                }
            }
        }
    }
}

impl Engine {
    pub fn builder(path: impl Into<PathBuf>) -> EngineBuilder {
        EngineBuilder::new(path)
    }

    /// What recovery found when this engine opened.
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn feed_receiver(&self) -> watch::Receiver<u64> {
        self.inner.feed.subscribe()
    }

    pub(crate) fn durable_clock(&self) -> &DurableClock {
        &self.inner.durable_clock
    }

    pub(crate) async fn submit(&self, op: Op) -> Result<Reply, EngineError> {
        self.inner.writer.submit(op).await
    }

    pub fn recovery(&self) -> &RecoveryReport {
        &self.report
    }

    /// The store's id (drawn when the file was created); `None` for a store older than ids.
    pub fn store_id(&self) -> Option<crate::workflow::StoreId> {
        self.inner.store.store_id
    }

    /// Starts an instance of `W` pinned to `W::VERSION`. With an idempotency key, a repeated
    /// start returns the instance the first one created.
    pub async fn start<W: Workflow>(
        &self,
        state: &W::State,
        key: Option<&str>,
    ) -> Result<InstanceId, EngineError> {
        Ok(self.start_ack::<W>(state, key).await?.id)
    }

    /// [`Engine::start`], also telling whether the key had started an instance before.
    pub async fn start_ack<W: Workflow>(
        &self,
        state: &W::State,
        key: Option<&str>,
    ) -> Result<StartAck, EngineError> {
        match self.start_inner::<W>(state, key, None).await? {
            Some(ack) => Ok(ack),
            None => Err(EngineError::Internal("a start without a once-key".into())),
        }
    }

    /// [`Engine::start_ack`] guarded by `once`, a caller's own idempotency key (a webhook
    /// delivery id, say), recorded in the same commit as the start: `None` when `once` was
    /// recorded before (by any op guarded by it, or by [`Engine::record_once`]), and then
    /// nothing is started.
    pub async fn start_once<W: Workflow>(
        &self,
        state: &W::State,
        key: Option<&str>,
        once: &str,
    ) -> Result<Option<StartAck>, EngineError> {
        self.start_inner::<W>(state, key, Some(once)).await
    }

    async fn start_inner<W: Workflow>(
        &self,
        state: &W::State,
        key: Option<&str>,
        once: Option<&str>,
    ) -> Result<Option<StartAck>, EngineError> {
        if !self
            .inner
            .defs
            .contains_key(&(W::NAME.to_string(), W::VERSION))
        {
            return Err(EngineError::UnknownDefinition {
                name: W::NAME.into(),
                version: W::VERSION,
            });
        }
        for k in key.iter().chain(once.iter()) {
            check_key(k)?;
        }
        let op = Op::Start {
            new: NewInstance {
                workflow: W::NAME.to_string(),
                version: W::VERSION,
                state: codec::encode_value(state)?,
                key: key.map(str::to_string),
                phase: W::phase(state),
                keys: W::keys(state),
            },
            once: once.map(str::to_string),
        };
        match self.inner.writer.submit(op).await? {
            Reply::Started { id, duplicate } => Ok(Some(StartAck { id, duplicate })),
            Reply::OnceSeen => Ok(None),
            other => Err(other.unexpected()),
        }
    }

    /// Commits `signal` to the inbox of `id` and returns after the commit. A repeated
    /// `idempotency_key` for the same instance is a no-op that still succeeds.
    pub async fn signal<W: Workflow>(
        &self,
        id: InstanceId,
        signal: &W::Signal,
        idempotency_key: &str,
    ) -> Result<SignalAck, EngineError> {
        match self
            .signal_inner::<W>(id, signal, idempotency_key, None)
            .await?
        {
            Some(ack) => Ok(ack),
            None => Err(EngineError::Internal("a signal without a once-key".into())),
        }
    }

    /// [`Engine::signal`] guarded by `once` (see [`Engine::start_once`]): `None` when `once`
    /// was recorded before, and then nothing is sent. A refused signal (the instance ended,
    /// say) records nothing.
    pub async fn signal_once<W: Workflow>(
        &self,
        id: InstanceId,
        signal: &W::Signal,
        idempotency_key: &str,
        once: &str,
    ) -> Result<Option<SignalAck>, EngineError> {
        self.signal_inner::<W>(id, signal, idempotency_key, Some(once))
            .await
    }

    async fn signal_inner<W: Workflow>(
        &self,
        id: InstanceId,
        signal: &W::Signal,
        idempotency_key: &str,
        once: Option<&str>,
    ) -> Result<Option<SignalAck>, EngineError> {
        check_key(idempotency_key)?;
        if let Some(o) = once {
            check_key(o)?;
        }
        let op = Op::Signal {
            id,
            signal: NewSignal {
                workflow: Some(W::NAME.to_string()),
                key: idempotency_key.to_string(),
                payload: codec::encode_value(signal)?,
                dedupe: true,
            },
            once: once.map(str::to_string),
        };
        match self.inner.writer.submit(op).await? {
            Reply::Signalled { seq, duplicate } => Ok(Some(SignalAck { seq, duplicate })),
            Reply::OnceSeen => Ok(None),
            other => Err(other.unexpected()),
        }
    }

    /// Sends a signal whose repetition is harmless (a heartbeat): no idempotency key is kept
    /// for it, so signals sent often leave nothing behind in the store. `name` names it in the
    /// history.
    pub async fn signal_unkeyed<W: Workflow>(
        &self,
        id: InstanceId,
        signal: &W::Signal,
        name: &str,
    ) -> Result<SignalAck, EngineError> {
        check_key(name)?;
        let op = Op::Signal {
            id,
            signal: NewSignal {
                workflow: Some(W::NAME.to_string()),
                key: name.to_string(),
                payload: codec::encode_value(signal)?,
                dedupe: false,
            },
            once: None,
        };
        match self.inner.writer.submit(op).await? {
            Reply::Signalled { seq, duplicate } => Ok(SignalAck { seq, duplicate }),
            other => Err(other.unexpected()),
        }
    }

    /// Records the once-key `once` alone (see [`Engine::start_once`]), durably: whether it is
    /// new. Nothing else is written and no instance is woken.
    pub async fn record_once(&self, once: &str) -> Result<bool, EngineError> {
        check_key(once)?;
        match self
            .inner
            .writer
            .submit(Op::Once {
                key: once.to_string(),
            })
            .await?
        {
            Reply::Done => Ok(true),
            Reply::OnceSeen => Ok(false),
            other => Err(other.unexpected()),
        }
    }

    /// Whether the once-key `once` was recorded (read-only, no commit): lets a caller answer
    /// a repeated request before doing any work for it. A key recorded after this look is
    /// still caught by the op it guards.
    pub fn once_seen(&self, once: &str) -> Result<bool, EngineError> {
        self.key_seen(&super::writer::once_key(once))
    }

    /// Whether a signal to `id` with `idempotency_key` was committed (read-only, no commit):
    /// lets a caller answer a repeated request before doing any work for it. A key sent after
    /// this look is still caught by [`Engine::signal`].
    pub fn signal_key_seen(
        &self,
        id: InstanceId,
        idempotency_key: &str,
    ) -> Result<bool, EngineError> {
        self.key_seen(&format!("signal/{id}/{idempotency_key}"))
    }

    /// Whether the once-key `once`, or a signal to `id` keyed `idempotency_key`, was committed:
    /// both looked up in one read (a caller's key that older builds recorded as a signal key).
    pub fn once_or_signal_key_seen(
        &self,
        once: &str,
        id: InstanceId,
        idempotency_key: &str,
    ) -> Result<bool, EngineError> {
        let scoped = [
            super::writer::once_key(once),
            format!("signal/{id}/{idempotency_key}"),
        ];
        self.any_key_seen(&scoped)
    }

    fn key_seen(&self, scoped: &str) -> Result<bool, EngineError> {
        self.any_key_seen(&[scoped])
    }

    fn any_key_seen(&self, scoped: &[impl AsRef<str>]) -> Result<bool, EngineError> {
        use redb::ReadableDatabase;
        let txn = self.inner.store.db.begin_read()?;
        let table = txn.open_table(super::store::IDEMPOTENCY)?;
        for key in scoped {
            if table.get(key.as_ref())?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Sends `signal` like [`Engine::signal`], then waits up to `wait` for the step that takes
    /// it and returns that step's reply (see `StepCtx::reply`). Sending again with the same
    /// key waits for (or returns) the answer to the first send: a client that lost an answer
    /// retries safely.
    pub async fn update<W: Workflow, R: DeserializeOwned>(
        &self,
        id: InstanceId,
        signal: &W::Signal,
        idempotency_key: &str,
        wait: Duration,
    ) -> Result<Update<R>, EngineError> {
        let ack = self.signal::<W>(id, signal, idempotency_key).await?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .lock_waiters()
            .entry((id, ack.seq))
            .or_default()
            .push(tx);
        // Registered before reading: an answer committed since is either read here or sent.
        let answer = match (self.answer_in_store(id, ack.seq), rx) {
            (Ok(Some(a)), _) => Ok(Some(a)),
            (Ok(None), rx) => match tokio::time::timeout(wait, rx).await {
                Ok(Ok(a)) => Ok(Some(a)),
                Ok(Err(_)) => Err(EngineError::ShuttingDown),
                Err(_) => Ok(None),
            },
            (Err(e), _) => Err(e),
        };
        // The receiver is gone by now: drop this caller's entry if no answer took it.
        self.forget_waiter(id, ack.seq);
        let Some(answer) = answer? else {
            return Ok(Update::Pending);
        };
        Ok(match answer {
            Answer::Taken(Some(bytes)) => Update::Replied(codec::decode_value("reply", &bytes)?),
            Answer::Taken(None) => Update::Unanswered,
            Answer::Ended(status) => Update::Ended(status),
        })
    }

    /// What the store already says of signal `seq`: answered, taken without an answer, or
    /// dropped when the instance ended; `None` while it waits in the inbox.
    fn answer_in_store(&self, id: InstanceId, seq: u64) -> Result<Option<Answer>, EngineError> {
        // One read transaction: a step that commits in between cannot make a reply look missing.
        match self.inner.store.signal_answer(id, seq)? {
            (_, Some(bytes)) => return Ok(Some(Answer::Taken(Some(bytes)))),
            (true, None) => return Ok(None),
            (false, None) => {}
        }
        let status = self.record(id)?.status;
        Ok(Some(if status.is_terminal() {
            Answer::Ended(status)
        } else {
            Answer::Taken(None)
        }))
    }

    fn forget_waiter(&self, id: InstanceId, seq: u64) {
        let mut waiters = self.inner.lock_waiters();
        if let Some(list) = waiters.get_mut(&(id, seq)) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(&(id, seq));
            }
        }
    }

    /// Makes `id` runnable if it waits (as a signal without payload would: its step sees
    /// [`Wake::Signal`](super::Wake)), so that a parked instance looks again at something that
    /// lives outside the store. Nothing is recorded; a sleeping instance keeps its delay. If
    /// its step is running, a park it commits next runs the step again at once: a wake-up
    /// between a step's look and its park is never lost. Unknown or ended instances are fine.
    pub async fn wake(&self, id: InstanceId) -> Result<(), EngineError> {
        match self.inner.writer.submit(Op::Wake { id }).await {
            Ok(_) | Err(EngineError::UnknownInstance(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A handle that wakes instances ([`Engine::wake`]) from synchronous code, without waiting
    /// for the commit. It does not keep the engine alive.
    pub fn waker(&self) -> Waker {
        Waker {
            writer: self.inner.writer.clone(),
        }
    }

    /// Requests cancellation: committed, then the running step's token is tripped (or the parked
    /// instance woken) and the definition's cleanup runs before the instance ends cancelled.
    pub async fn cancel(&self, id: InstanceId, reason: &str) -> Result<CancelAck, EngineError> {
        let op = Op::Cancel {
            id,
            reason: reason.to_string(),
        };
        match self.inner.writer.submit(op).await? {
            Reply::CancelRequested { already: false } => Ok(CancelAck::Requested),
            Reply::CancelRequested { already: true } => Ok(CancelAck::AlreadyRequested),
            Reply::CancelTooLate { status } => Ok(CancelAck::AlreadyEnded(status)),
            other => Err(other.unexpected()),
        }
    }

    pub fn info(&self, id: InstanceId) -> Result<InstanceInfo, EngineError> {
        Ok(InstanceInfo::of(id, self.record(id)?))
    }

    /// The committed state of `id`, decoded as `W::State`.
    pub fn state<W: Workflow>(&self, id: InstanceId) -> Result<W::State, EngineError> {
        let rec = self.record(id)?;
        if rec.workflow != W::NAME {
            return Err(EngineError::WrongWorkflow {
                id,
                expected: W::NAME.into(),
                actual: rec.workflow,
            });
        }
        if rec.def_version != W::VERSION && W::UPGRADES_FROM.contains(&rec.def_version) {
            return Ok(W::upgrade(rec.def_version, &rec.state)?);
        }
        Ok(codec::decode_value("workflow state", &rec.state)?)
    }

    /// The history of `id`, oldest first, with sequence numbers.
    pub fn history(&self, id: InstanceId) -> Result<Vec<(u64, Event)>, EngineError> {
        self.record(id)?;
        self.inner.store.history(id)
    }

    /// Every instance that can be read, in id order. An ended record that cannot be decoded
    /// is passed over (left untouched) and reported (see [`Engine::unreadable`]); a live one
    /// is an error.
    pub fn list(&self) -> Result<Vec<InstanceInfo>, EngineError> {
        let mut out = Vec::new();
        let unreadable = self
            .inner
            .store
            .scan_instances(|id, rec| out.push(InstanceInfo::of(id, rec)))?;
        for (id, why) in unreadable {
            self.report_unreadable(id, &why);
        }
        Ok(out)
    }

    /// The instances that have not ended, in id order, read through the `live` index (ended
    /// ones are not read).
    pub fn live(&self) -> Result<Vec<InstanceInfo>, EngineError> {
        let mut out = Vec::new();
        self.inner
            .store
            .scan_live(|id, rec| out.push(InstanceInfo::of(id, rec)))?;
        Ok(out)
    }

    /// Up to `limit` instances that ended after `from` (its end time and id, exclusive) and
    /// before `before`, oldest end first, read from the end-time index: what a sweeper of
    /// ended instances' leftovers walks with a cursor.
    pub fn ended_between(
        &self,
        from: (Timestamp, InstanceId),
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Timestamp, InstanceId)>, EngineError> {
        self.inner
            .store
            .ended_between((from.0.0, from.1), before.0, limit)
    }

    /// The instances of `workflow` whose state named `key` (see [`Workflow::keys`]), oldest
    /// first, read from the key index.
    pub fn keyed(&self, workflow: &str, key: &str) -> Result<Vec<InstanceId>, EngineError> {
        self.inner.store.keyed(workflow, key)
    }

    /// The instance of `workflow` started with idempotency key `key`, if any.
    pub fn started(&self, workflow: &str, key: &str) -> Result<Option<InstanceId>, EngineError> {
        self.inner.store.started(workflow, key)
    }

    /// One page of the instances of `workflow` in `phase` (see [`Workflow::phase`]): up to
    /// `limit` whose id is above `after`, in id order, read through the phase index (the cost
    /// of a page, not of the store).
    pub fn list_phase(
        &self,
        workflow: &str,
        phase: &str,
        after: InstanceId,
        limit: usize,
    ) -> Result<Vec<InstanceInfo>, EngineError> {
        let rows = self.inner.store.in_phase(workflow, phase, after, limit)?;
        Ok(rows
            .into_iter()
            .map(|(id, rec)| InstanceInfo::of(id, rec))
            .collect())
    }

    /// One page of the instances of `workflow` (of any, if `None`): up to `limit` whose id is
    /// above `after`, in id order. An ended record that cannot be decoded is passed over and
    /// reported (see [`Engine::unreadable`]); a live one is an error.
    pub fn list_page(
        &self,
        workflow: Option<&str>,
        after: InstanceId,
        limit: usize,
    ) -> Result<Vec<InstanceInfo>, EngineError> {
        let mut out = Vec::new();
        for (id, rec) in self.inner.store.instances_after(workflow, after, limit)? {
            match rec {
                Ok(rec) => out.push(InstanceInfo::of(id, rec)),
                Err(e) if self.inner.store.is_live(id)? => return Err(e),
                Err(e) => self.report_unreadable(id, &e.to_string()),
            }
        }
        Ok(out)
    }

    /// Records that the ended instance `id` cannot be read (its record, or its state by its
    /// definition): it is left untouched, and reported by [`Engine::unreadable`] and in the
    /// log (once).
    pub fn report_unreadable(&self, id: InstanceId, why: &str) {
        let mut known = self
            .inner
            .unreadable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if known.insert(id, why.to_string()).is_none() {
            tracing::error!(
                instance = id,
                "an ended instance cannot be read ({why}); it is left untouched in the store"
            );
        }
    }

    /// The ended instances found unreadable so far (id, why), in id order.
    pub fn unreadable(&self) -> Vec<(InstanceId, String)> {
        let known = self
            .inner
            .unreadable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known.iter().map(|(id, why)| (*id, why.clone())).collect()
    }

    fn record(&self, id: InstanceId) -> Result<InstanceRecord, EngineError> {
        self.inner
            .store
            .instance(id)?
            .ok_or(EngineError::UnknownInstance(id))
    }

    /// Status changes as they commit.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Waits until `id` reaches a terminal status (or `timeout` passes) and returns it.
    pub async fn wait_terminal(
        &self,
        id: InstanceId,
        timeout: Duration,
    ) -> Result<Status, EngineError> {
        let mut rx = self.subscribe();
        let now = tokio::time::Instant::now();
        // `Duration::MAX` means no timeout; far enough without overflowing.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut status = self.info(id)?.status;
        loop {
            if status.is_terminal() {
                return Ok(status);
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return Ok(self.info(id)?.status),
                Ok(Ok(change)) if change.id == id => status = change.status,
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => status = self.info(id)?.status,
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(EngineError::ShuttingDown);
                }
            }
        }
    }

    /// Effects committed but not yet delivered (nor abandoned).
    pub fn pending_effects(&self) -> Result<u64, EngineError> {
        self.inner.store.pending_effect_count()
    }

    /// Why the store failed, once a commit failed (disk full, I/O error); `None` while it
    /// works. A failed engine refuses every op with [`StoreError::Failed`] and has stopped
    /// running steps: the process should exit and be restarted, which reopens (and repairs)
    /// the store. Every op acknowledged before was committed.
    pub fn failure(&self) -> Option<String> {
        self.inner.writer.failure()
    }

    /// Waits until the store fails (see [`Engine::failure`]) and returns why; never returns
    /// while the store works.
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.writer.watch_failure();
        // The guard is dropped before any other await: the future stays `Send`.
        let reason = rx
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            // The writer's handle outlives this engine handle: cannot happen, but never
            // report a failure that did not occur.
            Err(_) => std::future::pending().await,
        }
    }

    /// Transactions committed by the writer since open (each is one fsync).
    pub fn commits(&self) -> u64 {
        self.inner.writer.stats.commits.load(Ordering::Relaxed)
    }

    /// Requests the writer applied since open.
    pub fn committed_ops(&self) -> u64 {
        self.inner.writer.stats.ops.load(Ordering::Relaxed)
    }

    /// Stops taking work: no new step starts; running steps get `shutdown_grace` to finish and
    /// commit (the others are left to recovery); then the writer commits what is queued and
    /// stops. Idempotent. After a store failure nothing can commit: steps get at most a
    /// second to notice, and the writer has already stopped.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        let inner = &self.inner;
        inner.stop.cancel();
        inner.tasks.close();
        let grace = match self.failure() {
            Some(_) => inner.config.shutdown_grace.min(FAILED_GRACE),
            None => inner.config.shutdown_grace,
        };
        if tokio::time::timeout(grace, inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("steps still running at shutdown; they resume after restart");
        }
        inner.closed.store(true, Ordering::Release);
        inner.background_stop.cancel();
        inner.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), inner.background.wait()).await;
        let _ = inner.writer.submit(Op::Stop).await;
        let thread = inner
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = thread {
            tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))?
                .map_err(|_| EngineError::Store(StoreError::WriterPanicked))?;
        }
        Ok(())
    }
}
