//! The garbage collector (upstream's `pkg/controller/garbagecollector`): deletes objects whose
//! owners are gone, and carries out the `orphan` and `foregroundDeletion` propagation policies.
//!
//! It keeps a graph of every object's owner references, fed by metadata-only watches of every
//! served resource (found through discovery, read again every 30 seconds, when a
//! CustomResourceDefinition changes and when an owner reference names an unknown kind, so that
//! custom resources are watched once served and no longer once gone), and works through a
//! queue of two kinds of items, as upstream does:
//! - attempt to delete a dependent: its owners are verified with live reads (the graph may lag);
//!   if none is left it is deleted (in the foreground if an owner is being deleted so), if some
//!   are gone their references are removed;
//! - process a deleting owner: with `orphan`, its dependents lose their reference to it and the
//!   finalizer is removed; with `foregroundDeletion`, its dependents are deleted and the
//!   finalizer is removed once none is left.

mod graph;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::discovery::{ApiResource, Discovery, Scope, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use graph::{Graph, Node};

use crate::deletions::{Deleted, DeletionFeed};

pub const ORPHAN: &str = "orphan";
pub const FOREGROUND: &str = "foregroundDeletion";

/// Work the collector does for one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    /// Check a dependent's owners and delete it if none is left.
    AttemptToDelete(String),
    /// Carry out an owner's `orphan` or `foregroundDeletion` finalizer.
    ProcessDeletingOwner(String),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("discovering the served resources")]
    Discovery(#[source] kube::Error),
    #[error("{action} {kind} {namespace}/{name}")]
    Api {
        action: &'static str,
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What a live read says of an owner.
enum OwnerState {
    /// It exists and is not waiting for its dependents.
    Solid,
    /// It is gone, or its name now belongs to another object.
    Dangling,
    /// It is being deleted in the foreground, waiting for its dependents.
    WaitingForDependents,
    /// Its kind is not served, so it cannot be checked.
    Unknown,
}

/// The resources the collector knows, by `apiVersion` and `kind`.
#[derive(Default)]
struct Kinds {
    by_gvk: HashMap<(String, String), (ApiResource, bool)>,
}

struct Collector {
    client: Client,
    graph: Mutex<Graph>,
    kinds: RwLock<Kinds>,
    /// The running watches, by `apiVersion` and plural, each stopped by its token.
    monitors: Mutex<HashMap<(String, String), CancellationToken>>,
    /// Asks for discovery to be read again: an owner reference named a kind not known yet
    /// (upstream resets its REST mapper on such a miss).
    rediscover: tokio::sync::Notify,
    /// The unknown kinds that already asked for a rediscovery since the last periodic one.
    unknown: Mutex<HashSet<(String, String)>>,
    queue: mpsc::UnboundedSender<Item>,
    pending: Mutex<HashSet<Item>>,
    /// Where the deletions the watches see are passed on (to the quota controller).
    deletions: DeletionFeed,
}

impl Collector {
    fn enqueue(&self, item: Item) {
        let mut pending = self.pending.lock().expect("pending set lock");
        if pending.insert(item.clone()) {
            let _ = self.queue.send(item);
        }
    }

    /// The resource serving `apiVersion` and `kind`, and whether it is namespaced.
    fn resolve(&self, api_version: &str, kind: &str) -> Option<(ApiResource, bool)> {
        let kinds = self.kinds.read().unwrap_or_else(|e| e.into_inner());
        kinds.by_gvk.get(&(api_version.to_string(), kind.to_string())).cloned()
    }

    fn api_for(&self, ar: &ApiResource, namespaced: bool, ns: &str) -> Api<DynamicObject> {
        if namespaced {
            Api::namespaced_with(self.client.clone(), ns, ar)
        } else {
            Api::all_with(self.client.clone(), ar)
        }
    }

    /// Reads an owner live, since the graph may lag behind.
    async fn owner_state(&self, owner: &OwnerReference, ns: &str) -> Result<OwnerState, Error> {
        let Some((ar, namespaced)) = self.resolve(&owner.api_version, &owner.kind) else {
            let key = (owner.api_version.clone(), owner.kind.clone());
            if self.unknown.lock().expect("unknown kinds lock").insert(key) {
                self.rediscover.notify_one();
            }
            return Ok(OwnerState::Unknown);
        };
        let api = self.api_for(&ar, namespaced, ns);
        match api.get_metadata_opt(&owner.name).await {
            Ok(Some(o)) if o.metadata.uid.as_deref() == Some(owner.uid.as_str()) => {
                let waiting = o.metadata.deletion_timestamp.is_some()
                    && o.metadata.finalizers.iter().flatten().any(|f| f == FOREGROUND);
                Ok(if waiting { OwnerState::WaitingForDependents } else { OwnerState::Solid })
            }
            // Gone, or replaced by a namesake with another uid.
            Ok(_) => Ok(OwnerState::Dangling),
            Err(source) => Err(Error::Api {
                action: "reading",
                kind: owner.kind.clone(),
                namespace: ns.into(),
                name: owner.name.clone(),
                source,
            }),
        }
    }

    /// Upstream's `attemptToDeleteItem`.
    async fn attempt_to_delete(&self, uid: &str) -> Result<(), Error> {
        let Some(node) = self.graph.lock().expect("graph lock").get(uid).cloned() else { return Ok(()) };
        if node.owners.is_empty() || node.deleting {
            return Ok(());
        }
        let Some((ar, namespaced)) = self.resolve(&node.api_version, &node.kind) else { return Ok(()) };
        let api = self.api_for(&ar, namespaced, &node.namespace);
        let err = |action, source| Error::Api {
            action,
            kind: node.kind.clone(),
            namespace: node.namespace.clone(),
            name: node.name.clone(),
            source,
        };
        // The graph may lag: an orphaning owner may already have been taken out of this
        // object's references (and then deleted), so the owners are those of a live read, and
        // the delete below is pinned to that read's resourceVersion, as a change since means
        // the decision may no longer hold (the watch brings the object back to the queue).
        let live = match api.get_metadata_opt(&node.name).await {
            Ok(Some(live)) if live.metadata.uid.as_deref() == Some(node.uid.as_str()) => live,
            Ok(_) => return Ok(()),
            Err(e) => return Err(err("reading", e)),
        };
        if live.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let owners = live.metadata.owner_references.clone().unwrap_or_default();
        if owners.is_empty() {
            return Ok(());
        }
        let (mut solid, mut dangling, mut waiting) = (0, Vec::new(), Vec::new());
        for owner in &owners {
            match self.owner_state(owner, &node.namespace).await? {
                // An owner of a kind nobody serves cannot be verified: count it as present.
                OwnerState::Solid | OwnerState::Unknown => solid += 1,
                OwnerState::Dangling => dangling.push(owner),
                OwnerState::WaitingForDependents => waiting.push(owner),
            }
        }
        if solid > 0 {
            // The object stays; references to owners that are gone or going are dropped.
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(());
            }
            let gone: Vec<&str> = dangling.iter().chain(&waiting).map(|o| o.uid.as_str()).collect();
            return match remove_owner_references(&api, &node.name, &node.uid, &gone).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                Err(e) => Err(err("removing owner references of", e)),
            };
        }
        let has_dependents = !self.graph.lock().expect("graph lock").dependents(&node.uid).is_empty();
        let policy = if !waiting.is_empty() && has_dependents {
            PropagationPolicy::Foreground
        } else if live.metadata.finalizers.iter().flatten().any(|f| f == ORPHAN) {
            PropagationPolicy::Orphan
        } else if live.metadata.finalizers.iter().flatten().any(|f| f == FOREGROUND) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(kube::api::Preconditions {
                uid: Some(node.uid.clone()),
                resource_version: live.metadata.resource_version.clone(),
            }),
            ..Default::default()
        };
        info!(kind = %node.kind, namespace = %node.namespace, name = %node.name, "deleting object whose owners are gone or going");
        match api.delete(&node.name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(err("deleting", e)),
        }
    }

    async fn process_deleting_owner(&self, uid: &str) -> Result<(), Error> {
        let (node, dependents) = {
            let g = self.graph.lock().expect("graph lock");
            let Some(node) = g.get(uid).cloned() else { return Ok(()) };
            let deps: Vec<Node> = g.dependents(uid).into_iter().cloned().collect();
            (node, deps)
        };
        if !node.deleting {
            return Ok(());
        }
        let Some((ar, namespaced)) = self.resolve(&node.api_version, &node.kind) else { return Ok(()) };
        let owner_api = self.api_for(&ar, namespaced, &node.namespace);
        if node.finalizers.iter().any(|f| f == ORPHAN) {
            for dep in &dependents {
                let Some((dar, dns)) = self.resolve(&dep.api_version, &dep.kind) else { continue };
                let api = self.api_for(&dar, dns, &dep.namespace);
                match remove_owner_references(&api, &dep.name, &dep.uid, &[node.uid.as_str()]).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(source) => {
                        return Err(Error::Api {
                            action: "orphaning",
                            kind: dep.kind.clone(),
                            namespace: dep.namespace.clone(),
                            name: dep.name.clone(),
                            source,
                        });
                    }
                }
            }
            return self.remove_finalizer(&owner_api, &node, ORPHAN).await;
        }
        if node.finalizers.iter().any(|f| f == FOREGROUND) {
            if dependents.is_empty() {
                return self.remove_finalizer(&owner_api, &node, FOREGROUND).await;
            }
            for dep in dependents {
                self.enqueue(Item::AttemptToDelete(dep.uid.clone()));
            }
        }
        Ok(())
    }

    async fn remove_finalizer(&self, api: &Api<DynamicObject>, node: &Node, finalizer: &str) -> Result<(), Error> {
        let remaining: Vec<&String> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
        let patch = json!([
            {"op": "test", "path": "/metadata/uid", "value": node.uid},
            {"op": "test", "path": "/metadata/finalizers", "value": node.finalizers},
            {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
        ]);
        debug!(kind = %node.kind, name = %node.name, finalizer, "removing finalizer");
        match api
            .patch(
                &node.name,
                &PatchParams::default(),
                &Patch::Json::<()>(serde_json::from_value(patch).expect("valid json patch")),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Changed meanwhile: the watch brings the new state and the item comes back.
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(()),
            Err(source) => Err(Error::Api {
                action: "removing finalizer of",
                kind: node.kind.clone(),
                namespace: node.namespace.clone(),
                name: node.name.clone(),
                source,
            }),
        }
    }
}

