//! `webhooks`: signed Forgejo deliveries from concurrent clients to the REAL daemon
//! (`agent-fleet serve`, a subprocess, as in `latency`) configured with a forge: the small fake
//! of `fake_forge.rs` on loopback, which answers the issue read each issue delivery makes.
//!
//! Every delivery is the reference `issue_label` payload (tests/fixtures/reference/forgejo/
//! webhooks/issues-labeled.json), renumbered to its own issue and signed like Forgejo signs it
//! (hex HMAC-SHA256 of the body under the webhook secret). 30 % of the sends are duplicates: a
//! delivery sent earlier (one of the last 64), resent with the same id, headers and body.
//!
//! Two phases on one daemon, each with issues of its own:
//! 1. **throughput**: `connections` clients in a closed loop (next request as soon as the
//!    last is answered) → `webhook_acks_per_s` (acks = 200 answers, duplicates included);
//! 2. **steady**: open loop at `rate`/s for `seconds` (each send due at `k / rate`, whatever
//!    the answers; its latency counts from when it was due, so a stall shows in full) →
//!    p50 / p99 / max and the worst 1-second window, with a per-second table on stderr.
//!
//! Then every issue sent must have exactly one task (`GET /api/v1/tasks`, by `source`).
//! While the steady phase runs, a sampler records every 50 ms the daemon's CPU time, the
//! store file's size, bytes written, and the machine's I/O and CPU pressure (PSI): the
//! per-second table puts them beside the latencies, to tell a stall's cause.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::fake_forge::FakeForge;
use crate::http1::{self, Conn};
use crate::latency::{self, Daemon, TOKEN, TOKEN_ENV, toml_str};
use crate::report::{Report, note, percentile};
use crate::scratch::Scratch;

const SECRET: &str = "bench-webhook-secret";
const SECRET_ENV: &str = "BENCH_FORGEJO_WEBHOOK_SECRET";
const FORGE_TOKEN_ENV: &str = "BENCH_FORGEJO_TOKEN";
const TRIGGER: &str = "agent:task";
const PATH: &str = "/api/v1/webhooks/forgejo";
/// Share of sends that resend an earlier delivery.
const DUPLICATE_SHARE: f64 = 0.30;
/// A duplicate resends one of this many latest deliveries.
const DUPLICATE_WINDOW: usize = 64;
/// Connections of the open-loop phase (a send waits for a free one: that wait counts).
const STEADY_CONNECTIONS: usize = 64;
/// Sampling period of the daemon and the machine during the steady phase.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// `BENCH_WEBHOOK_LOGS=DIR`: copy the daemon's log there before the scratch directory goes.
const KEEP_LOGS_VAR: &str = "BENCH_WEBHOOK_LOGS";

/// Options of one `webhooks` run.
#[derive(Debug, Clone, Copy)]
pub struct WebhookOptions {
    /// Sends of the throughput phase (0: skip it).
    pub burst: usize,
    pub connections: usize,
    /// Open-loop rate and duration (0 s: skip it).
    pub rate: u32,
    pub seconds: u32,
    /// Added to every answer of the fake forge.
    pub forge_delay_ms: u64,
}

impl WebhookOptions {
    const FULL: WebhookOptions = WebhookOptions {
        burst: 40_000,
        connections: 16,
        rate: 1_000,
        seconds: 60,
        forge_delay_ms: 0,
    };
    const QUICK: WebhookOptions = WebhookOptions {
        burst: 8_000,
        connections: 16,
        rate: 1_000,
        seconds: 12,
        forge_delay_ms: 0,
    };

