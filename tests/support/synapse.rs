//! A real Synapse (PyPI `matrix-synapse`, the reference Matrix homeserver) on loopback for
//! end-to-end tests: each `Synapse` is `python -m synapse.app.homeserver` as a child process,
//! server name `localhost`, one plain-HTTP client listener on a free port of 127.0.0.1, its
//! config, sqlite database, signing key, media store, logs and output in a temp dir of its own.
//! Registration is closed except through the shared-secret admin API (`register`); rate limits
//! are generous unless a test asks for a low `rc_message`. A server can stop and start again
//! on the same port with the same database (its users and tokens survive).
//!
//! The Python comes from `AGENT_FLEET_SYNAPSE` (set by scripts/test, which installs the pinned
//! scripts/synapse-requirements.txt into `target/venv-synapse`), else from that virtualenv;
//! without either, `start` panics: a Matrix test never skips silently.

#![allow(dead_code)] // each includer uses a part of it

use std::fs::{self, File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use tempfile::TempDir;

/// The homeserver's name: user ids are `@<localpart>:localhost`.
pub const SERVER_NAME: &str = "localhost";
/// The `registration_shared_secret` that `register` signs with (loopback test servers only).
const SHARED_SECRET: &str = "agent-fleet-test-registration-secret";
/// How long a start may take until `GET /health` answers 200 (about 2.5 s measured).
const START_WITHIN: Duration = Duration::from_secs(60);
/// How long a SIGTERM may take before SIGKILL (about 0.1 s measured).
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// How long `start_again` waits for its port when another process took it meanwhile.
const PORT_BACK_WITHIN: Duration = Duration::from_secs(30);
/// Ports tried when the free port picked was taken before Synapse bound it.
const PORT_ATTEMPTS: usize = 10;
const POLL: Duration = Duration::from_millis(50);

/// One `rc_*` rate limit: a token bucket of `burst_count` refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst_count: u32,
}

impl RateLimit {
    /// What every `rc_*` limit is unless a test overrides it: tests send many messages quickly.
    pub const GENEROUS: RateLimit = RateLimit {
        per_second: 1000.0,
        burst_count: 1000,
    };

    fn yaml(self) -> String {
        // f64's Display never uses an exponent, which PyYAML would read as a string.
        format!(
            "{{per_second: {}, burst_count: {}}}",
            self.per_second, self.burst_count
        )
    }
}

/// What a test may change in the homeserver's config.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `rc_message` (the events a user may send, room creation included); generous when `None`.
    pub rc_message: Option<RateLimit>,
    /// More top-level homeserver.yaml text, appended (a key repeated here wins: PyYAML keeps
    /// the last one).
    pub extra: String,
}

/// A running (or stopped) Synapse; dropping it kills the process and removes its directory.
pub struct Synapse {
    dir: TempDir,
    python: PathBuf,
    port: u16,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Synapse {
    /// Writes the config into a fresh temp dir and starts Synapse on a free port of 127.0.0.1;
    /// returns once `GET /health` answers 200. The first start generates the signing key.
    pub async fn start(options: Options) -> Synapse {
        let dir = tempfile::Builder::new()
            .prefix("synapse-")
            .tempdir()
            .expect("create Synapse's temp dir");
        let mut server = Synapse {
            dir,
            python: python(),
            port: 0,
            child: None,
            http: reqwest::Client::new(),
        };
        fs::write(server.dir().join("log.yaml"), server.log_config()).unwrap();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            fs::write(server.config_path(), server.config(&options)).unwrap();
            if server.spawn().await {
                return server;
            }
        }
        panic!(
            "Synapse: {PORT_ATTEMPTS} free ports of 127.0.0.1 were all taken before it bound them\n{}",
            server.log_tail()
        );
    }

    /// The client-server API's base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data dir: homeserver.yaml, log.yaml, homeserver.db, signing.key, media_store/,
    /// homeserver.log (WARNING and up), stdout.log, stderr.log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `@<localpart>:localhost`.
    pub fn user_id(localpart: &str) -> String {
        format!("@{localpart}:{SERVER_NAME}")
    }

    /// The process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Stops Synapse: SIGTERM, then SIGKILL if it still runs after 5 s; returns once it exited.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The pid is our unreaped child's: it cannot have been reused.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_WITHIN;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                child.wait().unwrap();
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts again (stopping first if it runs) with the same dir, port, database and signing
    /// key: "Synapse went away during a run and came back". Waits for the port if another
    /// process took it meanwhile.
    pub async fn start_again(&mut self) {
        self.stop().await;
        let deadline = Instant::now() + PORT_BACK_WITHIN;
        while !self.spawn().await {
            assert!(
                Instant::now() < deadline,
                "Synapse: port 127.0.0.1:{} stays taken, cannot start again:\n{}",
                self.port,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Registers `localpart` through the shared-secret admin API and returns its user id.
    ///
    /// Over HTTP rather than with the virtualenv's `register_new_matrix_user`: that script is a
    /// Python start (1.5 s measured) for what is two requests here (about 0.1 s, with the
    /// config's `bcrypt_rounds: 4`).
    pub async fn register(&self, localpart: &str, password: &str, admin: bool) -> String {
        let url = format!("{}/_synapse/admin/v1/register", self.url());
        let nonce = self
            .answer(self.http.get(&url), "GET the registration nonce")
            .await;
        let nonce = nonce["nonce"].as_str().expect("a nonce").to_string();
        // Synapse's documented MAC: HMAC-SHA1 of nonce, user, password and admin flag, NUL
        // separated, keyed with the shared secret, in lowercase hex.
        let mut mac = Hmac::<Sha1>::new_from_slice(SHARED_SECRET.as_bytes())
            .expect("HMAC takes a key of any length");
        let flag = if admin { "admin" } else { "notadmin" };
        for (i, part) in [nonce.as_str(), localpart, password, flag]
            .iter()
            .enumerate()
        {
            if i > 0 {
                mac.update(b"\0");
            }
            mac.update(part.as_bytes());
        }
        let body = json!({
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": hex::encode(mac.finalize().into_bytes()),
        });
        let what = format!("register {localpart}");
        let answer = self.answer(self.http.post(&url).json(&body), &what).await;
        answer["user_id"].as_str().expect("a user_id").to_string()
    }

    /// Logs `user` (a localpart or a user id) in with its password (`POST /login`, a new
    /// device each time) and returns the access token.
    pub async fn login(&self, user: &str, password: &str) -> String {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user },
            "password": password,
        });
        let url = format!("{}/_matrix/client/v3/login", self.url());
        let what = format!("log {user} in");
        let answer = self.answer(self.http.post(url).json(&body), &what).await;
        answer["access_token"]
            .as_str()
            .expect("an access_token")
            .to_string()
    }

