//! The `agent-fleet` binary, driven as a user would: `config check` and `serve`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_agent-fleet");

/// Generous: the test machine may be busy compiling.
/// The engine's table of instance records and history (see `src/workflow/store.rs`): a record
/// is at (id, u64::MAX).
const RECORDS: redb::TableDefinition<(u64, u64), &[u8]> =
    redb::TableDefinition::new("instance_rows");
const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml")
}

fn config_check(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["config", "check"])
        .args(args)
        .output()
        .expect("run agent-fleet")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A temporary directory holding a daemon config (ephemeral port) and its store path.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Setup {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("data").join("fleet.redb")
    }

    /// Writes a config that listens on `listen` and stores in [`Setup::store`].
    fn config_listening_on(&self, listen: &str) -> PathBuf {
        let path = self.dir.path().join("agent-fleet.toml");
        let body = format!(
            "[server]\nlisten = \"{listen}\"\n\n[storage]\npath = {:?}\n",
            self.store().display().to_string()
        );
        std::fs::write(&path, body).unwrap();
        path
    }

    fn config(&self) -> PathBuf {
        self.config_listening_on("127.0.0.1:0")
    }
}

/// A running `agent-fleet serve`, its stderr collected as it comes.
struct Daemon {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    fn spawn(config: &Path) -> Daemon {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("FLEET_ADMIN_TOKEN", "test-admin-token")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent-fleet serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Daemon { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The base URL printed by the daemon once its listener is bound.
    async fn base_url(&self) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let err = self.stderr();
            if let Some(rest) = err.split("agent-fleet listening on ").nth(1) {
                return rest.lines().next().unwrap().trim().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no listening line; stderr:\n{err}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with the pid of our own child process and a valid signal number.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    async fn exit_status(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread drain the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("HTTP request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// Polls `/readyz` until it answers 200 and returns its body.
async fn wait_ready(base: &str) -> Value {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let (status, body) = get_json(&format!("{base}/readyz")).await;
        if status == 200 {
            return body;
        }
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["status"], "recovering");
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked"),
        "the daemon panicked:\n{stderr}"
    );
}

// ------------------------------------------------------------------------------------------
// config check
// ------------------------------------------------------------------------------------------

#[test]
fn config_check_accepts_the_example_and_prints_the_counts() {
    let out = config_check(&["--config", example_config().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "config OK: 1 agents, 1 hosts");
}

#[test]
fn config_check_exits_1_and_explains_every_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[agents]]\nname = \"demo\"\ncli_template = \"demo {prompt_file}\"\noutput_format = \"raw\"\n\n\
         [[hosts]]\nhost_id = \"localhost\"\nhostname = \"localhost\"\nagents = [\"nope\"]\n\
         max_concurrent = 0\nwork_root = \"/tmp/w\"\n",
    )
    .unwrap();
    let out = config_check(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "line 9, column 11: `hosts[0].agents[0]`: host `localhost` uses unknown agent `nope`"
        ),
        "{err}"
    );
    assert!(
        err.contains("line 10, column 18: `hosts[0].max_concurrent`"),
        "{err}"
    );
    assert!(err.contains("2 errors"), "{err}");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn config_check_names_the_file_in_each_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "[server]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = config_check(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let expected = format!(
        "{}: line 2, column 1: `server.lisen`: unknown field `lisen`",
        path.display()
    );
    assert!(err.contains(&expected), "{err}");
}

#[test]
fn config_check_json_reports_errors_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[dispatch]\ntask_timeout = \"30 parsecs\"\n").unwrap();
    let out = config_check(&["--json", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["errors"][0]["key"], "dispatch.task_timeout");
    assert_eq!(report["errors"][0]["line"], 2);
}

