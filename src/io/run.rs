//! The detached-run contract (SPEC §4 Launch/Await): an agent CLI runs in its own session and
//! process group, detached from whoever started it, with everything about it in one run
//! directory on its host:
//!
//! | file          | written by | meaning                                                  |
//! |---------------|------------|----------------------------------------------------------|
//! | `prompt.md`   | the daemon | the structured prompt                                    |
//! | `command.sh`  | the daemon | the rendered command line, run with `sh` in the work dir |
//! | `started/`    | `start`    | created atomically: the run was launched (never twice)   |
//! | `pid`         | the run    | pid of the session leader (= process group id)           |
//! | `stdout`, `stderr` | the run | the agent's output; their mtime is its last activity  |
//! | `exit`        | the run    | exit code, written (atomically) when the command ends    |
//!
//! Neither a dropped connection nor a daemon restart stops a run, and [`status`] re-attaches
//! to it from the run directory alone. Every function is a script for a [`Shell`], so local and
//! SSH hosts share this code.

use std::time::Duration;

use thiserror::Error;

use super::shell::{Shell, ShellError, quote};

/// Scripts here are quick; this bounds each of them.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Shell(#[from] ShellError),
    #[error("{what} failed on {host}: {detail}")]
    Script {
        what: &'static str,
        host: String,
        detail: String,
    },
}

/// What [`start`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// Launched now.
    Launched { pid: u32, at_epoch_s: u64 },
    /// Had been launched before (a re-run after a crash): nothing was started.
    AlreadyLaunched { pid: Option<u32> },
}

/// Where a run stands, as its run directory tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Nothing was launched from this directory.
    NotLaunched,
    /// Launched, still running; `last_activity_epoch_s` is the newest output mtime.
    Running {
        pid: u32,
        last_activity_epoch_s: Option<u64>,
    },
    /// Ended with this exit code.
    Exited { code: i32 },
    /// Launched, but its process is gone without an exit code (killed, host rebooted).
    Vanished,
}

fn script_error(what: &'static str, host: &str, out: &super::shell::ShellOutput) -> RunError {
    RunError::Script {
        what,
        host: host.to_string(),
        detail: format!("exit {:?}: {}", out.status, out.error_tail()),
    }
}

/// Writes `bytes` to `path` on the host (atomically: temp file, then rename), creating the
/// directory.
pub async fn write_file(shell: &dyn Shell, path: &str, bytes: &[u8]) -> Result<(), RunError> {
    let p = quote(path)?;
    let script = format!("set -e; mkdir -p \"$(dirname {p})\"; cat > {p}.tmp; mv {p}.tmp {p}");
    let out = shell.run(&script, bytes, SCRIPT_TIMEOUT).await?;
    if !out.success() {
        return Err(script_error("writing a file", shell.host(), &out));
    }
    Ok(())
}

/// Launches `run_dir/command.sh` in `work_dir`, detached, unless this run directory was
/// launched before. `prompt.md` and `command.sh` must already be in `run_dir`.
///
/// `env` is set for the run only. It travels on the script's stdin and is exported in memory
/// by the shell that starts the run, so its values (API keys) are never written to a file on
/// the host nor shown on a command line (`ps`).
pub async fn start(
    shell: &dyn Shell,
    run_dir: &str,
    work_dir: &str,
    env: &[(String, String)],
) -> Result<Started, RunError> {
    let rd = quote(run_dir)?;
    let wd = quote(work_dir)?;
    let mut exports = String::new();
    for (name, value) in env {
        if !crate::config::is_env_name(name) {
            return Err(RunError::Script {
                what: "launching the run",
                host: shell.host().to_string(),
                detail: format!("`{name}` is not an environment variable name"),
            });
        }
        exports.push_str(&format!("export {name}={}\n", quote(value)?));
    }
    // The session leader writes its own pid (setsid makes it the process group id), runs the
    // command, then publishes the exit code with a rename so a reader never sees half of it.
    let script = format!(
        r#"set -e
rd={rd}
test -f "$rd/command.sh" || {{ echo "missing $rd/command.sh" >&2; exit 2; }}
if ! mkdir "$rd/started" 2>/dev/null; then
  echo "already $(cat "$rd/pid" 2>/dev/null || true)"
  exit 0
fi
cd {wd}
eval "$(cat)"
setsid sh -c 'echo $$ > "$1/pid.tmp" && mv "$1/pid.tmp" "$1/pid"
sh "$1/command.sh" > "$1/stdout" 2> "$1/stderr" < /dev/null
echo $? > "$1/exit.tmp" && mv "$1/exit.tmp" "$1/exit"' agent-run "$rd" < /dev/null > /dev/null 2>&1 &
i=0
while [ ! -s "$rd/pid" ]; do
  i=$((i + 1)); [ "$i" -le 2000 ] || {{ echo "the run did not start within 10s" >&2; exit 3; }}
  sleep 0.005
done
echo "launched $(cat "$rd/pid") $(date +%s)"
"#
    );
    let out = shell
        .run(&script, exports.as_bytes(), SCRIPT_TIMEOUT)
        .await?;
    if !out.success() {
        return Err(script_error("launching the run", shell.host(), &out));
    }
    let text = out.text();
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("launched"), Some(pid), Some(at)) => match (pid.parse(), at.parse()) {
            (Ok(pid), Ok(at_epoch_s)) => Ok(Started::Launched { pid, at_epoch_s }),
            _ => Err(unexpected("launching the run", shell.host(), &text)),
        },
        (Some("already"), pid, _) => Ok(Started::AlreadyLaunched {
            pid: pid.and_then(|p| p.parse().ok()),
        }),
        _ => Err(unexpected("launching the run", shell.host(), &text)),
    }
}

