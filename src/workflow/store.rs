//! The redb file: table layout, opening (with format checks), and every read-side query.
//!
//! Writes happen only in [`super::writer`], in one transaction per batch. Reads open their own
//! read transaction and never block the writer.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::InstanceId;
use super::codec::decode;
use super::error::{EngineError, StoreError};
use super::feed::FeedRow;
use super::record::{EffectRecord, Event, InstanceRecord, SignalRecord, Timestamp};
use super::store_id::{META_STORE_ID, StoreId};

/// Engine bookkeeping: store format and id counters.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Each instance's rows, side by side (format 3 on): (instance, [`RECORD`]) → its
/// [`InstanceRecord`], (instance, seq) → its history's [`Event`]s, append-only. The record sits
/// right after the newest events, so a transition (record + event) writes one leaf, not two, and
/// removing an ended instance removes one range.
pub(crate) const INSTANCE_ROWS: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("instance_rows");
/// The second half of the key of an instance's record in [`INSTANCE_ROWS`] (history events are
/// numbered below it).
pub(crate) const RECORD: u64 = u64::MAX;
/// Format 1 and 2: instance id → [`InstanceRecord`] (moved to [`INSTANCE_ROWS`] on open).
const OLD_INSTANCES: TableDefinition<u64, &[u8]> = TableDefinition::new("instances");
/// Format 1 and 2: (instance, seq) → [`Event`] (moved to [`INSTANCE_ROWS`] on open).
const OLD_HISTORY: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("history");
/// (instance, seq) → [`SignalRecord`] not yet consumed.
pub(crate) const INBOX: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("inbox");
/// (due ms, instance) → (); ordered by absolute due time.
pub(crate) const TIMERS: TableDefinition<(u64, u64), ()> = TableDefinition::new("timers");
/// Effect id → [`EffectRecord`].
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Effect ids not yet delivered nor abandoned.
pub(crate) const OUTBOX_PENDING: TableDefinition<u64, ()> = TableDefinition::new("outbox_pending");
/// Scoped idempotency key → the id or sequence number it produced.
pub(crate) const IDEMPOTENCY: TableDefinition<&str, u64> = TableDefinition::new("idempotency");
/// Ids of the instances that have not ended: what recovery reads (format 2 on).
pub(crate) const LIVE: TableDefinition<u64, ()> = TableDefinition::new("live");
/// (instance, intent name) → [`IntentRecord`].
pub(crate) const INTENTS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("intents");
/// (instance, signal seq) → the step's reply to that signal (an encoded workflow value); the
/// last [`REPLIES_KEPT`] per instance. A table added without a format change: older builds
/// never read it, and it is created on open.
pub(crate) const REPLIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("replies");
/// Replies kept per instance (for redelivered updates); older ones are removed.
pub(crate) const REPLIES_KEPT: u64 = 256;
/// Sequence number → [`super::record::FeedRecord`]: the change feed, gap-free, appended in the
/// transaction of each change (added without a format change, created on open).
pub(crate) const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");
/// Durable consumer name → the last feed row it has handled (see `Engine::consumer`).
pub(crate) const CONSUMERS: TableDefinition<&str, u64> = TableDefinition::new("consumers");
/// Instance id → its current phase (see `Workflow::phase`), for the instances that have one.
pub(crate) const PHASES: TableDefinition<u64, &str> = TableDefinition::new("phases");
/// (workflow, phase, instance) → (): the instances of a workflow in a phase, in id order.
pub(crate) const BY_PHASE: TableDefinition<(&str, &str, u64), ()> =
    TableDefinition::new("by_phase");
/// (workflow, key, instance) → (): the instances whose state names an outside key (see
/// `Workflow::keys`), e.g. a task's issue and pull request.
pub(crate) const KEYS: TableDefinition<(&str, &str, u64), ()> = TableDefinition::new("keys");
/// (instance, key) → (): the keys of each instance (to remove them with it).
pub(crate) const INSTANCE_KEYS: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("instance_keys");
/// (time ms, idempotency key) → (): when each idempotency key was recorded, oldest first (keys
/// expire after the dedupe window).
pub(crate) const IDEM_AGE: TableDefinition<(u64, &str), ()> = TableDefinition::new("idem_age");
/// (end time ms, instance) → (): ended instances, oldest end first.
pub(crate) const ENDED: TableDefinition<(u64, u64), ()> = TableDefinition::new("ended");
/// [`INDEXED`] once `phases`, `by_phase`, `keys` and `ended` cover every instance (stores from before these
/// indexes are indexed when the engine first opens them, see `Engine::open`).
pub(crate) const META_INDEXED: &str = "indexed";
/// The indexes this build keeps (see [`META_INDEXED`]).
pub(crate) const INDEXED: u64 = 3;

