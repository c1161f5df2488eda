//! `agent-fleet hosts check`, the real binary against a local host and real OpenSSH servers on
//! loopback (tests/support/sshd.rs): reachability, latency, agent CLIs and versions, refused host
//! keys, the load from a stub daemon (or the note when none answers), exit codes, `--json`.

#[path = "support/sshd.rs"]
mod sshd;
#[path = "support/stub.rs"]
mod stub;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use agent_fleet::api::views::{HostList, HostView};
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use sshd::{ClientKey, Sshd, known_hosts};
use stub::StubServer;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_agent-fleet");
const DEMO_AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo-agent");
/// The variable the test configs name in `admin_token_env`.
const TOKEN_ENV: &str = "CLI_HOSTS_TEST_TOKEN";
const TOKEN: &str = "hosts-s3cret";
/// A command that has not exited by then is stuck (the machine may be busy compiling).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A test directory with a client key and one sshd on 127.0.0.2 accepting it.
struct Fixture {
    dir: TempDir,
    key: ClientKey,
    sshd: Sshd,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = ClientKey::generate(dir.path(), "client");
        let sshd = Sshd::start(dir.path(), "build-1", "127.0.0.2", &key, &[]);
        let fixture = Fixture { dir, key, sshd };
        known_hosts(&fixture.known_hosts(), &[&fixture.sshd]);
        fixture
    }

    fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// An `[[hosts]]` entry for the sshd, offering `agents`.
    fn ssh_host(&self, agents: &str) -> String {
        format!(
            "[[hosts]]\nhost_id = \"build-1\"\nhostname = \"127.0.0.2\"\nport = {port}\n\
             user = \"root\"\nkey_path = {key:?}\nknown_hosts = {known:?}\nagents = [{agents}]\n\
             work_root = {work:?}\n",
            port = self.sshd.port,
            key = self.key.private.display().to_string(),
            known = self.known_hosts().display().to_string(),
            work = self.dir.path().join("remote-work").display().to_string(),
        )
    }

    /// Writes the config: the demo agent (absolute path, a version command), an agent whose
    /// program does not exist, and `hosts`.
    fn config(&self, hosts: &str) -> PathBuf {
        write_config(self.dir.path(), hosts)
    }
}

fn write_config(dir: &Path, hosts: &str) -> PathBuf {
    let text = format!(
        "[server]\nlisten = \"{closed}\"\nadmin_token_env = \"{TOKEN_ENV}\"\n\n\
         [health]\ncheck_timeout = \"10s\"\n\n[ssh]\nconnect_timeout = \"5s\"\n\n\
         [[agents]]\nname = \"demo\"\ncli_template = \"{DEMO_AGENT} --prompt-file {{prompt_file}}\"\n\
         output_format = \"claude-json\"\nversion_command = \"echo demo 9.9\"\n\n\
         [[agents]]\nname = \"ghost\"\ncli_template = \"/nonexistent/ghost-agent < {{prompt_file}}\"\n\
         output_format = \"raw\"\n\n{hosts}",
        closed = closed_addr(),
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The local host, offering the demo agent.
fn local_host() -> String {
    "[[hosts]]\nhost_id = \"local\"\nhostname = \"localhost\"\nagents = [\"demo\"]\n\
     max_concurrent = 2\nwork_root = \"/tmp/cli-hosts-work\"\n"
        .to_string()
}

/// An address nobody listens on (a port free a moment ago).
fn closed_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `agent-fleet hosts check --config <config> <args…>` without any token or server in the
/// environment; `env` pairs added.
fn hosts_check(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(["hosts", "check", "--config"])
        .arg(config)
        .args(args)
        .env_remove(TOKEN_ENV)
        .env_remove("FLEET_ADMIN_TOKEN")
        .env_remove("AGENT_FLEET_SERVER")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("run agent-fleet");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    rx.recv_timeout(RUN_TIMEOUT)
        .unwrap_or_else(|_| panic!("agent-fleet hosts check did not exit within {RUN_TIMEOUT:?}"))
        .unwrap()
}

/// The table line of `host`.
fn row<'a>(stdout: &'a str, host: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no line for {host} in:\n{stdout}"))
}

/// The line, under the table, giving `host`'s error (`cannot connect to build-1: …`).
fn error_line<'a>(stdout: &'a str, host: &str) -> &'a str {
    let named = format!(" {host}: ");
    stdout
        .lines()
        .find(|l| l.contains(&named))
        .unwrap_or_else(|| panic!("no error line for {host} in:\n{stdout}"))
}

