//! The change feed as readers see it: [`FeedRow`]s read from any cursor, a [`Engine::feed`]
//! stream that reads what is stored and then waits for what commits next, and durable
//! [`Consumer`]s whose cursor commits together with the effects they produce.
//!
//! The writer appends the rows (see `writer.rs`, `Tables::feed`) in the transaction of the
//! change each describes; this module only reads them. A reader that falls behind loses
//! nothing: it reads the table, never a bounded channel.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use futures::Stream;
use serde::Serialize;

use super::InstanceId;
use super::definition::Effect;
use super::engine::Engine;
use super::error::EngineError;
use super::record::{FeedEvent, FeedRecord, Status, Timestamp};
use super::writer::{Op, Reply};

/// Rows read from the store at a time by [`Engine::feed`].
const PAGE: usize = 256;
/// Commits [`DurableClock`] remembers.
const CLOCK_COMMITS: usize = 4096;

/// One committed change, numbered: rows come in `seq` order with no gap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedRow {
    pub seq: u64,
    pub instance: InstanceId,
    pub workflow: String,
    /// The instance's status after the change.
    pub status: Status,
    /// The workflow's phase after a start or a step (see `Workflow::phase`); `None` otherwise.
    pub phase: Option<String>,
    pub event: FeedEvent,
    /// When the row's transaction began (stored with it).
    pub at: Timestamp,
    /// When its commit was durable (its fsync returned), if this engine made that commit
    /// recently (among its last 4,096 commits that wrote rows); not stored.
    pub durable_at: Option<SystemTime>,
}

impl FeedRow {
    pub(crate) fn new(seq: u64, r: FeedRecord) -> Self {
        FeedRow {
            seq,
            instance: r.instance,
            workflow: r.workflow,
            status: r.status,
            phase: r.phase,
            event: r.event,
            at: r.at,
            durable_at: None,
        }
    }
}

/// When recent commits became durable, by the feed rows they wrote: (first row, last row,
/// when), oldest first, for the last [`CLOCK_COMMITS`] commits that wrote rows. In memory
/// only: it tells how long a row took from its commit to a reader.
#[derive(Debug, Default)]
pub(crate) struct DurableClock(Mutex<VecDeque<(u64, u64, SystemTime)>>);

impl DurableClock {
    /// Rows `first..=last` were committed, durable at `at`.
    pub(crate) fn record(&self, first: u64, last: u64, at: SystemTime) {
        let mut commits = self.lock();
        if commits.len() == CLOCK_COMMITS {
            commits.pop_front();
        }
        commits.push_back((first, last, at));
    }

    /// When the commit that wrote row `seq` was durable, if it is remembered.
    pub(crate) fn durable_at(&self, seq: u64) -> Option<SystemTime> {
        let commits = self.lock();
        let i = commits.partition_point(|&(_, last, _)| last < seq);
        let &(first, _, at) = commits.get(i)?;
        (first <= seq).then_some(at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, u64, SystemTime)>> {
        // A push or a search cannot leave the queue half-changed.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine {
    /// Up to `limit` committed feed rows after row `after`, without waiting.
    pub fn feed_page(&self, after: u64, limit: usize) -> Result<Vec<FeedRow>, EngineError> {
        let mut rows = self.store().feed_page(after, limit)?;
        for row in &mut rows {
            row.durable_at = self.durable_clock().durable_at(row.seq);
        }
        Ok(rows)
    }

    /// The number of the last committed feed row (0: none yet).
    pub fn feed_last(&self) -> u64 {
        *self.feed_receiver().borrow()
    }

    /// Every committed row after `after`, in order, then each new one as it commits; ends only
    /// with an error (a row that cannot be read) or when the engine is dropped.
    pub fn feed(&self, after: u64) -> impl Stream<Item = Result<FeedRow, EngineError>> + use<> {
        let engine = self.clone();
        let state = (engine, after, std::collections::VecDeque::new(), false);
        futures::stream::unfold(state, |(engine, mut cursor, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(row) = buf.pop_front() {
                    return Some((Ok(row), (engine, cursor, buf, false)));
                }
                match engine.next_rows(cursor, PAGE).await {
                    Ok(Some(rows)) => {
                        if let Some(last) = rows.last() {
                            cursor = last.seq;
                        }
                        buf.extend(rows);
                    }
                    Ok(None) => return None,
                    Err(e) => return Some((Err(e), (engine, cursor, buf, true))),
                }
            }
        })
    }

    /// At least one row after `after` (up to `limit`), waiting for a commit when there is
    /// none yet; `None` once the engine is gone.
    async fn next_rows(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Option<Vec<FeedRow>>, EngineError> {
        let mut last = self.feed_receiver();
        loop {
            // Marks the current value seen before reading: a commit after the read wakes us.
            let committed = *last.borrow_and_update();
            if committed > after {
                let mut rows = self.feed_page(after, limit)?;
                // Rows of a commit the engine has not acted on yet wait for its notice (which
                // also tells when it was durable).
                rows.retain(|r| r.seq <= committed);
                if !rows.is_empty() {
                    return Ok(Some(rows));
                }
            }
            if last.changed().await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Durable consumer `name`, at the cursor it last committed. A new one is registered (a
    /// commit) at 0: it reads every row still kept, and from then on the retention keeps every
    /// row it has not passed.
    pub async fn consumer(&self, name: &str) -> Result<Consumer, EngineError> {
        let cursor = match self.store().consumer_cursor(name)? {
            Some(cursor) => cursor,
            None => {
                let op = Op::Advance {
                    name: name.to_string(),
                    from: 0,
                    to: 0,
                    effects: Vec::new(),
                };
                match self.submit(op).await? {
                    Reply::Done => 0,
                    other => return Err(other.unexpected()),
                }
            }
        };
        Ok(Consumer {
            engine: self.clone(),
            name: name.to_string(),
            cursor,
        })
    }
}

/// A named reader of the feed whose position is kept in the store. It reads rows after its
/// cursor ([`Consumer::next`]), and commits what it produced for them — effects, delivered
/// by the outbox like a step's — together with its new cursor ([`Consumer::commit`]). After a
/// crash it resumes after the last commit: each row's effects are queued exactly once.
pub struct Consumer {
    engine: Engine,
    name: String,
    cursor: u64,
}

impl Consumer {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last row whose effects are committed.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The rows after the cursor (at most `limit`), waiting for one if there is none; `None`
    /// once the engine is gone. Reading does not move the cursor: [`Consumer::commit`] does.
    pub async fn next(&self, limit: usize) -> Result<Option<Vec<FeedRow>>, EngineError> {
        self.engine.next_rows(self.cursor, limit.max(1)).await
    }

    /// Moves the cursor to row `through` and queues `effects` (each owned by an instance, in
    /// whose history it shows) in one commit. Refused, with nothing written, when another copy
    /// of this consumer moved the cursor meanwhile ([`EngineError::ConsumerMoved`]).
    pub async fn commit(
        &mut self,
        through: u64,
        effects: Vec<(InstanceId, Effect)>,
    ) -> Result<(), EngineError> {
        let op = Op::Advance {
            name: self.name.clone(),
            from: self.cursor,
            to: through,
            effects,
        };
        match self.engine.submit(op).await? {
            Reply::Done => {
                self.cursor = through;
                Ok(())
            }
            other => Err(other.unexpected()),
        }
    }
}
