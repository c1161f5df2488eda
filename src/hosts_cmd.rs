//! `agent-fleet hosts check` (SPEC §10): the set-up check of every configured host, run from
//! this machine so that it works before the daemon does. It builds the daemon's
//! [`Runtime`] (one shell per host), runs [`Runtime::check_hosts`] (reachability and latency,
//! each listed agent kind's CLI and version) and, at the same time, asks the daemon for the
//! hosts' load (`GET /api/v1/hosts`, 2 s at most: a daemon that does not answer only leaves the
//! LOAD column without running tasks). Exit code 0 when every host is ready, 1 otherwise, 2 on
//! an invalid config.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent_fleet::api::views::{HostAgentView, HostList, HostView, rfc3339};
use agent_fleet::client::Client;
use agent_fleet::client::render::{self, LIST_WIDTH, Table};
use agent_fleet::config::{Config, HostConfig};
use agent_fleet::steps::hosts::{HostCheck, TemplateProblems};
use agent_fleet::steps::runtime::Runtime;
use serde::Serialize;

use crate::cli::{HostsCheckArgs, HostsCommand};
use crate::task_cmd::{self, TaskError, emit, emit_json};

/// How long the daemon has to answer `GET /api/v1/hosts`.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs one `hosts` command.
pub async fn run(command: HostsCommand) -> ExitCode {
    match command {
        HostsCommand::Check(args) => check(args).await,
    }
}

/// What the check says about a host as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    /// Reachable, and every agent CLI it lists was found.
    Ok,
    /// No shell on it (network, authentication, host key…).
    Unreachable,
    /// Reachable, but the agent check itself failed.
    CheckFailed,
    /// Reachable, but at least one agent CLI it lists is not there.
    MissingCli,
    /// Every CLI is there, but one refuses a flag its kind's templates pass.
    BadTemplate,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unreachable => "unreachable",
            Status::CheckFailed => "check failed",
            Status::MissingCli => "missing CLI",
            Status::BadTemplate => "bad template",
        }
    }
}

/// One host's line of the report (and its object in `--json`).
#[derive(Debug, Clone, Serialize)]
struct HostStatus {
    host_id: String,
    hostname: String,
    /// `None` for a local host.
    port: Option<u16>,
    user: Option<String>,
    local: bool,
    proxy_jump: Option<String>,
    /// `user@host:port [via jump]`, or `local`.
    address: String,
    status: Status,
    reachable: bool,
    latency_ms: Option<u64>,
    /// Why the host is unreachable or its check failed.
    error: Option<String>,
    /// Every agent kind the host lists, in its order (`found` is `None` when it could not be
    /// checked).
    agents: Vec<HostAgentView>,
    /// The kinds whose CLI was not found.
    missing: Vec<String>,
    /// Tasks running on it, as the daemon says; `None` when the daemon did not answer.
    running: Option<usize>,
    max_concurrent: usize,
    checked_at: String,
}