fn unexpected(what: &'static str, host: &str, text: &str) -> RunError {
    RunError::Script {
        what,
        host: host.to_string(),
        detail: format!("unexpected answer {text:?}"),
    }
}

/// Reads where the run of `run_dir` stands. A process counts as alive only if it is not a
/// zombie and still leads its own session (so a recycled pid is not mistaken for the run).
pub async fn status(shell: &dyn Shell, run_dir: &str) -> Result<RunState, RunError> {
    let rd = quote(run_dir)?;
    let script = format!(
        r#"rd={rd}
if [ -f "$rd/exit" ]; then echo "exited $(cat "$rd/exit")"; exit 0; fi
[ -d "$rd/started" ] || {{ echo "not-launched"; exit 0; }}
pid=$(cat "$rd/pid" 2>/dev/null || true)
[ -n "$pid" ] || {{ echo "vanished"; exit 0; }}
alive=no
if [ -r "/proc/$pid/stat" ]; then
  set -- $(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null)
  [ "${{1:-Z}}" != Z ] && [ "${{4:-}}" = "$pid" ] && alive=yes
fi
if [ "$alive" = yes ]; then
  echo "running $pid $(stat -c %Y "$rd/stdout" "$rd/stderr" 2>/dev/null | sort -n | tail -1)"
elif [ -f "$rd/exit" ]; then echo "exited $(cat "$rd/exit")"
else echo "vanished"; fi
"#
    );
    let out = shell.run(&script, b"", SCRIPT_TIMEOUT).await?;
    if !out.success() {
        return Err(script_error("reading the run's status", shell.host(), &out));
    }
    let text = out.text();
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["not-launched"] => Ok(RunState::NotLaunched),
        ["vanished"] => Ok(RunState::Vanished),
        ["exited", code] => code
            .parse()
            .map(|code| RunState::Exited { code })
            .map_err(|_| unexpected("reading the run's status", shell.host(), &text)),
        ["running", pid, rest @ ..] => pid
            .parse()
            .map(|pid| RunState::Running {
                pid,
                last_activity_epoch_s: rest.first().and_then(|t| t.parse().ok()),
            })
            .map_err(|_| unexpected("reading the run's status", shell.host(), &text)),
        _ => Err(unexpected("reading the run's status", shell.host(), &text)),
    }
}

/// Stops the run's whole process group: SIGTERM, then SIGKILL after `grace`. Returns whether
/// anything was still running. A run that has ended (its `exit` file is there) is left alone:
/// its group id may have been recycled.
pub async fn kill(shell: &dyn Shell, run_dir: &str, grace: Duration) -> Result<bool, RunError> {
    let rd = quote(run_dir)?;
    let tenths = grace.as_millis().div_ceil(100).max(1);
    // dash's `kill` takes no `--`: after the signal, a negative number is a process group.
    // A run whose exit file exists has ended: its group id may belong to another process group
    // by now (ids are recycled), so nothing is signalled.
    let script = format!(
        r#"rd={rd}
[ ! -f "$rd/exit" ] || {{ echo none; exit 0; }}
pid=$(cat "$rd/pid" 2>/dev/null || true)
[ -n "$pid" ] || {{ echo none; exit 0; }}
kill -TERM "-$pid" 2>/dev/null || {{ echo none; exit 0; }}
i=0
while kill -0 "-$pid" 2>/dev/null && [ "$i" -lt {tenths} ]; do sleep 0.1; i=$((i + 1)); done
kill -KILL "-$pid" 2>/dev/null || true
echo killed
"#
    );
    let out = shell.run(&script, b"", SCRIPT_TIMEOUT + grace).await?;
    if !out.success() {
        return Err(script_error("stopping the run", shell.host(), &out));
    }
    Ok(out.text() == "killed")
}