/// How often the collector re-reads discovery and re-examines its graph.
const RESYNC: Duration = Duration::from_secs(30);
/// How long after an unknown owner kind discovery is read again (and the graph re-examined).
const REDISCOVER_DELAY: Duration = Duration::from_secs(1);

/// Removes owner references (by uid) from an object: a strategic merge patch where the
/// resource supports one, else (custom resources answer 415) a JSON merge patch of the
/// remaining references, pinned to the resourceVersion it was computed from, as upstream does.
async fn remove_owner_references(
    api: &Api<DynamicObject>,
    name: &str,
    uid: &str,
    gone: &[&str],
) -> Result<(), kube::Error> {
    let removals: Vec<_> = gone.iter().map(|u| json!({"$patch": "delete", "uid": u})).collect();
    let patch = json!({"metadata": {"uid": uid, "ownerReferences": removals}});
    match api.patch(name, &PatchParams::default(), &Patch::Strategic(patch)).await {
        Err(kube::Error::Api(s)) if s.code == 415 => {}
        other => return other.map(|_| ()),
    }
    let live = api.get_metadata(name).await?;
    let remaining: Vec<&OwnerReference> =
        live.metadata.owner_references.iter().flatten().filter(|o| !gone.contains(&o.uid.as_str())).collect();
    let patch = json!({"metadata": {"uid": uid, "resourceVersion": live.metadata.resource_version, "ownerReferences": remaining}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ())
}

impl Collector {
    /// Reads discovery: learns the served kinds, starts watching resources that appeared and
    /// stops watching those that went away (custom resources come and go with their
    /// definitions).
    async fn sync_monitors(self: &Arc<Self>, shutdown: &CancellationToken) -> Result<(), Error> {
        let discovery = Discovery::new(self.client.clone()).run().await.map_err(Error::Discovery)?;
        let mut kinds = Kinds::default();
        let mut watched = Vec::new();
        for group in discovery.groups() {
            for version in group.versions() {
                for (ar, caps) in group.versioned_resources(version) {
                    let namespaced = caps.scope == Scope::Namespaced;
                    kinds.by_gvk.insert((ar.api_version.clone(), ar.kind.clone()), (ar.clone(), namespaced));
                }
            }
            for (ar, caps) in group.recommended_resources() {
                if caps.supports_operation(verbs::WATCH) && caps.supports_operation(verbs::DELETE) {
                    watched.push(ar);
                }
            }
        }
        *self.kinds.write().unwrap_or_else(|e| e.into_inner()) = kinds;
        let mut monitors = self.monitors.lock().expect("monitors lock");
        let keys: HashSet<(String, String)> =
            watched.iter().map(|ar| (ar.api_version.clone(), ar.plural.clone())).collect();
        monitors.retain(|key, stop| {
            let keep = keys.contains(key);
            if !keep {
                debug!(api_version = %key.0, resource = %key.1, "resource no longer served; stopping its watch");
                stop.cancel();
            }
            keep
        });
        for ar in watched {
            let key = (ar.api_version.clone(), ar.plural.clone());
            if monitors.contains_key(&key) {
                continue;
            }
            let stop = shutdown.child_token();
            monitors.insert(key, stop.clone());
            tokio::spawn(self.clone().monitor(ar, stop));
        }
        Ok(())
    }

    /// Asks for a rediscovery whenever a CustomResourceDefinition changes, so that the
    /// resources it defines are watched (or no longer) without waiting for the periodic one.
    async fn watch_definitions(self: Arc<Self>, stop: CancellationToken) {
        let ar = ApiResource::erase::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >(&());
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(self.client.clone(), &ar);
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                None => return,
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => self.rediscover.notify_one(),
                Some(_) => {}
            }
        }
    }

    /// Feeds the graph from a metadata-only watch of one resource until `stop`.
    async fn monitor(self: Arc<Self>, ar: ApiResource, stop: CancellationToken) {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(self.client.clone(), &ar);
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut listing: Option<HashSet<String>> = None;
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = stream.next() => ev,
            };
            let Some(ev) = ev else { return };
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    debug!(resource = %ar.plural, error = %e, "watch error");
                    continue;
                }
            };
            match ev {
                watcher::Event::Init => listing = Some(HashSet::new()),
                watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                    let node = Node::from_meta(&ar, &obj.metadata);
                    if let Some(seen) = listing.as_mut() {
                        seen.insert(node.uid.clone());
                    }
                    self.observe(node);
                }
                watcher::Event::InitDone => {
                    // Objects that vanished while the watch was down.
                    if let Some(seen) = listing.take() {
                        let gone =
                            self.graph.lock().expect("graph lock").missing_of_kind(&ar.api_version, &ar.kind, &seen);
                        for (uid, namespace) in gone {
                            self.forget(&uid);
                            self.publish_deletion(&ar, namespace);
                        }
                    }
                }
                watcher::Event::Delete(obj) => {
                    if let Some(uid) = obj.metadata.uid.as_deref() {
                        self.forget(uid);
                    }
                    self.publish_deletion(&ar, obj.metadata.namespace.unwrap_or_default());
                }
            }
        }
    }
}

