//! The SSH shell against real OpenSSH servers on loopback: one pooled connection per host,
//! stdin/stdout/stderr and exit codes like a local `sh -c`, transparent reconnection, host key
//! checks that refuse what known_hosts does not vouch for, key passphrases and timeouts.

#[path = "support/sshd.rs"]
mod sshd;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_fleet::io::shell::{Shell, ShellError};
use agent_fleet::io::ssh::{HostKeyCheck, SshOptions, SshShell, SshTarget};
use sshd::{ClientKey, Sshd};
use tempfile::TempDir;

const T: Duration = Duration::from_secs(10);

struct Lab {
    // Servers stop before the directory goes.
    server: Sshd,
    key: ClientKey,
    known_hosts: PathBuf,
    _dir: TempDir,
}

fn lab(ip: &str) -> Lab {
    sshd::require_sshd();
    let dir = tempfile::tempdir().unwrap();
    let key = ClientKey::generate(dir.path(), "client");
    let server = Sshd::start(dir.path(), "h", ip, &key, &[]);
    let known_hosts = dir.path().join("known_hosts");
    sshd::known_hosts(&known_hosts, &[&server]);
    Lab {
        server,
        key,
        known_hosts,
        _dir: dir,
    }
}

fn target(lab: &Lab) -> SshTarget {
    SshTarget {
        host_id: "h".into(),
        hostname: lab.server.ip.clone(),
        port: lab.server.port,
        user: "root".into(),
        key_path: lab.key.private.clone(),
        key_passphrase: None,
        host_key: HostKeyCheck::KnownHosts(lab.known_hosts.clone()),
    }
}

fn shell(lab: &Lab) -> SshShell {
    SshShell::new(target(lab), SshOptions::default(), None)
}

fn logins(lab: &Lab) -> usize {
    lab.server.log().matches("Accepted publickey").count()
}

#[tokio::test]
async fn scripts_share_one_pooled_connection() {
    let lab = lab("127.0.0.2");
    let sh = shell(&lab);
    for i in 0..20 {
        let out = sh.run(&format!("echo {i}"), b"", T).await.unwrap();
        assert_eq!(out.text(), i.to_string());
    }
    assert_eq!(sh.connections_opened(), 1);
    assert_eq!(logins(&lab), 1, "{}", lab.server.log());
}

#[tokio::test]
async fn stdin_stdout_stderr_and_the_exit_code_come_through() {
    let lab = lab("127.0.0.2");
    let sh = shell(&lab);
    let out = sh
        .run("cat; echo oops >&2; exit 3", b"hello", T)
        .await
        .unwrap();
    assert_eq!(out.status, Some(3));
    assert_eq!(out.stdout, b"hello");
    assert_eq!(out.stderr, b"oops\n");
    let big = vec![b'x'; 1 << 20];
    let out = sh.run("wc -c", &big, T).await.unwrap();
    assert_eq!(out.text(), (1 << 20).to_string());
}

#[tokio::test]
async fn a_script_ended_by_a_signal_has_no_status() {
    let lab = lab("127.0.0.2");
    let out = shell(&lab).run("kill -9 $$", b"", T).await.unwrap();
    assert_eq!(out.status, None);
}

#[tokio::test]
async fn quotes_and_newlines_in_scripts_reach_sh_intact() {
    let lab = lab("127.0.0.2");
    let script = "printf '%s|' \"it's\" 'a \"b\"' '$HOME' \"$(printf 'x\\ny')\"";
    let out = shell(&lab).run(script, b"", T).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "it's|a \"b\"|$HOME|x\ny|"
    );
}

#[tokio::test]
async fn a_dropped_connection_is_reopened_by_the_next_script() {
    let lab = lab("127.0.0.2");
    let sh = shell(&lab);
    sh.run("true", b"", T).await.unwrap();
    lab.server.drop_connections();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The first script after the drop may meet the dead connection; the next one must work.
    let mut ok = false;
    for _ in 0..2 {
        if let Ok(out) = sh.run("echo back", b"", T).await {
            ok = out.text() == "back";
            break;
        }
    }
    assert!(ok);
    assert_eq!(sh.connections_opened(), 2);
}

#[tokio::test]
async fn many_concurrent_scripts_queue_on_one_connection() {
    let lab = lab("127.0.0.2");
    let sh = Arc::new(shell(&lab));
    let runs = (0..30).map(|i| {
        let sh = sh.clone();
        tokio::spawn(async move { sh.run(&format!("sleep 0.1; echo {i}"), b"", T).await })
    });
    for (i, r) in futures::future::join_all(runs)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap().unwrap().text(), i.to_string());
    }
    assert_eq!(sh.connections_opened(), 1);
}

#[tokio::test]
async fn a_script_over_its_timeout_fails_and_the_connection_stays_usable() {
    let lab = lab("127.0.0.2");
    let sh = shell(&lab);
    let err = sh
        .run("sleep 5", b"", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, ShellError::Timeout { .. }), "{err}");
    assert_eq!(sh.run("echo ok", b"", T).await.unwrap().text(), "ok");
}

