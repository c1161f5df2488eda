//! The sshd test harness itself, driven with OpenSSH's `ssh` client: servers answer with their
//! host keys, run side by side, pass their environment, drop connections without touching
//! detached processes, and stop and restart with the same host key.

#[path = "support/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::{Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use sshd::{ClientKey, Sshd, alive, known_hosts, refused};

/// Runs `command` on `server` and returns the output.
fn ssh(server: &Sshd, key: &ClientKey, hosts: &Path, command: &str) -> Output {
    server
        .ssh(key, hosts)
        .arg(command)
        .output()
        .expect("run ssh")
}

/// Runs `command` on `server`, asserts it succeeds and returns its stdout.
fn ssh_ok(server: &Sshd, key: &ClientKey, hosts: &Path, command: &str) -> String {
    let out = ssh(server, key, hosts, command);
    assert!(
        out.status.success(),
        "ssh {} {command:?}: {}\n{}\n{}",
        server.name,
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log_tail()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until `pred` holds (checked every 20 ms) or 10 s pass.
fn eventually(mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if pred() {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    pred()
}

/// SIGKILLs a process at the end of the test, whatever happens.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

#[test]
fn a_server_answers_only_with_its_known_hosts_line() {
    let tmp = tempfile::tempdir().unwrap();
    let key = ClientKey::generate(tmp.path(), "id_client");
    let server = Sshd::start(tmp.path(), "a", "127.0.0.2", &key, &[]);
    assert!(server.is_running());
    assert!(server.host_public_key().starts_with("ssh-ed25519 AAAA"));
    assert_eq!(
        server.known_hosts_line(),
        format!("[127.0.0.2]:{} {}", server.port, server.host_public_key())
    );
    let hosts = tmp.path().join("known_hosts");
    known_hosts(&hosts, &[&server]);
    assert_eq!(ssh_ok(&server, &key, &hosts, "echo ok"), "ok\n");

    let empty = tmp.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let out = ssh(&server, &key, &empty, "echo ok");
    assert!(!out.status.success(), "an unknown host key was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Host key verification failed"), "{stderr}");
}

#[test]
fn two_servers_run_at_once_on_their_own_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let key = ClientKey::generate(tmp.path(), "id_client");
    let b = Sshd::start(tmp.path(), "b", "127.0.0.2", &key, &[]);
    let c = Sshd::start(tmp.path(), "c", "127.0.0.3", &key, &[]);
    assert_ne!(b.host_public_key(), c.host_public_key());
    let hosts = tmp.path().join("known_hosts");
    known_hosts(&hosts, &[&b, &c]);
    for server in [&b, &c] {
        // SSH_CONNECTION is "client_ip client_port server_ip server_port".
        let seen = ssh_ok(server, &key, &hosts, "echo $SSH_CONNECTION");
        let fields: Vec<&str> = seen.split_whitespace().collect();
        assert_eq!(
            fields[2..],
            [server.ip.as_str(), &server.port.to_string()],
            "{seen}"
        );
    }
}

#[test]
fn set_env_pairs_reach_the_session() {
    let tmp = tempfile::tempdir().unwrap();
    let key = ClientKey::generate(tmp.path(), "id_client");
    let value = r#"two words, "quoted" \ and $HOME"#;
    let server = Sshd::start(
        tmp.path(),
        "env",
        "127.0.0.2",
        &key,
        &[("FLEET_TEST_VALUE", value), ("FLEET_TEST_EMPTY", "")],
    );
    let hosts = tmp.path().join("known_hosts");
    known_hosts(&hosts, &[&server]);
    let seen = ssh_ok(
        &server,
        &key,
        &hosts,
        r#"printf '%s|%s|%s' "$FLEET_TEST_VALUE" "${FLEET_TEST_EMPTY-unset}" "$SHLVL""#,
    );
    let fields: Vec<&str> = seen.split('|').collect();
    assert_eq!(fields[..2], [value, ""], "{seen}");
    // bash counts the level up from SetEnv's SHLVL=1; a shell that does not keeps it.
    assert!(["1", "2"].contains(&fields[2]), "SHLVL {seen}");
}

#[test]
fn dropping_connections_ends_sessions_but_not_detached_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let key = ClientKey::generate(tmp.path(), "id_client");
    let server = Sshd::start(tmp.path(), "drop", "127.0.0.2", &key, &[]);
    let hosts = tmp.path().join("known_hosts");
    known_hosts(&hosts, &[&server]);
    // Both files are written whole, then renamed: seen only once their pids are in.
    let pids = tmp.path().join("pids");
    let detached_pid = tmp.path().join("detached.pid");
    let script = format!(
        "setsid sh -c 'echo $$ > {detached}.tmp && mv {detached}.tmp {detached}; exec sleep 30' < /dev/null > /dev/null 2>&1 &
sleep 30 &
echo $$ $! > {pids}.tmp && mv {pids}.tmp {pids}
wait",
        detached = detached_pid.display(),
        pids = pids.display(),
    );
    let mut client = server
        .ssh(&key, &hosts)
        .arg(script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ssh");
    assert!(
        eventually(|| pids.exists() && detached_pid.exists()),
        "the session did not start:\n{}",
        server.log_tail()
    );
    let read_pids = |path: &Path| -> Vec<i32> {
        let text = std::fs::read_to_string(path).unwrap();
        text.split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    };
    let session = read_pids(&pids);
    let detached = read_pids(&detached_pid)[0];
    let _cleanup = KillOnDrop(detached);
    assert!(session.iter().all(|&p| alive(p)) && alive(detached));

    server.drop_connections();
    assert!(
        eventually(|| client.try_wait().unwrap().is_some()),
        "the ssh client survived drop_connections"
    );
    let status = client.wait().unwrap();
    assert!(!status.success(), "the dropped ssh client exited {status}");
    for pid in session {
        assert!(!alive(pid), "session process {pid} survived the drop");
    }
    assert!(
        alive(detached),
        "the detached process died with the connection"
    );
    assert!(server.is_running());
    assert_eq!(ssh_ok(&server, &key, &hosts, "echo ok"), "ok\n");
}

#[test]
fn a_stopped_server_refuses_and_a_restarted_one_keeps_port_and_host_key() {
    let tmp = tempfile::tempdir().unwrap();
    let key = ClientKey::generate(tmp.path(), "id_client");
    let mut server = Sshd::start(tmp.path(), "restart", "127.0.0.2", &key, &[]);
    let hosts = tmp.path().join("known_hosts");
    known_hosts(&hosts, &[&server]);
    assert_eq!(ssh_ok(&server, &key, &hosts, "echo ok"), "ok\n");
    let (port, host_key) = (server.port, server.host_public_key());

    server.stop();
    assert!(!server.is_running());
    assert!(
        refused(&server.addr()),
        "{} still accepts TCP",
        server.addr()
    );
    let out = ssh(&server, &key, &hosts, "echo ok");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Connection refused"),
        "{}: {stderr}",
        out.status
    );

    server.restart();
    assert!(server.is_running());
    assert_eq!((server.port, server.host_public_key()), (port, host_key));
    assert_eq!(ssh_ok(&server, &key, &hosts, "echo ok"), "ok\n");
}