/// Store file format written by this build (the table layout above). Format 1 had no `live`
/// table; opening such a file builds it (see `migrate_1_to_2`). Formats 1 and 2 kept records and
/// history in two tables (see `migrate_2_to_3`).
pub const STORE_FORMAT: u64 = 3;
pub(crate) const META_FORMAT: &str = "format";
pub(crate) const META_NEXT_INSTANCE: &str = "next_instance";
pub(crate) const META_NEXT_EFFECT: &str = "next_effect";
/// The number after the last feed row the pruner removed: with the last row of the `feed`
/// table, where numbering goes on (`feed_next`), so that a number is never reused even once
/// every row is pruned. Written only by the pruner: an ordinary commit writes no meta row.
pub(crate) const META_FEED_NEXT: &str = "feed_next";

/// The number the next feed row gets: after the last row, and after every row ever pruned.
pub(crate) fn feed_next(
    meta: &impl ReadableTable<&'static str, u64>,
    feed: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<u64, EngineError> {
    let after_last = feed.last()?.map_or(1, |(k, _)| k.value() + 1);
    let after_pruned = meta.get(META_FEED_NEXT)?.map_or(1, |g| g.value());
    Ok(after_last.max(after_pruned))
}

/// An instance record, or why it cannot be read.
pub(crate) type MaybeRecord = Result<InstanceRecord, EngineError>;

/// Due timers (due time, instance) and the due time of the next one not yet due.
pub(crate) type DueTimers = (Vec<(Timestamp, InstanceId)>, Option<Timestamp>);

/// Shared handle on the open redb database.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<Database>,
    /// Drawn when the file was created; `None` for a store older than store ids.
    pub(crate) store_id: Option<StoreId>,
}

