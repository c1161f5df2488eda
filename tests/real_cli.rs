//! The REAL agent CLIs (Claude Code 2.1.197 and Codex 0.169.0 from npm, installed by
//! `scripts/test`) run directly against the fake model server (`support/model.rs`): the command
//! lines that let each one finish a coding task non-interactively (edit a file AND `git commit`
//! through its shell tool) as root and as an unprivileged user, resume, and what each prints
//! (stdout, stderr, exit code) when the model API fails: 401, 429 usage limit with a reset time,
//! 500 (and the CLI's own retries), a permission problem, a bad argument, a missing CLI.
//!
//! Every run: cwd = a fresh git repository with one commit and a git user, the prompt on stdin,
//! its own HOME (and CODEX_HOME), a hard time limit (the process group is killed past it).
//!
//! With `AGENT_FLEET_CAPTURE=1` each scenario also writes what the CLI printed to
//! `tests/fixtures/agents/captured/{claude,codex}/<scenario>.*` (stdout, `.stderr.txt`, and
//! `.meta.json`: command line, environment, scripted answers, exit code, the server's request
//! log); see CAPTURED.md there.

#[path = "support/clis.rs"]
mod clis;
#[path = "support/model.rs"]
mod model;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clis::{ClaudeAuth, Cli, CodexRetries, RunAs};
use model::{ModelServer, Reply, Script};
use serde_json::{Value, json};

/// The shell command the scripted model asks the CLI to run.
const COMMIT: &str = "echo hello >> HELLO.md && git add HELLO.md && git commit -qm 'Add HELLO.md'";
/// The scripted model's final answer once the command's result came back.
const DONE: &str = "Done: committed HELLO.md.";
const TASK: &str = "Add a line to HELLO.md and commit it.\n";
const REVIEW: &str = "Review: please add one more line to HELLO.md and commit it.\n";
/// A hard bound on one CLI run (they take about a second).
const RUN_LIMIT: Duration = Duration::from_secs(40);

// ---- harness ---------------------------------------------------------------------------------

/// A run's private directory: the repository (cwd), HOME, CODEX_HOME, the prompt, the output.
struct Sandbox {
    _dir: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    home: PathBuf,
    codex_home: PathBuf,
    run_as: RunAs,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "safe.directory=*"])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Sandbox {
    /// A fresh repository with one commit (`README.md`) owned by `run_as`. Kept out of `/tmp`
    /// (under cargo's target tmp dir): Codex warns on every run when CODEX_HOME is in `/tmp`.
    fn new(run_as: RunAs) -> Sandbox {
        // Another user must be able to reach it (a checkout under /root is not reachable).
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let parent = if run_as.owner.is_none() || clis::reachable_by_others(parent) {
            parent.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("real-cli-")
            .tempdir_in(parent)
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        let repo = root.join("repo");
        let home = root.join("home");
        let codex_home = root.join("codex-home");
        for d in [&repo, &home, &codex_home] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        git(&repo, &["init", "-q", "-b", "main"]);
        git(&repo, &["config", "user.name", "Agent Fleet Test"]);
        git(&repo, &["config", "user.email", "agent@example.com"]);
        std::fs::write(repo.join("README.md"), "# test repository\n").expect("write");
        git(&repo, &["add", "README.md"]);
        git(&repo, &["commit", "-qm", "Initial commit"]);
        run_as.give(&root);
        Sandbox {
            _dir: dir,
            root,
            repo,
            home,
            codex_home,
            run_as,
        }
    }

    /// Replaces the cwd by a git worktree (branch `task/1`) of a bare mirror of the repository,
    /// the layout the daemon gives a task: `.git` is a file pointing into the mirror.
    fn use_worktree(&mut self) {
        let mirror = self.root.join("mirror.git");
        let out = Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&self.repo)
            .arg(&mirror)
            .output()
            .expect("git clone");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let worktree = self.root.join("worktree");
        git(
            &mirror,
            &[
                "worktree",
                "add",
                "-q",
                "-b",
                "task/1",
                worktree.to_str().expect("utf-8 path"),
                "main",
            ],
        );
        git(&mirror, &["config", "user.name", "Agent Fleet Test"]);
        git(&mirror, &["config", "user.email", "agent@example.com"]);
        self.repo = worktree;
        self.run_as.give(&self.root);
    }

    fn claude_env(
        &self,
        server: &ModelServer,
        auth: ClaudeAuth,
        retries: Option<u32>,
    ) -> Vec<(String, String)> {
        clis::claude_env(&server.url(), &self.home, auth, retries)
    }

    fn codex_env(&self, server: &ModelServer, retries: CodexRetries) -> Vec<(String, String)> {
        let env = clis::write_codex_home(
            &self.codex_home,
            &self.home,
            &server.openai_base_url(),
            retries,
        );
        self.run_as.give(&self.codex_home);
        env
    }

    /// Subjects of the commits on HEAD, newest first.
    fn commits(&self) -> Vec<String> {
        git(&self.repo, &["log", "--format=%s"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.repo.join(name)).ok()
    }
}

/// What one CLI run printed.
struct Outcome {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    user: String,
    cwd: PathBuf,
    prompt: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Outcome {
    /// Claude's `--output-format json` result.
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{}", self.report()))
    }

    /// Codex's `--json` events.
    fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("stdout line is not JSON ({e}): {l}\n{}", self.report())
                })
            })
            .collect()
    }

    fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    fn items_of(&self, kind: &str) -> Vec<Value> {
        self.events_of("item.completed")
            .into_iter()
            .map(|e| e["item"].clone())
            .filter(|i| i["type"] == kind)
            .collect()
    }

    fn thread_id(&self) -> String {
        self.events_of("thread.started")
            .first()
            .and_then(|e| e["thread_id"].as_str())
            .unwrap_or_else(|| panic!("no thread.started:\n{}", self.report()))
            .to_string()
    }

    fn report(&self) -> String {
        format!(
            "command: {}\nas: {}\nexit: {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.argv.join(" "),
            self.user,
            self.code,
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `program args` in the sandbox's repository as its user, `prompt` on stdin, with `env`
/// on top of PATH only; kills the process group past [`RUN_LIMIT`].
fn run(
    sb: &Sandbox,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    prompt: &str,
) -> Outcome {
    if sb.run_as.owner.is_some() && program.is_absolute() {
        assert!(
            clis::reachable_by_others(program),
            "{} cannot reach {}: every directory above it must be world-searchable (o+x); \
             install the CLIs (CARGO_TARGET_DIR) outside a private directory such as /root",
            sb.run_as.user,
            program.display()
        );
    }
    let prompt_file = sb.root.join("prompt.md");
    std::fs::write(&prompt_file, prompt).expect("write prompt");
    let out_dir = tempfile::tempdir().expect("output dir");
    let (stdout_path, stderr_path) = (out_dir.path().join("out"), out_dir.path().join("err"));
    let mut argv: Vec<String> = sb.run_as.prefix.clone();
    argv.push(program.display().to_string());
    argv.extend(args.iter().cloned());
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&sb.repo)
        .stdin(std::fs::File::open(&prompt_file).expect("open prompt"))
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .process_group(0);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            // SAFETY: kill(2) on the child's own process group (process_group(0) above).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let outcome = Outcome {
        argv,
        env: env.to_vec(),
        user: sb.run_as.user.clone(),
        cwd: sb.repo.clone(),
        prompt: prompt.to_string(),
        code: status.and_then(|s| s.code()),
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        elapsed: started.elapsed(),
    };
    assert!(
        status.is_some(),
        "the CLI did not finish within {RUN_LIMIT:?}; killed\n{}",
        outcome.report()
    );
    outcome
}

