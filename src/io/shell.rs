//! Running a shell script on a host and collecting its output: the one primitive the steps need
//! from a machine. [`LocalShell`] runs `sh -c` as a local subprocess; SSH hosts implement the same
//! trait, so workspaces and detached runs are the same scripts everywhere.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// What a finished script left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOutput {
    /// Exit status; `None` when a signal ended it.
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ShellOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// Stdout as text (lossy), trimmed.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }

    /// The last lines of stderr, for error messages.
    pub fn error_tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = text.trim().lines().collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    }
}

#[derive(Debug, Error)]
pub enum ShellError {
    #[error("cannot start `sh` on {host}: {source}")]
    Spawn {
        host: String,
        source: std::io::Error,
    },
    #[error("lost contact with the script on {host}: {source}")]
    Io {
        host: String,
        source: std::io::Error,
    },
    #[error("a script on {host} did not finish within {timeout:?}")]
    Timeout { host: String, timeout: Duration },
    #[error("{value:?} cannot be put in a shell script: {reason}")]
    Unquotable { value: String, reason: String },
    /// The host could not be reached or would not let us in (network, authentication, key file).
    #[error("cannot connect to {host}: {detail}")]
    Connect { host: String, detail: String },
    /// The host presented a key that its known_hosts file does not vouch for: refused.
    #[error("refused {host}: {detail}")]
    HostKey { host: String, detail: String },
}

impl ShellError {
    /// True when the host could not be reached (or the connection broke): the host may come
    /// back, and what the script was doing there may still be going on.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ShellError::Connect { .. } | ShellError::Io { .. } | ShellError::Timeout { .. }
        )
    }
}

/// Runs POSIX shell scripts on one host.
pub trait Shell: Send + Sync {
    /// The host's id, for messages.
    fn host(&self) -> &str;

    /// Runs `script` with `sh -c`, feeding `stdin`, and waits for it at most `timeout`.
    fn run<'a>(
        &'a self,
        script: &'a str,
        stdin: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ShellOutput, ShellError>>;
}

pub type SharedShell = Arc<dyn Shell>;

/// The local machine: scripts run as subprocesses of the daemon, in its working directory, with
/// the daemon's environment minus the secrets it holds.
pub struct LocalShell {
    host: String,
    /// Environment variables never passed to scripts (the daemon's own tokens).
    scrub: Vec<String>,
}

impl LocalShell {
    pub fn new(host: impl Into<String>, scrub: Vec<String>) -> Self {
        LocalShell {
            host: host.into(),
            scrub,
        }
    }
}

impl Shell for LocalShell {
    fn host(&self) -> &str {
        &self.host
    }

    fn run<'a>(
        &'a self,
        script: &'a str,
        stdin: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ShellOutput, ShellError>> {
        Box::pin(async move {
            let host = || self.host.clone();
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // A script that overruns is killed; detached runs escape through setsid.
                .kill_on_drop(true);
            for name in &self.scrub {
                command.env_remove(name);
            }
            let mut child = command.spawn().map_err(|source| ShellError::Spawn {
                host: host(),
                source,
            })?;
            let mut input = child.stdin.take();
            let feed = async {
                if let Some(pipe) = input.as_mut() {
                    // A script that does not read its stdin closes the pipe early; that is fine.
                    let _ = pipe.write_all(stdin).await;
                    let _ = pipe.shutdown().await;
                }
                drop(input);
            };
            let run = async {
                let (_, output) = tokio::join!(feed, child.wait_with_output());
                output
            };
            let output = tokio::time::timeout(timeout, run)
                .await
                .map_err(|_| ShellError::Timeout {
                    host: host(),
                    timeout,
                })?
                .map_err(|source| ShellError::Io {
                    host: host(),
                    source,
                })?;
            Ok(ShellOutput {
                status: output.status.code(),
                stdout: output.stdout,
                stderr: output.stderr,
            })
        })
    }
}

/// Quotes `value` for a POSIX shell script (values here are paths, ids and branch names the
/// daemon made or validated; a NUL cannot be quoted and is refused).
pub fn quote(value: &str) -> Result<String, ShellError> {
    shlex::try_quote(value)
        .map(|q| q.into_owned())
        .map_err(|e| ShellError::Unquotable {
            value: value.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_local_script_gets_its_stdin_and_reports_its_status() {
        let shell = LocalShell::new("localhost", vec![]);
        let out = shell.run("cat; exit 3", b"hello", T).await.unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout, b"hello");
    }

    #[tokio::test]
    async fn scrubbed_variables_do_not_reach_local_scripts() {
        // SAFETY of the test: the variable name is unique to this test.
        unsafe { std::env::set_var("AGENT_FLEET_TEST_SECRET_X", "s3cret") };
        let shell = LocalShell::new("localhost", vec!["AGENT_FLEET_TEST_SECRET_X".into()]);
        let out = shell
            .run(
                "printf '%s' \"${AGENT_FLEET_TEST_SECRET_X:-unset}\"",
                b"",
                T,
            )
            .await
            .unwrap();
        assert_eq!(out.text(), "unset");
    }

    #[tokio::test]
    async fn a_script_that_overruns_is_a_timeout() {
        let shell = LocalShell::new("localhost", vec![]);
        let err = shell
            .run("sleep 5", b"", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, ShellError::Timeout { .. }), "{err}");
    }
}
