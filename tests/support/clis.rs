//! The real agent CLIs (Claude Code, Codex) for tests: where they are, the per-test config each
//! needs to talk to the fake model server (`support/model.rs`) instead of the internet, the
//! command lines that let each one finish a coding task non-interactively (established by
//! `tests/real_cli.rs`), and a non-root user to run them as.
//!
//! `scripts/test` installs the pinned versions (`scripts/agent-clis.txt`) with npm under
//! `<target>/agent-clis` and names the binaries in `AGENT_FLEET_CLAUDE` / `AGENT_FLEET_CODEX`.
//! A missing CLI is a test FAILURE (a panic saying how to get it), never a skip.

#![allow(dead_code)] // each includer uses a part of it

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The versions `scripts/agent-clis.txt` pins (and the fixtures were captured with).
pub const CLAUDE_VERSION: &str = "2.1.197";
pub const CODEX_VERSION: &str = "0.169.0";

/// What Claude Code sends as `x-api-key` (the fake accepts anything).
pub const CLAUDE_API_KEY: &str = "sk-ant-fake-key";
/// A subscription (OAuth) token: with it Claude Code believes it runs on a Claude plan, and a
/// 429 with the unified rate-limit headers prints "You've hit your session limit · resets …".
pub const CLAUDE_OAUTH_TOKEN: &str = "sk-ant-oat01-fake-token";
/// The Codex model provider the config defines, its model, and the variable holding its key.
pub const CODEX_PROVIDER: &str = "fake";
pub const CODEX_MODEL: &str = "fake-model";
pub const CODEX_KEY_ENV: &str = "FAKE_MODEL_API_KEY";
pub const CODEX_KEY: &str = "sk-fake-key";
/// The unprivileged user the tests run CLIs as when they run as root (created when missing).
pub const TEST_USER: &str = "agentfleet-test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cli {
    Claude,
    Codex,
}

impl Cli {
    /// The command name (`claude`, `codex`).
    pub fn name(self) -> &'static str {
        match self {
            Cli::Claude => "claude",
            Cli::Codex => "codex",
        }
    }

    /// The variable `scripts/test` sets to the binary's path.
    pub fn env_var(self) -> &'static str {
        match self {
            Cli::Claude => "AGENT_FLEET_CLAUDE",
            Cli::Codex => "AGENT_FLEET_CODEX",
        }
    }

    /// The binary (see [`locate`]).
    pub fn path(self) -> PathBuf {
        locate(self)
    }
}

/// The Claude Code binary.
pub fn claude() -> PathBuf {
    locate(Cli::Claude)
}

/// The Codex launcher (`bin/codex.js`, a node script starting the native binary).
pub fn codex() -> PathBuf {
    locate(Cli::Codex)
}

/// Where `scripts/test` installs the CLIs when `CARGO_TARGET_DIR` is not set.
fn default_install_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let target = if target.is_relative() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(target)
    } else {
        target
    };
    target.join("agent-clis/node_modules/.bin")
}

/// The CLI's binary: `$AGENT_FLEET_CLAUDE` / `$AGENT_FLEET_CODEX`, else
/// `<target>/agent-clis/node_modules/.bin/<name>`. Panics when it is not there (under `CI=true`
/// and elsewhere alike: these tests are never skipped), saying how to install it.
pub fn locate(cli: Cli) -> PathBuf {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let how = "run scripts/test, which installs the pinned CLIs of scripts/agent-clis.txt with npm \
               (Debian's nodejs and npm) and sets AGENT_FLEET_CLAUDE / AGENT_FLEET_CODEX";
    if let Some(path) = std::env::var_os(cli.env_var()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{}={} does not exist: {how}",
            cli.env_var(),
            path.display()
        );
        return path;
    }
    let path = default_install_dir().join(cli.name());
    if path.is_file() {
        return path;
    }
    if in_ci {
        panic!(
            "CI=true but the real `{}` CLI is missing ({} is not set and {} does not exist): \
             scripts/test must install it; these tests must not be skipped in CI",
            cli.name(),
            cli.env_var(),
            path.display()
        );
    }
    panic!(
        "the real `{}` CLI is missing ({} is not set and {} does not exist): {how}",
        cli.name(),
        cli.env_var(),
        path.display()
    );
}

// ---- environment and config ------------------------------------------------------------------

/// How Claude Code authenticates to the fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaudeAuth {
    /// `ANTHROPIC_API_KEY` (API billing: a 429 prints "Request rejected (429) · <message>",
    /// no reset time).
    ApiKey,
    /// `CLAUDE_CODE_OAUTH_TOKEN` (a Claude subscription: a rejected unified limit prints
    /// "You've hit your session limit · resets 10:06pm (UTC)").
    OAuthToken,
}