fn claude(sb: &Sandbox, args: &[String], env: &[(String, String)], prompt: &str) -> Outcome {
    run(sb, &clis::claude(), args, env, prompt)
}

fn codex(sb: &Sandbox, args: &[String], env: &[(String, String)], prompt: &str) -> Outcome {
    run(sb, &clis::codex(), args, env, prompt)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// With `AGENT_FLEET_CAPTURE=1`: writes the run's stdout (`<name>.<ext>`), stderr
/// (`<name>.stderr.txt`) and `<name>.meta.json` under `tests/fixtures/agents/captured/<cli>/`.
fn capture(
    cli: Cli,
    name: &str,
    ext: &str,
    outcome: &Outcome,
    server: Option<&ModelServer>,
    script: &str,
) {
    if std::env::var("AGENT_FLEET_CAPTURE").as_deref() != Ok("1") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/agents/captured")
        .join(cli.name());
    std::fs::create_dir_all(&dir).expect("fixture dir");
    // The program is named by its command name, not by this machine's install path.
    let argv: Vec<String> = outcome
        .argv
        .iter()
        .map(|a| {
            if a.ends_with("/.bin/claude") {
                "claude".to_string()
            } else if a.ends_with("/.bin/codex") {
                "codex".to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let command = shlex::try_join(argv.iter().map(String::as_str)).expect("quotable argv");
    let env: serde_json::Map<String, Value> = outcome
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let meta = json!({
        "cli": cli.name(),
        "version": match cli { Cli::Claude => clis::CLAUDE_VERSION, Cli::Codex => clis::CODEX_VERSION },
        "command": format!("{command} < prompt.md"),
        "argv": argv,
        "run_as": outcome.user,
        "cwd": outcome.cwd.display().to_string(),
        "stdin": outcome.prompt,
        "env": env,
        "codex_config_toml": outcome
            .env
            .iter()
            .find(|(k, _)| k == "CODEX_HOME")
            .and_then(|(_, home)| std::fs::read_to_string(Path::new(home).join("config.toml")).ok()),
        "server_script": script,
        "exit_code": outcome.code,
        "duration_ms": outcome.elapsed.as_millis() as u64,
        "model_requests": server.map(ModelServer::count),
        "requests": server.map(|s| s.requests().iter().map(|r| r.summary()).collect::<Vec<_>>()),
    });
    std::fs::write(dir.join(format!("{name}.{ext}")), &outcome.stdout).expect("write stdout");
    std::fs::write(dir.join(format!("{name}.stderr.txt")), &outcome.stderr).expect("write stderr");
    std::fs::write(
        dir.join(format!("{name}.meta.json")),
        serde_json::to_string_pretty(&meta).expect("meta") + "\n",
    )
    .expect("write meta");
}

/// The commit task: a shell call of [`COMMIT`], then [`DONE`] once its result is back.
fn commit_script() -> Script {
    Script::shell_then_text(COMMIT, DONE)
}

/// Civil UTC date and time of a Unix time: (year, month, day, hour, minute).
fn civil(epoch: u64) -> (i64, u32, u32, u32, u32) {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (secs / 3600) as u32,
        ((secs % 3600) / 60) as u32,
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn twelve_hour(hour: u32) -> (u32, &'static str) {
    let h = match hour % 12 {
        0 => 12,
        h => h,
    };
    (h, if hour < 12 { "AM" } else { "PM" })
}

/// How Claude Code 2.1 prints a reset time (TZ=UTC): `10:06pm (UTC)` (`10pm` on the hour)
/// when less than 24 h away, else `Dec 4, 10:06pm (UTC)` (with `, 2027` in another year).
fn claude_reset_text(resets_at: u64) -> String {
    let (y, mo, d, hour, minute) = civil(resets_at);
    let (h, ampm) = twelve_hour(hour);
    let ampm = ampm.to_lowercase();
    let time = if minute == 0 {
        format!("{h}{ampm}")
    } else {
        format!("{h}:{minute:02}{ampm}")
    };
    let now = model::epoch_now();
    if resets_at.saturating_sub(now) <= 24 * 3600 {
        return format!("{time} (UTC)");
    }
    let year = if y == civil(now).0 {
        String::new()
    } else {
        format!(", {y}")
    };
    format!("{} {d}{year}, {time} (UTC)", MONTHS[(mo - 1) as usize])
}

/// How Codex 0.169 prints a reset time (TZ=UTC): `10:10 PM` today, else `Dec 3rd, 2026 1:10 AM`.
fn codex_reset_text(resets_at: u64) -> String {
    let (y, mo, d, hour, minute) = civil(resets_at);
    let (ny, nmo, nd, _, _) = civil(model::epoch_now());
    let (h, ampm) = twelve_hour(hour);
    if (y, mo, d) == (ny, nmo, nd) {
        format!("{h}:{minute:02} {ampm}")
    } else {
        let suffix = match d {
            11..=13 => "th",
            _ => match d % 10 {
                1 => "st",
                2 => "nd",
                3 => "rd",
                _ => "th",
            },
        };
        format!(
            "{} {d}{suffix}, {y} {h}:{minute:02} {ampm}",
            MONTHS[(mo - 1) as usize]
        )
    }
}

/// A reset time about `hours` ahead, on a whole minute plus 30 s (so rounding cannot move it).
fn reset_in_hours(hours: u64) -> u64 {
    (model::epoch_now() / 60 + hours * 60 + 1) * 60 + 30
}

// ---- Claude Code -----------------------------------------------------------------------------

#[test]
fn claude_as_root_commits_with_accept_edits_and_allowed_tools() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, Some(0));
    let out = claude(&sb, &clis::claude_exec_args(), &env, TASK);
    capture(
        Cli::Claude,
        "success-commit",
        "json",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE)",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    let result = out.json();
    assert_eq!(result["is_error"], false, "{}", out.report());
    assert_eq!(result["result"], DONE);
    assert_eq!(result["num_turns"], 2);
    assert_eq!(result["permission_denials"], json!([]));
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
    assert_eq!(sb.file("HELLO.md").as_deref(), Some("hello\n"));
    // One conversation: the tool call, then the request carrying the command's result.
    let requests = server.model_requests();
    assert_eq!(requests.len(), 2, "{}", server.log_text());
    assert_eq!(
        server.sessions(),
        [result["session_id"].as_str().map(str::to_string)]
    );
    assert!(requests[0].prompt_contains("Add a line to HELLO.md"));
    assert!(!requests[0].has_tool_result() && requests[1].has_tool_result());
    assert!(
        requests[0].tools.iter().any(|t| t == "Bash"),
        "{:?}",
        requests[0].tools
    );
    assert!(
        server.unknown_requests().is_empty(),
        "{}",
        server.log_text()
    );
}

#[test]
fn claude_as_non_root_commits_with_the_same_command_line() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::non_root());
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, Some(0));
    let out = claude(&sb, &clis::claude_exec_args(), &env, TASK);
    capture(
        Cli::Claude,
        "success-commit-non-root",
        "json",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE)",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    assert_eq!(out.json()["is_error"], false);
    assert_eq!(out.json()["permission_denials"], json!([]));
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
}

