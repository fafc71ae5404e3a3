use std::sync::Arc;

use crate::{KeyValue, Revision};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    /// The guarded write's expected revision did not match; `current` is the key's current value.
    #[error("key {key} was modified: expected revision {expected}, found {}", current.mod_revision)]
    Conflict { key: String, expected: Revision, current: Box<KeyValue> },
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision { requested: Revision, current: Revision },
    /// A watcher fell so far behind live changes that they were no longer buffered for it.
    #[error("watcher fell behind by {missed} events")]
    WatcherLagged { missed: u64 },
    #[error("sqlite error at {path}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// A group of writes committed together could not be committed, so none of them took
    /// effect. Every caller in the group gets this error; the cause is shared between them.
    #[error("commit to {path} failed")]
    CommitFailed {
        path: String,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    #[error("cannot start the writer thread for {path}")]
    WriterThread {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store data at {path} is unreadable: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("the store is shut down")]
    Closed,
    /// The datastore cannot serve now (etcd unreachable, without a leader, or past the request
    /// deadline); the request may succeed later. The API answers 503.
    #[error("the datastore is unavailable: {reason}")]
    Unavailable { reason: String },
    #[error("etcd {operation} failed: {source}")]
    Etcd {
        operation: &'static str,
        #[source]
        source: Box<etcd_client::Error>,
    },
    /// The datastore settings cannot be used (unreadable certificate files, half a key pair).
    #[error("datastore configuration: {reason}")]
    Config { reason: String },
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn store_error_can_be_sent_across_threads_and_boxed() {
        fn boxable<E: std::error::Error + Send + Sync + 'static>() {}
        boxable::<StoreError>();
    }
}
