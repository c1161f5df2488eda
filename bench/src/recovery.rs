//! Recovery time and memory per parked instance.
//!
//! The parent parks `n` [`FiveSteps`] instances at their signal wait, shuts the engine down and
//! drops it, then re-executes this binary as `recover <db> <n>`: the child reads its RSS, opens
//! the engine (recovery scans every instance and schedules the unfinished runnable ones), reads
//! its RSS again, prints what it measured as `key value` lines, and finally signals a few parked
//! instances to check they still run to completion. A fresh process keeps the parent's
//! allocations out of the RSS figure.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_fleet::workflow::{Engine, Status};
use anyhow::{Context, bail, ensure};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::report::{Report, note};
use crate::scratch::Scratch;
use crate::workload::{FiveSteps, GO_KEY, Go, WAIT_STEP};

/// Name of the hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "recover";
/// Starts in flight at once while parking instances.
const START_CONCURRENCY: usize = 1024;
/// Longest wait for every instance to park.
const PARK_TIMEOUT: Duration = Duration::from_secs(600);
/// Parked instances the child signals after recovery, to check they still run.
const SANITY_SIGNALS: u64 = 10;
/// Tells the child to signal [`SANITY_SIGNALS`] instances after measuring.
pub const RESUME_FLAG: &str = "--resume";

