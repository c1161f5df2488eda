//! The disk's own limits, measured on the scratch directory: a 4 KiB append + fsync loop, redb
//! with one insert per `Durability::Immediate` write transaction, and redb with one insert in
//! each of three tables per transaction — what the least engine transition writes (its record,
//! a history event, a feed row), the fair baseline of `engine_transitions_per_s_c1`.
//!
//! The disk of a shared VM drifts by tens of percent within a minute, so the figures are
//! sampled in slices spread around the engine phases (see [`RawDisk::sample`]) and reported as
//! the total count over the total time of all slices.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use redb::{Database, Durability, TableDefinition};

use crate::report::{Report, note};
use crate::scratch::Scratch;

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("raw");
/// The three tables of the three-table loop.
const TABLES: [TableDefinition<u64, &[u8]>; 3] = [
    TableDefinition::new("raw-record"),
    TableDefinition::new("raw-history"),
    TableDefinition::new("raw-feed"),
];
/// The appended block.
const BLOCK: [u8; 4096] = [0x5a; 4096];
/// The value of each redb insert.
const VALUE: [u8; 64] = [0xa5; 64];

/// Operations done and time spent over all slices of one loop.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    count: u64,
    elapsed: Duration,
}

impl Tally {
    fn per_s(self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
}

/// The two raw loops, each on its own file in the scratch directory.
pub struct RawDisk {
    file: File,
    db: Database,
    fsyncs: Tally,
    commits: Tally,
    commits3: Tally,
}

impl RawDisk {
    pub fn open(scratch: &Scratch) -> anyhow::Result<RawDisk> {
        let path = scratch.file("raw-fsync.bin")?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let path = scratch.file("raw-redb.redb")?;
        let db =
            Database::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(RawDisk {
            file,
            db,
            fsyncs: Tally::default(),
            commits: Tally::default(),
            commits3: Tally::default(),
        })
    }

    /// Runs the fsync loop for `budget`, then each redb loop for `budget`.
    pub fn sample(&mut self, budget: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut count = 0_u64;
        while started.elapsed() < budget {
            self.file.write_all(&BLOCK).context("append")?;
            self.file.sync_data().context("fsync")?;
            count += 1;
        }
        self.fsyncs.count += count;
        self.fsyncs.elapsed += started.elapsed();

        let started = Instant::now();
        let mut count = 0_u64;
        while started.elapsed() < budget {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut table = txn.open_table(TABLE)?;
                table.insert(self.commits.count + count, VALUE.as_slice())?;
            }
            txn.commit()?;
            count += 1;
        }
        self.commits.count += count;
        self.commits.elapsed += started.elapsed();

        let started = Instant::now();
        let mut count = 0_u64;
        while started.elapsed() < budget {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            for definition in TABLES {
                let mut table = txn.open_table(definition)?;
                table.insert(self.commits3.count + count, VALUE.as_slice())?;
            }
            txn.commit()?;
            count += 1;
        }
        self.commits3.count += count;
        self.commits3.elapsed += started.elapsed();
        Ok(())
    }

    /// Prints `raw_fsync_per_s` and `raw_redb_commit_per_s` over every slice so far.
    pub fn report(&self, report: &mut Report) {
        let fsyncs = self.fsyncs.per_s();
        let commits = self.commits.per_s();
        report.metric("raw_fsync_per_s", fsyncs);
        report.metric("raw_redb_commit_per_s", commits);
        report.metric("raw_redb_commit_3_tables_per_s", self.commits3.per_s());
        note(format!(
            "raw: {fsyncs:.0} append+fsync/s, {commits:.0} redb commits/s ({:.2} ms per \
             commit), over {:.1} s of each",
            1000.0 / commits,
            self.commits.elapsed.as_secs_f64()
        ));
    }
}
