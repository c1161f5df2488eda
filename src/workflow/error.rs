//! Typed errors of the durable engine: storage, encoding, and the engine's own refusals.

use super::InstanceId;
use super::codec::CodecError;
use super::record::Status;

/// Everything the engine can refuse or fail with. Storage errors fail a whole commit batch;
/// every other variant fails only the request that caused it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    #[error("record encoding error: {0}")]
    Codec(#[from] CodecError),
    #[error("{what} cannot be read: {source}")]
    Corrupt {
        what: String,
        #[source]
        source: CodecError,
    },
    #[error("unknown workflow instance {0}")]
    UnknownInstance(InstanceId),
    #[error("instance {id} runs workflow `{actual}`, not `{expected}`")]
    WrongWorkflow {
        id: InstanceId,
        expected: String,
        actual: String,
    },
    #[error("instance {id} has already ended ({status:?})")]
    Finished { id: InstanceId, status: Status },
    #[error("no workflow definition `{name}` version {version} is registered")]
    UnknownDefinition { name: String, version: u32 },
    #[error("instance {id} was advanced concurrently (expected step {expected}, found {found})")]
    Conflict {
        id: InstanceId,
        expected: u64,
        found: u64,
    },
    #[error("intent `{name}` of instance {id} does not exist")]
    UnknownIntent { id: InstanceId, name: String },
    #[error("idempotency key of {len} bytes: it must be 1 to {max} bytes")]
    InvalidKey { len: usize, max: usize },
    #[error(
        "feed consumer `{name}` is at row {found}, not {expected} (another copy of it advanced it?), or row {to} is not in the feed"
    )]
    ConsumerMoved {
        name: String,
        expected: u64,
        found: u64,
        to: u64,
    },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// A failure of the underlying redb file or of the writer thread.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "store {path} was written by a newer agent-fleet (store format {found}, this build reads up to {supported})"
    )]
    UnsupportedFormat {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("store {path} holds {value} as its store id, which no agent-fleet writes")]
    BadStoreId { path: String, value: u64 },
    #[error("the store writer has stopped")]
    WriterGone,
    /// A commit failed (disk full, I/O error): redb takes no more writes until the file is
    /// reopened, so the engine refuses every op from then on and the daemon must restart.
    #[error("the store failed and takes no more writes ({reason}); a restart reopens it")]
    Failed { reason: String },
    #[error("store writer panicked")]
    WriterPanicked,
}

macro_rules! redb_into_store {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Redb(e.into()) }
        }
        impl From<$t> for EngineError {
            fn from(e: $t) -> Self { EngineError::Store(StoreError::Redb(e.into())) }
        }
    )*};
}
redb_into_store!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl EngineError {
    /// True when the error concerns the whole store (the batch failed), not one request.
    pub fn is_storage(&self) -> bool {
        matches!(self, EngineError::Store(_))
    }

    /// True when the store can take no more work until the daemon restarts: a commit failed
    /// ([`StoreError::Failed`]), or redb refuses an operation after an earlier I/O error.
    pub fn is_store_failed(&self) -> bool {
        matches!(
            self,
            EngineError::Store(
                StoreError::Failed { .. } | StoreError::Redb(redb::Error::PreviousIo)
            )
        )
    }
}
