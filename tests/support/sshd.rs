//! Real OpenSSH servers on loopback for end-to-end tests: each `Sshd` is Debian's
//! `/usr/sbin/sshd` in the foreground on a free port of a 127.0.0.x address, with its own host
//! key, config, `authorized_keys` and log in a directory of the test's temp dir. Servers can
//! drop their connections (a network cut: detached processes survive), stop (connection
//! refused) and restart on the same port with the same host key. Tests run as root, so every
//! session is root's; `ClientKey` makes the client key pairs with `ssh-keygen`.

#![allow(dead_code)] // each includer uses a part of it

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";
pub const SSH: &str = "ssh";
pub const SSH_KEYGEN: &str = "ssh-keygen";

/// How long a server may take to listen, and its connections or listener to die.
const WITHIN: Duration = Duration::from_secs(10);
/// Ports tried when the free port picked was taken before sshd bound it.
const PORT_ATTEMPTS: usize = 10;

/// Panics with a clear message when sshd is missing. Tests must never skip silently.
pub fn require_sshd() -> PathBuf {
    let sshd = PathBuf::from(SSHD);
    assert!(
        sshd.is_file(),
        "sshd not found: run scripts/test, which installs openssh-server (expected {SSHD})"
    );
    sshd
}

/// A client key pair made once per test dir with ssh-keygen (ed25519, no passphrase).
pub struct ClientKey {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl ClientKey {
    /// `dir/name` (private) and `dir/name.pub`, replacing any earlier pair of that name.
    pub fn generate(dir: &Path, name: &str) -> ClientKey {
        ClientKey::generate_with_passphrase(dir, name, "")
    }

    /// A key pair whose private key is encrypted with `passphrase` ("" for none).
    pub fn generate_with_passphrase(dir: &Path, name: &str, passphrase: &str) -> ClientKey {
        fs::create_dir_all(dir).unwrap();
        let private = dir.join(name);
        let public = dir.join(format!("{name}.pub"));
        // ssh-keygen asks before overwriting; there is nobody to answer.
        let _ = fs::remove_file(&private);
        let _ = fs::remove_file(&public);
        keygen(&private, name, passphrase);
        ClientKey { private, public }
    }