impl Store {
    /// Opens `path`, creating the file and its tables if needed. Refuses files written by a newer
    /// store format, and reports a damaged file as an error, never a panic.
    pub fn open(path: &Path) -> Result<Store, EngineError> {
        let shown = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: shown.clone(),
                source: redb::DatabaseError::Storage(redb::StorageError::Io(e)),
            })?;
        }
        let db = open_db(path, |p| Database::create(p))?;
        let txn = db.begin_write()?;
        let store_id;
        {
            let mut meta = txn.open_table(META)?;
            let format = meta.get(META_FORMAT)?.map(|g| g.value());
            match format {
                None => {
                    meta.insert(META_FORMAT, STORE_FORMAT)?;
                    meta.insert(META_INDEXED, INDEXED)?;
                    meta.insert(META_STORE_ID, StoreId::random().to_meta())?;
                }
                Some(found) if found > STORE_FORMAT => {
                    return Err(StoreError::UnsupportedFormat {
                        path: shown,
                        found: u32::try_from(found).unwrap_or(u32::MAX),
                        supported: STORE_FORMAT as u32,
                    }
                    .into());
                }
                Some(found) if found < STORE_FORMAT => {
                    if found == 1 {
                        migrate_1_to_2(&txn)?;
                    }
                    let moved = migrate_2_to_3(&txn)?;
                    meta.insert(META_FORMAT, STORE_FORMAT)?;
                    tracing::info!(path = %shown, instances = moved, "store upgraded from format {found} to {STORE_FORMAT}");
                }
                Some(_) => {}
            }
            txn.open_table(INSTANCE_ROWS)?;
            txn.open_table(INBOX)?;
            txn.open_table(TIMERS)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(OUTBOX_PENDING)?;
            txn.open_table(IDEMPOTENCY)?;
            txn.open_table(INTENTS)?;
            txn.open_table(LIVE)?;
            txn.open_table(REPLIES)?;
            txn.open_table(FEED)?;
            txn.open_table(CONSUMERS)?;
            txn.open_table(PHASES)?;
            txn.open_table(BY_PHASE)?;
            txn.open_table(ENDED)?;
            txn.open_table(KEYS)?;
            txn.open_table(INSTANCE_KEYS)?;
            txn.open_table(IDEM_AGE)?;
            store_id = match meta.get(META_STORE_ID)?.map(|g| g.value()) {
                None => None,
                Some(value) => Some(
                    StoreId::from_meta(value)
                        .ok_or_else(|| StoreError::BadStoreId { path: shown, value })?,
                ),
            };
        }
        txn.commit()?;
        Ok(Store {
            db: Arc::new(db),
            store_id,
        })
    }

    /// Number of instances, ended ones included: each is in the `live` or the `ended` index.
    pub fn instance_count(&self) -> Result<u64, EngineError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(LIVE)?.len()? + txn.open_table(ENDED)?.len()?)
    }

    /// Calls `f` with every instance that has not ended, in id order; stops at the first
    /// record that cannot be decoded.
    pub fn scan_live(
        &self,
        mut f: impl FnMut(InstanceId, InstanceRecord),
    ) -> Result<(), EngineError> {
        let txn = self.db.begin_read()?;
        let live = txn.open_table(LIVE)?;
        let instances = txn.open_table(INSTANCE_ROWS)?;
        for row in live.iter()? {
            let id = row?.0.value();
            let Some(bytes) = instances.get((id, RECORD))? else {
                continue;
            };
            f(id, decode_instance(id, bytes.value())?);
        }
        Ok(())
    }

    pub fn instance(&self, id: InstanceId) -> Result<Option<InstanceRecord>, EngineError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INSTANCE_ROWS)?;
        let guard = table.get((id, RECORD))?;
        Ok(match guard {
            Some(g) => Some(decode(g.value())?),
            None => None,
        })
    }

    /// The unconsumed signals of `id`, oldest first.
    pub fn inbox(&self, id: InstanceId) -> Result<Vec<(u64, SignalRecord)>, EngineError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INBOX)?;
        let mut out = Vec::new();
        for row in table.range((id, 0)..=(id, u64::MAX))? {
            let (k, v) = row?;
            out.push((k.value().1, decode(v.value())?));
        }
        Ok(out)
    }

    /// What became of signal `seq` of `id`, read in one transaction: whether it still waits in
    /// the inbox, and the reply a step gave to it (if one is kept).
    pub fn signal_answer(
        &self,
        id: InstanceId,
        seq: u64,
    ) -> Result<(bool, Option<Vec<u8>>), EngineError> {
        let txn = self.db.begin_read()?;
        let waiting = txn.open_table(INBOX)?.get((id, seq))?.is_some();
        let reply = txn
            .open_table(REPLIES)?
            .get((id, seq))?
            .map(|v| v.value().to_vec());
        Ok((waiting, reply))
    }

    /// Up to `limit` feed rows after sequence number `after`, in order.
    pub fn feed_page(&self, after: u64, limit: usize) -> Result<Vec<FeedRow>, EngineError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FEED)?;
        let mut rows = Vec::new();
        for row in table.range(after.saturating_add(1)..)?.take(limit) {
            let (k, v) = row?;
            let seq = k.value();
            let record = decode(v.value()).map_err(|source| EngineError::Corrupt {
                what: format!("feed row {seq}"),
                source,
            })?;
            rows.push(FeedRow::new(seq, record));
        }
        Ok(rows)
    }

    /// The sequence number of the last feed row written (0 before the first).
    pub fn feed_last(&self) -> Result<u64, EngineError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let feed = txn.open_table(FEED)?;
        Ok(feed_next(&meta, &feed)?.saturating_sub(1))
    }

    /// Up to `limit` instances of `workflow` in `phase` whose id is above `after`, in id order.
    pub fn in_phase(
        &self,
        workflow: &str,
        phase: &str,
        after: InstanceId,
        limit: usize,
    ) -> Result<Vec<(InstanceId, InstanceRecord)>, EngineError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(BY_PHASE)?;
        let instances = txn.open_table(INSTANCE_ROWS)?;
        let mut out = Vec::new();
        let range = (workflow, phase, after.saturating_add(1))..=(workflow, phase, u64::MAX);
        for row in index.range(range)?.take(limit) {
            let id = row?.0.value().2;
            if let Some(rec) = instances.get((id, RECORD))? {
                out.push((id, decode_instance(id, rec.value())?));
            }
        }
        Ok(out)
    }

    /// Up to `limit` instances of `workflow` (any, if `None`) whose id is above `after`, in id
    /// order; records that cannot be decoded are returned as errors in place.
    pub fn instances_after(
        &self,
        workflow: Option<&str>,
        after: InstanceId,
        limit: usize,
    ) -> Result<Vec<(InstanceId, MaybeRecord)>, EngineError> {
        let txn = self.db.begin_read()?;
        let instances = txn.open_table(INSTANCE_ROWS)?;
        let mut out = Vec::new();
        let mut records = Records::after(&instances, after);
        while out.len() < limit {
            let Some((id, bytes)) = records.next()? else {
                break;
            };
            let rec = decode_instance(id, &bytes);
            if let (Some(w), Ok(r)) = (workflow, &rec)
                && r.workflow != w
            {
                continue;
            }
            out.push((id, rec));
        }
        Ok(out)
    }

    /// The instances of `workflow` whose state names `key` (see `Workflow::keys`), in id order.
    pub fn keyed(&self, workflow: &str, key: &str) -> Result<Vec<InstanceId>, EngineError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(KEYS)?;
        let mut out = Vec::new();
        for row in table.range((workflow, key, 0)..=(workflow, key, u64::MAX))? {
            out.push(row?.0.value().2);
        }
        Ok(out)
    }

    /// The instance started with idempotency key `key` (see `Engine::start`), if any.
    pub fn started(&self, workflow: &str, key: &str) -> Result<Option<InstanceId>, EngineError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IDEMPOTENCY)?;
        let scoped = format!("start/{workflow}/{key}");
        Ok(table.get(scoped.as_str())?.map(|g| g.value()))
    }

    /// Up to `limit` instances that ended after `from` (exclusive: (end time ms, id)) and
    /// before `before` ms, oldest end first, from the end-time index.
    pub fn ended_between(
        &self,
        from: (u64, InstanceId),
        before: u64,
        limit: usize,
    ) -> Result<Vec<(Timestamp, InstanceId)>, EngineError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ENDED)?;
        let mut out = Vec::new();
        let start = (from.0, from.1.saturating_add(1));
        for row in table.range(start..(before, 0))?.take(limit) {
            let (at, id) = row?.0.value();
            out.push((Timestamp(at), id));
        }
        Ok(out)
    }

    /// Whether `id` has not ended (by the `live` index).
    pub fn is_live(&self, id: InstanceId) -> Result<bool, EngineError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(LIVE)?.get(id)?.is_some())
    }

    /// Whether the phase and end indexes cover every instance (see [`Store::build_indexes`]).
    pub fn indexed(&self) -> Result<bool, EngineError> {
        let txn = self.db.begin_read()?;
        let indexed = txn.open_table(META)?.get(META_INDEXED)?.map(|g| g.value());
        Ok(indexed.is_some_and(|v| v >= INDEXED))
    }

    /// Builds the phase, key and end indexes of a store written before them, in one
    /// transaction: `index` gives the phase and keys of a state (workflow, definition version,
    /// state bytes) when its definition is registered and reads it. Records that cannot be decoded are left out.
    /// Returns the number of instances indexed.
    pub fn build_indexes(
        &self,
        index: impl Fn(&str, u32, &[u8]) -> (Option<String>, Vec<String>),
    ) -> Result<u64, EngineError> {
        let txn = self.db.begin_write()?;
        let mut count = 0;
        {
            let instances = txn.open_table(INSTANCE_ROWS)?;
            let mut phases = txn.open_table(PHASES)?;
            let mut by_phase = txn.open_table(BY_PHASE)?;
            let mut ended = txn.open_table(ENDED)?;
            let mut keys = txn.open_table(KEYS)?;
            let mut instance_keys = txn.open_table(INSTANCE_KEYS)?;
            let mut records = Records::after(&instances, 0);
            while let Some((id, bytes)) = records.next()? {
                let Ok(rec) = decode_instance(id, &bytes) else {
                    continue;
                };
                if rec.status.is_terminal() {
                    ended.insert((rec.updated.0, id), ())?;
                }
                let (phase, named) = index(&rec.workflow, rec.def_version, &rec.state);
                if let Some(p) = phase {
                    phases.insert(id, p.as_str())?;
                    by_phase.insert((rec.workflow.as_str(), p.as_str(), id), ())?;
                }
                for key in named {
                    keys.insert((rec.workflow.as_str(), key.as_str(), id), ())?;
                    instance_keys.insert((id, key.as_str()), ())?;
                }
                count += 1;
            }
            // Keys recorded before their ages were expire one dedupe window from now.
            let idem = txn.open_table(IDEMPOTENCY)?;
            let mut ages = txn.open_table(IDEM_AGE)?;
            let now = Timestamp::now().0;
            for row in idem.iter()? {
                let (k, _) = row?;
                ages.insert((now, k.value()), ())?;
            }
            txn.open_table(META)?.insert(META_INDEXED, INDEXED)?;
        }
        txn.commit()?;
        Ok(count)
    }

    /// Where durable consumer `name` stands: the last feed row it handled (`None`: unknown).
    pub fn consumer_cursor(&self, name: &str) -> Result<Option<u64>, EngineError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONSUMERS)?;
        Ok(table.get(name)?.map(|g| g.value()))
    }

    /// The recorded history of `id`, in order (the oldest events may have been compacted away).
    pub fn history(&self, id: InstanceId) -> Result<Vec<(u64, Event)>, EngineError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INSTANCE_ROWS)?;
        let mut out = Vec::new();
        for row in table.range((id, 0)..(id, RECORD))? {
            let (k, v) = row?;
            out.push((k.value().1, decode(v.value())?));
        }
        Ok(out)
    }

    pub fn effect(&self, effect: u64) -> Result<Option<EffectRecord>, EngineError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let guard = table.get(effect)?;
        Ok(match guard {
            Some(g) => Some(decode(g.value())?),
            None => None,
        })
    }

    /// Number of effects still waiting for delivery.
    pub fn pending_effect_count(&self) -> Result<u64, EngineError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(OUTBOX_PENDING)?.len()?)
    }

    /// Every effect still waiting for delivery.
    pub fn pending_effects(&self) -> Result<Vec<(u64, EffectRecord)>, EngineError> {
        let txn = self.db.begin_read()?;
        let pending = txn.open_table(OUTBOX_PENDING)?;
        let outbox = txn.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for row in pending.iter()? {
            let (k, _) = row?;
            let id = k.value();
            if let Some(v) = outbox.get(id)? {
                out.push((id, decode(v.value())?));
            }
        }
        Ok(out)
    }

    /// Timers due at or before `now`, oldest first, at most `limit`; and the next later due time.
    pub fn due_timers(&self, now: Timestamp, limit: usize) -> Result<DueTimers, EngineError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TIMERS)?;
        let mut due = Vec::new();
        for row in table.range((0, 0)..)? {
            let (k, _) = row?;
            let (at, id) = k.value();
            if at > now.0 || due.len() >= limit {
                return Ok((due, Some(Timestamp(at))));
            }
            due.push((Timestamp(at), id));
        }
        Ok((due, None))
    }

    /// Calls `f` with every instance that can be read, in id order; returns the ended ones
    /// that cannot be decoded (id, why), passed over and left untouched. A live instance that
    /// cannot be decoded is an error: the engine cannot run it.
    pub fn scan_instances(
        &self,
        mut f: impl FnMut(InstanceId, InstanceRecord),
    ) -> Result<Vec<(InstanceId, String)>, EngineError> {
        let mut unreadable = Vec::new();
        each_record(&self.db, |id, is_live, rec| {
            match rec {
                Ok(rec) => f(id, rec),
                Err(e) if !is_live => unreadable.push((id, e.to_string())),
                Err(e) => return Err(e),
            }
            Ok(())
        })?;
        Ok(unreadable)
    }
}

