//! The daemon's own latency on localhost: **submit → agent process started** and **agent exit →
//! task completed**, one task at a time, for the demo agent and for the real Claude Code and
//! Codex CLIs talking to the integration tests' fake model server.
//!
//! Everything runs as it does in production: the REAL `agent-fleet serve` binary as a
//! subprocess (built here with `cargo build --release --bin agent-fleet` of the root package, or
//! `BENCH_AGENT_FLEET_BIN`), a fresh store, an origin git repository, one `localhost` host, and
//! the task API over HTTP (the crate's own client, `agent_fleet::client`). One daemon per agent
//! kind, each in its own directory of the scratch directory.
//!
//! Each agent kind's `cli_template` is its usual command line (for `claude` and `codex`, the
//! built-in template with the CLI's absolute path) behind a small wrapper, `stamp`, that appends
//! `start <µs>` to `<stamps>/<task id>` as its first action, runs the command, then appends
//! `exit <µs>` as soon as the command has exited (bash's `$EPOCHREALTIME`: no fork).
//!
//! * submit time: the wall clock just before the `POST /api/v1/tasks`;
//! * start: the wrapper's `start` stamp;
//! * exit: the wrapper's `exit` stamp;
//! * completed: the daemon's own record of the completing transition, the task's `updated_at`
//!   (the writer's timestamp of the batch that commits it, ms resolution). The time the bench
//!   first SAW the task settled (polling `GET /tasks/{id}/events` every [`POLL`]) is printed on
//!   stderr as a cross-check.
//!
//! The fake model (tests/support/model.rs, included with `#[path]`) runs in a child process of
//! this binary (hidden subcommand [`MODEL_SUBCOMMAND`]) so that its request log goes to a file,
//! not to the bench's stderr. It answers every conversation with a shell tool call that commits,
//! then a final text, at once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_fleet::api::views::{NewTask, TaskView};
use agent_fleet::client::Client;
use agent_fleet::config::builtin_agents;
use anyhow::{Context, bail, ensure};

use crate::clis::{self, ClaudeAuth, CodexRetries};
use crate::model::{ModelServer, Script};
use crate::report::{Report, note};
use crate::scratch::Scratch;
use crate::ssh_bench::CpuTimes;

/// Hidden subcommand: the fake model server, in a child process.
pub const MODEL_SUBCOMMAND: &str = "latency-model";

/// The bearer token the daemons get in [`TOKEN_ENV`].
pub(crate) const TOKEN: &str = "bench-latency-admin-token";
pub(crate) const TOKEN_ENV: &str = "BENCH_FLEET_TOKEN";
/// How long the bench sleeps between two reads of a task's status.
const POLL: Duration = Duration::from_millis(2);
/// How long a host health check is taken to last, from its `checked_at` (its start): `echo ok`
/// twice and the agent CLI's `--version`, well under a second here.
const CHECK_SPAN_US: i64 = 1_000_000;
/// Longest wait for one task (an agent run takes a few seconds at most).
const TASK_LIMIT: Duration = Duration::from_secs(180);
/// The shell command the fake model asks the real CLIs to run.
const COMMIT: &str = "echo x >> HELLO.md && git add HELLO.md && git commit -qm 'Add HELLO.md'";
/// The fake model's answer once the command's result came back.
const DONE: &str = "Done: committed HELLO.md.";
/// Appends `start <µs since the epoch>`, runs the command, appends `exit <µs>`.
const STAMP_SCRIPT: &str = r#"#!/bin/bash
# stamp <dir> <task id> <command> [<arg>...]: records when the agent starts and exits.
d=$1 id=$2
shift 2
printf 'start %s\n' "${EPOCHREALTIME/[.,]/}" >> "$d/$id"
"$@"
rc=$?
printf 'exit %s\n' "${EPOCHREALTIME/[.,]/}" >> "$d/$id"
exit "$rc"
"#;
/// Environment variables naming the real CLIs (what `scripts/test` exports).
const CLAUDE_VAR: &str = "AGENT_FLEET_CLAUDE";
const CODEX_VAR: &str = "AGENT_FLEET_CODEX";
/// A prebuilt daemon binary to use instead of building one.
const BIN_VAR: &str = "BENCH_AGENT_FLEET_BIN";
/// `RUST_LOG` of the daemons (default `info`).
const DAEMON_LOG_VAR: &str = "BENCH_DAEMON_LOG";
/// A directory to copy each daemon's log (and the fake model's request log) into.
const KEEP_LOGS_VAR: &str = "BENCH_LATENCY_LOGS";

/// Sizes of one `latency` run.
#[derive(Debug, Clone, Copy)]
pub struct LatencyPlan {
    /// Unmeasured tasks first (the first one clones the repository's mirror).
    pub warmup: usize,
    /// Measured tasks per agent kind.
    pub tasks: usize,
}

