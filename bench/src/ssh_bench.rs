//! SSH transport: command latency over one pooled connection against a fresh connection per
//! command, and many concurrent detached runs through one connection.
//!
//! One real OpenSSH server (Debian's `/usr/sbin/sshd`, started by the integration tests'
//! harness, `tests/support/sshd.rs`) listens on 127.0.0.2 with its files in the scratch
//! directory; the client is the library's [`SshShell`] as root with a fresh ed25519 key and a
//! known_hosts file holding the server's key. The server is stopped at the end.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_fleet::io::run::{self, RunState};
use agent_fleet::io::shell::Shell;
use agent_fleet::io::ssh::{HostKeyCheck, SshOptions, SshShell, SshTarget};
use anyhow::{Context, bail, ensure};
use tokio::task::JoinSet;

use crate::report::{Report, note};
use crate::scratch::Scratch;
use crate::sshd::{ClientKey, Sshd, known_hosts};

/// The loopback address the server listens on.
const IP: &str = "127.0.0.2";
/// Bounds each `echo ok`.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// What each detached run does.
const RUN_COMMAND: &str = "echo hi; sleep 0.2\n";
/// How often a detached run's status is read while it runs. The daemon's Await step uses
/// 250 ms; a shorter period here puts more load on the connection and ends closer to the run's
/// own 0.2 s.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for one detached run to exit.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// Sets `SshOptions::max_sessions` (default: the library's default).
const MAX_SESSIONS_VAR: &str = "BENCH_SSH_MAX_SESSIONS";

/// Sizes of one `ssh` run.
#[derive(Debug, Clone, Copy)]
pub struct SshPlan {
    /// Unmeasured `echo ok`s on the pooled connection before the measured ones.
    pub warmup: usize,
    /// Measured `echo ok`s on the pooled connection.
    pub pooled: usize,
    /// Measured `echo ok`s each on a new connection.
    pub fresh: usize,
    /// Detached runs in flight at once on one connection.
    pub runs: usize,
}

impl SshPlan {
    pub const FULL: SshPlan = SshPlan {
        warmup: 20,
        pooled: 200,
        fresh: 30,
        runs: 50,
    };
    pub const QUICK: SshPlan = SshPlan {
        warmup: 10,
        pooled: 50,
        fresh: 10,
        runs: 50,
    };
}

/// Starts the server, runs the three measurements and stops the server.
pub fn run(plan: SshPlan, report: &mut Report) -> anyhow::Result<()> {
    crate::sshd::require_sshd();
    let options = options()?;
    let scratch = Scratch::new()?;
    let dir = scratch.path();
    note(format!(
        "scratch directory {} ({plan:?}, {options:?})",
        dir.display()
    ));
    // The harness panics (with sshd's log) when the server does not come up.
    let key = ClientKey::generate(dir, "client_ed25519");
    let sshd = Sshd::start(dir, "bench-sshd", IP, &key, &[]);
    let known = dir.join("known_hosts");
    known_hosts(&known, &[&sshd]);
    note(format!("sshd {} (pid {:?})", sshd.addr(), sshd.pid()));
    let target = SshTarget {
        host_id: "bench".into(),
        hostname: sshd.ip.clone(),
        port: sshd.port,
        user: "root".into(),
        key_path: key.private.clone(),
        key_passphrase: None,
        host_key: HostKeyCheck::KnownHosts(known),
    };
    let measured = crate::runtime()?.block_on(measure(plan, &target, &options, dir, report));
    drop(sshd);
    measured
}

/// The library's default options, with `max_sessions` from the environment if set.
fn options() -> anyhow::Result<SshOptions> {
    let mut options = SshOptions::default();
    if let Some(value) = std::env::var_os(MAX_SESSIONS_VAR) {
        let value = value.to_string_lossy();
        options.max_sessions =
            value.parse().ok().filter(|n| *n > 0).with_context(|| {
                format!("{MAX_SESSIONS_VAR}={value:?} is not a positive number")
            })?;
    }
    Ok(options)
}

async fn measure(
    plan: SshPlan,
    target: &SshTarget,
    options: &SshOptions,
    dir: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    pooled(plan, target, options, report).await?;
    fresh(plan, target, options, report).await?;
    report.ratio("ssh_pool_speedup", "ssh_fresh_cmd_ms", "ssh_pooled_cmd_ms");
    concurrent_runs(plan, target, options, dir, report).await
}

fn shell(target: &SshTarget, options: &SshOptions) -> SshShell {
    SshShell::new(target.clone(), options.clone(), None)
}

/// Runs `echo ok` and checks that it printed `ok`.
async fn echo_ok(shell: &SshShell) -> anyhow::Result<()> {
    let out = shell.run("echo ok", b"", CMD_TIMEOUT).await?;
    ensure!(
        out.success() && out.stdout == b"ok\n",
        "echo ok over ssh: exit {:?}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        out.error_tail()
    );
    Ok(())
}