#[tokio::test]
async fn a_stopped_server_is_unreachable() {
    let mut lab = lab("127.0.0.2");
    lab.server.stop();
    let err = shell(&lab).run("true", b"", T).await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().starts_with("cannot connect to h"), "{err}");
    assert!(
        err.to_string().contains("is sshd listening there?"),
        "{err}"
    );
}

#[tokio::test]
async fn a_host_missing_from_known_hosts_is_refused() {
    let lab = lab("127.0.0.2");
    std::fs::write(&lab.known_hosts, "").unwrap();
    let err = shell(&lab).run("true", b"", T).await.unwrap_err();
    assert!(matches!(err, ShellError::HostKey { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("has no key for [127.0.0.2]"), "{text}");
    assert!(text.contains("ssh-keyscan"), "{text}");
}

#[tokio::test]
async fn a_host_key_that_changed_is_refused() {
    let lab = lab("127.0.0.2");
    let other = ClientKey::generate(lab._dir.path(), "other");
    let forged = format!(
        "[{}]:{} {}\n",
        lab.server.ip,
        lab.server.port,
        other
            .public_line()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    );
    std::fs::write(&lab.known_hosts, forged).unwrap();
    let err = shell(&lab).run("true", b"", T).await.unwrap_err();
    assert!(matches!(err, ShellError::HostKey { .. }), "{err}");
    assert!(err.to_string().contains("does NOT match"), "{err}");
    assert!(!err.is_unreachable(), "a refusal is not a network trouble");
}

#[tokio::test]
async fn the_explicit_opt_out_skips_host_key_checks() {
    let lab = lab("127.0.0.2");
    std::fs::write(&lab.known_hosts, "").unwrap();
    let mut t = target(&lab);
    t.host_key = HostKeyCheck::Ignore;
    let sh = SshShell::new(t, SshOptions::default(), None);
    assert_eq!(sh.run("echo ok", b"", T).await.unwrap().text(), "ok");
}

#[tokio::test]
async fn a_key_the_host_does_not_accept_is_a_clear_error() {
    let lab = lab("127.0.0.2");
    let stranger = ClientKey::generate(lab._dir.path(), "stranger");
    let mut t = target(&lab);
    t.key_path = stranger.private.clone();
    let err = SshShell::new(t, SshOptions::default(), None)
        .run("true", b"", T)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not accept key"), "{err}");
}

#[tokio::test]
async fn a_key_with_a_passphrase_needs_it() {
    let lab = lab("127.0.0.2");
    let locked = ClientKey::generate_with_passphrase(lab._dir.path(), "locked", "s3cret pass");
    lab.server.authorize(&locked);
    let mut t = target(&lab);
    t.key_path = locked.private.clone();
    let err = SshShell::new(t.clone(), SshOptions::default(), None)
        .run("true", b"", T)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("key_passphrase_env"), "{err}");
    t.key_passphrase = Some("s3cret pass".into());
    let out = SshShell::new(t, SshOptions::default(), None)
        .run("echo ok", b"", T)
        .await
        .unwrap();
    assert_eq!(out.text(), "ok");
}

#[tokio::test]
async fn a_jump_host_carries_the_connection_and_is_needed() {
    let mut jump = lab("127.0.0.2");
    let inner = Sshd::start(jump._dir.path(), "inner", "127.0.0.3", &jump.key, &[]);
    sshd::known_hosts(&jump.known_hosts, &[&jump.server, &inner]);
    let via = Arc::new(shell(&jump));
    let mut t = target(&jump);
    t.host_id = "inner".into();
    t.hostname = inner.ip.clone();
    t.port = inner.port;
    let sh = SshShell::new(t, SshOptions::default(), Some(via.clone()));
    let out = sh.run("echo $SSH_CONNECTION", b"", T).await.unwrap();
    assert!(
        out.text().ends_with(&format!("127.0.0.3 {}", inner.port)),
        "{}",
        out.text()
    );
    assert_eq!(
        via.connections_opened(),
        1,
        "the jump host's pooled connection"
    );
    jump.server.stop();
    sh.disconnect().await;
    let err = sh.run("true", b"", T).await.unwrap_err();
    assert!(err.to_string().contains("jump host"), "{err}");
    drop(inner);
}

/// A server that accepts TCP connections and never says a word: an SSH connect to it can only
/// time out. Counts the connections it was offered.
fn silent_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn scripts_waiting_for_an_unanswered_connect_share_its_failure() {
    let lab = lab("127.0.0.2");
    let (addr, accepted) = silent_server();
    let mut silent = target(&lab);
    silent.host_id = "silent".into();
    silent.hostname = addr.ip().to_string();
    silent.port = addr.port();
    let options = SshOptions {
        connect_timeout: Duration::from_secs(1),
        ..SshOptions::default()
    };
    let shell = SshShell::new(silent, options, None);
    let results = futures::future::join_all((0..6).map(|_| shell.run("true", b"", T))).await;
    for r in &results {
        let err = r.as_ref().unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(err.to_string().contains("no answer from"), "{err}");
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one attempt to connect, shared by the six scripts"
    );
    // The next script tries again.
    let err = shell.run("true", b"", T).await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}
