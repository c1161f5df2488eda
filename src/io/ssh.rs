//! SSH hosts (SPEC §8): a [`Shell`] that runs scripts on a remote machine over one pooled
//! connection per host.
//!
//! - **Authentication** by key file (optional passphrase); the host key is checked against a
//!   known_hosts file, unless the host explicitly opts out.
//! - **One connection per host**, shared by every task on it: each script is a channel on it, at
//!   most `max_sessions` at once (OpenSSH refuses more than its `MaxSessions`). A dropped
//!   connection is reopened transparently by the next script, and a script whose channel could not
//!   even open is sent again on the new connection (it had not started).
//! - **One connection attempt at a time, shared**: the scripts that need a connection while one is
//!   being opened wait for that attempt and share its result, failure included; no lock is held
//!   while connecting, so an unreachable host costs its waiting scripts one connect timeout, not
//!   one each.
//! - **Jump hosts**: a host with `proxy_jump` is reached through a `direct-tcpip` channel of the
//!   jump host's own pooled connection.
//! - `TCP_NODELAY` and keepalives are on; scripts run under `sh -c`, so the login shell only
//!   starts them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_ssh2_tokio::{AuthMethod, Client, ServerCheckMethod};
use futures::future::BoxFuture;
use russh::ChannelMsg;
use tokio::sync::{Mutex, Semaphore};

use super::shell::{Shell, ShellError, ShellOutput, quote};

/// How a host's key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// Against this known_hosts file: an unknown or different key is refused.
    KnownHosts(PathBuf),
    /// Not at all (an explicit per-host opt-out, for throw-away machines).
    Ignore,
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// The host's id in the configuration, for messages.
    pub host_id: String,
    pub hostname: String,
    pub port: u16,
    pub user: String,
    pub key_path: PathBuf,
    pub key_passphrase: Option<String>,
    pub host_key: HostKeyCheck,
}

/// Connection settings shared by all hosts.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_max: usize,
    pub max_sessions: usize,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(15),
            keepalive_max: 3,
            max_sessions: 8,
        }
    }
}

/// A remote host reached over SSH.
pub struct SshShell {
    target: SshTarget,
    options: SshOptions,
    /// The host to jump through, if any.
    jump: Option<Arc<SshShell>>,
    /// The pooled connection and the outcome of the last attempt to open one.
    pool: std::sync::Mutex<Pool>,
    /// Held by the one attempt to connect under way (never while using a connection).
    connecting: Mutex<()>,
    /// Channels open at once on the connection.
    sessions: Semaphore,
    /// Connections opened so far (1 while the first one lasts).
    connects: AtomicU64,
}

/// The pooled connection, guarded by a lock that is never held across an await.
#[derive(Default)]
struct Pool {
    /// `None` until the first script, or after the connection dropped.
    client: Option<Client>,
    /// Attempts to connect finished so far.
    attempts: u64,
    /// Why the last attempt failed, if it did: shared with the scripts that waited for it.
    failure: Option<ShellError>,
}

impl Pool {
    fn open_client(&self) -> Option<Client> {
        self.client.as_ref().filter(|c| !c.is_closed()).cloned()
    }
}

/// Why a script did not run to its end on a connection.
enum ExecError {
    /// No channel could be opened: the script never started, so it may be sent again.
    NotStarted(String),
    /// The connection failed after the script was sent.
    Broken(String),
}

impl SshShell {
    pub fn new(target: SshTarget, options: SshOptions, jump: Option<Arc<SshShell>>) -> Self {
        let sessions = Semaphore::new(options.max_sessions.max(1));
        SshShell {
            target,
            options,
            jump,
            pool: std::sync::Mutex::new(Pool::default()),
            connecting: Mutex::new(()),
            sessions,
            connects: AtomicU64::new(0),
        }
    }

