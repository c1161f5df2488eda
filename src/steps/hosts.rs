//! The fleet's hosts (SPEC §4 Select host, §8): one shell per host, health checks, and the
//! `host` workflow that records each host going offline or coming back.
//!
//! A check runs `echo ok` (reachability and latency), then, in one script, `command -v` for the
//! program of every agent kind the host lists and that kind's `version_command`. The monitor
//! checks every host at start and every `health.check_interval`, feeds the result to the
//! [`Fleet`](super::dispatch::Fleet) (an offline host, or one without an agent's CLI, is not
//! chosen) and signals the host's workflow instance when its health changes, so the change is a
//! durable event in that host's history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, Config, HostConfig};
use crate::io::shell::{LocalShell, SharedShell, Shell, quote};
use crate::io::ssh::{HostKeyCheck, SshOptions, SshShell, SshTarget};
use crate::workflow::{
    Engine, EngineError, Event, Outcome, StepCtx, StepResult, Timestamp, Workflow,
};

use super::dispatch::{Health, HostLoad};
use super::runtime::Runtime;

#[derive(Debug, Error)]
pub enum HostsError {
    #[error("host `{host}`: the key passphrase variable {var} (key_passphrase_env) is not set")]
    Passphrase { host: String, var: String },
    #[error("host `{host}`: no known_hosts file is configured and HOME is not set")]
    NoKnownHosts { host: String },
}

/// Environment variables holding the daemon's secrets: never passed to local agents.
pub fn secret_env(c: &Config) -> Vec<String> {
    c.secret_env()
}

/// One shell per configured host: local subprocesses for `localhost`, a pooled SSH connection
/// (through its jump host, if any) for the others.
pub fn shells(
    config: &Config,
    base_dir: &Path,
) -> Result<HashMap<String, SharedShell>, HostsError> {
    let secrets = secret_env(config);
    let options = SshOptions {
        connect_timeout: config.ssh.connect_timeout,
        keepalive_interval: config.ssh.keepalive_interval,
        keepalive_max: config.ssh.keepalive_max,
        max_sessions: config.ssh.max_sessions,
    };
    let mut ssh: HashMap<String, Arc<SshShell>> = HashMap::new();
    let mut shells: HashMap<String, SharedShell> = HashMap::new();
    for h in &config.hosts {
        let shell: SharedShell = if h.is_local() {
            Arc::new(LocalShell::new(&h.host_id, secrets.clone()))
        } else {
            ssh_shell(config, h, base_dir, &options, &mut ssh)?
        };
        shells.insert(h.host_id.clone(), shell);
    }
    Ok(shells)
}

/// The SSH shell of `h`, built once (a jump host's shell is shared with the hosts behind it).
/// Validation has ruled out unknown jump hosts and cycles.
fn ssh_shell(
    config: &Config,
    h: &HostConfig,
    base_dir: &Path,
    options: &SshOptions,
    built: &mut HashMap<String, Arc<SshShell>>,
) -> Result<Arc<SshShell>, HostsError> {
    if let Some(shell) = built.get(&h.host_id) {
        return Ok(shell.clone());
    }
    let jump = match h.proxy_jump.as_deref().and_then(|j| config.host(j)) {
        Some(j) => Some(ssh_shell(config, j, base_dir, options, built)?),
        None => None,
    };
    let key_passphrase = match &h.key_passphrase_env {
        None => None,
        Some(var) => Some(
            crate::secrets::var(var).ok_or_else(|| HostsError::Passphrase {
                host: h.host_id.clone(),
                var: var.clone(),
            })?,
        ),
    };
    let host_key = if h.insecure_ignore_host_key {
        HostKeyCheck::Ignore
    } else {
        let path = match &h.known_hosts {
            Some(p) => base_dir.join(p),
            None => std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".ssh/known_hosts"))
                .ok_or_else(|| HostsError::NoKnownHosts {
                    host: h.host_id.clone(),
                })?,
        };
        HostKeyCheck::KnownHosts(path)
    };
    let target = SshTarget {
        host_id: h.host_id.clone(),
        hostname: h.hostname.clone(),
        port: h.port,
        user: h.user.clone().unwrap_or_default(),
        key_path: base_dir.join(h.key_path.clone().unwrap_or_default()),
        key_passphrase,
        host_key,
    };
    let shell = Arc::new(SshShell::new(target, options.clone(), jump));
    built.insert(h.host_id.clone(), shell.clone());
    Ok(shell)
}