/// What [`check`] found in a store file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCheck {
    /// Instance records, readable or not.
    pub instances: u64,
    /// Of which have not ended (by the `live` index).
    pub live: u64,
    /// Records that cannot be decoded: (id, live, why).
    pub unreadable: Vec<(InstanceId, bool, String)>,
}

/// Reads every instance record of the store at `path` (while no daemon has it open) and lists
/// those that cannot be decoded. Nothing is written, except the repair redb makes when it
/// opens a file left by a crash (as the daemon's open would).
pub fn check(path: &Path) -> Result<StoreCheck, EngineError> {
    let db = open_db(path, |p| Database::open(p))?;
    let mut out = StoreCheck::default();
    each_record(&db, |id, is_live, rec| {
        out.instances += 1;
        out.live += u64::from(is_live);
        if let Err(e) = rec {
            out.unreadable.push((id, is_live, e.to_string()));
        }
        Ok(())
    })?;
    Ok(out)
}

/// Opens the redb file at `path` with `open` (create or open). redb reports most damage as an
/// error, but a few malformed pages trip assertions inside it; a damaged file must still be an
/// error here, not an abort of the daemon.
fn open_db(
    path: &Path,
    open: impl FnOnce(&Path) -> Result<Database, redb::DatabaseError> + std::panic::UnwindSafe,
) -> Result<Database, StoreError> {
    let opened = std::panic::catch_unwind(|| open(path)).unwrap_or_else(|_| {
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(
            "redb could not read the file (a malformed page)".into(),
        )))
    });
    opened.map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Calls `f` with every instance record in id order: its id, whether it is live (by the `live`
/// index), and the record decoded (or why it cannot be).
fn each_record(
    db: &Database,
    mut f: impl FnMut(InstanceId, bool, Result<InstanceRecord, EngineError>) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(INSTANCE_ROWS)?;
    let live = txn.open_table(LIVE)?;
    let mut records = Records::after(&table, 0);
    while let Some((id, bytes)) = records.next()? {
        f(id, live.get(id)?.is_some(), decode_instance(id, &bytes))?;
    }
    Ok(())
}

/// The instance records of an [`INSTANCE_ROWS`] table in id order, each found with two
/// look-ups (the instance's first row, then its record) whatever the length of its history.
struct Records<'t, T> {
    table: &'t T,
    /// The last id returned (0 before the first: ids start at 1).
    after: InstanceId,
}

