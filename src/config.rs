//! The daemon's TOML configuration (SPEC §9): types, defaults, parsing and validation.
//!
//! Loading runs in two phases:
//! 1. **Schema**: `toml` + serde. Every table denies unknown keys, so a typo is an error; durations
//!    are humantime strings (`"30s"`, `"45m"`). A schema error stops loading (serde reports one at
//!    a time).
//! 2. **Semantics**: [`Config::validate`] checks what the types cannot (references between hosts
//!    and agents, duplicates, zero capacities, placeholders in CLI templates, …) and reports every
//!    problem at once.
//!
//! Every [`ConfigError`] names the full key path (`hosts[1].agents[0]`) and, when the text is
//! known, the line and column of the offending item.
//!
//! Secrets never appear in the file: a config only names the environment variable holding one
//! (`token_env = "FORGEJO_TOKEN"`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::steps::template::{Placeholder, placeholders};

/// Placeholders a CLI template (`cli_template`, `resume_template`) may use. Each substituted value
/// is shell-quoted when the template is rendered (see [`crate::steps::template`]).
pub const TEMPLATE_PLACEHOLDERS: &[&str] = &[
    "prompt",
    "prompt_file",
    "work_dir",
    "task_id",
    "branch",
    "session_id",
    "run_dir",
];

/// The host name that means "run as local subprocesses, not over SSH".
pub const LOCALHOST: &str = "localhost";

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub dispatch: DispatchConfig,
    #[serde(default)]
    pub ssh: SshConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// The forge; without it, tasks come only from the API and the CLI.
    pub forgejo: Option<ForgejoConfig>,
    /// Chat operations; optional.
    pub matrix: Option<MatrixConfig>,
    /// Agent kinds (`[[agents]]`).
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    /// Machines that run agents (`[[hosts]]`).
    #[serde(default)]
    pub hosts: Vec<HostConfig>,
}

/// `[server]`: the HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Environment variable holding the coordinator (admin) bearer token.
    pub admin_token_env: String,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Environment variable holding a token that lets pull agents register (besides the admin
    /// token); unset: only the admin token registers agents.
    pub registration_token_env: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            admin_token_env: "FLEET_ADMIN_TOKEN".into(),
            body_limit: 1024 * 1024,
            registration_token_env: None,
        }
    }
}

/// `[storage]`: the embedded redb store.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// The redb file; created (with its directory) on first start. A relative path is relative
    /// to the daemon's working directory.
    pub path: PathBuf,
    /// History events kept per task; older ones are dropped.
    pub history_cap: u64,
    /// Workflow steps running at once (tasks waiting for a host park and hold none).
    pub max_active_steps: usize,
    /// Idempotency keys (client keys of signals and submissions, webhook delivery ids) are
    /// forgotten this long after they were recorded.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Ended tasks (record, history, feed rows every consumer has passed) are removed this long
    /// after they ended; a failed task nobody retries ends this long after it failed.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The worktrees, run directories and mirror refs of ended tasks are removed this long
    /// after the task ended.
    #[serde(with = "humantime_serde")]
    pub workspace_retention: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: PathBuf::from("./data/fleet.redb"),
            history_cap: 4096,
            max_active_steps: 1024,
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            retention: Duration::from_secs(30 * 24 * 3600),
            workspace_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// `[dispatch]`: routing, retries, timeouts and liveness of agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// How long a task no SSH host can take stays `undecided` before it becomes `http_pull`.
    #[serde(with = "humantime_serde")]
    pub undecided_timeout: Duration,
    /// Further attempts after a lost host or agent.
    pub max_retries: u32,
    /// Delay before the first retry (grows exponentially).
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Default run timeout of an agent (an agent kind may set its own).
    #[serde(with = "humantime_serde")]
    pub task_timeout: Duration,
    /// Review rounds before a task fails and is escalated.
    pub max_reviews: u32,
    /// Interval pull agents are expected to heartbeat at.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Missed heartbeats after which a pull agent is offline and its tasks `agent_lost`.
    pub heartbeat_misses: u32,
    /// Repository (local path or git URL) of tasks that name none.
    pub default_repo: Option<String>,
    /// Whether a pull agent's receipt that cannot be checked (its repository cannot be read
    /// from the daemon) completes the task; otherwise the task fails, the receipt kept.
    pub accept_unverified_receipts: bool,
    /// How long an agent kind pauses on a host after a usage limit whose reset time the CLI
    /// did not say.
    #[serde(with = "humantime_serde")]
    pub usage_limit_pause: Duration,
    /// How long a task left to pull agents (`http_pull`) waits for a claim before it is routed
    /// to hosts again (still open to pull agents while it waits for a host).
    #[serde(with = "humantime_serde")]
    pub pull_timeout: Duration,
    /// Consecutive errors of a host step (prepare, launch, await, parse, verify) that are
    /// retried; the next one ends the run as failed (the retry policy then decides).
    pub max_step_errors: u32,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            undecided_timeout: Duration::from_secs(30),
            max_retries: 3,
            retry_backoff: Duration::from_secs(30),
            task_timeout: Duration::from_secs(45 * 60),
            max_reviews: 3,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_misses: 3,
            default_repo: None,
            accept_unverified_receipts: false,
            usage_limit_pause: Duration::from_secs(15 * 60),
            pull_timeout: Duration::from_secs(10 * 60),
            max_step_errors: 5,
        }
    }
}

/// `[ssh]`: how SSH hosts are reached (one pooled connection per host).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshConfig {
    /// Connecting and authenticating, each time a connection is (re)opened.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A keepalive is sent after this long without traffic from the host.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Unanswered keepalives after which the connection counts as dropped (it is reopened).
    pub keepalive_max: usize,
    /// Commands at once over one connection (OpenSSH's `MaxSessions` is 10 by default).
    pub max_sessions: usize,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(15),
            keepalive_max: 3,
            max_sessions: 8,
        }
    }
}

