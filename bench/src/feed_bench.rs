//! `feed`: the change feed and the store at scale (issue 15, section 5), in one run on one disk.
//!
//! 1. **Group commit with the feed**: the `engine` benchmark's raw baseline and its c1 / c16 /
//!    c256 phases ([`engine_bench::run`], the raw loops sampled between the phases), now that
//!    every transition also appends feed rows and index rows → `ratio_c1_vs_raw_commit`,
//!    `ratio_c256_vs_raw_commit`.
//! 2. **Indexes and recovery**: a store of `ended` ended and `live` parked [`Ticket`]
//!    instances (started many at a time, so that starts share group commits), then pages of
//!    `Engine::list_phase(ticket, "running")` on it → `list_page_p99_ms_<ended>k` (engine
//!    level: what `GET /tasks?status=running` reads, without HTTP and without decoding task
//!    states), and the engine's open in a fresh process, the file out of the page cache →
//!    `recovery_s_<ended>k_ended_<live>k_live`.
//! 3. **Plateau**: `plateau_total` instances started (open loop, [`PLATEAU_RATE`] per second)
//!    and completed in a store with a short `EngineConfig::retention` →
//!    `store_bytes_after_<n>k` after `plateau_first` and after all, and their ratio.
//! 4. **Feed lag** on the REAL daemon (`agent-fleet serve`, as in `latency` and `webhooks`):
//!    tasks submitted open-loop at the rate that makes ~`lag_rows_per_s` feed rows per second
//!    (tasks that wait for a host: their start and first steps), read by the project's own
//!    SSE client (`client::Feed`, `GET /api/v1/events`) → `feed_lag_p99_ms`: the time from
//!    a row's commit being durable (`durable_at`, taken by the daemon when the commit's fsync
//!    returned, in µs, same clock) to the client's reading it. Also `feed_commit_p99_ms`: from
//!    the row's `at` (its transaction began, whole ms) to `durable_at`, the commit's own time;
//!    and `feed_lag_after_ack_*`: from the submit's answer (sent after its commit) to the
//!    client's reading its start row.
//!
//! Each figure is a `metric` line; a `goal` line per issue goal closes the run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use agent_fleet::client::{Client, FeedQuery};
use agent_fleet::workflow::{Engine, EngineConfig, Outcome, Status, StepCtx, StepResult, Workflow};
use anyhow::{Context, bail, ensure};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::http1::{self, Conn};
use crate::latency::{self, Daemon, TOKEN, toml_str};
use crate::raw::RawDisk;
use crate::report::{Report, note, percentile};
use crate::scratch::Scratch;
use crate::workload::Go;
use crate::{Plan, engine_bench, recovery};

/// Name of the hidden subcommand of the recovery child.
pub const RECOVER_SUBCOMMAND: &str = "feed-recover";
/// Starts (or runs) in flight at once while building a store.
const BUILD_CONCURRENCY: usize = 1024;
/// Longest wait for a store to be built.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// The page size of `GET /tasks` (its default `limit`), read as `limit + 1` like the API does.
const PAGE: usize = 50;
/// Pages read for the list figure.
const PAGES: usize = 2_000;
/// Connections of the open-loop task submissions.
const SUBMIT_CONNECTIONS: usize = 16;
/// Retention of the plateau store: ended instances and old feed rows go this long after.
const PLATEAU_RETENTION: Duration = Duration::from_secs(1);
/// Instances started per second in the plateau store (two transitions and two feed rows each):
/// five times the feed rate of the lag goal; 200,000 take 80 s.
const PLATEAU_RATE: f64 = 2_500.0;
/// Starts in flight at most in the plateau store.
const PLATEAU_STARTERS: u64 = 64;

/// Sizes of one `feed` run.
#[derive(Debug, Clone, Copy)]
pub struct FeedPlan {
    /// The engine phases and raw loops of the commit ratios.
    pub engine: Plan,
    /// Ended and parked instances of the index and recovery store.
    pub ended: u64,
    pub live: u64,
    /// Instances run through the plateau store, and after how many it is first measured.
    pub plateau_first: u64,
    pub plateau_total: u64,
    /// Feed rows per second the daemon is driven at, and for how long.
    pub lag_rows_per_s: f64,
    pub lag_seconds: u64,
}