/// `ssh_pooled_cmd_ms` (mean), `_p50_ms`, `_p99_ms`: one `echo ok` at a time on one connection.
async fn pooled(
    plan: SshPlan,
    target: &SshTarget,
    options: &SshOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let shell = shell(target, options);
    let connect = Instant::now();
    echo_ok(&shell).await.context("first command")?;
    let first = connect.elapsed();
    for _ in 1..plan.warmup {
        echo_ok(&shell).await?;
    }
    let mut samples = Vec::with_capacity(plan.pooled);
    for _ in 0..plan.pooled {
        let t = Instant::now();
        echo_ok(&shell).await?;
        samples.push(t.elapsed());
    }
    let opened = shell.connections_opened();
    shell.disconnect().await;
    ensure!(
        opened == 1,
        "the pooled shell opened {opened} connections, expected 1"
    );
    let stats = Stats::of(&mut samples);
    note(format!(
        "pooled: first command (connect + auth + echo) {:.1} ms; then {} commands: {stats}",
        ms(first),
        plan.pooled
    ));
    report.metric("ssh_pooled_cmd_ms", stats.mean);
    report.metric("ssh_pooled_cmd_p50_ms", stats.p50);
    report.metric("ssh_pooled_cmd_p99_ms", stats.p99);
    Ok(())
}

/// `ssh_fresh_cmd_ms`: a new shell, so a new connection and authentication, per `echo ok`. The
/// disconnect after each is not timed.
async fn fresh(
    plan: SshPlan,
    target: &SshTarget,
    options: &SshOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    // One unmeasured round first (the pooled phase warmed the server already).
    let mut samples = Vec::with_capacity(plan.fresh);
    for i in 0..=plan.fresh {
        let shell = shell(target, options);
        let t = Instant::now();
        echo_ok(&shell).await?;
        let took = t.elapsed();
        shell.disconnect().await;
        ensure!(shell.connections_opened() == 1, "a fresh shell reconnected");
        if i > 0 {
            samples.push(took);
        }
    }
    let stats = Stats::of(&mut samples);
    note(format!(
        "fresh: {} commands, each on a new connection: {stats}",
        plan.fresh
    ));
    report.metric("ssh_fresh_cmd_ms", stats.mean);
    Ok(())
}

/// What one detached run cost; each phase includes its waits for a free session.
#[derive(Debug, Clone, Copy)]
struct RunCost {
    /// Status reads until it had exited.
    polls: u32,
    /// `write_file` of command.sh.
    write: Duration,
    /// `start`.
    start: Duration,
    /// From started to a status read that saw it exited.
    wait: Duration,
    /// `output`.
    output: Duration,
    /// From the write of command.sh to the output read.
    took: Duration,
}

/// `ssh_concurrent_runs_<n>_s` and `ssh_concurrent_runs_connections`: `plan.runs` detached runs
/// at once on one pooled connection, each write → start → poll status → read output.
async fn concurrent_runs(
    plan: SshPlan,
    target: &SshTarget,
    options: &SshOptions,
    dir: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let shell = Arc::new(shell(target, options));
    // Connected before the clock starts: the figure is about the runs, not the handshake.
    echo_ok(&shell).await.context("connecting")?;
    let root = dir.join("runs");
    let cpu = CpuTimes::now();
    let wall = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..plan.runs {
        let shell = Arc::clone(&shell);
        let run_dir = root.join(format!("run-{i:03}")).display().to_string();
        tasks.spawn(async move { detached_run(shell.as_ref(), &run_dir).await });
    }
    let mut costs = Vec::with_capacity(plan.runs);
    while let Some(joined) = tasks.join_next().await {
        costs.push(joined.context("a run task panicked")??);
    }
    let wall = wall.elapsed();
    let busy = CpuTimes::busy_since(cpu);
    let opened = shell.connections_opened();
    shell.disconnect().await;

    let polls: u32 = costs.iter().map(|c| c.polls).sum();
    let mut took: Vec<Duration> = costs.iter().map(|c| c.took).collect();
    let stats = Stats::of(&mut took);
    let mean = |phase: fn(&RunCost) -> Duration| {
        costs.iter().map(|c| ms(phase(c))).sum::<f64>() / costs.len() as f64
    };
    // write + start + polls + 2 output reads, each a channel.
    let channels = costs.len() as u32 * 4 + polls;
    note(format!(
        "concurrent runs: {} runs of {RUN_COMMAND:?} in {:.3} s on {opened} connection(s), \
         max_sessions {}, status every {} ms; {channels} channels ({polls} status reads, \
         {:.0} channels/s); per run: {stats}; mean per phase (session waits included): \
         write {:.0} ms, start {:.0} ms, until seen exited {:.0} ms, output {:.0} ms; \
         CPUs busy {busy}",
        plan.runs,
        wall.as_secs_f64(),
        options.max_sessions,
        POLL.as_millis(),
        f64::from(channels) / wall.as_secs_f64(),
        mean(|c| c.write),
        mean(|c| c.start),
        mean(|c| c.wait),
        mean(|c| c.output),
    ));
    report.metric(
        &format!("ssh_concurrent_runs_{}_s", plan.runs),
        wall.as_secs_f64(),
    );
    report.metric("ssh_concurrent_runs_connections", opened as f64);
    Ok(())
}