/// What a check found about one agent kind on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCheck {
    pub kind: String,
    /// The program the check looked for (the first word of the CLI template).
    pub program: String,
    /// Where `command -v` found it; `None` when missing.
    pub path: Option<String>,
    /// First line printed by the kind's `version_command`.
    pub version: Option<String>,
}

/// What one health check of a host found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCheck {
    pub host_id: String,
    pub reachable: bool,
    /// Round trip of `echo ok`, in milliseconds.
    pub latency_ms: Option<u64>,
    /// Why the host is unreachable (or the check failed).
    pub error: Option<String>,
    pub agents: Vec<AgentCheck>,
    pub checked_at: Timestamp,
}

impl HostCheck {
    /// A check that has found nothing yet.
    fn blank(host_id: &str) -> Self {
        HostCheck {
            host_id: host_id.to_string(),
            reachable: false,
            latency_ms: None,
            error: None,
            agents: Vec::new(),
            checked_at: Timestamp::now(),
        }
    }

    /// A check that did not reach the host, for `error`.
    pub fn failed(host_id: &str, error: String) -> Self {
        HostCheck {
            error: Some(error),
            ..HostCheck::blank(host_id)
        }
    }

    /// The health this check gives the host.
    pub fn health(&self) -> Health {
        match (&self.error, self.reachable) {
            (None, true) => Health::Online,
            (Some(e), _) => Health::Offline { reason: e.clone() },
            (None, false) => Health::Offline {
                reason: "unreachable".into(),
            },
        }
    }

    /// Agent kinds whose CLI was not found.
    pub fn missing(&self) -> HashSet<String> {
        self.agents
            .iter()
            .filter(|a| a.path.is_none())
            .map(|a| a.kind.clone())
            .collect()
    }

    /// What changed since `before` that is worth an event: online or not, and the agent CLIs
    /// (not latency, nor the wording of an error).
    fn differs(&self, before: &HostCheck) -> bool {
        let strip = |c: &HostCheck| (c.health() == Health::Online, c.agents.clone());
        strip(self) != strip(before)
    }

    /// One line for a history event.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.error {
            return format!("offline: {e}");
        }
        let agents: Vec<String> = self
            .agents
            .iter()
            .map(|a| match (&a.path, &a.version) {
                (None, _) => format!("{} missing ({} not found)", a.kind, a.program),
                (Some(_), Some(v)) => format!("{} {v}", a.kind),
                (Some(_), None) => format!("{} found", a.kind),
            })
            .collect();
        format!(
            "online ({} ms){}{}",
            self.latency_ms.unwrap_or(0),
            if agents.is_empty() { "" } else { "; " },
            agents.join(", ")
        )
    }
}

/// The program an agent kind's template runs: its first word, skipping `NAME=value`
/// assignments and `env`. `None` when it starts with a placeholder.
pub fn program_of(template: &str) -> Option<&str> {
    let assignment = |w: &str| w.contains('=') && !w.starts_with(['/', '.']);
    template
        .split_whitespace()
        .find(|w| !assignment(w) && *w != "env")
        .filter(|w| !w.starts_with('{'))
}

/// Problems found with agent kinds' command lines on a host, by kind: flags of a
/// `cli_template` or `resume_template` that the installed CLI's `--help` does not list.
pub type TemplateProblems = BTreeMap<String, Vec<String>>;

/// The CLIs whose `--help` lists every flag they take, so a template flag missing from it is
/// one the CLI would refuse (`claude`, `codex`). Other programs are never run with `--help`:
/// for an unknown program that could start real work.
const HELPFUL_CLIS: &[&str] = &["claude", "codex"];

/// For a template of a [`HELPFUL_CLIS`] program: the command printing the help of the
/// (sub)command it runs (`codex exec resume --help`) and the long flags it passes.
pub fn template_flags(template: &str) -> Option<(String, Vec<String>)> {
    let program = program_of(template)?;
    if !HELPFUL_CLIS.contains(&program.rsplit('/').next().unwrap_or(program)) {
        return None;
    }
    let words: Vec<&str> = template
        .split_whitespace()
        .skip_while(|w| *w != program)
        .take_while(|w| !w.starts_with(['<', '>', '|', ';', '&']))
        .collect();
    let command: Vec<&str> = words
        .iter()
        .take_while(|w| !w.starts_with(['-', '{', '\'', '"']))
        .copied()
        .collect();
    let flags = words
        .iter()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split('=').next().unwrap_or(w).to_string())
        .collect();
    Some((format!("{} --help", command.join(" ")), flags))
}

