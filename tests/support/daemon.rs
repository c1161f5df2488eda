//! A real `agent-fleet serve` for end-to-end tests: a temp directory with an origin git
//! repository, a config (localhost host, the demo agent), the daemon process (restartable,
//! SIGKILL-able) and an HTTP client for its API.

#![allow(dead_code)] // each includer uses a part of it

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_agent-fleet");
pub const TOKEN: &str = "e2e-admin-token";
/// The registration token the daemon gets in `E2E_FLEET_REGISTRATION_TOKEN` (used when the
/// config names that variable in `server.registration_token_env`, see [`Setup::server`]).
pub const REGISTRATION_TOKEN: &str = "e2e-registration-token";
pub const DEMO_AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo-agent");
/// An `[[agents]]` entry of a kind no host offers (pull agents may register for it): its tasks
/// wait for a pull agent and, without one, nothing is cloned.
pub const REMOTE_AGENT: &str = r#"
[[agents]]
name = "remote"
cli_template = "remote {prompt_file}"
output_format = "raw"
"#;

/// Options of the test fleet's config.
pub struct Setup {
    pub max_retries: u32,
    pub retry_backoff: &'static str,
    pub agent_timeout: &'static str,
    pub body_limit: usize,
    /// `[[hosts]]` entries replacing the default local host.
    pub hosts: Option<String>,
    /// More config text (e.g. `[health]`, `[ssh]`, `[[agents]]`).
    pub extra: String,
    /// More `[dispatch]` keys (`undecided_timeout = "1s"`…).
    pub dispatch: String,
    /// More `[server]` keys (`registration_token_env = "E2E_FLEET_REGISTRATION_TOKEN"`…).
    pub server: String,
    /// More `[storage]` keys (`retention = "2s"`…).
    pub storage: String,
    /// More environment variables of the daemon (e.g. the forge's token and webhook secret).
    pub env: Vec<(&'static str, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            max_retries: 0,
            retry_backoff: "200ms",
            agent_timeout: "60s",
            body_limit: 1 << 20,
            hosts: None,
            extra: String::new(),
            dispatch: String::new(),
            server: String::new(),
            storage: String::new(),
            env: Vec::new(),
        }
    }
}

pub struct Fleet {
    pub dir: TempDir,
    pub config: PathBuf,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    pub url: String,
    pub http: reqwest::Client,
    env: Vec<(&'static str, String)>,
}

/// Runs `git -C dir args…` with a throw-away identity; panics when it fails.
pub fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
        .arg(dir)
        .args(args)
        .status()
        .expect("git")
        .success();
    assert!(ok, "git {args:?}");
}

impl Fleet {
    pub async fn start(setup: Setup) -> Fleet {
        Fleet::start_in(tempfile::tempdir().unwrap(), setup).await
    }

