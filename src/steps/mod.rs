//! The agent-task workflow (SPEC §4) and everything it is made of: its steps (route, select
//! host, prepare workspace, launch, await run, parse output, verify receipt), the structured
//! prompts, the CLI template rendering and the agent output parsers.
//!
//! Workflow definitions reach the engine through [`register`], which the daemon calls on the
//! [`EngineBuilder`] before opening the store; recovery can resume an instance only when its
//! definition (at the version it was pinned to) is registered. Once the engine is open,
//! [`recover`] gives every recovered task its host slot back and opens routing.

pub mod agent_task;
pub mod agents;
pub mod chat;
pub mod dispatch;
pub mod failure;
pub mod forge;
pub mod forge_sync;
pub mod gc;
pub mod hosts;
mod lines;
pub mod names;
pub mod parse;
pub mod prompt;
pub mod pull;
pub mod pull_mode;
pub mod review;
pub mod runtime;
pub mod stuck;
pub mod task;
pub mod task_v1;
pub mod task_v2;
pub mod task_v3;
pub mod tasks;
pub mod template;
pub mod workspace;

use std::sync::Arc;

use crate::workflow::{Engine, EngineBuilder, EngineError};

use agent_task::{AgentTask, Phase};
use agents::PullAgent;
use forge_sync::ForgeSync;
use gc::WorkspaceGc;
use hosts::HostWatch;
use pull_mode::Pin;
use runtime::Runtime;

use crate::workflow::{Status, Timestamp, Workflow};

/// Registers every workflow definition and effect handler of the daemon on `builder`.
///
/// When a definition changes in a way that old instances cannot follow, register the old
/// version too: instances stay pinned to the version they started on.
pub fn register(builder: EngineBuilder, rt: &Arc<Runtime>) -> EngineBuilder {
    let builder = builder
        .register(AgentTask::new(rt.clone()))
        .register(PullAgent::new(rt.clone()))
        .register(HostWatch)
        .register(ForgeSync::new(rt.clone()))
        .register(WorkspaceGc::new(rt.clone()));
    match rt.forge_handle() {
        Some(forge) => builder
            .handler(forge::LABELS_EFFECT, forge::LabelsHandler(forge.clone()))
            .handler(forge::COMMENT_EFFECT, forge::CommentHandler(forge)),
        None => builder,
    }
}

/// Starts what runs beside the tasks once the engine is open and recovered: the forge's
/// reconciliation (when a forge is configured) and the sweeper of ended tasks' workspaces.
pub async fn start_services(engine: &Engine, rt: &Runtime) -> Result<(), EngineError> {
    if rt.forge().is_some() {
        forge_sync::ensure_started(engine).await?;
    }
    gc::start(engine, rt.config().storage.workspace_retention).await?;
    Ok(())
}

/// Rebuilds what lives in memory from the stored states — the host slots of tasks that hold a
/// host, the host queue (every task in Route keeps its place, so the first in line are woken),
/// the pull agents (each online one gets a fresh lease: agents cannot heartbeat a daemon that
/// is down), the tasks open to pull agents and those agents hold — then lets tasks be routed.
/// Tasks parked in `Pull` are woken once, so that their deadline follows the config.
pub fn recover(engine: &Engine, rt: &Runtime) -> Result<(), EngineError> {
    let now = Timestamp::now();
    let grace = now.after(rt.board().lease());
    rt.set_names(names::TaskNames::of(engine));
    rt.set_engine(engine.clone());
    if let Some(forge) = rt.forge() {
        forge.set_engine(engine.clone());
    }
    let waker = engine.waker();
    rt.fleet().set_waker(move |id| waker.wake(id));
    // Only live instances are read: the forge finds ended tasks through the engine's key
    // index (`Workflow::keys`), and nothing else needs them.
    for info in engine.live()? {
        let task = if info.workflow == AgentTask::NAME {
            let state = engine.state::<AgentTask>(info.id)?;
            if let Some(forge) = rt.forge() {
                forge::index_task(forge, info.id, &state);
            }
            Some(state)
        } else {
            None
        };
        if info.workflow == PullAgent::NAME {
            let state = engine.state::<PullAgent>(info.id)?;
            let mut entry = state.entry(info.id);
            if !entry.deregistered && !state.offline {
                entry.lease_until = entry.lease_until.max(grace);
            }
            rt.board().upsert_agent(entry);
            continue;
        }
        let Some(state) = task else {
            continue;
        };
        if state.holds_host()
            && let Some(host) = &state.assigned_host
        {
            rt.fleet().hold(host, info.id);
        }
        // A parked task's place in the queue; its step asks with its own ticket when woken.
        if state.phase == Phase::Route {
            rt.fleet().queue(&agent_task::route_ticket(info.id, &state));
        }
        // Usage limits still in force pause their agent kind on their host again.
        for run in &state.runs {
            if let Some(report) = &run.report
                && report.kind == Some(parse::FailureKind::UsageLimit)
                && let Some(until) = report.retry_at_ms.map(Timestamp).filter(|t| *t > now)
            {
                let reason = report.failure.clone().unwrap_or_default();
                rt.fleet().pause(&run.host, &run.agent, until, &reason);
            }
        }
        let open = match state.phase {
            Phase::Pull => true,
            // A review round waits for a host, never for a pull agent.
            Phase::Route => {
                !matches!(state.pin, Some(Pin::Host(_)))
                    && state.forge.as_ref().is_none_or(|f| f.pr.is_none())
            }
            _ => false,
        };
        if open {
            rt.board().offer(pull_mode::offer_of(info.id, &state));
        }
        // A task parked in Pull gets its deadline from its own step (`dispatch.pull_timeout`,
        // see `stuck`): one parked by an older build has none, one parked under another
        // `pull_timeout` has the old one. Its step runs once now and sets the deadline the
        // config asks for (a task pinned to one agent has none).
        if state.phase == Phase::Pull
            && !matches!(state.pin, Some(Pin::Agent(_)))
            && info.status == Status::Waiting
        {
            engine.waker().wake(info.id);
        }
        // A failed task parked by an older build waits for a retry with no deadline: its step
        // runs once now and sets the one `storage.retention` asks for.
        if state.phase == Phase::Settled && info.status == Status::Waiting && info.wake_at.is_none()
        {
            engine.waker().wake(info.id);
        }
        if state.phase == Phase::Claimed
            && let Some(c) = &state.claim
        {
            rt.board().hold(c.agent_id, info.id);
        }
    }
    rt.fleet().mark_ready();
    Ok(())
}
