//! Group commit: the one thread that writes to redb.
//!
//! Callers submit [`Op`]s over a channel and await a reply. The writer takes everything queued
//! (up to a batch limit), applies it in one `Durability::Immediate` transaction, commits once,
//! then hands the batch's [`Commit`] — its notices (instances made runnable, timers, effects)
//! and every caller's reply — to the engine in one message. The engine's notice task answers
//! the callers: one cross-thread wake-up per batch instead of one per caller. Each op checks everything it can refuse before it writes, so a refused
//! op fails only its own caller; a storage failure fails the whole batch, and then no caller is
//! told its request committed.
//!
//! A failed commit (disk full, I/O error) is final: redb answers `PreviousIo` to everything
//! after an I/O error until the file is reopened. The writer then records the reason (see
//! [`Writer::failure`]), refuses the failed batch, everything queued and every later op with
//! [`StoreError::Failed`], and stops; the daemon is expected to exit and be restarted (redb
//! repairs the file when it reopens).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use redb::{Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot, watch};

use super::InstanceId;
use super::codec::{decode, encode};
use super::definition::{Effect, Plan, PlanKind};
use super::error::{EngineError, StoreError};
use super::record::{
    EffectRecord, EffectStatus, Event, EventKind, FeedEvent, FeedRecord, InstanceRecord,
    IntentRecord, SignalRecord, Status, Timestamp, Wake, short,
};
use super::store::{
    BY_PHASE, CONSUMERS, ENDED, FEED, IDEM_AGE, IDEMPOTENCY, INBOX, INSTANCE_KEYS, INSTANCE_ROWS,
    INTENTS, KEYS, LIVE, META, META_NEXT_EFFECT, META_NEXT_INSTANCE, OUTBOX, OUTBOX_PENDING,
    PHASES, RECORD, REPLIES, REPLIES_KEPT, Store, TIMERS, feed_next,
};

mod prune;

/// Most ops applied in one transaction.
const MAX_BATCH: usize = 8192;

/// What the writer keeps and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// History events kept per instance.
    pub history_cap: u64,
    /// Ended instances (and feed rows every consumer has passed) older than this are removed;
    /// `None` keeps them.
    pub retention: Option<std::time::Duration>,
    /// Idempotency keys older than this are forgotten; `None` keeps them.
    pub dedupe_window: Option<std::time::Duration>,
}

/// One request to the writer.
#[derive(Debug)]
pub(crate) enum Op {
    Start {
        new: NewInstance,
        once: Option<String>,
    },
    Signal {
        id: InstanceId,
        signal: NewSignal,
        once: Option<String>,
    },
    /// Records a once-key alone (see [`Reply::OnceSeen`]).
    Once {
        key: String,
    },
    Transition {
        id: InstanceId,
        expected_step: u64,
        plan: Plan,
    },
    Cancel {
        id: InstanceId,
        reason: String,
    },
    IntentBegin {
        id: InstanceId,
        name: String,
        payload: Vec<u8>,
    },
    IntentResolve {
        id: InstanceId,
        name: String,
        result: Vec<u8>,
    },
    FireTimers(Vec<(Timestamp, InstanceId)>),
    /// Makes a waiting instance runnable, without a signal; a running step that then parks
    /// runs again at once (no lost wake-up). Nothing is written for a running instance.
    Wake {
        id: InstanceId,
    },
    EffectAttempt {
        effect: u64,
        outcome: EffectOutcome,
    },
    /// Moves durable consumer `name` from feed row `from` to `to` and queues the effects it
    /// produced for those rows, in one commit; refused when the consumer is not at `from`.
    Advance {
        name: String,
        from: u64,
        to: u64,
        effects: Vec<(InstanceId, Effect)>,
    },
    /// Drain what is queued before it, commit, and stop the thread.
    Stop,
}

impl Op {
    /// Ops whose caller is a background task that nobody waits on (an effect's delivery
    /// outcome: a crash before it commits only means one more delivery under the same key):
    /// they may wait a little to share a commit with other ops.
    fn is_background(&self) -> bool {
        matches!(self, Op::EffectAttempt { .. })
    }
}

/// What [`Op::Start`] creates.
#[derive(Debug)]
pub(crate) struct NewInstance {
    pub workflow: String,
    pub version: u32,
    pub state: Vec<u8>,
    /// The start's idempotency key (scoped to the workflow).
    pub key: Option<String>,
    /// The new instance's phase, for its feed row (see `Workflow::phase`).
    pub phase: Option<String>,
    /// Its keys (see `Workflow::keys`).
    pub keys: Vec<String>,
}

/// What [`Op::Signal`] puts in an instance's inbox.
#[derive(Debug)]
pub(crate) struct NewSignal {
    /// The workflow the sender expects the instance to run.
    pub workflow: Option<String>,
    /// Its idempotency key (also its name in the history).
    pub key: String,
    pub payload: Vec<u8>,
    /// Whether the key is kept, making a repeated signal a no-op; not for signals whose
    /// repetition is harmless and which come often (heartbeats).
    pub dedupe: bool,
}

/// The result of one delivery attempt of an effect.
#[derive(Debug, Clone)]
pub(crate) enum EffectOutcome {
    Delivered,
    Retry { error: String, next: Timestamp },
    Abandon { error: String },
}

/// The writer's answer, sent only after the op's transaction committed.
#[derive(Debug)]
pub(crate) enum Reply {
    Started {
        id: InstanceId,
        duplicate: bool,
    },
    Signalled {
        seq: u64,
        duplicate: bool,
    },
    /// The committed record, so that the step loop need not read it back.
    Transitioned(Box<InstanceRecord>),
    CancelRequested {
        already: bool,
    },
    CancelTooLate {
        status: Status,
    },
    /// The op's once-key (a caller's own idempotency key, e.g. a webhook delivery id) was
    /// recorded before: nothing was done. Otherwise the key is recorded with the op.
    OnceSeen,
    IntentFresh,
    IntentUnresolved(Vec<u8>),
    IntentResolved(Vec<u8>),
    Done,
}

