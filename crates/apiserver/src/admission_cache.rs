//! What admission reads for every new object, kept decoded in memory: the namespaces'
//! ResourceQuotas, LimitRanges and ServiceAccounts, and the PriorityClasses. Upstream's
//! admission plugins read informer caches the same way; reading the store instead cost a
//! read transaction and a JSON decode per object and kind on every create.
//!
//! Each [`ObjectCache`] follows a watch of its prefix in the store. So that a client that
//! writes a LimitRange and then creates a pod finds the range applied (as a store read would),
//! every write this server makes goes through [`TrackingStore`], which notes the revision of
//! writes under a cached prefix; a read then waits until its cache has applied that revision.
//! Writes by other servers sharing the store arrive with the watch, as they do for upstream's
//! informers. A cache that is not following its watch (at start, or re-listing after the
//! watch broke) answers nothing, and the caller reads the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Notify;
use tug_api::Registry;
use tug_store::{EventKind, KeyValue, ListOptions, ListResult, ProgressWatchStream, Revision, Store, StoreError};

use crate::codec;

/// How long a read waits for its cache to apply this server's latest write before it reads
/// the store instead.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// One cached object: as stored (with its revisions) and decoded.
pub(crate) struct Cached {
    pub kv: KeyValue,
    pub value: Value,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<Cached>>,
    /// The store revision the cache reflects.
    applied: Revision,
    /// Whether the cache follows the store (listed, and its watch unbroken since).
    synced: bool,
}

/// The objects under one store prefix.
pub(crate) struct ObjectCache {
    prefix: String,
    state: RwLock<State>,
    /// The newest revision this server wrote under the prefix.
    written: AtomicI64,
    advanced: Notify,
}

impl ObjectCache {
    fn new(prefix: String) -> Self {
        ObjectCache { prefix, state: RwLock::default(), written: AtomicI64::new(0), advanced: Notify::new() }
    }

    /// The objects whose keys start with `prefix` (which lies within the cache's own), or
    /// `None` when the cache cannot answer and the store must be read.
    pub(crate) async fn list(&self, prefix: &str) -> Option<Vec<Arc<Cached>>> {
        debug_assert!(prefix.starts_with(&self.prefix));
        if !self.caught_up().await {
            return None;
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let found = state.objects.range(prefix.to_owned()..).take_while(|(key, _)| key.starts_with(prefix));
        Some(found.map(|(_, cached)| cached.clone()).collect())
    }

    /// The object at `key`: `Some(None)` when there is none, `None` when the cache cannot say.
    pub(crate) async fn get(&self, key: &str) -> Option<Option<Arc<Cached>>> {
        if !self.caught_up().await {
            return None;
        }
        Some(self.state.read().unwrap_or_else(|e| e.into_inner()).objects.get(key).cloned())
    }

    /// Waits until the cache holds every write this server has made under its prefix; false if
    /// it is not following the store or does not catch up in time.
    async fn caught_up(&self) -> bool {
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            // Registered before the check, so that an advance in between is not missed.
            advanced.as_mut().enable();
            {
                let state = self.state.read().unwrap_or_else(|e| e.into_inner());
                if !state.synced {
                    return false;
                }
                if state.applied >= self.written.load(Ordering::Acquire) {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return false;
            }
        }
    }

    fn wrote(&self, key: &str, revision: Revision) {
        if key.starts_with(&self.prefix) {
            self.written.fetch_max(revision, Ordering::AcqRel);
        }
    }

    fn replace(&self, list: ListResult) {
        let objects = list.items.into_iter().filter_map(|kv| Some((kv.key.clone(), decode(kv)?))).collect();
        *self.state.write().unwrap_or_else(|e| e.into_inner()) =
            State { objects, applied: list.revision, synced: true };
        self.advanced.notify_waiters();
    }

    fn apply(&self, kind: EventKind, kv: KeyValue) {
        let revision = kv.mod_revision;
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            match kind {
                EventKind::Delete => {
                    state.objects.remove(&kv.key);
                }
                EventKind::Put => match decode(kv.clone()) {
                    Some(cached) => {
                        state.objects.insert(kv.key, cached);
                    }
                    None => {
                        state.objects.remove(&kv.key);
                    }
                },
            }
            state.applied = state.applied.max(revision);
        }
        self.advanced.notify_waiters();
    }

    fn lost(&self) {
        self.state.write().unwrap_or_else(|e| e.into_inner()).synced = false;
        self.advanced.notify_waiters();
    }

    /// Follows the store until it closes: list, then watch; list again when the watch breaks.
    async fn follow(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            let list = match store.list(&self.prefix, ListOptions::default()).await {
                Ok(list) => list,
                Err(StoreError::Closed) => return,
                Err(error) => {
                    tracing::warn!(prefix = %self.prefix, %error, "admission cache: listing failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let revision = list.revision;
            self.replace(list);
            let mut events = match store.watch(&self.prefix, revision).await {
                Ok(events) => events,
                Err(StoreError::Closed) => return,
                Err(error) => {
                    tracing::debug!(prefix = %self.prefix, %error, "admission cache: watch failed; listing again");
                    self.lost();
                    continue;
                }
            };
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => self.apply(event.kind, event.kv),
                    Err(error) => {
                        tracing::debug!(prefix = %self.prefix, %error, "admission cache: watch ended; listing again");
                        break;
                    }
                }
            }
            self.lost();
        }
    }
}

/// A stored object decoded; one that is not JSON is left out (reads of it fail elsewhere).
fn decode(kv: KeyValue) -> Option<Arc<Cached>> {
    let value = codec::decode_stored(&kv).ok()?;
    Some(Arc::new(Cached { kv, value }))
}

