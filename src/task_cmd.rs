//! The `agent-fleet task …` commands: where the daemon is and which token to send (flags,
//! `--config`, environment), one call of [`Client`] per command, the output (text from
//! [`render`], or JSON) and the exit code. Errors print as one `error: …` line on stderr.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use agent_fleet::api::views::{CancelRequest, NewTask, SignalRequest, TaskList};
use agent_fleet::client::render::{self, LIST_WIDTH};
use agent_fleet::client::{Client, ClientError, DEFAULT_SERVER, FeedQuery, ListQuery};
use agent_fleet::config::{Config, ConfigErrors};
use serde::Serialize;
use serde_json::json;
use thiserror::Error;

use crate::cli::{
    CancelArgs, Connection, ListArgs, RetryArgs, SignalArgs, SubmitArgs, TaskCommand, TaskIdArgs,
};

/// The environment variable naming the daemon's URL.
const SERVER_ENV: &str = "AGENT_FLEET_SERVER";
/// The token's variable when no `--config` names another.
const TOKEN_ENV: &str = "FLEET_ADMIN_TOKEN";
/// How long `task watch` waits before it opens the change feed again (after the stream ended,
/// or while the daemon is unreachable).
const RECONNECT_EVERY: Duration = Duration::from_millis(300);
/// How long `task watch` waits for a daemon that went away (a restart) before giving up.
const RESTART_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Error)]
pub(crate) enum TaskError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A 401 to a request sent without a token.
    #[error("{source}; pass --token or set {env}")]
    NoToken { source: ClientError, env: String },
    #[error("invalid configuration {}: {}{}", path.display(), first(errors), more(errors))]
    Config { path: PathBuf, errors: ConfigErrors },
    #[error(
        "{} listens on port 0 (a port chosen at start-up); pass --server with the real one",
        path.display()
    )]
    EphemeralPort { path: PathBuf },
    #[error("cannot read the body from {}: {source}", shown(path))]
    BodyFile { path: PathBuf, source: io::Error },
    #[error("cannot write the output: {0}")]
    Output(io::Error),
    /// Standard output was closed (`task list | head`): stop quietly.
    #[error("standard output closed")]
    StdoutClosed,
}

fn first(errors: &ConfigErrors) -> String {
    errors
        .errors
        .first()
        .map(ToString::to_string)
        .unwrap_or_default()
}

fn more(errors: &ConfigErrors) -> String {
    match errors.errors.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more; see `agent-fleet config check`)", n - 1),
    }
}

fn shown(path: &Path) -> String {
    if path == Path::new("-") {
        "standard input".into()
    } else {
        path.display().to_string()
    }
}

/// Runs one `task` command: 0 when it succeeded (`watch`: when the task completed), 1 otherwise.
pub async fn run(command: TaskCommand) -> ExitCode {
    let result = match command {
        TaskCommand::Submit(args) => submit(*args).await,
        TaskCommand::List(args) => list(args).await,
        TaskCommand::Show(args) => show(args).await,
        TaskCommand::Watch(args) => watch(args).await,
        TaskCommand::Cancel(args) => cancel(args).await,
        TaskCommand::Retry(args) => retry(args).await,
        TaskCommand::Signal(args) => signal(args).await,
    };
    exit_code(result)
}