impl Reply {
    pub(crate) fn unexpected(&self) -> EngineError {
        EngineError::Internal(format!("unexpected writer reply {self:?}"))
    }
}

/// What a committed batch changed that the rest of the engine must react to.
#[derive(Debug, Default)]
pub(crate) struct Notices {
    pub runnable: Vec<InstanceId>,
    pub cancelled: Vec<InstanceId>,
    pub earliest_timer: Option<Timestamp>,
    pub effects: Vec<(u64, Timestamp)>,
    pub changed: Vec<(InstanceId, Status)>,
    /// Instances that got a signal, with their `next_signal` after it (wakes a running step
    /// that listens for signals).
    pub signalled: Vec<(InstanceId, u64)>,
    /// Signals taken by a committed step: (instance, seq, the step's reply if it gave one).
    pub answers: Vec<(InstanceId, u64, Option<Vec<u8>>)>,
    /// The first and the last feed row the batch appended.
    pub feed_first: Option<u64>,
    pub feed_last: Option<u64>,
}

impl Notices {
    fn merge(&mut self, other: Notices) {
        self.runnable.extend(other.runnable);
        self.cancelled.extend(other.cancelled);
        self.effects.extend(other.effects);
        self.changed.extend(other.changed);
        self.signalled.extend(other.signalled);
        self.answers.extend(other.answers);
        self.feed_first = earliest(self.feed_first, other.feed_first);
        self.feed_last = self.feed_last.max(other.feed_last);
        self.earliest_timer = earliest(self.earliest_timer, other.earliest_timer);
    }
}

/// The smaller of two optional values; either one when the other is `None`.
fn earliest<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Counters of the writer, for tests and metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub commits: AtomicU64,
    pub ops: AtomicU64,
}

struct Request {
    op: Op,
    reply: ReplySender,
}

pub(crate) type ReplySender = oneshot::Sender<Result<Reply, EngineError>>;

/// What one committed batch hands to the engine.
pub(crate) struct Commit {
    pub notices: Notices,
    /// When the commit was durable.
    pub durable_at: std::time::SystemTime,
    /// Each caller's reply, to be sent after the notices are acted on.
    pub replies: Vec<(ReplySender, Result<Reply, EngineError>)>,
}

impl Commit {
    /// Acts on nothing and answers every caller (used when nobody else will).
    pub(crate) fn answer(self) {
        for (tx, result) in self.replies {
            let _ = tx.send(result);
        }
    }
}

/// Handle for submitting ops to the writer thread.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Request>,
    pub stats: Arc<WriterStats>,
    /// Why the store failed, once a commit failed (set before any caller hears of it).
    failure: Arc<watch::Sender<Option<String>>>,
}

impl Writer {
    /// Starts the writer thread. `deliver` is called after each commit with what it changed and
    /// the replies; it must answer them (see [`Commit::answer`]).
    pub(crate) fn spawn(
        store: Store,
        limits: Limits,
        deliver: impl Fn(Commit) + Send + 'static,
    ) -> Result<(Writer, JoinHandle<()>), std::io::Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(WriterStats::default());
        let failure = Arc::new(watch::Sender::new(None));
        let thread_stats = stats.clone();
        let thread_failure = failure.clone();
        let handle = std::thread::Builder::new()
            .name("fleet-writer".into())
            .spawn(move || run(store, rx, thread_stats, limits, deliver, &thread_failure))?;
        Ok((Writer { tx, stats, failure }, handle))
    }

    /// Why the store failed, once a commit failed; `None` while it works.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Sees the failure as soon as it is recorded (see [`Writer::failure`]).
    pub(crate) fn watch_failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    /// The error of a request the writer did not answer: the store's failure if it failed
    /// (the writer stopped after it), else the writer is gone.
    fn unanswered(&self) -> EngineError {
        match self.failure() {
            Some(reason) => EngineError::Store(StoreError::Failed { reason }),
            None => EngineError::Store(StoreError::WriterGone),
        }
    }

    /// Submits `op` without waiting for its commit (nobody hears whether it was refused).
    pub(crate) fn send(&self, op: Op) -> Result<(), EngineError> {
        if let Some(reason) = self.failure() {
            return Err(EngineError::Store(StoreError::Failed { reason }));
        }
        let (reply, _) = oneshot::channel();
        self.tx
            .send(Request { op, reply })
            .map_err(|_| self.unanswered())
    }

    /// Submits `op` and waits until it is committed (or refused).
    pub(crate) async fn submit(&self, op: Op) -> Result<Reply, EngineError> {
        if let Some(reason) = self.failure() {
            return Err(EngineError::Store(StoreError::Failed { reason }));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { op, reply })
            .map_err(|_| self.unanswered())?;
        rx.await.map_err(|_| self.unanswered())?
    }
}