/// One detached run: write its command.sh, start it, poll its status until it exited, read its
/// output; checks it printed `hi` and exited 0.
async fn detached_run(shell: &dyn Shell, run_dir: &str) -> anyhow::Result<RunCost> {
    let t = Instant::now();
    run::write_file(
        shell,
        &format!("{run_dir}/command.sh"),
        RUN_COMMAND.as_bytes(),
    )
    .await?;
    let written = t.elapsed();
    let started = run::start(shell, run_dir, run_dir, &[]).await?;
    ensure!(
        matches!(started, run::Started::Launched { .. }),
        "{run_dir}: {started:?}"
    );
    let launched = t.elapsed();
    let mut polls = 0;
    loop {
        polls += 1;
        match run::status(shell, run_dir).await? {
            RunState::Exited { code: 0 } => break,
            RunState::Running { .. } if t.elapsed() < RUN_DEADLINE => {
                tokio::time::sleep(POLL).await
            }
            other => bail!("{run_dir}: {other:?} after {:?}", t.elapsed()),
        }
    }
    let exited = t.elapsed();
    let (stdout, stderr) = run::output(shell, run_dir, 4096).await?;
    ensure!(
        stdout == b"hi\n" && stderr.is_empty(),
        "{run_dir}: stdout {:?}, stderr {:?}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    let took = t.elapsed();
    Ok(RunCost {
        polls,
        write: written,
        start: launched - written,
        wait: exited - launched,
        output: took - exited,
        took,
    })
}

/// Clock ticks spent by all CPUs (first line of `/proc/stat`) and by this process (its
/// `/proc/self/stat`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTimes {
    busy: u64,
    total: u64,
    this_process: u64,
}

impl CpuTimes {
    pub(crate) fn now() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal (guest times are inside user).
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4)?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // "pid (comm) state ppid …": utime and stime are fields 14 and 15.
        let own: Vec<&str> = own.rsplit_once(") ")?.1.split_whitespace().collect();
        let this_process = own.get(11)?.parse::<u64>().ok()? + own.get(12)?.parse::<u64>().ok()?;
        Some(CpuTimes {
            busy: total - idle,
            total,
            this_process,
        })
    }

    /// The share of all CPUs' time spent busy since `then`, and the part of it this process
    /// (the SSH client) took, e.g. "93% of 2 CPUs (this process 12%)".
    pub(crate) fn busy_since(then: Option<CpuTimes>) -> String {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        match (then, CpuTimes::now()) {
            (Some(a), Some(b)) if b.total > a.total => {
                let share = |ticks: u64| 100.0 * ticks as f64 / (b.total - a.total) as f64;
                format!(
                    "{:.0}% of {cpus} CPUs (this process {:.0}%)",
                    share(b.busy - a.busy),
                    share(b.this_process.saturating_sub(a.this_process))
                )
            }
            _ => "unknown".into(),
        }
    }
}

/// Mean and nearest-rank percentiles of samples, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Stats {
    mean: f64,
    min: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    /// Sorts `samples` (at least one).
    fn of(samples: &mut [Duration]) -> Stats {
        samples.sort_unstable();
        let n = samples.len();
        let rank = |p: f64| ms(samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1]);
        Stats {
            mean: samples.iter().map(|d| ms(*d)).sum::<f64>() / n as f64,
            min: ms(samples[0]),
            p50: rank(0.50),
            p99: rank(0.99),
            max: ms(samples[n - 1]),
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mean {:.2} ms, min {:.2}, p50 {:.2}, p99 {:.2}, max {:.2}",
            self.mean, self.min, self.p50, self.p99, self.max
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Stats::of(&mut samples);
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(s.min, 1.0) && near(s.p50, 50.0), "{s:?}");
        assert!(near(s.p99, 99.0) && near(s.max, 100.0), "{s:?}");
        assert!(near(s.mean, 50.5), "{s:?}");
        let s = Stats::of(&mut [Duration::from_millis(7)]);
        assert!(near(s.p50, 7.0) && near(s.p99, 7.0), "{s:?}");
    }
}