/// Runs the garbage collector until `shutdown`, publishing the deletions it sees to `deletions`.
pub async fn run(client: Client, deletions: DeletionFeed, shutdown: CancellationToken) -> Result<(), Error> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let collector = Arc::new(Collector {
        client: client.clone(),
        graph: Mutex::new(Graph::default()),
        kinds: RwLock::new(Kinds::default()),
        monitors: Mutex::new(HashMap::new()),
        rediscover: tokio::sync::Notify::new(),
        unknown: Mutex::new(HashSet::new()),
        queue: tx,
        pending: Mutex::new(HashSet::new()),
        deletions,
    });
    collector.sync_monitors(&shutdown).await?;
    tokio::spawn(collector.clone().watch_definitions(shutdown.child_token()));
    // A periodic pass keeps the collector level-triggered even if an event was missed.
    let resync = {
        let c = collector.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RESYNC);
            tick.reset();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => c.unknown.lock().expect("unknown kinds lock").clear(),
                    _ = c.rediscover.notified() => {
                        // Misses come in bursts (every dependent of a new kind): one read covers them.
                        tokio::time::sleep(REDISCOVER_DELAY).await;
                    }
                }
                if let Err(e) = c.sync_monitors(&shutdown).await {
                    debug!(error = %e, "rediscovery failed; keeping the current watches");
                }
                let (owned, deleting) = c.graph.lock().expect("graph lock").resync_items();
                owned.into_iter().for_each(|u| c.enqueue(Item::AttemptToDelete(u)));
                deleting.into_iter().for_each(|u| c.enqueue(Item::ProcessDeletingOwner(u)));
            }
        })
    };
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            item = rx.recv() => match item { Some(i) => i, None => break },
        };
        collector.pending.lock().expect("pending set lock").remove(&item);
        let result = match &item {
            Item::AttemptToDelete(uid) => collector.attempt_to_delete(uid).await,
            Item::ProcessDeletingOwner(uid) => collector.process_deleting_owner(uid).await,
        };
        if let Err(e) = result {
            warn!(error = %e, "garbage collection step failed; retrying");
            let c = collector.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                c.enqueue(item);
            });
        }
    }
    resync.abort();
    Ok(())
}

