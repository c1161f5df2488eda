//! The built-in `claude` and `codex` agent kinds end to end, as shipped: the real daemon runs
//! the real, unmodified CLIs (npm, pinned in `scripts/agent-clis.txt`, installed by
//! `scripts/test`) with the built-in templates, against the fake model server of
//! `tests/support/model.rs` on loopback. Each behaviour is tested for both CLIs: a completed
//! task with a verified receipt (on localhost as root, and on a real sshd host as a non-root
//! agent user), a permission problem, an authentication failure, a server error retried, a
//! usage limit pausing the kind, a SIGKILL of the daemon mid-run, and `task retry` resuming
//! the real session. The model server's request log is the proof of what each CLI really did.

#[path = "support/clis.rs"]
mod clis;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/forgejo.rs"]
mod forgejo;
#[path = "support/model.rs"]
mod model;
#[path = "support/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clis::{ClaudeAuth, Cli, CodexRetries};
use daemon::{Fleet, Setup, eventually, story};
use forgejo::{FakeForgejo, ReviewKind};
use model::{ModelServer, Reply, Script};
use serde_json::{Value, json};
use sshd::{ClientKey, Sshd};

/// What the fake model's shell call runs: the agent's work, committed.
const COMMIT: &str = "echo hello >> HELLO.md && git add HELLO.md && git commit -qm 'Add HELLO.md'";
const DONE: &str = "Done: committed HELLO.md.";
/// The API key the agents get from the daemon's environment (`env_from`), never written down.
const SECRET_KEY: &str = "sk-secret-e2e-5f0c2a9b71d4";
const LONG: Duration = Duration::from_secs(120);
const FORGE_TOKEN: &str = "e2e-forge-token-real-cli";
const FORGE_SECRET: &str = "e2e-webhook-secret-real-cli";
const REPO: &str = "acme/widgets";

fn commit_script() -> Script {
    Script::shell_then_text(COMMIT, DONE)
}

/// Where the agent runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// `hostname = "localhost"`: local processes of the daemon's user (root in CI).
    Local,
    /// A real sshd on 127.0.0.2, logged into as the unprivileged test user.
    SshNonRoot,
}

struct Options {
    cli: Cli,
    script: Script,
    place: Place,
    max_retries: u32,
    /// Replaces the built-in kind's cli_template (and drops its resume template).
    template: Option<String>,
    /// Claude Code: a subscription token instead of the API key (usage limits tell a reset).
    claude_auth: ClaudeAuth,
    usage_limit_pause: &'static str,
    /// Tasks come from issues of a fake Forgejo (`REPO`) and end with a merged PR.
    forge: bool,
}

impl Options {
    fn new(cli: Cli, script: Script) -> Options {
        Options {
            cli,
            script,
            place: Place::Local,
            max_retries: 0,
            template: None,
            claude_auth: ClaudeAuth::ApiKey,
            usage_limit_pause: "15m",
            forge: false,
        }
    }
}

struct Rig {
    model: ModelServer,
    forge: Option<FakeForgejo>,
    /// Stopped before the fleet's directory goes.
    _servers: Vec<Sshd>,
    fleet: Fleet,
    cli: Cli,
}

/// The directory holding the CLI (for the daemon's and the SSH sessions' `PATH`).
fn cli_dir(cli: Cli) -> PathBuf {
    cli.path()
        .parent()
        .expect("the CLI is in a directory")
        .to_path_buf()
}