/// Checks one host: reachability and latency, then every agent kind it lists (its CLI, the
/// CLI's version, and the flags its templates pass).
pub async fn check_host(
    shell: &dyn Shell,
    host: &HostConfig,
    kinds: &[&AgentConfig],
    local_program: impl Fn(&str) -> Option<String>,
    timeout: Duration,
) -> (HostCheck, TemplateProblems) {
    let mut problems = TemplateProblems::new();
    let check = check_agents(shell, host, kinds, local_program, timeout, &mut problems).await;
    (check, problems)
}

async fn check_agents(
    shell: &dyn Shell,
    host: &HostConfig,
    kinds: &[&AgentConfig],
    local_program: impl Fn(&str) -> Option<String>,
    timeout: Duration,
    problems: &mut TemplateProblems,
) -> HostCheck {
    let mut check = HostCheck::blank(&host.host_id);
    match shell.run("echo ok", b"", timeout).await {
        Ok(out) if out.success() && out.text() == "ok" => {
            check.reachable = true;
            // Timed again: the first may have opened the connection.
            let began = Instant::now();
            if shell.run("echo ok", b"", timeout).await.is_ok() {
                check.latency_ms = Some(began.elapsed().as_millis() as u64);
            }
        }
        Ok(out) => {
            check.error = Some(format!(
                "`echo ok` answered {:?} (exit {:?}): {}",
                out.text(),
                out.status,
                out.error_tail()
            ));
            return check;
        }
        Err(e) => {
            check.error = Some(e.to_string());
            return check;
        }
    }
    // `probe <i> <program> <version command>`: found or missing, and the version (the first
    // line of stdout with a version number in it; else the first line of all it printed).
    // `flags <i> <template> <help command> <flag>…`: each flag the help does not list.
    let mut script = String::from(
        r#"probe() {
  if p=$(command -v "$2" 2>/dev/null); then
    v=
    if [ -n "$3" ]; then
      v=$(sh -c "$3" 2>/dev/null < /dev/null | grep -m 1 '[0-9][.][0-9]' || true)
      [ -n "$v" ] || v=$(sh -c "$3" 2>&1 < /dev/null | head -n 1)
    fi
    printf 'found\t%s\t%s\t%s\n' "$1" "$p" "$v"
  else
    printf 'missing\t%s\n' "$1"
  fi
}
flags() {
  i=$1; t=$2; h=$(sh -c "$3" 2>&1 < /dev/null); shift 3
  for f in "$@"; do
    case "$h" in *"$f"*) ;; *) printf 'flag\t%s\t%s\t%s\n' "$i" "$t" "$f" ;; esac
  done
}
"#,
    );
    let mut probes = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let Some(program) = program_of(&kind.cli_template) else {
            continue;
        };
        let looked_for = if host.is_local() {
            local_program(program).unwrap_or_else(|| program.to_string())
        } else {
            program.to_string()
        };
        // `local_program` quotes; `command -v` wants the bare path.
        let bare = shlex::split(&looked_for)
            .and_then(|w| w.into_iter().next())
            .unwrap_or(looked_for);
        let (Ok(p), Ok(v)) = (
            quote(&bare),
            quote(kind.version_command.as_deref().unwrap_or("")),
        ) else {
            continue;
        };
        script.push_str(&format!("probe {i} {p} {v}\n"));
        let templates = [
            ("cli_template", Some(&kind.cli_template)),
            ("resume_template", kind.resume_template.as_ref()),
        ];
        for (name, template) in templates {
            let Some((help, flags)) = template.and_then(|t| template_flags(t)) else {
                continue;
            };
            let quoted: Result<Vec<String>, _> = flags.iter().map(|f| quote(f)).collect();
            if let (Ok(help), Ok(flags)) = (quote(&help), quoted) {
                script.push_str(&format!(
                    "command -v {p} > /dev/null 2>&1 && flags {i} {name} {help} {}\n",
                    flags.join(" ")
                ));
            }
        }
        probes.push((i, kind.name.clone(), bare));
    }
    check.agents = probes
        .iter()
        .map(|(_, kind, program)| AgentCheck {
            kind: kind.clone(),
            program: program.clone(),
            path: None,
            version: None,
        })
        .collect();
    if probes.is_empty() {
        return check;
    }
    let out = match shell.run(&script, b"", timeout).await {
        Ok(out) if out.success() => out,
        Ok(out) => {
            check.error = Some(format!("the agent check failed: {}", out.error_tail()));
            return check;
        }
        Err(e) => {
            check.error = Some(e.to_string());
            return check;
        }
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.splitn(4, '\t').collect();
        if let ["flag", i, template, flag] = fields.as_slice() {
            let kind = i
                .parse::<usize>()
                .ok()
                .and_then(|i| probes.iter().find(|(j, _, _)| *j == i));
            if let Some((_, kind, program)) = kind {
                problems.entry(kind.clone()).or_default().push(format!(
                    "{template} passes {flag}, which `{program}` does not take (not in its --help)"
                ));
            }
            continue;
        }
        let (found, index) = match fields.as_slice() {
            ["found", i, ..] => (true, i.parse::<usize>().ok()),
            ["missing", i] => (false, i.parse::<usize>().ok()),
            _ => continue,
        };
        let Some(slot) = index.and_then(|i| probes.iter().position(|(j, _, _)| *j == i)) else {
            continue;
        };
        if found {
            check.agents[slot].path = fields.get(2).map(|p| p.to_string());
            check.agents[slot].version = fields
                .get(3)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty());
        }
    }
    check
}

