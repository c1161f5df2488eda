//! The `agent-fleet` binary: command-line parsing, logging, and the daemon's lifecycle
//! (`serve`: listen first, open and recover the engine in the background, stop cleanly on
//! SIGTERM/SIGINT, and exit non-zero when the store fails so that a supervisor restarts it).

mod cli;
mod hosts_cmd;
mod task_cmd;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent_fleet::api::{self, AppState};
use agent_fleet::config::{Config, ConfigError, ConfigErrors};
use agent_fleet::secrets;
use agent_fleet::steps;
use agent_fleet::steps::runtime::Runtime;
use agent_fleet::workflow::{Engine, EngineConfig};
use anyhow::{Context, anyhow};
use clap::Parser;
use serde_json::json;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::cli::{CheckArgs, Cli, Command, ConfigCommand, ServeArgs, StoreCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Config(ConfigCommand::Check(args)) => config_check(&args),
        Command::Task(command) => runtime().block_on(task_cmd::run(command)),
        Command::Hosts(command) => runtime().block_on(hosts_cmd::run(command)),
        Command::Store(StoreCommand::Check(args)) => store_check(&args),
        // The secrets leave the environment before the runtime starts its threads.
        Command::Serve(args) => match load_sealed(&args).and_then(|c| runtime().block_on(serve(c)))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // Shown even when RUST_LOG silences the logs: it is why the daemon stopped.
                if tracing::enabled!(tracing::Level::ERROR) {
                    tracing::error!("{e:#}");
                } else {
                    eprintln!("agent-fleet: error: {e:#}");
                }
                ExitCode::FAILURE
            }
        },
    }
}

/// The multi-threaded tokio runtime (what `#[tokio::main]` builds).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