/// The caches admission reads.
pub(crate) struct AdmissionCaches {
    pub resource_quotas: Arc<ObjectCache>,
    pub limit_ranges: Arc<ObjectCache>,
    pub service_accounts: Arc<ObjectCache>,
    pub priority_classes: Arc<ObjectCache>,
}

impl AdmissionCaches {
    pub(crate) fn new(registry: &Registry) -> Self {
        let cache = |group: &str, plural: &str| {
            let rt = registry.lookup(group, "v1", plural).expect("a built-in resource");
            Arc::new(ObjectCache::new(rt.prefix(None)))
        };
        AdmissionCaches {
            resource_quotas: cache("", "resourcequotas"),
            limit_ranges: cache("", "limitranges"),
            service_accounts: cache("", "serviceaccounts"),
            priority_classes: cache("scheduling.k8s.io", "priorityclasses"),
        }
    }

    fn all(&self) -> [&Arc<ObjectCache>; 4] {
        [&self.resource_quotas, &self.limit_ranges, &self.service_accounts, &self.priority_classes]
    }

    fn wrote(&self, key: &str, revision: Revision) {
        for cache in self.all() {
            cache.wrote(key, revision);
        }
    }

    /// Starts following the store (`store` is the inner one: the caches' own reads need no
    /// tracking).
    pub(crate) fn start(&self, store: &Arc<dyn Store>) {
        for cache in self.all() {
            tokio::spawn(cache.clone().follow(store.clone()));
        }
    }
}

/// The store as the API server uses it: every call goes to `inner`; successful writes under a
/// cached prefix are noted, so that the caches' readers wait for them.
pub(crate) struct TrackingStore {
    pub inner: Arc<dyn Store>,
    pub caches: Arc<AdmissionCaches>,
}

#[async_trait]
impl Store for TrackingStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult, StoreError> {
        self.inner.list(prefix, opts).await
    }

    async fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        self.inner.count(prefix).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, StoreError> {
        let revision = self.inner.create(key, value).await?;
        self.caches.wrote(key, revision);
        Ok(revision)
    }

    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<Revision, StoreError> {
        let revision = self.inner.update(key, value, expected).await?;
        self.caches.wrote(key, revision);
        Ok(revision)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        let deleted = self.inner.delete(key, expected).await?;
        self.caches.wrote(key, deleted.mod_revision);
        Ok(deleted)
    }

    fn reports_watch_progress(&self) -> bool {
        self.inner.reports_watch_progress()
    }

    async fn watch_with_progress(
        &self,
        prefix: &str,
        after: Revision,
        progress_every: Option<Duration>,
    ) -> Result<ProgressWatchStream, StoreError> {
        self.inner.watch_with_progress(prefix, after, progress_every).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tug_store::memory::MemoryStore;

    fn caches() -> (Arc<dyn Store>, Arc<AdmissionCaches>) {
        let registry = Registry::builtin();
        let caches = Arc::new(AdmissionCaches::new(&registry));
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        caches.start(&inner);
        let store: Arc<dyn Store> = Arc::new(TrackingStore { inner, caches: caches.clone() });
        (store, caches)
    }

    fn object(name: &str) -> Bytes {
        Bytes::from(format!(r#"{{"kind":"LimitRange","metadata":{{"name":"{name}"}}}}"#))
    }

    /// Waits until `cache` has listed the store and answers.
    async fn following(cache: &ObjectCache) {
        for _ in 0..200 {
            if cache.list(&cache.prefix).await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the cache of {} never followed the store", cache.prefix);
    }

    #[tokio::test]
    async fn a_write_is_seen_by_the_next_read_and_other_prefixes_are_not_cached() {
        let (store, caches) = caches();
        let ranges = &caches.limit_ranges;
        following(ranges).await;
        let rev = store.create("/registry/limitranges/a/one", object("one")).await.unwrap();
        let listed = ranges.list("/registry/limitranges/a/").await.expect("the cache answers");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].kv.mod_revision, rev);
        assert_eq!(listed[0].value["metadata"]["resourceVersion"], rev.to_string());
        // Another namespace, and a key that only shares the namespace's first letters.
        let two_rev = store.create("/registry/limitranges/ab/two", object("two")).await.unwrap();
        assert_eq!(ranges.list("/registry/limitranges/a/").await.unwrap().len(), 1);
        assert_eq!(ranges.list("/registry/limitranges/").await.unwrap().len(), 2);
        store.create("/registry/configmaps/a/x", object("x")).await.unwrap();
        assert_eq!(ranges.list("/registry/limitranges/").await.unwrap().len(), 2);

        store.delete("/registry/limitranges/a/one", None).await.unwrap();
        assert!(ranges.get("/registry/limitranges/a/one").await.expect("the cache answers").is_none());
        let rev = store.update("/registry/limitranges/ab/two", object("two-b"), two_rev).await.unwrap();
        let two = ranges.get("/registry/limitranges/ab/two").await.unwrap().expect("cached");
        assert_eq!((two.kv.mod_revision, two.value["metadata"]["name"].as_str()), (rev, Some("two-b")));
    }

    #[tokio::test]
    async fn a_cache_that_is_not_following_the_store_does_not_answer() {
        let registry = Registry::builtin();
        let caches = AdmissionCaches::new(&registry);
        // Never started: it has not listed, so the caller must read the store.
        assert!(caches.priority_classes.list("/registry/priorityclasses/").await.is_none());
        assert!(caches.service_accounts.get("/registry/serviceaccounts/a/default").await.is_none());
    }
}
