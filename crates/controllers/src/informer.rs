//! Informers over kube-runtime's watcher and reflector store: each keeps a cache and calls
//! handlers with what changed, old object included, as client-go's informers call their
//! add/update/delete handlers. The cache is updated before the handlers run, so work a
//! handler enqueues always finds the new state.
//!
//! [`Informers`] is upstream's SharedInformerFactory: one watch and one cache per resource
//! type for the whole controller manager, however many controllers look at it. Twenty
//! controllers each keeping their own copy of every pod cost memory and a JSON decode per copy
//! per event; shared, a pod is decoded and kept once.
//!
//! A relist (the watch restarting) is compared with the cache: objects seen again are updates,
//! new ones adds, and those missing deletes.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// What an informer's resource type must be: a built-in, cluster-wide listable type.
pub trait Watched: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static {}
impl<K> Watched for K where K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static {}

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

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Add(o) => Change::Add(o.clone()),
            Change::Update(old, new) => Change::Update(old.clone(), new.clone()),
            Change::Delete(o) => Change::Delete(o.clone()),
        }
    }
}

/// Watches `api` into `writer`'s store, calling `handler` for each change, until `shutdown`.
/// For a cache of its own; controllers share theirs through [`Informers`].
pub async fn run<K, H>(api: Api<K>, mut writer: Writer<K>, shutdown: CancellationToken, handler: H)
where
    K: Watched,
    H: Fn(Change<K>),
{
    let mut relist = Relist::default();
    follow(api, shutdown, |event| relist.apply(&mut writer, event, &handler)).await;
}

/// Feeds every event of a watch of `api` (relisting as kube's watcher does) to `on_event`
/// until `shutdown`; failures are logged and the watch retried with backoff.
async fn follow<K: Watched>(api: Api<K>, shutdown: CancellationToken, mut on_event: impl FnMut(Event<K>)) {
    let mut events = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = events.next() => next,
        };
        match next {
            None => return,
            Some(Ok(event)) => on_event(event),
            Some(Err(e)) => warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
        }
    }
}

/// The objects of the list in progress, to tell at its end what is new and what is gone.
struct Relist<K: Watched> {
    seen: Vec<ObjectRef<K>>,
}

impl<K: Watched> Default for Relist<K> {
    fn default() -> Self {
        Relist { seen: Vec::new() }
    }
}

