//! Command-line interface (SPEC §10), declared with clap's derive API.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "agent-fleet",
    version,
    about = "Runs AI coding agents against forge issues as durable workflows"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: HTTP API, workflow engine, forge and chat integrations.
    Serve(ServeArgs),
    /// Inspect the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Submit, list, inspect, follow and steer tasks through a running daemon's API.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Check the configured hosts from this machine: reachability, agent CLIs, load.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Inspect the store file (while the daemon is stopped).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Read every instance record of the configured store and list those that cannot be
    /// decoded; exit 1 if there is one (or the file cannot be opened: stop the daemon first,
    /// it holds the file). Writes nothing, except redb's repair of a file left by a crash.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigFile,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and explain every error with its line.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigFile,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConfigFile {
    /// Path of the TOML configuration file.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "agent-fleet.toml"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Check every configured host from this machine: a table of hosts, reachability,
    /// latency, agent CLIs and their versions, and load.
    ///
    /// The checks run from here (no daemon needed: it is the set-up check): `echo ok` over
    /// each host's shell, then `command -v` and the `version_command` of every agent kind the
    /// host lists. When the daemon answers `GET /api/v1/hosts` (within 2 s), LOAD shows each
    /// host's running tasks out of its `max_concurrent`; otherwise `-/max` and a note.
    #[command(
        after_help = "Exit status: 0 when every host is reachable and has every agent CLI it \
                      lists; 1 otherwise; 2 when the configuration is invalid."
    )]
    Check(HostsCheckArgs),
}

#[derive(Debug, Args)]
pub struct HostsCheckArgs {
    #[command(flatten)]
    pub config: ConfigFile,
    /// Print a JSON array on stdout, one object per host with every field.
    #[arg(long)]
    pub json: bool,
    /// The daemon asked for the hosts' load [default: the config's `[server] listen`].
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The admin bearer token [default: the variable named by the config's `admin_token_env`].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Submit a new task.
    Submit(Box<SubmitArgs>),
    /// List tasks, most recent first.
    List(ListArgs),
    /// Show one task: its header, runs, receipt and events.
    Show(TaskIdArgs),
    /// Follow a task's events until it settles; exit 0 when it completed, 1 otherwise.
    Watch(TaskIdArgs),
    /// Ask a task to stop.
    Cancel(CancelArgs),
    /// Put a failed task back in the queue (resuming the last agent session when the failure
    /// was outside it).
    Retry(RetryArgs),
    /// Send a signal to a task's workflow.
    Signal(SignalArgs),
}

/// How to reach the daemon. Order of precedence: the flag, then `--config`, then the
/// environment, then the default.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The daemon's base URL [env: AGENT_FLEET_SERVER] [default: http://127.0.0.1:8787].
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The admin bearer token [env: FLEET_ADMIN_TOKEN, or the variable named by the config's
    /// `admin_token_env`].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Take the server address from this file's `[server] listen` and the token from the
    /// environment variable its `admin_token_env` names.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// One line saying what to do.
    #[arg(long)]
    pub title: String,
    /// The full request.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the body from this file (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// Local path or git URL of the repository [default: the daemon's `dispatch.default_repo`].
    #[arg(long)]
    pub repo: Option<String>,
    /// Branch to start from [default: the repository's default branch].
    #[arg(long, value_name = "BRANCH")]
    pub base: Option<String>,
    /// Agent kind [default: the first of the daemon's config].
    #[arg(long)]
    pub agent: Option<String>,
    #[arg(long, value_parser = ["low", "normal", "high", "urgent"])]
    pub priority: Option<String>,
    /// The task's type (`bug`, `feature`, …).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// A label; repeat for more.
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// A capability the host must have; repeat for more.
    #[arg(long = "capability", value_name = "CAPABILITY")]
    pub capabilities: Vec<String>,
    /// A command that must pass for the work to count; repeat for more.
    #[arg(long = "validate", value_name = "COMMAND")]
    pub validation: Vec<String>,
    /// A path the agent may change; repeat for more.
    #[arg(long = "scope", value_name = "PATH")]
    pub file_scope: Vec<String>,
    /// Submitting again with the same key answers the task already created.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Print the task as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks with this status (`created`, `running`, `failed`, …).
    #[arg(long)]
    pub status: Option<String>,
    /// Tasks per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Follow the pages to the last one.
    #[arg(long)]
    pub all: bool,
    /// Print `{"tasks": […], "next_after": …}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct TaskIdArgs {
    /// The task's id.
    pub id: String,
    /// JSON instead of text (`watch`: one event object per line).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub task: TaskIdArgs,
    /// Start from a fresh agent session instead of resuming the last one.
    #[arg(long)]
    pub fresh: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The task's id.
    pub id: String,
    /// Why; kept as the task's failure.
    #[arg(long)]
    pub reason: Option<String>,
    /// Print the task as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct SignalArgs {
    /// The task's id.
    pub id: String,
    /// The signal's type (`note`, `retry`, …).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,
    /// The signal's text.
    #[arg(long)]
    pub text: Option<String>,
    /// Idempotency key: sending again with the same key delivers nothing new.
    #[arg(long, value_name = "KEY")]
    pub key: String,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn submit_takes_repeated_lists_and_the_connection_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "agent-fleet",
            "task",
            "submit",
            "--title",
            "T",
            "--label",
            "a",
            "--label",
            "b",
            "--validate",
            "cargo test",
            "--server",
            "http://h:1",
            "--json",
        ])
        .unwrap();
        let Command::Task(TaskCommand::Submit(args)) = cli.command else {
            panic!("not task submit");
        };
        assert_eq!(args.labels, ["a", "b"]);
        assert_eq!(args.validation, ["cargo test"]);
        assert_eq!(args.connection.server.as_deref(), Some("http://h:1"));
        assert!(args.json);
    }

    #[test]
    fn body_and_body_file_exclude_each_other() {
        let parsed = Cli::try_parse_from([
            "agent-fleet",
            "task",
            "submit",
            "--title",
            "T",
            "--body",
            "b",
            "--body-file",
            "-",
        ]);
        assert!(parsed.is_err());
    }
}