    /// `[--quick] [--burst N] [--connections C] [--rate R] [--seconds S] [--forge-delay-ms D]`
    pub fn parse(args: &[String], usage: &str) -> anyhow::Result<WebhookOptions> {
        let mut o = if args.iter().any(|a| a == "--quick") {
            WebhookOptions::QUICK
        } else {
            WebhookOptions::FULL
        };
        let mut args = args.iter().filter(|a| *a != "--quick");
        while let Some(flag) = args.next() {
            let mut value = |what: &str| -> anyhow::Result<u64> {
                let v = args
                    .next()
                    .with_context(|| format!("{flag} needs {what}; {usage}"))?;
                v.parse::<u64>()
                    .with_context(|| format!("{flag} {v:?}: not a number; {usage}"))
            };
            match flag.as_str() {
                "--burst" => o.burst = value("a number of sends")? as usize,
                "--connections" => o.connections = value("a number")?.max(1) as usize,
                "--rate" => o.rate = value("deliveries per second")?.max(1) as u32,
                "--seconds" => o.seconds = value("seconds")? as u32,
                "--forge-delay-ms" => o.forge_delay_ms = value("milliseconds")?,
                _ => bail!("unexpected argument {flag:?}; {usage}"),
            }
        }
        Ok(o)
    }
}

pub fn run(options: WebhookOptions, report: &mut Report) -> anyhow::Result<()> {
    let root = latency::repo_root();
    let bin = latency::daemon_binary(&root)?;
    note(format!("daemon binary {} ({options:?})", bin.display()));
    let scratch = Scratch::new()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    let result = runtime.block_on(run_in(&root, &bin, &scratch, options, report));
    if let Some(dir) = std::env::var_os(KEEP_LOGS_VAR) {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::copy(scratch.path().join("daemon.log"), dir.join("daemon.log"));
        note(format!("daemon log kept in {}", dir.display()));
    }
    result
}

async fn run_in(
    root: &Path,
    bin: &Path,
    scratch: &Scratch,
    options: WebhookOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let refs = root.join("tests/fixtures/reference/forgejo/webhooks");
    let template: Value = serde_json::from_slice(
        &std::fs::read(refs.join("issues-labeled.json")).context("reference payload")?,
    )?;
    let event_type = header_of(&refs.join("issues-labeled.headers"), "X-Forgejo-Event-Type")?;
    let forge = FakeForge::start(
        &template,
        TRIGGER,
        Duration::from_millis(options.forge_delay_ms),
    )
    .await?;
    note(format!("fake forge at {}", forge.base_url));

    let dir = scratch.path();
    let config = dir.join("fleet.toml");
    std::fs::write(&config, config_text(dir, &forge.base_url))?;
    let daemon = Daemon::start_with(
        bin,
        dir,
        &config,
        &[(SECRET_ENV, SECRET), (FORGE_TOKEN_ENV, "bench-forge-token")],
    )?;
    let addr = daemon
        .url
        .strip_prefix("http://")
        .context("daemon URL")?
        .to_string();
    note(format!("daemon at {} (pid {:?})", daemon.url, daemon.pid()));
    let maker = Maker {
        template,
        event_type,
        clone_url: forge.clone_url(),
        addr: addr.clone(),
    };

    let mut issues = 0u64;
    if options.burst > 0 {
        let plan = maker.plan(issues + 1, options.burst, 1);
        issues += plan.issues;
        let outcome = closed_loop(&addr, &plan, options.connections).await?;
        outcome.check("throughput")?;
        let secs = outcome.elapsed.as_secs_f64();
        report.metric("webhook_acks_per_s", outcome.latencies.len() as f64 / secs);
        let mut all: Vec<f64> = outcome.latencies.iter().map(|(_, l)| *l).collect();
        let c = options.connections;
        report.metric(
            &format!("webhook_ack_p50_ms_c{c}"),
            percentile(&mut all, 0.50),
        );
        report.metric(
            &format!("webhook_ack_p99_ms_c{c}"),
            percentile(&mut all, 0.99),
        );
        note(format!(
            "throughput: {} sends ({} new, {} duplicates) over {c} connections in {secs:.2} s",
            plan.sends.len(),
            plan.issues,
            plan.sends.len() as u64 - plan.issues
        ));
    }
    if options.seconds > 0 {
        let total = options.rate as usize * options.seconds as usize;
        let plan = maker.plan(issues + 1, total, 2);
        issues += plan.issues;
        let pid = daemon.pid();
        let store = dir.join("data/fleet.redb");
        let sampler = Sampler::start(pid, store);
        let outcome = open_loop(&addr, &plan, options.rate).await?;
        let samples = sampler.stop().await;
        outcome.check("steady")?;
        let r = options.rate;
        let mut all: Vec<f64> = outcome.latencies.iter().map(|(_, l)| *l).collect();
        report.metric(
            &format!("webhook_ack_p50_ms_at_{r}_per_s"),
            percentile(&mut all, 0.50),
        );
        report.metric(
            &format!("webhook_ack_p99_ms_at_{r}_per_s"),
            percentile(&mut all, 0.99),
        );
        report.metric(
            &format!("webhook_ack_max_ms_at_{r}_per_s"),
            percentile(&mut all, 1.0),
        );
        let windows = per_second(&outcome.latencies, options.seconds as usize);
        let worst = windows
            .iter()
            .max_by(|a, b| a.p99.total_cmp(&b.p99))
            .context("no window")?;
        report.metric(
            &format!("webhook_ack_worst_1s_p99_ms_at_{r}_per_s"),
            worst.p99,
        );
        let slow = windows.iter().filter(|w| w.p99 > 10.0).count();
        report.metric(
            &format!("webhook_seconds_over_10ms_p99_at_{r}_per_s"),
            slow as f64,
        );
        print_windows(&windows, &samples, outcome.started, &forge);
    }
    let (tasks, bad) = tasks_per_issue(&addr, issues).await?;
    report.metric("webhook_issues_with_one_task", tasks as f64);
    note(format!("forge requests: {:?}", forge.counts()));
    ensure!(
        bad.is_empty(),
        "issues without exactly one task (issue → tasks): {:?}",
        &bad[..bad.len().min(20)]
    );
    ensure!(
        tasks == issues,
        "{issues} issues were sent but {tasks} have one task"
    );
    note(format!("each of the {issues} issues has exactly one task"));
    daemon.stop();
    forge.stop();
    Ok(())
}