impl LatencyPlan {
    pub const FULL: LatencyPlan = LatencyPlan {
        warmup: 2,
        tasks: 50,
    };
    pub const QUICK: LatencyPlan = LatencyPlan {
        warmup: 1,
        tasks: 10,
    };
}

/// Options of the `latency` benchmark.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    pub plan: LatencyPlan,
    /// Measures only this agent kind (`demo`, `claude` or `codex`).
    pub only: Option<Kind>,
}

impl LatencyOptions {
    pub fn parse(args: &[String], usage: &str) -> anyhow::Result<LatencyOptions> {
        let mut options = LatencyOptions {
            plan: LatencyPlan::FULL,
            only: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.plan = LatencyPlan::QUICK,
                "--only" => {
                    let name = args.next().map(String::as_str).unwrap_or_default();
                    let Some(kind) = Kind::ALL.into_iter().find(|k| k.name() == name) else {
                        bail!("unknown agent {name:?}; {usage}");
                    };
                    options.only = Some(kind);
                }
                _ => bail!("unexpected argument {arg:?}; {usage}"),
            }
        }
        Ok(options)
    }
}

/// The agent kinds measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Demo,
    Claude,
    Codex,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Demo, Kind::Claude, Kind::Codex];

    /// The agent kind's name in the config (the built-in kind it replaces).
    fn name(self) -> &'static str {
        match self {
            Kind::Demo => "demo",
            Kind::Claude => "claude",
            Kind::Codex => "codex",
        }
    }

    /// Suffix of its metrics: none for the demo agent.
    fn suffix(self) -> &'static str {
        match self {
            Kind::Demo => "",
            Kind::Claude => "_claude",
            Kind::Codex => "_codex",
        }
    }
}

/// Builds (or finds) the daemon, starts the fake model if a real CLI is there, and measures
/// each agent kind with a daemon of its own.
pub fn run(options: LatencyOptions, report: &mut Report) -> anyhow::Result<()> {
    let plan = options.plan;
    let root = repo_root();
    let scratch = Scratch::new()?;
    let dir = scratch.path();
    note(format!("scratch directory {} ({plan:?})", dir.display()));
    let bin = daemon_binary(&root)?;
    note(format!("daemon binary {}", bin.display()));
    let stamp = dir.join("stamp");
    write_executable(&stamp, STAMP_SCRIPT)?;
    note(format!(
        "load average before the run: {} (other work on the machine shows in the figures)",
        load_average()
    ));

    let wanted: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| options.only.is_none_or(|o| o == *k))
        .collect();
    let mut agents = Vec::new();
    for kind in wanted {
        match agent_program(&root, kind) {
            Ok(program) => agents.push((kind, program)),
            Err(why) => note(format!("{}: skipped: {why}", kind.name())),
        }
    }
    let model = if agents.iter().any(|(k, _)| *k != Kind::Demo) {
        Some(ModelChild::start(dir)?)
    } else {
        None
    };

    let runtime = crate::runtime()?;
    let mut failures = Vec::new();
    for (kind, program) in &agents {
        let setup = AgentSetup {
            kind: *kind,
            program: program.clone(),
            stamp: stamp.clone(),
            model_url: model.as_ref().map(|m| m.url.clone()),
        };
        let agent_dir = dir.join(kind.name());
        let measured = runtime.block_on(measure_agent(&bin, &agent_dir, &setup, plan));
        keep_logs(&agent_dir, *kind, model.as_ref());
        match measured {
            Ok(samples) => samples.report(*kind, report),
            Err(e) => {
                note(format!("{}: measurement failed: {e:#}", kind.name()));
                for metric in METRICS {
                    report.metric(&format!("{metric}{}", kind.suffix()), f64::NAN);
                }
                failures.push(kind.name());
            }
        }
    }
    if let Some(model) = &model {
        note(format!(
            "fake model: {} model requests in all (2 per task expected)",
            model.requests()
        ));
    }
    drop(model);
    ensure!(
        failures.is_empty(),
        "the measurement failed for {}",
        failures.join(", ")
    );
    Ok(())
}

const METRICS: [&str; 4] = [
    "submit_to_start_p50_ms",
    "submit_to_start_p99_ms",
    "exit_to_completed_p50_ms",
    "exit_to_completed_p99_ms",
];

/// The checkout this bench belongs to (the root package).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// `$BENCH_AGENT_FLEET_BIN`, or the root package's release binary, built now (a no-op when it
/// is up to date). Cargo says where the executable is, whatever `CARGO_TARGET_DIR` is.
pub(crate) fn daemon_binary(root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(BIN_VAR) {
        let bin = PathBuf::from(bin);
        ensure!(bin.is_file(), "{BIN_VAR}={} does not exist", bin.display());
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    note(format!(
        "building the daemon: cargo build --release --bin agent-fleet (in {})",
        root.display()
    ));
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "agent-fleet",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo to build the daemon")?;
    ensure!(
        out.status.success(),
        "cargo build --release --bin agent-fleet failed ({})",
        out.status
    );
    let executable = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "agent-fleet")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from));
    executable.context("cargo built no agent-fleet executable")
}

