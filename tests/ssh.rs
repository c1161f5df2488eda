//! SSH hosts end to end: the real daemon runs the demo agent on hosts that are real OpenSSH
//! servers on loopback (127.0.0.2, 127.0.0.3, …), through one pooled connection per host. The
//! agent's runs survive dropped connections, daemon SIGKILLs and hosts that go away; routing
//! follows capacity and health.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::time::Duration;

use daemon::{Fleet, Setup, story};
use serde_json::{Value, json};
use sshd::{ClientKey, Sshd};

/// Health checks and lost-host detection fast enough for tests.
const FAST_HEALTH: &str = r#"
[health]
check_interval = "300ms"
check_timeout = "3s"
lost_after = "2s"

[ssh]
connect_timeout = "2s"
keepalive_interval = "1s"
keepalive_max = 2
"#;

/// One SSH host of a test fleet.
struct HostSpec {
    name: &'static str,
    ip: &'static str,
    max: u32,
    agents: &'static str,
    /// More `[[hosts]]` lines (e.g. `proxy_jump = "a"`).
    lines: &'static str,
    /// More session environment (e.g. PATH).
    env: Vec<(&'static str, String)>,
}

fn host(name: &'static str, ip: &'static str, max: u32) -> HostSpec {
    HostSpec {
        name,
        ip,
        max,
        agents: r#"["demo"]"#,
        lines: "",
        env: Vec::new(),
    }
}

/// A daemon and its SSH hosts. Servers stop before the fleet's directory goes.
struct Remote {
    servers: Vec<Sshd>,
    fleet: Fleet,
    known_hosts: PathBuf,
}

impl Remote {
    async fn start(hosts: Vec<HostSpec>, setup: Setup) -> Remote {
        sshd::require_sshd();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let key = ClientKey::generate(&root, "client");
        let mut servers = Vec::new();
        let mut entries = String::new();
        let known_hosts = root.join("known_hosts");
        for h in &hosts {
            let launches = root.join("launches").display().to_string();
            let pidfile = root
                .join(format!("agent-{}.pid", h.name))
                .display()
                .to_string();
            let mut env: Vec<(&str, &str)> = vec![
                ("DEMO_AGENT_LAUNCHES", &launches),
                ("DEMO_AGENT_PIDFILE", &pidfile),
                ("DEMO_AGENT_HOST", h.name),
            ];
            env.extend(h.env.iter().map(|(k, v)| (*k, v.as_str())));
            let server = Sshd::start(&root.join("sshd"), h.name, h.ip, &key, &env);
            entries.push_str(&format!(
                r#"
[[hosts]]
host_id = "{name}"
hostname = "{ip}"
port = {port}
user = "root"
key_path = "{key}"
known_hosts = "{kh}"
agents = {agents}
max_concurrent = {max}
work_root = "{work}"
{lines}
"#,
                name = h.name,
                ip = h.ip,
                port = server.port,
                key = key.private.display(),
                kh = known_hosts.display(),
                agents = h.agents,
                max = h.max,
                work = root.join("hosts").join(h.name).display(),
                lines = h.lines,
            ));
            servers.push(server);
        }
        sshd::known_hosts(&known_hosts, &servers.iter().collect::<Vec<_>>());
        let setup = Setup {
            hosts: Some(entries),
            extra: format!("{FAST_HEALTH}{}", setup.extra),
            ..setup
        };
        let fleet = Fleet::start_in(dir, setup).await;
        Remote {
            servers,
            fleet,
            known_hosts,
        }
    }

    fn server(&mut self, name: &str) -> &mut Sshd {
        self.servers.iter_mut().find(|s| s.name == name).unwrap()
    }