impl FeedPlan {
    pub const FULL: FeedPlan = FeedPlan {
        engine: Plan::FULL,
        ended: 100_000,
        live: 10_000,
        plateau_first: 50_000,
        plateau_total: 200_000,
        lag_rows_per_s: 1_000.0,
        lag_seconds: 20,
    };
    pub const QUICK: FeedPlan = FeedPlan {
        engine: Plan::QUICK,
        ended: 20_000,
        live: 2_000,
        plateau_first: 12_500,
        plateau_total: 50_000,
        lag_rows_per_s: 1_000.0,
        lag_seconds: 5,
    };

    /// `[--quick]`
    pub fn parse(args: &[String], usage: &str) -> anyhow::Result<FeedPlan> {
        match args {
            [] => Ok(FeedPlan::FULL),
            [flag] if flag == "--quick" => Ok(FeedPlan::QUICK),
            _ => bail!("unexpected arguments {args:?}; {usage}"),
        }
    }
}

/// The issue's goals, checked at the end of the run: (metric, at most / at least, bound).
const GOALS: [(&str, Bound, f64); 6] = [
    ("ratio_c1_vs_raw_commit", Bound::AtLeast, 0.8),
    ("ratio_c256_vs_raw_commit", Bound::AtLeast, 25.0),
    ("feed_lag_p99_ms", Bound::AtMost, 5.0),
    ("list_page_p99_ms", Bound::AtMost, 5.0),
    ("recovery_s", Bound::AtMost, 1.0),
    ("store_bytes_plateau_ratio", Bound::AtMost, 1.2),
];

#[derive(Debug, Clone, Copy)]
enum Bound {
    AtMost,
    AtLeast,
}

/// One measured goal: its metric's full name, value and how it was measured.
struct Measured {
    name: String,
    value: Option<f64>,
    how: String,
}

pub fn run(plan: FeedPlan, report: &mut Report) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let scratch = Scratch::new()?;
    note(format!(
        "scratch directory {} ({plan:?})",
        scratch.path().display()
    ));
    let measured = runtime.block_on(run_in(&scratch, plan, report))?;
    print_goals(&measured);
    Ok(())
}

async fn run_in(
    scratch: &Scratch,
    plan: FeedPlan,
    report: &mut Report,
) -> anyhow::Result<Vec<Measured>> {
    let mut measured = Vec::new();

    // 1. The commit ratios, exactly as `engine` measures them.
    let mut raw = RawDisk::open(scratch)?;
    engine_bench::run(scratch, plan.engine, Some(&mut raw), report).await?;
    raw.report(report);
    let ratios = crate::commit_ratios(report);
    for (name, value) in ratios {
        measured.push(Measured {
            name: name.to_string(),
            value,
            how: "engine phases with the raw redb commit loop sampled between them".into(),
        });
    }

    // 2. Indexes and recovery on one store.
    measured.extend(index_and_recovery(scratch, plan, report).await?);

    // 3. Plateau under retention.
    measured.push(plateau(scratch, plan, report).await?);

    // 4. Feed lag on the real daemon.
    measured.push(feed_lag(scratch, plan, report).await?);
    Ok(measured)
}

/// Prints one `goal <metric> <value> <bound> met|NOT met (how)` line per goal.
fn print_goals(measured: &[Measured]) {
    for (prefix, bound, limit) in GOALS {
        let Some(m) = measured.iter().find(|m| m.name.starts_with(prefix)) else {
            continue;
        };
        let (op, ok) = match (bound, m.value) {
            (Bound::AtMost, Some(v)) => ("<=", Some(v <= limit)),
            (Bound::AtLeast, Some(v)) => (">=", Some(v >= limit)),
            (Bound::AtMost, None) => ("<=", None),
            (Bound::AtLeast, None) => (">=", None),
        };
        let value = m.value.map_or("n/a".to_string(), |v| format!("{v:.3}"));
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        println!(
            "goal {} {value} (goal {op} {limit}) {verdict}: {}",
            m.name, m.how
        );
    }
}

// ---- the workflow of the index and plateau stores ---------------------------------------------

/// One step: an instance started with [`Ticket::CLOSE`] completes at once (phase `completed`);
/// one started with [`Ticket::OPEN`] parks until a [`Go`] (phase `running`), then completes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ticket;

impl Ticket {
    const OPEN: u8 = 0;
    const CLOSE: u8 = 1;
    const DONE: u8 = 2;
    const RUNNING: &'static str = "running";
    const COMPLETED: &'static str = "completed";
}