fn run(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Request>,
    stats: Arc<WriterStats>,
    limits: Limits,
    deliver: impl Fn(Commit),
    failure: &watch::Sender<Option<String>>,
) {
    let mut batch: Vec<Request> = Vec::new();
    let mut stopping = false;
    // Running instances woken meanwhile (see `Op::Wake`): kept across batches, in memory only
    // (recovery re-runs what was runnable, and the waker's owner wakes again after a restart).
    let mut woken: HashSet<InstanceId> = HashSet::new();
    let mut slow = SlowCommits::default();
    while !stopping {
        match next_request(&mut rx) {
            Some(r) => batch.push(r),
            None => break,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if batch.iter().all(|r| r.op.is_background()) {
            linger(&mut rx, &mut batch);
        }
        if let Some(pos) = batch.iter().position(|r| matches!(r.op, Op::Stop)) {
            stopping = true;
            // Everything queued after the stop is refused below (dropped senders → WriterGone).
            let rest = batch.split_off(pos);
            drop(rest);
        }
        let ops = batch.len() as u64;
        let began = std::time::Instant::now();
        let applied = apply_batch(&store, &mut batch, limits, &mut woken);
        slow.observe(began.elapsed(), ops);
        match applied {
            Ok(results) => {
                let durable_at = std::time::SystemTime::now();
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.ops.fetch_add(ops, Ordering::Relaxed);
                let mut notices = Notices::default();
                let mut replies = Vec::with_capacity(results.len());
                for (req, (result, n)) in batch.drain(..).zip(results) {
                    if result.is_ok() {
                        notices.merge(n);
                    }
                    replies.push((req.reply, result));
                }
                deliver(Commit {
                    notices,
                    durable_at,
                    replies,
                });
            }
            Err(e) => {
                let reason = match &e {
                    EngineError::Store(s) => format!("a commit failed: {s}"),
                    other => format!("a commit failed: {other}"),
                };
                tracing::error!(
                    error = %e,
                    ops,
                    "store commit failed; the store takes no more writes until it is reopened"
                );
                // Recorded before any caller hears of it: whoever sees the error sees the
                // failure too.
                failure.send_replace(Some(reason.clone()));
                refuse_all(batch.drain(..), &reason);
                rx.close();
                let mut queued = Vec::new();
                while let Ok(r) = rx.try_recv() {
                    queued.push(r);
                }
                refuse_all(queued.into_iter(), &reason);
                return;
            }
        }
    }
    // Refuse anything still queued.
    rx.close();
}

/// Answers each request with [`StoreError::Failed`].
fn refuse_all(requests: impl Iterator<Item = Request>, reason: &str) {
    for req in requests {
        let _ = req.reply.send(Err(EngineError::Store(StoreError::Failed {
            reason: reason.to_string(),
        })));
    }
}

/// Commits slower than [`SlowCommits::THRESHOLD`] (a slow disk flush holds every caller of the
/// batch): counted, and reported as a warning at most once per [`SlowCommits::EVERY`].
#[derive(Default)]
struct SlowCommits {
    since_report: u64,
    worst: std::time::Duration,
    last_report: Option<std::time::Instant>,
}

impl SlowCommits {
    const THRESHOLD: std::time::Duration = std::time::Duration::from_millis(20);
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn observe(&mut self, took: std::time::Duration, ops: u64) {
        if took < Self::THRESHOLD {
            return;
        }
        self.since_report += 1;
        self.worst = self.worst.max(took);
        let now = std::time::Instant::now();
        if self
            .last_report
            .is_none_or(|at| now.duration_since(at) >= Self::EVERY)
        {
            tracing::warn!(
                slow_commits = self.since_report,
                worst_ms = self.worst.as_millis() as u64,
                last_ops = ops,
                "store commits slower than {} ms (the disk's flush): every request of such a \
                 batch waited for it",
                Self::THRESHOLD.as_millis()
            );
            self.since_report = 0;
            self.worst = std::time::Duration::ZERO;
            self.last_report = Some(now);
        }
    }
}

/// How long a batch of background ops alone waits for other ops to share its commit.
const BACKGROUND_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Lets a batch of background ops (nobody waits on them: see [`Op::is_background`]) wait up to
/// [`BACKGROUND_LINGER`] for an op someone waits on, and commits them together: recording an
/// effect's delivery then costs no commit of its own while anything else is being written.
fn linger(rx: &mut mpsc::UnboundedReceiver<Request>, batch: &mut Vec<Request>) {
    let start = std::time::Instant::now();
    while start.elapsed() < BACKGROUND_LINGER && batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(r) => {
                let foreground = !r.op.is_background();
                batch.push(r);
                if foreground {
                    // Take what came with it, and commit at once.
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    return;
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
    }
}

/// How long the writer polls for the next request before it sleeps. At low concurrency the next
/// step's request usually arrives within this window, which saves a futex sleep and wake-up per
/// transition; under load the queue is never empty and this costs nothing.
const SPIN: std::time::Duration = std::time::Duration::from_micros(150);

fn next_request(rx: &mut mpsc::UnboundedReceiver<Request>) -> Option<Request> {
    let start = std::time::Instant::now();
    while start.elapsed() < SPIN {
        match rx.try_recv() {
            Ok(r) => return Some(r),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    rx.blocking_recv()
}

type OpResult = (Result<Reply, EngineError>, Notices);

/// Applies the batch in one transaction. `woken` changes only if it commits.
fn apply_batch(
    store: &Store,
    batch: &mut [Request],
    limits: Limits,
    woken: &mut HashSet<InstanceId>,
) -> Result<Vec<OpResult>, EngineError> {
    let mut txn: WriteTransaction = store.db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    let after = {
        let mut t = Tables::open(&txn, limits, woken.clone())?;
        let now = Timestamp::now();
        for req in batch.iter_mut() {
            let op = std::mem::replace(&mut req.op, Op::Stop);
            let mut notices = Notices::default();
            let result = t.apply(op, now, &mut notices);
            match result {
                Err(e) if e.is_storage() => return Err(e),
                r => results.push((r, notices)),
            }
        }
        t.prune(now)?;
        t.close()
    };
    txn.commit()?;
    *woken = after;
    Ok(results)
}

/// Where a once-key is kept in the idempotency table.
pub(crate) fn once_key(key: &str) -> String {
    format!("once/{key}")
}

/// The tables of one write transaction, and the op logic on them.
struct Tables<'txn> {
    meta: Table<'txn, &'static str, u64>,
    /// Records and history, side by side (see [`INSTANCE_ROWS`]).
    rows: Table<'txn, (u64, u64), &'static [u8]>,
    inbox: Table<'txn, (u64, u64), &'static [u8]>,
    timers: Table<'txn, (u64, u64), ()>,
    outbox: Table<'txn, u64, &'static [u8]>,
    pending: Table<'txn, u64, ()>,
    idem: Table<'txn, &'static str, u64>,
    intents: Table<'txn, (u64, &'static str), &'static [u8]>,
    live: Table<'txn, u64, ()>,
    replies: Table<'txn, (u64, u64), &'static [u8]>,
    feed: Table<'txn, u64, &'static [u8]>,
    consumers: Table<'txn, &'static str, u64>,
    phases: Table<'txn, u64, &'static str>,
    by_phase: Table<'txn, (&'static str, &'static str, u64), ()>,
    ended: Table<'txn, (u64, u64), ()>,
    keys: Table<'txn, (&'static str, &'static str, u64), ()>,
    /// The next feed row's number, and the one the batch started with (written back once).
    feed_next: u64,
    instance_keys: Table<'txn, (u64, &'static str), ()>,
    idem_age: Table<'txn, (u64, &'static str), ()>,
    limits: Limits,
    /// What this batch added that retention will remove in turn (see `prune`).
    added: prune::Added,
    /// Running instances woken since their step loaded (see `Op::Wake`).
    woken: HashSet<InstanceId>,
}