/// The program an agent kind runs: the demo agent of this checkout, or the real CLI from
/// `$AGENT_FLEET_CLAUDE` / `$AGENT_FLEET_CODEX`, else where `scripts/test` installs it
/// (`<root>/target/agent-clis/node_modules/.bin`). `Err` says why it is not there.
fn agent_program(root: &Path, kind: Kind) -> Result<PathBuf, String> {
    let var = match kind {
        Kind::Demo => {
            let demo = root.join("scripts/demo-agent");
            return if demo.is_file() {
                Ok(demo)
            } else {
                Err(format!("{} does not exist", demo.display()))
            };
        }
        Kind::Claude => CLAUDE_VAR,
        Kind::Codex => CODEX_VAR,
    };
    let how = "run scripts/test once (it installs the CLIs pinned in scripts/agent-clis.txt with \
               npm) or name the binary in";
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{var}={} does not exist", path.display()))
        };
    }
    let path = root
        .join("target/agent-clis/node_modules/.bin")
        .join(kind.name());
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "the real `{}` CLI is not installed ({} does not exist): {how} {var}",
            kind.name(),
            path.display()
        ))
    }
}

fn write_executable(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

/// Copies the logs of one agent's daemon (and the fake model's) to `$BENCH_LATENCY_LOGS`.
fn keep_logs(agent_dir: &Path, kind: Kind, model: Option<&ModelChild>) {
    let Some(to) = std::env::var_os(KEEP_LOGS_VAR).map(PathBuf::from) else {
        return;
    };
    let mut copies = vec![(
        agent_dir.join("daemon.log"),
        format!("{}.daemon.log", kind.name()),
    )];
    if let Some(m) = model {
        copies.push((m.log.clone(), "model.log".to_string()));
    }
    let _ = std::fs::create_dir_all(&to);
    for (from, name) in copies {
        if let Err(e) = std::fs::copy(&from, to.join(&name)) {
            note(format!("cannot keep {}: {e}", from.display()));
        }
    }
}

// ---- one agent kind --------------------------------------------------------------------------

struct AgentSetup {
    kind: Kind,
    /// The demo agent script or the real CLI.
    program: PathBuf,
    /// The wrapper that records start and exit.
    stamp: PathBuf,
    /// `http://127.0.0.1:<port>` of the fake model.
    model_url: Option<String>,
}

/// Sets up the directory (origin repository, config), starts the daemon, runs the warm-up
/// tasks and the measured ones, one at a time, and stops the daemon.
async fn measure_agent(
    bin: &Path,
    dir: &Path,
    setup: &AgentSetup,
    plan: LatencyPlan,
) -> anyhow::Result<Samples> {
    let name = setup.kind.name();
    std::fs::create_dir_all(dir)?;
    let origin = dir.join("origin");
    init_origin(&origin)?;
    let stamps = dir.join("stamps");
    std::fs::create_dir_all(&stamps)?;
    let config = dir.join("fleet.toml");
    let templates = agent_templates(setup, &stamps);
    std::fs::write(&config, config_text(dir, &origin, setup, &templates)?)?;
    note(format!("{name}: cli_template = {}", templates.cli));

    let daemon = Daemon::start(bin, dir, &config)?;
    note(format!("{name}: daemon listening on {}", daemon.url));
    let client = Client::new(&daemon.url, Some(TOKEN))?;
    wait_usable(&client, name)
        .await
        .with_context(|| format!("daemon log tail:\n{}", daemon.log_tail(30)))?;
    let mut samples = Samples::default();
    let total = plan.warmup + plan.tasks;
    let began = Instant::now();
    let cpu = CpuTimes::now();
    for i in 0..total {
        let warm = i < plan.warmup;
        let task = one_task(&client, setup.kind, i, &stamps)
            .await
            .with_context(|| {
                format!(
                    "{name}: task {} of {total}; daemon log tail:\n{}",
                    i + 1,
                    daemon.log_tail(30)
                )
            })?;
        record_checks(&client, &mut samples.checks).await;
        if warm {
            note(format!(
                "{name}: warm-up task {}: submit → start {:.1} ms, exit → completed {:.1} ms, \
                 agent ran {:.0} ms",
                task.id, task.submit_to_start, task.exit_to_completed, task.agent_ms
            ));
        } else {
            samples.tasks.push(task);
        }
    }
    note(format!(
        "{name}: {} tasks in {:.1} s; CPUs busy {}; load average {}",
        total,
        began.elapsed().as_secs_f64(),
        CpuTimes::busy_since(cpu),
        load_average()
    ));
    daemon.stop();
    Ok(samples)
}

/// Waits until the first health check found the host online and the agent kind usable there
/// (`GET /api/v1/hosts`); fails with what the check found after 60 s.
async fn wait_usable(client: &Client, kind: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hosts = client.hosts().await.context("GET /api/v1/hosts")?;
        let usable = hosts.hosts.iter().any(|h| {
            h.health == "online"
                && h.agents
                    .iter()
                    .any(|a| a.kind == kind && a.found == Some(true) && a.problems.is_empty())
        });
        if usable {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "agent kind `{kind}` is not usable on the host: {}",
                serde_json::to_string_pretty(&hosts).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Adds the start of the host's last health check (`checked_at` in `GET /api/v1/hosts`) to
/// `checks`: the daemon checks every host every `health.check_interval` (30 s by default),
/// running processes that compete with the task for the CPUs.
async fn record_checks(client: &Client, checks: &mut std::collections::BTreeSet<i64>) {
    let Ok(hosts) = client.hosts().await else {
        return;
    };
    for host in hosts.hosts {
        if let Some(t) = host.checked_at.as_deref().and_then(|t| rfc3339_us(t).ok()) {
            checks.insert(t);
        }
    }
}

/// `git init` with one commit on `main`.
fn init_origin(origin: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(origin)?;
    std::fs::write(origin.join("README.md"), "# widgets\n")?;
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "README.md"],
        &["commit", "-q", "-m", "initial"],
    ] {
        let ok = Command::new("git")
            .args([
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@localhost",
                "-C",
            ])
            .arg(origin)
            .args(args)
            .status()
            .context("cannot run git")?
            .success();
        ensure!(ok, "git {args:?} failed in {}", origin.display());
    }
    Ok(())
}

/// An agent kind's command lines behind the `stamp` wrapper.
struct Templates {
    cli: String,
    /// Never used (no retries, no review rounds) but set: an inherited one would name the bare
    /// CLI, which the health check would find missing from `PATH`.
    resume: String,
    output_format: &'static str,
}

/// The agent kind's command lines behind the `stamp` wrapper, and its output format. For
/// `claude` and `codex`: the built-in templates, the CLI named by its absolute path.
fn agent_templates(setup: &AgentSetup, stamps: &Path) -> Templates {
    let wrapper = format!(
        "{} {} {{task_id}}",
        sh_quote(&setup.stamp.display().to_string()),
        sh_quote(&stamps.display().to_string())
    );
    let program = sh_quote(&setup.program.display().to_string());
    if setup.kind == Kind::Demo {
        // As tests/support/daemon.rs configures it.
        let cli = format!("{wrapper} {program} --prompt-file {{prompt_file}}");
        return Templates {
            resume: format!("{cli} --resume {{session_id}}"),
            cli,
            output_format: "claude-json",
        };
    }
    let builtin = builtin_agents()
        .iter()
        .find(|a| a.name == setup.kind.name())
        .expect("claude and codex are built-in kinds");
    let wrap = |template: &str| {
        let rest = template
            .strip_prefix(setup.kind.name())
            .expect("a built-in template starts with its CLI's name");
        format!("{wrapper} {program}{rest}")
    };
    Templates {
        cli: wrap(&builtin.cli_template),
        resume: wrap(
            builtin
                .resume_template
                .as_deref()
                .expect("claude and codex resume sessions"),
        ),
        output_format: builtin.output_format.as_str(),
    }
}

/// The daemon's config: the API on a free port, one localhost host with this agent kind.
fn config_text(
    dir: &Path,
    origin: &Path,
    setup: &AgentSetup,
    templates: &Templates,
) -> anyhow::Result<String> {
    let mut env: Vec<(String, String)> = [
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    ]
    .iter()
    .map(|k| {
        let v = if k.ends_with("EMAIL") {
            "bench@localhost"
        } else {
            "Latency Bench"
        };
        (k.to_string(), v.to_string())
    })
    .collect();
    let mut version_command = None;
    match setup.kind {
        Kind::Demo => {}
        Kind::Claude | Kind::Codex => {
            let url = setup
                .model_url
                .as_deref()
                .context("the fake model is not running")?;
            let home = dir.join("home");
            std::fs::create_dir_all(&home)?;
            if setup.kind == Kind::Claude {
                env.extend(clis::claude_env(url, &home, ClaudeAuth::ApiKey, Some(0)));
            } else {
                // Outside /tmp (Codex refuses to put its helpers under a temporary dir).
                let codex_home = dir.join("codex-home");
                env.extend(clis::write_codex_home(
                    &codex_home,
                    &home,
                    &format!("{url}/v1"),
                    CodexRetries::NONE,
                ));
            }
            version_command = Some(format!(
                "{} --version",
                sh_quote(&setup.program.display().to_string())
            ));
        }
    }
    let env = env
        .iter()
        .map(|(k, v)| format!("{k} = {}", toml_str(v)))
        .collect::<Vec<_>>()
        .join(", ");
    let version = version_command
        .map(|v| format!("version_command = {}\n", toml_str(&v)))
        .unwrap_or_default();
    Ok(format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_token_env = "{TOKEN_ENV}"

[storage]
path = {store}

[dispatch]
max_retries = 0
default_repo = {origin}

[[agents]]
name = "{name}"
cli_template = {template}
resume_template = {resume}
output_format = "{format}"
timeout = "120s"
{version}env = {{ {env} }}

[[hosts]]
host_id = "local"
hostname = "localhost"
agents = ["{name}"]
max_concurrent = 2
work_root = {work}
"#,
        store = toml_str(&dir.join("data/fleet.redb").display().to_string()),
        origin = toml_str(&origin.display().to_string()),
        name = setup.kind.name(),
        template = toml_str(&templates.cli),
        resume = toml_str(&templates.resume),
        format = templates.output_format,
        work = toml_str(&dir.join("work").display().to_string()),
    ))
}

