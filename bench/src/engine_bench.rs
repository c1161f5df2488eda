//! Engine throughput: [`FiveSteps`] instances run at concurrency 1, 16 and 256, each phase on a
//! fresh store file.
//!
//! Concurrency is the number of instances in flight: that many drivers each loop start →
//! signal → wait for completion. The signal is sent right after the start commits, so it
//! usually waits in the inbox before step 3 looks for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_fleet::workflow::{Engine, InstanceId, Status};
use anyhow::{Context, ensure};
use tokio::task::JoinSet;

use crate::Plan;
use crate::completions::Completions;
use crate::raw::RawDisk;
use crate::report::{Report, note};
use crate::scratch::Scratch;
use crate::workload::{FiveSteps, GO_KEY, Go};

/// A phase that takes longer than this is reported as a failure rather than hanging the run.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);

/// What one phase measured.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub workflows: u64,
    pub elapsed: Duration,
    /// Writer requests committed (starts, signals, transitions).
    pub ops: u64,
    /// Write transactions committed (one fsync each).
    pub commits: u64,
}

impl Throughput {
    fn per_s(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
}

/// Shares of `Plan::raw_seconds` sampled before the first phase, between phases and after the
/// last one.
const RAW_SLICES: [f64; 4] = [1.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 3.0];

/// Prints `engine_{transitions,commits,workflows}_per_s_c*` and `engine_ops_per_commit_c*`;
/// samples `raw` before, between and after the phases (while no engine runs).
pub async fn run(
    scratch: &Scratch,
    plan: Plan,
    mut raw: Option<&mut RawDisk>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut sample_raw = |slice: usize| match raw.as_deref_mut() {
        Some(raw) => raw.sample(Duration::from_secs_f64(
            plan.raw_seconds * RAW_SLICES[slice],
        )),
        None => Ok(()),
    };
    sample_raw(0)?;
    for (phase, (concurrency, workflows)) in [
        (1, plan.engine_c1),
        (16, plan.engine_c16),
        (256, plan.engine_c256),
    ]
    .into_iter()
    .enumerate()
    {
        let path = scratch.file(&format!("engine-c{concurrency}.redb"))?;
        let engine = Engine::builder(&path).register(FiveSteps).open().await?;
        let measured = tokio::time::timeout(PHASE_TIMEOUT, drive(&engine, concurrency, workflows))
            .await
            .with_context(|| {
                format!("phase c{concurrency} did not finish in {PHASE_TIMEOUT:?}")
            })??;
        engine.shutdown().await?;

        let c = concurrency;
        report.metric(
            &format!("engine_transitions_per_s_c{c}"),
            measured.per_s(measured.ops),
        );
        report.metric(
            &format!("engine_commits_per_s_c{c}"),
            measured.per_s(measured.commits),
        );
        report.metric(
            &format!("engine_ops_per_commit_c{c}"),
            measured.ops as f64 / measured.commits.max(1) as f64,
        );
        report.metric(
            &format!("engine_workflows_per_s_c{c}"),
            measured.per_s(measured.workflows),
        );
        note(format!(
            "engine c{c}: {} workflows in {:.2} s, {} ops ({:.2} per workflow) in {} commits",
            measured.workflows,
            measured.elapsed.as_secs_f64(),
            measured.ops,
            measured.ops as f64 / measured.workflows as f64,
            measured.commits,
        ));
        sample_raw(phase + 1)?;
    }
    Ok(())
}

/// How a driver learns that its instance ended.
#[derive(Clone)]
enum Waiter {
    /// One change-stream reader for all drivers (the default).
    Completions(Arc<Completions>),
    /// `Engine::wait_terminal` per instance (`BENCH_WAIT_TERMINAL=1`), to compare.
    WaitTerminal,
}

impl Waiter {
    fn new(engine: &Engine) -> Waiter {
        if std::env::var_os("BENCH_WAIT_TERMINAL").is_some() {
            note("waiting with Engine::wait_terminal");
            Waiter::WaitTerminal
        } else {
            Waiter::Completions(Arc::new(Completions::new(engine)))
        }
    }

    async fn wait(&self, engine: &Engine, id: InstanceId) -> anyhow::Result<Status> {
        match self {
            Waiter::Completions(c) => c.wait(id).await,
            Waiter::WaitTerminal => Ok(engine.wait_terminal(id, PHASE_TIMEOUT).await?),
        }
    }
}

/// Runs `workflows` instances to completion, `concurrency` at a time.
async fn drive(engine: &Engine, concurrency: usize, workflows: u64) -> anyhow::Result<Throughput> {
    let waiter = Waiter::new(engine);
    let issued = Arc::new(AtomicU64::new(0));
    let ops_before = engine.committed_ops();
    let commits_before = engine.commits();
    let started = Instant::now();
    let mut drivers = JoinSet::new();
    for _ in 0..concurrency {
        let engine = engine.clone();
        let waiter = waiter.clone();
        let issued = issued.clone();
        drivers.spawn(async move {
            while issued.fetch_add(1, Ordering::Relaxed) < workflows {
                run_one(&engine, &waiter).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = drivers.join_next().await {
        done.context("driver task panicked")??;
    }
    Ok(Throughput {
        workflows,
        elapsed: started.elapsed(),
        ops: engine.committed_ops() - ops_before,
        commits: engine.commits() - commits_before,
    })
}

/// Starts one instance, sends its signal and waits until it completes.
async fn run_one(engine: &Engine, waiter: &Waiter) -> anyhow::Result<()> {
    let id = engine.start::<FiveSteps>(&0, None).await?;
    engine.signal::<FiveSteps>(id, &Go, GO_KEY).await?;
    let status = waiter.wait(engine, id).await?;
    ensure!(
        status == Status::Completed,
        "instance {id} ended {status:?}"
    );
    Ok(())
}