fn toml_table(pairs: &[(String, String)]) -> String {
    let items: Vec<String> = pairs.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The test user may log in over SSH (sshd without PAM refuses a locked account).
fn unlock_test_user() -> (u32, u32) {
    let ids = clis::ensure_test_user();
    let out = std::process::Command::new("usermod")
        .args(["-p", "*", clis::TEST_USER])
        .output()
        .expect("run usermod");
    assert!(
        out.status.success(),
        "usermod: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ids
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
}

impl Rig {
    async fn start(o: Options) -> Rig {
        let model = ModelServer::start(o.script);
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        // Reachable by the agent user (its HOME, the origin repository, its work root).
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let home = root.join("agent-home");
        std::fs::create_dir_all(&home).expect("mkdir");
        let user = match o.place {
            Place::Local => None,
            Place::SshNonRoot => Some(unlock_test_user()),
        };

        // The kind's environment: how the CLI finds the fake model, a git identity, and the
        // key from the daemon's environment.
        let (mut env, key_var) = match o.cli {
            Cli::Claude => {
                let env = clis::claude_env(&model.url(), &home, o.claude_auth, Some(0));
                let var = match o.claude_auth {
                    ClaudeAuth::ApiKey => "ANTHROPIC_API_KEY",
                    ClaudeAuth::OAuthToken => "CLAUDE_CODE_OAUTH_TOKEN",
                };
                (env, var)
            }
            Cli::Codex => {
                // Out of /tmp: there Codex warns on every run.
                let codex_home = Path::new(env!("CARGO_TARGET_TMPDIR"))
                    .join(format!("codex-home-{}", std::process::id()))
                    .join(root.file_name().expect("temp dir name"));
                let env = clis::write_codex_home(
                    &codex_home,
                    &home,
                    &model.openai_base_url(),
                    CodexRetries::NONE,
                );
                if let Some(ids) = user {
                    for d in codex_home.ancestors().take(2) {
                        chown(d, ids);
                    }
                    chown(&codex_home.join("config.toml"), ids);
                }
                (env, clis::CODEX_KEY_ENV)
            }
        };
        env.retain(|(k, _)| k != key_var);
        for (k, v) in [
            ("GIT_AUTHOR_NAME", "Agent"),
            ("GIT_AUTHOR_EMAIL", "agent@example.com"),
            ("GIT_COMMITTER_NAME", "Agent"),
            ("GIT_COMMITTER_EMAIL", "agent@example.com"),
        ] {
            env.push((k.to_string(), v.to_string()));
        }
        let kind = o.cli.name();
        let mut agents = format!(
            "[[agents]]\nname = \"{kind}\"\nenv = {}\nenv_from = [\"{key_var}\"]\n",
            toml_table(&env)
        );
        if let Some(t) = &o.template {
            agents.push_str(&format!("cli_template = {t:?}\nresume_template = {t:?}\n"));
        }

        let path = format!(
            "{}:{}",
            cli_dir(o.cli).display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut servers = Vec::new();
        let hosts = match o.place {
            Place::Local => format!(
                "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"{kind}\"]\n\
                 max_concurrent = 1\nwork_root = \"{}\"\n",
                root.join("work").display()
            ),
            Place::SshNonRoot => {
                let ids = user.expect("a user for the SSH host");
                chown(&home, ids);
                let hosts_dir = root.join("hosts");
                std::fs::create_dir_all(&hosts_dir).expect("mkdir");
                chown(&hosts_dir, ids);
                sshd::require_sshd();
                let gitconfig = root.join("agent-gitconfig");
                std::fs::write(&gitconfig, "[safe]\n\tdirectory = *\n").expect("write");
                let gitconfig = gitconfig.display().to_string();
                let key = ClientKey::generate(&root, "client");
                let server = Sshd::start(
                    &root.join("sshd"),
                    "alpha",
                    "127.0.0.2",
                    &key,
                    &[
                        ("PATH", path.as_str()),
                        // The origin repository belongs to root: git refuses another
                        // user's repository unless a protected (global) config allows it.
                        ("GIT_CONFIG_GLOBAL", gitconfig.as_str()),
                    ],
                );
                let known_hosts = root.join("known_hosts");
                sshd::known_hosts(&known_hosts, &[&server]);
                let entry = format!(
                    "[[hosts]]\nhost_id = \"alpha\"\nhostname = \"127.0.0.2\"\nport = {port}\n\
                     user = \"{user}\"\nkey_path = \"{key}\"\nknown_hosts = \"{kh}\"\n\
                     agents = [\"{kind}\"]\nmax_concurrent = 1\nwork_root = \"{work}\"\n",
                    port = server.port,
                    user = clis::TEST_USER,
                    key = key.private.display(),
                    kh = known_hosts.display(),
                    work = hosts_dir.join("alpha").display(),
                );
                servers.push(server);
                entry
            }
        };
        let mut env = vec![("PATH", path), (key_var, SECRET_KEY.to_string())];
        let forge = if o.forge {
            let forge = FakeForgejo::start(&root, FORGE_TOKEN);
            forge.create_repo("acme", "widgets").await;
            agents.push_str(&format!(
                "\n[forgejo]\nbase_url = \"{}\"\ntoken_env = \"E2E_FORGE_TOKEN\"\n\
                 webhook_secret_env = \"E2E_FORGE_SECRET\"\nrepos = [\"{REPO}\"]\n\
                 review_debounce = \"300ms\"\ndefault_agent = \"{kind}\"\n",
                forge.url()
            ));
            env.push(("E2E_FORGE_TOKEN", FORGE_TOKEN.to_string()));
            env.push(("E2E_FORGE_SECRET", FORGE_SECRET.to_string()));
            Some(forge)
        } else {
            None
        };
        let fleet = Fleet::start_in(
            dir,
            Setup {
                max_retries: o.max_retries,
                agent_timeout: "90s",
                hosts: Some(hosts),
                extra: agents,
                dispatch: format!("usage_limit_pause = \"{}\"\n", o.usage_limit_pause),
                env,
                ..Setup::default()
            },
        )
        .await;
        if let Some(forge) = &forge {
            forge.set_webhook(&fleet.api("/webhooks/forgejo"), FORGE_SECRET);
        }
        Rig {
            model,
            forge,
            _servers: servers,
            fleet,
            cli: o.cli,
        }
    }

    async fn submit(&self, title: &str) -> String {
        let (status, task) = self
            .fleet
            .post(
                "/tasks",
                json!({ "title": title, "body": "Add a line to HELLO.md and commit it.",
                        "agent": self.cli.name() }),
            )
            .await;
        assert_eq!(status, 201, "{task}");
        task["id"].as_str().expect("task id").to_string()
    }

    /// The id of the task of forge issue `source` (`owner/repo#n`), once there is one.
    async fn task_of(&self, source: &str) -> String {
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let (_, list) = self.fleet.get("/tasks").await;
            if let Some(id) = list["tasks"]
                .as_array()
                .and_then(|ts| ts.iter().find(|t| t["source"] == source))
                .and_then(|t| t["id"].as_str())
            {
                return id.to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no task for {source}:\n{}",
                self.fleet.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_end(&self, id: &str) -> Value {
        self.fleet
            .wait_for(id, LONG, |t| {
                matches!(t["status"].as_str(), Some("completed" | "failed"))
            })
            .await
    }

    /// The task, its story and the model's request log, for assertion messages.
    fn explain(&self, task: &Value) -> String {
        format!(
            "{}\nmodel requests:\n{}\nlog:\n{}",
            story(task),
            self.model.log_text(),
            self.fleet.log()
        )
    }

    /// The API key each model request carried.
    fn keys_seen(&self) -> Vec<String> {
        self.model
            .model_requests()
            .iter()
            .map(|r| {
                r.header("x-api-key")
                    .or(r.header("authorization"))
                    .unwrap_or("-")
                    .trim_start_matches("Bearer ")
                    .to_string()
            })
            .collect()
    }
}

fn runs(task: &Value) -> &Vec<Value> {
    task["runs"].as_array().expect("runs")
}

// ---- completed, with a verified receipt --------------------------------------------------

async fn completes_on_localhost(cli: Cli) {
    let rig = Rig::start(Options::new(cli, commit_script())).await;
    let id = rig.submit("Add HELLO.md").await;
    let task = rig.wait_end(&id).await;

    assert_eq!(task["status"], "completed", "{}", rig.explain(&task));
    let receipt = &task["receipt"];
    assert_eq!(receipt["commits"].as_array().map(Vec::len), Some(1));
    assert_eq!(receipt["files_changed"], json!(["HELLO.md"]));
    assert_eq!(runs(&task).len(), 1);
    assert_eq!(runs(&task)[0]["outcome"], "succeeded");
    assert!(runs(&task)[0]["session_id"].is_string(), "{}", story(&task));
    // One conversation, two turns (the shell call, then the answer to its result), with the
    // key the daemon passed through.
    assert_eq!(rig.model.sessions().len(), 1, "{}", rig.model.log_text());
    assert_eq!(rig.model.count(), 2, "{}", rig.model.log_text());
    assert!(
        rig.keys_seen().iter().all(|k| k == SECRET_KEY),
        "{:?}",
        rig.keys_seen()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_completes_a_task_with_a_verified_receipt_on_localhost() {
    completes_on_localhost(Cli::Claude).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_completes_a_task_with_a_verified_receipt_on_localhost() {
    completes_on_localhost(Cli::Codex).await;
}

async fn completes_over_ssh_as_a_non_root_user(cli: Cli) {
    let mut o = Options::new(cli, commit_script());
    o.place = Place::SshNonRoot;
    let rig = Rig::start(o).await;
    let id = rig.submit("Add HELLO.md over SSH").await;
    let task = rig.wait_end(&id).await;

    assert_eq!(task["status"], "completed", "{}", rig.explain(&task));
    assert_eq!(task["assigned_host"], "alpha");
    assert_eq!(task["receipt"]["files_changed"], json!(["HELLO.md"]));
    // The work directory (and the commit in it) belongs to the agent user.
    let ids = clis::ensure_test_user();
    let run_dir = runs(&task)[0]["run_dir"].as_str().expect("run_dir");
    let meta = std::fs::metadata(run_dir).expect("run dir on the host");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        ids.0,
        "{run_dir}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_completes_a_task_on_an_ssh_host_as_a_non_root_agent_user() {
    completes_over_ssh_as_a_non_root_user(Cli::Claude).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_completes_a_task_on_an_ssh_host_as_a_non_root_agent_user() {
    completes_over_ssh_as_a_non_root_user(Cli::Codex).await;
}

// ---- the key passed through is nowhere but in the agent's environment -------------------

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            found.extend(files_containing(&p, needle));
        } else if ft.is_file()
            && std::fs::read(&p)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            found.push(p);
        }
    }
    found
}

/// Command lines of every process of this machine containing `needle`.
fn processes_showing(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && cmd.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            found.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    found
}

async fn key_passes_through_unseen(cli: Cli) {
    // The first answer is slow: the agent is running while the process table is read.
    let script = Script::queue(
        vec![Reply::shell(COMMIT).delayed(Duration::from_secs(2))],
        commit_script(),
    );
    let rig = Rig::start(Options::new(cli, script)).await;
    let id = rig.submit("Add HELLO.md, secretly").await;
    assert!(
        eventually(LONG, || rig.model.count() >= 1).await,
        "{}",
        rig.fleet.log()
    );
    assert_eq!(processes_showing(SECRET_KEY), Vec::<String>::new());
    let task = rig.wait_end(&id).await;
    assert_eq!(task["status"], "completed", "{}", rig.explain(&task));

    assert!(rig.keys_seen().iter().all(|k| k == SECRET_KEY));
    assert_eq!(
        files_containing(&rig.fleet.path("work"), SECRET_KEY),
        Vec::<PathBuf>::new()
    );
    assert!(!rig.fleet.log().contains(SECRET_KEY));
    let (_, full) = rig.fleet.get(&format!("/tasks/{id}?events=true")).await;
    assert!(!full.to_string().contains(SECRET_KEY));
    let (_, hosts) = rig.fleet.get("/hosts").await;
    assert!(!hosts.to_string().contains(SECRET_KEY));
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_key_from_the_daemon_reaches_the_cli_and_no_file_log_api_or_process_list() {
    key_passes_through_unseen(Cli::Claude).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_key_from_the_daemon_reaches_the_cli_and_no_file_log_api_or_process_list() {
    key_passes_through_unseen(Cli::Codex).await;
}

// ---- failures: permission, auth, transient, usage limit ---------------------------------

/// `once`: the failure is known to be a refused permission (not retried); otherwise it shows
/// only as a missing commit, which is retried like any run that delivered nothing.
async fn permission_problem(cli: Cli, template: &str, says: &str, once: bool) {
    let mut o = Options::new(cli, commit_script());
    o.template = Some(template.to_string());
    o.max_retries = 2;
    let rig = Rig::start(o).await;
    let id = rig.submit("Add HELLO.md without permission").await;
    let task = rig.wait_end(&id).await;

    assert_eq!(task["status"], "failed", "{}", rig.explain(&task));
    let failure = task["failure"].as_str().unwrap_or_default();
    assert!(failure.contains(says), "{failure}");
    assert!(task["receipt"].is_null());
    if once {
        // Not retried: the next attempt would be refused the same way.
        assert_eq!(runs(&task).len(), 1, "{}", rig.explain(&task));
        assert_eq!(runs(&task)[0]["failure_kind"], "permission");
    }
    assert!(rig.model.count() >= 1, "the agent never asked the model");
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_without_allowed_tools_fails_once_naming_the_template_flag() {
    let template = "claude -p --output-format json --permission-mode acceptEdits < {prompt_file}";
    permission_problem(Cli::Claude, template, "--allowedTools", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_sandbox_that_keeps_git_read_only_fails_saying_why_no_commit_was_made() {
    let template = "codex exec --json -c 'sandbox_mode=\"workspace-write\"' - < {prompt_file}";
    permission_problem(Cli::Codex, template, "sandbox", false).await;
}

async fn auth_failure(cli: Cli) {
    let mut o = Options::new(cli, Script::always(Reply::unauthorized()));
    o.max_retries = 3;
    let rig = Rig::start(o).await;
    let id = rig.submit("Add HELLO.md with a bad key").await;
    let task = rig.wait_end(&id).await;

    assert_eq!(task["status"], "failed", "{}", rig.explain(&task));
    assert_eq!(runs(&task).len(), 1, "{}", rig.explain(&task));
    assert_eq!(runs(&task)[0]["failure_kind"], "auth");
    assert_eq!(rig.model.count(), 1, "{}", rig.model.log_text());
    let failure = task["failure"].as_str().unwrap_or_default();
    assert!(failure.to_lowercase().contains("key"), "{failure}");
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_auth_failure_fails_at_once_after_one_attempt() {
    auth_failure(Cli::Claude).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_auth_failure_fails_at_once_after_one_attempt() {
    auth_failure(Cli::Codex).await;
}

async fn server_error_then_success(cli: Cli) {
    let mut o = Options::new(
        cli,
        Script::fail_first(1, Reply::server_error(), commit_script()),
    );
    o.max_retries = 2;
    let rig = Rig::start(o).await;
    let id = rig.submit("Add HELLO.md despite a 500").await;
    let task = rig.wait_end(&id).await;

    assert_eq!(task["status"], "completed", "{}", rig.explain(&task));
    assert_eq!(runs(&task).len(), 2, "{}", rig.explain(&task));
    assert_eq!(runs(&task)[0]["failure_kind"], "transient");
    assert_eq!(runs(&task)[1]["outcome"], "succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_server_error_is_retried_and_the_task_completes() {
    server_error_then_success(Cli::Claude).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_server_error_is_retried_and_the_task_completes() {
    server_error_then_success(Cli::Codex).await;
}

async fn usage_limit_pauses_then_resumes(cli: Cli) {
    let mut o = Options::new(
        cli,
        Script::queue(
            vec![Reply::usage_limit_in(Duration::from_secs(3))],
            commit_script(),
        ),
    );
    // Claude tells the reset time on a subscription only.
    o.claude_auth = ClaudeAuth::OAuthToken;
    // Used when the reset the CLI printed (to the minute) is already past.
    o.usage_limit_pause = "3s";
    // No attempt to spend: a usage limit must not use one.
    o.max_retries = 0;
    let rig = Rig::start(o).await;
    let id = rig.submit("Add HELLO.md after the limit").await;

    // The kind is paused on the host, visible in GET /hosts.
    let mut seen_paused = false;
    let deadline = std::time::Instant::now() + LONG;
    while std::time::Instant::now() < deadline {
        let (_, hosts) = rig.fleet.get("/hosts").await;
        if hosts.to_string().contains("paused_until\":\"") {
            seen_paused = true;
            break;
        }
        let task = rig.fleet.task(&id).await;
        if task["status"] == "completed" || task["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let task = rig.wait_end(&id).await;

    assert_eq!(task["status"], "completed", "{}", rig.explain(&task));
    assert_eq!(runs(&task).len(), 2, "{}", rig.explain(&task));
    assert_eq!(runs(&task)[0]["failure_kind"], "usage_limit");
    assert!(
        runs(&task)[0]["paused_until"].is_string(),
        "{}",
        story(&task)
    );
    assert!(seen_paused, "GET /hosts never showed the pause");
    // The limited request was not retried by the CLI: 1 + the two turns of the success.
    assert_eq!(rig.model.count(), 3, "{}", rig.model.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_usage_limit_pauses_the_kind_then_completes_without_spending_an_attempt() {
    usage_limit_pauses_then_resumes(Cli::Claude).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_usage_limit_pauses_the_kind_then_completes_without_spending_an_attempt() {
    usage_limit_pauses_then_resumes(Cli::Codex).await;
}

// ---- durability and sessions --------------------------------------------------------------

async fn sigkill_mid_run(cli: Cli) {
    let script = Script::queue(
        vec![Reply::shell(COMMIT).delayed(Duration::from_secs(3))],
        commit_script(),
    );
    let mut rig = Rig::start(Options::new(cli, script)).await;
    let id = rig.submit("Add HELLO.md across a crash").await;
    assert!(
        eventually(LONG, || rig.model.count() >= 1).await,
        "{}",
        rig.fleet.log()
    );
    rig.fleet.kill();
    rig.fleet.spawn().await;
    let task = rig.wait_end(&id).await;

    assert_eq!(task["status"], "completed", "{}", rig.explain(&task));
    assert_eq!(runs(&task).len(), 1, "{}", rig.explain(&task));
    // Exactly one launch: one conversation of two turns.
    assert_eq!(rig.model.sessions().len(), 1, "{}", rig.model.log_text());
    assert_eq!(rig.model.count(), 2, "{}", rig.model.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_daemon_sigkill_mid_run_launches_the_agent_exactly_once() {
    sigkill_mid_run(Cli::Claude).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_daemon_sigkill_mid_run_launches_the_agent_exactly_once() {
    sigkill_mid_run(Cli::Codex).await;
}

/// The first conversation only talks (no commit: the receipt is refused); any later request
/// does the work.
fn lazy_then_working() -> Script {
    Script::new(|req| {
        if req.model_request == 1 {
            Reply::text("I looked at the repository.")
        } else if req.has_tool_result() {
            Reply::text(DONE)
        } else {
            Reply::shell(COMMIT)
        }
    })
}

async fn retry_resumes_the_session(cli: Cli, fresh: bool) {
    let rig = Rig::start(Options::new(cli, lazy_then_working())).await;
    let id = rig.submit("Add HELLO.md, eventually").await;
    let task = rig.wait_end(&id).await;
    assert_eq!(task["status"], "failed", "{}", rig.explain(&task));
    let first = runs(&task)[0]["session_id"]
        .as_str()
        .expect("the first run's session")
        .to_string();

    let (status, body) = rig
        .fleet
        .post(&format!("/tasks/{id}/retry"), json!({ "fresh": fresh }))
        .await;
    assert!(status < 300, "{status} {body}");
    let task = rig
        .fleet
        .wait_for(&id, LONG, |t| {
            runs(t).len() == 2 && matches!(t["status"].as_str(), Some("completed" | "failed"))
        })
        .await;

    assert_eq!(task["status"], "completed", "{}", rig.explain(&task));
    let second = runs(&task)[1]["session_id"].as_str().expect("session");
    let sessions = rig.model.sessions();
    if fresh {
        assert_ne!(second, first);
        assert_eq!(sessions.len(), 2, "{}", rig.model.log_text());
    } else {
        assert_eq!(second, first, "{}", rig.explain(&task));
        assert_eq!(sessions, [Some(first.clone())], "{}", rig.model.log_text());
        // The resumed conversation carries the first turn and says what failed.
        let resumed = rig.model.model_requests()[1].clone();
        assert!(
            resumed.prompt_contains("made no commit"),
            "{:?}",
            resumed.user_texts
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_task_retry_resumes_the_real_session_saying_what_failed() {
    retry_resumes_the_session(Cli::Claude, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_task_retry_resumes_the_real_session_saying_what_failed() {
    retry_resumes_the_session(Cli::Codex, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_task_retry_fresh_starts_a_new_session() {
    retry_resumes_the_session(Cli::Claude, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_task_retry_fresh_starts_a_new_session() {
    retry_resumes_the_session(Cli::Codex, true).await;
}

async fn review_round_resumes_the_session(cli: Cli) {
    let mut o = Options::new(cli, commit_script());
    o.forge = true;
    let rig = Rig::start(o).await;
    let forge = rig.forge.as_ref().expect("the forge");
    let n = forge
        .open_issue(
            REPO,
            "Add HELLO.md",
            "Add a line to HELLO.md and commit it.",
            &["agent-fleet"],
        )
        .await;
    let id = rig.task_of(&format!("{REPO}#{n}")).await;
    let t = rig
        .fleet
        .wait_for(&id, LONG, |t| t["status"] == "review_pending")
        .await;
    let pr = t["pr_number"].as_u64().expect("a pull request");

    forge
        .review(
            REPO,
            pr,
            ReviewKind::RequestChanges,
            "Please add a second line.",
            vec![],
        )
        .await;
    let t = rig
        .fleet
        .wait_for(&id, LONG, |t| {
            runs(t).len() == 2 && t["status"] == "review_pending"
        })
        .await;
    let first = runs(&t)[0]["session_id"].as_str().expect("session");
    assert_eq!(runs(&t)[1]["session_id"], first, "{}", rig.explain(&t));
    assert_eq!(
        rig.model.sessions(),
        [Some(first.to_string())],
        "{}",
        rig.model.log_text()
    );
    assert!(
        !rig.model
            .requests_with_prompt("Please add a second line.")
            .is_empty(),
        "{}",
        rig.model.log_text()
    );

    forge
        .review(REPO, pr, ReviewKind::Approve, "LGTM", vec![])
        .await;
    forge.merge(REPO, pr).await;
    let t = rig
        .fleet
        .wait_for(&id, LONG, |t| t["status"] == "completed")
        .await;
    assert_eq!(t["pr_merged"], true, "{}", story(&t));
    assert!(forge.violations().is_empty(), "{:#?}", forge.violations());
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_review_round_resumes_the_real_session_with_the_feedback() {
    review_round_resumes_the_session(Cli::Claude).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_review_round_resumes_the_real_session_with_the_feedback() {
    review_round_resumes_the_session(Cli::Codex).await;
}