impl<'txn> Tables<'txn> {
    fn open(
        txn: &'txn WriteTransaction,
        limits: Limits,
        woken: HashSet<InstanceId>,
    ) -> Result<Self, EngineError> {
        let meta = txn.open_table(META)?;
        let feed = txn.open_table(FEED)?;
        let feed_next = feed_next(&meta, &feed)?;
        Ok(Tables {
            meta,
            rows: txn.open_table(INSTANCE_ROWS)?,
            inbox: txn.open_table(INBOX)?,
            timers: txn.open_table(TIMERS)?,
            outbox: txn.open_table(OUTBOX)?,
            pending: txn.open_table(OUTBOX_PENDING)?,
            idem: txn.open_table(IDEMPOTENCY)?,
            intents: txn.open_table(INTENTS)?,
            live: txn.open_table(LIVE)?,
            replies: txn.open_table(REPLIES)?,
            feed,
            consumers: txn.open_table(CONSUMERS)?,
            phases: txn.open_table(PHASES)?,
            by_phase: txn.open_table(BY_PHASE)?,
            ended: txn.open_table(ENDED)?,
            keys: txn.open_table(KEYS)?,
            feed_next,
            instance_keys: txn.open_table(INSTANCE_KEYS)?,
            idem_age: txn.open_table(IDEM_AGE)?,
            limits,
            added: prune::Added::default(),
            woken,
        })
    }

    fn apply(&mut self, op: Op, now: Timestamp, n: &mut Notices) -> Result<Reply, EngineError> {
        match op {
            Op::Start { new, once } => self.once(once, now, |t| t.start(new, now, n)),
            Op::Signal { id, signal, once } => {
                self.once(once, now, |t| t.signal(id, signal, now, n))
            }
            Op::Once { key } => self.once(Some(key), now, |_| Ok(Reply::Done)),
            Op::Transition {
                id,
                expected_step,
                plan,
            } => self.transition(id, expected_step, plan, now, n),
            Op::Cancel { id, reason } => self.cancel(id, reason, now, n),
            Op::IntentBegin { id, name, payload } => self.intent_begin(id, name, payload, now),
            Op::IntentResolve { id, name, result } => self.intent_resolve(id, name, result, now),
            Op::FireTimers(due) => self.fire_timers(due, now, n),
            Op::Wake { id } => self.wake(id, now, n),
            Op::EffectAttempt { effect, outcome } => self.effect_attempt(effect, outcome, now, n),
            Op::Advance {
                name,
                from,
                to,
                effects,
            } => self.advance(name, from, to, effects, now, n),
            Op::Stop => Ok(Reply::Done),
        }
    }

    // ---- helpers -------------------------------------------------------------------------

    /// Ends the batch: returns the running instances woken meanwhile.
    fn close(self) -> HashSet<InstanceId> {
        self.woken
    }

    /// Records `id`'s phase (when its workflow names one) and keeps the phase index in step.
    fn set_phase(
        &mut self,
        id: InstanceId,
        workflow: &str,
        phase: Option<String>,
    ) -> Result<(), EngineError> {
        let Some(phase) = phase else {
            return Ok(());
        };
        let old = self.phases.get(id)?.map(|g| g.value().to_string());
        if old.as_deref() == Some(phase.as_str()) {
            return Ok(());
        }
        if let Some(old) = old {
            self.by_phase.remove((workflow, old.as_str(), id))?;
        }
        self.by_phase.insert((workflow, phase.as_str(), id), ())?;
        self.phases.insert(id, phase.as_str())?;
        Ok(())
    }

    /// Records idempotency key `key` (with what it produced), dated for its expiry.
    fn remember(&mut self, key: &str, value: u64, now: Timestamp) -> Result<(), EngineError> {
        self.added.keys += 1;
        self.idem.insert(key, value)?;
        self.idem_age.insert((now.0, key), ())?;
        Ok(())
    }

    /// Indexes the keys `id`'s state names that are not indexed yet (a read each, a write
    /// only for a new one).
    fn add_keys(
        &mut self,
        id: InstanceId,
        workflow: &str,
        keys: Vec<String>,
    ) -> Result<(), EngineError> {
        for key in keys {
            if self.keys.get((workflow, key.as_str(), id))?.is_none() {
                self.keys.insert((workflow, key.as_str(), id), ())?;
                self.instance_keys.insert((id, key.as_str()), ())?;
            }
        }
        Ok(())
    }

    /// Appends the change feed's next row: `event` happened to `id`, now in `rec`'s status
    /// and its recorded phase.
    fn feed(
        &mut self,
        id: InstanceId,
        rec: &InstanceRecord,
        event: FeedEvent,
        now: Timestamp,
        n: &mut Notices,
    ) -> Result<(), EngineError> {
        let phase = self.phases.get(id)?.map(|g| g.value().to_string());
        let seq = self.feed_next;
        let row = FeedRecord {
            instance: id,
            workflow: rec.workflow.clone(),
            status: rec.status,
            phase,
            event,
            at: now,
        };
        self.feed.insert(seq, encode(&row)?.as_slice())?;
        self.feed_next += 1;
        self.added.rows += 1;
        n.feed_first.get_or_insert(seq);
        n.feed_last = Some(seq);
        Ok(())
    }

    fn next_id(&mut self, counter: &'static str) -> Result<u64, EngineError> {
        let id = self.meta.get(counter)?.map(|g| g.value()).unwrap_or(1);
        self.meta.insert(counter, id + 1)?;
        Ok(id)
    }