/// A TOML basic string (JSON's escapes are TOML's).
/// The `[[agents]]` and `[[hosts]]` of a daemon whose tasks all wait for a host: one local host
/// offering an agent kind whose CLI does not exist (so no run ever starts), work root `work`.
pub(crate) fn waiting_host_toml(work: &std::path::Path) -> String {
    format!(
        r#"[[agents]]
name = "bench"
cli_template = "agent-fleet-bench-no-such-cli {{prompt}}"
output_format = "raw"

[[hosts]]
host_id = "local"
hostname = "localhost"
agents = ["bench"]
max_concurrent = 2
work_root = {work}
"#,
        work = toml_str(&work.display().to_string()),
    )
}

pub(crate) fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `s` as one shell word.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---- one task --------------------------------------------------------------------------------

/// What one task measured, in milliseconds.
#[derive(Debug, Clone)]
struct TaskSample {
    id: String,
    /// µs since the epoch: the bench's submit, the stamps, the daemon's completion.
    submitted_at: i64,
    start: i64,
    exit: i64,
    completed: i64,
    submit_to_start: f64,
    exit_to_completed: f64,
    /// Exit → the bench first read the task settled.
    exit_to_seen: f64,
    /// The agent's own run (start → exit).
    agent_ms: f64,
    /// Status reads until settled.
    polls: u32,
    /// Pressure stall (all processes) from submit to the task seen settled.
    stall: Option<Pressure>,
    /// The task's timeline: (label, µs since the epoch), in time order.
    timeline: Vec<(String, i64)>,
}