#[test]
fn claude_as_non_root_commits_with_dangerously_skip_permissions() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::non_root());
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, Some(0));
    let args = strings(&[
        "-p",
        "--output-format",
        "json",
        "--dangerously-skip-permissions",
    ]);
    let out = claude(&sb, &args, &env, TASK);
    capture(
        Cli::Claude,
        "success-commit-skip-permissions-non-root",
        "json",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE)",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    assert_eq!(out.json()["permission_denials"], json!([]));
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
}

#[test]
fn claude_as_root_refuses_dangerously_skip_permissions() {
    if !clis::is_root() {
        return; // the refusal is about root; nothing to show as another user
    }
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, Some(0));
    let args = strings(&[
        "-p",
        "--output-format",
        "json",
        "--dangerously-skip-permissions",
    ]);
    let out = claude(&sb, &args, &env, TASK);
    capture(
        Cli::Claude,
        "skip-permissions-root-refused",
        "txt",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE) (never asked)",
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains(
            "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons"
        ),
        "{}",
        out.report()
    );
    assert_eq!(server.count(), 0);
}

#[test]
fn claude_commits_in_a_worktree_of_a_bare_mirror() {
    let server = ModelServer::start(commit_script());
    let mut sb = Sandbox::new(RunAs::current());
    sb.use_worktree();
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, Some(0));
    let out = claude(&sb, &clis::claude_exec_args(), &env, TASK);

    assert_eq!(out.code, Some(0), "{}", out.report());
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
}

#[test]
fn claude_resume_continues_the_session_with_the_earlier_conversation() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, Some(0));
    let first = claude(&sb, &clis::claude_exec_args(), &env, TASK);
    assert_eq!(first.code, Some(0), "{}", first.report());
    let session = first.json()["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();

    let out = claude(&sb, &clis::claude_resume_args(&session), &env, REVIEW);
    capture(
        Cli::Claude,
        "resume",
        "json",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE); a first run in the same session made requests 1-2",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    let result = out.json();
    assert_eq!(
        result["session_id"],
        session.as_str(),
        "resume keeps the session id"
    );
    assert_eq!(result["is_error"], false);
    assert_eq!(
        sb.commits(),
        ["Add HELLO.md", "Add HELLO.md", "Initial commit"]
    );
    let requests = server.model_requests();
    assert_eq!(requests.len(), 4, "{}", server.log_text());
    let resumed = &requests[2];
    assert_eq!(resumed.session.as_deref(), Some(session.as_str()));
    assert!(
        resumed.prompt_contains("Add a line to HELLO.md"),
        "{resumed:?}"
    );
    assert!(resumed.prompt_contains("Review: please add one more line"));
    assert!(resumed.assistant_texts.iter().any(|t| t == DONE));
    assert!(
        resumed.user_text.starts_with("Review:"),
        "{:?}",
        resumed.user_text
    );
}

