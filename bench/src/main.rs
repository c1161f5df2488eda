//! Benchmarks of the agent-fleet workflow engine, of its SSH transport and of the daemon's own
//! latency around an agent run.
//!
//! ```text
//! cargo run --release --manifest-path bench/Cargo.toml -- engine [--quick]
//! cargo run --release --manifest-path bench/Cargo.toml -- ssh [--quick]
//! cargo run --release --manifest-path bench/Cargo.toml -- latency [--quick] [--only demo|claude|codex]
//! cargo run --release --manifest-path bench/Cargo.toml -- webhooks [--quick] [--rate R] [--seconds S] …
//! cargo run --release --manifest-path bench/Cargo.toml -- feed [--quick]
//! ```
//!
//! Every figure goes to stdout as one `metric <name> <value>` line; notes go to stderr. See
//! README.md beside Cargo.toml for what each metric means.

// The integration tests' real-CLI helpers (environment and config of Claude Code and Codex
// against the fake model), shared rather than copied.
#[path = "../../tests/support/clis.rs"]
mod clis;
mod completions;
mod duroxide_bench;
mod engine_bench;
mod fake_forge;
mod feed_bench;
mod http1;
mod latency;
// The integration tests' fake model server (Anthropic and OpenAI Responses APIs).
#[path = "../../tests/support/model.rs"]
mod model;
mod raw;
mod recovery;
mod report;
mod scratch;
mod ssh_bench;
// The integration tests' OpenSSH harness, shared rather than copied.
#[path = "../../tests/support/sshd.rs"]
mod sshd;
mod webhooks;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::report::Report;

const USAGE: &str =
    "usage: agent-fleet-bench engine [--quick] [--only raw|engine|duroxide|recovery]
       agent-fleet-bench ssh [--quick]
       agent-fleet-bench latency [--quick] [--only demo|claude|codex]
       agent-fleet-bench webhooks [--quick] [--burst N] [--connections C] [--rate R] [--seconds S] [--forge-delay-ms D]
       agent-fleet-bench feed [--quick]";

/// Groups of the engine benchmark, in the order they run.
const GROUPS: [&str; 4] = ["raw", "engine", "duroxide", "recovery"];

/// Options of the `engine` benchmark.
#[derive(Debug, Clone, Copy)]
struct Options {
    plan: Plan,
    /// Runs only this group (the ratios that need another group print `nan`).
    only: Option<&'static str>,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut options = Options {
            plan: Plan::FULL,
            only: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.plan = Plan::QUICK,
                "--only" => {
                    let group = args.next().map(String::as_str).unwrap_or_default();
                    let Some(known) = GROUPS.iter().find(|g| **g == group) else {
                        bail!("unknown group {group:?}; {USAGE}");
                    };
                    options.only = Some(known);
                }
                _ => bail!("unexpected argument {arg:?}; {USAGE}"),
            }
        }
        Ok(options)
    }

    fn runs(&self, group: &str) -> bool {
        self.only.is_none_or(|only| only == group)
    }
}

/// Sizes of one run: the full run is the one the README reports, `--quick` iterates fast.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// How long each raw loop (fsync, redb commit) runs in all, over its slices.
    pub raw_seconds: f64,
    /// Workflows run at concurrency 1, 16 and 256.
    pub engine_c1: u64,
    pub engine_c16: u64,
    pub engine_c256: u64,
    /// Workflows run on duroxide at concurrency 256.
    pub duroxide: u64,
    /// Instances parked for the recovery measurement.
    pub parked: u64,
}

impl Plan {
    const FULL: Plan = Plan {
        raw_seconds: 3.0,
        engine_c1: 600,
        engine_c16: 6_000,
        engine_c256: 40_000,
        duroxide: 1_000,
        parked: 100_000,
    };
    const QUICK: Plan = Plan {
        raw_seconds: 1.0,
        engine_c1: 60,
        engine_c16: 600,
        engine_c256: 4_000,
        duroxide: 300,
        parked: 10_000,
    };
}