impl<K: Watched> Relist<K> {
    /// Applies one watch event to the cache, then tells `handler` what changed.
    fn apply(&mut self, writer: &mut Writer<K>, event: Event<K>, handler: &dyn Fn(Change<K>)) {
        let reader = writer.as_reader();
        match &event {
            Event::Init => {
                self.seen.clear();
                writer.apply_watcher_event(&event);
            }
            Event::InitApply(obj) => {
                self.seen.push(ObjectRef::from_obj(obj));
                writer.apply_watcher_event(&event);
            }
            Event::InitDone => {
                let before: HashMap<ObjectRef<K>, Arc<K>> =
                    reader.state().into_iter().map(|o| (ObjectRef::from_obj(&*o), o)).collect();
                writer.apply_watcher_event(&event);
                let mut seen = HashSet::new();
                for r in self.seen.drain(..) {
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

/// The shared informers of one controller manager: one watch and cache per resource type,
/// started the first time a controller asks for it and stopped at the factory's shutdown.
#[derive(Clone)]
pub struct Informers {
    client: Client,
    shutdown: CancellationToken,
    by_type: Arc<Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>,
}

impl Informers {
    pub fn new(client: Client, shutdown: CancellationToken) -> Self {
        Informers { client, shutdown, by_type: Arc::default() }
    }

    /// The client the informers watch with, for the controllers' own requests.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The shared cache of every `K` in the cluster, once it holds the first list, and the
    /// handle that subscribes a handler to its changes (the pair `reflector::store` gives for
    /// a cache of one's own). Waiting here rather than in `Store::wait_until_ready` matters:
    /// kube's readiness signal wakes only the last of several tasks waiting on clones of one
    /// store, so a shared store is handed out only when it is ready.
    pub async fn store<K: Watched>(&self) -> (Store<K>, Subscription<K>) {
        let shared = self.shared::<K>();
        let mut synced = shared.synced.subscribe();
        tokio::select! {
            _ = synced.wait_for(|synced| *synced) => {}
            _ = self.shutdown.cancelled() => {}
        }
        (shared.reader.clone(), Subscription { shared })
    }

    fn shared<K: Watched>(&self) -> Arc<Shared<K>> {
        let mut by_type = lock(&self.by_type);
        if let Some(existing) = by_type.get(&TypeId::of::<K>()) {
            return existing.clone().downcast::<Shared<K>>().expect("informers are keyed by their type");
        }
        let (reader, writer) = reflector::store::<K>();
        let shared = Arc::new(Shared {
            reader,
            state: Mutex::new(State { writer, handlers: Vec::new(), next_id: 0 }),
            synced: tokio::sync::watch::Sender::new(false),
        });
        by_type.insert(TypeId::of::<K>(), shared.clone());
        tokio::spawn(shared.clone().watch(Api::all(self.client.clone()), self.shutdown.clone()));
        shared
    }
}

/// A handler's place on a shared informer.
pub struct Subscription<K: Watched> {
    shared: Arc<Shared<K>>,
}

impl<K: Watched> Subscription<K> {
    /// Calls `handler` with every change of the shared cache until `shutdown`. A handler that
    /// joins after the first list has been delivered is first told of every cached object as
    /// an add, as client-go does for a late event handler.
    pub async fn run<H>(self, shutdown: CancellationToken, handler: H)
    where
        H: Fn(Change<K>) + Send + 'static,
    {
        let id = {
            let mut state = lock(&self.shared.state);
            if *self.shared.synced.borrow() {
                for obj in self.shared.reader.state() {
                    handler(Change::Add(obj));
                }
            }
            state.next_id += 1;
            let id = state.next_id;
            state.handlers.push((id, Box::new(handler)));
            id
        };
        shutdown.cancelled().await;
        lock(&self.shared.state).handlers.retain(|(h, _)| *h != id);
    }
}

type Handler<K> = Box<dyn Fn(Change<K>) + Send>;

struct Shared<K: Watched> {
    reader: Store<K>,
    /// The cache's writer and the handlers, under one lock: a change is applied and delivered
    /// to every handler before the next, and a joining handler sees either all of a change or
    /// none of it.
    state: Mutex<State<K>>,
    /// The first list has been delivered.
    synced: tokio::sync::watch::Sender<bool>,
}

struct State<K: Watched> {
    writer: Writer<K>,
    handlers: Vec<(u64, Handler<K>)>,
    next_id: u64,
}

impl<K: Watched> Shared<K> {
    async fn watch(self: Arc<Self>, api: Api<K>, shutdown: CancellationToken) {
        let mut relist = Relist::default();
        follow(api, shutdown, |event| {
            let listed = matches!(event, Event::InitDone);
            let mut state = lock(&self.state);
            let State { writer, handlers, .. } = &mut *state;
            relist.apply(writer, event, &|change| {
                for (_, handler) in handlers.iter() {
                    handler(change.clone());
                }
            });
            if listed {
                // Still under the lock: a handler joining now is told of the cache, one that
                // joined before has just heard of it.
                self.synced.send_replace(true);
            }
        })
        .await;
    }
}

/// Locks `m`; a handler that panicked while it was held left nothing half-written that the
/// next change does not overwrite.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    use hyper::{Request, Response};
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    fn config_map(name: &str, rv: u32) -> String {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"default","resourceVersion":"{rv}"}}}}"#
        )
    }

    /// An API server with two ConfigMaps that, on a watch, adds a third and then stays quiet;
    /// it counts the lists it serves.
    async fn api_server(lists: Arc<AtomicUsize>) -> Client {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let lists = lists.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let watch = req.uri().query().unwrap_or("").contains("watch=true");
                        if !watch {
                            lists.fetch_add(1, Ordering::SeqCst);
                        }
                        let body = if watch {
                            let added = format!(r#"{{"type":"ADDED","object":{}}}"#, config_map("c", 6)) + "\n";
                            let first = futures::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from(added)))]);
                            BodyExt::boxed(StreamBody::new(first.chain(futures::stream::pending())))
                        } else {
                            let list = format!(
                                r#"{{"apiVersion":"v1","kind":"ConfigMapList","metadata":{{"resourceVersion":"5"}},"items":[{},{}]}}"#,
                                config_map("a", 3),
                                config_map("b", 4)
                            );
                            BodyExt::boxed(Full::new(Bytes::from(list)))
                        };
                        let resp = Response::builder().header("content-type", "application/json").body(body);
                        async move { Ok::<_, Infallible>(resp.unwrap()) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap())).unwrap()
    }

    /// Subscribes a handler that sends the names of the objects it is told about.
    async fn subscribe(
        informers: &Informers,
        shutdown: &CancellationToken,
    ) -> (Store<ConfigMap>, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (store, subscription) = informers.store::<ConfigMap>().await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(subscription.run(shutdown.clone(), move |change| {
            if let Change::Add(o) = change {
                let _ = tx.send(o.metadata.name.clone().unwrap());
            }
        }));
        (store, rx)
    }

    async fn names(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, n: usize) -> Vec<String> {
        let mut names = Vec::new();
        while names.len() < n {
            let name = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("an add").unwrap();
            names.push(name);
        }
        names.sort();
        names
    }

    #[tokio::test]
    async fn controllers_share_one_watch_and_one_copy_and_a_late_handler_hears_of_everything() {
        let lists = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let informers = Informers::new(api_server(lists.clone()).await, shutdown.clone());

        let (early_store, mut early) = subscribe(&informers, &shutdown).await;
        assert_eq!(names(&mut early, 3).await, ["a", "b", "c"], "the list, then the watch");

        // A controller that starts later is told of the cached objects as adds.
        let (late_store, mut late) = subscribe(&informers, &shutdown).await;
        assert_eq!(names(&mut late, 3).await, ["a", "b", "c"]);
        assert_eq!(lists.load(Ordering::SeqCst), 1, "one list for both");
        let a = ObjectRef::new("a").within("default");
        assert!(Arc::ptr_eq(&early_store.get(&a).unwrap(), &late_store.get(&a).unwrap()), "one copy");
        shutdown.cancel();
    }
}