    /// How many connections this shell has opened (a pooled shell opens one until it drops).
    pub fn connections_opened(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Closes the pooled connection; the next script opens a new one.
    pub async fn disconnect(&self) {
        let client = self.pool().client.take();
        if let Some(client) = client {
            let _ = client.disconnect().await;
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic while holding this lock cannot leave the pool half-changed (each critical
        // section is one assignment or read), so a poisoned lock is still good to use.
        self.pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The pooled connection, opened (or reopened) if needed. While one attempt to connect is
    /// under way, other callers wait for it and share its result, failure included.
    pub fn client(&self) -> BoxFuture<'_, Result<Client, ShellError>> {
        // Boxed: a jump host's client is fetched recursively.
        Box::pin(async move {
            let seen = {
                let pool = self.pool();
                if let Some(c) = pool.open_client() {
                    return Ok(c);
                }
                pool.attempts
            };
            let _attempt = self.connecting.lock().await;
            {
                let pool = self.pool();
                if let Some(c) = pool.open_client() {
                    return Ok(c);
                }
                // An attempt ended while this caller waited for it: its failure is the answer.
                if pool.attempts != seen
                    && let Some(failure) = &pool.failure
                {
                    return Err(shared_failure(failure, &self.target.host_id));
                }
            }
            let result = tokio::time::timeout(self.options.connect_timeout, self.connect())
                .await
                .unwrap_or_else(|_| {
                    Err(ShellError::Connect {
                        host: self.target.host_id.clone(),
                        detail: format!(
                            "no answer from {}:{} within {}",
                            self.target.hostname,
                            self.target.port,
                            humantime::format_duration(self.options.connect_timeout)
                        ),
                    })
                });
            let mut pool = self.pool();
            pool.attempts += 1;
            match &result {
                Ok(client) => {
                    self.connects.fetch_add(1, Ordering::Relaxed);
                    pool.client = Some(client.clone());
                    pool.failure = None;
                }
                Err(e) => {
                    pool.client = None;
                    pool.failure = Some(shared_failure(e, &self.target.host_id));
                }
            }
            result
        })
    }

    async fn connect(&self) -> Result<Client, ShellError> {
        let t = &self.target;
        let auth = AuthMethod::with_key_file(&t.key_path, t.key_passphrase.as_deref());
        let check = match &t.host_key {
            HostKeyCheck::KnownHosts(path) => {
                ServerCheckMethod::KnownHostsFile(path.display().to_string())
            }
            HostKeyCheck::Ignore => ServerCheckMethod::NoCheck,
        };
        let config = async_ssh2_tokio::Config {
            nodelay: true,
            keepalive_interval: Some(self.options.keepalive_interval),
            keepalive_max: self.options.keepalive_max,
            // Idle connections stay open: they are the pool.
            inactivity_timeout: None,
            ..Default::default()
        };
        let addr = (t.hostname.clone(), t.port);
        let result = match &self.jump {
            None => Client::connect_with_config(addr, &t.user, auth, check, config).await,
            Some(jump) => {
                let via = jump.client().await.map_err(|e| ShellError::Connect {
                    host: t.host_id.clone(),
                    detail: format!("through jump host: {e}"),
                })?;
                Client::connect_via_with_config(&via, addr, &t.user, auth, check, config).await
            }
        };
        result.map_err(|e| self.connect_error(e))
    }

    /// Turns a connection failure into a message that says what to do about it.
    fn connect_error(&self, e: async_ssh2_tokio::Error) -> ShellError {
        use async_ssh2_tokio::Error as E;
        let t = &self.target;
        let host = t.host_id.clone();
        let key_file = t.key_path.display();
        match (&e, &t.host_key) {
            (E::ServerCheckFailed, HostKeyCheck::KnownHosts(path)) => ShellError::HostKey {
                host,
                detail: self.host_key_mismatch(path),
            },
            (E::SshError(russh::Error::UnknownKey), HostKeyCheck::KnownHosts(path)) => {
                ShellError::HostKey {
                    host,
                    detail: format!(
                        "{} has no key for {}; add the host's key (e.g. `ssh-keyscan -p {} {} >> {}`) \
                         after checking its fingerprint",
                        path.display(),
                        known_hosts_name(&t.hostname, t.port),
                        t.port,
                        t.hostname,
                        path.display()
                    ),
                }
            }
            (E::KeyInvalid(err), _) => ShellError::Connect {
                host,
                detail: format!(
                    "cannot use key file {key_file}: {err}{}",
                    if t.key_passphrase.is_none() {
                        " (if it has a passphrase, set `key_passphrase_env`)"
                    } else {
                        ""
                    }
                ),
            },
            (E::KeyAuthFailed, _) => ShellError::Connect {
                host,
                detail: format!(
                    "{}@{}:{} did not accept key {key_file}",
                    t.user, t.hostname, t.port
                ),
            },
            (E::SshError(russh::Error::IO(io)), _)
                if io.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                ShellError::Connect {
                    host,
                    detail: format!(
                        "connection refused at {}:{}{}: is sshd listening there?",
                        t.hostname,
                        t.port,
                        self.jump
                            .as_ref()
                            .map(|j| format!(" (through jump host {})", j.host()))
                            .unwrap_or_default()
                    ),
                }
            }
            _ => ShellError::Connect {
                host,
                detail: match &self.jump {
                    Some(j) => format!(
                        "{}:{} through jump host {}: {e}",
                        t.hostname,
                        t.port,
                        j.host()
                    ),
                    None => format!("{}:{}: {e}", t.hostname, t.port),
                },
            },
        }
    }

    fn host_key_mismatch(&self, path: &std::path::Path) -> String {
        let t = &self.target;
        let name = known_hosts_name(&t.hostname, t.port);
        match russh::keys::known_hosts::known_host_keys_path(&t.hostname, t.port, path) {
            Err(e) => format!("cannot read known_hosts file {}: {e}", path.display()),
            Ok(keys) => {
                let lines: Vec<String> = keys.iter().map(|(line, _)| line.to_string()).collect();
                format!(
                    "the host key of {name} does NOT match the one recorded in {} (line {}); \
                     someone may be intercepting the connection, or the host was reinstalled: \
                     check, then update the file",
                    path.display(),
                    lines.join(", ")
                )
            }
        }
    }

    async fn exec(
        &self,
        client: &Client,
        command: &str,
        stdin: &[u8],
    ) -> Result<ShellOutput, ExecError> {
        let channel = client
            .get_channel()
            .await
            .map_err(|e| ExecError::NotStarted(e.to_string()))?;
        channel
            .exec(true, command)
            .await
            .map_err(|e| ExecError::NotStarted(e.to_string()))?;
        let (mut read, write) = channel.split();
        let feed = async {
            if !stdin.is_empty() {
                write.data(stdin).await?;
            }
            write.eof().await
        };
        let collect = async {
            let mut out = ShellOutput {
                status: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            let mut signalled = false;
            while let Some(msg) = read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        out.stderr.extend_from_slice(&data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        out.status = i32::try_from(exit_status).ok()
                    }
                    ChannelMsg::ExitSignal { .. } => signalled = true,
                    _ => {}
                }
            }
            (out, signalled)
        };
        let (fed, (out, signalled)) = tokio::join!(feed, collect);
        if out.status.is_none() && !signalled {
            // The channel closed without an exit: the connection went away under the script.
            let why = match fed {
                Err(e) => e.to_string(),
                Ok(()) => "the connection closed before the script ended".into(),
            };
            return Err(ExecError::Broken(why));
        }
        Ok(out)
    }
}

/// A copy of a connection failure for the callers that waited for the same attempt (connecting
/// fails only with `Connect` or `HostKey`; anything else is kept as its message).
fn shared_failure(e: &ShellError, host_id: &str) -> ShellError {
    match e {
        ShellError::Connect { host, detail } => ShellError::Connect {
            host: host.clone(),
            detail: detail.clone(),
        },
        ShellError::HostKey { host, detail } => ShellError::HostKey {
            host: host.clone(),
            detail: detail.clone(),
        },
        other => ShellError::Connect {
            host: host_id.to_string(),
            detail: other.to_string(),
        },
    }
}

/// How known_hosts names a host: `name`, or `[name]:port` off port 22.
fn known_hosts_name(hostname: &str, port: u16) -> String {
    if port == 22 {
        hostname.to_string()
    } else {
        format!("[{hostname}]:{port}")
    }
}

impl Shell for SshShell {
    fn host(&self) -> &str {
        &self.target.host_id
    }