#[test]
fn config_check_json_reports_the_counts_of_a_valid_file() {
    let out = config_check(&["--json", "--config", example_config().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["agents"], 1);
    assert_eq!(report["hosts"], 1);
}

#[test]
fn config_check_exits_1_when_the_file_does_not_exist() {
    let out = config_check(&["--config", "/nonexistent/agent-fleet.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot read config file /nonexistent/agent-fleet.toml"),
        "{err}"
    );
}

// ------------------------------------------------------------------------------------------
// serve
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn serve_answers_healthz_once_listening() {
    let setup = Setup::new();
    let daemon = Daemon::spawn(&setup.config());
    let base = daemon.base_url().await;
    let (status, body) = get_json(&format!("{base}/healthz")).await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({ "status": "ok" }));
}

#[tokio::test]
async fn serve_becomes_ready_with_the_recovery_report() {
    let setup = Setup::new();
    let daemon = Daemon::spawn(&setup.config());
    let base = daemon.base_url().await;
    let body = wait_ready(&base).await;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["recovery"]["instances"], 0);
    assert!(setup.store().exists(), "the store file was not created");
}

#[tokio::test]
async fn serve_exits_0_on_sigterm() {
    let setup = Setup::new();
    let mut daemon = Daemon::spawn(&setup.config());
    wait_ready(&daemon.base_url().await).await;
    daemon.signal(libc::SIGTERM);
    let status = daemon.exit_status(EXIT_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", daemon.stderr());
    assert!(daemon.stderr().contains("SIGTERM received"));
}

#[tokio::test]
async fn serve_exits_0_on_sigint() {
    let setup = Setup::new();
    let mut daemon = Daemon::spawn(&setup.config());
    wait_ready(&daemon.base_url().await).await;
    daemon.signal(libc::SIGINT);
    let status = daemon.exit_status(EXIT_TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", daemon.stderr());
}

#[tokio::test]
async fn serve_reopens_the_store_it_left_after_sigterm() {
    let setup = Setup::new();
    for _ in 0..2 {
        let mut daemon = Daemon::spawn(&setup.config());
        wait_ready(&daemon.base_url().await).await;
        daemon.signal(libc::SIGTERM);
        assert_eq!(daemon.exit_status(EXIT_TIMEOUT).await.code(), Some(0));
    }
}

#[tokio::test]
async fn serve_exits_1_with_a_clear_message_on_a_store_that_is_not_redb() {
    let setup = Setup::new();
    std::fs::create_dir_all(setup.store().parent().unwrap()).unwrap();
    let mut garbage = vec![0u8; 64 * 1024];
    rand::rng().fill_bytes(&mut garbage);
    std::fs::write(setup.store(), &garbage).unwrap();

    let mut daemon = Daemon::spawn(&setup.config());
    let status = daemon.exit_status(START_TIMEOUT).await;
    let err = daemon.stderr();
    assert_eq!(status.code(), Some(1), "stderr:\n{err}");
    assert!(err.contains(&setup.store().display().to_string()), "{err}");
    assert!(err.contains("cannot start the engine"), "{err}");
    assert_no_panic(&err);
    assert_eq!(
        std::fs::read(setup.store()).unwrap(),
        garbage,
        "the file was modified"
    );
}

#[tokio::test]
async fn serve_exits_1_with_a_clear_message_on_a_truncated_store() {
    let setup = Setup::new();
    let engine = agent_fleet::workflow::Engine::builder(setup.store())
        .open()
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
    drop(engine);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(setup.store())
        .unwrap();
    file.set_len(3000).unwrap();
    drop(file);

    let mut daemon = Daemon::spawn(&setup.config());
    let status = daemon.exit_status(START_TIMEOUT).await;
    let err = daemon.stderr();
    assert_eq!(status.code(), Some(1), "stderr:\n{err}");
    assert!(err.contains(&setup.store().display().to_string()), "{err}");
    assert_no_panic(&err);
}

#[tokio::test]
async fn serve_exits_1_on_an_invalid_config_and_names_the_error() {
    let setup = Setup::new();
    let path = setup.dir.path().join("bad.toml");
    std::fs::write(&path, "[storage]\nhistory_cap = 0\n").unwrap();
    let mut daemon = Daemon::spawn(&path);
    let status = daemon.exit_status(START_TIMEOUT).await;
    let err = daemon.stderr();
    assert_eq!(status.code(), Some(1), "stderr:\n{err}");
    assert!(
        err.contains("line 2, column 15: `storage.history_cap`"),
        "{err}"
    );
    assert!(
        !err.contains("listening on"),
        "it listened with an invalid config:\n{err}"
    );
}

#[tokio::test]
async fn serve_exits_1_when_a_hosts_key_passphrase_variable_is_unset() {
    let setup = Setup::new();
    let path = setup.dir.path().join("pass.toml");
    let body = format!(
        "[storage]\npath = {:?}\n\n[[hosts]]\nhost_id = \"b1\"\nhostname = \"127.0.0.9\"\nuser = \"fleet\"\nkey_path = \"/k\"\nkey_passphrase_env = \"FLEET_TEST_UNSET_PASS\"\nagents = [\"demo\"]\nwork_root = \"/w\"\n",
        setup.store().display().to_string()
    );
    std::fs::write(&path, body).unwrap();
    let mut daemon = Daemon::spawn(&path);
    let status = daemon.exit_status(START_TIMEOUT).await;
    let err = daemon.stderr();
    assert_eq!(status.code(), Some(1), "stderr:\n{err}");
    assert!(
        err.contains("host `b1`: the key passphrase variable FLEET_TEST_UNSET_PASS"),
        "{err}"
    );
}

#[tokio::test]
async fn serve_exits_1_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let setup = Setup::new();
    let mut daemon = Daemon::spawn(&setup.config_listening_on(&addr));
    let status = daemon.exit_status(START_TIMEOUT).await;
    let err = daemon.stderr();
    assert_eq!(status.code(), Some(1), "stderr:\n{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert_no_panic(&err);
}

/// A minimal definition, only to leave an instance in the store.
struct Parked;

impl agent_fleet::workflow::Workflow for Parked {
    const NAME: &'static str = "parked";
    const VERSION: u32 = 1;
    type State = ();
    type Signal = ();
    async fn step(
        &self,
        _ctx: &mut agent_fleet::workflow::StepCtx<()>,
        s: (),
    ) -> agent_fleet::workflow::StepResult<()> {
        Ok(agent_fleet::workflow::Outcome::wait(s))
    }
}

#[tokio::test]
async fn serve_exits_1_on_a_record_of_an_unknown_schema_version() {
    use redb::{ReadableDatabase, ReadableTable};
    let setup = Setup::new();
    let engine = agent_fleet::workflow::Engine::builder(setup.store())
        .register(Parked)
        .open()
        .await
        .unwrap();
    let id = engine.start::<Parked>(&(), None).await.unwrap();
    engine.shutdown().await.unwrap();
    drop(engine);
    {
        let db = redb::Database::create(setup.store()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(RECORDS).unwrap();
            let mut bytes = table.get((id, u64::MAX)).unwrap().unwrap().value().to_vec();
            bytes[0] = 200; // a schema version from the future
            table.insert((id, u64::MAX), bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    let mut daemon = Daemon::spawn(&setup.config());
    let status = daemon.exit_status(START_TIMEOUT).await;
    let err = daemon.stderr();
    assert_eq!(status.code(), Some(1), "stderr:\n{err}");
    assert!(
        err.contains(&format!("instance {id} cannot be read"))
            && err.contains("schema version 200"),
        "{err}"
    );
    assert_no_panic(&err);
    // The record is left as it was, for a newer daemon to read.
    let db = redb::Database::create(setup.store()).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(RECORDS).unwrap();
    assert_eq!(table.get((id, u64::MAX)).unwrap().unwrap().value()[0], 200);
}