#[test]
fn claude_401_fails_at_once_with_api_error_status_401() {
    let server = ModelServer::start(Script::always(Reply::unauthorized()));
    let sb = Sandbox::new(RunAs::current());
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, Some(0));
    let out = claude(&sb, &clis::claude_exec_args(), &env, TASK);
    capture(
        Cli::Claude,
        "auth-401",
        "json",
        &out,
        Some(&server),
        "always 401 authentication_error \"invalid x-api-key\"",
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    let result = out.json();
    assert_eq!(result["type"], "result");
    assert_eq!(
        result["subtype"], "success",
        "API errors keep subtype success"
    );
    assert_eq!(result["is_error"], true);
    assert_eq!(result["api_error_status"], 401);
    assert_eq!(result["result"], "Invalid API key · Fix external API key");
    assert_eq!(out.stderr, "");
    assert_eq!(server.count(), 1, "{}", server.log_text());
}

#[test]
fn claude_usage_limit_on_a_subscription_prints_the_reset_time() {
    let resets_at = reset_in_hours(3);
    let server = ModelServer::start(Script::always(Reply::usage_limit(resets_at)));
    let sb = Sandbox::new(RunAs::current());
    // Claude's default retries: a rejected usage limit is not retried anyway.
    let env = sb.claude_env(&server, ClaudeAuth::OAuthToken, None);
    let out = claude(&sb, &clis::claude_exec_args(), &env, TASK);
    capture(
        Cli::Claude,
        "usage-limit-429",
        "json",
        &out,
        Some(&server),
        &format!(
            "always 429 rate_limit_error + anthropic-ratelimit-unified-status: rejected, -unified-reset: {resets_at}, -representative-claim: five_hour, retry-after"
        ),
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    let result = out.json();
    assert_eq!(result["is_error"], true);
    assert_eq!(result["api_error_status"], 429);
    assert_eq!(
        result["result"],
        format!(
            "You've hit your session limit · resets {}",
            claude_reset_text(resets_at)
        ),
        "{}",
        out.report()
    );
    assert_eq!(server.count(), 1, "not retried: {}", server.log_text());
}

#[test]
fn claude_weekly_limit_days_away_prints_the_date_of_the_reset() {
    let resets_at = reset_in_hours(50);
    let server = ModelServer::start(Script::always(Reply::weekly_limit(resets_at)));
    let sb = Sandbox::new(RunAs::current());
    let env = sb.claude_env(&server, ClaudeAuth::OAuthToken, Some(0));
    let out = claude(&sb, &clis::claude_exec_args(), &env, TASK);
    capture(
        Cli::Claude,
        "usage-limit-429-weekly",
        "json",
        &out,
        Some(&server),
        &format!(
            "always 429 rate_limit_error + anthropic-ratelimit-unified-status: rejected, \
             -unified-reset: {resets_at} (50 h ahead), -representative-claim: seven_day, retry-after"
        ),
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    let result = out.json();
    assert_eq!(result["api_error_status"], 429);
    assert_eq!(
        result["result"],
        format!(
            "You've hit your weekly limit · resets {}",
            claude_reset_text(resets_at)
        ),
        "{}",
        out.report()
    );
}

#[test]
fn claude_usage_limit_in_stream_json_carries_the_reset_epoch() {
    let resets_at = reset_in_hours(3);
    let server = ModelServer::start(Script::always(Reply::usage_limit(resets_at)));
    let sb = Sandbox::new(RunAs::current());
    let env = sb.claude_env(&server, ClaudeAuth::OAuthToken, Some(0));
    let mut args = clis::claude_exec_args();
    args[2] = "stream-json".into();
    args.push("--verbose".into());
    let out = claude(&sb, &args, &env, TASK);
    capture(
        Cli::Claude,
        "usage-limit-429-stream",
        "jsonl",
        &out,
        Some(&server),
        &format!(
            "always 429 rate_limit_error + anthropic-ratelimit-unified-status: rejected, -unified-reset: {resets_at}, -representative-claim: five_hour, retry-after"
        ),
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    let events = out.events();
    let limit = events
        .iter()
        .find(|e| e["type"] == "rate_limit_event")
        .unwrap_or_else(|| panic!("no rate_limit_event:\n{}", out.report()));
    assert_eq!(limit["rate_limit_info"]["status"], "rejected");
    assert_eq!(limit["rate_limit_info"]["resetsAt"], resets_at);
    assert_eq!(limit["rate_limit_info"]["rateLimitType"], "five_hour");
    let result = events.last().expect("a result line");
    assert_eq!(result["type"], "result");
    assert_eq!(result["api_error_status"], 429);
}

#[test]
fn claude_usage_limit_with_an_api_key_prints_no_reset_time() {
    let resets_at = reset_in_hours(3);
    let server = ModelServer::start(Script::always(Reply::usage_limit(resets_at)));
    let sb = Sandbox::new(RunAs::current());
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, None);
    let out = claude(&sb, &clis::claude_exec_args(), &env, TASK);
    capture(
        Cli::Claude,
        "usage-limit-429-api-key",
        "json",
        &out,
        Some(&server),
        &format!(
            "always 429 rate_limit_error + anthropic-ratelimit-unified-status: rejected, -unified-reset: {resets_at}, retry-after (API key auth)"
        ),
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    let result = out.json();
    assert_eq!(result["api_error_status"], 429);
    assert_eq!(
        result["result"],
        "API Error: Request rejected (429) · This request would exceed your account's rate limit. Please try again later."
    );
    assert_eq!(server.count(), 1, "not retried: {}", server.log_text());
}

#[test]
fn claude_500_without_retries_fails_with_api_error_status_500() {
    let server = ModelServer::start(Script::always(Reply::server_error()));
    let sb = Sandbox::new(RunAs::current());
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, Some(0));
    let out = claude(&sb, &clis::claude_exec_args(), &env, TASK);
    capture(
        Cli::Claude,
        "server-error-500",
        "json",
        &out,
        Some(&server),
        "always 500 api_error \"Internal server error\"",
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    let result = out.json();
    assert_eq!(result["is_error"], true);
    assert_eq!(result["api_error_status"], 500);
    let text = result["result"].as_str().expect("result text");
    assert!(
        text.starts_with("API Error: 500 Internal server error."),
        "{text}"
    );
    assert_eq!(server.count(), 1);
}

#[test]
fn claude_retries_a_500_itself_and_succeeds() {
    let server = ModelServer::start(Script::fail_first(
        2,
        Reply::server_error(),
        commit_script(),
    ));
    let sb = Sandbox::new(RunAs::current());
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, Some(2));
    let out = claude(&sb, &clis::claude_exec_args(), &env, TASK);
    capture(
        Cli::Claude,
        "server-error-500-then-success",
        "json",
        &out,
        Some(&server),
        "fail_first(2, 500, shell_then_text(COMMIT, DONE))",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    assert_eq!(out.json()["is_error"], false);
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
    let requests = server.model_requests();
    assert_eq!(
        requests.len(),
        4,
        "2 failures, the tool call, the final answer: {}",
        server.log_text()
    );
    // Claude's own retry loop: the same request again, in the same session (each one says
    // `x-stainless-retry-count: 0`: the SDK's retries are not used).
    assert_eq!(server.sessions().len(), 1);
    assert!(
        requests[..3]
            .iter()
            .all(|r| r.user_text == TASK && !r.has_tool_result())
    );
}

#[test]
fn claude_without_permission_for_bash_reports_permission_denials_and_exits_0() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, Some(0));
    let args = strings(&[
        "-p",
        "--output-format",
        "json",
        "--permission-mode",
        "acceptEdits",
    ]);
    let out = claude(&sb, &args, &env, TASK);
    capture(
        Cli::Claude,
        "permission-denied",
        "json",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE)",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    let result = out.json();
    assert_eq!(result["is_error"], false);
    assert_eq!(result["subtype"], "success");
    let denials = result["permission_denials"].as_array().expect("denials");
    assert_eq!(denials.len(), 1, "{}", out.report());
    assert_eq!(denials[0]["tool_name"], "Bash");
    assert_eq!(denials[0]["tool_input"]["command"], COMMIT);
    assert_eq!(sb.commits(), ["Initial commit"]);
    // The model was told: its tool result is an error.
    let requests = server.model_requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].has_tool_result());
}