/// Logs go to stderr; `RUST_LOG` filters them (default `info`).
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// `agent-fleet config check`: exit 0 when the file is valid, 1 otherwise.
fn config_check(args: &CheckArgs) -> ExitCode {
    let path = &args.config.config;
    let shown = path.display().to_string();
    match Config::load(path) {
        Ok(config) => {
            if args.json {
                let out = json!({
                    "ok": true,
                    "file": shown,
                    "agents": config.agents.len(),
                    "hosts": config.hosts.len(),
                });
                println!("{out}");
            } else {
                println!(
                    "config OK: {} agents, {} hosts",
                    config.agents.len(),
                    config.hosts.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            if args.json {
                let list: Vec<_> = errors.errors.iter().map(error_json).collect();
                println!("{}", json!({ "ok": false, "file": shown, "errors": list }));
            } else {
                print_config_errors(path, &errors);
            }
            ExitCode::FAILURE
        }
    }
}

/// `agent-fleet store check`: exit 0 when every instance record of the configured store can be
/// read, 1 otherwise (or when the config or the file cannot be opened).
fn store_check(args: &CheckArgs) -> ExitCode {
    let path = &args.config.config;
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            print_config_errors(path, &errors);
            return ExitCode::FAILURE;
        }
    };
    let store = &config.storage.path;
    let shown = store.display().to_string();
    let check = match agent_fleet::workflow::check_store(store) {
        Ok(check) => check,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    json!({ "ok": false, "store": shown, "error": e.to_string() })
                );
            } else {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let ok = check.unreadable.is_empty();
    if args.json {
        let unreadable: Vec<_> = check
            .unreadable
            .iter()
            .map(|(id, live, why)| json!({ "id": id, "live": live, "reason": why }))
            .collect();
        println!(
            "{}",
            json!({
                "ok": ok,
                "store": shown,
                "instances": check.instances,
                "live": check.live,
                "unreadable": unreadable,
            })
        );
    } else {
        println!(
            "store {shown}: {} instances ({} live), {} unreadable",
            check.instances,
            check.live,
            check.unreadable.len()
        );
        for (id, live, why) in &check.unreadable {
            let what = if *live {
                "live: the daemon will not start until it is repaired or removed"
            } else {
                "ended: left untouched, the daemon runs without it"
            };
            println!("instance {id} ({what}): {why}");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Each error of an invalid config on stderr as `<file>: <error>`, then how many there are.
fn print_config_errors(path: &Path, errors: &ConfigErrors) {
    let shown = path.display();
    for e in &errors.errors {
        eprintln!("{shown}: {e}");
    }
    let n = errors.errors.len();
    eprintln!("{shown}: {n} error{}", if n == 1 { "" } else { "s" });
}

fn error_json(e: &ConfigError) -> serde_json::Value {
    let at = e.location();
    json!({
        "key": e.key(),
        "line": at.map(|l| l.line),
        "column": at.map(|l| l.column),
        "message": e.message(),
        "text": e.to_string(),
    })
}

/// The daemon's configuration, with its secrets taken out of the process environment (kept in
/// memory by [`secrets`]) and the process made non-dumpable, so that agents running as the same
/// user on this machine cannot read them (SECURITY.md). Runs before any thread is started.
fn load_sealed(args: &ServeArgs) -> anyhow::Result<Config> {
    let path = &args.config.config;
    let config = Config::load(path).map_err(|errors| {
        let lines: Vec<String> = errors
            .errors
            .iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect();
        anyhow!("invalid configuration:\n{}", lines.join("\n"))
    })?;
    // SAFETY: `main` calls this before building the tokio runtime, and nothing before it starts
    // a thread (clap, the tracing subscriber and the config loader do not; `withdraw` checks
    // that this thread is alone). No code has kept a pointer from `getenv` for these names:
    // nothing read them yet but `std::env::var`, which copies.
    unsafe { secrets::withdraw(&secrets::names(&config)) }
        .context("cannot take the secrets out of the environment")?;
    secrets::make_undumpable().context("cannot make the daemon non-dumpable")?;
    Ok(config)
}

/// `agent-fleet serve`.
async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let admin_token = admin_token(&config)?;
    let base_dir = std::env::current_dir().context("cannot read the working directory")?;
    let forge = steps::forge::Forge::from_config(&config)?;
    let rt = Arc::new(Runtime::new(config.clone(), base_dir.clone())?.with_forge(forge));
    // Installed before anything else so that a signal is never the default "die at once".
    let mut signals = Signals::install()?;

    // Listen first: /healthz must answer while the store is still being recovered.
    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    eprintln!("agent-fleet listening on http://{addr}");

    let state = AppState::with(
        config.clone(),
        Some(admin_token),
        base_dir,
        Some(rt.clone()),
    );
    let stop_http = CancellationToken::new();
    let mut http = tokio::spawn(api::serve::serve(
        listener,
        api::router(state.clone()),
        stop_http.clone(),
    ));
    let mut opening = tokio::spawn(open_engine(config.clone(), rt.clone()));

    let engine = tokio::select! {
        opened = &mut opening => opened.context("engine start-up task failed")??,
        sig = signals.recv() => {
            tracing::info!("{sig} received while recovering; stopping once the store is open");
            stop_http.cancel();
            let engine = opening.await.context("engine start-up task failed")??;
            return stop(engine).await;
        }
        served = &mut http => return Err(http_stopped(served)),
    };
    state.set_engine(engine.clone());
    let stop_checks = CancellationToken::new();
    tokio::spawn(steps::hosts::monitor(
        engine.clone(),
        rt.clone(),
        stop_checks.clone(),
    ));
    tracing::info!("ready");

    let sig = tokio::select! {
        sig = signals.recv() => sig,
        served = &mut http => {
            let err = http_stopped(served);
            stop(engine).await?;
            return Err(err);
        }
        reason = engine.failed() => {
            return stop_failed(engine, reason, stop_http, stop_checks, http).await;
        }
    };
    tracing::info!("{sig} received; shutting down (a second signal exits at once)");
    tokio::spawn(async move {
        let sig = signals.recv().await;
        tracing::warn!("{sig} received again; exiting now, unfinished steps resume on restart");
        std::process::exit(1);
    });
    stop_http.cancel();
    stop_checks.cancel();
    match tokio::time::timeout(std::time::Duration::from_secs(10), http).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("the HTTP server stopped with an error: {e}"),
        Ok(Err(e)) => tracing::warn!("the HTTP server task failed: {e}"),
        Err(_) => tracing::warn!("HTTP connections still open after 10s; closing them"),
    }
    stop(engine).await
}

/// Opens the store, registers the workflows and recovers every unfinished instance.
async fn open_engine(config: Arc<Config>, rt: Arc<Runtime>) -> anyhow::Result<Engine> {
    let path = &config.storage.path;
    tracing::info!(store = %path.display(), "opening the store");
    let engine_config = EngineConfig {
        history_cap: config.storage.history_cap,
        max_active_steps: config.storage.max_active_steps,
        retention: Some(config.storage.retention),
        dedupe_window: Some(config.storage.dedupe_window),
        ..EngineConfig::default()
    };
    let builder = Engine::builder(path).config(engine_config);
    let engine = steps::register(builder, &rt).open().await.map_err(|e| {
        // The engine's messages already include their causes (and usually the store's path).
        let shown = path.display().to_string();
        let message = e.to_string();
        if message.contains(&shown) {
            anyhow!("cannot start the engine: {message}")
        } else {
            anyhow!("cannot start the engine on the store {shown}: {message}")
        }
    })?;
    steps::recover(&engine, &rt).context("cannot rebuild the host slots of recovered tasks")?;
    steps::start_services(&engine, &rt)
        .await
        .context("cannot start the forge's reconciliation")?;
    Ok(engine)
}

/// The coordinator's bearer token, from the environment variable the config names.
fn admin_token(config: &Config) -> anyhow::Result<String> {
    let name = &config.server.admin_token_env;
    match secrets::var(name) {
        Some(token) if !token.trim().is_empty() => Ok(token),
        _ => Err(anyhow!(
            "the API needs an admin token: set the environment variable {name} \
             (named by server.admin_token_env), e.g. {name}=$(openssl rand -hex 16)"
        )),
    }
}

/// How long the daemon keeps answering after its store failed (writes with 503 `store_failed`,
/// `/readyz` with 503 `failed`), so that requests in flight get their answer and a probe sees
/// why before the port closes.
const FAILED_LINGER: Duration = Duration::from_secs(1);

/// How long the open connections get to end once the HTTP server stops after a store failure.
const FAILED_HTTP_DRAIN: Duration = Duration::from_secs(2);

/// The store failed (disk full, I/O error): stops the HTTP server and the engine, then returns
/// the reason as the error that makes the process exit non-zero. A supervisor restarts the
/// daemon, and reopening the store repairs it. Bounded: a failed writer is never waited for.
async fn stop_failed(
    engine: Engine,
    reason: String,
    stop_http: CancellationToken,
    stop_checks: CancellationToken,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<()> {
    tracing::error!(
        %reason,
        "the store failed: taking no more work; exiting so that the daemon is restarted"
    );
    stop_checks.cancel();
    tokio::time::sleep(FAILED_LINGER).await;
    stop_http.cancel();
    if tokio::time::timeout(FAILED_HTTP_DRAIN, http).await.is_err() {
        tracing::warn!("HTTP connections still open after the store failed; closing them");
    }
    if let Err(e) = stop(engine).await {
        tracing::warn!("{e:#}");
    }
    Err(anyhow!(
        "the store failed, so the daemon stopped ({reason}); restart it: the store is \
         repaired when it reopens"
    ))
}

/// Lets the commit in flight finish, then stops the engine.
async fn stop(engine: Engine) -> anyhow::Result<()> {
    engine.shutdown().await.context("engine shutdown failed")?;
    tracing::info!("stopped");
    Ok(())
}

fn http_stopped(served: Result<std::io::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match served {
        Ok(Ok(())) => anyhow!("the HTTP server stopped unexpectedly"),
        Ok(Err(e)) => anyhow!("the HTTP server failed: {e}"),
        Err(e) => anyhow!("the HTTP server task failed: {e}"),
    }
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