    /// Starts a fleet in `dir` (made beforehand, e.g. to point SSH hosts' environment at it).
    pub async fn start_in(dir: TempDir, setup: Setup) -> Fleet {
        let origin = dir.path().join("origin");
        std::fs::create_dir(&origin).unwrap();
        git(&origin, &["init", "-q", "-b", "main"]);
        std::fs::write(origin.join("README.md"), "# widgets\n").unwrap();
        git(&origin, &["add", "README.md"]);
        git(&origin, &["commit", "-q", "-m", "initial"]);
        let config = dir.path().join("fleet.toml");
        let text = format!(
            r#"[server]
listen = "127.0.0.1:0"
admin_token_env = "E2E_FLEET_TOKEN"
body_limit = {body_limit}
{server}

[storage]
path = "{store}"
{storage}

[dispatch]
max_retries = {max_retries}
retry_backoff = "{retry_backoff}"
default_repo = "{origin}"
{dispatch}

[[agents]]
name = "demo"
cli_template = "{agent} --prompt-file {{prompt_file}}"
resume_template = "{agent} --prompt-file {{prompt_file}} --resume {{session_id}}"
output_format = "claude-json"
timeout = "{timeout}"

{hosts}
{extra}
"#,
            body_limit = setup.body_limit,
            store = dir.path().join("data/fleet.redb").display(),
            max_retries = setup.max_retries,
            retry_backoff = setup.retry_backoff,
            origin = origin.display(),
            agent = DEMO_AGENT,
            timeout = setup.agent_timeout,
            hosts = setup.hosts.clone().unwrap_or_else(|| format!(
                "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"demo\"]\nmax_concurrent = 2\nwork_root = \"{}\"\n",
                dir.path().join("work").display()
            )),
            extra = setup.extra,
            dispatch = setup.dispatch,
            server = setup.server,
            storage = setup.storage,
        );
        std::fs::write(&config, text).unwrap();
        let mut fleet = Fleet {
            dir,
            config,
            child: None,
            stderr: Arc::new(Mutex::new(String::new())),
            url: String::new(),
            http: reqwest::Client::new(),
            env: setup.env.clone(),
        };
        fleet.spawn().await;
        fleet
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Starts the daemon and waits until it is ready.
    pub async fn spawn(&mut self) {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env("E2E_FLEET_TOKEN", TOKEN)
            .env("E2E_FLEET_REGISTRATION_TOKEN", REGISTRATION_TOKEN)
            .env("RUST_LOG", "info")
            .env("DEMO_AGENT_LAUNCHES", self.path("launches"))
            .env("DEMO_AGENT_PIDFILE", self.path("agent.pid"))
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent-fleet serve");
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::new(Mutex::new(String::new()));
        self.stderr = sink.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("agent-fleet listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        self.child = Some(child);
        self.url = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("daemon did not listen; stderr:\n{}", self.log()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL: no shutdown at all.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Waits up to `within` for the daemon to exit by itself: its exit status, or `None` when
    /// it still runs (or was not running).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.api(path))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.api(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Submits a task and returns its id.
    pub async fn submit(&self, title: &str, body: &str) -> String {
        let (status, task) = self
            .post("/tasks", json!({ "title": title, "body": body }))
            .await;
        assert_eq!(status, 201, "{task}");
        task["id"].as_str().unwrap().to_string()
    }

    pub async fn task(&self, id: &str) -> Value {
        let (status, task) = self.get(&format!("/tasks/{id}")).await;
        assert_eq!(status, 200, "{task}");
        task
    }

    /// Polls the task until `pred` holds; panics with the task and the log after `within`.
    pub async fn wait_for(
        &self,
        id: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let task = self.task(id).await;
            if pred(&task) {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never reached the expected state:\n{}\nlog:\n{}",
                story(&task),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_status(&self, id: &str, status: &str, within: Duration) -> Value {
        self.wait_for(id, within, |t| t["status"] == status).await
    }

    /// The branch the daemon gives task `id`, as its view shows it, checked to be of the form
    /// a store created by this build uses (see [`assert_store_branch`]).
    pub async fn branch(&self, id: &str) -> String {
        let task = self.task(id).await;
        let branch = task["branch_name"]
            .as_str()
            .expect("branch_name")
            .to_string();
        assert_store_branch(&branch, id);
        branch
    }

    /// Lines in the demo agent's launch log.
    pub fn launches(&self) -> usize {
        std::fs::read_to_string(self.path("launches"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// The pid the demo agent wrote last.
    pub fn agent_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Checks that `branch` is task `id`'s branch in a store created by this build:
/// `task/<id>-<store id>`, the store id six lowercase base32 characters (never the bare
/// `task/<id>` of older stores, which another store's task could share). Returns the store id.
pub fn assert_store_branch(branch: &str, id: &str) -> String {
    let store = branch
        .strip_prefix(&format!("task/{id}-"))
        .unwrap_or_else(|| panic!("{branch} is not task {id}'s branch of a store with an id"));
    assert!(
        store.len() == 6
            && store
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')),
        "{branch}: the store id is not six base32 characters"
    );
    store.to_string()
}

/// A task without its (possibly huge) title and body: status, failure, runs and events.
pub fn story(task: &Value) -> String {
    let mut t = task.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("body");
        o.remove("title");
    }
    format!("{t:#}")
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(") ").next().and_then(|r| r.chars().next()) != Some('Z'),
        Err(_) => false,
    }
}

/// Waits until `pred` holds (checked every 50 ms) or `within` passes.
pub async fn eventually(within: Duration, pred: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if pred() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pred()
}

// ---- one host of one slot, renamed ---------------------------------------------------------

/// The `[[hosts]]` entry of one local host `local` of ONE slot running the demo agent, its work
/// root in `dir` (for [`Setup::hosts`]): a task holding the slot keeps the others waiting.
pub fn one_slot(dir: &Path) -> String {
    format!(
        "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"demo\"]\n\
         max_concurrent = 1\nwork_root = \"{}\"\n",
        dir.join("work").display()
    )
}

/// A task holding a slot for `seconds`, once it runs.
pub async fn occupy_the_host(fleet: &Fleet, seconds: u32) -> String {
    let busy = fleet
        .submit("busy", &format!("demo-agent: sleep {seconds}"))
        .await;
    fleet
        .wait_status(&busy, "running", Duration::from_secs(20))
        .await;
    busy
}

/// The hosts of the task's runs, in order.
pub fn run_hosts(task: &Value) -> Vec<String> {
    task["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Renames the host `local` `spare`, with another work root, in the config of the stopped
/// `fleet` (the same machine under another name): `local` is gone from the config.
pub fn rename_the_host(fleet: &Fleet) {
    let text = std::fs::read_to_string(&fleet.config).unwrap();
    let work = fleet.path("work").display().to_string();
    let spare = fleet.path("spare").display().to_string();
    let moved = text
        .replace("host_id = \"local\"", "host_id = \"spare\"")
        .replace(
            &format!("work_root = \"{work}\""),
            &format!("work_root = \"{spare}\""),
        );
    assert_ne!(moved, text, "no host `local` in the config");
    std::fs::write(&fleet.config, moved).unwrap();
}