/// The run's stdout and stderr, each cut to its last `max` bytes.
pub async fn output(
    shell: &dyn Shell,
    run_dir: &str,
    max: u64,
) -> Result<(Vec<u8>, Vec<u8>), RunError> {
    let mut files = Vec::with_capacity(2);
    for name in ["stdout", "stderr"] {
        let path = quote(&format!("{run_dir}/{name}"))?;
        let script = format!("[ -f {path} ] || exit 0; tail -c {max} {path}");
        let out = shell.run(&script, b"", SCRIPT_TIMEOUT).await?;
        if !out.success() {
            return Err(script_error("reading the run's output", shell.host(), &out));
        }
        files.push(out.stdout);
    }
    let stderr = files.pop().unwrap_or_default();
    let stdout = files.pop().unwrap_or_default();
    Ok((stdout, stderr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::shell::LocalShell;

    fn shell() -> LocalShell {
        LocalShell::new("localhost", vec![])
    }

    async fn prepared(command: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let rd = dir.path().join("run").display().to_string();
        write_file(&shell(), &format!("{rd}/command.sh"), command.as_bytes())
            .await
            .unwrap();
        (dir, rd)
    }

    async fn wait_exit(rd: &str) -> RunState {
        for _ in 0..200 {
            let s = status(&shell(), rd).await.unwrap();
            if !matches!(s, RunState::Running { .. }) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("run did not end");
    }

    #[tokio::test]
    async fn a_run_records_its_output_and_exit_code() {
        let (dir, rd) = prepared("echo out; echo err >&2; exit 7").await;
        let started = start(&shell(), &rd, &dir.path().display().to_string(), &[])
            .await
            .unwrap();
        assert!(matches!(started, Started::Launched { .. }), "{started:?}");
        assert_eq!(wait_exit(&rd).await, RunState::Exited { code: 7 });
        let (out, err) = output(&shell(), &rd, 1 << 20).await.unwrap();
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
    }

    #[tokio::test]
    async fn a_second_start_of_the_same_run_launches_nothing() {
        let (dir, rd) = prepared("echo once >> ../count").await;
        let wd = dir.path().join("wd");
        std::fs::create_dir(&wd).unwrap();
        let wd = wd.display().to_string();
        start(&shell(), &rd, &wd, &[]).await.unwrap();
        let again = start(&shell(), &rd, &wd, &[]).await.unwrap();
        assert!(
            matches!(again, Started::AlreadyLaunched { .. }),
            "{again:?}"
        );
        wait_exit(&rd).await;
        let count = std::fs::read_to_string(dir.path().join("count")).unwrap();
        assert_eq!(count, "once\n");
    }

    #[tokio::test]
    async fn kill_leaves_alone_the_group_of_a_run_that_has_ended() {
        let (dir, rd) = prepared("true").await;
        start(&shell(), &rd, &rd, &[]).await.unwrap();
        assert_eq!(wait_exit(&rd).await, RunState::Exited { code: 0 });
        // The run's process group id, recycled by an unrelated process group.
        let mut other = std::process::Command::new("setsid")
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let pid = other.id() as i32;
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let pgrp = stat.rsplit(") ").next().and_then(|r| r.split(' ').nth(2));
            if pgrp == Some(pid.to_string().as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::write(format!("{rd}/pid"), format!("{pid}\n")).unwrap();

        let killed = kill(&shell(), &rd, Duration::from_millis(200))
            .await
            .unwrap();

        let alive = other.try_wait().unwrap().is_none();
        let _ = other.kill();
        let _ = other.wait();
        assert!(!killed, "a run that has ended was 'killed'");
        assert!(alive, "an unrelated process group was signalled");
        drop(dir);
    }

    #[tokio::test]
    async fn kill_stops_the_whole_process_group() {
        let (dir, rd) = prepared("sleep 30 & echo $! > child; sleep 30").await;
        start(&shell(), &rd, &rd, &[]).await.unwrap();
        for _ in 0..100 {
            if std::path::Path::new(&format!("{rd}/child")).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(
            status(&shell(), &rd).await.unwrap(),
            RunState::Running { .. }
        ));
        assert!(
            kill(&shell(), &rd, Duration::from_millis(500))
                .await
                .unwrap()
        );
        assert_eq!(wait_exit(&rd).await, RunState::Vanished);
        let child: i32 = std::fs::read_to_string(format!("{rd}/child"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().unwrap_or("").chars().next();
        assert!(
            stat.is_empty() || state == Some('Z'),
            "child still alive: {stat}"
        );
        drop(dir);
    }

    #[tokio::test]
    async fn an_unlaunched_run_directory_says_so() {
        let (_dir, rd) = prepared("true").await;
        assert_eq!(status(&shell(), &rd).await.unwrap(), RunState::NotLaunched);
    }

    #[tokio::test]
    async fn the_run_gets_its_environment_without_it_reaching_a_file_or_command_line() {
        let (dir, rd) =
            prepared("printf '%s' \"$FLEET_TEST_KEY\" > got; ps -eo args > ps.txt").await;
        let secret = "sk-very secret 'quoted' $(value)\nline2";
        let env = vec![("FLEET_TEST_KEY".to_string(), secret.to_string())];
        start(&shell(), &rd, &rd, &env).await.unwrap();
        assert_eq!(wait_exit(&rd).await, RunState::Exited { code: 0 });
        assert_eq!(
            std::fs::read_to_string(format!("{rd}/got")).unwrap(),
            secret
        );
        for entry in std::fs::read_dir(&rd).unwrap() {
            let path = entry.unwrap().path();
            if path.ends_with("got") || path.is_dir() {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                !text.contains("sk-very"),
                "{} holds the value",
                path.display()
            );
        }
        drop(dir);
    }
}