#[test]
fn claude_rejects_an_unknown_argument_with_exit_1() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.claude_env(&server, ClaudeAuth::ApiKey, Some(0));
    let mut args = clis::claude_exec_args();
    args.push("--no-such-option".into());
    let out = claude(&sb, &args, &env, TASK);
    capture(
        Cli::Claude,
        "unknown-argument",
        "txt",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE) (never asked)",
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr.trim(),
        "error: unknown option '--no-such-option'"
    );
    assert_eq!(server.count(), 0);
}

#[test]
fn claude_missing_from_the_path_is_exit_127_from_the_shell() {
    let sb = Sandbox::new(RunAs::current());
    let out = missing_cli(&sb, "claude -p --output-format json < ../prompt.md");
    capture(
        Cli::Claude,
        "cli-missing",
        "txt",
        &out,
        None,
        "none (no server)",
    );
    assert_eq!(out.code, Some(127), "{}", out.report());
    assert_eq!(out.stderr.trim(), "sh: 1: claude: not found");
}

/// `sh -c <line>` with a PATH that holds no agent CLI (what the daemon's local shell runs).
fn missing_cli(sb: &Sandbox, line: &str) -> Outcome {
    for dir in ["/usr/bin", "/bin"] {
        for name in ["claude", "codex"] {
            assert!(!Path::new(dir).join(name).exists(), "{dir}/{name} exists");
        }
    }
    let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
    run(
        sb,
        Path::new("sh"),
        &["-c".to_string(), line.to_string()],
        &env,
        TASK,
    )
}

// ---- Codex -----------------------------------------------------------------------------------

#[test]
fn codex_as_root_commits_with_the_sandbox_bypassed() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let out = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    capture(
        Cli::Codex,
        "success-commit",
        "jsonl",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE)",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    let commands = out.items_of("command_execution");
    assert_eq!(commands.len(), 1, "{}", out.report());
    assert_eq!(commands[0]["exit_code"], 0);
    assert_eq!(commands[0]["status"], "completed");
    assert!(
        commands[0]["command"]
            .as_str()
            .unwrap_or_default()
            .contains(COMMIT)
    );
    let messages = out.items_of("agent_message");
    assert_eq!(
        messages.last().map(|m| m["text"].clone()),
        Some(json!(DONE))
    );
    assert_eq!(out.events_of("turn.completed").len(), 1);
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
    let requests = server.model_requests();
    assert_eq!(requests.len(), 2, "{}", server.log_text());
    assert_eq!(server.sessions(), [Some(out.thread_id())]);
    assert!(requests[0].prompt_contains("Add a line to HELLO.md"));
    assert_eq!(requests[0].user_text, TASK);
    assert!(
        requests[0].tools.iter().any(|t| t == "exec_command"),
        "{:?}",
        requests[0].tools
    );
    assert!(requests[1].tool_results[0].contains("Process exited with code 0"));
    assert!(
        server.unknown_requests().is_empty(),
        "{}",
        server.log_text()
    );
}

