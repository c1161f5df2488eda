//! Helpers shared by the engine's test files: a fast-retrying engine on a temp store, and
//! polling for a status.

#![allow(dead_code)] // each includer uses a part of it

use std::time::Duration;

use agent_fleet::workflow::{Backoff, Engine, EngineBuilder, EngineConfig, EventKind, Status};
use tempfile::TempDir;

/// Longest a test waits for something that should happen at once.
pub const T: Duration = Duration::from_secs(10);

/// Retries and shutdown in milliseconds, so that tests stay short.
pub fn fast_config() -> EngineConfig {
    EngineConfig {
        effect_backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        step_error_backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        shutdown_grace: Duration::from_millis(200),
        ..EngineConfig::default()
    }
}

/// An engine builder on `<dir>/fleet.redb` with [`fast_config`].
pub fn builder(dir: &TempDir) -> EngineBuilder {
    Engine::builder(dir.path().join("fleet.redb")).config(fast_config())
}

/// The kinds of `id`'s history events, oldest first.
pub fn events(engine: &Engine, id: u64) -> Vec<EventKind> {
    engine
        .history(id)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.kind)
        .collect()
}

/// Polls until `id` has status `want`; fails the test after [`T`].
pub async fn wait_status(engine: &Engine, id: u64, want: Status) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = engine.info(id).unwrap().status;
        if s == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance {id} stuck in {s:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