impl Runtime {
    /// Checks every host at once and returns the results in configuration order. Nothing is
    /// recorded.
    pub async fn check_hosts(&self) -> Vec<(HostCheck, TemplateProblems)> {
        let config = self.config();
        let timeout = config.health.check_timeout;
        let checks = config.hosts.iter().map(|h| async move {
            let kinds: Vec<&AgentConfig> =
                h.agents.iter().filter_map(|k| config.agent(k)).collect();
            match self.shell(&h.host_id) {
                Ok(shell) => {
                    let local = |p: &str| self.local_program(p);
                    tokio::time::timeout(
                        timeout,
                        check_host(shell.as_ref(), h, &kinds, local, timeout),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        let error = format!(
                            "the check did not finish within {}",
                            humantime::format_duration(timeout)
                        );
                        (
                            HostCheck::failed(&h.host_id, error),
                            TemplateProblems::new(),
                        )
                    })
                }
                Err(e) => (HostCheck::failed(&h.host_id, e.0), TemplateProblems::new()),
            }
        });
        futures::future::join_all(checks).await
    }

    /// Applies a check to routing; returns it when it is news for the host's history: a change
    /// of health or agent CLIs. A host found healthy at its first check is no news, so its
    /// instance (and history) begins with its first trouble and a healthy fleet adds nothing to
    /// the store.
    /// A kind whose templates the CLI cannot run is not routed to the host, like one whose
    /// CLI is missing.
    fn apply_check(&self, check: HostCheck, problems: TemplateProblems) -> Option<HostCheck> {
        let online = |h: Option<Health>| h == Some(Health::Online);
        let was_online = online(self.fleet().health(&check.host_id));
        let mut unusable = check.missing();
        unusable.extend(problems.keys().cloned());
        self.fleet()
            .set_health(&check.host_id, check.health(), unusable);
        self.record_problems(&check.host_id, problems);
        let healthy = check.health() == Health::Online && check.missing().is_empty();
        let news = match self.record_check(check.clone()) {
            None => !healthy,
            Some(before) => check.differs(&before) || was_online != online(Some(check.health())),
        };
        news.then_some(check)
    }
}