/// Prints `recovery_s_<n/1000>k` (cold page cache), `recovery_s_<n/1000>k_warm` and
/// `rss_bytes_per_parked_workflow`.
pub async fn run(scratch: &Scratch, parked: u64, report: &mut Report) -> anyhow::Result<()> {
    let path = scratch.file("recovery.redb")?;
    let park_started = Instant::now();
    park(&path, parked).await?;
    let db_bytes = std::fs::metadata(&path)?.len();
    note(format!(
        "recovery: parked {parked} instances in {:.1} s; store file {:.1} MiB",
        park_started.elapsed().as_secs_f64(),
        mib(db_bytes as f64)
    ));

    // First open with the store out of the page cache (as after a reboot), then again with it
    // cached; only the second child signals instances, so both find `parked` parked.
    evict_from_page_cache(&path)?;
    let cold = spawn_child(&path, parked, false)?;
    let warm = spawn_child(&path, parked, true)?;

    let label = parked / 1000;
    report.metric(&format!("recovery_s_{label}k"), cold.open_s);
    report.metric(&format!("recovery_s_{label}k_warm"), warm.open_s);
    report.metric(
        "rss_bytes_per_parked_workflow",
        (cold.rss_after - cold.rss_before) / parked as f64,
    );
    note(format!(
        "recovery: open {:.3} s cold, {:.3} s warm (engine's own report {} / {} ms); \
         RSS {:.1} → {:.1} MiB; {} of {SANITY_SIGNALS} parked instances ran to completion \
         when signalled after recovery",
        cold.open_s,
        warm.open_s,
        cold.report_ms,
        warm.report_ms,
        mib(cold.rss_before),
        mib(cold.rss_after),
        warm.resumed,
    ));
    Ok(())
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// What one recovery child measured.
#[derive(Debug, Clone, Copy)]
struct ChildFigures {
    /// Seconds `EngineBuilder::open` took, as the child's clock saw it.
    open_s: f64,
    /// `RecoveryReport::elapsed_ms`.
    report_ms: f64,
    rss_before: f64,
    rss_after: f64,
    /// Parked instances signalled and completed after recovery.
    resumed: f64,
}

/// Runs this bench binary with `args` (a child's subcommand) and returns what it printed; the
/// child's stderr goes to ours.
pub(crate) fn run_child(args: &[String]) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find the bench binary")?;
    let output = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the recovery child")?;
    ensure!(
        output.status.success(),
        "recovery child failed: {}",
        output.status
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `recover <db> <parked> [--resume]` in a child process and reads what it printed.
fn spawn_child(path: &Path, parked: u64, resume: bool) -> anyhow::Result<ChildFigures> {
    let mut args = vec![
        SUBCOMMAND.to_string(),
        path.display().to_string(),
        parked.to_string(),
    ];
    if resume {
        args.push(RESUME_FLAG.to_string());
    }
    let figures = parse_figures(&run_child(&args)?)?;
    let get = |key: &str| {
        figures
            .get(key)
            .copied()
            .with_context(|| format!("recovery child did not report {key}"))
    };
    Ok(ChildFigures {
        open_s: get("open_s")?,
        report_ms: get("report_ms")?,
        rss_before: get("rss_before")?,
        rss_after: get("rss_after")?,
        resumed: get("resumed")?,
    })
}

/// Drops the cached pages of `path` from the kernel's page cache (this file only), so the next
/// open reads it from the disk.
pub(crate) fn evict_from_page_cache(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    file.sync_all().context("fsync before eviction")?;
    // SAFETY: `file` is open for the duration of the call; fadvise only reads its arguments.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    ensure!(rc == 0, "posix_fadvise(DONTNEED) failed: error {rc}");
    Ok(())
}

/// Creates a store at `path` holding `n` instances parked at their signal wait.
async fn park(path: &Path, n: u64) -> anyhow::Result<()> {
    let engine = Engine::builder(path).register(FiveSteps).open().await?;
    let counter = tokio::spawn(count_parked(engine.subscribe(), n));
    let issued = Arc::new(AtomicU64::new(0));
    let mut starters = JoinSet::new();
    for _ in 0..START_CONCURRENCY {
        let engine = engine.clone();
        let issued = issued.clone();
        starters.spawn(async move {
            while issued.fetch_add(1, Ordering::Relaxed) < n {
                engine.start::<FiveSteps>(&0, None).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = starters.join_next().await {
        done.context("starter task panicked")??;
    }
    let deadline = tokio::time::Instant::now() + PARK_TIMEOUT;
    let counted = tokio::time::timeout_at(deadline, counter)
        .await
        .context("instances did not all park in time")?
        .context("counter task panicked")?;
    if !counted {
        note("recovery: the change stream lagged; polling the store until all are parked");
        while count_waiting(&engine)? < n {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "instances did not all park in time"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let waiting = count_waiting(&engine)?;
    ensure!(waiting == n, "{waiting} instances waiting, expected {n}");
    engine.shutdown().await?;
    Ok(())
}

/// Counts `Waiting` changes until `n` (true), or until changes were lost (false).
async fn count_parked(
    mut changes: broadcast::Receiver<agent_fleet::workflow::Change>,
    n: u64,
) -> bool {
    let mut parked = 0;
    while parked < n {
        match changes.recv().await {
            Ok(change) if change.status == Status::Waiting => parked += 1,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Instances waiting at step 3, by a full scan.
fn count_waiting(engine: &Engine) -> anyhow::Result<u64> {
    Ok(engine
        .list()?
        .iter()
        .filter(|i| i.status == Status::Waiting && i.step == u64::from(WAIT_STEP) + 1)
        .count() as u64)
}

/// Reads the child's `key value` lines.
fn parse_figures(stdout: &str) -> anyhow::Result<HashMap<String, f64>> {
    let mut figures = HashMap::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let Some((key, value)) = line.split_once(' ') else {
            bail!("unexpected line from the recovery child: {line:?}");
        };
        let value: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("bad value in {line:?}"))?;
        figures.insert(key.to_string(), value);
    }
    Ok(figures)
}

/// The child: measures opening the store at `path`, which must hold `expected` parked instances.
pub fn child_main(path: &Path, expected: u64, resume: bool) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    // Let the worker threads start before the first reading.
    runtime.block_on(tokio::task::yield_now());
    let rss_before = rss_bytes()?;
    let started = Instant::now();
    let engine = runtime.block_on(Engine::builder(path).register(FiveSteps).open())?;
    let open_s = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes()?;
    let recovered = engine.recovery().clone();
    ensure!(
        recovered.parked == expected && recovered.runnable == 0,
        "recovery found {recovered:?}, expected {expected} parked"
    );
    println!("open_s {open_s}");
    println!("report_ms {}", recovered.elapsed_ms);
    println!("rss_before {rss_before}");
    println!("rss_after {rss_after}");
    let resumed = if resume {
        runtime.block_on(resume_some(&engine, expected))?
    } else {
        0
    };
    println!("resumed {resumed}");
    runtime.block_on(engine.shutdown())?;
    Ok(())
}

/// Signals [`SANITY_SIGNALS`] parked instances spread over the id range and waits for each to
/// complete; returns how many did.
async fn resume_some(engine: &Engine, parked: u64) -> anyhow::Result<u64> {
    let mut resumed = 0;
    for i in 0..SANITY_SIGNALS.min(parked) {
        // A fresh store allocates ids 1, 2, 3, …
        let id = 1 + i * parked / SANITY_SIGNALS.min(parked);
        let status = engine.info(id)?.status;
        ensure!(
            status == Status::Waiting,
            "instance {id} is {status:?} after recovery"
        );
        engine.signal::<FiveSteps>(id, &Go, GO_KEY).await?;
        let status = engine.wait_terminal(id, Duration::from_secs(30)).await?;
        ensure!(
            status == Status::Completed,
            "instance {id} is {status:?} after its signal"
        );
        resumed += 1;
    }
    Ok(resumed)
}

/// This process's resident set size, from `/proc/self/status`.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("bad {line:?}"))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss() {
        assert!(rss_bytes().unwrap() > 0);
    }

    #[test]
    fn parses_child_lines() {
        let f = parse_figures("open_s 0.5\nrss_before 100\n\n").unwrap();
        assert_eq!(f["open_s"], 0.5);
        assert_eq!(f["rss_before"], 100.0);
        assert!(parse_figures("oops").is_err());
    }
}