impl<'t, T: ReadableTable<(u64, u64), &'static [u8]>> Records<'t, T> {
    fn after(table: &'t T, after: InstanceId) -> Self {
        Records { table, after }
    }

    /// The next record: (id, encoded record). History rows without a record are passed over.
    fn next(&mut self) -> Result<Option<(InstanceId, Vec<u8>)>, EngineError> {
        loop {
            let Some(from) = self.after.checked_add(1) else {
                return Ok(None);
            };
            let Some(row) = self.table.range((from, 0)..)?.next() else {
                return Ok(None);
            };
            let id = row?.0.value().0;
            self.after = id;
            if let Some(bytes) = self.table.get((id, RECORD))? {
                return Ok(Some((id, bytes.value().to_vec())));
            }
        }
    }
}

fn decode_instance(id: InstanceId, bytes: &[u8]) -> Result<InstanceRecord, EngineError> {
    decode(bytes).map_err(|source| EngineError::Corrupt {
        what: format!("instance {id}"),
        source,
    })
}

/// Format 2 → 3: records and history move from `instances` and `history` into
/// [`INSTANCE_ROWS`], byte for byte; the old tables are deleted. Returns the records moved.
fn migrate_2_to_3(txn: &redb::WriteTransaction) -> Result<u64, EngineError> {
    let mut rows = txn.open_table(INSTANCE_ROWS)?;
    let mut moved = 0;
    {
        let instances = txn.open_table(OLD_INSTANCES)?;
        for row in instances.iter()? {
            let (k, v) = row?;
            rows.insert((k.value(), RECORD), v.value())?;
            moved += 1;
        }
        let history = txn.open_table(OLD_HISTORY)?;
        for row in history.iter()? {
            let (k, v) = row?;
            rows.insert(k.value(), v.value())?;
        }
    }
    txn.delete_table(OLD_INSTANCES)?;
    txn.delete_table(OLD_HISTORY)?;
    Ok(moved)
}

/// Format 1 → 2: index the instances that have not ended in `live`.
fn migrate_1_to_2(txn: &redb::WriteTransaction) -> Result<(), EngineError> {
    let instances = txn.open_table(OLD_INSTANCES)?;
    let mut live = txn.open_table(LIVE)?;
    for row in instances.iter()? {
        let (k, v) = row?;
        let id = k.value();
        if !decode_instance(id, v.value())?.status.is_terminal() {
            live.insert(id, ())?;
        }
    }
    Ok(())
}
