//! Waiting for many instances to end without one broadcast receiver per waiter.
//!
//! `Engine::wait_terminal` subscribes to the change stream and re-reads the instance on every
//! change of *any* instance, which costs O(in-flight) reads per change at concurrency 256. Here
//! one task reads the stream and wakes the waiter of the instance that ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use agent_fleet::workflow::{Change, Engine, InstanceId, Status};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

type Waiters = Arc<Mutex<HashMap<InstanceId, oneshot::Sender<Status>>>>;

/// Completion notifications for instances of one engine.
pub struct Completions {
    engine: Engine,
    waiters: Waiters,
    task: JoinHandle<()>,
}

impl Completions {
    /// Subscribes to `engine`'s changes (call it before starting the instances to wait for).
    pub fn new(engine: &Engine) -> Completions {
        let waiters: Waiters = Arc::default();
        let rx = engine.subscribe();
        let task = tokio::spawn(dispatch(engine.clone(), rx, waiters.clone()));
        Completions {
            engine: engine.clone(),
            waiters,
            task,
        }
    }

    /// Waits until `id` reaches a terminal status and returns it.
    pub async fn wait(&self, id: InstanceId) -> anyhow::Result<Status> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id, tx);
        // It may have ended before the waiter was registered: look once.
        let status = self.engine.info(id)?.status;
        if status.is_terminal() && lock(&self.waiters).remove(&id).is_some() {
            return Ok(status);
        }
        Ok(rx.await?)
    }
}

impl Drop for Completions {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(
    waiters: &Mutex<HashMap<InstanceId, oneshot::Sender<Status>>>,
) -> MutexGuard<'_, HashMap<InstanceId, oneshot::Sender<Status>>> {
    waiters.lock().unwrap_or_else(|p| p.into_inner())
}

async fn dispatch(engine: Engine, mut rx: broadcast::Receiver<Change>, waiters: Waiters) {
    loop {
        match rx.recv().await {
            Ok(change) if change.status.is_terminal() => {
                if let Some(tx) = lock(&waiters).remove(&change.id) {
                    let _ = tx.send(change.status);
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Changes were lost: look at every waiting instance instead.
                let ids: Vec<InstanceId> = lock(&waiters).keys().copied().collect();
                for id in ids {
                    let Ok(info) = engine.info(id) else { continue };
                    if info.status.is_terminal()
                        && let Some(tx) = lock(&waiters).remove(&id)
                    {
                        let _ = tx.send(info.status);
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                // The engine is gone: dropping the senders fails every waiter.
                lock(&waiters).clear();
                return;
            }
        }
    }
}
