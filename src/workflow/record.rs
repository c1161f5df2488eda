//! The records the engine stores, one type per table, each with its schema version.
//!
//! Changing a stored layout means: bump the record's `VERSION`, keep the old struct, and
//! upgrade it in `codec::decode`'s caller; the golden store test fails otherwise.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::codec::Record;

/// Absolute wall-clock time in milliseconds since the Unix epoch. Deadlines are stored in this
/// form and never recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    pub fn after(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// The same instant as a `SystemTime`.
    pub fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// Time left until `self`, zero when it has passed.
    pub fn until(self, now: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(now.0))
    }
}

/// Lifecycle of one workflow instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Ready for its next step (or running it).
    Runnable,
    /// Parked until a signal arrives or its deadline passes.
    Waiting,
    /// Parked until its retry time.
    Sleeping,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Runnable => "runnable",
            Status::Waiting => "waiting",
            Status::Sleeping => "sleeping",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// What made a parked instance runnable again; shown to the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wake {
    Start,
    Next,
    Signal,
    Timer,
    Cancel,
}

/// One workflow instance: the `instances` table's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub workflow: String,
    pub def_version: u32,
    pub status: Status,
    /// postcard of the definition's state type.
    pub state: Vec<u8>,
    /// Number of committed transitions: a fencing token for the step that runs.
    pub step: u64,
    /// Present iff a timer row `(wake_at, id)` exists.
    pub wake_at: Option<Timestamp>,
    pub wake: Wake,
    /// Consecutive step errors (reset by a successful step); drives the error backoff.
    pub errors: u32,
    pub next_signal: u64,
    pub pending_signals: u32,
    pub history_first: u64,
    pub history_next: u64,
    pub cancel: Option<String>,
    pub created: Timestamp,
    pub updated: Timestamp,
}

impl Record for InstanceRecord {
    const NAME: &'static str = "instance";
    const VERSION: u8 = 1;
}

/// One entry of an instance's append-only history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub at: Timestamp,
    pub kind: EventKind,
}

impl Record for Event {
    const NAME: &'static str = "history event";
    const VERSION: u8 = 1;
}

/// What happened. Notes are short (truncated to [`MAX_NOTE`]); large payloads live elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum EventKind {
    Started {
        workflow: String,
        version: u32,
    },
    Step {
        step: u64,
        outcome: String,
        note: Option<String>,
    },
    StepError {
        step: u64,
        error: String,
        retry_in_ms: u64,
    },
    SignalReceived {
        seq: u64,
        key: String,
    },
    SignalConsumed {
        seq: u64,
    },
    SignalDiscarded {
        seq: u64,
        error: String,
    },
    TimerFired {
        due: Timestamp,
    },
    EffectQueued {
        effect: u64,
        kind: String,
    },
    EffectDelivered {
        effect: u64,
        attempts: u32,
    },
    EffectAbandoned {
        effect: u64,
        error: String,
    },
    IntentRecorded {
        name: String,
    },
    IntentResolved {
        name: String,
    },
    CancelRequested {
        reason: String,
    },
    CleanedUp {
        report: String,
    },
    Completed,
    Failed {
        reason: String,
    },
    Cancelled,
}

/// Longest note kept in history; longer ones are cut with a marker.
pub const MAX_NOTE: usize = 1024;

pub(crate) fn short(s: impl Into<String>) -> String {
    let mut s = s.into();
    if s.len() > MAX_NOTE {
        let mut cut = MAX_NOTE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

/// A signal waiting in an instance's inbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalRecord {
    pub key: String,
    pub payload: Vec<u8>,
    pub received: Timestamp,
}

impl Record for SignalRecord {
    const NAME: &'static str = "signal";
    const VERSION: u8 = 1;
}

/// Delivery state of one outbox effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EffectStatus {
    Pending,
    Delivered,
    Abandoned,
}

/// One effect in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EffectRecord {
    pub instance: u64,
    pub kind: String,
    pub payload: Vec<u8>,
    pub status: EffectStatus,
    pub attempts: u32,
    pub next_attempt: Timestamp,
    pub last_error: Option<String>,
    pub created: Timestamp,
}

impl Record for EffectRecord {
    const NAME: &'static str = "effect";
    const VERSION: u8 = 1;
}

/// A step's declared contact with the outside world, and its result once known.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntentRecord {
    pub payload: Vec<u8>,
    pub result: Option<Vec<u8>>,
    pub recorded: Timestamp,
}

impl Record for IntentRecord {
    const NAME: &'static str = "intent";
    const VERSION: u8 = 1;
}

/// One row of the change feed (the `feed` table's value; its key is the row's sequence number).
/// Rows are appended in the transaction of the change they describe, so the feed has no gap
/// and never shows an uncommitted change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeedRecord {
    pub instance: u64,
    pub workflow: String,
    /// The instance's status after the change.
    pub status: Status,
    /// The workflow's own name for where the instance is (see `Workflow::phase`), on the rows
    /// of starts and steps; `None` on the others (unchanged by them).
    pub phase: Option<String>,
    pub event: FeedEvent,
    pub at: Timestamp,
}

impl Record for FeedRecord {
    const NAME: &'static str = "feed row";
    const VERSION: u8 = 1;
}

/// What a feed row records. Short by design: the instance's history holds the details.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum FeedEvent {
    Started,
    /// A committed step; `outcome` as in [`EventKind::Step`] (`continue`, `wait`, `retry`,
    /// `complete`, `fail`, `cancelled`, `error`).
    Step {
        outcome: String,
    },
    /// A signal reached the inbox.
    Signal {
        key: String,
    },
    /// The instance's timer fired and made it runnable.
    Timer,
    /// A wake (no signal) made a waiting instance runnable.
    Woken,
    CancelRequested {
        reason: String,
    },
    EffectDelivered {
        kind: String,
    },
    EffectAbandoned {
        kind: String,
        error: String,
    },
}

impl FeedEvent {
    /// The event's kind as filters and the HTTP feed name it.
    pub fn kind(&self) -> &'static str {
        match self {
            FeedEvent::Started => "started",
            FeedEvent::Step { .. } => "step",
            FeedEvent::Signal { .. } => "signal",
            FeedEvent::Timer => "timer",
            FeedEvent::Woken => "woken",
            FeedEvent::CancelRequested { .. } => "cancel_requested",
            FeedEvent::EffectDelivered { .. } => "effect_delivered",
            FeedEvent::EffectAbandoned { .. } => "effect_abandoned",
        }
    }

    /// Every kind [`FeedEvent::kind`] returns.
    pub const KINDS: &'static [&'static str] = &[
        "started",
        "step",
        "signal",
        "timer",
        "woken",
        "cancel_requested",
        "effect_delivered",
        "effect_abandoned",
    ];
}