    /// The public key line ("ssh-ed25519 AAAA… name").
    pub fn public_line(&self) -> String {
        read(&self.public).trim().to_string()
    }
}

fn keygen(path: &Path, comment: &str, passphrase: &str) {
    let out = Command::new(SSH_KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("{SSH_KEYGEN}: {e} (run scripts/test, which installs openssh-client)")
        });
    assert!(
        out.status.success(),
        "ssh-keygen for {}: {}\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One sshd listening on `ip:port`, with its own host key, config and authorized_keys.
pub struct Sshd {
    pub name: String,
    pub ip: String,
    pub port: u16,
    /// `<test dir>/<name>`: host_ed25519, sshd_config, authorized_keys, sshd.log, sshd.pid.
    pub dir: PathBuf,
    sshd: PathBuf,
    child: Option<Child>,
}

impl Sshd {
    /// Starts `/usr/sbin/sshd -D -e -f <dir>/sshd_config` as a child process on a free port of
    /// `ip` (e.g. "127.0.0.2"; 127.0.0.x binds without setup), accepting `key`. `env` pairs are
    /// passed to every session with sshd's `SetEnv` (after `SHLVL=1`, which a pair may
    /// override). Waits until the port accepts TCP. The server's files go to `dir/name`.
    pub fn start(dir: &Path, name: &str, ip: &str, key: &ClientKey, env: &[(&str, &str)]) -> Sshd {
        let sshd = require_sshd();
        // The privilege separation directory, which Debian's package makes at boot only.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let dir = dir.join(name);
        fs::create_dir_all(&dir).unwrap();
        keygen(&dir.join("host_ed25519"), name, "");
        fs::copy(&key.public, dir.join("authorized_keys")).expect("copy the client's public key");
        let mut server = Sshd {
            name: name.to_string(),
            ip: ip.to_string(),
            port: 0,
            dir,
            sshd,
            child: None,
        };
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port(ip);
            server.write_config(env);
            if server.spawn() {
                return server;
            }
        }
        panic!(
            "sshd {name}: {PORT_ATTEMPTS} free ports of {ip} were all taken before sshd bound them\n{}",
            server.log_tail()
        );
    }

    fn write_config(&self, env: &[(&str, &str)]) {
        let d = self.dir.display();
        // SHLVL=1 is essential: root's login shell is bash, and Debian's bash sources ~/.bashrc
        // for commands run by sshd unless SHLVL >= 1. Root's .bashrc here runs `pyenv init`,
        // about 150 ms on every command. A pair of `env` may still set SHLVL itself.
        let mut set_env = Vec::new();
        if !env.iter().any(|(k, _)| *k == "SHLVL") {
            set_env.push(set_env_word("SHLVL", "1"));
        }
        set_env.extend(env.iter().map(|(k, v)| set_env_word(k, v)));
        let config = format!(
            "Port {port}
ListenAddress {ip}
HostKey {d}/host_ed25519
PidFile {d}/sshd.pid
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile {d}/authorized_keys
StrictModes no
PermitRootLogin prohibit-password
MaxSessions 100
MaxStartups 100:30:200
Subsystem sftp internal-sftp
SetEnv {set_env}
",
            port = self.port,
            ip = self.ip,
            set_env = set_env.join(" "),
        );
        fs::write(self.dir.join("sshd_config"), config).unwrap();
    }

    /// Spawns the listener and waits until it listens: true, or false when the port was taken.
    fn spawn(&mut self) -> bool {
        let log_path = self.dir.join("sshd.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let from = log.metadata().unwrap().len() as usize;
        let child = Command::new(&self.sshd)
            .args(["-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.sshd.display()));
        let pid = child.id() as i32;
        self.child = Some(child);
        let deadline = Instant::now() + WITHIN;
        loop {
            // sshd logs this once listen(2) has succeeded.
            let log = self.log();
            let fresh = log.get(from..).unwrap_or("");
            if fresh.contains("Server listening on") {
                return true;
            }
            if !alive(pid) {
                self.child.take().unwrap().wait().unwrap();
                if fresh.contains("Address already in use") {
                    return false;
                }
                panic!("sshd {} exited on start:\n{}", self.name, self.log_tail());
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "sshd {} did not listen on {}:{} within {WITHIN:?}:\n{}",
                    self.name,
                    self.ip,
                    self.port,
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// The listener's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn is_running(&self) -> bool {
        self.pid().is_some_and(alive)
    }

    /// "ip:port", for a TCP connection.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The host's public key line ("ssh-ed25519 AAAA…"), without its comment.
    pub fn host_public_key(&self) -> String {
        let line = read(&self.dir.join("host_ed25519.pub"));
        line.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A known_hosts line for this server: "[ip]:port ssh-ed25519 AAAA…" (port != 22 form).
    pub fn known_hosts_line(&self) -> String {
        format!("[{}]:{} {}", self.ip, self.port, self.host_public_key())
    }

    /// Accepts `key` too.
    pub fn authorize(&self, key: &ClientKey) {
        let path = self.dir.join("authorized_keys");
        let mut keys = read(&path);
        keys.push_str(&key.public_line());
        keys.push('\n');
        fs::write(path, keys).unwrap();
    }

    /// The `ssh` client for this server as root, with `key` and `known_hosts` (strict host key
    /// checking, no config files, no agent, no prompts); add the remote command.
    pub fn ssh(&self, key: &ClientKey, known_hosts: &Path) -> Command {
        let mut ssh = Command::new(SSH);
        ssh.args([
            "-F",
            "none",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args([
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-o"])
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(&key.private)
        .arg("-p")
        .arg(self.port.to_string())
        .arg(format!("root@{}", self.ip))
        .stdin(Stdio::null());
        ssh
    }

    /// Kills the per-connection sshd processes (children of the listener), keeping the
    /// listener: established SSH connections drop, new ones work. Every process in a session
    /// sshd made for a command goes too (without a pty nothing would hang it up); processes
    /// that left their session (setsid) keep running. Returns once all of them are dead.
    pub fn drop_connections(&self) {
        if let Some(pid) = self.pid().filter(|&p| alive(p)) {
            self.kill_connections(pid);
        }
    }

    fn kill_connections(&self, listener: i32) {
        // Each connection's sshd calls setsid: its session holds it and its privilege-separated
        // children. Each command sshd runs leads a session of its own, whose members are the
        // command's processes. Sessions are gathered over the rounds, since killed sshds'
        // orphans move to pid 1.
        let mut sessions = HashSet::new();
        let deadline = Instant::now() + WITHIN;
        loop {
            let procs = processes();
            let mut targets = HashSet::new();
            for p in procs.iter().filter(|p| p.ppid == listener) {
                targets.insert(p.pid);
                // A connection sshd that did not call setsid yet shares the listener's session.
                if p.sid == p.pid {
                    sessions.insert(p.sid);
                }
            }
            loop {
                let grown = procs.iter().filter(|p| {
                    p.sid == p.pid
                        && !sessions.contains(&p.sid)
                        && procs.iter().any(|q| {
                            q.pid == p.ppid
                                && q.comm.starts_with("sshd")
                                && sessions.contains(&q.sid)
                        })
                });
                let grown: Vec<i32> = grown.map(|p| p.pid).collect();
                if grown.is_empty() {
                    break;
                }
                sessions.extend(grown);
            }
            targets.extend(
                procs
                    .iter()
                    .filter(|p| sessions.contains(&p.sid))
                    .map(|p| p.pid),
            );
            targets.remove(&listener);
            if targets.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sshd {}: connection processes {targets:?} survive SIGKILL",
                self.name
            );
            for &pid in &targets {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Stops the listener and its connections (SIGTERM then SIGKILL, waits for exit). Processes
    /// detached from sessions keep running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        if alive(pid) {
            // Stopped, the listener accepts nothing while its connections are killed, and its
            // dead connections stay its children (not pid 1's) until it exits.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            self.kill_connections(pid);
            unsafe {
                libc::kill(pid, libc::SIGTERM);
                libc::kill(pid, libc::SIGCONT);
            }
        }
        let deadline = Instant::now() + WITHIN;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break;
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Starts again on the same port with the same host key (stopping first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        // The port was ours; another test may have picked it meanwhile. Wait for it a little.
        let deadline = Instant::now() + WITHIN;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "sshd {}: port {}:{} stays taken, cannot restart:\n{}",
                self.name,
                self.ip,
                self.port,
                self.log_tail()
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// Everything sshd logged (all starts, all connections).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// The last lines of the log, for panic messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "--- {} (tail) ---\n{tail}",
            self.dir.join("sshd.log").display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a known_hosts file holding the lines of `servers`.
pub fn known_hosts(path: &Path, servers: &[&Sshd]) {
    let text: String = servers
        .iter()
        .map(|s| s.known_hosts_line() + "\n")
        .collect();
    fs::write(path, text).unwrap();
}

/// Whether a TCP connection to `addr` is refused.
pub fn refused(addr: &str) -> bool {
    matches!(
        TcpStream::connect(addr),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Whether `pid` is a live (non-zombie) process. Orphans are not always reaped here, so a
/// killed process may stay a zombie.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|p| !p.zombie)
}

/// A port of `ip` nobody listened on a moment ago.
fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"))
        .local_addr()
        .unwrap()
        .port()
}

/// One `SetEnv` word: `NAME="value"`, with `"` and `\` escaped (sshd's config splits words on
/// whitespace outside quotes).
fn set_env_word(name: &str, value: &str) -> String {
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "SetEnv name {name:?}"
    );
    assert!(
        !value.contains('\n'),
        "SetEnv value with a newline: {value:?}"
    );
    let value = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("{name}=\"{value}\"")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// What /proc/<pid>/stat says about a process.
struct Proc {
    pid: i32,
    ppid: i32,
    sid: i32,
    comm: String,
    zombie: bool,
}

fn stat(pid: i32) -> Option<Proc> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp session …"; comm may hold spaces and parentheses.
    let (head, rest) = stat.rsplit_once(") ")?;
    let comm = head.split_once(" (")?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Proc {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        sid: fields.get(3)?.parse().ok()?,
        comm,
        zombie: *fields.first()? == "Z",
    })
}

/// Every live process.
fn processes() -> Vec<Proc> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(stat)
        .filter(|p| !p.zombie)
        .collect()
}