    fn run<'a>(
        &'a self,
        script: &'a str,
        stdin: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ShellOutput, ShellError>> {
        Box::pin(async move {
            let host = || self.target.host_id.clone();
            // A script that cannot be quoted is the caller's mistake, not the connection's.
            let command = format!("sh -c {}", quote(script)?);
            let attempt = async {
                // The semaphore is never closed, so acquiring only waits.
                let _session = self.sessions.acquire().await.ok();
                let mut reopened = false;
                loop {
                    let client = self.client().await?;
                    match self.exec(&client, &command, stdin).await {
                        Ok(out) => return Ok(out),
                        // A stale pooled connection: open a new one and send the script again,
                        // once (it had not started).
                        Err(ExecError::NotStarted(_)) if !reopened && client.is_closed() => {
                            reopened = true;
                        }
                        Err(ExecError::NotStarted(detail) | ExecError::Broken(detail)) => {
                            return Err(ShellError::Io {
                                host: host(),
                                source: std::io::Error::new(
                                    std::io::ErrorKind::ConnectionAborted,
                                    detail,
                                ),
                            });
                        }
                    }
                }
            };
            tokio::time::timeout(timeout, attempt)
                .await
                .map_err(|_| ShellError::Timeout {
                    host: host(),
                    timeout,
                })?
        })
    }
}
