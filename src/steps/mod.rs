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
pub mod runtime;
pub mod task;
pub mod tasks;
pub mod template;
pub mod workspace;

use std::sync::Arc;

use crate::workflow::{Engine, EngineBuilder, EngineError};

use agent_task::AgentTask;
use hosts::HostWatch;
use runtime::Runtime;

/// Registers every workflow definition and effect handler of the daemon on `builder`.
///
/// When a definition changes in a way that old instances cannot follow, register the old
/// version too: instances stay pinned to the version they started on.
pub fn register(builder: EngineBuilder, rt: &Arc<Runtime>) -> EngineBuilder {
    builder
        .register(AgentTask::new(rt.clone()))
        .register(HostWatch)
}

/// Rebuilds the host slots of recovered tasks, then lets tasks be routed.
pub fn recover(engine: &Engine, rt: &Runtime) -> Result<(), EngineError> {
    for info in engine.list()? {
        if info.workflow != <AgentTask as crate::workflow::Workflow>::NAME
            || info.status.is_terminal()
        {
            continue;
        }
        let state = engine.state::<AgentTask>(info.id)?;
        if state.holds_host()
            && let Some(host) = &state.assigned_host
        {
            rt.fleet().hold(host, info.id);
        }
    }
    rt.fleet().mark_ready();
    Ok(())
}