/// The exit code of a command's result; an error is printed as one `error: …` line.
pub(crate) fn exit_code(result: Result<ExitCode, TaskError>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(TaskError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------------------------

/// Where to connect and with which token, once flags, config and environment are weighed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) server: String,
    pub(crate) token: Option<String>,
    /// The variable the token is read from, for the hint when it is missing.
    pub(crate) token_env: String,
}

/// Flag first, then `--config`, then the environment (`env`), then the default.
fn resolve(
    connection: &Connection,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Target, TaskError> {
    let config = match &connection.config {
        Some(path) => Some((
            path.as_path(),
            Config::load(path).map_err(|errors| TaskError::Config {
                path: path.clone(),
                errors,
            })?,
        )),
        None => None,
    };
    target(
        connection.server.as_deref(),
        connection.token.as_deref(),
        config.as_ref().map(|(path, c)| (*path, c)),
        env,
    )
}

/// [`resolve`] once the config (if any) is loaded, from the `--server` and `--token` flags.
pub(crate) fn target(
    server: Option<&str>,
    token: Option<&str>,
    config: Option<(&Path, &Config)>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Target, TaskError> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let token_env = config.map_or(TOKEN_ENV.to_string(), |(_, c)| {
        c.server.admin_token_env.clone()
    });
    let server = match (server, config) {
        (Some(server), _) => server.to_string(),
        (None, Some((path, config))) => contact_url(config.server.listen, path)?,
        (None, None) => env(SERVER_ENV).unwrap_or_else(|| DEFAULT_SERVER.to_string()),
    };
    let token = token.map(str::to_string).or_else(|| env(&token_env));
    Ok(Target {
        server,
        token,
        token_env,
    })
}

/// The URL that reaches a daemon listening on `listen`: a wildcard address is contacted on
/// the loopback of its family.
fn contact_url(listen: SocketAddr, path: &Path) -> Result<String, TaskError> {
    if listen.port() == 0 {
        return Err(TaskError::EphemeralPort {
            path: path.to_path_buf(),
        });
    }
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!("http://{}", SocketAddr::new(ip, listen.port())))
}

/// A client of the daemon, and the variable its token comes from.
fn connect(connection: &Connection) -> Result<(Client, String), TaskError> {
    let target = resolve(connection, |name| std::env::var(name).ok())?;
    let client = Client::new(&target.server, target.token.as_deref())?;
    Ok((client, target.token_env))
}

/// Turns a 401 to a token-less request into the hint of where the token goes.
pub(crate) fn explain(client: &Client, token_env: &str, error: ClientError) -> TaskError {
    if !client.has_token() && error.status().is_some_and(|s| s.as_u16() == 401) {
        TaskError::NoToken {
            source: error,
            env: token_env.to_string(),
        }
    } else {
        TaskError::Client(error)
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// Writes `text` to standard output now (`watch` prints as events come).
pub(crate) fn emit(text: &str) -> Result<(), TaskError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => TaskError::StdoutClosed,
            _ => TaskError::Output(e),
        })
}

pub(crate) fn emit_line(line: &str) -> Result<(), TaskError> {
    emit(&format!("{line}\n"))
}