    /// The host named on each line of the demo agent's launch log.
    fn launch_hosts(&self) -> Vec<String> {
        std::fs::read_to_string(self.fleet.path("launches"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_whitespace().nth(3).unwrap_or("").to_string())
            .collect()
    }

    fn agent_started_on(&self, host: &str) -> bool {
        self.fleet.path(&format!("agent-{host}.pid")).exists()
    }

    async fn hosts(&self) -> Vec<Value> {
        let (status, body) = self.fleet.get("/hosts").await;
        assert_eq!(status, 200, "{body}");
        body["hosts"].as_array().unwrap().clone()
    }

    async fn host_view(&self, name: &str) -> Value {
        self.hosts()
            .await
            .into_iter()
            .find(|h| h["host_id"] == name)
            .unwrap()
    }

    /// Waits until `pred` holds for host `name`'s view.
    async fn wait_host(
        &self,
        name: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let view = self.host_view(name).await;
            if pred(&view) {
                return view;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "host {name} never got there: {view:#}\n{}",
                self.fleet.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_until(&self, within: Duration, what: &str, pred: impl Fn() -> bool) {
        assert!(
            daemon::eventually(within, pred).await,
            "{what} did not happen within {within:?}\n{}",
            self.fleet.log()
        );
    }
}

async fn submit_agent(fleet: &Fleet, title: &str, body: &str, agent: &str) -> String {
    let (status, task) = fleet
        .post(
            "/tasks",
            json!({ "title": title, "body": body, "agent": agent }),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().unwrap().to_string()
}

fn runs(task: &Value) -> Vec<Value> {
    task["runs"].as_array().cloned().unwrap_or_default()
}

const SECS_30: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_task_dispatched_to_a_remote_host_completes_with_a_receipt() {
    let r = Remote::start(vec![host("a", "127.0.0.2", 1)], Setup::default()).await;
    let id = r.fleet.submit("Say hello", "Add a greeting.").await;
    let task = r.fleet.wait_status(&id, "completed", SECS_30).await;
    let runs = runs(&task);
    assert_eq!(runs.len(), 1, "{}", story(&task));
    assert_eq!(runs[0]["host"], "a");
    assert_eq!(runs[0]["outcome"], "succeeded");
    assert!(
        runs[0]["run_dir"]
            .as_str()
            .unwrap()
            .starts_with(&r.fleet.path("hosts/a").display().to_string()),
        "{}",
        runs[0]
    );
    assert_eq!(task["assigned_host"], "a");
    assert!(!task["receipt"]["commits"].as_array().unwrap().is_empty());
    assert_eq!(r.launch_hosts(), vec!["a"]);
    // Health checks, workspace, launch and every poll went through one pooled connection.
    let logins = r.servers[0].log().matches("Accepted publickey").count();
    assert_eq!(logins, 1, "{}", r.servers[0].log());
}

#[tokio::test]
async fn a_dropped_connection_mid_run_is_reattached_and_the_agent_runs_once() {
    let r = Remote::start(vec![host("a", "127.0.0.2", 1)], Setup::default()).await;
    let id = r.fleet.submit("Slow", "demo-agent: sleep 3").await;
    r.wait_until(SECS_30, "the agent's start", || r.agent_started_on("a"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.servers[0].drop_connections();
    let task = r.fleet.wait_status(&id, "completed", SECS_30).await;
    assert_eq!(r.launch_hosts(), vec!["a"], "{}", story(&task));
    assert_eq!(runs(&task).len(), 1, "{}", story(&task));
    // The pooled connection was opened again after the drop.
    let logins = r.servers[0].log().matches("Accepted publickey").count();
    assert!(logins >= 2, "{}", r.servers[0].log());
}

#[tokio::test]
async fn a_daemon_sigkill_mid_run_reattaches_to_the_remote_run() {
    let mut r = Remote::start(vec![host("a", "127.0.0.2", 1)], Setup::default()).await;
    let id = r.fleet.submit("Slow", "demo-agent: sleep 3").await;
    r.wait_until(SECS_30, "the agent's start", || r.agent_started_on("a"))
        .await;
    r.fleet.kill();
    r.fleet.spawn().await;
    let task = r.fleet.wait_status(&id, "completed", SECS_30).await;
    assert_eq!(r.launch_hosts(), vec!["a"], "{}", story(&task));
    assert_eq!(runs(&task).len(), 1, "{}", story(&task));
}

/// Two hosts, a task running on `a` (the demo agent sleeping `secs`), then `a`'s sshd stopped.
async fn lose_host_a_mid_run(secs: u32) -> (Remote, String) {
    let setup = Setup {
        max_retries: 1,
        ..Setup::default()
    };
    let mut r = Remote::start(
        vec![host("a", "127.0.0.2", 1), host("b", "127.0.0.3", 1)],
        setup,
    )
    .await;
    let id = r
        .fleet
        .submit("Slow", &format!("demo-agent: sleep {secs}"))
        .await;
    r.wait_until(SECS_30, "the agent's start", || r.agent_started_on("a"))
        .await;
    r.server("a").stop();
    (r, id)
}

#[tokio::test]
async fn a_host_that_goes_down_mid_run_loses_the_attempt_and_another_host_completes_it() {
    let (r, id) = lose_host_a_mid_run(3).await;
    let task = r.fleet.wait_status(&id, "completed", SECS_30).await;
    let runs = runs(&task);
    assert_eq!(runs.len(), 2, "{}", story(&task));
    assert_eq!(
        (runs[0]["host"].as_str(), runs[0]["outcome"].as_str()),
        (Some("a"), Some("host_lost")),
        "{}",
        story(&task)
    );
    assert_eq!(
        (runs[1]["host"].as_str(), runs[1]["outcome"].as_str()),
        (Some("b"), Some("succeeded"))
    );
    assert_eq!(runs[1]["attempt"], 2);
    assert_eq!(task["assigned_host"], "b");
    assert!(story(&task).contains("unreachable"), "{}", story(&task));
    let view = r.host_view("a").await;
    assert_eq!(view["health"], "offline", "{view:#}");
}

#[tokio::test]
async fn a_lost_host_that_comes_back_has_its_late_result_recorded_but_not_used() {
    let (mut r, id) = lose_host_a_mid_run(4).await;
    r.wait_until(SECS_30, "the retry on b", || r.agent_started_on("b"))
        .await;
    // The first run goes on without its host's sshd; it finishes, then the host comes back.
    let first = r.fleet.task(&id).await["runs"][0]["run_dir"].clone();
    let exit = PathBuf::from(first.as_str().expect("the first run")).join("exit");
    assert!(
        exit.starts_with(r.fleet.path("hosts/a/.runs")),
        "{}",
        exit.display()
    );
    r.wait_until(SECS_30, "the lost run's end", || exit.exists())
        .await;
    r.server("a").restart();
    let task = r.fleet.wait_status(&id, "completed", SECS_30).await;
    let runs = runs(&task);
    let text = story(&task);
    assert!(text.contains("late result"), "{text}");
    assert!(text.contains("recorded, not used"), "{text}");
    assert_eq!(runs[0]["outcome"], "host_lost", "{text}");
    assert_eq!(runs[0]["exit_code"], 0, "{text}");
    assert_eq!(runs[1]["outcome"], "succeeded", "{text}");
    // The receipt is the second run's work, on b's worktree.
    let succeeded = runs.iter().filter(|r| r["outcome"] == "succeeded").count();
    assert_eq!(succeeded, 1, "{text}");
    assert_eq!(task["assigned_host"], "b");
    assert_eq!(r.launch_hosts(), vec!["a", "b"]);
}

#[tokio::test]
async fn tasks_fill_hosts_up_to_max_concurrent_least_loaded_first() {
    let r = Remote::start(
        vec![host("a", "127.0.0.2", 2), host("b", "127.0.0.3", 2)],
        Setup::default(),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            r.fleet
                .submit(&format!("Task {i}"), "demo-agent: sleep 2")
                .await,
        );
    }
    let mut peak = (0, 0);
    let mut both_full = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let hosts = r.hosts().await;
        let running = |name: &str| {
            hosts
                .iter()
                .find(|h| h["host_id"] == name)
                .and_then(|h| h["running"].as_u64())
                .unwrap()
        };
        let (a, b) = (running("a"), running("b"));
        peak = (peak.0.max(a), peak.1.max(b));
        both_full |= a == 2 && b == 2;
        let mut done = 0;
        for id in &ids {
            if r.fleet.task(id).await["status"] == "completed" {
                done += 1;
            }
        }
        if done == ids.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.fleet.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(peak, (2, 2), "never more than max_concurrent on a host");
    assert!(both_full, "the first four tasks spread over both hosts");
    let mut per_host = std::collections::HashMap::new();
    for h in r.launch_hosts() {
        *per_host.entry(h).or_insert(0) += 1;
    }
    assert_eq!(per_host.values().sum::<i32>(), 5);
    assert!(per_host["a"] >= 2 && per_host["b"] >= 2, "{per_host:?}");
}

/// A directory holding `fleet-path-demo`, the demo agent under a name found only through PATH.
fn path_demo_bin(root: &Path) -> PathBuf {
    let bin = root.join("path-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(daemon::DEMO_AGENT, bin.join("fleet-path-demo")).unwrap();
    bin
}

#[tokio::test]
async fn a_host_without_the_agents_cli_is_never_chosen_for_that_kind() {
    let bin_root = tempfile::tempdir().unwrap();
    let bin = path_demo_bin(bin_root.path());
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let setup = Setup {
        extra: r#"
[[agents]]
name = "pathdemo"
cli_template = "fleet-path-demo --prompt-file {prompt_file}"
output_format = "claude-json"
version_command = "echo pathdemo 1.0"
"#
        .into(),
        ..Setup::default()
    };
    let mut a = host("a", "127.0.0.2", 2);
    a.agents = r#"["demo", "pathdemo"]"#;
    let mut b = host("b", "127.0.0.3", 2);
    b.agents = r#"["pathdemo"]"#;
    b.env = vec![("PATH", path)];
    let r = Remote::start(vec![a, b], setup).await;
    let view = r.wait_host("a", SECS_30, |v| v["health"] == "online").await;
    let pathdemo = |v: &Value| {
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == "pathdemo")
            .cloned()
            .unwrap()
    };
    assert_eq!(pathdemo(&view)["found"], false, "{view:#}");
    let view_b = r.wait_host("b", SECS_30, |v| v["health"] == "online").await;
    assert_eq!(pathdemo(&view_b)["found"], true, "{view_b:#}");
    assert_eq!(pathdemo(&view_b)["version"], "pathdemo 1.0");
    let one = submit_agent(&r.fleet, "One", "demo-agent: sleep 1", "pathdemo").await;
    let two = submit_agent(&r.fleet, "Two", "demo-agent: sleep 1", "pathdemo").await;
    for id in [&one, &two] {
        let task = r.fleet.wait_status(id, "completed", SECS_30).await;
        assert_eq!(task["assigned_host"], "b", "{}", story(&task));
    }
    assert_eq!(r.launch_hosts(), vec!["b", "b"]);
}

#[tokio::test]
async fn a_host_goes_offline_and_back_online_with_events_in_its_history() {
    let mut r = Remote::start(
        vec![host("a", "127.0.0.2", 1), host("b", "127.0.0.3", 1)],
        Setup::default(),
    )
    .await;
    r.wait_host("b", SECS_30, |v| v["health"] == "online").await;
    r.server("b").stop();
    let down = r
        .wait_host("b", SECS_30, |v| v["health"] == "offline")
        .await;
    assert!(
        down["reason"].as_str().unwrap().contains("cannot connect"),
        "{down:#}"
    );
    // While b is down, tasks go to a only.
    let id = r.fleet.submit("While b is down", "Add a greeting.").await;
    let task = r.fleet.wait_status(&id, "completed", SECS_30).await;
    assert_eq!(task["assigned_host"], "a");
    r.server("b").restart();
    // Routing learns at once; the history event follows as the host's instance takes it.
    let events = |v: &Value| {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["text"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let up = r
        .wait_host("b", SECS_30, |v| {
            v["health"] == "online" && events(v).contains("b: online (")
        })
        .await;
    let joined = events(&up);
    let offline = joined.find("offline").expect(&joined);
    let online = joined.rfind("online (").expect(&joined);
    assert!(offline < online, "{joined}");
}

#[tokio::test]
async fn a_host_key_that_does_not_match_known_hosts_is_refused_with_a_clear_error() {
    let r = Remote::start(
        vec![host("a", "127.0.0.2", 1), host("b", "127.0.0.3", 1)],
        Setup::default(),
    )
    .await;
    r.wait_host("a", SECS_30, |v| v["health"] == "online").await;
    // a's entry now carries b's key: a presents a key known_hosts does not vouch for. The pooled
    // connection was checked when it opened; dropping it makes the next one meet the new file.
    let a = &r.servers[0];
    let b = &r.servers[1];
    let forged = format!(
        "[{}]:{} {}\n{}\n",
        a.ip,
        a.port,
        b.host_public_key(),
        b.known_hosts_line()
    );
    std::fs::write(&r.known_hosts, forged).unwrap();
    r.servers[0].drop_connections();
    let view = r
        .wait_host("a", SECS_30, |v| v["health"] == "offline")
        .await;
    let reason = view["reason"].as_str().unwrap();
    assert!(reason.contains("refused a"), "{reason}");
    assert!(reason.contains("does NOT match"), "{reason}");
    assert!(
        reason.contains(&r.known_hosts.display().to_string()),
        "{reason}"
    );
    // Nothing runs on a: the task goes to b.
    let id = r.fleet.submit("Hello", "Add a greeting.").await;
    let task = r.fleet.wait_status(&id, "completed", SECS_30).await;
    assert_eq!(task["assigned_host"], "b");
}

#[tokio::test]
async fn a_host_behind_a_jump_host_is_reached_through_it() {
    let mut a = host("a", "127.0.0.2", 1);
    a.agents = r#"["claude"]"#;
    let mut b = host("b", "127.0.0.3", 1);
    b.lines = r#"proxy_jump = "a""#;
    let mut r = Remote::start(vec![a, b], Setup::default()).await;
    let id = r.fleet.submit("Through a", "Add a greeting.").await;
    let task = r.fleet.wait_status(&id, "completed", SECS_30).await;
    assert_eq!(task["assigned_host"], "b");
    assert_eq!(r.launch_hosts(), vec!["b"]);
    // b's own server still runs, but without a there is no way to it.
    r.server("a").stop();
    r.servers[1].drop_connections();
    let view = r
        .wait_host("b", SECS_30, |v| v["health"] == "offline")
        .await;
    assert!(
        view["reason"].as_str().unwrap().contains("jump host"),
        "{view:#}"
    );
}