/// The daemon's configuration: the fake forge, the trigger label of the reference payload, and
/// one local host whose only agent CLI is missing (its program is not on the PATH), so that the
/// tasks wait for a host instead of cloning and running anything: what is measured is the
/// deliveries and the tasks' creation, not agent runs.
fn config_text(dir: &Path, forge: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_token_env = "{TOKEN_ENV}"

[storage]
path = {store}

[forgejo]
base_url = {forge}
token_env = "{FORGE_TOKEN_ENV}"
webhook_secret_env = "{SECRET_ENV}"
trigger_label = "{TRIGGER}"
repos = ["acme/widgets"]
default_agent = "bench"

{waiting_host}"#,
        store = toml_str(&dir.join("data/fleet.redb").display().to_string()),
        forge = toml_str(forge),
        waiting_host = latency::waiting_host_toml(&dir.join("work")),
    )
}

/// The value of `name` in a reference `.headers` file.
fn header_of(path: &Path, name: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .with_context(|| format!("no {name} in {}", path.display()))
}

// ---- the deliveries ---------------------------------------------------------------------------

/// Builds signed deliveries from the reference payload.
struct Maker {
    template: Value,
    event_type: String,
    clone_url: String,
    addr: String,
}

/// The sends of one phase: raw requests, in order; `issues` new ones (numbered from the
/// phase's first issue), the rest resends.
struct Plan {
    sends: Vec<Arc<Vec<u8>>>,
    issues: u64,
}