    fn load(&self, id: InstanceId) -> Result<InstanceRecord, EngineError> {
        let guard = self
            .rows
            .get((id, RECORD))?
            .ok_or(EngineError::UnknownInstance(id))?;
        decode(guard.value()).map_err(|source| EngineError::Corrupt {
            what: format!("instance {id}"),
            source,
        })
    }

    fn save(&mut self, id: InstanceId, rec: &InstanceRecord) -> Result<(), EngineError> {
        self.rows.insert((id, RECORD), encode(rec)?.as_slice())?;
        Ok(())
    }

    /// Appends to the instance's history, dropping the oldest event past the cap.
    fn event(
        &mut self,
        id: InstanceId,
        rec: &mut InstanceRecord,
        kind: EventKind,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        let bytes = encode(&Event { at: now, kind })?;
        self.rows.insert((id, rec.history_next), bytes.as_slice())?;
        rec.history_next += 1;
        while rec.history_next - rec.history_first > self.limits.history_cap {
            self.rows.remove((id, rec.history_first))?;
            rec.history_first += 1;
        }
        Ok(())
    }

    /// Moves the instance's timer row to `at` (or removes it).
    fn set_timer(
        &mut self,
        id: InstanceId,
        rec: &mut InstanceRecord,
        at: Option<Timestamp>,
        n: &mut Notices,
    ) -> Result<(), EngineError> {
        if rec.wake_at == at {
            return Ok(());
        }
        if let Some(old) = rec.wake_at {
            self.timers.remove((old.0, id))?;
        }
        if let Some(new) = at {
            self.timers.insert((new.0, id), ())?;
            n.earliest_timer = Some(n.earliest_timer.map_or(new, |e| e.min(new)));
        }
        rec.wake_at = at;
        Ok(())
    }

    fn make_runnable(
        &mut self,
        id: InstanceId,
        rec: &mut InstanceRecord,
        wake: Wake,
        n: &mut Notices,
    ) -> Result<(), EngineError> {
        self.set_timer(id, rec, None, n)?;
        rec.status = Status::Runnable;
        rec.wake = wake;
        n.runnable.push(id);
        n.changed.push((id, Status::Runnable));
        Ok(())
    }

    // ---- ops -----------------------------------------------------------------------------

    /// Runs `op` unless the once-key was recorded before ([`Reply::OnceSeen`]); records the
    /// key (its value: the commit time) when the op succeeds, in the same transaction.
    fn once(
        &mut self,
        once: Option<String>,
        now: Timestamp,
        op: impl FnOnce(&mut Self) -> Result<Reply, EngineError>,
    ) -> Result<Reply, EngineError> {
        let Some(once) = once else {
            return op(self);
        };
        let scoped = once_key(&once);
        if self.idem.get(scoped.as_str())?.is_some() {
            return Ok(Reply::OnceSeen);
        }
        let reply = op(self)?;
        self.remember(&scoped, now.0, now)?;
        Ok(reply)
    }

    fn start(
        &mut self,
        new: NewInstance,
        now: Timestamp,
        n: &mut Notices,
    ) -> Result<Reply, EngineError> {
        let NewInstance {
            workflow,
            version,
            state,
            key,
            phase,
            keys,
        } = new;
        let scoped = key.map(|k| format!("start/{workflow}/{k}"));
        if let Some(k) = &scoped
            && let Some(existing) = self.idem.get(k.as_str())?
        {
            return Ok(Reply::Started {
                id: existing.value(),
                duplicate: true,
            });
        }
        let id = self.next_id(META_NEXT_INSTANCE)?;
        let mut rec = InstanceRecord {
            workflow: workflow.clone(),
            def_version: version,
            status: Status::Runnable,
            state,
            step: 0,
            wake_at: None,
            wake: Wake::Start,
            errors: 0,
            next_signal: 0,
            pending_signals: 0,
            history_first: 0,
            history_next: 0,
            cancel: None,
            created: now,
            updated: now,
        };
        self.event(id, &mut rec, EventKind::Started { workflow, version }, now)?;
        self.save(id, &rec)?;
        self.set_phase(id, &rec.workflow, phase)?;
        self.add_keys(id, &rec.workflow, keys)?;
        self.feed(id, &rec, FeedEvent::Started, now, n)?;
        self.live.insert(id, ())?;
        if let Some(k) = &scoped {
            self.remember(k, id, now)?;
        }
        n.runnable.push(id);
        n.changed.push((id, Status::Runnable));
        Ok(Reply::Started {
            id,
            duplicate: false,
        })
    }

    fn signal(
        &mut self,
        id: InstanceId,
        signal: NewSignal,
        now: Timestamp,
        n: &mut Notices,
    ) -> Result<Reply, EngineError> {
        let NewSignal {
            workflow,
            key,
            payload,
            dedupe,
        } = signal;
        let mut rec = self.load(id)?;
        if let Some(expected) = workflow
            && expected != rec.workflow
        {
            return Err(EngineError::WrongWorkflow {
                id,
                expected,
                actual: rec.workflow,
            });
        }
        let scoped = format!("signal/{id}/{key}");
        if dedupe && let Some(seq) = self.idem.get(scoped.as_str())? {
            return Ok(Reply::Signalled {
                seq: seq.value(),
                duplicate: true,
            });
        }
        if rec.status.is_terminal() {
            return Err(EngineError::Finished {
                id,
                status: rec.status,
            });
        }
        let seq = rec.next_signal;
        let signal = SignalRecord {
            key: key.clone(),
            payload,
            received: now,
        };
        self.inbox.insert((id, seq), encode(&signal)?.as_slice())?;
        if dedupe {
            self.remember(&scoped, seq, now)?;
        }
        rec.next_signal += 1;
        rec.pending_signals += 1;
        rec.updated = now;
        let key = short(key);
        self.event(
            id,
            &mut rec,
            EventKind::SignalReceived {
                seq,
                key: key.clone(),
            },
            now,
        )?;
        if rec.status == Status::Waiting {
            self.make_runnable(id, &mut rec, Wake::Signal, n)?;
        }
        n.signalled.push((id, rec.next_signal));
        self.save(id, &rec)?;
        self.feed(id, &rec, FeedEvent::Signal { key }, now, n)?;
        Ok(Reply::Signalled {
            seq,
            duplicate: false,
        })
    }