fn main() -> anyhow::Result<()> {
    init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(bench) = args.first() else {
        bail!("{USAGE}");
    };
    let rest = &args[1..];
    match bench.as_str() {
        "engine" => {
            let options = Options::parse(rest)?;
            runtime()?.block_on(run_engine(options))
        }
        "ssh" => {
            let plan = match rest {
                [] => ssh_bench::SshPlan::FULL,
                [flag] if flag == "--quick" => ssh_bench::SshPlan::QUICK,
                _ => bail!("unexpected arguments {rest:?}; {USAGE}"),
            };
            ssh_bench::run(plan, &mut Report::default())
        }
        "latency" => {
            let options = latency::LatencyOptions::parse(rest, USAGE)?;
            latency::run(options, &mut Report::default())
        }
        "webhooks" => {
            let options = webhooks::WebhookOptions::parse(rest, USAGE)?;
            webhooks::run(options, &mut Report::default())
        }
        "feed" => {
            let plan = feed_bench::FeedPlan::parse(rest, USAGE)?;
            feed_bench::run(plan, &mut Report::default())
        }
        // Hidden: the recovery child of `feed` (opens a store of its own workflow).
        feed_bench::RECOVER_SUBCOMMAND => feed_bench::recover_child(rest),
        // Hidden: the fake model server of `latency`, in a child process whose stderr (the
        // server's request log) goes to a file.
        latency::MODEL_SUBCOMMAND => latency::model_main(),
        // Hidden: the recovery half of the engine benchmark, run in a fresh child process so
        // its RSS holds nothing but the recovered engine.
        recovery::SUBCOMMAND => {
            let (path, expected, resume) = match rest {
                [path, expected] => (path, expected, false),
                [path, expected, flag] if flag == recovery::RESUME_FLAG => (path, expected, true),
                _ => bail!(
                    "usage: agent-fleet-bench {} <db> <parked> [{}]",
                    recovery::SUBCOMMAND,
                    recovery::RESUME_FLAG
                ),
            };
            let expected: u64 = expected.parse().context("parked count")?;
            recovery::child_main(&PathBuf::from(path), expected, resume)
        }
        other => bail!("unknown benchmark {other:?}; {USAGE}"),
    }
}

/// Logs (the engine's and duroxide's) go to stderr, so stdout holds only metric lines.
/// duroxide installs its own stdout logger unless a global subscriber already exists. Its
/// warnings (one per SQLite "database is locked" retry) are hidden unless `RUST_LOG` asks.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,duroxide=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")
}

/// Runs every group of the engine benchmark in order, all on the same disk.
async fn run_engine(options: Options) -> anyhow::Result<()> {
    let plan = options.plan;
    let scratch = scratch::Scratch::new()?;
    report::note(format!(
        "scratch directory {} ({plan:?})",
        scratch.path().display()
    ));
    let mut report = Report::default();

    let mut raw = if options.runs("raw") {
        Some(raw::RawDisk::open(&scratch)?)
    } else {
        None
    };
    if options.runs("engine") {
        // The raw loops run in slices around the engine phases, on the disk as it is then.
        engine_bench::run(&scratch, plan, raw.as_mut(), &mut report).await?;
    } else if let Some(raw) = raw.as_mut() {
        raw.sample(Duration::from_secs_f64(plan.raw_seconds))?;
    }
    if let Some(raw) = &raw {
        raw.report(&mut report);
    }
    if options.runs("duroxide")
        && let Err(e) = duroxide_bench::run(&scratch, plan.duroxide, &mut report).await
    {
        // The comparison must not cost the engine's own figures.
        report::note(format!("duroxide run failed: {e:#}"));
        report.metric("duroxide_workflows_per_s", f64::NAN);
    }
    if options.runs("recovery") {
        recovery::run(&scratch, plan.parked, &mut report).await?;
    }

    commit_ratios(&mut report);
    report.ratio(
        "ratio_vs_duroxide",
        "engine_workflows_per_s_c256",
        "duroxide_workflows_per_s",
    );
    Ok(())
}

/// Prints `ratio_c1_vs_raw_commit` and `ratio_c256_vs_raw_commit` from the engine phases and the
/// raw loop already reported (by `engine` and by `feed`), and returns them (`None`: not
/// measured).
fn commit_ratios(report: &mut Report) -> [(&'static str, Option<f64>); 2] {
    let ratios = [
        ("ratio_c1_vs_raw_commit", "engine_transitions_per_s_c1"),
        ("ratio_c256_vs_raw_commit", "engine_transitions_per_s_c256"),
    ];
    // Beside the goal's ratio, the one against commits that write what a transition writes
    // at least (three tables): what is left is the engine's own cost.
    report.ratio(
        "ratio_c1_vs_raw_3_table_commit",
        "engine_transitions_per_s_c1",
        "raw_redb_commit_3_tables_per_s",
    );
    ratios.map(|(name, engine)| {
        report.ratio(name, engine, "raw_redb_commit_per_s");
        (name, report.get(name))
    })
}
