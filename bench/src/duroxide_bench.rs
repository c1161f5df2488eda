//! The same workflow on duroxide (crates.io, SQLite provider, file-backed on the scratch disk),
//! at concurrency 256.
//!
//! A step maps to an activity (a unit of work whose result is recorded durably), the signal to
//! a queued event: `Client::enqueue_event` after the start, `dequeue_event` in the
//! orchestration. Queued events are kept until consumed, like the engine's inbox; duroxide's
//! `raise_event`/`schedule_wait` would drop a signal that arrives before the wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use duroxide::providers::Provider;
use duroxide::providers::sqlite::SqliteProvider;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{Runtime, RuntimeOptions};
use duroxide::{
    ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus,
};
use tokio::task::JoinSet;

use crate::report::{Report, note};
use crate::scratch::Scratch;

/// Instances in flight at once.
const CONCURRENCY: usize = 256;
/// duroxide's orchestration and activity dispatcher slots (`BENCH_DUROXIDE_DISPATCHERS`
/// overrides). Its default is 2 each; 1 to 64 were tried on the 2-core benchmark machine: 8 is
/// among the fastest, and more slots make SQLite fail more instances with "database is locked"
/// (see README.md).
const DEFAULT_DISPATCHERS: usize = 8;
const ORCHESTRATION: &str = "FiveSteps";
const ACTIVITY: &str = "Step";
const QUEUE: &str = "go";
/// Longest wait for one instance.
const INSTANCE_TIMEOUT: Duration = Duration::from_secs(600);

/// Prints `duroxide_workflows_per_s` (completed workflows per second) and
/// `duroxide_failed_workflows`.
pub async fn run(scratch: &Scratch, workflows: u64, report: &mut Report) -> anyhow::Result<()> {
    let dispatchers = match std::env::var("BENCH_DUROXIDE_DISPATCHERS") {
        Ok(v) => v.parse().context("BENCH_DUROXIDE_DISPATCHERS")?,
        Err(_) => DEFAULT_DISPATCHERS,
    };
    let path = scratch.file("duroxide.db")?;
    std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let url = format!("sqlite:{}", path.display());
    let store: Arc<dyn Provider> = Arc::new(
        SqliteProvider::new(&url, None)
            .await
            .with_context(|| format!("cannot open duroxide's SQLite store {url}"))?,
    );
    let options = RuntimeOptions {
        orchestration_concurrency: dispatchers,
        worker_concurrency: dispatchers,
        ..RuntimeOptions::default()
    };
    let runtime =
        Runtime::start_with_options(store.clone(), activities(), orchestrations(), options).await;
    let client = Arc::new(Client::new(store));

    let started = Instant::now();
    let result = drive(&client, workflows).await;
    let elapsed = started.elapsed();
    runtime.shutdown(None).await;
    let tally = result?;

    report.metric(
        "duroxide_workflows_per_s",
        tally.completed as f64 / elapsed.as_secs_f64(),
    );
    report.metric("duroxide_failed_workflows", tally.failed as f64);
    note(format!(
        "duroxide: {} of {workflows} workflows completed ({} failed) in {:.2} s at concurrency \
         {CONCURRENCY}, {dispatchers} orchestration + {dispatchers} activity dispatchers",
        tally.completed,
        tally.failed,
        elapsed.as_secs_f64()
    ));
    if let Some(reason) = tally.first_failure {
        note(format!("duroxide: first failure: {reason}"));
    }
    Ok(())
}

/// How the instances ended.
#[derive(Debug, Default)]
struct Tally {
    completed: u64,
    failed: u64,
    first_failure: Option<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.first_failure = self.first_failure.take().or(other.first_failure);
    }
}

/// One activity that returns its input: the work of a step.
fn activities() -> ActivityRegistry {
    ActivityRegistry::builder()
        .register(
            ACTIVITY,
            |_ctx: ActivityContext, input: String| async move { Ok(input) },
        )
        .build()
}

/// Steps 1 and 2, the signal taken by step 3, steps 4 and 5.
fn orchestrations() -> OrchestrationRegistry {
    OrchestrationRegistry::builder()
        .register(
            ORCHESTRATION,
            |ctx: OrchestrationContext, _input: String| async move {
                ctx.schedule_activity(ACTIVITY, "1").await?;
                ctx.schedule_activity(ACTIVITY, "2").await?;
                let go = ctx.dequeue_event(QUEUE).await;
                ctx.schedule_activity(ACTIVITY, go).await?;
                ctx.schedule_activity(ACTIVITY, "4").await?;
                ctx.schedule_activity(ACTIVITY, "5").await?;
                Ok("done".to_string())
            },
        )
        .build()
}

/// Runs `workflows` instances, [`CONCURRENCY`] at a time, each start → signal → wait.
async fn drive(client: &Arc<Client>, workflows: u64) -> anyhow::Result<Tally> {
    let issued = Arc::new(AtomicU64::new(0));
    let mut drivers = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let issued = issued.clone();
        drivers.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= workflows {
                    return anyhow::Ok(tally);
                }
                match run_one(&client, &format!("bench-{n}")).await? {
                    None => tally.completed += 1,
                    Some(reason) => {
                        tally.failed += 1;
                        tally.first_failure.get_or_insert(reason);
                    }
                }
            }
        });
    }
    let mut tally = Tally::default();
    while let Some(done) = drivers.join_next().await {
        tally.add(done.context("driver task panicked")??);
    }
    Ok(tally)
}

/// Starts one instance, signals it and waits until it ends: `None` when it completed, the
/// reason when duroxide failed it.
async fn run_one(client: &Client, instance: &str) -> anyhow::Result<Option<String>> {
    client
        .start_orchestration(instance, ORCHESTRATION, "")
        .await
        .with_context(|| format!("start {instance}"))?;
    client
        .enqueue_event(instance, QUEUE, "go")
        .await
        .with_context(|| format!("signal {instance}"))?;
    let status = client
        .wait_for_orchestration(instance, INSTANCE_TIMEOUT)
        .await
        .with_context(|| format!("wait for {instance}"))?;
    match status {
        OrchestrationStatus::Completed { .. } => Ok(None),
        OrchestrationStatus::Failed { details, .. } => {
            Ok(Some(format!("{instance}: {}", details.display_message())))
        }
        other => bail!("{instance} ended {other:?}"),
    }
}