    fn transition(
        &mut self,
        id: InstanceId,
        expected_step: u64,
        plan: Plan,
        now: Timestamp,
        n: &mut Notices,
    ) -> Result<Reply, EngineError> {
        let mut rec = self.load(id)?;
        if rec.status.is_terminal() {
            return Err(EngineError::Finished {
                id,
                status: rec.status,
            });
        }
        if rec.step != expected_step {
            return Err(EngineError::Conflict {
                id,
                expected: expected_step,
                found: rec.step,
            });
        }
        // Validation done: from here on only storage can fail.
        let woken = self.woken.remove(&id);
        // A cancel committed while this step ran wins over the step (its ending stays in the
        // history): only the cleanup's effects are queued, never the racing step's — unless the
        // step ends the instance cancelled itself, which is the same outcome.
        let raced = rec.cancel.is_some() && !plan.cleanup && plan.kind != PlanKind::Cancelled;
        let mut events = plan.events;
        let mut effects = plan.effects;
        if raced && !effects.is_empty() {
            let dropped = format!(
                "{} effect(s) not queued: a cancel was requested while the step ran",
                effects.len()
            );
            effects.clear();
            for e in events.iter_mut() {
                if let EventKind::Step { note, .. } = e {
                    *note = Some(short(match note.take() {
                        Some(n) => format!("{n}; {dropped}"),
                        None => dropped.clone(),
                    }));
                }
            }
        }
        let mut replies = plan.replies;
        for seq in plan.consumed {
            if self.inbox.remove((id, seq))?.is_some() {
                rec.pending_signals = rec.pending_signals.saturating_sub(1);
                self.event(id, &mut rec, EventKind::SignalConsumed { seq }, now)?;
                let reply = replies
                    .iter()
                    .position(|(s, _)| *s == seq)
                    .map(|i| replies.swap_remove(i).1);
                if let Some(bytes) = &reply {
                    self.replies.insert((id, seq), bytes.as_slice())?;
                    if seq >= REPLIES_KEPT {
                        let old = seq - REPLIES_KEPT;
                        self.replies.retain_in((id, 0)..=(id, old), |_, _| false)?;
                    }
                }
                n.answers.push((id, seq, reply));
            }
        }
        if let Some(version) = plan.pin {
            rec.def_version = version;
        }
        for (seq, error) in plan.discarded {
            if self.inbox.remove((id, seq))?.is_some() {
                rec.pending_signals = rec.pending_signals.saturating_sub(1);
                self.event(id, &mut rec, EventKind::SignalDiscarded { seq, error }, now)?;
            }
        }
        for kind in events {
            self.event(id, &mut rec, kind, now)?;
        }
        for effect in effects {
            self.queue_effect(id, &mut rec, effect, now, n)?;
        }
        if let Some(state) = plan.state {
            rec.state = state;
        }
        rec.step += 1;
        rec.updated = now;
        let late_signal = rec.next_signal > plan.seen_next_signal;
        let cancelled = rec.cancel.is_some();
        let plan_label = plan.kind.label();
        match plan.kind {
            // A cancel was acknowledged while this step ran: it wins over the step's own ending,
            // which stays in history; the cleanup runs next and the instance ends cancelled.
            PlanKind::Complete | PlanKind::Fail(_) if cancelled => {
                rec.errors = 0;
                self.set_timer(id, &mut rec, None, n)?;
                rec.status = Status::Runnable;
                rec.wake = Wake::Cancel;
            }
            PlanKind::Continue => {
                rec.errors = 0;
                self.set_timer(id, &mut rec, None, n)?;
                rec.status = Status::Runnable;
                rec.wake = Wake::Next;
            }
            PlanKind::Wait(deadline) => {
                rec.errors = 0;
                if cancelled {
                    self.set_timer(id, &mut rec, None, n)?;
                    rec.status = Status::Runnable;
                    rec.wake = Wake::Cancel;
                } else if late_signal || woken {
                    self.set_timer(id, &mut rec, None, n)?;
                    rec.status = Status::Runnable;
                    rec.wake = Wake::Signal;
                } else {
                    self.set_timer(id, &mut rec, deadline, n)?;
                    rec.status = Status::Waiting;
                }
            }
            PlanKind::Sleep(at) => {
                rec.errors = 0;
                self.set_timer(id, &mut rec, Some(at), n)?;
                rec.status = Status::Sleeping;
            }
            PlanKind::Error { error, retry_at } => {
                rec.errors = rec.errors.saturating_add(1);
                let retry_in_ms = retry_at.0.saturating_sub(now.0);
                self.event(
                    id,
                    &mut rec,
                    EventKind::StepError {
                        step: expected_step,
                        error,
                        retry_in_ms,
                    },
                    now,
                )?;
                self.set_timer(id, &mut rec, Some(retry_at), n)?;
                rec.status = Status::Sleeping;
            }
            PlanKind::Complete => self.finish(id, &mut rec, EventKind::Completed, now, n)?,
            PlanKind::Fail(reason) => {
                self.finish(id, &mut rec, EventKind::Failed { reason }, now, n)?
            }
            PlanKind::Cancelled => self.finish(id, &mut rec, EventKind::Cancelled, now, n)?,
        }
        // A cancelled instance goes to its cleanup at once, except after a step error: the
        // error's backoff still applies (the state may be unreadable until it is fixed).
        if cancelled
            && matches!(rec.status, Status::Waiting | Status::Sleeping)
            && !matches!(plan_label, "error")
        {
            self.set_timer(id, &mut rec, None, n)?;
            rec.status = Status::Runnable;
            rec.wake = Wake::Cancel;
        }
        if rec.status != Status::Runnable {
            n.changed.push((id, rec.status));
        }
        self.save(id, &rec)?;
        let outcome = plan_label.to_string();
        self.set_phase(id, &rec.workflow, plan.phase)?;
        self.add_keys(id, &rec.workflow, plan.keys)?;
        self.feed(id, &rec, FeedEvent::Step { outcome }, now, n)?;
        Ok(Reply::Transitioned(Box::new(rec)))
    }