/// `[health]`: host health checks and lost hosts. (It is not `hosts.*`: `[[hosts]]` is the list
/// of hosts.)
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Every host is checked at start and then at this interval (`echo ok`, each agent kind's
    /// CLI and its version).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Time limit of one host's whole check.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// A host unreachable this long during a run loses the run: the attempt is marked lost and
    /// the task is retried on another host.
    #[serde(with = "humantime_serde")]
    pub lost_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check_interval: Duration::from_secs(30),
            check_timeout: Duration::from_secs(20),
            lost_after: Duration::from_secs(120),
        }
    }
}

/// `[forgejo]`: the forge issues come from and pull requests go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgejoConfig {
    /// e.g. `https://forge.example.org`
    pub base_url: String,
    /// Environment variable holding the API token.
    #[serde(default = "default_forgejo_token_env")]
    pub token_env: String,
    /// Environment variable holding the webhook HMAC secret.
    #[serde(default = "default_webhook_secret_env")]
    pub webhook_secret_env: String,
    /// Label that turns an issue into a task.
    #[serde(default = "default_trigger_label")]
    pub trigger_label: String,
    /// Polling period that catches missed webhooks.
    #[serde(default = "default_reconcile_interval", with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Repositories (`owner/name`) reconciliation lists issues of. When set, webhooks of other
    /// repositories are acknowledged and ignored; when empty, every repository that sends a
    /// webhook is served (and reconciliation covers only the PRs of known tasks).
    #[serde(default)]
    pub repos: Vec<String>,
    /// Agent kind of an issue without an `agent:<kind>` label; unset: the first agent kind.
    #[serde(default)]
    pub default_agent: Option<String>,
    /// Label added to an issue whose task needs a person (e.g. too many review rounds).
    #[serde(default = "default_escalation_label")]
    pub escalation_label: String,
    /// How long review feedback is gathered before a review round starts: comments arriving
    /// together make one round.
    #[serde(default = "default_review_debounce", with = "humantime_serde")]
    pub review_debounce: Duration,
    /// Forge users whose reviews are taken as feedback even without write access to the
    /// repository. Reviews by users with write access (asked of the forge) and `official`
    /// reviews are always taken; any other review is ignored (and noted in the task's history).
    #[serde(default)]
    pub trusted_reviewers: Vec<String>,
    /// The forge login the issue is assigned to while its task is assigned or running (the
    /// token's own account, usually). Unset (and `reviewer` unset): assignees are left alone.
    #[serde(default)]
    pub assignee: Option<String>,
    /// The forge login the issue is assigned to once its task is in review, done or failed;
    /// unset: nobody then. An issue assigned to anyone else (a person who took it) is never
    /// reassigned.
    #[serde(default)]
    pub reviewer: Option<String>,
}

fn default_forgejo_token_env() -> String {
    "FORGEJO_TOKEN".into()
}
fn default_webhook_secret_env() -> String {
    "FORGEJO_WEBHOOK_SECRET".into()
}
fn default_trigger_label() -> String {
    "agent-fleet".into()
}
fn default_reconcile_interval() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_escalation_label() -> String {
    "needs-human".into()
}
fn default_review_debounce() -> Duration {
    Duration::from_secs(30)
}

/// `[matrix]`: the ChatOps bot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// e.g. `https://matrix.example.org`
    pub homeserver: String,
    /// The bot's user id, e.g. `@fleet:example.org`.
    pub user: String,
    /// Environment variable holding the bot's password (or use `access_token_env`).
    pub password_env: Option<String>,
    /// Environment variable holding an access token (or use `password_env`).
    pub access_token_env: Option<String>,
    /// Rooms to join and notify (`!id:server` or `#alias:server`).
    pub rooms: Vec<String>,
    /// Users whose commands are obeyed.
    #[serde(default)]
    pub allowed_users: Vec<String>,
}

/// How an agent kind's output is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// `claude -p --output-format json`
    ClaudeJson,
    /// `claude -p --output-format stream-json`
    ClaudeStreamJson,
    /// `codex exec --json`
    CodexJsonl,
    /// Anything else: the output is kept as text.
    Raw,
}

impl OutputFormat {
    /// The name in the configuration file (`output_format = "…"`).
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::ClaudeJson => "claude-json",
            OutputFormat::ClaudeStreamJson => "claude-stream-json",
            OutputFormat::CodexJsonl => "codex-jsonl",
            OutputFormat::Raw => "raw",
        }
    }
}

/// `[[agents]]`: an agent kind, i.e. a CLI template and its output parser.
///
/// An entry named like a built-in kind (`claude`, `codex`, `demo`) replaces it, and takes every
/// key it leaves out from the built-in (so `[[agents]] name = "claude"` with only `env_from`
/// keeps the built-in command lines).
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawAgentConfig")]
pub struct AgentConfig {
    pub name: String,
    /// Command line run in the task's work directory; see [`TEMPLATE_PLACEHOLDERS`].
    pub cli_template: String,
    pub output_format: OutputFormat,
    /// Run timeout; defaults to `dispatch.task_timeout`.
    pub timeout: Option<Duration>,
    /// Command line that continues a previous session (retries, review rounds).
    pub resume_template: Option<String>,
    /// Command printing the CLI's version (host health checks).
    pub version_command: Option<String>,
    /// CLI versions this kind's command lines were tested with, as a semver requirement
    /// (`">=2.1.197, <2.2"`); a host whose CLI is outside it gets a warning.
    pub tested_versions: Option<String>,
    /// Environment variables set for the agent (and its `version_command`), by value.
    pub env: BTreeMap<String, String>,
    /// Names of the daemon's environment variables passed through to the agent (API keys):
    /// read when a run starts, handed over without ever being written to a file on the host.
    pub env_from: Vec<String>,
    /// Required keys the entry left out (and no built-in kind supplies): validation errors.
    pub missing_keys: Vec<&'static str>,
}

/// `[[agents]]` as written: keys left out of an entry named like a built-in come from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentConfig {
    name: String,
    cli_template: Option<String>,
    output_format: Option<OutputFormat>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    resume_template: Option<String>,
    version_command: Option<String>,
    tested_versions: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    env_from: Vec<String>,
}

