//! The generic durable workflow engine on redb.
//!
//! It knows nothing of SSH, forges or chat. A [`Workflow`] definition runs as steps; each step's
//! outcome (state, history, timers, effects, consumed signals) commits in one redb transaction
//! through the group-commit [`writer`]. Signals, timers and the outbox are durable; intents let a
//! step reconcile after a crash instead of acting twice; recovery reschedules every unfinished
//! instance on open. See ARCHITECTURE.md for the guarantees and the tests that prove them.

pub mod codec;
mod context;
mod definition;
mod engine;
pub mod error;
mod feed;
mod outbox;
pub mod record;
mod store;
mod store_id;
mod timers;
mod writer;

/// Identifier of a workflow instance, allocated by the engine.
pub type InstanceId = u64;

pub use context::{Inbound, Intent, StepCtx};
pub use definition::{Cleanup, Effect, Next, Outcome, StepError, StepResult, Workflow};
pub use engine::{
    CancelAck, Change, Engine, EngineBuilder, EngineConfig, InstanceInfo, MAX_KEY_LEN,
    RecoveryReport, SignalAck, StartAck, Update, Waker,
};
pub use error::{EngineError, StoreError};
pub use feed::{Consumer, FeedRow};
pub use outbox::{Backoff, Delivery, EffectError, EffectHandler, EffectKey};
pub use record::{Event, EventKind, FeedEvent, Status, Timestamp, Wake};
pub use store::{STORE_FORMAT, StoreCheck, check as check_store};
pub use store_id::StoreId;
