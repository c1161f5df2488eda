//! What the workflow's steps need from the daemon: the configuration, the [`Fleet`] (slots and
//! health), one [`Shell`](crate::io::shell::Shell) per host (local subprocesses or one pooled SSH
//! connection) and the last health check of each host.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::config::Config;
use crate::io::shell::SharedShell;
use crate::workflow::{Engine, StepError};

use super::dispatch::Fleet;
use super::forge::Forge;
use super::hosts::{self, HostCheck, HostsError, TemplateProblems};
use super::names::TaskNames;
use super::pull::Board;
use super::template::{self, Vars};

pub struct Runtime {
    pub(super) config: Arc<Config>,
    fleet: Fleet,
    /// Pull agents and the tasks open to them.
    board: Board,
    /// One shell per configured host.
    shells: HashMap<String, SharedShell>,
    /// Where relative paths (local work roots, repository paths, agent programs) start.
    base_dir: PathBuf,
    /// How often Await looks at a running run.
    pub(super) poll: Duration,
    /// The last health check of each host.
    checks: Mutex<HashMap<String, HostCheck>>,
    /// What the last check of each host found wrong with its agent kinds' command lines.
    problems: Mutex<HashMap<String, TemplateProblems>>,
    /// The forge, when `[forgejo]` is configured.
    forge: Option<Arc<Forge>>,
    /// How the store names its tasks on hosts and forges: known once the store is open
    /// ([`super::recover`] sets it before any step runs).
    names: OnceLock<TaskNames>,
    /// The open engine, for workflows that read other instances (the workspace sweeper): set
    /// by [`super::recover`] before routing opens.
    engine: OnceLock<Engine>,
}

impl Runtime {
    /// Builds the shells of every host (no connection is opened yet). Fails when a host's key
    /// passphrase variable is not set.
    pub fn new(config: Arc<Config>, base_dir: PathBuf) -> Result<Self, HostsError> {
        let shells = hosts::shells(&config, &base_dir)?;
        let d = &config.dispatch;
        let lease = d
            .heartbeat_interval
            .saturating_mul(d.heartbeat_misses.max(1));
        Ok(Runtime {
            fleet: Fleet::new(&config),
            board: Board::new(lease),
            config,
            shells,
            base_dir,
            poll: Duration::from_millis(250),
            checks: Mutex::new(HashMap::new()),
            problems: Mutex::new(HashMap::new()),
            forge: None,
            names: OnceLock::new(),
            engine: OnceLock::new(),
        })
    }

    /// The runtime with its forge (see [`Forge::from_config`]).
    pub fn with_forge(mut self, forge: Option<Arc<Forge>>) -> Self {
        self.forge = forge;
        self
    }

    /// Sets how the open store names its tasks; the first call wins.
    pub fn set_names(&self, names: TaskNames) {
        let _ = self.names.set(names);
    }

    /// How the store names its tasks (see [`TaskNames`]). An error before the store is open.
    pub fn names(&self) -> Result<TaskNames, StepError> {
        self.names
            .get()
            .copied()
            .ok_or_else(|| StepError::msg("the store is not open yet: its task names are unknown"))
    }

    /// Keeps the open engine; the first call wins.
    pub(super) fn set_engine(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    /// The open engine. An error before [`super::recover`] gave it.
    pub(super) fn engine(&self) -> Result<&Engine, StepError> {
        self.engine
            .get()
            .ok_or_else(|| StepError::msg("the engine is not open yet"))
    }

    pub fn forge(&self) -> Option<&Forge> {
        self.forge.as_deref()
    }

    pub fn forge_handle(&self) -> Option<Arc<Forge>> {
        self.forge.clone()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    pub fn board(&self) -> &Board {
        &self.board
    }

    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// A shell on the daemon's own machine, for reading pull agents' branches with git.
    pub(super) fn daemon_shell(&self) -> crate::io::shell::LocalShell {
        crate::io::shell::LocalShell::new("daemon", hosts::secret_env(&self.config))
    }

    /// Where the daemon keeps its own mirrors of task repositories (next to the store).
    pub(super) fn receipts_root(&self) -> String {
        let store = self.absolute(&self.config.storage.path);
        let dir = store.parent().map(Path::to_path_buf).unwrap_or_default();
        dir.join("receipts").display().to_string()
    }

    /// The shell of `host`.
    pub fn shell(&self, host: &str) -> Result<SharedShell, StepError> {
        self.shells
            .get(host)
            .cloned()
            .ok_or_else(|| StepError::msg(format!("host `{host}` is no longer configured")))
    }

    /// The last health check of every host that has been checked.
    pub fn checks(&self) -> HashMap<String, HostCheck> {
        self.checks_lock().clone()
    }

    /// Keeps `check` as its host's latest; returns the one it replaces.
    pub fn record_check(&self, check: HostCheck) -> Option<HostCheck> {
        self.checks_lock().insert(check.host_id.clone(), check)
    }

    /// Keeps what the last check of `host` found wrong with its kinds' command lines.
    pub fn record_problems(&self, host: &str, problems: TemplateProblems) {
        // A plain map replaced entry by entry: never left half-written by a panic.
        let mut all = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(host.to_string(), problems);
    }

    /// What the last check of `host` found wrong with its kinds' command lines.
    pub fn problems(&self, host: &str) -> TemplateProblems {
        let all = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        all.get(host).cloned().unwrap_or_default()
    }

    fn checks_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostCheck>> {
        // A plain map replaced entry by entry: never left half-written by a panic.
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The work root of `host`: a local one starts from the daemon's directory; an SSH host's
    /// is absolute (validated).
    pub(super) fn work_root(&self, host: &str) -> Result<String, StepError> {
        let cfg = self
            .config
            .host(host)
            .ok_or_else(|| StepError::msg(format!("host `{host}` is no longer configured")))?;
        Ok(if cfg.is_local() {
            self.absolute(&cfg.work_root).display().to_string()
        } else {
            cfg.work_root.display().to_string()
        })
    }

    pub(super) fn absolute(&self, p: &Path) -> PathBuf {
        // Without `.` components, so paths in messages read cleanly.
        self.base_dir
            .join(p)
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect()
    }

    /// The command line of a run on `host`: the template rendered, with a relative program path
    /// (like `scripts/demo-agent`) taken from the daemon's directory on a local host.
    pub(super) fn command(
        &self,
        host: &str,
        template: &str,
        vars: &Vars,
    ) -> Result<String, template::TemplateError> {
        let rendered = template::render(template, vars)?;
        let local = self.config.host(host).is_some_and(|h| h.is_local());
        let program = rendered.split_whitespace().next().unwrap_or("");
        if local && let Some(absolute) = self.local_program(program) {
            return Ok(format!("{absolute}{}", &rendered[program.len()..]));
        }
        Ok(rendered)
    }

    /// A relative program path (`scripts/demo-agent`) made absolute from the daemon's directory,
    /// quoted; `None` for a bare name or an absolute, quoted or variable path.
    pub(super) fn local_program(&self, program: &str) -> Option<String> {
        if program.contains('/') && !program.starts_with(['/', '\'', '"', '$', '~']) {
            let absolute = self.base_dir.join(program).display().to_string();
            return crate::io::shell::quote(&absolute).ok();
        }
        None
    }
}