impl From<RawAgentConfig> for AgentConfig {
    fn from(raw: RawAgentConfig) -> Self {
        let builtin = builtin_agents().iter().find(|b| b.name == raw.name);
        let mut missing_keys = Vec::new();
        let cli_template = match (raw.cli_template, builtin) {
            (Some(t), _) => t,
            (None, Some(b)) => b.cli_template.clone(),
            (None, None) => {
                missing_keys.push("cli_template");
                String::new()
            }
        };
        let output_format = match (raw.output_format, builtin) {
            (Some(f), _) => f,
            (None, Some(b)) => b.output_format,
            (None, None) => {
                missing_keys.push("output_format");
                OutputFormat::Raw
            }
        };
        AgentConfig {
            cli_template,
            output_format,
            timeout: raw.timeout.or(builtin.and_then(|b| b.timeout)),
            resume_template: raw
                .resume_template
                .or_else(|| builtin.and_then(|b| b.resume_template.clone())),
            version_command: raw
                .version_command
                .or_else(|| builtin.and_then(|b| b.version_command.clone())),
            tested_versions: raw
                .tested_versions
                .or_else(|| builtin.and_then(|b| b.tested_versions.clone())),
            env: raw.env,
            env_from: raw.env_from,
            missing_keys,
            name: raw.name,
        }
    }
}

impl AgentConfig {
    /// This agent's run timeout, falling back to the dispatch default.
    pub fn timeout_or_default(&self, dispatch: &DispatchConfig) -> Duration {
        self.timeout.unwrap_or(dispatch.task_timeout)
    }

    /// Whether `version` (as printed by the CLI) is in [`AgentConfig::tested_versions`]:
    /// `None` when there is no requirement or no version number can be read.
    pub fn version_tested(&self, version: &str) -> Option<bool> {
        let req = semver::VersionReq::parse(self.tested_versions.as_deref()?).ok()?;
        Some(req.matches(&version_number(version)?))
    }

    /// The warning for a CLI `version` outside [`AgentConfig::tested_versions`], if it is.
    pub fn version_warning(&self, version: &str) -> Option<String> {
        (self.version_tested(version) == Some(false)).then(|| {
            format!(
                "{version} is outside the versions agent kind `{}` is tested with ({})",
                self.name,
                self.tested_versions.as_deref().unwrap_or_default()
            )
        })
    }

    /// The environment of this kind's runs: `env`, then each `env_from` variable read from
    /// `lookup` (the daemon's environment). Fails with the names of unset variables.
    pub fn run_env(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, Vec<String>> {
        let mut vars: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut unset = Vec::new();
        for name in &self.env_from {
            match lookup(name) {
                Some(v) => vars.push((name.clone(), v)),
                None => unset.push(name.clone()),
            }
        }
        if unset.is_empty() {
            Ok(vars)
        } else {
            Err(unset)
        }
    }
}

/// A POSIX environment variable name: a letter or `_`, then letters, digits and `_`.
pub fn is_env_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The first `x.y.z` (or `x.y`) version number in a CLI's `--version` text (`2.1.197 (Claude
/// Code)`, `codex-cli 0.169.0`).
pub fn version_number(text: &str) -> Option<semver::Version> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|w| w.contains('.'))
        .find_map(|w| {
            let w = w.trim_matches('.');
            semver::Version::parse(w)
                .ok()
                .or_else(|| semver::Version::parse(&format!("{w}.0")).ok())
        })
}

/// The versions of the real CLIs the built-in `claude` and `codex` kinds are tested with
/// (`tests/agents_real.rs` runs them end to end; `scripts/agent-clis.txt` pins them).
pub const CLAUDE_TESTED: &str = ">=2.1.197, <2.2";
pub const CODEX_TESTED: &str = ">=0.169.0, <0.170";

/// The agent kinds every daemon knows: `claude`, `codex` and `demo` (the script shipped in
/// `scripts/`, which needs no API key). An `[[agents]]` entry with the same name replaces one.
pub fn builtin_agents() -> &'static [AgentConfig] {
    static BUILTIN: LazyLock<Vec<AgentConfig>> = LazyLock::new(|| {
        let kind =
            |name: &str, cli: &str, resume: &str, format, version: Option<&str>| AgentConfig {
                name: name.to_string(),
                cli_template: cli.to_string(),
                output_format: format,
                timeout: None,
                resume_template: Some(resume.to_string()),
                version_command: version.map(str::to_string),
                tested_versions: None,
                env: BTreeMap::new(),
                env_from: Vec::new(),
                missing_keys: Vec::new(),
            };
        vec![
            AgentConfig {
                tested_versions: Some(CLAUDE_TESTED.to_string()),
                ..kind(
                    "claude",
                    CLAUDE_TEMPLATE,
                    CLAUDE_RESUME_TEMPLATE,
                    OutputFormat::ClaudeJson,
                    Some("claude --version"),
                )
            },
            AgentConfig {
                tested_versions: Some(CODEX_TESTED.to_string()),
                ..kind(
                    "codex",
                    CODEX_TEMPLATE,
                    CODEX_RESUME_TEMPLATE,
                    OutputFormat::CodexJsonl,
                    Some("codex --version"),
                )
            },
            kind(
                "demo",
                "scripts/demo-agent --prompt-file {prompt_file}",
                "scripts/demo-agent --prompt-file {prompt_file} --resume {session_id}",
                OutputFormat::ClaudeJson,
                None,
            ),
        ]
    });
    &BUILTIN
}

