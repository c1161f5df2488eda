//! The process the crash test (`tests/crash.rs`) SIGKILLs: an engine driving `crash-flow`
//! workflows whose steps emit counted effects and wait for signals.
//!
//! `crash_worker run <store> <ledger>` reads commands on stdin and answers on stdout only after
//! the commit: `start <idx>` → `started <idx> <id>`; `signal <id> <key> <A|B|C> <n>` →
//! `ok <key>` (or `err <key> <message>`); `idle?` → `idle <bool>`. EOF → clean shutdown.
//! The `apply` effect handler appends each effect to the ledger file exactly once, using the
//! effect key to recognise a redelivery.
//! `crash_worker report <store> <ledger>` prints one JSON line per instance for the checks.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_fleet::workflow::{
    Delivery, Effect, EffectError, EffectHandler, Engine, Outcome, StepCtx, StepResult, Workflow,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
enum Sig {
    A(u32),
    B(u32),
    C(u32),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    idx: u32,
    phase: u8,
    got: Vec<u32>,
}

/// Effect → wait A → effect → wait B → effect → wait C → effect → complete.
struct CrashFlow;

impl Workflow for CrashFlow {
    const NAME: &'static str = "crash-flow";
    const VERSION: u32 = 1;
    type State = State;
    type Signal = Sig;

    async fn step(&self, ctx: &mut StepCtx<Sig>, mut s: State) -> StepResult<State> {
        let wanted = match s.phase {
            0 => None,
            1 => ctx.take(|g| matches!(g, Sig::A(_))),
            2 => ctx.take(|g| matches!(g, Sig::B(_))),
            _ => ctx.take(|g| matches!(g, Sig::C(_))),
        };
        if s.phase > 0 {
            match wanted {
                Some(Sig::A(n) | Sig::B(n) | Sig::C(n)) => s.got.push(n),
                None => return Ok(Outcome::wait(s)),
            }
        }
        let fx = Effect::new("apply", &(s.idx, s.phase))?;
        s.phase += 1;
        Ok(if s.phase == 4 {
            Outcome::complete(s)
        } else {
            Outcome::next(s)
        }
        .effect(fx))
    }
}

/// Appends each effect once to the ledger: `key idx phase`, fsynced.
struct Ledger {
    file: Mutex<std::fs::File>,
    seen: Mutex<HashSet<String>>,
}

impl Ledger {
    fn open(path: &str) -> std::io::Result<Ledger> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // A line without its newline was torn by a kill: its effect was not applied.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        std::fs::write(path, complete)?;
        let seen = complete
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Ledger {
            file: Mutex::new(file),
            seen: Mutex::new(seen),
        })
    }
}

impl EffectHandler for Ledger {
    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), EffectError>> {
        Box::pin(async move {
            let (idx, phase): (u32, u8) = d
                .decode()
                .map_err(|e| EffectError::Permanent(e.to_string()))?;
            tokio::time::sleep(Duration::from_millis(u64::from(idx % 4))).await;
            let key = d.key.to_string();
            if self
                .seen
                .lock()
                .map_err(|_| EffectError::Transient("poisoned".into()))?
                .contains(&key)
            {
                return Ok(());
            }
            let mut f = self
                .file
                .lock()
                .map_err(|_| EffectError::Transient("poisoned".into()))?;
            writeln!(f, "{key} {idx} {phase}")
                .and_then(|_| f.sync_data())
                .map_err(|e| EffectError::Transient(e.to_string()))?;
            self.seen
                .lock()
                .map_err(|_| EffectError::Transient("poisoned".into()))?
                .insert(key);
            Ok(())
        })
    }
}

async fn open(store: &str, ledger: &str) -> anyhow::Result<Engine> {
    Ok(Engine::builder(store)
        .register(CrashFlow)
        .handler("apply", Ledger::open(ledger)?)
        .open()
        .await?)
}

async fn run(store: &str, ledger: &str) -> anyhow::Result<()> {
    let engine = open(store, ledger).await?;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = move |line: String| {
        if let Ok(mut o) = out.lock() {
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    };
    say("ready".into());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        let engine = engine.clone();
        let say = say.clone();
        tokio::spawn(async move {
            match words
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["start", idx] => {
                    let idx: u32 = idx.parse().unwrap_or(0);
                    let state = State {
                        idx,
                        ..State::default()
                    };
                    match engine
                        .start::<CrashFlow>(&state, Some(&format!("wf-{idx}")))
                        .await
                    {
                        Ok(id) => say(format!("started {idx} {id}")),
                        Err(e) => say(format!("err start-{idx} {e}")),
                    }
                }
                ["signal", id, key, which, n] => {
                    let n: u32 = n.parse().unwrap_or(0);
                    let sig = match *which {
                        "A" => Sig::A(n),
                        "B" => Sig::B(n),
                        _ => Sig::C(n),
                    };
                    let id: u64 = id.parse().unwrap_or(0);
                    match engine.signal::<CrashFlow>(id, &sig, key).await {
                        Ok(_) => say(format!("ok {key}")),
                        Err(e) => say(format!("err {key} {e}")),
                    }
                }
                ["idle?"] => {
                    let idle = engine
                        .list()
                        .map(|all| all.iter().all(|i| i.status.is_terminal()))
                        .unwrap_or(false)
                        && engine.pending_effects().map(|n| n == 0).unwrap_or(false);
                    say(format!("idle {idle}"));
                }
                other => say(format!("err ? unknown command {other:?}")),
            }
        });
    }
    engine.shutdown().await?;
    Ok(())
}

async fn report(store: &str, ledger: &str) -> anyhow::Result<()> {
    let engine = open(store, ledger).await?;
    for info in engine.list()? {
        let state = engine.state::<CrashFlow>(info.id)?;
        let history: Vec<_> = engine
            .history(info.id)?
            .into_iter()
            .map(|(_, e)| e.kind)
            .collect();
        let line = serde_json::json!({
            "id": info.id, "idx": state.idx, "status": info.status, "got": state.got,
            "phase": state.phase, "history": history,
        });
        println!("{line}");
    }
    engine.shutdown().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [_, "run", store, ledger] => run(store, ledger).await,
        [_, "report", store, ledger] => report(store, ledger).await,
        _ => anyhow::bail!("usage: crash_worker run|report <store> <ledger>"),
    }
}
