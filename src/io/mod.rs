//! The daemon's contacts with the outside world (SPEC §6–§8): SSH to hosts (pooled connections,
//! jump hosts, host key checks) and local subprocesses with the same detached-run contract, the
//! Forgejo REST client and webhook payloads, and the Matrix ChatOps bot.
//!
//! The workflow engine never calls these directly: steps use them, and outbox effect handlers
//! deliver forge comments, labels and chat messages through them.

pub mod forgejo;
pub mod matrix;
pub mod run;
pub mod shell;
pub mod ssh;