/// Claude Code in print mode: file edits accepted, and the tools a coding task needs allowed
/// by name (`--allowedTools`), which works as root too (where Claude refuses
/// `--dangerously-skip-permissions` and `bypassPermissions`). Run against Claude Code 2.1.197
/// by `tests/agents_real.rs` and `tests/real_cli.rs`.
const CLAUDE_TEMPLATE: &str = "claude -p --output-format json --permission-mode acceptEdits \
--allowedTools Bash,Edit,Write,Read,Glob,Grep,NotebookEdit,TodoWrite < {prompt_file}";
const CLAUDE_RESUME_TEMPLATE: &str = "claude -p --output-format json --permission-mode acceptEdits \
--allowedTools Bash,Edit,Write,Read,Glob,Grep,NotebookEdit,TodoWrite \
--resume {session_id} < {prompt_file}";
/// Codex non-interactively, its commands in the `workspace-write` sandbox: they may write the
/// work directory and, named as an extra writable root, its `.git` (which Codex otherwise keeps
/// read-only, so no commit could be made); the rest of the host is read-only to them and they
/// have no network. `-c` rather than `-s`/`--full-auto` because `codex exec resume` takes
/// neither, and a resumed session does not keep the first run's sandbox. Run against Codex
/// 0.169.0 by `tests/agents_real.rs` and `tests/real_cli.rs`.
const CODEX_TEMPLATE: &str = "codex exec --json -c 'sandbox_mode=\"workspace-write\"' \
-c 'sandbox_workspace_write.writable_roots=[\"'{work_dir}'/.git\"]' - < {prompt_file}";
const CODEX_RESUME_TEMPLATE: &str = "codex exec resume --json -c 'sandbox_mode=\"workspace-write\"' \
-c 'sandbox_workspace_write.writable_roots=[\"'{work_dir}'/.git\"]' {session_id} - < {prompt_file}";

/// `[[hosts]]`: a machine reached by SSH, or `localhost` (local subprocesses).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub host_id: String,
    /// DNS name or address; `localhost` means local subprocesses (use `127.0.0.1` to go through
    /// an SSH server on this machine).
    pub hostname: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// SSH user (required for SSH hosts).
    pub user: Option<String>,
    /// SSH private key (required for SSH hosts).
    pub key_path: Option<PathBuf>,
    /// Environment variable holding the key's passphrase, if it has one.
    pub key_passphrase_env: Option<String>,
    /// `host_id` of another host to jump through.
    pub proxy_jump: Option<String>,
    /// Agent kinds available on this host (names of `[[agents]]`).
    pub agents: Vec<String>,
    /// Capabilities this host offers to tasks that require them.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Tasks run at once on this host.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    /// Directory holding the repository mirrors and one worktree per task.
    pub work_root: PathBuf,
    /// known_hosts file to check the host key against (default: the user's).
    pub known_hosts: Option<PathBuf>,
    /// Skip host key checking. Only for throw-away test machines.
    #[serde(default)]
    pub insecure_ignore_host_key: bool,
}

fn default_ssh_port() -> u16 {
    22
}
fn default_max_concurrent() -> u32 {
    1
}

impl HostConfig {
    /// True when this host runs agents as local subprocesses instead of over SSH.
    pub fn is_local(&self) -> bool {
        self.hostname == LOCALHOST
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A 1-based position in the config text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The position of byte `offset` in `text` (columns count characters).
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// One problem with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML.
    #[error("{at}: TOML syntax error: {message}")]
    Syntax { at: Location, message: String },
    /// The TOML does not fit the schema: unknown key, wrong type, bad duration, missing field.
    #[error("{}{}: {message}", at_prefix(at), shown_key(key))]
    Schema {
        key: String,
        at: Option<Location>,
        message: String,
    },
    /// The values are well-typed but inconsistent (unknown references, duplicates, zeros, …).
    #[error("{}{}: {message}", at_prefix(at), shown_key(key))]
    Invalid {
        key: String,
        at: Option<Location>,
        message: String,
    },
}

fn at_prefix(at: &Option<Location>) -> String {
    at.map(|l| format!("{l}: ")).unwrap_or_default()
}

fn shown_key(key: &str) -> String {
    if key.is_empty() {
        "(top level)".into()
    } else {
        format!("`{key}`")
    }
}

impl ConfigError {
    /// The full key path of the offending item (`hosts[1].agents[0]`), when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Schema { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }

    /// Where in the text the problem is, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            ConfigError::Syntax { at, .. } => Some(*at),
            ConfigError::Schema { at, .. } | ConfigError::Invalid { at, .. } => *at,
            ConfigError::Read { .. } => None,
        }
    }

    /// The 1-based line of the problem, when known.
    pub fn line(&self) -> Option<usize> {
        self.location().map(|l| l.line)
    }

    /// What is wrong, without the key and the position.
    pub fn message(&self) -> String {
        match self {
            ConfigError::Read { source, .. } => source.to_string(),
            ConfigError::Syntax { message, .. }
            | ConfigError::Schema { message, .. }
            | ConfigError::Invalid { message, .. } => message.clone(),
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_all(errors))]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