/// [`hosts_check`] that must exit with `code`: its stdout and stderr.
fn expect_exit(code: i32, config: &Path, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let out = hosts_check(config, args, env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stdout}\n{stderr}");
    (stdout, stderr)
}

// ---------------------------------------------------------------------------------------------
// A stub daemon answering GET /api/v1/hosts
// ---------------------------------------------------------------------------------------------

/// Serves `GET /api/v1/hosts` (bearer [`TOKEN`]); stops when dropped.
struct Daemon;

impl Daemon {
    fn start(hosts: Vec<HostView>) -> StubServer {
        let list = HostList { hosts };
        StubServer::serve(Router::new().route(
            "/api/v1/hosts",
            get(move |headers: HeaderMap| async move { answer(&headers, &list) }),
        ))
    }
}

fn answer(headers: &HeaderMap, list: &HostList) -> Response {
    let expected = format!("Bearer {TOKEN}");
    match headers.get(header::AUTHORIZATION) {
        Some(v) if v.as_bytes() == expected.as_bytes() => axum::Json(list.clone()).into_response(),
        _ => (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({
                "error": { "code": "unauthorized", "message": "missing bearer token" }
            })),
        )
            .into_response(),
    }
}

fn host_view(host_id: &str, running: usize, max_concurrent: usize) -> HostView {
    HostView {
        host_id: host_id.into(),
        hostname: "x".into(),
        port: None,
        local: false,
        proxy_jump: None,
        health: "online".into(),
        reason: None,
        latency_ms: Some(1),
        checked_at: None,
        running,
        max_concurrent,
        agents: vec![],
        events: vec![],
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn a_local_and_an_ssh_host_both_ready_exit_0_with_latency_versions_and_the_daemons_load() {
    let f = Fixture::new();
    let config = f.config(&format!("{}\n{}", local_host(), f.ssh_host("\"demo\"")));
    let daemon = Daemon::start(vec![host_view("local", 1, 2), host_view("build-1", 0, 1)]);
    // The token comes from the variable the config's admin_token_env names.
    let (stdout, _) = expect_exit(
        0,
        &config,
        &["--server", &daemon.url()],
        &[(TOKEN_ENV, TOKEN)],
    );

    let header = stdout.lines().next().unwrap();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["HOST", "ADDRESS", "STATUS", "LATENCY", "AGENTS", "LOAD"]
    );
    let local = row(&stdout, "local");
    assert!(local.contains(" local "), "{local}");
    assert!(local.contains(" ok "), "{local}");
    assert!(local.contains(" ms "), "{local}");
    assert!(local.contains("demo demo 9.9"), "{local}");
    assert!(local.ends_with("1/2"), "{local}");
    let ssh = row(&stdout, "build-1");
    let address = format!("root@127.0.0.2:{}", f.sshd.port);
    assert!(ssh.contains(&address), "{ssh}");
    assert!(ssh.contains(" ok "), "{ssh}");
    assert!(ssh.contains(" ms "), "{ssh}");
    assert!(ssh.contains("demo demo 9.9"), "{ssh}");
    assert!(ssh.ends_with("0/1"), "{ssh}");
    assert!(!stdout.contains("note:"), "{stdout}");
}

#[test]
fn an_ssh_host_whose_sshd_is_stopped_is_unreachable_with_its_error_and_exit_1() {
    let mut f = Fixture::new();
    let config = f.config(&format!("{}\n{}", local_host(), f.ssh_host("\"demo\"")));
    f.sshd.stop();
    let (stdout, _) = expect_exit(1, &config, &[], &[]);
    let ssh = row(&stdout, "build-1");
    assert!(ssh.contains("unreachable"), "{ssh}");
    assert!(ssh.contains("demo ?"), "{ssh}");
    assert!(row(&stdout, "local").contains(" ok "), "{stdout}");
    let error = error_line(&stdout, "build-1");
    assert!(error.starts_with("cannot connect to build-1: "), "{error}");
    assert!(
        error.contains(&format!("127.0.0.2:{}", f.sshd.port)),
        "{error}"
    );
    // No daemon listens on the config's address: a note, not an error.
    assert!(row(&stdout, "local").ends_with("-/2"), "{stdout}");
    assert!(
        stdout.contains("note: no load from the daemon") && stdout.contains("cannot reach"),
        "{stdout}"
    );
}

#[test]
fn an_agent_cli_missing_on_a_host_shows_missing_and_exits_1() {
    let f = Fixture::new();
    let config = f.config(&f.ssh_host("\"demo\", \"ghost\""));
    let (stdout, _) = expect_exit(1, &config, &[], &[]);
    let ssh = row(&stdout, "build-1");
    assert!(ssh.contains("missing CLI"), "{ssh}");
    assert!(ssh.contains("demo demo 9.9, ghost MISSING"), "{ssh}");
}

#[test]
fn a_host_key_that_does_not_match_known_hosts_is_refused() {
    let f = Fixture::new();
    // The client's ed25519 public key stands in for another machine's host key.
    let other = f.key.public_line();
    let other: Vec<&str> = other.split_whitespace().take(2).collect();
    std::fs::write(
        f.known_hosts(),
        format!("[127.0.0.2]:{} {}\n", f.sshd.port, other.join(" ")),
    )
    .unwrap();
    let config = f.config(&f.ssh_host("\"demo\""));
    let (stdout, _) = expect_exit(1, &config, &[], &[]);
    assert!(row(&stdout, "build-1").contains("unreachable"), "{stdout}");
    let error = error_line(&stdout, "build-1");
    assert!(error.starts_with("refused build-1: "), "{error}");
    assert!(error.contains("does NOT match"), "{error}");
    assert!(
        error.contains(&f.known_hosts().display().to_string()),
        "{error}"
    );
}

#[test]
fn json_is_an_array_with_every_field_of_every_host() {
    let f = Fixture::new();
    let config = f.config(&format!(
        "{}\n{}",
        local_host(),
        f.ssh_host("\"demo\", \"ghost\"")
    ));
    let (stdout, stderr) = expect_exit(1, &config, &["--json"], &[]);
    let hosts: Vec<Value> = serde_json::from_str(&stdout).expect("stdout is a JSON array");
    assert_eq!(hosts.len(), 2);
    for host in &hosts {
        for field in [
            "host_id",
            "hostname",
            "port",
            "user",
            "local",
            "proxy_jump",
            "address",
            "status",
            "reachable",
            "latency_ms",
            "error",
            "agents",
            "missing",
            "running",
            "max_concurrent",
            "checked_at",
        ] {
            assert!(host.get(field).is_some(), "no {field} in {host}");
        }
    }
    let local = &hosts[0];
    assert_eq!(local["host_id"], "local");
    assert_eq!(local["status"], "ok");
    assert_eq!(local["local"], true);
    assert_eq!(local["running"], Value::Null);
    assert_eq!(local["max_concurrent"], 2);
    assert_eq!(local["agents"][0]["version"], "demo 9.9");
    assert_eq!(local["agents"][0]["found"], true);
    let ssh = &hosts[1];
    assert_eq!(ssh["status"], "missing_cli");
    assert_eq!(ssh["reachable"], true);
    assert!(ssh["latency_ms"].as_u64().is_some(), "{ssh}");
    assert_eq!(ssh["port"], f.sshd.port);
    assert_eq!(ssh["user"], "root");
    assert_eq!(ssh["missing"], serde_json::json!(["ghost"]));
    assert_eq!(ssh["agents"][1]["kind"], "ghost");
    assert_eq!(ssh["agents"][1]["found"], false);
    assert_eq!(ssh["agents"][1]["program"], "/nonexistent/ghost-agent");
    // The note stays off stdout.
    assert!(stderr.contains("note: no load from the daemon"), "{stderr}");
}

#[test]
fn without_a_token_the_daemon_refuses_and_the_note_says_where_the_token_goes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &local_host());
    let daemon = Daemon::start(vec![host_view("local", 1, 2)]);
    let (stdout, _) = expect_exit(0, &config, &["--server", &daemon.url()], &[]);
    assert!(row(&stdout, "local").ends_with("-/2"), "{stdout}");
    assert!(stdout.contains(&format!("set {TOKEN_ENV}")), "{stdout}");
    // --token is used when given.
    let args = ["--server", &daemon.url(), "--token", TOKEN];
    let (stdout, _) = expect_exit(0, &config, &args, &[]);
    assert!(row(&stdout, "local").ends_with("1/2"), "{stdout}");
}

#[test]
fn an_invalid_config_prints_its_errors_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = 12\n").unwrap();
    let (stdout, stderr) = expect_exit(2, &path, &[], &[]);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("bad.toml: line 2"), "{stderr}");
    assert!(stderr.contains("1 error"), "{stderr}");
}
