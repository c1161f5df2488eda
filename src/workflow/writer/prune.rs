//! Retention, done by the writer inside its ordinary commits: each batch also removes some of
//! the oldest expired things — idempotency keys past the dedupe window, ended instances past
//! the retention (record, history, replies, phase and key index rows), feed rows past the
//! retention that every durable consumer has passed. Each commit removes up to twice what it
//! added of each kind, plus a few: a busy store prunes faster than it grows whatever its commit
//! rate (group commit batches thousands of ops when the disk is slow), a commit stays short,
//! and an idle store has nothing new to prune.

use super::super::store::{META_FEED_NEXT, RECORD};
use super::{EngineError, FeedRecord, InstanceId, ReadableTable, Tables, Timestamp, decode};

/// Idempotency keys forgotten per commit besides twice those it recorded.
const KEYS_PER_COMMIT: usize = 64;
/// Ended instances removed per commit besides twice those that ended in it.
const INSTANCES_PER_COMMIT: usize = 4;
/// Feed rows removed per commit besides twice those it appended.
const ROWS_PER_COMMIT: usize = 64;

/// What a batch added of each thing retention removes.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Added {
    pub keys: usize,
    pub ended: usize,
    pub rows: usize,
}

impl Tables<'_> {
    /// Removes a few of the oldest expired things (see the module doc).
    pub(super) fn prune(&mut self, now: Timestamp) -> Result<(), EngineError> {
        let cutoff = |d: std::time::Duration| {
            now.0
                .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        if let Some(window) = self.limits.dedupe_window {
            self.prune_keys(cutoff(window), now)?;
        }
        if let Some(retention) = self.limits.retention {
            let before = cutoff(retention);
            self.prune_instances(before)?;
            self.prune_feed(before)?;
        }
        Ok(())
    }

    /// Forgets idempotency keys recorded before `before`. The start key of an instance that has
    /// not ended is dated `now` instead: it is how its starter finds it again (a host's
    /// instance, a pull agent's).
    fn prune_keys(&mut self, before: u64, now: Timestamp) -> Result<(), EngineError> {
        let budget = KEYS_PER_COMMIT + 2 * self.added.keys;
        let mut old: Vec<(u64, String)> = Vec::new();
        for row in self.idem_age.range((0u64, "")..(before, ""))? {
            if old.len() == budget {
                break;
            }
            let guard = row?.0;
            let (at, key) = guard.value();
            old.push((at, key.to_string()));
        }
        for (at, key) in old {
            self.idem_age.remove((at, key.as_str()))?;
            let produced = self.idem.get(key.as_str())?.map(|g| g.value());
            if key.starts_with("start/")
                && let Some(id) = produced
                && self.live.get(id)?.is_some()
            {
                self.idem_age.insert((now.0, key.as_str()), ())?;
                continue;
            }
            self.idem.remove(key.as_str())?;
        }
        Ok(())
    }

    /// Removes instances that ended before `before`, with everything kept for them. A record
    /// that cannot be read is left where it is (and reported by the engine's reads).
    fn prune_instances(&mut self, before: u64) -> Result<(), EngineError> {
        let budget = INSTANCES_PER_COMMIT + 2 * self.added.ended;
        let mut old: Vec<(u64, InstanceId)> = Vec::new();
        for row in self.ended.range((0u64, 0u64)..(before, 0u64))? {
            if old.len() == budget {
                break;
            }
            old.push(row?.0.value());
        }
        for (at, id) in old {
            self.ended.remove((at, id))?;
            let rec = match self.load(id) {
                Ok(rec) if rec.status.is_terminal() => rec,
                Ok(_) | Err(EngineError::UnknownInstance(_)) => continue,
                Err(e) if e.is_storage() => return Err(e),
                Err(e) => {
                    tracing::warn!(instance = id, error = %e, "an ended instance that cannot be read is kept past the retention");
                    continue;
                }
            };
            // Its record and history: one range.
            self.rows.retain_in((id, 0)..=(id, RECORD), |_, _| false)?;
            self.replies
                .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
            let phase = self.phases.remove(id)?.map(|g| g.value().to_string());
            if let Some(phase) = phase {
                self.by_phase
                    .remove((rec.workflow.as_str(), phase.as_str(), id))?;
            }
            let mut keys: Vec<String> = Vec::new();
            for row in self
                .instance_keys
                .range((id, "")..(id.saturating_add(1), ""))?
            {
                keys.push(row?.0.value().1.to_string());
            }
            for key in keys {
                self.keys
                    .remove((rec.workflow.as_str(), key.as_str(), id))?;
                self.instance_keys.remove((id, key.as_str()))?;
            }
        }
        Ok(())
    }

    /// Removes feed rows committed before `before` that every durable consumer has passed.
    fn prune_feed(&mut self, before: u64) -> Result<(), EngineError> {
        let mut passed = u64::MAX;
        for row in self.consumers.iter()? {
            passed = passed.min(row?.1.value());
        }
        let budget = ROWS_PER_COMMIT + 2 * self.added.rows;
        let mut old: Vec<u64> = Vec::new();
        for row in self.feed.iter()? {
            if old.len() == budget {
                break;
            }
            let (k, v) = row?;
            let seq = k.value();
            if seq > passed {
                break;
            }
            match decode::<FeedRecord>(v.value()) {
                Ok(r) if r.at.0 < before => old.push(seq),
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(row = seq, error = %e, "a feed row that cannot be read stops the feed's pruning");
                    break;
                }
            }
        }
        if let Some(&last) = old.last() {
            // Numbering goes on after the pruned rows, even if they were all there was.
            let kept = self.meta.get(META_FEED_NEXT)?.map_or(1, |g| g.value());
            if kept <= last {
                self.meta.insert(META_FEED_NEXT, last + 1)?;
            }
        }
        for seq in old {
            self.feed.remove(seq)?;
        }
        Ok(())
    }
}