fn render_all(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors { errors: vec![e] }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    /// Parses and validates a configuration text. Errors carry line and column in `text`.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
        let doc = match DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let at = Location::of_offset(text, e.span().map_or(0, |s| s.start));
                let message = e.message().trim_end().to_string();
                return Err(ConfigError::Syntax { at, message }.into());
            }
        };
        let config: Config = toml::from_str(text).map_err(|e| schema_error(text, &doc, &e))?;
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|p| {
                let at = span_of_path(&doc, &p.path).map(|s| Location::of_offset(text, s.start));
                ConfigError::Invalid {
                    key: p.path.to_string(),
                    at,
                    message: p.message,
                }
            })
            .collect();
        // In file order, as a reader goes through it; errors without a position last.
        errors.sort_by_key(|e| e.location().map_or((usize::MAX, 0), |l| (l.line, l.column)));
        Err(ConfigErrors { errors })
    }

    /// Checks what the types cannot express and returns every problem found (with key paths but
    /// no positions; [`Config::from_toml_str`] adds those).
    pub fn validate(&self) -> Vec<Problem> {
        let mut v = Validator::default();
        v.server(&self.server);
        v.storage(&self.storage);
        v.dispatch(&self.dispatch);
        v.ssh(&self.ssh);
        v.health(&self.health);
        if let Some(f) = &self.forgejo {
            v.forgejo(f);
        }
        if let Some(m) = &self.matrix {
            v.matrix(m);
        }
        v.agents(&self.agents, &self.secret_env());
        let kinds: Vec<AgentConfig> = self.agent_kinds().into_iter().cloned().collect();
        v.hosts(&self.hosts, &kinds);
        if let Some(agent) = self.forgejo.as_ref().and_then(|f| f.default_agent.as_ref())
            && self.agent(agent).is_none()
        {
            let known: Vec<&str> = kinds.iter().map(|k| k.name.as_str()).collect();
            v.report(
                KeyPath::root("forgejo").key("default_agent"),
                format!("unknown agent kind `{agent}`; known: {}", known.join(", ")),
            );
        } else if let Some(agent) = self.forgejo.as_ref().and_then(|f| f.default_agent.as_ref())
            && !self.hosts.iter().any(|h| h.agents.contains(agent))
            && self.server.registration_token_env.is_none()
        {
            v.report(
                KeyPath::root("forgejo").key("default_agent"),
                format!(
                    "no host offers agent kind `{agent}` (no `agents` list of [[hosts]] names it) \
                     and pull agents cannot register (server.registration_token_env is unset): \
                     every issue's task would wait forever; add `{agent}` to a host, or set \
                     server.registration_token_env for the pull agents that will serve it"
                ),
            );
        }
        v.problems
    }

    /// The names of the environment variables holding the daemon's own secrets (admin and
    /// registration tokens, forge token, webhook secret, Matrix credentials, SSH key
    /// passphrases): never passed to an agent.
    pub fn secret_env(&self) -> Vec<String> {
        let mut names = vec![self.server.admin_token_env.clone()];
        if let Some(f) = &self.forgejo {
            names.push(f.token_env.clone());
            names.push(f.webhook_secret_env.clone());
        }
        if let Some(m) = &self.matrix {
            names.extend(m.password_env.clone());
            names.extend(m.access_token_env.clone());
        }
        names.extend(self.server.registration_token_env.clone());
        names.extend(
            self.hosts
                .iter()
                .filter_map(|h| h.key_passphrase_env.clone()),
        );
        names
    }

    /// The agent kind called `name`: an `[[agents]]` entry, else a built-in one.
    pub fn agent(&self, name: &str) -> Option<&AgentConfig> {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .or_else(|| builtin_agents().iter().find(|a| a.name == name))
    }

    /// Every agent kind: the configured ones, then the built-ins they do not override.
    pub fn agent_kinds(&self) -> Vec<&AgentConfig> {
        let mut kinds: Vec<&AgentConfig> = self.agents.iter().collect();
        for b in builtin_agents() {
            if !self.agents.iter().any(|a| a.name == b.name) {
                kinds.push(b);
            }
        }
        kinds
    }

    /// The host with `host_id`.
    pub fn host(&self, host_id: &str) -> Option<&HostConfig> {
        self.hosts.iter().find(|h| h.host_id == host_id)
    }
}

/// Turns a serde error of `toml` into a [`ConfigError::Schema`] naming the key path.
fn schema_error(text: &str, doc: &Spanned<DeTable<'_>>, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let mut key = span
        .as_ref()
        .and_then(|s| path_at(doc, s.start))
        .unwrap_or_default();
    let mut message = e.message().trim_end().to_string();
    // serde names a missing field only in its message; the span is the table lacking it.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        key.push(Seg::Key(field.to_string()));
    }
    if message.ends_with("expected a duration") {
        message.push_str(" (humantime format, e.g. \"30s\", \"5m\", \"1h 30m\")");
    }
    ConfigError::Schema {
        key: key.to_string(),
        at: span.map(|s| Location::of_offset(text, s.start)),
        message,
    }
}