impl Maker {
    /// `total` sends; the new ones are issues `first..`, delivery ids `bench-<phase>-<n>`.
    fn plan(&self, first: u64, total: usize, phase: u32) -> Plan {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ u64::from(phase));
        let mut sends = Vec::with_capacity(total);
        let mut recent: Vec<Arc<Vec<u8>>> = Vec::new();
        let mut issues = 0u64;
        for _ in 0..total {
            if !recent.is_empty() && rng.unit() < DUPLICATE_SHARE {
                let from = recent.len().saturating_sub(DUPLICATE_WINDOW);
                let pick = from + (rng.next() as usize) % (recent.len() - from);
                sends.push(recent[pick].clone());
                continue;
            }
            let n = first + issues;
            issues += 1;
            let raw = Arc::new(self.delivery(n, &format!("bench-{phase}-{n:08}")));
            recent.push(raw.clone());
            sends.push(raw);
        }
        Plan { sends, issues }
    }

    /// The signed `issue_label` delivery `id` of issue `n`.
    fn delivery(&self, n: u64, id: &str) -> Vec<u8> {
        let mut payload = self.template.clone();
        payload["number"] = json!(n);
        payload["issue"]["number"] = json!(n);
        payload["issue"]["id"] = json!(100_000 + n);
        payload["issue"]["title"] = json!(format!("Bench issue {n}"));
        payload["repository"]["clone_url"] = json!(self.clone_url);
        let body = serde_json::to_vec(&payload).expect("a JSON value serializes");
        let signature = sign(&body);
        http1::request(
            "POST",
            &self.addr,
            PATH,
            &[
                ("Content-Type", "application/json"),
                ("X-Forgejo-Delivery", id),
                ("X-Forgejo-Event", "issues"),
                ("X-Forgejo-Event-Type", &self.event_type),
                ("X-Forgejo-Signature", &signature),
            ],
            &body,
        )
    }
}

/// `hex(HMAC-SHA256(secret, body))`, as Forgejo signs.
fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A small deterministic generator (the same sends every run).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---- sending ----------------------------------------------------------------------------------

/// What a phase measured: per answered send (µs since `started` it was due, latency in ms).
struct Outcome {
    started: Instant,
    elapsed: Duration,
    latencies: Vec<(f64, f64)>,
    /// Answers other than 200, or failed sends: (status or 0, body or error).
    failures: Vec<(u16, String)>,
}

impl Outcome {
    fn check(&self, phase: &str) -> anyhow::Result<()> {
        ensure!(
            self.failures.is_empty(),
            "{phase}: {} sends were not acknowledged, e.g. {:?}",
            self.failures.len(),
            &self.failures[..self.failures.len().min(5)]
        );
        Ok(())
    }
}

/// `connections` clients, each sending the next request as soon as its last is answered.
async fn closed_loop(addr: &str, plan: &Plan, connections: usize) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let sends = Arc::new(plan.sends.clone());
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..connections {
        let (next, sends, mut conn) = (next.clone(), sends.clone(), Conn::new(addr));
        clients.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failures = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(raw) = sends.get(k) else { break };
                let t = Instant::now();
                record(conn.send(raw).await, t, started, &mut lat, &mut failures);
            }
            (lat, failures)
        }));
    }
    gather(started, clients).await
}

/// Open loop: send `k` is due at `k / rate` s; [`STEADY_CONNECTIONS`] connections take the due
/// sends in order. A latency counts from when the send was due.
async fn open_loop(addr: &str, plan: &Plan, rate: u32) -> anyhow::Result<Outcome> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let sends = Arc::new(plan.sends.clone());
    let started = Instant::now() + Duration::from_millis(20);
    let mut clients = Vec::new();
    for _ in 0..STEADY_CONNECTIONS {
        let (rx, sends, mut conn) = (rx.clone(), sends.clone(), Conn::new(addr));
        clients.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failures = Vec::new();
            loop {
                let Some((k, due)) = rx.lock().await.recv().await else {
                    break;
                };
                record(
                    conn.send(&sends[k]).await,
                    due,
                    started,
                    &mut lat,
                    &mut failures,
                );
            }
            (lat, failures)
        }));
    }
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    for k in 0..plan.sends.len() {
        let due = started + period * k as u32;
        tokio::time::sleep_until(due.into()).await;
        tx.send((k, due)).context("the clients are gone")?;
    }
    drop(tx);
    gather(started, clients).await
}

fn record(
    answer: anyhow::Result<http1::Answer>,
    from: Instant,
    started: Instant,
    lat: &mut Vec<(f64, f64)>,
    failures: &mut Vec<(u16, String)>,
) {
    let ms = from.elapsed().as_secs_f64() * 1e3;
    let at = from.saturating_duration_since(started).as_secs_f64();
    match answer {
        Ok(a) if a.status == 200 => lat.push((at, ms)),
        Ok(a) => failures.push((a.status, String::from_utf8_lossy(&a.body).into_owned())),
        Err(e) => failures.push((0, format!("{e:#}"))),
    }
}