#[test]
fn codex_as_non_root_commits_with_the_same_command_line() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::non_root());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let out = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    capture(
        Cli::Codex,
        "success-commit-non-root",
        "jsonl",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE)",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    assert_eq!(out.items_of("command_execution")[0]["exit_code"], 0);
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
}

#[test]
fn codex_commits_with_danger_full_access_as_config_too() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let args = strings(&[
        "exec",
        "--json",
        "-c",
        "sandbox_mode=\"danger-full-access\"",
        "-",
    ]);
    let out = codex(&sb, &args, &env, TASK);

    assert_eq!(out.code, Some(0), "{}", out.report());
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
}

#[test]
fn codex_workspace_write_sandbox_cannot_commit_because_git_stays_read_only() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let args = strings(&[
        "exec",
        "--json",
        "-c",
        "sandbox_mode=\"workspace-write\"",
        "-",
    ]);
    let out = codex(&sb, &args, &env, TASK);
    capture(
        Cli::Codex,
        "sandbox-workspace-write-git-read-only",
        "jsonl",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE)",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    // The file was written, the commit was not; and no command_execution item says so.
    assert_eq!(sb.file("HELLO.md").as_deref(), Some("hello\n"));
    assert_eq!(sb.commits(), ["Initial commit"]);
    assert!(
        out.items_of("command_execution").is_empty(),
        "{}",
        out.report()
    );
    let result = &server.model_requests()[1].tool_results[0];
    assert!(result.contains("Process exited with code 128"), "{result}");
    assert!(
        result.contains(".git/index.lock': Read-only file system"),
        "{result}"
    );
}

#[test]
fn codex_workspace_write_sandbox_commits_when_the_git_dir_is_a_writable_root() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let git_dir = sb.repo.join(".git");
    let args = strings(&[
        "exec",
        "--json",
        "-c",
        "sandbox_mode=\"workspace-write\"",
        "-c",
        &format!("sandbox_workspace_write.writable_roots=[{:?}]", git_dir),
        "-",
    ]);
    let out = codex(&sb, &args, &env, TASK);

    assert_eq!(out.code, Some(0), "{}", out.report());
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
}

#[test]
fn codex_read_only_sandbox_by_default_runs_nothing_and_still_exits_0() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let out = codex(&sb, &strings(&["exec", "--json", "-"]), &env, TASK);
    capture(
        Cli::Codex,
        "permission-read-only-sandbox",
        "jsonl",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE)",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    assert!(
        out.items_of("command_execution").is_empty(),
        "{}",
        out.report()
    );
    assert_eq!(
        out.items_of("agent_message")
            .last()
            .map(|m| m["text"].clone()),
        Some(json!(DONE))
    );
    assert_eq!(sb.file("HELLO.md"), None);
    assert_eq!(sb.commits(), ["Initial commit"]);
    let result = &server.model_requests()[1].tool_results[0];
    assert!(
        result.contains("HELLO.md: Read-only file system"),
        "{result}"
    );
}

#[test]
fn codex_in_a_worktree_of_a_bare_mirror_commits_only_without_the_sandbox() {
    let server = ModelServer::start(commit_script());
    let mut sb = Sandbox::new(RunAs::current());
    sb.use_worktree();
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let common = git(
        &sb.repo,
        &["rev-parse", "--path-format=absolute", "--git-common-dir"],
    );
    // Even with the mirror named a writable root, the sandbox keeps the git dir read-only.
    let sandboxed = strings(&[
        "exec",
        "--json",
        "-c",
        "sandbox_mode=\"workspace-write\"",
        "-c",
        &format!(
            "sandbox_workspace_write.writable_roots=[{:?}]",
            common.trim()
        ),
        "-",
    ]);
    let out = codex(&sb, &sandboxed, &env, TASK);
    assert_eq!(out.code, Some(0), "{}", out.report());
    assert_eq!(sb.commits(), ["Initial commit"]);
    let result = &server.model_requests()[1].tool_results[0];
    assert!(
        result.contains("index.lock': Read-only file system"),
        "{result}"
    );

    let out = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    assert_eq!(out.code, Some(0), "{}", out.report());
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
}

#[test]
fn codex_resume_continues_the_thread_with_the_earlier_conversation() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let first = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    assert_eq!(first.code, Some(0), "{}", first.report());
    let thread = first.thread_id();

    let out = codex(&sb, &clis::codex_resume_args(&thread), &env, REVIEW);
    capture(
        Cli::Codex,
        "resume",
        "jsonl",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE); a first run in the same thread made requests 1-2",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    assert_eq!(out.thread_id(), thread, "resume keeps the thread id");
    assert_eq!(out.items_of("command_execution")[0]["exit_code"], 0);
    assert_eq!(
        sb.commits(),
        ["Add HELLO.md", "Add HELLO.md", "Initial commit"]
    );
    let requests = server.model_requests();
    assert_eq!(requests.len(), 4, "{}", server.log_text());
    let resumed = &requests[2];
    assert_eq!(resumed.session.as_deref(), Some(thread.as_str()));
    assert!(resumed.prompt_contains("Add a line to HELLO.md"));
    assert_eq!(resumed.user_text, REVIEW);
    assert!(resumed.assistant_texts.iter().any(|t| t == DONE));
    // Usage is the thread's total, not the turn's: twice the first run's.
    let usage = |o: &Outcome| o.events_of("turn.completed")[0]["usage"]["input_tokens"].clone();
    assert_eq!(usage(&out), json!(usage(&first).as_u64().unwrap_or(0) * 2));
}

#[test]
fn codex_resume_does_not_keep_the_sandbox_mode_of_the_first_run() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let first = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    assert_eq!(first.code, Some(0), "{}", first.report());
    let args = strings(&["exec", "resume", "--json", &first.thread_id(), "-"]);
    let out = codex(&sb, &args, &env, REVIEW);

    assert_eq!(out.code, Some(0), "{}", out.report());
    assert_eq!(
        sb.commits(),
        ["Add HELLO.md", "Initial commit"],
        "read-only again"
    );
    let result = &server.model_requests()[3].tool_results[0];
    assert!(result.contains("Read-only file system"), "{result}");
}

