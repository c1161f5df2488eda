//! The daemon's secrets stay in the daemon. A real `agent-fleet serve` runs as an unprivileged
//! user (as root, the test user through `setpriv`), and a probe agent on its `localhost` host
//! runs as that same user: the case where the kernel's uid checks protect nothing. The probe
//! reads what such an agent can reach — its own environment, `/proc/<pid>/environ` of every
//! ancestor, `/proc/<daemon>/environ` and the daemon's memory through `/proc/<daemon>/mem` —
//! and copies all of it to files that the test then searches for every secret value: the
//! admin, registration and forge tokens, the webhook secret, an SSH key passphrase and another
//! kind's `env_from` key. The probe's own `env_from` key must still reach it.

#[path = "support/clis.rs"]
mod clis;
#[path = "support/daemon.rs"]
mod daemon;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon::{BIN, git, story};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

const ADMIN: (&str, &str) = ("SECRETS_E2E_ADMIN_TOKEN", "admin-7c1e9a40d2b8f365");
const REGISTRATION: (&str, &str) = (
    "SECRETS_E2E_REGISTRATION_TOKEN",
    "registration-94b2e07f1ac3",
);
const FORGE_TOKEN: (&str, &str) = ("SECRETS_E2E_FORGE_TOKEN", "forge-token-3e8d61c0b7a2");
const WEBHOOK: (&str, &str) = ("SECRETS_E2E_WEBHOOK_SECRET", "webhook-secret-51f0ad29e6c4");
const PASSPHRASE: (&str, &str) = ("SECRETS_E2E_KEY_PASSPHRASE", "passphrase-0a7b3c9e2d41");
/// The `env_from` key of another agent kind: not the probe's business.
const OTHER_KEY: (&str, &str) = ("SECRETS_E2E_OTHER_API_KEY", "sk-other-kind-6d2f8e1b04a9");
/// The probe's own `env_from` key: it must get it, and only it.
const PROBE_KEY: (&str, &str) = ("SECRETS_E2E_PROBE_API_KEY", "sk-probe-kind-b83c5a17e0f2");

/// Every secret the daemon holds, except the probe's own key.
const NOT_FOR_THE_AGENT: [(&str, &str); 6] = [
    ADMIN,
    REGISTRATION,
    FORGE_TOKEN,
    WEBHOOK,
    PASSPHRASE,
    OTHER_KEY,
];

/// The probe agent: copies everything it can read about its ancestors and the daemon into
/// `$PROBE_OUT`, commits a file (so the task completes), prints a Claude-style result.
const PROBE: &str = r#"#!/usr/bin/env bash
set -u
out=$PROBE_OUT
mkdir -p "$out"
id -u > "$out/uid"
env > "$out/self.env"
# Every ancestor up to init: /proc/<ppid>/environ first.
pid=$$
while :; do
  ppid=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f2)
  [ -n "$ppid" ] && [ "$ppid" -gt 1 ] || break
  cat "/proc/$ppid/environ" > "$out/ancestor-$ppid.environ" 2> "$out/ancestor-$ppid.err"
  pid=$ppid
done
d=$(cat "$PROBE_DAEMON_PIDFILE")
echo "$d" > "$out/daemon.pid"
if cat "/proc/$d/environ" > "$out/daemon.environ" 2> "$out/daemon.environ.err"; then
  echo read > "$out/daemon.environ.read"
fi
# The daemon's memory: every writable mapping (stack, heap, thread stacks).
if exec 3< "/proc/$d/mem"; then
  echo opened > "$out/daemon.mem.opened"
  exec 3<&-