/// One second of the steady phase (by when the sends were due).
struct Window {
    second: usize,
    sends: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

fn per_second(latencies: &[(f64, f64)], seconds: usize) -> Vec<Window> {
    let mut by: Vec<Vec<f64>> = vec![Vec::new(); seconds.max(1)];
    for (at, ms) in latencies {
        let s = (*at as usize).min(by.len() - 1);
        by[s].push(*ms);
    }
    by.into_iter()
        .enumerate()
        .map(|(second, mut v)| Window {
            second,
            sends: v.len(),
            p50: percentile(&mut v, 0.50),
            p99: percentile(&mut v, 0.99),
            max: percentile(&mut v, 1.0),
        })
        .collect()
}

// ---- what the machine did meanwhile --------------------------------------------------------------

/// One sample of the daemon and the machine.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at: Option<Instant>,
    /// Daemon CPU time (user, system), clock ticks.
    utime: u64,
    stime: u64,
    /// Bytes the daemon caused to be written (`/proc/<pid>/io` `write_bytes`).
    written: u64,
    store_len: u64,
    /// PSI `some` totals, µs.
    io_some: u64,
    cpu_some: u64,
}

struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(pid: Option<u32>, store: PathBuf) -> Sampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => samples.push(sample(pid, &store)),
                    _ = &mut stopped => break,
                }
            }
            samples
        });
        Sampler { stop, task }
    }

    async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

fn sample(pid: Option<u32>, store: &Path) -> Sample {
    let mut s = Sample {
        at: Some(Instant::now()),
        store_len: std::fs::metadata(store).map(|m| m.len()).unwrap_or(0),
        io_some: psi_some("io"),
        cpu_some: psi_some("cpu"),
        ..Sample::default()
    };
    if let Some(pid) = pid {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command (which may hold spaces): state is field 3, utime 14.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
            let f: Vec<&str> = rest.split_whitespace().collect();
            s.utime = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            s.stime = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
        if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
            s.written = io
                .lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    s
}

/// `total=` of the `some` line of `/proc/pressure/<what>` (0 when PSI is unavailable).
fn psi_some(what: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/pressure/{what}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("some"))?
                .split_whitespace()
                .find_map(|f| f.strip_prefix("total="))?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The per-second table on stderr: latencies, issue reads on the forge, and what the samples
/// of that second show (daemon CPU %, store growth, bytes written, I/O and CPU pressure).
fn print_windows(windows: &[Window], samples: &[Sample], started: Instant, forge: &FakeForge) {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let reads = forge.issue_reads_per_second();
    let offset = started
        .saturating_duration_since(forge.started())
        .as_secs_f64();
    note(
        "second  sends   p50 ms   p99 ms   max ms  forge-GETs  cpu%  store+KiB  written-KiB  io-some-ms  cpu-some-ms",
    );
    for w in windows {
        let from = started + Duration::from_secs(w.second as u64);
        let to = from + Duration::from_secs(1);
        let inside: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at.is_some_and(|t| t >= from && t < to))
            .collect();
        let (delta, span) = match (inside.first(), inside.last()) {
            (Some(a), Some(b)) => (
                Sample {
                    at: None,
                    utime: b.utime - a.utime,
                    stime: b.stime - a.stime,
                    written: b.written.saturating_sub(a.written),
                    store_len: b.store_len.saturating_sub(a.store_len),
                    io_some: b.io_some.saturating_sub(a.io_some),
                    cpu_some: b.cpu_some.saturating_sub(a.cpu_some),
                },
                b.at.zip(a.at)
                    .map(|(b, a)| (b - a).as_secs_f64())
                    .unwrap_or(0.0),
            ),
            _ => (Sample::default(), 0.0),
        };
        let cpu = if span > 0.0 {
            (delta.utime + delta.stime) as f64 / hz / span * 100.0
        } else {
            f64::NAN
        };
        let forge_second = (offset + w.second as f64) as usize;
        note(format!(
            "{:>6} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>11} {:>5.0} {:>10} {:>12} {:>11.1} {:>12.1}{}",
            w.second,
            w.sends,
            w.p50,
            w.p99,
            w.max,
            reads.get(forge_second).copied().unwrap_or(0),
            cpu,
            delta.store_len / 1024,
            delta.written / 1024,
            delta.io_some as f64 / 1e3,
            delta.cpu_some as f64 / 1e3,
            if w.p99 > 10.0 { "  <- slow" } else { "" }
        ));
    }
}