/// Checks every host now and then every `health.check_interval` until `stop`, keeping routing
/// and the hosts' histories up to date.
pub async fn monitor(engine: Engine, rt: Arc<Runtime>, stop: CancellationToken) {
    let mut ids: HashMap<String, u64> = HashMap::new();
    loop {
        for (check, problems) in rt.check_hosts().await {
            let host = check.host_id.clone();
            for (kind, found) in &problems {
                for problem in found {
                    tracing::warn!(host, kind, "{problem}");
                }
            }
            let Some(changed) = rt.apply_check(check, problems) else {
                continue;
            };
            match record(&engine, &mut ids, changed).await {
                Ok(()) => {}
                Err(e) => tracing::warn!(host, "cannot record the host's health: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(rt.config().health.check_interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The start key of a host's instance: at most one per host, found again by it.
fn start_key(host_id: &str) -> String {
    format!("host/{host_id}")
}

/// Signals the host's instance (started on first use) with a check that changed its health.
async fn record(
    engine: &Engine,
    ids: &mut HashMap<String, u64>,
    check: HostCheck,
) -> Result<(), EngineError> {
    let id = match ids.get(&check.host_id) {
        Some(id) => *id,
        None => {
            let state = HostRecord::new(&check.host_id);
            let ack = engine
                .start_ack::<HostWatch>(&state, Some(&start_key(&check.host_id)))
                .await?;
            ids.insert(check.host_id.clone(), ack.id);
            ack.id
        }
    };
    let key = format!("check/{}", check.checked_at.0);
    engine
        .signal::<HostWatch>(id, &HostSignal::Checked(check), &key)
        .await?;
    Ok(())
}

/// Events of a host's history shown with its report.
const REPORT_EVENTS: usize = 20;

/// A host as the daemon sees it: configuration, load and health, last check, recent events.
#[derive(Debug, Clone)]
pub struct HostReport {
    pub config: HostConfig,
    /// What the last check found wrong with the kinds' command lines.
    pub problems: TemplateProblems,
    /// The agent kinds the host lists, as configured.
    pub kinds: Vec<AgentConfig>,
    pub load: HostLoad,
    pub check: Option<HostCheck>,
    /// The newest events of the host's history (health changes), oldest first.
    pub events: Vec<(u64, Event)>,
}

/// Every configured host's report, in configuration order.
pub fn reports(engine: &Engine, rt: &Runtime) -> Result<Vec<HostReport>, EngineError> {
    let checks = rt.checks();
    let loads = rt.fleet().loads();
    let mut reports = Vec::new();
    for (config, load) in rt.config().hosts.iter().zip(loads) {
        let instance = engine.started(HostWatch::NAME, &start_key(&config.host_id))?;
        let events = match instance {
            Some(id) => {
                let history = engine.history(id)?;
                let skip = history.len().saturating_sub(REPORT_EVENTS);
                history.into_iter().skip(skip).collect()
            }
            None => Vec::new(),
        };
        let kinds = config
            .agents
            .iter()
            .filter_map(|k| rt.config().agent(k).cloned())
            .collect();
        reports.push(HostReport {
            problems: rt.problems(&config.host_id),
            config: config.clone(),
            kinds,
            check: checks.get(&config.host_id).cloned(),
            load,
            events,
        });
    }
    Ok(reports)
}

/// A host as its history tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    pub online: Option<bool>,
    pub since: Option<Timestamp>,
    pub last: Option<HostCheck>,
}

impl HostRecord {
    fn new(host_id: &str) -> Self {
        HostRecord {
            host_id: host_id.to_string(),
            online: None,
            since: None,
            last: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostSignal {
    /// A check whose result differs from the previous one.
    Checked(HostCheck),
}

/// The `host` workflow: one instance per host, never ending; each signal is a health change,
/// kept as an event of the host's history.
pub struct HostWatch;

impl Workflow for HostWatch {
    const NAME: &'static str = "host";
    const VERSION: u32 = 1;
    type State = HostRecord;
    type Signal = HostSignal;

    async fn step(
        &self,
        ctx: &mut StepCtx<HostSignal>,
        mut s: HostRecord,
    ) -> StepResult<HostRecord> {
        let mut notes = Vec::new();
        while let Some(HostSignal::Checked(check)) = ctx.take(|_| true) {
            let online = check.error.is_none() && check.reachable;
            if s.online != Some(online) {
                s.online = Some(online);
                s.since = Some(check.checked_at);
            }
            notes.push(format!("{}: {}", check.host_id, check.summary()));
            s.last = Some(check);
        }
        let outcome = Outcome::wait(s);
        Ok(if notes.is_empty() {
            outcome
        } else {
            outcome.note(notes.join("; "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_the_first_word_after_assignments() {
        assert_eq!(program_of("claude -p < {prompt_file}"), Some("claude"));
        assert_eq!(
            program_of("FOO=1 env BAR=2 /opt/x/codex exec"),
            Some("/opt/x/codex")
        );
        assert_eq!(program_of("{prompt} x"), None);
        assert_eq!(
            program_of("scripts/demo-agent --prompt-file x"),
            Some("scripts/demo-agent")
        );
    }

    #[tokio::test]
    async fn a_local_check_finds_present_and_missing_clis_with_versions() {
        let host: HostConfig = toml::from_str(
            "host_id = \"l\"\nhostname = \"localhost\"\nagents = [\"sh\", \"nope\"]\nwork_root = \"/tmp\"",
        )
        .unwrap();
        let mk = |name: &str, cli: &str, version: Option<&str>| AgentConfig {
            name: name.into(),
            cli_template: cli.into(),
            output_format: crate::config::OutputFormat::Raw,
            timeout: None,
            resume_template: None,
            version_command: version.map(str::to_string),
            tested_versions: None,
            env: Default::default(),
            env_from: Vec::new(),
            missing_keys: Vec::new(),
        };
        let sh = mk(
            "sh",
            "sh -c {prompt_file}",
            Some("echo 'v 1.2'; echo second"),
        );
        let nope = mk("nope", "no-such-cli-xyz {prompt_file}", None);
        let shell = LocalShell::new("l", vec![]);
        let (check, _) = check_host(
            &shell,
            &host,
            &[&sh, &nope],
            |_| None,
            Duration::from_secs(10),
        )
        .await;
        assert!(check.reachable && check.error.is_none(), "{check:?}");
        assert_eq!(check.agents[0].version.as_deref(), Some("v 1.2"));
        assert!(check.agents[0].path.is_some());
        assert_eq!(check.agents[1].path, None);
        assert_eq!(check.missing(), HashSet::from(["nope".to_string()]));
        assert_eq!(check.health(), Health::Online);
    }

    #[test]
    fn the_help_command_and_flags_of_a_template_are_read_for_known_clis_only() {
        assert_eq!(
            template_flags(
                "codex exec resume --json -c sandbox_mode=x {session_id} - < {prompt_file}"
            ),
            Some((
                "codex exec resume --help".to_string(),
                vec!["--json".to_string()]
            ))
        );
        assert_eq!(
            template_flags(
                "/opt/bin/claude -p --output-format=json --resume {session_id} < {prompt_file}"
            ),
            Some((
                "/opt/bin/claude --help".to_string(),
                vec!["--output-format".to_string(), "--resume".to_string()]
            ))
        );
        assert_eq!(
            template_flags("scripts/demo-agent --prompt-file {prompt_file}"),
            None
        );
    }

    #[tokio::test]
    async fn a_template_flag_the_cli_does_not_take_is_a_problem_of_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let codex = dir.path().join("codex");
        std::fs::write(
            &codex,
            "#!/bin/sh\ncase \"$*\" in *--version*) echo 'WARNING: odd CODEX_HOME' >&2; echo 'codex-cli 0.169.0';;\n*) echo 'Usage: codex exec [OPTIONS] --json -c --sandbox';; esac\n",
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&codex)
            .status()
            .unwrap();
        let host: HostConfig = toml::from_str(
            "host_id = \"l\"\nhostname = \"localhost\"\nagents = [\"codex\"]\nwork_root = \"/tmp\"",
        )
        .unwrap();
        let path = codex.display();
        let kind = AgentConfig {
            name: "codex".into(),
            cli_template: format!("{path} exec --json --full-auto - < {{prompt_file}}"),
            output_format: crate::config::OutputFormat::CodexJsonl,
            timeout: None,
            resume_template: Some(format!(
                "{path} exec resume --json {{session_id}} - < {{prompt_file}}"
            )),
            version_command: Some(format!("{path} --version")),
            tested_versions: None,
            env: Default::default(),
            env_from: Vec::new(),
            missing_keys: Vec::new(),
        };
        let shell = LocalShell::new("l", vec![]);
        let (check, problems) =
            check_host(&shell, &host, &[&kind], |_| None, Duration::from_secs(10)).await;
        assert_eq!(
            check.agents[0].version.as_deref(),
            Some("codex-cli 0.169.0")
        );
        assert_eq!(
            problems["codex"],
            [format!(
                "cli_template passes --full-auto, which `{path}` does not take (not in its --help)"
            )]
        );
    }
}