fi 2> "$out/daemon.mem.err"
if maps=$(cat "/proc/$d/maps" 2> "$out/daemon.maps.err"); then
  while read -r range perms _; do
    case $perms in rw*) ;; *) continue ;; esac
    start=$((16#${range%-*}))
    end=$((16#${range#*-}))
    [ $((end - start)) -le $((1 << 27)) ] || continue
    dd if="/proc/$d/mem" bs=65536 iflag=skip_bytes,count_bytes skip="$start" \
      count=$((end - start)) status=none 2>> "$out/daemon.mem.err" || true
  done <<< "$maps" > "$out/daemon.mem"
fi
echo probed >> PROBED.md
git add PROBED.md
git -c user.name=probe -c user.email=probe@example.org commit -qm 'Probe' >&2
printf '{"type":"result","subtype":"success","is_error":false,"duration_ms":1,'
printf '"duration_api_ms":0,"num_turns":1,"result":"probed","stop_reason":"end_turn",'
printf '"session_id":"00000000-0000-4000-8000-000000000001","total_cost_usd":0,'
printf '"usage":{"input_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,'
printf '"output_tokens":1},"modelUsage":{},"permission_denials":[],"terminal_reason":"completed"}\n'
"#;

/// A daemon run as `run_as`, with a probe agent kind on its localhost host.
struct Rig {
    dir: tempfile::TempDir,
    child: Child,
    log: Arc<Mutex<String>>,
    url: String,
    http: reqwest::Client,
}

impl Rig {
    async fn start(run_as: &clis::RunAs) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let origin = root.join("origin");
        std::fs::create_dir(&origin).unwrap();
        git(&origin, &["init", "-q", "-b", "main"]);
        std::fs::write(origin.join("README.md"), "# widgets\n").unwrap();
        git(&origin, &["add", "README.md"]);
        git(&origin, &["commit", "-q", "-m", "initial"]);
        std::fs::create_dir(root.join("home")).unwrap();
        let probe = root.join("probe");
        std::fs::write(&probe, PROBE).unwrap();
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = root.join("fleet.toml");
        let text = format!(
            r#"[server]
listen = "127.0.0.1:0"
admin_token_env = "{admin}"
registration_token_env = "{registration}"

[storage]
path = "{root}/data/fleet.redb"

[dispatch]
max_retries = 0
default_repo = "{root}/origin"

[forgejo]
base_url = "http://127.0.0.1:9"
token_env = "{forge_token}"
webhook_secret_env = "{webhook}"
reconcile_interval = "1h"

[[agents]]
name = "probe"
cli_template = "{root}/probe --prompt-file {{prompt_file}}"
output_format = "claude-json"
timeout = "60s"
env_from = ["{probe_key}"]
env = {{ PROBE_OUT = "{root}/probe-out", PROBE_DAEMON_PIDFILE = "{root}/daemon.pid" }}

[[agents]]
name = "other"
cli_template = "{demo} --prompt-file {{prompt_file}}"
output_format = "claude-json"
env_from = ["{other_key}"]

[[hosts]]
host_id = "local"
hostname = "localhost"
agents = ["probe"]
work_root = "{root}/work"

[[hosts]]
host_id = "far"
hostname = "127.0.0.1"
port = 9
user = "agent"
key_path = "{root}/no-such-key"
key_passphrase_env = "{passphrase}"
insecure_ignore_host_key = true
agents = ["other"]
work_root = "/tmp/far"
"#,
            root = root.display(),
            admin = ADMIN.0,
            registration = REGISTRATION.0,
            forge_token = FORGE_TOKEN.0,
            webhook = WEBHOOK.0,
            probe_key = PROBE_KEY.0,
            other_key = OTHER_KEY.0,
            passphrase = PASSPHRASE.0,
            demo = daemon::DEMO_AGENT,
        );
        std::fs::write(&config, text).unwrap();
        run_as.give(root);

        let mut command = Command::new(run_as.prefix.first().map_or(BIN, String::as_str));
        if !run_as.prefix.is_empty() {
            command.args(&run_as.prefix[1..]).arg(BIN);
        }
        command
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(root)
            .env("HOME", root.join("home"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in NOT_FOR_THE_AGENT.iter().chain([&PROBE_KEY]) {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn agent-fleet serve");
        // setpriv execs the daemon: the child's pid is the daemon's.
        std::fs::write(root.join("daemon.pid"), child.id().to_string()).unwrap();
        run_as.give(&root.join("daemon.pid"));
        let pipe = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
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
        let mut rig = Rig {
            dir,
            child,
            log,
            url: String::new(),
            http: reqwest::Client::new(),
        };
        rig.url = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("daemon did not listen; stderr:\n{}", rig.log()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = rig.http.get(format!("{}/readyz", rig.url)).send().await
                && r.status() == 200
            {
                return rig;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready:\n{}",
                rig.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        let url = format!("{}/api/v1{path}", self.url);
        let request = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body),
        };
        let r = request.bearer_auth(token).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn wait_end(&self, id: &str) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let (status, task) = self
                .call("GET", &format!("/tasks/{id}"), ADMIN.1, json!(null))
                .await;
            assert_eq!(status, 200, "{task}");
            if ["completed", "failed", "cancelled"].contains(&task["status"].as_str().unwrap_or(""))
            {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not end:\n{}\nlog:\n{}",
                story(&task),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The secrets (name = value) whose values occur in `bytes`.
fn secrets_in(bytes: &[u8], secrets: &[(&str, &str)]) -> Vec<String> {
    secrets
        .iter()
        .filter(|(_, value)| bytes.windows(value.len()).any(|w| w == value.as_bytes()))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[tokio::test]
async fn an_agent_running_as_the_daemons_user_finds_no_secret_of_the_daemon() {
    let run_as = clis::RunAs::non_root();
    let rig = Rig::start(&run_as).await;
    let daemon_pid = rig.child.id();

    // The daemon still has every secret where it needs it.
    let (status, body) = rig
        .call(
            "POST",
            "/agents/register",
            REGISTRATION.1,
            json!({ "name": "puller", "agent_kinds": ["other"] }),
        )
        .await;
    assert!(
        status == 200 || status == 201,
        "registration token refused: {status} {body}"
    );
    let (status, task) = rig
        .call(
            "POST",
            "/tasks",
            ADMIN.1,
            json!({ "title": "Probe", "body": "Look around.", "agent": "probe" }),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let task = rig.wait_end(&id).await;
    assert_eq!(
        task["status"],
        "completed",
        "{}\nlog:\n{}",
        story(&task),
        rig.log()
    );

    let out = rig.path("probe-out");
    let uid = std::fs::read_to_string(out.join("uid")).expect("the probe ran");
    if let Some((agent_uid, _)) = run_as.owner {
        assert_eq!(
            uid.trim(),
            agent_uid.to_string(),
            "the probe runs as the daemon's user"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("daemon.pid"))
            .unwrap()
            .trim(),
        daemon_pid.to_string()
    );

    // env_from still works: the probe's own key is in its environment.
    let own = std::fs::read(out.join("self.env")).unwrap();
    assert_eq!(
        secrets_in(&own, &[PROBE_KEY]),
        [PROBE_KEY.0],
        "the probe's env_from key is missing"
    );

    // Nothing the probe could read holds any other secret.
    let mut leaks = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let found = secrets_in(&bytes, &NOT_FOR_THE_AGENT);
        if !found.is_empty() {
            leaks.push(format!("{}: {found:?}", path.display()));
        }
    }
    assert!(
        leaks.is_empty(),
        "the agent read the daemon's secrets:\n{}",
        leaks.join("\n")
    );
    assert!(
        std::fs::read(out.join("daemon.mem"))
            .unwrap_or_default()
            .is_empty()
            && !out.join("daemon.mem.opened").exists(),
        "the agent could open or read /proc/{daemon_pid}/mem"
    );
    assert!(
        !out.join("daemon.environ.read").exists(),
        "the agent could read /proc/{daemon_pid}/environ"
    );

    // Even root (who may read any /proc/<pid>/environ) finds no secret in the daemon's: the
    // initial environment block itself no longer holds them.
    let environ = std::fs::read(format!("/proc/{daemon_pid}/environ")).unwrap();
    let all: Vec<(&str, &str)> = NOT_FOR_THE_AGENT
        .iter()
        .copied()
        .chain([PROBE_KEY])
        .collect();
    assert_eq!(
        secrets_in(&environ, &all),
        Vec::<String>::new(),
        "/proc/{daemon_pid}/environ still holds secrets"
    );
    assert!(!rig.log().contains(PROBE_KEY.1) && !rig.log().contains(ADMIN.1));
}
