//! Versioned record encoding: one schema-version byte, then the postcard body.
//!
//! Every record the engine stores goes through [`encode`] and [`decode`]. A record whose version
//! this build does not know is a clear [`CodecError::UnknownVersion`], never a panic; older
//! versions are upgraded here when a record's layout changes (see `tests/golden_store.rs`).

use serde::{Serialize, de::DeserializeOwned};

/// Errors from encoding or decoding a stored record.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{record} record has schema version {found}, this build reads version {supported}")]
    UnknownVersion {
        record: &'static str,
        found: u8,
        supported: u8,
    },
    #[error("{record} record is empty")]
    Empty { record: &'static str },
    #[error("{record} record is malformed: {source}")]
    Malformed {
        record: &'static str,
        #[source]
        source: postcard::Error,
    },
}

/// A record type stored by the engine, with its current schema version.
pub trait Record: Serialize + DeserializeOwned {
    /// Name used in error messages.
    const NAME: &'static str;
    /// Schema version written by this build.
    const VERSION: u8;
}

/// Encodes `value` as `[VERSION] ++ postcard(value)`.
pub fn encode<R: Record>(value: &R) -> Result<Vec<u8>, CodecError> {
    postcard::to_extend(value, vec![R::VERSION]).map_err(|source| CodecError::Malformed {
        record: R::NAME,
        source,
    })
}

/// Decodes a record written by [`encode`], checking its schema version.
pub fn decode<R: Record>(bytes: &[u8]) -> Result<R, CodecError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or(CodecError::Empty { record: R::NAME })?;
    if version != R::VERSION {
        return Err(CodecError::UnknownVersion {
            record: R::NAME,
            found: version,
            supported: R::VERSION,
        });
    }
    postcard::from_bytes(body).map_err(|source| CodecError::Malformed {
        record: R::NAME,
        source,
    })
}

/// Encodes a value owned by a workflow definition (state, signal, intent payload): plain postcard,
/// versioned by the definition version the instance is pinned to.
pub fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_allocvec(value).map_err(|source| CodecError::Malformed {
        record: "workflow value",
        source,
    })
}

/// Decodes a value written by [`encode_value`].
pub fn decode_value<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    postcard::from_bytes(bytes).map_err(|source| CodecError::Malformed {
        record: what,
        source,
    })
}
