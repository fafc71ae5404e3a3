//! An in-memory store with the same semantics as the durable backends, for tests.
//!
//! Each key keeps its versions in revision order (a deletion is a version without a value), so a
//! read at an old revision finds each key's newest version at or below it. A log of every change
//! since the compacted revision serves watch replays. One mutex guards all of it; a write
//! publishes its event while still holding the lock, so the live feed is in revision order and a
//! watcher that subscribes under the same lock sees exactly the changes after its snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::rules;
use crate::watch::{self, EventSender};
use crate::{
    DEFAULT_WATCH_BUFFER, EventKind, KeyValue, ListOptions, ListResult, ProgressWatchStream, Revision, Store,
    StoreError, WatchEvent,
};

/// The in-memory backend. Cheap to create; everything is lost when it is dropped.
pub struct MemoryStore {
    state: Mutex<State>,
    events: EventSender,
}

impl MemoryStore {
    /// An empty store buffering [`DEFAULT_WATCH_BUFFER`] live events per watcher.
    pub fn new() -> Self {
        Self::with_watch_buffer(DEFAULT_WATCH_BUFFER)
    }

    /// An empty store buffering `watch_buffer` live events per watcher before a slow watcher
    /// gets [`StoreError::WatcherLagged`].
    pub fn with_watch_buffer(watch_buffer: usize) -> Self {
        let events = watch::EventHub::new(watch_buffer);
        Self { state: Mutex::new(State::default()), events }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock happens before any mutation is half done (every write
        // checks first, then changes), so the state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `event` and publishes it; the caller holds the lock, which keeps the feed ordered.
    fn publish(&self, state: &mut State, event: WatchEvent) {
        let event = Arc::new(event);
        state.log.push_back(Arc::clone(&event));
        self.events.send(event);
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

/// One version of a key; `value` is `None` for the deletion that ended a key's life.
#[derive(Debug, Clone)]
struct Version {
    revision: Revision,
    create_revision: Revision,
    value: Option<Bytes>,
}

#[derive(Debug, Default)]
struct State {
    revision: Revision,
    compacted: Revision,
    /// Every key with history, its versions in revision order.
    keys: BTreeMap<String, Vec<Version>>,
    /// Every change after `compacted`, in revision order.
    log: VecDeque<Arc<WatchEvent>>,
}

impl State {
    fn current(&self, key: &str) -> Option<KeyValue> {
        let versions = self.keys.get(key)?;
        version_at(key, versions, self.revision)
    }

    fn push_version(&mut self, key: &str, version: Version) {
        self.revision = version.revision;
        self.keys.entry(key.to_owned()).or_default().push(version);
    }

    /// Drops every version no read at `revision` or later can see, and the log up to it.
    fn compact(&mut self, revision: Revision) {
        self.keys.retain(|_, versions| {
            let visible = versions.partition_point(|v| v.revision <= revision);
            // The newest version at or below `revision` is what a read there sees, unless it is a
            // deletion: then the key is simply absent and nothing of it needs keeping.
            let keep_from = match visible.checked_sub(1) {
                Some(newest) if versions[newest].value.is_some() => newest,
                _ => visible,
            };
            versions.drain(..keep_from);
            !versions.is_empty()
        });
        while self.log.front().is_some_and(|e| e.revision() <= revision) {
            self.log.pop_front();
        }
        self.compacted = revision;
    }
}

/// The value of `key` as of `revision`, given its versions.
fn version_at(key: &str, versions: &[Version], revision: Revision) -> Option<KeyValue> {
    let visible = versions.partition_point(|v| v.revision <= revision);
    let version = &versions[visible.checked_sub(1)?];
    Some(KeyValue {
        key: key.to_owned(),
        value: version.value.clone()?,
        create_revision: version.create_revision,
        mod_revision: version.revision,
    })
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.state().current(key))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        let state = self.state();
        let revision = rules::read_revision(opts.revision, state.revision, state.compacted)?;
        let start = match opts.start_key.as_deref() {
            Some(start) if start > prefix => start,
            _ => prefix,
        };
        let mut visible = state
            .keys
            .range::<str, _>((Bound::Included(start), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter_map(|(key, versions)| version_at(key, versions, revision));
        let limit = if opts.limit == 0 { usize::MAX } else { opts.limit };
        let items: Vec<KeyValue> = visible.by_ref().take(limit).collect();
        let remaining = visible.count();
        Ok(ListResult { items, revision, more: remaining > 0, remaining })
    }

    async fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        let state = self.state();
        let count = state
            .keys
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(_, versions)| versions.last().is_some_and(|v| v.value.is_some()))
            .count();
        Ok(count)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, StoreError> {
        let mut state = self.state();
        if state.current(key).is_some() {
            return Err(StoreError::AlreadyExists { key: key.to_owned() });
        }
        let revision = state.revision + 1;
        state.push_version(key, Version { revision, create_revision: revision, value: Some(value.clone()) });
        let kv = KeyValue { key: key.to_owned(), value, create_revision: revision, mod_revision: revision };
        self.publish(&mut state, WatchEvent { kind: EventKind::Put, kv, prev: None });
        Ok(revision)
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<Revision, StoreError> {
        let mut state = self.state();
        let current = state.current(key).ok_or_else(|| StoreError::NotFound { key: key.to_owned() })?;
        let current = rules::check_expected(current, Some(expected))?;
        let revision = state.revision + 1;
        let create_revision = current.create_revision;
        state.push_version(key, Version { revision, create_revision, value: Some(value.clone()) });
        let kv = KeyValue { key: key.to_owned(), value, create_revision, mod_revision: revision };
        self.publish(&mut state, WatchEvent { kind: EventKind::Put, kv, prev: Some(current) });
        Ok(revision)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        let mut state = self.state();
        let current = state.current(key).ok_or_else(|| StoreError::NotFound { key: key.to_owned() })?;
        let current = rules::check_expected(current, expected)?;
        let revision = state.revision + 1;
        let create_revision = current.create_revision;
        state.push_version(key, Version { revision, create_revision, value: None });
        let deleted = KeyValue { mod_revision: revision, ..current.clone() };
        let event = WatchEvent { kind: EventKind::Delete, kv: deleted.clone(), prev: Some(current) };
        self.publish(&mut state, event);
        Ok(deleted)
    }

    async fn watch_with_progress(
        &self,
        prefix: &str,
        after: Revision,
        progress_every: Option<Duration>,
    ) -> Result<ProgressWatchStream, StoreError> {
        let state = self.state();
        rules::watch_start(after, state.compacted)?;
        // Subscribing under the lock means the feed holds exactly the changes after `snapshot`.
        let live = self.events.subscribe(prefix);
        let snapshot = state.revision;
        let replay: Vec<Result<WatchEvent, StoreError>> = if after == 0 {
            Vec::new()
        } else {
            let first = state.log.partition_point(|e| e.revision() <= after);
            state
                .log
                .range(first..)
                .filter(|e| e.kv.key.starts_with(prefix))
                .map(|e| Ok(WatchEvent::clone(e)))
                .collect()
        };
        drop(state);
        let cutoff = after.max(snapshot);
        Ok(watch::follow(futures::stream::iter(replay), &self.events, live, prefix.to_owned(), cutoff, progress_every))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut state = self.state();
        if rules::compaction_needed(revision, state.revision, state.compacted)? {
            state.compact(revision);
        }
        Ok(())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.state().revision)
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.state().compacted)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::MemoryStore;
    use crate::Store;

    async fn fresh(watch_buffer: usize) -> (Arc<dyn Store>, ()) {
        (Arc::new(MemoryStore::with_watch_buffer(watch_buffer)), ())
    }

    crate::store_conformance_tests!(fresh);
}