/// The environment Claude Code needs to use the fake model server at `base_url`
/// (`http://127.0.0.1:PORT`) with its state under `home`: (name, value) pairs for a command's
/// environment or an `[[agents]]` entry's `env = { … }`. `max_retries`: Claude's own retries of
/// a failed API request (`CLAUDE_CODE_MAX_RETRIES`; `None` keeps its default, 10, with
/// exponential backoff: minutes for a 401 or 500).
pub fn claude_env(
    base_url: &str,
    home: &Path,
    auth: ClaudeAuth,
    max_retries: Option<u32>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOME", home.display().to_string()),
        ("ANTHROPIC_BASE_URL", base_url.to_string()),
        ("DISABLE_AUTOUPDATER", "1".into()),
        ("DISABLE_TELEMETRY", "1".into()),
        ("DISABLE_ERROR_REPORTING", "1".into()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        // Reset times are printed in local time: make them predictable.
        ("TZ", "UTC".into()),
    ];
    match auth {
        ClaudeAuth::ApiKey => env.push(("ANTHROPIC_API_KEY", CLAUDE_API_KEY.into())),
        ClaudeAuth::OAuthToken => env.push(("CLAUDE_CODE_OAUTH_TOKEN", CLAUDE_OAUTH_TOKEN.into())),
    }
    if let Some(n) = max_retries {
        env.push(("CLAUDE_CODE_MAX_RETRIES", n.to_string()));
    }
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Codex's own retries (`model_providers.<id>.request_max_retries`: silent re-sends of a failed
/// HTTP request, default 4; `stream_max_retries`: whole-turn reconnects printed as
/// `{"type":"error","message":"Reconnecting... N/M (…)"}`, default 5). With the defaults a
/// 500 makes 30 requests over ~25 s and a 401 6 requests over ~6 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodexRetries {
    pub request: Option<u32>,
    pub stream: Option<u32>,
}

impl CodexRetries {
    /// No retries at all: one request per turn.
    pub const NONE: CodexRetries = CodexRetries {
        request: Some(0),
        stream: Some(0),
    };
    /// Codex's defaults (keys left out of the config).
    pub const DEFAULT: CodexRetries = CodexRetries {
        request: None,
        stream: None,
    };
}

/// The `config.toml` that points Codex at the fake model server (`base_url` is
/// `http://127.0.0.1:PORT/v1`).
pub fn codex_config_toml(base_url: &str, retries: CodexRetries) -> String {
    let mut provider = format!(
        "[model_providers.{CODEX_PROVIDER}]\n\
         name = \"Fake model server\"\n\
         base_url = \"{base_url}\"\n\
         wire_api = \"responses\"\n\
         env_key = \"{CODEX_KEY_ENV}\"\n\
         supports_websockets = false\n"
    );
    if let Some(n) = retries.request {
        provider.push_str(&format!("request_max_retries = {n}\n"));
    }
    if let Some(n) = retries.stream {
        provider.push_str(&format!("stream_max_retries = {n}\n"));
    }
    format!(
        "model = \"{CODEX_MODEL}\"\n\
         model_provider = \"{CODEX_PROVIDER}\"\n\
         check_for_update_on_startup = false\n\
         \n\
         [analytics]\n\
         enabled = false\n\
         \n\
         {provider}"
    )
}

/// Writes `<codex_home>/config.toml` (creating the directory) and returns the environment Codex
/// needs: `CODEX_HOME`, the provider's key variable, `HOME`, `TZ=UTC`. Keep `codex_home` out of
/// `/tmp`: there Codex warns "Refusing to create helper binaries under temporary dir" on every run.
pub fn write_codex_home(
    codex_home: &Path,
    home: &Path,
    base_url: &str,
    retries: CodexRetries,
) -> Vec<(String, String)> {
    std::fs::create_dir_all(codex_home).expect("create CODEX_HOME");
    std::fs::write(
        codex_home.join("config.toml"),
        codex_config_toml(base_url, retries),
    )
    .expect("write Codex config.toml");
    vec![
        ("HOME".to_string(), home.display().to_string()),
        ("CODEX_HOME".to_string(), codex_home.display().to_string()),
        (CODEX_KEY_ENV.to_string(), CODEX_KEY.to_string()),
        ("TZ".to_string(), "UTC".to_string()),
    ]
}

// ---- the command lines that complete a coding task (see tests/real_cli.rs) -------------------

/// Tools Claude may use without asking: the shell and the file tools.
pub const CLAUDE_ALLOWED_TOOLS: &str = "Bash,Edit,Write,Read,Glob,Grep";