impl Collector {
    /// Records an object's current state and queues what it calls for.
    fn observe(&self, node: Node) {
        let uid = node.uid.clone();
        let (has_owners, deleting) = (!node.owners.is_empty(), node.deleting && node.has_propagation_finalizer());
        let released = self.graph.lock().expect("graph lock").upsert(node);
        if has_owners {
            self.enqueue(Item::AttemptToDelete(uid.clone()));
        }
        if deleting {
            self.enqueue(Item::ProcessDeletingOwner(uid.clone()));
            for dep in self.graph.lock().expect("graph lock").dependents(&uid) {
                self.enqueue(Item::AttemptToDelete(dep.uid.clone()));
            }
        }
        for owner in released {
            self.enqueue(Item::ProcessDeletingOwner(owner));
        }
    }

    /// Tells the subscribers of the deletion feed that an object of `ar` was deleted.
    fn publish_deletion(&self, ar: &ApiResource, namespace: String) {
        self.deletions.publish(Deleted { group: ar.group.clone(), resource: ar.plural.clone(), namespace });
    }

    /// Removes a deleted object and queues its dependents and deleting owners.
    fn forget(&self, uid: &str) {
        let (dependents, owners) = self.graph.lock().expect("graph lock").remove(uid);
        for d in dependents {
            self.enqueue(Item::AttemptToDelete(d));
        }
        for o in owners {
            self.enqueue(Item::ProcessDeletingOwner(o));
        }
    }
}
