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
pub mod dispatch;
pub mod hosts;
pub mod parse;
pub mod prompt;
pub mod pull;
pub mod pull_mode;
pub mod runtime;
pub mod task;
pub mod task_v1;
pub mod tasks;
pub mod template;
pub mod workspace;

use std::sync::Arc;

use crate::workflow::{Engine, EngineBuilder, EngineError};

use agent_task::{AgentTask, Phase};
use agents::PullAgent;
use hosts::HostWatch;
use pull_mode::Pin;
use runtime::Runtime;

use crate::workflow::{Timestamp, Workflow};

/// Registers every workflow definition and effect handler of the daemon on `builder`.
///
/// When a definition changes in a way that old instances cannot follow, register the old
/// version too: instances stay pinned to the version they started on.
pub fn register(builder: EngineBuilder, rt: &Arc<Runtime>) -> EngineBuilder {
    builder
        .register(AgentTask::new(rt.clone()))
        .register(PullAgent::new(rt.clone()))
        .register(HostWatch)
}

/// Rebuilds what lives in memory from the stored states — the host slots of tasks that hold a
/// host, the pull agents (each online one gets a fresh lease: agents cannot heartbeat a daemon
/// that is down), the tasks open to pull agents and those agents hold — then lets tasks be
/// routed.
pub fn recover(engine: &Engine, rt: &Runtime) -> Result<(), EngineError> {
    let now = Timestamp::now();
    let grace = now.after(rt.board().lease());
    for info in engine.list()? {
        if info.status.is_terminal() {
            continue;
        }
        if info.workflow == PullAgent::NAME {
            let state = engine.state::<PullAgent>(info.id)?;
            let mut entry = state.entry(info.id);
            if !entry.deregistered && !state.offline {
                entry.lease_until = entry.lease_until.max(grace);
            }
            rt.board().upsert_agent(entry);
            continue;
        }
        if info.workflow != AgentTask::NAME {
            continue;
        }
        let state = engine.state::<AgentTask>(info.id)?;
        if state.holds_host()
            && let Some(host) = &state.assigned_host
        {
            rt.fleet().hold(host, info.id);
        }
        let open = match state.phase {
            Phase::Pull => true,
            Phase::Route => !matches!(state.pin, Some(Pin::Host(_))),
            _ => false,
        };
        if open {
            rt.board().offer(pull_mode::offer_of(info.id, &state));
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