impl Workflow for Ticket {
    const NAME: &'static str = "bench.ticket";
    const VERSION: u32 = 1;
    type State = u8;
    type Signal = Go;

    fn phase(state: &u8) -> Option<String> {
        let phase = if *state == Ticket::DONE {
            Ticket::COMPLETED
        } else {
            Ticket::RUNNING
        };
        Some(phase.to_string())
    }

    async fn step(&self, ctx: &mut StepCtx<Go>, state: u8) -> StepResult<u8> {
        Ok(match state {
            Ticket::CLOSE => Outcome::complete(Ticket::DONE),
            _ => match ctx.take(|_| true) {
                Some(Go) => Outcome::complete(Ticket::DONE),
                None => Outcome::wait(state),
            },
        })
    }
}

/// Starts `n` tickets, `BUILD_CONCURRENCY` at a time; ticket `i` (from 0) is open when `open(i)`.
async fn start_tickets(
    engine: &Engine,
    n: u64,
    open: impl Fn(u64) -> bool + Send + Sync + Copy + 'static,
) -> anyhow::Result<()> {
    let issued = Arc::new(AtomicU64::new(0));
    let mut starters = JoinSet::new();
    for _ in 0..BUILD_CONCURRENCY {
        let engine = engine.clone();
        let issued = issued.clone();
        starters.spawn(async move {
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let state = if open(i) { Ticket::OPEN } else { Ticket::CLOSE };
                engine.start::<Ticket>(&state, None).await?;
            }
        });
    }
    while let Some(done) = starters.join_next().await {
        done.context("starter task panicked")??;
    }
    Ok(())
}