/// Submits one task, waits until it is settled (reading its status every [`POLL`]), checks that
/// it completed, and reads its times.
async fn one_task(
    client: &Client,
    kind: Kind,
    i: usize,
    stamps: &Path,
) -> anyhow::Result<TaskSample> {
    let new = NewTask {
        title: format!("Latency task {}", i + 1),
        body: "Add a line to HELLO.md and commit it.".to_string(),
        agent: Some(kind.name().to_string()),
        ..NewTask::default()
    };
    let pressure_before = Pressure::now();
    let submitted_at = now_us();
    let submitted = client.submit(&new).await.context("POST /api/v1/tasks")?;
    let id = submitted.task.id.clone();
    let began = Instant::now();
    let mut polls = 0;
    let mut after = None;
    let seen_at = loop {
        let page = client
            .events(&id, after)
            .await
            .with_context(|| format!("GET /api/v1/tasks/{id}/events"))?;
        polls += 1;
        if page.settled {
            break now_us();
        }
        if let Some(last) = page.events.last() {
            after = Some(last.seq);
        }
        if began.elapsed() > TASK_LIMIT {
            bail!(
                "task {id} not settled after {TASK_LIMIT:?} (status {})",
                page.status
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let task = client
        .show(&id)
        .await
        .with_context(|| format!("GET /api/v1/tasks/{id}"))?;
    if task.status != "completed" {
        bail!("task {id} ended {}:\n{}", task.status, story(&task));
    }
    let stamp_file = stamps.join(&id);
    let text = std::fs::read_to_string(&stamp_file)
        .with_context(|| format!("no stamps in {}", stamp_file.display()))?;
    let stamp = |what: &str| -> anyhow::Result<i64> {
        let mut found = text.lines().filter_map(|l| l.strip_prefix(what));
        let value = found
            .next()
            .with_context(|| format!("no `{what}` line in {}", stamp_file.display()))?;
        ensure!(
            found.next().is_none(),
            "the agent of task {id} ran more than once:\n{text}"
        );
        value
            .trim()
            .parse()
            .with_context(|| format!("bad stamp {value:?}"))
    };
    let (start, exit) = (stamp("start ")?, stamp("exit ")?);
    let completed = rfc3339_us(&task.updated_at)?;
    let mut timeline = vec![
        ("submit (bench)".to_string(), submitted_at),
        ("created_at".to_string(), rfc3339_us(&task.created_at)?),
    ];
    for e in task.events.iter().flatten().filter(|e| e.kind == "step") {
        timeline.push((step_label(&e.text), rfc3339_us(&e.at)?));
    }
    timeline.push(("agent start".to_string(), start));
    timeline.push(("agent exit".to_string(), exit));
    timeline.push(("seen settled (bench)".to_string(), seen_at));
    // The daemon's times have ms resolution: sorted by the millisecond, and within one by the
    // order above (the bench's points and the stamps are µs).
    timeline.sort_by_key(|(_, t)| t.div_euclid(1000));
    Ok(TaskSample {
        id,
        submit_to_start: ms_between(submitted_at, start),
        exit_to_completed: ms_between(exit, completed),
        exit_to_seen: ms_between(exit, seen_at),
        agent_ms: ms_between(start, exit),
        polls,
        stall: Pressure::now()
            .zip(pressure_before)
            .map(|(after, before)| after.since(before)),
        timeline,
        submitted_at,
        start,
        exit,
        completed,
    })
}

/// `#4 next: run 7-1 exited with code 0` → `step #4 (run 7-1 exited with…)`: the step number
/// is the same for every task that takes the same path.
fn step_label(text: &str) -> String {
    let (head, note) = text.split_once(": ").unwrap_or((text, ""));
    let number = head.split_whitespace().next().unwrap_or(head);
    let words: Vec<&str> = note
        .split_whitespace()
        .filter(|w| !w.contains(|c: char| c.is_ascii_digit() || c == '/'))
        .take(4)
        .collect();
    format!("step {number} end ({}…)", words.join(" "))
}

/// The task without its title and body: status, failure, runs and events.
fn story(task: &TaskView) -> String {
    let mut text = format!(
        "status {}, failure {:?}\n",
        task.status,
        task.failure.as_deref().unwrap_or("-")
    );
    for r in &task.runs {
        text.push_str(&format!(
            "run {} exit {:?} {}: {}\n  notes {:?}\n",
            r.run_id,
            r.exit_code,
            r.outcome,
            r.summary.as_deref().unwrap_or("-"),
            r.notes
        ));
        for file in ["stdout", "stderr"] {
            let path = Path::new(&r.run_dir).join(file);
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: String = content
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            text.push_str(&format!("  {file}: {tail}\n"));
        }
    }
    for e in task.events.iter().flatten() {
        text.push_str(&format!("  {} {} {}\n", e.at, e.kind, e.text));
    }
    text
}

/// Time some task was stalled on the CPU and on I/O (`some … total=` of `/proc/pressure/cpu`
/// and `/proc/pressure/io`, µs), all processes of the machine together.
#[derive(Debug, Clone, Copy)]
struct Pressure {
    cpu_us: u64,
    io_us: u64,
}

impl Pressure {
    fn now() -> Option<Pressure> {
        let some_total = |file: &str| -> Option<u64> {
            let text = std::fs::read_to_string(file).ok()?;
            let line = text.lines().find(|l| l.starts_with("some "))?;
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("total="))?
                .parse()
                .ok()
        };
        Some(Pressure {
            cpu_us: some_total("/proc/pressure/cpu")?,
            io_us: some_total("/proc/pressure/io")?,
        })
    }

    fn since(self, before: Pressure) -> Pressure {
        Pressure {
            cpu_us: self.cpu_us.saturating_sub(before.cpu_us),
            io_us: self.io_us.saturating_sub(before.io_us),
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn rfc3339_us(text: &str) -> anyhow::Result<i64> {
    let t = humantime::parse_rfc3339(text).with_context(|| format!("bad time {text:?}"))?;
    Ok(t.duration_since(UNIX_EPOCH)?.as_micros() as i64)
}

fn ms_between(from_us: i64, to_us: i64) -> f64 {
    (to_us - from_us) as f64 / 1000.0
}

// ---- figures ---------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Samples {
    tasks: Vec<TaskSample>,
    /// Starts of the host's health checks seen during the run (µs since the epoch).
    checks: std::collections::BTreeSet<i64>,
}

impl Samples {
    fn report(&self, kind: Kind, report: &mut Report) {
        let name = kind.name();
        let suffix = kind.suffix();
        let of = |f: fn(&TaskSample) -> f64| -> Summary {
            Summary::of(self.tasks.iter().map(f).collect())
        };
        let start = of(|t| t.submit_to_start);
        let done = of(|t| t.exit_to_completed);
        let seen = of(|t| t.exit_to_seen);
        let agent = of(|t| t.agent_ms);
        let polls = of(|t| f64::from(t.polls));
        report.metric(&format!("submit_to_start_p50_ms{suffix}"), start.p50);
        report.metric(&format!("submit_to_start_p99_ms{suffix}"), start.p99);
        report.metric(&format!("exit_to_completed_p50_ms{suffix}"), done.p50);
        report.metric(&format!("exit_to_completed_p99_ms{suffix}"), done.p99);
        note(format!(
            "{name}: {} tasks; submit → start: {start}",
            self.tasks.len()
        ));
        note(format!(
            "{name}: exit → completed (daemon's updated_at): {done}"
        ));
        note(format!("{name}: exit → seen settled by the bench: {seen}"));
        note(format!(
            "{name}: the agent itself (start → exit): {agent}; status reads per task: mean {:.0}",
            polls.mean
        ));
        self.slowest(name, "submit → start", |t| t.submit_to_start);
        self.slowest(name, "exit → completed", |t| t.exit_to_completed);
        self.health_checks(name);
        self.breakdown(name);
    }

    /// The three slowest tasks by `figure`, with the CPU and I/O pressure stall (PSI, all
    /// processes) while each task was in flight, from submit to completion.
    fn slowest(&self, name: &str, what: &str, figure: fn(&TaskSample) -> f64) {
        let mut tasks: Vec<&TaskSample> = self.tasks.iter().collect();
        tasks.sort_by(|a, b| figure(b).total_cmp(&figure(a)));
        let worst: Vec<String> = tasks
            .iter()
            .take(3)
            .map(|t| {
                let stall = match t.stall {
                    Some(p) => format!(
                        "some CPU stall {:.0} ms, I/O stall {:.0} ms",
                        p.cpu_us as f64 / 1000.0,
                        p.io_us as f64 / 1000.0
                    ),
                    None => "no PSI".to_string(),
                };
                format!(
                    "task {} {:.1} ms ({stall} over its {:.0} ms)",
                    t.id,
                    figure(t),
                    ms_between(t.submitted_at, t.completed)
                )
            })
            .collect();
        let typical = Summary::of(
            self.tasks
                .iter()
                .filter_map(|t| t.stall)
                .map(|p| p.io_us as f64 / 1000.0)
                .collect(),
        );
        note(format!(
            "{name}: slowest {what}: {}; I/O stall per task: p50 {:.0} ms",
            worst.join("; "),
            typical.p50
        ));
    }

    /// The figures again without the tasks during which a health check ran.
    fn health_checks(&self, name: &str) {
        let overlaps = |from: i64, to: i64| {
            self.checks
                .range(from.saturating_sub(CHECK_SPAN_US)..=to)
                .next()
                .is_some()
        };
        let (mut starts, mut dones, mut hit_start, mut hit_done) = (vec![], vec![], 0, 0);
        for t in &self.tasks {
            if overlaps(t.submitted_at, t.start) {
                hit_start += 1;
            } else {
                starts.push(t.submit_to_start);
            }
            if overlaps(t.exit, t.completed) {
                hit_done += 1;
            } else {
                dones.push(t.exit_to_completed);
            }
        }
        note(format!(
            "{name}: {} health checks began during the run; a check (taken to last {} s from its \
             start) overlapped submit → start of {hit_start} task(s), exit → completed of \
             {hit_done}",
            self.checks.len(),
            CHECK_SPAN_US / 1_000_000
        ));
        note(format!(
            "{name}: without those: submit → start {}; exit → completed {}",
            Summary::of(starts),
            Summary::of(dones)
        ));
    }

    /// Mean, p50 and max of each interval between consecutive points of the tasks' timelines,
    /// in the order of the first task's timeline.
    fn breakdown(&self, name: &str) {
        let mut order: Vec<String> = Vec::new();
        let mut intervals: std::collections::HashMap<String, Vec<f64>> = Default::default();
        for task in &self.tasks {
            for pair in task.timeline.windows(2) {
                let key = format!("{} → {}", pair[0].0, pair[1].0);
                if !intervals.contains_key(&key) {
                    order.push(key.clone());
                }
                intervals
                    .entry(key)
                    .or_default()
                    .push(ms_between(pair[0].1, pair[1].1));
            }
        }
        note(format!(
            "{name}: where the time goes (each interval between consecutive points of a task's \
             timeline; n = tasks where the pair is consecutive):"
        ));
        for key in order {
            let values = intervals.remove(&key).unwrap_or_default();
            let n = values.len();
            let s = Summary::of(values);
            note(format!(
                "  {key}: n {n}, mean {:.1} ms, p50 {:.1}, max {:.1}",
                s.mean, s.p50, s.max
            ));
        }
    }
}

/// Mean and nearest-rank percentiles (the `ssh` bench's definition), in milliseconds. With 50
/// samples, p99 is the maximum.
#[derive(Debug, Clone, Copy)]
struct Summary {
    mean: f64,
    min: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn of(mut samples: Vec<f64>) -> Summary {
        if samples.is_empty() {
            return Summary {
                mean: f64::NAN,
                min: f64::NAN,
                p50: f64::NAN,
                p99: f64::NAN,
                max: f64::NAN,
            };
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let rank = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Summary {
            mean: samples.iter().sum::<f64>() / n as f64,
            min: samples[0],
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples[n - 1],
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mean {:.1} ms, min {:.1}, p50 {:.1}, p99 {:.1}, max {:.1}",
            self.mean, self.min, self.p50, self.p99, self.max
        )
    }
}

// ---- the daemon ------------------------------------------------------------------------------

/// A running `agent-fleet serve`, in a process group of its own (so a wrapper given as
/// `BENCH_AGENT_FLEET_BIN`, e.g. `strace`, is stopped with it); its stderr goes to
/// `<dir>/daemon.log`. Killed when dropped. (Agent runs are in sessions of their own.)
pub(crate) struct Daemon {
    child: Option<Child>,
    pub(crate) url: String,
    pub(crate) log: PathBuf,
}

impl Daemon {
    /// Starts the daemon in `dir` and waits until `/readyz` answers 200.
    fn start(bin: &Path, dir: &Path, config: &Path) -> anyhow::Result<Daemon> {
        Daemon::start_with(bin, dir, config, &[])
    }

    /// [`Daemon::start`] with more environment variables (e.g. the forge's token and secret).
    pub(crate) fn start_with(
        bin: &Path,
        dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Daemon> {
        let log = dir.join("daemon.log");
        let mut file = std::fs::File::create(&log)?;
        let rust_log = std::env::var(DAEMON_LOG_VAR).unwrap_or_else(|_| "info".into());
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(bin)
            .process_group(0)
            .args(["serve", "--config"])
            .arg(config)
            .current_dir(dir)
            .env(TOKEN_ENV, TOKEN)
            .envs(env.iter().copied())
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pipe = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("agent-fleet listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                let _ = writeln!(file, "{line}");
            }
        });
        let mut daemon = Daemon {
            child: Some(child),
            url: String::new(),
            log,
        };
        daemon.url = rx
            .recv_timeout(Duration::from_secs(30))
            .with_context(|| format!("the daemon did not listen; log:\n{}", daemon.log_tail(30)))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(&daemon.url) {
            ensure!(
                Instant::now() < deadline,
                "the daemon is not ready after 30 s; log:\n{}",
                daemon.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    /// The process id of the daemon (or of the wrapper named by `BENCH_AGENT_FLEET_BIN`).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `n` lines of its log.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM (a clean shutdown), SIGKILL after 10 s.
    pub(crate) fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal_group(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        note("the daemon did not stop within 10 s of SIGTERM: killed");
        signal_group(&child, libc::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Sends `signal` to the process group the daemon leads.
fn signal_group(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on the process group of our own child; no memory is involved.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), signal);
    }
}

/// `GET /readyz` answers 200 (a plain HTTP/1.0 request: no client needed for one probe).
fn ready(url: &str) -> bool {
    let Some(addr) = url.strip_prefix("http://") else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

// ---- the fake model, in a child process ------------------------------------------------------

/// The fake model server running in a child process of this binary; its request log (one
/// line per request, printed by model.rs) goes to `<scratch>/model.log`.
struct ModelChild {
    child: Child,
    url: String,
    log: PathBuf,
}

impl ModelChild {
    fn start(dir: &Path) -> anyhow::Result<ModelChild> {
        let log = dir.join("model.log");
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut child = Command::new(exe)
            .arg(MODEL_SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start the fake model")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line)?;
        let Some(port) = line.trim().strip_prefix("port ") else {
            let _ = child.kill();
            bail!("the fake model did not start: {line:?}");
        };
        let url = format!("http://127.0.0.1:{port}");
        note(format!("fake model server at {url}"));
        Ok(ModelChild { child, url, log })
    }

    /// Model requests logged so far.
    fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("fake model: #") && l.contains(" POST /v1/"))
            .count()
    }
}

impl Drop for ModelChild {
    fn drop(&mut self) {
        // Closing its stdin ends it; kill in case it does not.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: serves until its stdin closes.
pub fn model_main() -> anyhow::Result<()> {
    let server = ModelServer::start(Script::shell_then_text(COMMIT, DONE));
    println!("port {}", server.port());
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_summary() {
        let s = Summary::of((1..=100).rev().map(f64::from).collect());
        assert_eq!((s.min, s.p50, s.p99, s.max), (1.0, 50.0, 99.0, 100.0));
        let s = Summary::of((1..=50).map(f64::from).collect());
        assert_eq!((s.p50, s.p99), (25.0, 50.0));
    }

    #[test]
    fn step_labels_drop_what_differs_between_tasks() {
        assert_eq!(
            step_label("#4 next: run 7-1 exited with code 0"),
            "step #4 end (run exited with code…)"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/a/b-c.d"), "/a/b-c.d");
        assert_eq!(sh_quote("a b'c"), r"'a b'\''c'");
        assert_eq!(toml_str(r#"x "y" \z"#), r#""x \"y\" \\z""#);
    }
}
