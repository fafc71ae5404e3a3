//! The revisioned key-value store that holds all cluster state.
//!
//! This crate owns persistence and change notification, nothing else: it knows keys, byte values
//! and revisions, never Kubernetes objects. Only the API server uses it (design rule 1); every
//! other component reaches state through the API.
//!
//! The model is etcd v3's: one cluster-wide revision counter that every write advances by one;
//! each key remembers the revision that created it and the one that last modified it; a watch
//! replays the changes after a given revision and then follows live ones; compaction forgets
//! history older than a revision, after which watching or reading from before it fails with
//! [`StoreError::Compacted`].
//!
//! Backends: [`sqlite::SqliteStore`] (the embedded default, durable), [`etcd::EtcdStore`] (a
//! real etcd v3 cluster, for several servers) and [`memory::MemoryStore`] (tests). The behaviour both must share is pinned by the suite in
//! [`conformance`], which every backend's tests run. [`bench`] measures a backend's raw write
//! rate, the baseline the API server's benchmarks compare against.

pub mod bench;
#[doc(hidden)]
pub mod conformance;
mod error;
pub mod etcd;
pub mod memory;
mod rules;
pub mod snapshot;
pub mod sqlite;
mod watch;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt, future};

pub use error::StoreError;

/// A store revision. Every write advances it by one. The embedded backends start at 0, so their
/// first write is 1; etcd's revisions are its own (a fresh etcd is at 1). 0 means "none".
pub type Revision = i64;

/// How many live events a backend buffers per watcher by default. A watcher that falls further
/// behind than this gets [`StoreError::WatcherLagged`] and must resume from its last revision,
/// which replays from history instead of holding memory for it.
pub const DEFAULT_WATCH_BUFFER: usize = 4096;

/// One key and its current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created this key (since it was last absent).
    pub create_revision: Revision,
    /// Revision of the write that produced this value.
    pub mod_revision: Revision,
}

/// Options for [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// At most this many items; 0 means no limit.
    pub limit: usize,
    /// Start at this key (inclusive) instead of at the prefix; used to continue a paged list.
    pub start_key: Option<String>,
    /// Read the state as of this revision instead of the latest (`None` or `Some(0)`, as in etcd).
    /// Fails with `Compacted` if older than the compacted revision and `FutureRevision` if newer
    /// than the current one.
    pub revision: Option<Revision>,
}

/// The answer to [`Store::list`].
#[derive(Debug, Clone)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    /// The revision the list was read at.
    pub revision: Revision,
    /// Whether keys beyond the last returned one remain under the prefix.
    pub more: bool,
    /// How many keys remain after the returned ones (0 when `more` is false).
    pub remaining: usize,
}

/// What a write did to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or its value replaced.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change, as a watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For `Put`, the new value; for `Delete`, the key with its last value and `mod_revision`
    /// set to the deleting write's revision.
    pub kv: KeyValue,
    /// The value before this change, if the key existed.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the write this event reports.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A stream of changes in revision order. It ends with an error item if the watcher fell too
/// far behind to be served (the caller should resume from its last revision).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// What a watch with progress reports yields: the changes, and now and then word that nothing
/// more is due up to a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    Event(WatchEvent),
    /// Every change under the watched prefix up to and including this revision has been
    /// reported. An idle watch learns from it that it is current, which is what an API watch's
    /// bookmarks tell clients: an informer that resumes from a bookmark of an idle resource
    /// then resumes from a recent revision instead of one compaction has long passed.
    Progress(Revision),
}

/// A [`WatchStream`] with progress reports; it ends as a `WatchStream` does.
pub type ProgressWatchStream = Pin<Box<dyn Stream<Item = Result<WatchItem, StoreError>> + Send>>;

/// The revisioned key-value store.
///
/// Every mutating call returns only once the write is durable for that backend, and each call is
/// atomic. Writes to different keys are serialised into one revision order, which watches report.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys under `prefix` (a plain string prefix), in key order.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError>;

    /// How many keys exist under `prefix` now.
    async fn count(&self, prefix: &str) -> Result<usize, StoreError>;

    /// Creates `key` with `value`; fails with `AlreadyExists` if present. Returns the new revision.
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, StoreError>;

    /// Replaces the value of `key` if its `mod_revision` equals `expected` (compare-and-swap);
    /// fails with `NotFound` if absent and `Conflict` (carrying the current value) otherwise.
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<Revision, StoreError>;

    /// Deletes `key`, guarded by its `mod_revision` when `expected` is given. Returns the deleted
    /// value with `mod_revision` set to the deleting revision.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError>;

    /// Changes to keys under `prefix` with a revision greater than `after`, then live ones.
    /// `after == 0` means "from now on". Fails with `Compacted` when `after` is older than the
    /// compacted revision, because some changes after it are no longer known.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let items = self.watch_with_progress(prefix, after, None).await?;
        Ok(Box::pin(items.filter_map(|item| {
            future::ready(match item {
                Ok(WatchItem::Event(event)) => Some(Ok(event)),
                Ok(WatchItem::Progress(_)) => None,
                Err(error) => Some(Err(error)),
            })
        })))
    }

    /// Whether [`watch_with_progress`](Store::watch_with_progress) reports progress at all.
    fn reports_watch_progress(&self) -> bool {
        true
    }

    /// [`watch`](Store::watch), with a [`WatchItem::Progress`] about every `progress_every`
    /// once the replay of history is done, when the store's revision has moved past the last
    /// item reported (by changes under other prefixes). `None`: no progress reports.
    async fn watch_with_progress(
        &self,
        prefix: &str,
        after: Revision,
        progress_every: Option<Duration>,
    ) -> Result<ProgressWatchStream, StoreError>;

    /// Forgets history before `revision`: reads at it or later keep working, reads and watches
    /// from before it fail with `Compacted` afterwards. Compacting at the already compacted
    /// revision does nothing; an older one fails with `Compacted`, a newer than current one with
    /// `FutureRevision`.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The revision of the latest write (0 for a new embedded store).
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// The oldest revision still readable (everything before it was compacted).
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;
}
