//! The agent-task workflow (SPEC §4) and everything it is made of: its steps (route, select
//! host, prepare workspace, launch, await run, parse output, publish, await review, verify
//! receipt), the structured prompts, the CLI template rendering and the agent output parsers.
//!
//! Workflow definitions reach the engine through [`register`], which the daemon calls on the
//! [`EngineBuilder`] before opening the store; recovery can resume an instance only when its
//! definition (at the version it was pinned to) is registered.

pub mod parse;
pub mod task;

use crate::config::Config;
use crate::workflow::EngineBuilder;

/// Registers every workflow definition and effect handler of the daemon on `builder`.
///
/// No definition exists yet (the agent-task workflow comes next), so the builder is returned
/// unchanged. When one changes in a way that old instances cannot follow, register the old
/// version too: instances stay pinned to the version they started on.
pub fn register(builder: EngineBuilder, _config: &Config) -> EngineBuilder {
    builder
}