    /// Everything Synapse logged at WARNING and up, over all its starts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir().join("homeserver.log")).unwrap_or_default()
    }

    /// The last lines of homeserver.log and stderr.log, for panic messages.
    pub fn log_tail(&self) -> String {
        ["homeserver.log", "stderr.log"]
            .iter()
            .map(|name| {
                let path = self.dir().join(name);
                let text = fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                format!("--- {} (tail) ---\n{tail}\n", path.display())
            })
            .collect()
    }

    fn config_path(&self) -> PathBuf {
        self.dir().join("homeserver.yaml")
    }

    fn config(&self, options: &Options) -> String {
        let d = self.dir().display();
        let g = RateLimit::GENEROUS.yaml();
        let rc_message = options.rc_message.unwrap_or(RateLimit::GENEROUS).yaml();
        format!(
            r#"server_name: "{SERVER_NAME}"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "{d}/homeserver.db"
log_config: "{d}/log.yaml"
media_store_path: "{d}/media_store"
signing_key_path: "{d}/signing.key"
registration_shared_secret: "{SHARED_SECRET}"
enable_registration: false
federation_domain_whitelist: []
trusted_key_servers: []
report_stats: false
suppress_key_server_warning: true
# Password hashing at bcrypt's minimum cost: register and login take milliseconds, not 0.3 s.
bcrypt_rounds: 4
rc_message: {rc_message}
rc_login:
  address: {g}
  account: {g}
  failed_attempts: {g}
rc_registration: {g}
rc_joins:
  local: {g}
  remote: {g}
rc_invites:
  per_room: {g}
  per_user: {g}
rc_3pid_validation: {g}
rc_admin_redaction: {g}
{extra}
"#,
            port = self.port,
            extra = options.extra,
        )
    }

    fn log_config(&self) -> String {
        format!(
            r#"version: 1
formatters:
  precise:
    format: "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: "{}/homeserver.log"
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
"#,
            self.dir().display()
        )
    }

    /// Spawns Synapse and waits until `GET /health` answers 200: true, or false when its port
    /// was taken (it exits, after about 6 s).
    async fn spawn(&mut self) -> bool {
        let stderr_path = self.dir().join("stderr.log");
        let stderr = append(&stderr_path);
        let from = stderr.metadata().unwrap().len() as usize;
        let child = Command::new(&self.python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.config_path())
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(append(&self.dir().join("stdout.log")))
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.python.display()));
        self.child = Some(child);
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if self.healthy().await {
                return true;
            }
            let child = self.child.as_mut().expect("spawned above");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                let output = fs::read_to_string(&stderr_path).unwrap_or_default();
                if output
                    .get(from..)
                    .unwrap_or("")
                    .contains("Address already in use")
                {
                    return false;
                }
                panic!("Synapse exited on start ({status}):\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                self.stop().await;
                panic!(
                    "Synapse did not answer GET {}/health with 200 within {START_WITHIN:?}:\n{}",
                    self.url(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn healthy(&self) -> bool {
        let health = self
            .http
            .get(format!("{}/health", self.url()))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        health.is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
    }

    /// Sends `request` and returns its JSON answer; panics with the answer unless it is a 200.
    async fn answer(&self, request: reqwest::RequestBuilder, what: &str) -> Value {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", self.log_tail()));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{what}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e} in {text}"))
    }
}

impl Drop for Synapse {
    /// Kills Synapse outright (SIGKILL; its data dir goes with it) and reaps it.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The virtualenv's Python that runs Synapse; panics, saying how to install it, when missing.
fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("AGENT_FLEET_SYNAPSE") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "AGENT_FLEET_SYNAPSE={} does not exist: run scripts/test, which installs Synapse",
            path.display()
        );
        return path;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(manifest.join("target"), |t| {
        manifest.join(t) // an absolute CARGO_TARGET_DIR replaces the manifest dir
    });
    let default = target.join("venv-synapse/bin/python");
    if default.is_file() {
        return default;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true but AGENT_FLEET_SYNAPSE is not set and {} does not exist: scripts/test \
             installs Synapse and sets it; the Matrix tests must not be skipped in CI",
            default.display()
        );
    }
    panic!(
        "Synapse is not installed: run scripts/test, which installs scripts/synapse-requirements.txt \
         into {} and sets AGENT_FLEET_SYNAPSE (the Matrix tests need a real homeserver)",
        default.display()
    );
}

/// A port of 127.0.0.1 nobody listened on a moment ago.
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"))
        .port()
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}
