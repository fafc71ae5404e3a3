//! A small informer over kube-runtime's watcher and reflector store: it keeps the cache and
//! calls a handler with what changed, old object included, as client-go's informers call
//! their add/update/delete handlers. The cache is updated before the handler runs, so work a
//! handler enqueues always finds the new state.
//!
//! A relist (the watch restarting) is compared with the cache: objects seen again are updates,
//! new ones adds, and those missing deletes.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::warn;

impl<K> Change<K> {
    /// The objects a change is about: both states of an update, so that work keyed by the old
    /// state (e.g. a former owner) is found too.
    pub fn objects(&self) -> Vec<&Arc<K>> {
        match self {
            Change::Add(o) | Change::Delete(o) => vec![o],
            Change::Update(old, new) => vec![old, new],
        }
    }
}

/// One change seen by an informer.
pub enum Change<K> {
    Add(Arc<K>),
    Update(Arc<K>, Arc<K>),
    Delete(Arc<K>),
}

/// Watches `api` into `writer`'s store, calling `handler` for each change, until `shutdown`.
pub async fn run<K, H>(api: Api<K>, mut writer: Writer<K>, shutdown: CancellationToken, handler: H)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    H: Fn(Change<K>),
{
    let reader = writer.as_reader();
    let mut events = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut relisted: Vec<ObjectRef<K>> = Vec::new();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = events.next() => next,
        };
        let event = match next {
            None => return,
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                continue;
            }
        };
        match &event {
            Event::Init => {
                relisted.clear();
                writer.apply_watcher_event(&event);
            }
            Event::InitApply(obj) => {
                relisted.push(ObjectRef::from_obj(obj));
                writer.apply_watcher_event(&event);
            }
            Event::InitDone => {
                let before: HashMap<ObjectRef<K>, Arc<K>> =
                    reader.state().into_iter().map(|o| (ObjectRef::from_obj(&*o), o)).collect();
                writer.apply_watcher_event(&event);
                let mut seen = HashSet::new();
                for r in relisted.drain(..) {
                    let Some(cur) = reader.get(&r) else { continue };
                    match before.get(&r) {
                        Some(old) => handler(Change::Update(old.clone(), cur)),
                        None => handler(Change::Add(cur)),
                    }
                    seen.insert(r);
                }
                for (r, old) in before {
                    if !seen.contains(&r) {
                        handler(Change::Delete(old));
                    }
                }
            }
            Event::Apply(obj) => {
                let r = ObjectRef::from_obj(obj);
                let old = reader.get(&r);
                writer.apply_watcher_event(&event);
                let cur = reader.get(&r).unwrap_or_else(|| Arc::new(obj.clone()));
                match old {
                    Some(old) => handler(Change::Update(old, cur)),
                    None => handler(Change::Add(cur)),
                }
            }
            Event::Delete(obj) => {
                writer.apply_watcher_event(&event);
                handler(Change::Delete(Arc::new(obj.clone())));
            }
        }
    }
}