/// Waits until the store holds `live` parked tickets and nothing runnable.
async fn settle(engine: &Engine, live: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + BUILD_TIMEOUT;
    loop {
        let now_live = engine.live()?;
        let parked = now_live
            .iter()
            .filter(|i| i.status == Status::Waiting)
            .count() as u64;
        if parked == live && now_live.len() as u64 == live {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the store did not settle: {} live, {parked} parked, expected {live}",
            now_live.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- 2. indexes and recovery ------------------------------------------------------------------

/// Builds the store of `plan.ended` ended and `plan.live` parked tickets, measures list pages
/// on it, then its recovery in a child process.
async fn index_and_recovery(
    scratch: &Scratch,
    plan: FeedPlan,
    report: &mut Report,
) -> anyhow::Result<Vec<Measured>> {
    let path = scratch.file("index.redb")?;
    let engine = Engine::builder(&path).register(Ticket).open().await?;
    let total = plan.ended + plan.live;
    // Every `every`-th ticket stays open, spread over the id range.
    let every = (total / plan.live.max(1)).max(1);
    let live = plan.live;
    let started = Instant::now();
    tokio::time::timeout(
        BUILD_TIMEOUT,
        start_tickets(&engine, total, move |i| i % every == 0 && i / every < live),
    )
    .await
    .context("the index store was not built in time")??;
    settle(&engine, plan.live).await?;
    let built_s = started.elapsed().as_secs_f64();
    note(format!(
        "index store: {} ended + {} parked tickets in {built_s:.1} s ({:.0} instances/s), \
         file {:.1} MiB",
        plan.ended,
        plan.live,
        total as f64 / built_s,
        mib(std::fs::metadata(&path)?.len())
    ));

    let ended_k = plan.ended / 1000;
    let live_k = plan.live / 1000;
    let mut first = Vec::with_capacity(PAGES);
    for _ in 0..PAGES {
        let t = Instant::now();
        let page = engine.list_phase(Ticket::NAME, Ticket::RUNNING, 0, PAGE + 1)?;
        first.push(ms(t.elapsed()));
        ensure!(
            page.len() == (PAGE + 1).min(plan.live as usize),
            "a page of running tickets has {} rows",
            page.len()
        );
    }
    // Pages deeper in: from cursors spread over the id range, in the ended phase too.
    let mut deep = Vec::with_capacity(PAGES);
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    for i in 0..PAGES {
        let after = rng.next() % total;
        let phase = if i % 2 == 0 {
            Ticket::RUNNING
        } else {
            Ticket::COMPLETED
        };
        let t = Instant::now();
        let _page = engine.list_phase(Ticket::NAME, phase, after, PAGE + 1)?;
        deep.push(ms(t.elapsed()));
    }
    let list_name = format!("list_page_p99_ms_{ended_k}k");
    let list_p99 = percentile(&mut first, 0.99);
    report.metric(
        &format!("list_page_p50_ms_{ended_k}k"),
        percentile(&mut first, 0.5),
    );
    report.metric(&list_name, list_p99);
    report.metric(
        &format!("list_page_any_cursor_p99_ms_{ended_k}k"),
        percentile(&mut deep, 0.99),
    );
    engine.shutdown().await?;
    drop(engine);

    recovery::evict_from_page_cache(&path)?;
    let cold = recovery_child(&path, plan.live)?;
    let warm = recovery_child(&path, plan.live)?;
    let recovery_name = format!("recovery_s_{ended_k}k_ended_{live_k}k_live");
    report.metric(&recovery_name, cold);
    report.metric(&format!("{recovery_name}_warm"), warm);
    Ok(vec![
        Measured {
            name: list_name,
            value: Some(list_p99),
            how: format!(
                "engine level: Engine::list_phase(\"running\", limit {}) with {} ended and {} \
                 running instances in the store (no HTTP, no task state decoding)",
                PAGE + 1,
                plan.ended,
                plan.live
            ),
        },
        Measured {
            name: recovery_name,
            value: Some(cold),
            how: "Engine open in a fresh process, store file evicted from the page cache".into(),
        },
    ])
}

/// Runs `feed-recover <db> <live>` and returns the seconds the engine's open took.
fn recovery_child(path: &Path, live: u64) -> anyhow::Result<f64> {
    let args = [
        RECOVER_SUBCOMMAND.to_string(),
        path.display().to_string(),
        live.to_string(),
    ];
    crate::recovery::run_child(&args)?
        .lines()
        .find_map(|l| l.strip_prefix("open_s "))
        .context("the recovery child did not print open_s")?
        .trim()
        .parse()
        .context("open_s")
}

/// The child: opens the store at `path` (which must hold `live` parked tickets and nothing
/// runnable) and prints `open_s <seconds>`.
pub fn recover_child(args: &[String]) -> anyhow::Result<()> {
    let [path, live] = args else {
        bail!("usage: agent-fleet-bench {RECOVER_SUBCOMMAND} <db> <live>");
    };
    let live: u64 = live.parse().context("live count")?;
    let runtime = crate::runtime()?;
    runtime.block_on(tokio::task::yield_now());
    let started = Instant::now();
    let engine = runtime.block_on(Engine::builder(path).register(Ticket).open())?;
    let open_s = started.elapsed().as_secs_f64();
    let found = engine.recovery().clone();
    ensure!(
        found.parked == live && found.runnable == 0,
        "recovery found {found:?}, expected {live} parked"
    );
    println!("open_s {open_s}");
    note(format!(
        "recovery child: open {open_s:.3} s (engine's own report {} ms), {found:?}",
        found.elapsed_ms
    ));
    runtime.block_on(engine.shutdown())?;
    Ok(())
}

// ---- 3. plateau -------------------------------------------------------------------------------

/// Runs `plan.plateau_total` tickets (each started and completed: two transitions, two feed
/// rows) through a store with [`PLATEAU_RETENTION`], open-loop at [`PLATEAU_RATE`], and compares
/// its file size after `plateau_first` and after all.
async fn plateau(
    scratch: &Scratch,
    plan: FeedPlan,
    report: &mut Report,
) -> anyhow::Result<Measured> {
    let name = "store_bytes_plateau_ratio".to_string();
    let path = scratch.file("plateau.redb")?;
    let config = EngineConfig {
        retention: Some(PLATEAU_RETENTION),
        dedupe_window: Some(PLATEAU_RETENTION),
        ..EngineConfig::default()
    };
    let engine = Engine::builder(&path)
        .config(config)
        .register(Ticket)
        .open()
        .await?;
    let started = Instant::now();
    start_closed_tickets_at(&engine, plan.plateau_first, PLATEAU_RATE).await?;
    settle(&engine, 0).await?;
    let first = std::fs::metadata(&path)?.len();
    let first_kept = engine.list()?.len();
    let first_s = started.elapsed().as_secs_f64();
    // From here on every commit also prunes (the first part's instances are past the
    // retention): its start latencies are compared with a store that prunes nothing.
    let mut pruning = start_closed_tickets_at(
        &engine,
        plan.plateau_total - plan.plateau_first,
        PLATEAU_RATE,
    )
    .await?;
    settle(&engine, 0).await?;
    let last = std::fs::metadata(&path)?.len();
    let total_s = started.elapsed().as_secs_f64();
    let kept = engine.list()?.len();
    let feed_rows = count_feed_rows(&engine)?;
    engine.shutdown().await?;
    report.metric(
        &format!("store_bytes_after_{}k", plan.plateau_first / 1000),
        first as f64,
    );
    report.metric(
        &format!("store_bytes_after_{}k", plan.plateau_total / 1000),
        last as f64,
    );
    let ratio = last as f64 / first as f64;
    report.metric(&name, ratio);
    let mut unpruned = unpruned_start_latencies(scratch, plan).await?;
    let with = percentile(&mut pruning, 0.99);
    let without = percentile(&mut unpruned, 0.99);
    report.metric("start_p99_ms_while_pruning", with);
    report.metric("start_p99_ms_without_retention", without);
    note(format!(
        "start latency at {PLATEAU_RATE:.0}/s: p50 {:.2} ms / p99 {with:.2} ms while pruning, \
         p50 {:.2} ms / p99 {without:.2} ms on a store that keeps everything",
        percentile(&mut pruning, 0.5),
        percentile(&mut unpruned, 0.5),
    ));
    note(format!(
        "plateau: {} tickets in {first_s:.1} s ({first_kept} instances kept), {} in \
         {total_s:.1} s ({kept} instances and {feed_rows} feed rows kept); retention \
         {PLATEAU_RETENTION:?}",
        plan.plateau_first, plan.plateau_total
    ));
    Ok(Measured {
        name,
        value: Some(ratio),
        how: format!(
            "file size after {} / after {} instances started and completed at {PLATEAU_RATE:.0}/s, \
             retention {PLATEAU_RETENTION:?}",
            plan.plateau_total, plan.plateau_first
        ),
    })
}

/// Starts `n` tickets that complete at once, open-loop at `rate` per second (each start due at
/// its own time, [`PLATEAU_STARTERS`] in flight at most); returns each start's latency (call to
/// committed answer), in ms.
async fn start_closed_tickets_at(engine: &Engine, n: u64, rate: f64) -> anyhow::Result<Vec<f64>> {
    let start = tokio::time::Instant::now();
    let mut starters = JoinSet::new();
    for w in 0..PLATEAU_STARTERS {
        let engine = engine.clone();
        starters.spawn(async move {
            let mut k = w;
            let mut took = Vec::new();
            while k < n {
                tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
                let sent = Instant::now();
                engine.start::<Ticket>(&Ticket::CLOSE, None).await?;
                took.push(sent.elapsed().as_secs_f64() * 1000.0);
                k += PLATEAU_STARTERS;
            }
            anyhow::Ok(took)
        });
    }
    let mut took = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    while let Some(done) = starters.join_next().await {
        took.extend(done.context("starter task panicked")??);
    }
    Ok(took)
}

/// The same open loop as the plateau's first part on a store that keeps everything: the start
/// latency the plateau's pruning is compared with.
async fn unpruned_start_latencies(scratch: &Scratch, plan: FeedPlan) -> anyhow::Result<Vec<f64>> {
    let path = scratch.file("unpruned.redb")?;
    let engine = Engine::builder(&path).register(Ticket).open().await?;
    let took = start_closed_tickets_at(&engine, plan.plateau_first, PLATEAU_RATE).await?;
    settle(&engine, 0).await?;
    engine.shutdown().await?;
    Ok(took)
}

/// The feed rows still stored, read a page at a time.
fn count_feed_rows(engine: &Engine) -> anyhow::Result<u64> {
    let (mut after, mut count) = (0, 0);
    loop {
        let page = engine.feed_page(after, 10_000)?;
        let Some(last) = page.last() else {
            return Ok(count);
        };
        after = last.seq;
        count += page.len() as u64;
    }
}

// ---- 4. feed lag on the real daemon -----------------------------------------------------------

/// One row as the SSE client read it.
struct Seen {
    /// When the client read it.
    read: Instant,
    /// Read time minus the time its commit was durable, in ms.
    lag_ms: f64,
    /// The time its commit was durable minus the time its transaction began, in ms.
    commit_ms: f64,
    /// The task whose start this row is, if it is a start.
    started: Option<String>,
}

async fn feed_lag(
    scratch: &Scratch,
    plan: FeedPlan,
    report: &mut Report,
) -> anyhow::Result<Measured> {
    let root = latency::repo_root();
    let bin = latency::daemon_binary(&root)?;
    let dir = scratch.path().join("daemon");
    std::fs::create_dir_all(dir.join("origin"))?;
    let config = dir.join("fleet.toml");
    std::fs::write(&config, daemon_config(&dir))?;
    let daemon = Daemon::start_with(&bin, &dir, &config, &[])?;
    let result = drive_daemon(&daemon, plan, report).await;
    if result.is_err() {
        note(format!("daemon log:\n{}", daemon.log_tail(30)));
    }
    daemon.stop();
    result
}

async fn drive_daemon(
    daemon: &Daemon,
    plan: FeedPlan,
    report: &mut Report,
) -> anyhow::Result<Measured> {
    let addr = daemon
        .url
        .strip_prefix("http://")
        .context("daemon URL")?
        .to_string();
    note(format!("daemon at {} (pid {:?})", daemon.url, daemon.pid()));
    let client = Client::new(&daemon.url, Some(TOKEN))?;
    let mut feed = client.feed(&FeedQuery::default()).await?;
    let rows = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let reader = {
        let rows = rows.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => return anyhow::Ok(seen),
                    row = feed.next() => {
                        let Some(row) = row? else {
                            bail!("the daemon ended the change feed");
                        };
                        let now = SystemTime::now();
                        let read = Instant::now();
                        let at = humantime::parse_rfc3339(&row.at)
                            .with_context(|| format!("row {} at {:?}", row.seq, row.at))?;
                        let durable = row.durable_at.as_deref().with_context(|| {
                            format!("row {} has no durable_at: {row:?}", row.seq)
                        })?;
                        let durable = humantime::parse_rfc3339(durable)
                            .with_context(|| format!("row {} durable_at {durable:?}", row.seq))?;
                        let lag = now.duration_since(durable).unwrap_or(Duration::ZERO);
                        let commit = durable.duration_since(at).unwrap_or(Duration::ZERO);
                        let started = (row.kind == "started").then_some(row.task);
                        seen.push(Seen {
                            read,
                            lag_ms: ms(lag),
                            commit_ms: ms(commit),
                            started,
                        });
                        rows.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    // Calibration: how many rows one submitted task makes soon after its submission.
    let probe = 200_u64;
    let before = rows.load(Ordering::Relaxed);
    submit_open_loop(&addr, 0, probe, 200.0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_task = ((rows.load(Ordering::Relaxed) - before) as f64 / probe as f64).max(1.0);
    let rate = plan.lag_rows_per_s / per_task;
    note(format!(
        "feed lag: {per_task:.2} feed rows per submitted task; submitting {rate:.0} tasks/s \
         for {} s",
        plan.lag_seconds
    ));

    let begun = Instant::now();
    let count = (rate * plan.lag_seconds as f64) as u64;
    let acks = submit_open_loop(&addr, probe, count, rate).await?;
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(());
    let seen = reader.await.context("the feed reader panicked")??;

    let in_window = |s: &&Seen| s.read >= begun && s.read <= ended;
    let mut lags: Vec<f64> = seen.iter().filter(in_window).map(|s| s.lag_ms).collect();
    let mut commits: Vec<f64> = seen.iter().filter(in_window).map(|s| s.commit_ms).collect();
    let window = ended.duration_since(begun).as_secs_f64();
    report.metric("feed_rows_per_s", lags.len() as f64 / window);
    report.metric("feed_lag_p50_ms", percentile(&mut lags, 0.5));
    let p99 = percentile(&mut lags, 0.99);
    report.metric("feed_lag_p99_ms", p99);
    report.metric("feed_lag_max_ms", percentile(&mut lags, 1.0));
    report.metric("feed_commit_p50_ms", percentile(&mut commits, 0.5));
    report.metric("feed_commit_p99_ms", percentile(&mut commits, 0.99));
    // The other bound: from the submit's answer (sent after the commit) to the start's row.
    let read_at: HashMap<&str, Instant> = seen
        .iter()
        .filter_map(|s| Some((s.started.as_deref()?, s.read)))
        .collect();
    let mut after_ack: Vec<f64> = acks
        .iter()
        .filter_map(|(task, ack)| {
            let read = *read_at.get(task.as_str())?;
            Some(if read >= *ack {
                ms(read - *ack)
            } else {
                -ms(*ack - read)
            })
        })
        .collect();
    ensure!(
        after_ack.len() == acks.len(),
        "{} of {} submitted tasks have no start row on the feed",
        acks.len() - after_ack.len(),
        acks.len()
    );
    report.metric("feed_lag_after_ack_p50_ms", percentile(&mut after_ack, 0.5));
    report.metric(
        "feed_lag_after_ack_p99_ms",
        percentile(&mut after_ack, 0.99),
    );
    let slow = daemon_slow_commit_warnings(daemon);
    note(format!(
        "feed lag: {} rows read in {window:.1} s; the daemon warned {slow} times of commits \
         slower than 20 ms",
        lags.len()
    ));
    Ok(Measured {
        name: "feed_lag_p99_ms".into(),
        value: Some(p99),
        how: format!(
            "real daemon, GET /api/v1/events read by client::Feed; the row's `durable_at` \
             (its commit's fsync returned, µs) to the client's read, at {:.0} rows/s; from the \
             submit's answer instead: p99 {:.2} ms",
            lags.len() as f64 / window,
            percentile(&mut after_ack, 0.99)
        ),
    })
}

/// The daemon's warnings of slow commits so far (each sums up to 10 s of them).
fn daemon_slow_commit_warnings(daemon: &Daemon) -> usize {
    std::fs::read_to_string(&daemon.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("store commits slower than"))
        .count()
}

/// Submits tasks `first..first + n` at `rate` per second (each due at its own time, whatever
/// the answers), over [`SUBMIT_CONNECTIONS`] connections; returns each task's id and when its
/// answer was read.
async fn submit_open_loop(
    addr: &str,
    first: u64,
    n: u64,
    rate: f64,
) -> anyhow::Result<Vec<(String, Instant)>> {
    let start = tokio::time::Instant::now();
    let mut senders = JoinSet::new();
    for c in 0..SUBMIT_CONNECTIONS as u64 {
        let addr = addr.to_string();
        senders.spawn(async move {
            let mut conn = Conn::new(&addr);
            let bearer = format!("Bearer {TOKEN}");
            let mut acks = Vec::new();
            let mut k = c;
            while k < n {
                let due = start + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(due).await;
                let body = serde_json::json!({
                    "title": format!("feed bench task {}", first + k),
                    "agent": "bench",
                })
                .to_string();
                let raw = http1::request(
                    "POST",
                    &addr,
                    "/api/v1/tasks",
                    &[
                        ("Authorization", &bearer),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                );
                let answer = conn.send(&raw).await?;
                let read = Instant::now();
                ensure!(
                    answer.status == 201 || answer.status == 200,
                    "POST /api/v1/tasks: {} {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
                let task: serde_json::Value = serde_json::from_slice(&answer.body)?;
                let id = task["id"].as_str().context("a submitted task without id")?;
                acks.push((id.to_string(), read));
                k += SUBMIT_CONNECTIONS as u64;
            }
            anyhow::Ok(acks)
        });
    }
    let mut acks = Vec::with_capacity(n as usize);
    while let Some(done) = senders.join_next().await {
        acks.extend(done.context("a submitter panicked")??);
    }
    Ok(acks)
}

/// The daemon's configuration: one local host whose only agent CLI is missing (its program is
/// not on the PATH), so that tasks wait for a host instead of running anything.
fn daemon_config(dir: &Path) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_token_env = "{token_env}"

[storage]
path = {store}

[dispatch]
default_repo = {repo}

{waiting_host}"#,
        token_env = latency::TOKEN_ENV,
        store = toml_str(&dir.join("data/fleet.redb").display().to_string()),
        repo = toml_str(&dir.join("origin").display().to_string()),
        waiting_host = latency::waiting_host_toml(&dir.join("work")),
    )
}

// ---- helpers ----------------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A small deterministic generator for the list cursors.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_phase_is_running_until_done() {
        assert_eq!(Ticket::phase(&Ticket::OPEN).as_deref(), Some("running"));
        assert_eq!(Ticket::phase(&Ticket::CLOSE).as_deref(), Some("running"));
        assert_eq!(Ticket::phase(&Ticket::DONE).as_deref(), Some("completed"));
    }

    #[test]
    fn quick_and_full_plans_parse() {
        assert_eq!(FeedPlan::parse(&[], "").unwrap().ended, 100_000);
        assert_eq!(
            FeedPlan::parse(&["--quick".into()], "").unwrap().ended,
            20_000
        );
        assert!(FeedPlan::parse(&["--nope".into()], "").is_err());
    }
}