    fn queue_effect(
        &mut self,
        id: InstanceId,
        rec: &mut InstanceRecord,
        effect: Effect,
        now: Timestamp,
        n: &mut Notices,
    ) -> Result<(), EngineError> {
        let effect_id = self.next_id(META_NEXT_EFFECT)?;
        let record = EffectRecord {
            instance: id,
            kind: effect.kind.clone(),
            payload: effect.payload,
            status: EffectStatus::Pending,
            attempts: 0,
            next_attempt: now,
            last_error: None,
            created: now,
        };
        self.outbox.insert(effect_id, encode(&record)?.as_slice())?;
        self.pending.insert(effect_id, ())?;
        self.event(
            id,
            rec,
            EventKind::EffectQueued {
                effect: effect_id,
                kind: effect.kind,
            },
            now,
        )?;
        n.effects.push((effect_id, now));
        Ok(())
    }

    /// Ends the instance with `end` (Completed, Failed or Cancelled): no timer, no intents, and
    /// unconsumed signals discarded with an event.
    fn finish(
        &mut self,
        id: InstanceId,
        rec: &mut InstanceRecord,
        end: EventKind,
        now: Timestamp,
        n: &mut Notices,
    ) -> Result<(), EngineError> {
        self.set_timer(id, rec, None, n)?;
        self.live.remove(id)?;
        self.ended.insert((now.0, id), ())?;
        self.added.ended += 1;
        let left: Vec<u64> = self
            .inbox
            .range((id, 0)..=(id, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for seq in left {
            self.inbox.remove((id, seq))?;
            self.event(
                id,
                rec,
                EventKind::SignalDiscarded {
                    seq,
                    error: "instance ended before taking it".into(),
                },
                now,
            )?;
        }
        rec.pending_signals = 0;
        let mut names: Vec<String> = Vec::new();
        for row in self.intents.range((id, "")..)? {
            let (k, _) = row?;
            let (owner, name) = k.value();
            if owner != id {
                break;
            }
            names.push(name.to_string());
        }
        for name in names {
            self.intents.remove((id, name.as_str()))?;
        }
        rec.status = match end {
            EventKind::Completed => Status::Completed,
            EventKind::Cancelled => Status::Cancelled,
            _ => Status::Failed,
        };
        self.event(id, rec, end, now)
    }

    fn cancel(
        &mut self,
        id: InstanceId,
        reason: String,
        now: Timestamp,
        n: &mut Notices,
    ) -> Result<Reply, EngineError> {
        let mut rec = self.load(id)?;
        if rec.status.is_terminal() {
            return Ok(Reply::CancelTooLate { status: rec.status });
        }
        if rec.cancel.is_some() {
            return Ok(Reply::CancelRequested { already: true });
        }
        rec.cancel = Some(reason.clone());
        rec.updated = now;
        let reason = short(reason);
        self.event(
            id,
            &mut rec,
            EventKind::CancelRequested {
                reason: reason.clone(),
            },
            now,
        )?;
        if matches!(rec.status, Status::Waiting | Status::Sleeping) {
            self.make_runnable(id, &mut rec, Wake::Cancel, n)?;
        }
        self.save(id, &rec)?;
        self.feed(id, &rec, FeedEvent::CancelRequested { reason }, now, n)?;
        n.cancelled.push(id);
        Ok(Reply::CancelRequested { already: false })
    }

    fn intent_begin(
        &mut self,
        id: InstanceId,
        name: String,
        payload: Vec<u8>,
        now: Timestamp,
    ) -> Result<Reply, EngineError> {
        let mut rec = self.load(id)?;
        if rec.status.is_terminal() {
            return Err(EngineError::Finished {
                id,
                status: rec.status,
            });
        }
        if let Some(existing) = self.intents.get((id, name.as_str()))? {
            let intent: IntentRecord = decode(existing.value())?;
            return Ok(match intent.result {
                Some(r) => Reply::IntentResolved(r),
                None => Reply::IntentUnresolved(intent.payload),
            });
        }
        let intent = IntentRecord {
            payload,
            result: None,
            recorded: now,
        };
        self.intents
            .insert((id, name.as_str()), encode(&intent)?.as_slice())?;
        self.event(id, &mut rec, EventKind::IntentRecorded { name }, now)?;
        self.save(id, &rec)?;
        Ok(Reply::IntentFresh)
    }

    fn intent_resolve(
        &mut self,
        id: InstanceId,
        name: String,
        result: Vec<u8>,
        now: Timestamp,
    ) -> Result<Reply, EngineError> {
        let mut rec = self.load(id)?;
        let mut intent: IntentRecord = match self.intents.get((id, name.as_str()))? {
            Some(g) => decode(g.value())?,
            None => return Err(EngineError::UnknownIntent { id, name }),
        };
        intent.result = Some(result);
        self.intents
            .insert((id, name.as_str()), encode(&intent)?.as_slice())?;
        self.event(id, &mut rec, EventKind::IntentResolved { name }, now)?;
        self.save(id, &rec)?;
        Ok(Reply::Done)
    }

    fn fire_timers(
        &mut self,
        due: Vec<(Timestamp, InstanceId)>,
        now: Timestamp,
        n: &mut Notices,
    ) -> Result<Reply, EngineError> {
        for (at, id) in due {
            self.timers.remove((at.0, id))?;
            let mut rec = match self.load(id) {
                Ok(r) => r,
                Err(EngineError::UnknownInstance(_)) => continue,
                Err(e) if e.is_storage() => return Err(e),
                Err(e) => {
                    tracing::error!(instance = id, error = %e, "timer of an unreadable instance dropped");
                    continue;
                }
            };
            if rec.wake_at != Some(at) {
                continue; // stale row: the instance moved its timer meanwhile
            }
            rec.wake_at = None;
            if matches!(rec.status, Status::Waiting | Status::Sleeping) {
                self.event(id, &mut rec, EventKind::TimerFired { due: at }, now)?;
                self.make_runnable(id, &mut rec, Wake::Timer, n)?;
                self.feed(id, &rec, FeedEvent::Timer, now, n)?;
            }
            self.save(id, &rec)?;
        }
        Ok(Reply::Done)
    }

    fn wake(
        &mut self,
        id: InstanceId,
        now: Timestamp,
        n: &mut Notices,
    ) -> Result<Reply, EngineError> {
        let mut rec = self.load(id)?;
        match rec.status {
            Status::Waiting => {
                self.make_runnable(id, &mut rec, Wake::Signal, n)?;
                self.save(id, &rec)?;
                self.feed(id, &rec, FeedEvent::Woken, now, n)?;
            }
            // Its step may be about to park: that transition keeps it runnable.
            Status::Runnable => {
                self.woken.insert(id);
            }
            // Sleeping keeps its delay; ended instances have nothing to wake.
            _ => {}
        }
        Ok(Reply::Done)
    }

    fn effect_attempt(
        &mut self,
        effect: u64,
        outcome: EffectOutcome,
        now: Timestamp,
        n: &mut Notices,
    ) -> Result<Reply, EngineError> {
        let mut record: EffectRecord = match self.outbox.get(effect)? {
            Some(g) => decode(g.value())?,
            None => return Ok(Reply::Done), // already delivered and purged
        };
        if record.status != EffectStatus::Pending {
            return Ok(Reply::Done);
        }
        record.attempts += 1;
        let instance = record.instance;
        // Read the instance before writing anything: a refused op must write nothing.
        let mut owner = match self.load(instance) {
            Ok(rec) => Some(rec),
            Err(EngineError::UnknownInstance(_)) => None,
            Err(e) if e.is_storage() => return Err(e),
            Err(e) => {
                tracing::error!(instance, effect, error = %e, "effect outcome not recorded in an unreadable instance's history");
                None
            }
        };
        let kind = record.kind.clone();
        let event = match outcome {
            EffectOutcome::Delivered => {
                self.outbox.remove(effect)?;
                self.pending.remove(effect)?;
                Some((
                    EventKind::EffectDelivered {
                        effect,
                        attempts: record.attempts,
                    },
                    FeedEvent::EffectDelivered { kind },
                ))
            }
            EffectOutcome::Retry { error, next } => {
                record.last_error = Some(short(error));
                record.next_attempt = next;
                self.outbox.insert(effect, encode(&record)?.as_slice())?;
                None
            }
            EffectOutcome::Abandon { error } => {
                let error = short(error);
                record.status = EffectStatus::Abandoned;
                record.last_error = Some(error.clone());
                self.outbox.insert(effect, encode(&record)?.as_slice())?;
                self.pending.remove(effect)?;
                Some((
                    EventKind::EffectAbandoned {
                        effect,
                        error: error.clone(),
                    },
                    FeedEvent::EffectAbandoned { kind, error },
                ))
            }
        };
        if let (Some((event, change)), Some(rec)) = (event, owner.as_mut()) {
            self.event(instance, rec, event, now)?;
            self.save(instance, rec)?;
            self.feed(instance, rec, change, now, n)?;
        }
        Ok(Reply::Done)
    }

    fn advance(
        &mut self,
        name: String,
        from: u64,
        to: u64,
        effects: Vec<(InstanceId, Effect)>,
        now: Timestamp,
        n: &mut Notices,
    ) -> Result<Reply, EngineError> {
        let found = self
            .consumers
            .get(name.as_str())?
            .map(|g| g.value())
            .unwrap_or(0);
        if found != from || to < from || to >= self.feed_next {
            return Err(EngineError::ConsumerMoved {
                name,
                expected: from,
                found,
                to,
            });
        }
        // Read every owner before writing anything: a refused op must write nothing.
        let mut owners: std::collections::BTreeMap<InstanceId, (InstanceRecord, Vec<Effect>)> =
            Default::default();
        for (id, effect) in effects {
            if let std::collections::btree_map::Entry::Vacant(slot) = owners.entry(id) {
                slot.insert((self.load(id)?, Vec::new()));
            }
            if let Some((_, list)) = owners.get_mut(&id) {
                list.push(effect);
            }
        }
        for (id, (mut rec, list)) in owners {
            for effect in list {
                self.queue_effect(id, &mut rec, effect, now, n)?;
            }
            self.save(id, &rec)?;
        }
        self.consumers.insert(name.as_str(), to)?;
        Ok(Reply::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(op: Op) -> Request {
        Request {
            op,
            reply: oneshot::channel().0,
        }
    }

    fn delivered(effect: u64) -> Op {
        Op::EffectAttempt {
            effect,
            outcome: EffectOutcome::Delivered,
        }
    }

    #[test]
    fn background_ops_take_the_next_foreground_op_and_what_came_with_it_into_their_commit() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for op in [delivered(2), Op::Wake { id: 7 }, delivered(3)] {
            tx.send(request(op)).unwrap();
        }
        let mut batch = vec![request(delivered(1))];
        linger(&mut rx, &mut batch);
        let background: Vec<bool> = batch.iter().map(|r| r.op.is_background()).collect();
        assert_eq!(background, [true, true, false, true]);
    }

    #[test]
    fn background_ops_alone_are_committed_after_the_linger() {
        let (_tx, mut rx) = mpsc::unbounded_channel::<Request>();
        let mut batch = vec![request(delivered(1))];
        let started = std::time::Instant::now();
        linger(&mut rx, &mut batch);
        let waited = started.elapsed();
        assert_eq!(batch.len(), 1);
        assert!(waited >= BACKGROUND_LINGER, "waited {waited:?}");
    }

    #[test]
    fn only_effect_outcomes_are_background() {
        assert!(delivered(1).is_background());
        assert!(!Op::Wake { id: 1 }.is_background());
        assert!(!Op::Stop.is_background());
    }
}