pub(crate) fn emit_json<T: Serialize>(value: &T, pretty: bool) -> Result<(), TaskError> {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    // Serialising the API's own views cannot fail; keep the error anyway, never a panic.
    let text = text.map_err(|e| TaskError::Output(io::Error::other(e)))?;
    emit_line(&text)
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

async fn submit(args: SubmitArgs) -> Result<ExitCode, TaskError> {
    let (client, token_env) = connect(&args.connection)?;
    let body = match (&args.body, &args.body_file) {
        (Some(body), _) => body.clone(),
        (None, Some(path)) => read_body(path)?,
        (None, None) => String::new(),
    };
    let task = NewTask {
        title: args.title,
        body,
        repo: args.repo,
        base: args.base,
        agent: args.agent,
        labels: args.labels,
        priority: args.priority,
        kind: args.kind,
        capabilities: args.capabilities,
        file_scope: args.file_scope,
        validation: args.validation,
        idempotency_key: args.idempotency_key,
    };
    let submitted = client
        .submit(&task)
        .await
        .map_err(|e| explain(&client, &token_env, e))?;
    let task = submitted.task;
    if args.json {
        emit_json(&task, true)?;
    } else {
        let verb = if submitted.created {
            "created"
        } else {
            "already exists (same idempotency key)"
        };
        emit_line(&format!(
            "task {} {verb}: {}",
            task.id,
            render::one_line(&task.title)
        ))?;
        emit_line(&format!("follow it: agent-fleet task watch {}", task.id))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn read_body(path: &Path) -> Result<String, TaskError> {
    let read = if path == Path::new("-") {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|source| TaskError::BodyFile {
        path: path.to_path_buf(),
        source,
    })
}

async fn list(args: ListArgs) -> Result<ExitCode, TaskError> {
    let (client, token_env) = connect(&args.connection)?;
    let mut all = TaskList {
        tasks: Vec::new(),
        next_after: None,
    };
    let mut after: Option<String> = None;
    loop {
        let query = ListQuery {
            status: args.status.as_deref(),
            limit: Some(args.limit),
            after: after.as_deref(),
        };
        let page = client
            .list(&query)
            .await
            .map_err(|e| explain(&client, &token_env, e))?;
        all.tasks.extend(page.tasks);
        all.next_after = page.next_after;
        // A cursor that does not move would loop for ever.
        match &all.next_after {
            Some(next) if args.all && after.as_ref() != Some(next) => after = Some(next.clone()),
            _ => break,
        }
    }
    if args.json {
        return emit_json(&all, true).map(|()| ExitCode::SUCCESS);
    }
    if all.tasks.is_empty() {
        let what = args
            .status
            .as_deref()
            .map_or(String::new(), |s| format!("{s} "));
        emit_line(&format!("no {what}tasks"))?;
    } else {
        emit(&render::task_table(
            &all.tasks,
            SystemTime::now(),
            LIST_WIDTH,
        ))?;
    }
    if all.next_after.is_some() {
        eprintln!("(more tasks: use --all or a larger --limit)");
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: TaskIdArgs) -> Result<ExitCode, TaskError> {
    let (client, token_env) = connect(&args.connection)?;
    let task = client
        .show(&args.id)
        .await
        .map_err(|e| explain(&client, &token_env, e))?;
    if args.json {
        emit_json(&task, true)?;
    } else {
        emit(&render::task_story(&task, SystemTime::now()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the events seen so far, then follows the task on the daemon's change feed: each of
/// its rows there fetches the events after the last one printed, until the task settles.
/// Ctrl-C ends the process as usual: nothing here needs cleaning up.
async fn watch(args: TaskIdArgs) -> Result<ExitCode, TaskError> {
    let (client, token_env) = connect(&args.connection)?;
    let explain = |e| explain(&client, &token_env, e);
    let print = |event: &agent_fleet::api::views::EventView| {
        if args.json {
            emit_json(event, false)
        } else {
            emit_line(&render::event_line(event))
        }
    };

    let task = client.show(&args.id).await.map_err(explain)?;
    let mut last: Option<u64> = None;
    for event in task.events.iter().flatten() {
        print(event)?;
        last = last.max(Some(event.seq));
    }
    // The last feed row seen: a stream opened again (the daemon restarted) resumes after it.
    let mut row: Option<u64> = None;
    // A daemon that restarts meanwhile is waited for (a recovering one is, by the client).
    let mut unreachable_since: Option<std::time::Instant> = None;
    let mut reconnecting = false;
    let status = 'watch: loop {
        if std::mem::replace(&mut reconnecting, true) {
            tokio::time::sleep(RECONNECT_EVERY).await;
        }
        let query = FeedQuery {
            task: Some(&args.id),
            after: row,
            ..FeedQuery::default()
        };
        let mut feed = match client.feed(&query).await {
            Ok(feed) => feed,
            Err(e @ ClientError::Unreachable { .. }) => {
                wait_through(e, &mut unreachable_since).map_err(explain)?;
                continue;
            }
            Err(e) => return Err(explain(e)),
        };
        // What happened before the stream started is in the events; what happens after comes
        // as rows, each a reason to ask for the events again.
        loop {
            let page = match client.events(&args.id, last).await {
                Ok(page) => {
                    unreachable_since = None;
                    page
                }
                Err(e @ ClientError::Unreachable { .. }) => {
                    wait_through(e, &mut unreachable_since).map_err(explain)?;
                    continue 'watch;
                }
                Err(e) => return Err(explain(e)),
            };
            for event in &page.events {
                if last.is_none_or(|seen| event.seq > seen) {
                    print(event)?;
                    last = Some(event.seq);
                }
            }
            if page.settled {
                break 'watch page.status;
            }
            match feed.next().await {
                Ok(Some(next)) => row = Some(next.seq),
                // The daemon stopped (or the connection died): open the stream again.
                Ok(None) | Err(ClientError::Transport { .. }) => continue 'watch,
                Err(e) => return Err(explain(e)),
            }
        }
    };

    // The failure's reason comes with the task; the status is the one that settled it.
    let mut task = client.show(&args.id).await.map_err(explain)?;
    task.status = status.clone();
    let line = render::status_line(&task);
    if args.json {
        // Standard output stays a stream of events.
        eprintln!("{line}");
    } else {
        emit_line(&line)?;
    }
    Ok(if status == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// An unreachable daemon (`e`) is waited for: said once, then given up on [`RESTART_WAIT`]
/// after `since`, when it went away.
fn wait_through(e: ClientError, since: &mut Option<std::time::Instant>) -> Result<(), ClientError> {
    let since = *since.get_or_insert_with(|| {
        eprintln!("the daemon is unreachable ({e}); waiting for it");
        std::time::Instant::now()
    });
    if since.elapsed() > RESTART_WAIT {
        Err(e)
    } else {
        Ok(())
    }
}

async fn cancel(args: CancelArgs) -> Result<ExitCode, TaskError> {
    let (client, token_env) = connect(&args.connection)?;
    let request = CancelRequest {
        reason: args.reason,
    };
    let task = client
        .cancel(&args.id, &request)
        .await
        .map_err(|e| explain(&client, &token_env, e))?;
    if args.json {
        emit_json(&task, true)?;
    } else {
        emit_line(&format!(
            "task {} cancel requested (status {})",
            task.id, task.status
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn retry(retry: RetryArgs) -> Result<ExitCode, TaskError> {
    let args = retry.task;
    let (client, token_env) = connect(&args.connection)?;
    let task = client
        .retry(&args.id, retry.fresh)
        .await
        .map_err(|e| explain(&client, &token_env, e))?;
    if args.json {
        emit_json(&task, true)?;
    } else {
        emit_line(&format!(
            "task {} queued again (status {}, attempt {})",
            task.id, task.status, task.attempt
        ))?;
        emit_line(&format!("follow it: agent-fleet task watch {}", task.id))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn signal(args: SignalArgs) -> Result<ExitCode, TaskError> {
    let (client, token_env) = connect(&args.connection)?;
    let mut signal = json!({ "type": args.kind });
    if let Some(text) = &args.text {
        signal["text"] = json!(text);
    }
    let request = SignalRequest {
        signal,
        idempotency_key: args.key.clone(),
    };
    let answer = client
        .signal(&args.id, &request)
        .await
        .map_err(|e| explain(&client, &token_env, e))?;
    if args.json {
        emit_json(&answer, true)?;
    } else if answer.duplicate {
        emit_line(&format!(
            "signal with key {} was already delivered to task {} (seq {})",
            args.key, args.id, answer.seq
        ))?;
    } else {
        emit_line(&format!(
            "signal {} delivered to task {} (seq {})",
            args.kind, args.id, answer.seq
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn connection(server: Option<&str>, token: Option<&str>, config: Option<&Path>) -> Connection {
        Connection {
            server: server.map(Into::into),
            token: token.map(Into::into),
            config: config.map(Into::into),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn config_file(dir: &tempfile::TempDir, listen: &str) -> PathBuf {
        let path = dir.path().join("fleet.toml");
        let text = format!("[server]\nlisten = \"{listen}\"\nadmin_token_env = \"MY_TOKEN\"\n");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn without_flags_the_environment_then_the_default_decide() {
        let none = connection(None, None, None);
        let target = resolve(&none, env(&[])).unwrap();
        assert_eq!(target.server, DEFAULT_SERVER);
        assert_eq!(target.token, None);
        let target = resolve(
            &none,
            env(&[(SERVER_ENV, "http://h:1"), (TOKEN_ENV, "s3cret")]),
        )
        .unwrap();
        assert_eq!(target.server, "http://h:1");
        assert_eq!(target.token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn flags_beat_the_config_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = config_file(&dir, "0.0.0.0:9100");
        let flags = connection(Some("http://flag:1"), Some("flag-token"), Some(&path));
        let target = resolve(&flags, env(&[("MY_TOKEN", "env"), (SERVER_ENV, "x")])).unwrap();
        assert_eq!(target.server, "http://flag:1");
        assert_eq!(target.token.as_deref(), Some("flag-token"));
    }

    #[test]
    fn the_config_gives_a_wildcard_listen_as_loopback_and_names_the_token_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = config_file(&dir, "0.0.0.0:9100");
        let env = env(&[
            ("MY_TOKEN", "from-config-env"),
            (TOKEN_ENV, "other"),
            (SERVER_ENV, "x"),
        ]);
        let target = resolve(&connection(None, None, Some(&path)), env).unwrap();
        assert_eq!(
            target,
            Target {
                server: "http://127.0.0.1:9100".into(),
                token: Some("from-config-env".into()),
                token_env: "MY_TOKEN".into(),
            }
        );
    }

    #[test]
    fn wildcard_v6_becomes_v6_loopback_and_port_0_is_refused() {
        let path = Path::new("f.toml");
        assert_eq!(
            contact_url("[::]:8787".parse().unwrap(), path).unwrap(),
            "http://[::1]:8787"
        );
        assert_eq!(
            contact_url("10.1.2.3:80".parse().unwrap(), path).unwrap(),
            "http://10.1.2.3:80"
        );
        assert!(matches!(
            contact_url("127.0.0.1:0".parse().unwrap(), path),
            Err(TaskError::EphemeralPort { .. })
        ));
    }

    #[test]
    fn an_invalid_config_is_one_line_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[server]\nlisten = 12\n").unwrap();
        let err = resolve(&connection(None, None, Some(&path)), env(&[])).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("invalid configuration "), "{text}");
        assert!(text.contains("bad.toml"), "{text}");
    }
}
