//! agent-fleet: runs AI coding agents against a forge's issues as durable workflows on redb.
//!
//! Layers, dependencies pointing inward (see ARCHITECTURE.md): [`api`] → [`steps`] →
//! [`workflow`]; [`io`] is used by `steps`; `workflow` depends on none of them. [`config`] is
//! the daemon's TOML configuration. [`client`] is the typed client of the API that the `task`
//! commands use.

pub mod api;
pub mod client;
pub mod config;
pub mod io;
pub mod secrets;
pub mod steps;
pub mod workflow;