async fn check(args: HostsCheckArgs) -> ExitCode {
    let path = &args.config.config;
    let config = match Config::load(path) {
        Ok(config) => Arc::new(config),
        Err(errors) => {
            crate::print_config_errors(path, &errors);
            return ExitCode::from(2);
        }
    };
    let base_dir = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(e) => return fail(format!("cannot read the working directory: {e}")),
    };
    // Relative paths (keys, known_hosts, local work roots) start where the daemon would start.
    let rt = match Runtime::new(config.clone(), base_dir) {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot check the hosts: {e}")),
    };
    let (checks, daemon) = tokio::join!(rt.check_hosts(), daemon_hosts(&args, &config, path));
    let statuses = statuses(&config, &checks, daemon.as_ref().ok());
    let ready = statuses.iter().all(|s| s.status == Status::Ok);
    let note = daemon
        .err()
        .map(|why| format!("note: no load from the daemon (LOAD shows -/max_concurrent): {why}"));
    task_cmd::exit_code(print(&statuses, note.as_deref(), args.json).map(|()| {
        if ready {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }))
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// The daemon's view of the hosts, or why there is none (one line).
async fn daemon_hosts(
    args: &HostsCheckArgs,
    config: &Config,
    path: &Path,
) -> Result<HostList, String> {
    let target = task_cmd::target(
        args.server.as_deref(),
        args.token.as_deref(),
        Some((path, config)),
        |name| std::env::var(name).ok(),
    )
    .map_err(|e| e.to_string())?;
    let client = Client::new(&target.server, target.token.as_deref()).map_err(|e| e.to_string())?;
    match tokio::time::timeout(DAEMON_TIMEOUT, client.hosts()).await {
        Ok(Ok(list)) => Ok(list),
        Ok(Err(e)) => Err(task_cmd::explain(&client, &target.token_env, e).to_string()),
        Err(_) => Err(format!(
            "the daemon at {} did not answer within {}s",
            client.server(),
            DAEMON_TIMEOUT.as_secs()
        )),
    }
}

/// The report of every configured host, in configuration order.
fn statuses(
    config: &Config,
    checks: &[(HostCheck, TemplateProblems)],
    daemon: Option<&HostList>,
) -> Vec<HostStatus> {
    config
        .hosts
        .iter()
        .filter_map(|host| {
            let (check, problems) = checks.iter().find(|(c, _)| c.host_id == host.host_id)?;
            let load = daemon.and_then(|d| d.hosts.iter().find(|h| h.host_id == host.host_id));
            let mut status = status(host, check, load.map(|h| (h.running, h.max_concurrent)));
            annotate(&mut status, config, problems, load);
            Some(status)
        })
        .collect()
}

/// One host's report: its check and, when the daemon answered, its `(running, max)`.
fn status(host: &HostConfig, check: &HostCheck, load: Option<(usize, usize)>) -> HostStatus {
    // Found or not is known only when the agent check ran to its end.
    let checked = check.reachable && check.error.is_none();
    let agents: Vec<HostAgentView> = host
        .agents
        .iter()
        .map(|kind| {
            let probe = check.agents.iter().find(|a| &a.kind == kind);
            let found = probe.filter(|_| checked).map(|a| a.path.is_some());
            HostAgentView::new(kind, probe, found, None, None)
        })
        .collect();
    let missing: Vec<String> = agents
        .iter()
        .filter(|a| a.found == Some(false))
        .map(|a| a.kind.clone())
        .collect();
    let status = if !check.reachable {
        Status::Unreachable
    } else if check.error.is_some() {
        Status::CheckFailed
    } else if !missing.is_empty() {
        Status::MissingCli
    } else {
        Status::Ok
    };
    let local = host.is_local();
    HostStatus {
        host_id: host.host_id.clone(),
        hostname: host.hostname.clone(),
        port: (!local).then_some(host.port),
        user: host.user.clone(),
        local,
        proxy_jump: host.proxy_jump.clone(),
        address: address(host),
        status,
        reachable: check.reachable,
        latency_ms: check.latency_ms,
        error: check.error.clone(),
        agents,
        missing,
        running: load.map(|(running, _)| running),
        max_concurrent: load.map_or(host.max_concurrent as usize, |(_, max)| max),
        checked_at: rfc3339(check.checked_at),
    }
}

/// Adds to each agent kind of `status` what the configuration and the daemon know: a version
/// outside the kind's tested range, and a usage-limit pause in force.
fn annotate(
    status: &mut HostStatus,
    config: &Config,
    problems: &TemplateProblems,
    daemon: Option<&HostView>,
) {
    for agent in &mut status.agents {
        agent.problems = problems.get(&agent.kind).cloned().unwrap_or_default();
        if !agent.problems.is_empty() && status.status == Status::Ok {
            status.status = Status::BadTemplate;
        }
        if let (Some(kind), Some(version)) = (config.agent(&agent.kind), &agent.version) {
            agent.version_warning = kind.version_warning(version);
        }
        if let Some(d) = daemon.and_then(|d| d.agents.iter().find(|a| a.kind == agent.kind)) {
            agent.paused_until = d.paused_until.clone();
            agent.pause_reason = d.pause_reason.clone();
        }
    }
}

/// `user@host:port`, `… via <jump>` when proxied, `local` for local subprocesses.
fn address(host: &HostConfig) -> String {
    if host.is_local() {
        return "local".into();
    }
    let user = host
        .user
        .as_deref()
        .map_or(String::new(), |u| format!("{u}@"));
    let name = if host.hostname.contains(':') {
        format!("[{}]", host.hostname)
    } else {
        host.hostname.clone()
    };
    let via = host
        .proxy_jump
        .as_deref()
        .map_or(String::new(), |j| format!(" via {j}"));
    format!("{user}{name}:{}{via}", host.port)
}

/// `claude 1.0.3`, `demo (no version)`, `codex MISSING`, `claude ?` (not checked).
fn agent_cell(agent: &HostAgentView) -> String {
    match (agent.found, &agent.version) {
        (Some(true), Some(version)) => format!("{} {version}", agent.kind),
        (Some(true), None) => format!("{} (no version)", agent.kind),
        (Some(false), _) => format!("{} MISSING", agent.kind),
        (None, _) => format!("{} ?", agent.kind),
    }
}

/// The table, then each host's error on a line of its own, then the note, if any.
fn report_text(statuses: &[HostStatus], note: Option<&str>) -> String {
    let mut table = Table::new(&["HOST", "ADDRESS", "STATUS", "LATENCY", "AGENTS", "LOAD"])
        .right_align(3)
        .right_align(5);
    for s in statuses {
        let agents: Vec<String> = s.agents.iter().map(agent_cell).collect();
        table.row([
            s.host_id.clone(),
            s.address.clone(),
            s.status.label().to_string(),
            s.latency_ms.map_or("-".into(), |ms| format!("{ms} ms")),
            if agents.is_empty() {
                "-".into()
            } else {
                agents.join(", ")
            },
            format!(
                "{}/{}",
                s.running.map_or("-".into(), |r| r.to_string()),
                s.max_concurrent
            ),
        ]);
    }
    let mut out = table.render(LIST_WIDTH);
    let errors: Vec<&HostStatus> = statuses.iter().filter(|s| s.error.is_some()).collect();
    if !errors.is_empty() {
        out.push('\n');
    }
    for s in errors {
        let error = s.error.as_deref().unwrap_or_default();
        let _ = writeln!(out, "{}", error_line(&s.host_id, error));
    }
    let mut remarks = Vec::new();
    for s in statuses {
        for a in &s.agents {
            if let Some(w) = &a.version_warning {
                remarks.push(format!("warning: {}: {w}", s.host_id));
            }
            for p in &a.problems {
                remarks.push(format!("{}: agent kind `{}`: {p}", s.host_id, a.kind));
            }
            if let Some(until) = &a.paused_until {
                let why = a.pause_reason.as_deref().unwrap_or("a usage limit");
                remarks.push(format!(
                    "paused: {}: agent kind `{}` until {until} ({why})",
                    s.host_id, a.kind
                ));
            }
        }
    }
    if !remarks.is_empty() {
        let _ = writeln!(out, "\n{}", remarks.join("\n"));
    }
    if let Some(note) = note {
        let _ = writeln!(out, "\n{note}");
    }
    out
}

/// A host's error on one line, naming the host (the shell's messages already do:
/// `cannot connect to build-1: …`, `refused build-1: …`).
fn error_line(host_id: &str, error: &str) -> String {
    let error = render::one_line(error);
    if error.contains(&format!(" {host_id}: ")) {
        error
    } else {
        format!("{host_id}: {error}")
    }
}

/// Text on stdout; with `--json` the array on stdout and the note on stderr.
fn print(statuses: &[HostStatus], note: Option<&str>, json: bool) -> Result<(), TaskError> {
    if json {
        emit_json(&statuses, true)?;
        if let Some(note) = note {
            eprintln!("{note}");
        }
        Ok(())
    } else {
        emit(&report_text(statuses, note))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_fleet::steps::hosts::AgentCheck;
    use agent_fleet::workflow::Timestamp;

    fn host(extra: &str) -> HostConfig {
        toml::from_str(&format!(
            "host_id = \"b1\"\nhostname = \"build-1.example\"\nwork_root = \"/srv/w\"\n{extra}"
        ))
        .unwrap()
    }

    fn agent(kind: &str, path: Option<&str>, version: Option<&str>) -> AgentCheck {
        AgentCheck {
            kind: kind.into(),
            program: kind.into(),
            path: path.map(Into::into),
            version: version.map(Into::into),
        }
    }

    fn check(reachable: bool, error: Option<&str>, agents: Vec<AgentCheck>) -> HostCheck {
        HostCheck {
            host_id: "b1".into(),
            reachable,
            latency_ms: reachable.then_some(12),
            error: error.map(Into::into),
            agents,
            checked_at: Timestamp(0),
        }
    }

    #[test]
    fn addresses_are_user_host_port_with_the_jump_or_local() {
        let ssh = "user = \"fleet\"\nport = 2222\nagents = []";
        assert_eq!(address(&host(ssh)), "fleet@build-1.example:2222");
        let jump = "user = \"fleet\"\nproxy_jump = \"bastion\"\nagents = []";
        assert_eq!(address(&host(jump)), "fleet@build-1.example:22 via bastion");
        let v6: HostConfig = toml::from_str(
            "host_id = \"v6\"\nhostname = \"::1\"\nuser = \"u\"\nagents = []\nwork_root = \"/w\"",
        )
        .unwrap();
        assert_eq!(address(&v6), "u@[::1]:22");
        let local: HostConfig = toml::from_str(
            "host_id = \"l\"\nhostname = \"localhost\"\nagents = []\nwork_root = \"w\"",
        )
        .unwrap();
        assert_eq!(address(&local), "local");
    }

    #[test]
    fn the_status_is_unreachable_then_check_failed_then_missing_cli_then_ok() {
        let h = host("user = \"u\"\nagents = [\"claude\", \"codex\", \"custom\"]");
        let found = || {
            vec![
                agent("claude", Some("/usr/bin/claude"), Some("1.0.3")),
                agent("codex", Some("/usr/bin/codex"), None),
            ]
        };
        // `custom` was not probed (its template starts with a placeholder): not missing.
        let ok = status(&h, &check(true, None, found()), None);
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(ok.agents[2].found, None);
        let mut gone = found();
        gone[1].path = None;
        let missing = status(&h, &check(true, None, gone), None);
        assert_eq!(missing.status, Status::MissingCli);
        assert_eq!(missing.missing, ["codex"]);
        let failed = status(
            &h,
            &check(true, Some("the agent check failed"), found()),
            None,
        );
        assert_eq!(failed.status, Status::CheckFailed);
        assert!(failed.agents.iter().all(|a| a.found.is_none()));
        let down = status(&h, &check(false, Some("cannot connect"), vec![]), None);
        assert_eq!(down.status, Status::Unreachable);
        assert!(down.missing.is_empty());
    }

    #[test]
    fn the_load_is_the_daemons_when_it_answered() {
        let h = host("user = \"u\"\nagents = []\nmax_concurrent = 3");
        let without = status(&h, &check(true, None, vec![]), None);
        assert_eq!((without.running, without.max_concurrent), (None, 3));
        let with = status(&h, &check(true, None, vec![]), Some((2, 4)));
        assert_eq!((with.running, with.max_concurrent), (Some(2), 4));
    }

    #[test]
    fn the_report_is_a_table_then_the_errors_then_the_note() {
        let a = host("user = \"u\"\nagents = [\"claude\", \"demo\", \"codex\"]");
        let agents = vec![
            agent("claude", Some("/bin/claude"), Some("1.0.3")),
            agent("demo", Some("/bin/demo"), None),
            agent("codex", None, None),
        ];
        let mut b = host("user = \"u\"\nagents = [\"claude\"]\nproxy_jump = \"b1\"");
        b.host_id = "b2".into();
        let mut down = check(false, Some("cannot connect to b2: no answer"), vec![]);
        down.host_id = "b2".into();
        let rows = [
            status(&a, &check(true, None, agents), Some((1, 2))),
            status(&b, &down, None),
        ];
        let text = report_text(&rows, Some("note: no load"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "HOST  ADDRESS                      STATUS       LATENCY  AGENTS                                          LOAD",
                "b1    u@build-1.example:22         missing CLI    12 ms  claude 1.0.3, demo (no version), codex MISSING   1/2",
                "b2    u@build-1.example:22 via b1  unreachable        -  claude ?                                         -/1",
                "",
                "cannot connect to b2: no answer",
                "",
                "note: no load",
            ]
        );
    }

    #[test]
    fn an_error_line_names_its_host_once() {
        assert_eq!(
            error_line("b1", "refused b1: the host key does NOT match"),
            "refused b1: the host key does NOT match"
        );
        assert_eq!(
            error_line("b1", "the check did not finish\nwithin 20s"),
            "b1: the check did not finish within 20s"
        );
    }
}