/// `claude -p --output-format json --permission-mode acceptEdits --allowedTools Bash,Edit,…`
/// (prompt on stdin): edits AND runs `git commit`, as root and as any other user. The tool list
/// is ONE comma-separated argument (`--allowedTools` is variadic: separate words would swallow
/// a following positional prompt).
pub fn claude_exec_args() -> Vec<String> {
    [
        "-p",
        "--output-format",
        "json",
        "--permission-mode",
        "acceptEdits",
        "--allowedTools",
        CLAUDE_ALLOWED_TOOLS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The same, continuing the session `session_id` (the `session_id` of the first run's JSON,
/// which the resumed run keeps).
pub fn claude_resume_args(session_id: &str) -> Vec<String> {
    let mut args = claude_exec_args();
    args.splice(1..1, ["--resume".to_string(), session_id.to_string()]);
    args
}

/// `codex exec --json --dangerously-bypass-approvals-and-sandbox -` (prompt on stdin): edits
/// AND runs `git commit`, as root and as any other user, without Codex's sandbox.
/// `workspace-write` alone keeps `.git` (and a worktree's git dir) read-only, so `git commit`
/// fails with "Unable to create '…/index.lock': Read-only file system"; naming the clone's
/// `.git` in `sandbox_workspace_write.writable_roots` lets it commit (the built-in template).
/// (`-c sandbox_mode="danger-full-access"` works the same, for `exec` and `exec resume`.)
pub fn codex_exec_args() -> Vec<String> {
    [
        "exec",
        "--json",
        "--dangerously-bypass-approvals-and-sandbox",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `codex exec resume --json --dangerously-bypass-approvals-and-sandbox <thread_id> -`: the
/// thread id is `thread.started.thread_id` of the first run. The sandbox mode is NOT kept from
/// the first run (without the flag the resumed turn is read-only again), and `resume` accepts
/// neither `-s` nor `--full-auto`.
pub fn codex_resume_args(thread_id: &str) -> Vec<String> {
    [
        "exec",
        "resume",
        "--json",
        "--dangerously-bypass-approvals-and-sandbox",
        thread_id,
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

// ---- running as a non-root user --------------------------------------------------------------

/// Who a CLI runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name (for messages).
    pub user: String,
    /// Put in front of the command (`setpriv --reuid=… --regid=… --clear-groups --`), empty
    /// when the test already runs as this user.
    pub prefix: Vec<String>,
    /// The (uid, gid) that must own the run's repository and HOME (`None`: the current user).
    pub owner: Option<(u32, u32)>,
}

impl RunAs {
    /// The current user (root in CI).
    pub fn current() -> RunAs {
        RunAs {
            user: if is_root() {
                "root".into()
            } else {
                std::env::var("USER").unwrap_or_else(|_| "current user".into())
            },
            prefix: Vec::new(),
            owner: None,
        }
    }

    /// An unprivileged user: as root, [`TEST_USER`] (created on first use) through `setpriv`;
    /// otherwise the current user, who is not root already.
    pub fn non_root() -> RunAs {
        if !is_root() {
            return RunAs::current();
        }
        let (uid, gid) = ensure_test_user();
        RunAs {
            user: TEST_USER.into(),
            prefix: vec![
                "setpriv".into(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--".into(),
            ],
            owner: Some((uid, gid)),
        }
    }

    pub fn is_root(&self) -> bool {
        self.owner.is_none() && is_root()
    }

    /// Gives `path` (recursively) to the user when it is another user.
    pub fn give(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            chown_tree(path, uid, gid);
        }
    }
}

/// True when a user who owns none of its directories can reach `path` (after symlinks): every
/// ancestor directory is world-searchable (`o+x`) and the file itself world-readable (`o+r`).
/// A checkout under `/root` (mode 0700) is not: the non-root runs then fail, saying so.
pub fn reachable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode());
    let readable = mode(&path).is_ok_and(|m| m & 0o004 != 0);
    readable
        && path
            .ancestors()
            .skip(1)
            .all(|dir| mode(dir).is_ok_and(|m| m & 0o001 != 0))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// (uid, gid) of `name` from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// [`TEST_USER`]'s (uid, gid), created with `useradd` when missing (root only). Several test
/// processes may race: `useradd` failing while another one holds the passwd lock is retried.
pub fn ensure_test_user() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let mut last_error = String::new();
        for _ in 0..50 {
            if let Some(ids) = lookup_user(TEST_USER) {
                return ids;
            }
            let out = std::process::Command::new("useradd")
                .args([
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/bin/bash",
                    TEST_USER,
                ])
                .output();
            match out {
                Ok(out) if out.status.success() => {}
                Ok(out) => last_error = String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => last_error = format!("cannot run useradd: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        lookup_user(TEST_USER)
            .unwrap_or_else(|| panic!("cannot create the test user {TEST_USER}: {last_error}"))
    })
}

/// `chown -R uid:gid path` without following symlinks.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    let meta = std::fs::symlink_metadata(path).expect("metadata");
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("read_dir") {
            chown_tree(&entry.expect("dir entry").path(), uid, gid);
        }
    }
}