#[test]
fn codex_401_without_retries_fails_with_unexpected_status_401() {
    let server = ModelServer::start(Script::always(Reply::unauthorized()));
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let out = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    capture(
        Cli::Codex,
        "auth-401",
        "jsonl",
        &out,
        Some(&server),
        "always 401 {\"error\":{\"type\":\"invalid_request_error\",\"code\":\"invalid_api_key\",\"message\":\"invalid x-api-key\"}}",
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    let expected = format!(
        "unexpected status 401 Unauthorized: invalid x-api-key, url: {}/responses, request id: req_fake00000001",
        server.openai_base_url()
    );
    assert_eq!(out.events_of("error")[0]["message"], expected.as_str());
    assert_eq!(
        out.events_of("turn.failed")[0]["error"]["message"],
        expected.as_str()
    );
    assert_eq!(server.count(), 1);
}

#[test]
fn codex_retries_a_401_like_a_transient_error_when_reconnects_are_allowed() {
    let server = ModelServer::start(Script::always(Reply::unauthorized()));
    let sb = Sandbox::new(RunAs::current());
    let retries = CodexRetries {
        request: Some(0),
        stream: Some(2),
    };
    let env = sb.codex_env(&server, retries);
    let out = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    capture(
        Cli::Codex,
        "auth-401-reconnects",
        "jsonl",
        &out,
        Some(&server),
        "always 401 (config: request_max_retries = 0, stream_max_retries = 2)",
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    let errors: Vec<String> = out
        .events_of("error")
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(errors.len(), 3, "{}", out.report());
    assert!(errors[0].starts_with("Reconnecting... 1/2 (unexpected status 401 Unauthorized"));
    assert!(errors[1].starts_with("Reconnecting... 2/2 (unexpected status 401 Unauthorized"));
    assert!(errors[2].starts_with("unexpected status 401 Unauthorized"));
    assert_eq!(server.count(), 3);
}

#[test]
fn codex_usage_limit_prints_the_reset_time_and_is_not_retried() {
    let resets_at = reset_in_hours(3);
    let server = ModelServer::start(Script::always(Reply::usage_limit(resets_at)));
    let sb = Sandbox::new(RunAs::current());
    // Codex's default retries: usage_limit_reached is not retryable.
    let env = sb.codex_env(&server, CodexRetries::DEFAULT);
    let out = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    capture(
        Cli::Codex,
        "usage-limit-429",
        "jsonl",
        &out,
        Some(&server),
        &format!(
            "always 429 {{\"error\":{{\"type\":\"usage_limit_reached\",\"resets_at\":{resets_at},\"resets_in_seconds\":…}}}} (default retries)"
        ),
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    let expected = format!(
        "You\u{2019}ve hit your usage limit. Try again at {}.",
        codex_reset_text(resets_at)
    );
    assert_eq!(
        out.events_of("error")[0]["message"],
        expected.as_str(),
        "{}",
        out.report()
    );
    assert_eq!(
        out.events_of("turn.failed")[0]["error"]["message"],
        expected.as_str()
    );
    assert_eq!(server.count(), 1, "not retried: {}", server.log_text());
}

#[test]
fn codex_usage_limit_on_another_day_prints_the_date_of_the_reset() {
    let resets_at = reset_in_hours(50);
    let server = ModelServer::start(Script::always(Reply::weekly_limit(resets_at)));
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let out = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    capture(
        Cli::Codex,
        "usage-limit-429-days-away",
        "jsonl",
        &out,
        Some(&server),
        &format!(
            "always 429 {{\"error\":{{\"type\":\"usage_limit_reached\",\"resets_at\":{resets_at},\"resets_in_seconds\":…}}}} (50 h ahead)"
        ),
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    let expected = format!(
        "You\u{2019}ve hit your usage limit. Try again at {}.",
        codex_reset_text(resets_at)
    );
    assert_eq!(
        out.events_of("turn.failed")[0]["error"]["message"],
        expected.as_str(),
        "{}",
        out.report()
    );
}

#[test]
fn codex_500_without_retries_fails_with_the_high_demand_message() {
    let server = ModelServer::start(Script::always(Reply::server_error()));
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let out = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    capture(
        Cli::Codex,
        "server-error-500",
        "jsonl",
        &out,
        Some(&server),
        "always 500 {\"error\":{\"type\":\"server_error\",\"message\":\"Internal server error\"}}",
    );

    assert_eq!(out.code, Some(1), "{}", out.report());
    let expected =
        "We\u{2019}re currently experiencing high demand, which may cause temporary errors.";
    assert_eq!(
        out.events_of("turn.failed")[0]["error"]["message"],
        expected
    );
    assert_eq!(server.count(), 1);
}

#[test]
fn codex_retries_a_500_silently_with_request_retries_and_succeeds() {
    let server = ModelServer::start(Script::fail_first(
        2,
        Reply::server_error(),
        commit_script(),
    ));
    let sb = Sandbox::new(RunAs::current());
    let retries = CodexRetries {
        request: Some(2),
        stream: Some(0),
    };
    let env = sb.codex_env(&server, retries);
    let out = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    capture(
        Cli::Codex,
        "server-error-500-then-success",
        "jsonl",
        &out,
        Some(&server),
        "fail_first(2, 500, shell_then_text(COMMIT, DONE)) (config: request_max_retries = 2, stream_max_retries = 0)",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    assert!(
        out.events_of("error").is_empty(),
        "request retries are silent: {}",
        out.report()
    );
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
    assert_eq!(server.count(), 4, "{}", server.log_text());
}

#[test]
fn codex_retries_a_500_with_visible_reconnects_and_succeeds() {
    let server = ModelServer::start(Script::fail_first(
        2,
        Reply::server_error(),
        commit_script(),
    ));
    let sb = Sandbox::new(RunAs::current());
    let retries = CodexRetries {
        request: Some(0),
        stream: Some(2),
    };
    let env = sb.codex_env(&server, retries);
    let out = codex(&sb, &clis::codex_exec_args(), &env, TASK);
    capture(
        Cli::Codex,
        "server-error-500-then-success-reconnects",
        "jsonl",
        &out,
        Some(&server),
        "fail_first(2, 500, shell_then_text(COMMIT, DONE)) (config: request_max_retries = 0, stream_max_retries = 2)",
    );

    assert_eq!(out.code, Some(0), "{}", out.report());
    let errors = out.events_of("error");
    assert_eq!(errors.len(), 2, "{}", out.report());
    assert_eq!(
        errors[0]["message"],
        "Reconnecting... 1/2 (We\u{2019}re currently experiencing high demand, which may cause temporary errors.)"
    );
    assert_eq!(sb.commits(), ["Add HELLO.md", "Initial commit"]);
    assert_eq!(server.count(), 4, "{}", server.log_text());
}

#[test]
fn codex_rejects_full_auto_as_an_unknown_argument_with_exit_2() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let args = strings(&["exec", "--json", "--full-auto", "-"]);
    let out = codex(&sb, &args, &env, TASK);
    capture(
        Cli::Codex,
        "unknown-argument",
        "txt",
        &out,
        Some(&server),
        "shell_then_text(COMMIT, DONE) (never asked)",
    );

    assert_eq!(out.code, Some(2), "{}", out.report());
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr
            .contains("error: unexpected argument '--full-auto' found"),
        "{}",
        out.report()
    );
    assert_eq!(server.count(), 0);
}

#[test]
fn codex_resume_rejects_the_sandbox_flag_with_exit_2() {
    let server = ModelServer::start(commit_script());
    let sb = Sandbox::new(RunAs::current());
    let env = sb.codex_env(&server, CodexRetries::NONE);
    let args = strings(&[
        "exec",
        "resume",
        "--json",
        "-s",
        "workspace-write",
        "01a23820-9a4b-77c0-ad06-190831d5857a",
        "-",
    ]);
    let out = codex(&sb, &args, &env, TASK);
    capture(
        Cli::Codex,
        "resume-unknown-argument",
        "txt",
        &out,
        Some(&server),
        "none asked",
    );

    assert_eq!(out.code, Some(2), "{}", out.report());
    assert!(
        out.stderr.contains("error: unexpected argument '-s' found"),
        "{}",
        out.report()
    );
}

#[test]
fn codex_missing_from_the_path_is_exit_127_from_the_shell() {
    let sb = Sandbox::new(RunAs::current());
    let out = missing_cli(&sb, "codex exec --json - < ../prompt.md");
    capture(
        Cli::Codex,
        "cli-missing",
        "txt",
        &out,
        None,
        "none (no server)",
    );
    assert_eq!(out.code, Some(127), "{}", out.report());
    assert_eq!(out.stderr.trim(), "sh: 1: codex: not found");
}

// ---- the fake model server itself -----------------------------------------------------------

/// One HTTP/1.1 request over a fresh connection; the whole answer (bounded by a read timeout).
fn http(server: &ModelServer, method: &str, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    answer
}

#[test]
fn fake_model_logs_and_answers_404_to_what_it_does_not_know() {
    let server = ModelServer::start(Script::text("hi"));
    let answer = http(&server, "GET", "/v1/models", "");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains(r#""code":"not_found""#), "{answer}");
    let head = http(&server, "HEAD", "/", "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(server.count(), 0);
    let unknown = server.unknown_requests();
    assert_eq!(unknown.len(), 1, "{}", server.log_text());
    assert_eq!(
        (unknown[0].method.as_str(), unknown[0].path.as_str()),
        ("GET", "/v1/models")
    );
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn fake_model_holds_a_slow_answer_back_for_its_delay() {
    let server = ModelServer::start(Script::always(
        Reply::text("slow").delayed(Duration::from_millis(400)),
    ));
    let started = Instant::now();
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let answer = http(&server, "POST", "/v1/messages?beta=true", body);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(answer.contains("event: message_start"), "{answer}");
    assert!(answer.contains(r#""text":"slow""#), "{answer}");
    assert_eq!(server.model_requests()[0].user_text, "hi");
}

#[test]
fn fake_model_sends_usage_limits_with_reset_headers_and_body() {
    let resets_at = reset_in_hours(2);
    let server = ModelServer::start(Script::always(Reply::usage_limit(resets_at)));
    let anthropic = http(&server, "POST", "/v1/messages", r#"{"messages":[]}"#);
    assert!(anthropic.starts_with("HTTP/1.1 429"), "{anthropic}");
    assert!(anthropic.contains(&format!("anthropic-ratelimit-unified-reset: {resets_at}")));
    assert!(anthropic.contains("anthropic-ratelimit-unified-status: rejected"));
    assert!(anthropic.contains(&format!(
        "anthropic-ratelimit-requests-reset: {}",
        model::rfc3339(resets_at)
    )));
    assert!(anthropic.contains(r#""type":"rate_limit_error""#));
    let openai = http(&server, "POST", "/v1/responses", r#"{"input":[]}"#);
    assert!(openai.starts_with("HTTP/1.1 429"), "{openai}");
    assert!(
        openai.contains(r#""type":"usage_limit_reached""#),
        "{openai}"
    );
    assert!(
        openai.contains(&format!(r#""resets_at":{resets_at}"#)),
        "{openai}"
    );
    assert_eq!(server.count(), 2);
}