// ---------------------------------------------------------------------------------------------
// Key paths and spans
// ---------------------------------------------------------------------------------------------

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A full key path such as `hosts[1].agents[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Seg>);

impl KeyPath {
    fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }

    fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    fn push(&mut self, seg: Seg) {
        self.0.push(seg);
    }

    fn root(k: &str) -> KeyPath {
        KeyPath(vec![Seg::Key(k.to_string())])
    }

    /// The name of the array this path's entry belongs to (`hosts` for `hosts[1].host_id`).
    fn list_name(&self) -> &str {
        self.0
            .iter()
            .rev()
            .skip_while(|s| !matches!(s, Seg::Index(_)))
            .find_map(|s| match s {
                Seg::Key(k) => Some(k.as_str()),
                Seg::Index(_) => None,
            })
            .unwrap_or("")
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The key path of the innermost item (key or value) whose span contains `offset`.
fn path_at(doc: &Spanned<DeTable<'_>>, offset: usize) -> Option<KeyPath> {
    fn visit_table(
        table: &DeTable<'_>,
        here: &KeyPath,
        offset: usize,
        best: &mut Option<(usize, KeyPath)>,
    ) {
        for (k, v) in table.iter() {
            let path = here.key(k.get_ref());
            for span in [k.span(), v.span()] {
                consider(&span, &path, offset, best);
            }
            visit_value(v.get_ref(), &path, offset, best);
        }
    }
    fn visit_value(
        value: &DeValue<'_>,
        here: &KeyPath,
        offset: usize,
        best: &mut Option<(usize, KeyPath)>,
    ) {
        match value {
            DeValue::Table(t) => visit_table(t, here, offset, best),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = here.index(i);
                    consider(&item.span(), &path, offset, best);
                    visit_value(item.get_ref(), &path, offset, best);
                }
            }
            _ => {}
        }
    }
    fn consider(
        span: &Range<usize>,
        path: &KeyPath,
        offset: usize,
        best: &mut Option<(usize, KeyPath)>,
    ) {
        let contains = span.start <= offset && offset < span.end.max(span.start + 1);
        if contains && best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
            *best = Some((span.len(), path.clone()));
        }
    }
    let mut best = None;
    visit_table(doc.get_ref(), &KeyPath::default(), offset, &mut best);
    best.map(|(_, p)| p)
}

/// The span of the item at `path`, or of its deepest ancestor present in the text (a value left
/// to its default has no position of its own).
fn span_of_path(doc: &Spanned<DeTable<'_>>, path: &KeyPath) -> Option<Range<usize>> {
    let mut found: Option<Range<usize>> = None;
    let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
    let mut value: Option<&DeValue<'_>> = None;
    for seg in &path.0 {
        let next = match (seg, table, value) {
            (Seg::Key(k), Some(t), _) => {
                t.iter().find(|(key, _)| key.get_ref() == k).map(|(_, v)| v)
            }
            (Seg::Index(i), _, Some(DeValue::Array(items))) => items.get(*i),
            _ => None,
        };
        let Some(next) = next else { break };
        found = Some(next.span());
        value = Some(next.get_ref());
        table = match next.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// A semantic problem: where (key path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: KeyPath,
    pub message: String,
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn report(&mut self, path: KeyPath, message: impl Into<String>) {
        self.problems.push(Problem {
            path,
            message: message.into(),
        });
    }

    fn env_name(&mut self, path: KeyPath, value: &str) {
        if !is_env_name(value) {
            self.report(
                path,
                format!(
                    "`{value}` is not an environment variable name; name the variable that \
                     holds the secret (e.g. \"FORGEJO_TOKEN\"), never the secret itself"
                ),
            );
        }
    }

    fn identifier(&mut self, path: KeyPath, what: &str, value: &str) -> bool {
        if value.is_empty() {
            self.report(path, format!("{what} must not be empty"));
            return false;
        }
        let valid = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            self.report(
                path,
                format!("{what} `{value}` may contain only letters, digits, `-`, `_` and `.`"),
            );
            return false;
        }
        true
    }

    /// [`Self::identifier`], and not already used by an earlier entry of the same list
    /// (`seen` maps each name to the index of its first entry).
    fn unique_identifier<'a>(
        &mut self,
        seen: &mut HashMap<&'a str, usize>,
        path: KeyPath,
        what: &str,
        value: &'a str,
        index: usize,
    ) {
        if !self.identifier(path.clone(), what, value) {
            return;
        }
        match seen.get(value) {
            Some(first) => {
                let list = path.list_name().to_string();
                self.report(
                    path,
                    format!("duplicate {what} `{value}` (already used by {list}[{first}])"),
                );
            }
            None => {
                seen.insert(value, index);
            }
        }
    }

    fn http_url(&mut self, path: KeyPath, value: &str) {
        let rest = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"));
        if rest.is_none_or(str::is_empty) {
            self.report(path, format!("`{value}` is not an http:// or https:// URL"));
        }
    }

    fn positive(&mut self, path: KeyPath, value: Duration) {
        if value.is_zero() {
            self.report(path, "must be longer than 0s");
        }
    }

    fn server(&mut self, s: &ServerConfig) {
        let p = KeyPath::root("server");
        self.env_name(p.key("admin_token_env"), &s.admin_token_env);
        if s.body_limit == 0 {
            self.report(p.key("body_limit"), "must be at least 1 byte");
        }
    }

    fn storage(&mut self, s: &StorageConfig) {
        let p = KeyPath::root("storage");
        if s.path.as_os_str().is_empty() {
            self.report(p.key("path"), "must not be empty");
        }
        if s.history_cap == 0 {
            self.report(p.key("history_cap"), "must be at least 1");
        }
        if s.max_active_steps == 0 {
            self.report(p.key("max_active_steps"), "must be at least 1");
        }
        self.positive(p.key("dedupe_window"), s.dedupe_window);
        self.positive(p.key("retention"), s.retention);
        self.positive(p.key("workspace_retention"), s.workspace_retention);
        // The workspace sweeper reads an ended task's state to find its leftovers; the store
        // forgets the task `retention` after it ended, so the sweep must come first.
        if s.workspace_retention > s.retention {
            self.report(
                p.key("workspace_retention"),
                format!(
                    "must not be longer than `storage.retention` ({}): an ended task is removed \
                     from the store `retention` after it ended, and its worktree, run \
                     directories and mirror refs can only be found while the store still has \
                     it; lower `workspace_retention` or raise `retention`",
                    humantime::format_duration(s.retention)
                ),
            );
        }
        // A start key names the instance it started: kept longer than the instance, it would
        // answer a repeated start with an instance the store no longer has.
        if s.dedupe_window > s.retention {
            self.report(
                p.key("dedupe_window"),
                format!(
                    "must not be longer than `storage.retention` ({}): a submission's or an \
                     agent's key would outlive the task or agent it names, and a repeated \
                     request would get an id the store no longer has; lower `dedupe_window` or \
                     raise `retention`",
                    humantime::format_duration(s.retention)
                ),
            );
        }
    }

    fn dispatch(&mut self, d: &DispatchConfig) {
        let p = KeyPath::root("dispatch");
        self.positive(p.key("task_timeout"), d.task_timeout);
        self.positive(p.key("heartbeat_interval"), d.heartbeat_interval);
        self.positive(p.key("usage_limit_pause"), d.usage_limit_pause);
        self.positive(p.key("pull_timeout"), d.pull_timeout);
        if d.heartbeat_misses == 0 {
            self.report(p.key("heartbeat_misses"), "must be at least 1");
        }
    }

    fn ssh(&mut self, s: &SshConfig) {
        let p = KeyPath::root("ssh");
        self.positive(p.key("connect_timeout"), s.connect_timeout);
        self.positive(p.key("keepalive_interval"), s.keepalive_interval);
        if s.keepalive_max == 0 {
            self.report(p.key("keepalive_max"), "must be at least 1");
        }
        if s.max_sessions == 0 {
            self.report(p.key("max_sessions"), "must be at least 1");
        }
    }

    fn health(&mut self, h: &HealthConfig) {
        let p = KeyPath::root("health");
        self.positive(p.key("check_interval"), h.check_interval);
        self.positive(p.key("check_timeout"), h.check_timeout);
        self.positive(p.key("lost_after"), h.lost_after);
    }

    fn forgejo(&mut self, f: &ForgejoConfig) {
        let p = KeyPath::root("forgejo");
        self.http_url(p.key("base_url"), &f.base_url);
        self.env_name(p.key("token_env"), &f.token_env);
        self.env_name(p.key("webhook_secret_env"), &f.webhook_secret_env);
        if f.trigger_label.trim().is_empty() {
            self.report(p.key("trigger_label"), "must not be empty");
        }
        self.positive(p.key("reconcile_interval"), f.reconcile_interval);
        if f.escalation_label.trim().is_empty() {
            self.report(p.key("escalation_label"), "must not be empty");
        }
        for (i, r) in f.repos.iter().enumerate() {
            let ok = r
                .split_once('/')
                .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'));
            if !ok {
                self.report(
                    p.key("repos").index(i),
                    format!("`{r}` is not a repository like \"owner/name\""),
                );
            }
        }
        for (i, user) in f.trusted_reviewers.iter().enumerate() {
            if user.trim().is_empty()
                || user.contains(['/', '@'])
                || user.contains(char::is_whitespace)
            {
                self.report(
                    p.key("trusted_reviewers").index(i),
                    format!("`{user}` is not a forge user name like \"alice\""),
                );
            }
        }
    }

    fn matrix(&mut self, m: &MatrixConfig) {
        let p = KeyPath::root("matrix");
        self.http_url(p.key("homeserver"), &m.homeserver);
        if !is_matrix_id(&m.user, '@') {
            self.report(
                p.key("user"),
                format!(
                    "`{}` is not a Matrix user id like \"@fleet:example.org\"",
                    m.user
                ),
            );
        }
        match (&m.password_env, &m.access_token_env) {
            (None, None) => self.report(
                p.key("password_env"),
                "set `password_env` or `access_token_env` (the variable holding the bot's secret)",
            ),
            (Some(_), Some(_)) => self.report(
                p.key("access_token_env"),
                "set only one of `password_env` and `access_token_env`",
            ),
            (Some(v), None) => self.env_name(p.key("password_env"), v),
            (None, Some(v)) => self.env_name(p.key("access_token_env"), v),
        }
        if m.rooms.is_empty() {
            self.report(p.key("rooms"), "list at least one room");
        }
        for (i, room) in m.rooms.iter().enumerate() {
            if !is_matrix_id(room, '!') && !is_matrix_id(room, '#') {
                self.report(
                    p.key("rooms").index(i),
                    format!(
                        "`{room}` is not a room id (\"!id:server\") nor alias (\"#name:server\")"
                    ),
                );
            }
        }
        for (i, user) in m.allowed_users.iter().enumerate() {
            if !is_matrix_id(user, '@') {
                self.report(
                    p.key("allowed_users").index(i),
                    format!("`{user}` is not a Matrix user id like \"@alice:example.org\""),
                );
            }
        }
    }

    fn template(&mut self, path: KeyPath, template: &str, needs_prompt: bool) {
        if template.trim().is_empty() {
            self.report(path, "must not be empty");
            return;
        }
        let used = placeholders(template);
        for Placeholder { name, .. } in &used {
            if !TEMPLATE_PLACEHOLDERS.contains(name) {
                self.report(
                    path.clone(),
                    format!(
                        "unknown placeholder `{{{name}}}`; known: {}",
                        TEMPLATE_PLACEHOLDERS
                            .iter()
                            .map(|p| format!("{{{p}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        if needs_prompt
            && !used
                .iter()
                .any(|p| p.name == "prompt" || p.name == "prompt_file")
        {
            self.report(
                path,
                "must pass the prompt to the agent with `{prompt_file}` (or `{prompt}`)",
            );
        }
    }

    fn agents(&mut self, agents: &[AgentConfig], secrets: &[String]) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, a) in agents.iter().enumerate() {
            let p = KeyPath::root("agents").index(i);
            self.unique_identifier(&mut seen, p.key("name"), "agent name", &a.name, i);
            if !a.missing_keys.is_empty() {
                let builtin: Vec<&str> = builtin_agents().iter().map(|b| b.name.as_str()).collect();
                for key in &a.missing_keys {
                    self.report(
                        p.key(key),
                        format!(
                            "missing field `{key}`: agent kind `{}` needs it (only the built-in \
                             kinds {} may leave it out)",
                            a.name,
                            builtin.join(", ")
                        ),
                    );
                }
                continue;
            }
            self.template(p.key("cli_template"), &a.cli_template, true);
            if let Some(t) = &a.resume_template {
                self.template(p.key("resume_template"), t, true);
            }
            if let Some(c) = &a.version_command
                && c.trim().is_empty()
            {
                self.report(
                    p.key("version_command"),
                    "must not be empty (or leave it out)",
                );
            }
            if let Some(t) = a.timeout {
                self.positive(p.key("timeout"), t);
            }
            if let Some(r) = &a.tested_versions
                && let Err(e) = semver::VersionReq::parse(r)
            {
                self.report(
                    p.key("tested_versions"),
                    format!("`{r}` is not a version requirement like \">=2.1, <2.2\": {e}"),
                );
            }
            for name in a.env.keys() {
                if !is_env_name(name) {
                    self.report(
                        p.key("env").key(name),
                        format!("`{name}` is not an environment variable name"),
                    );
                }
            }
            for (j, name) in a.env_from.iter().enumerate() {
                if !is_env_name(name) {
                    self.report(
                        p.key("env_from").index(j),
                        format!(
                            "`{name}` is not an environment variable name; name the daemon's \
                             variable that holds the value (e.g. \"ANTHROPIC_API_KEY\")"
                        ),
                    );
                } else if secrets.iter().any(|s| s == name) {
                    self.report(
                        p.key("env_from").index(j),
                        format!(
                            "`{name}` holds one of the daemon's own secrets (admin token, forge \
                             token, webhook secret, …), which never reach an agent"
                        ),
                    );
                }
            }
        }
    }

    fn hosts(&mut self, hosts: &[HostConfig], agents: &[AgentConfig]) {
        let agent_names: HashSet<&str> = agents.iter().map(|a| a.name.as_str()).collect();
        let known_agents = if agents.is_empty() {
            "no [[agents]] are defined".to_string()
        } else {
            format!(
                "defined agents: {}",
                agents
                    .iter()
                    .map(|a| format!("`{}`", a.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (i, h) in hosts.iter().enumerate() {
            let p = KeyPath::root("hosts").index(i);
            self.unique_identifier(&mut ids, p.key("host_id"), "host_id", &h.host_id, i);
            if h.hostname.trim().is_empty() {
                self.report(p.key("hostname"), "must not be empty");
            }
            if h.agents.is_empty() {
                self.report(
                    p.key("agents"),
                    "list at least one agent kind this host runs",
                );
            }
            let mut listed = HashSet::new();
            for (j, name) in h.agents.iter().enumerate() {
                if !agent_names.contains(name.as_str()) {
                    self.report(
                        p.key("agents").index(j),
                        format!(
                            "host `{}` uses unknown agent `{name}` ({known_agents})",
                            h.host_id
                        ),
                    );
                } else if !listed.insert(name.as_str()) {
                    self.report(
                        p.key("agents").index(j),
                        format!("agent `{name}` is listed twice"),
                    );
                }
            }
            for (j, cap) in h.capabilities.iter().enumerate() {
                if cap.trim().is_empty() {
                    self.report(p.key("capabilities").index(j), "must not be empty");
                }
            }
            if h.max_concurrent == 0 {
                self.report(
                    p.key("max_concurrent"),
                    "must be at least 1 (remove the host to stop using it)",
                );
            }
            if h.work_root.as_os_str().is_empty() {
                self.report(p.key("work_root"), "must not be empty");
            }
            if h.is_local() {
                self.local_host(&p, h);
            } else {
                self.ssh_host(&p, h);
            }
        }
        self.proxy_jumps(hosts);
    }

    fn local_host(&mut self, p: &KeyPath, h: &HostConfig) {
        let hint = "does not apply to `hostname = \"localhost\"`, which runs agents as local \
                    processes (use \"127.0.0.1\" to go through an SSH server on this machine)";
        if h.port != default_ssh_port() {
            self.report(p.key("port"), hint);
        }
        if h.user.is_some() {
            self.report(p.key("user"), hint);
        }
        if h.key_path.is_some() {
            self.report(p.key("key_path"), hint);
        }
        if h.key_passphrase_env.is_some() {
            self.report(p.key("key_passphrase_env"), hint);
        }
        if h.proxy_jump.is_some() {
            self.report(p.key("proxy_jump"), hint);
        }
        if h.known_hosts.is_some() {
            self.report(p.key("known_hosts"), hint);
        }
        if h.insecure_ignore_host_key {
            self.report(p.key("insecure_ignore_host_key"), hint);
        }
    }

    fn ssh_host(&mut self, p: &KeyPath, h: &HostConfig) {
        if h.port == 0 {
            self.report(p.key("port"), "must be between 1 and 65535");
        }
        match &h.user {
            None => self.report(p.key("user"), "missing; SSH hosts need a user"),
            Some(u) if u.trim().is_empty() => self.report(p.key("user"), "must not be empty"),
            Some(_) => {}
        }
        match &h.key_path {
            None => self.report(p.key("key_path"), "missing; SSH hosts authenticate by key"),
            Some(k) if k.as_os_str().is_empty() => {
                self.report(p.key("key_path"), "must not be empty")
            }
            Some(_) => {}
        }
        if let Some(name) = &h.key_passphrase_env {
            self.env_name(p.key("key_passphrase_env"), name);
        }
        if !h.work_root.as_os_str().is_empty() && !h.work_root.is_absolute() {
            self.report(
                p.key("work_root"),
                "must be an absolute path on an SSH host",
            );
        }
        if h.known_hosts.is_some() && h.insecure_ignore_host_key {
            self.report(
                p.key("insecure_ignore_host_key"),
                "contradicts `known_hosts`: set one or the other",
            );
        }
    }

    fn proxy_jumps(&mut self, hosts: &[HostConfig]) {
        let by_id: HashMap<&str, &HostConfig> =
            hosts.iter().map(|h| (h.host_id.as_str(), h)).collect();
        for (i, h) in hosts.iter().enumerate() {
            let Some(jump) = &h.proxy_jump else { continue };
            if h.is_local() {
                continue; // reported by local_host
            }
            let path = KeyPath::root("hosts").index(i).key("proxy_jump");
            let Some(target) = by_id.get(jump.as_str()) else {
                self.report(
                    path,
                    format!("proxy_jump names unknown host `{jump}` (it must be a host_id)"),
                );
                continue;
            };
            if target.is_local() {
                self.report(
                    path,
                    format!("cannot jump through `{jump}`: it is not an SSH host"),
                );
                continue;
            }
            // Follow the chain; a host seen twice means a cycle.
            let mut chain = vec![h.host_id.as_str()];
            let mut next = Some(jump.as_str());
            while let Some(id) = next {
                if chain.contains(&id) {
                    chain.push(id);
                    self.report(
                        path.clone(),
                        format!("proxy_jump forms a cycle: {}", chain.join(" -> ")),
                    );
                    break;
                }
                chain.push(id);
                next = by_id.get(id).and_then(|t| t.proxy_jump.as_deref());
            }
        }
    }
}

fn is_matrix_id(value: &str, sigil: char) -> bool {
    value
        .strip_prefix(sigil)
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(local, server)| !local.is_empty() && !server.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(
            Location::of_offset(text, 0),
            Location { line: 1, column: 1 }
        );
        assert_eq!(
            Location::of_offset(text, 6),
            Location { line: 2, column: 1 }
        );
        assert_eq!(
            Location::of_offset(text, 9),
            Location { line: 2, column: 3 }
        );
    }
}