// ---- the check ------------------------------------------------------------------------------

/// Pages through `GET /api/v1/tasks` and counts tasks per issue of `acme/widgets`: how many
/// issues `1..=issues` have exactly one, and those that do not (issue, tasks).
async fn tasks_per_issue(addr: &str, issues: u64) -> anyhow::Result<(u64, Vec<(u64, u64)>)> {
    let mut conn = Conn::new(addr);
    let bearer = format!("Bearer {TOKEN}");
    let mut count: HashMap<u64, u64> = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/tasks?limit=500&after={a}"),
            None => "/api/v1/tasks?limit=500".to_string(),
        };
        let raw = http1::request("GET", addr, &path, &[("Authorization", &bearer)], b"");
        let answer = conn.send(&raw).await?;
        ensure!(
            answer.status == 200,
            "GET {path}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        let page: Value = serde_json::from_slice(&answer.body)?;
        for task in page["tasks"].as_array().context("tasks")? {
            let source = task["source"].as_str().unwrap_or_default();
            if let Some(n) = source
                .strip_prefix("acme/widgets#")
                .and_then(|n| n.parse().ok())
            {
                *count.entry(n).or_default() += 1;
            }
        }
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_string()),
            None => break,
        }
    }
    let one = (1..=issues).filter(|n| count.get(n) == Some(&1)).count() as u64;
    let mut bad: Vec<(u64, u64)> = (1..=issues)
        .map(|n| (n, count.get(&n).copied().unwrap_or(0)))
        .filter(|(_, c)| *c != 1)
        .collect();
    bad.extend(
        count
            .iter()
            .filter(|(n, _)| **n > issues)
            .map(|(n, c)| (*n, *c)),
    );
    Ok((one, bad))
}

/// Every client's latencies and failures, once all have ended.
async fn gather(
    started: Instant,
    clients: Vec<tokio::task::JoinHandle<ClientResult>>,
) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome {
        started,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        failures: Vec::new(),
    };
    for c in clients {
        let (lat, failures) = c.await?;
        outcome.latencies.extend(lat);
        outcome.failures.extend(failures);
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// What one client measured: (send time, latency) pairs, and its failures.
type ClientResult = (Vec<(f64, f64)>, Vec<(u16, String)>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_resends_about_thirty_percent_and_numbers_new_issues_in_order() {
        let maker = Maker {
            template: json!({"issue": {}, "repository": {}}),
            event_type: "issue_label".into(),
            clone_url: "http://127.0.0.1:1/acme/widgets.git".into(),
            addr: "127.0.0.1:2".into(),
        };
        let plan = maker.plan(1, 10_000, 1);
        let dups = plan.sends.len() as u64 - plan.issues;
        assert!((2_700..3_300).contains(&dups), "{dups} duplicates");
        let unique: std::collections::HashSet<_> = plan.sends.iter().map(|s| s.as_ptr()).collect();
        assert_eq!(unique.len() as u64, plan.issues);
    }

    #[test]
    fn the_signature_is_the_one_the_daemon_checks() {
        let body = br#"{"action":"label_updated"}"#;
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forgejo-signature", sign(body).parse().unwrap());
        agent_fleet::io::forgejo::webhook::verify(SECRET.as_bytes(), body, &headers).unwrap();
        assert!(
            agent_fleet::io::forgejo::webhook::verify(b"another secret", body, &headers).is_err()
        );
    }
}
