//! The DaemonSet controller (upstream's `pkg/controller/daemon`): runs one pod of each
//! DaemonSet on every node that fits it, and rolls template changes out node by node.
//!
//! The recipe is the ReplicaSet controller's. Informers on DaemonSets, pods, nodes and
//! ControllerRevisions only record expectations and enqueue DaemonSet keys; kube-runtime's
//! applier is the work queue. The sync ([`sync`]) reads the caches: it records the template as
//! a ControllerRevision, claims pods, creates a pod for each node that should run one and has
//! none and deletes pods where they do not belong ([`manage`], deciding by [`placement`]), then
//! replaces outdated pods within the update strategy's budgets ([`update`]), prunes old
//! revisions, and writes the status ([`status`]). Pods are pinned to their node by required
//! node affinity and bound by the scheduler, as upstream does.
//!
//! Pods left on a deleted node are the pod garbage collector's business. This module must not
//! touch objects other than DaemonSets' status and the pods and ControllerRevisions they own.

mod claim;
pub mod manage;
pub mod placement;
pub mod status;
mod sync;
pub mod update;
pub mod util;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::events::Recorder;
use crate::expectations::Expectations;
use crate::history::{History, HistoryError};
use crate::informer::{Change, Informers};
use crate::replicaset::pod_control::PodError;
use crate::replicaset::{backoff, controller_of, ranking};
use manage::FailedPodBackoff;

/// The most pods created or deleted in one sync (upstream's `BurstReplicas` for DaemonSets).
pub const BURST_REPLICAS: usize = 250;
/// DaemonSets synced at once (upstream's `--concurrent-daemonset-syncs` default).
const CONCURRENT_SYNCS: u16 = 2;
/// How often the failed-pod backoff forgets old entries (upstream's `BackoffGCInterval`).
const BACKOFF_GC_INTERVAL: Duration = Duration::from_secs(60);
const COMPONENT: &str = "daemonset-controller";

/// Why a sync failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} pod {pod} of {key}")]
    Pod {
        key: String,
        action: &'static str,
        pod: String,
        #[source]
        source: PodError,
    },
    #[error("creating a pod of {key} for node {node}")]
    Create {
        key: String,
        node: String,
        #[source]
        source: PodError,
    },
    #[error("reading {key} before adopting")]
    Recheck {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("{key} is gone or being deleted; not adopting")]
    CannotAdopt { key: String },
    #[error("writing the revisions of {key}")]
    History {
        key: String,
        #[source]
        source: HistoryError,
    },
    #[error("labelling controller revision {name} of {key}")]
    Revision {
        key: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status of {key}")]
    Status {
        key: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Whether a revision could not be written because its namespace is being deleted.
    fn is_namespace_terminating(&self) -> bool {
        match self {
            Error::History { source: HistoryError::Create { source: kube::Error::Api(s), .. }, .. } => {
                s.code == 403
                    && (s.message.contains("because it is being terminated")
                        || s.details
                            .as_ref()
                            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
            }
            _ => false,
        }
    }
}

/// `namespace/name`, the key of upstream's queue and expectations.
fn key_of<R: Resource>(obj: &R) -> String {
    format!("{}/{}", obj.meta().namespace.as_deref().unwrap_or(""), obj.meta().name.as_deref().unwrap_or(""))
}

/// The controller's caches, expectations and queue.
pub struct Manager {
    client: Client,
    daemon_sets: Store<DaemonSet>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    /// Creations and deletions are tracked apart because one sync may do both (a surging
    /// rolling update), and setting one kind of expectation replaces the other.
    creations: Expectations,
    deletions: Expectations,
    queue: mpsc::UnboundedSender<ObjectRef<DaemonSet>>,
    recorder: Recorder,
    history: History,
    failed_pods: FailedPodBackoff,
    /// Consecutive failed syncs per key, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the DaemonSet controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (daemon_sets, ds_writer) = informers.store::<DaemonSet>().await;
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (nodes, node_writer) = informers.store::<Node>().await;
    let (revisions, rev_writer) = informers.store::<ControllerRevision>().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let m = Arc::new(Manager {
        client: client.clone(),
        daemon_sets: daemon_sets.clone(),
        pods,
        nodes,
        revisions,
        creations: Expectations::new(),
        deletions: Expectations::new(),
        queue: tx,
        recorder: Recorder::new(client.clone(), COMPONENT),
        history: History::new(client.clone()),
        failed_pods: FailedPodBackoff::default(),
        failures: Mutex::new(HashMap::new()),
    });
    let ds_informer = {
        let m = m.clone();
        ds_writer.run(shutdown.clone(), move |c| m.daemon_set_changed(&c))
    };
    let pod_informer = {
        let m = m.clone();
        pod_writer.run(shutdown.clone(), move |c| m.pod_changed(&c))
    };
    let node_informer = {
        let m = m.clone();
        node_writer.run(shutdown.clone(), move |c| m.node_changed(&c))
    };
    let rev_informer = {
        let m = m.clone();
        rev_writer.run(shutdown.clone(), move |c| m.revision_changed(&c))
    };
    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.clone().cancelled_owned());
    let workers = applier(
        |ds, m| Box::pin(sync::sync(ds, m)),
        error_policy,
        m.clone(),
        daemon_sets,
        queue,
        Config::default().concurrency(CONCURRENT_SYNCS),
    )
    .for_each(|res| async move {
        match res {
            Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
            Err(e) => debug!(error = %e, "daemon set sync failed"),
        }
    });
    let backoff_gc = {
        let (m, shutdown) = (m.clone(), shutdown.clone());
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(BACKOFF_GC_INTERVAL) => m.failed_pods.gc(tokio::time::Instant::now()),
                }
            }
        }
    };
    info!("starting daemon set controller");
    tokio::join!(ds_informer, pod_informer, node_informer, rev_informer, workers, backoff_gc);
}

fn error_policy(ds: Arc<DaemonSet>, err: &Error, m: Arc<Manager>) -> Action {
    let key = key_of(&*ds);
    let failures = {
        let mut f = m.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    // The whole chain: the cause is often two levels down (an API status under a pod error).
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    warn!(%key, error = %err, causes = causes.join(": "), "daemon set sync failed; retrying");
    Action::requeue(backoff(failures))
}

impl Manager {
    fn enqueue(&self, ds: &DaemonSet) {
        let _ = self.queue.send(ObjectRef::from_obj(ds));
    }

    fn enqueue_after(&self, ds: &DaemonSet, delay: Duration) {
        let (queue, r) = (self.queue.clone(), ObjectRef::from_obj(ds));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = queue.send(r);
        });
    }

    fn satisfied(&self, key: &str) -> bool {
        self.creations.satisfied(key) && self.deletions.satisfied(key)
    }

    /// The DaemonSet a controller reference names, if it is in the cache with that uid.
    fn resolve(
        &self,
        namespace: &str,
        r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ) -> Option<Arc<DaemonSet>> {
        if r.kind != DaemonSet::kind(&()) {
            return None;
        }
        let ds = self.daemon_sets.get(&ObjectRef::new(&r.name).within(namespace))?;
        (ds.metadata.uid.as_deref() == Some(r.uid.as_str())).then_some(ds)
    }

    /// The DaemonSets whose selector matches an orphan's labels (an empty selector matches
    /// nothing here).
    fn matching(&self, ns: Option<String>, labels: &std::collections::BTreeMap<String, String>) -> Vec<Arc<DaemonSet>> {
        if labels.is_empty() {
            return Vec::new();
        }
        self.daemon_sets.state_filter(|d| {
            d.namespace() == ns
                && match d.spec.as_ref().map(|s| Selector::try_from(s.selector.clone())) {
                    Some(Ok(s)) => !s.selects_all() && s.matches(labels),
                    _ => false,
                }
        })
    }

    fn daemon_set_changed(&self, change: &Change<DaemonSet>) {
        match change {
            Change::Add(ds) => self.enqueue(ds),
            Change::Update(old, cur) => {
                if old.metadata.uid != cur.metadata.uid {
                    self.forget(&key_of(&**old));
                }
                self.enqueue(cur);
            }
            Change::Delete(ds) => self.forget(&key_of(&**ds)),
        }
    }

    fn forget(&self, key: &str) {
        self.creations.delete(key);
        self.deletions.delete(key);
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    fn pod_changed(&self, change: &Change<Pod>) {
        match change {
            Change::Add(p) if p.metadata.deletion_timestamp.is_some() => self.pod_deleted(p),
            Change::Add(p) => {
                let ns = p.namespace().unwrap_or_default();
                match controller_of(&p.metadata) {
                    Some(r) => {
                        if let Some(ds) = self.resolve(&ns, r) {
                            self.creations.creation_observed(&key_of(&*ds));
                            self.enqueue(&ds);
                        }
                    }
                    None => self.matching(p.namespace(), p.labels()).iter().for_each(|ds| self.enqueue(ds)),
                }
            }
            Change::Update(old, cur) => self.pod_updated(old, cur),
            Change::Delete(p) => self.pod_deleted(p),
        }
    }

    fn pod_updated(&self, old: &Pod, cur: &Pod) {
        if old.metadata.resource_version == cur.metadata.resource_version {
            return;
        }
        if cur.metadata.deletion_timestamp.is_some() {
            // Replace a pod as soon as it starts going, not once it is gone.
            return self.pod_deleted(cur);
        }
        let ns = cur.namespace().unwrap_or_default();
        let (old_ref, cur_ref) = (controller_of(&old.metadata), controller_of(&cur.metadata));
        if old_ref != cur_ref
            && let Some(ds) = old_ref.and_then(|r| self.resolve(&ns, r))
        {
            self.enqueue(&ds);
        }
        if let Some(r) = cur_ref {
            if let Some(ds) = self.resolve(&ns, r) {
                self.enqueue(&ds);
                let min_ready = ds.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
                if min_ready > 0 && !ranking::is_ready(old) && ranking::is_ready(cur) {
                    // Look again once the pod has been ready long enough to be available.
                    self.enqueue_after(&ds, Duration::from_secs(min_ready as u64 + 1));
                }
            }
            return;
        }
        if old.labels() != cur.labels() || old_ref != cur_ref {
            self.matching(cur.namespace(), cur.labels()).iter().for_each(|ds| self.enqueue(ds));
        }
    }

    fn pod_deleted(&self, pod: &Pod) {
        let Some(r) = controller_of(&pod.metadata) else { return };
        if let Some(ds) = self.resolve(&pod.namespace().unwrap_or_default(), r) {
            self.deletions.deletion_observed(&key_of(&*ds), &key_of(pod));
            self.enqueue(&ds);
        }
    }

    fn node_changed(&self, change: &Change<Node>) {
        match change {
            Change::Add(node) => {
                for ds in self.daemon_sets.state() {
                    if placement::node_should_run(node, &ds).should_run {
                        self.enqueue(&ds);
                    }
                }
            }
            Change::Update(old, cur) => {
                if should_ignore_node_update(old, cur) {
                    return;
                }
                for ds in self.daemon_sets.state() {
                    if placement::node_should_run(old, &ds) != placement::node_should_run(cur, &ds) {
                        self.enqueue(&ds);
                    }
                }
            }
            // Upstream waits for the pods to go; looking at once keeps the status's node
            // counts current.
            Change::Delete(_) => self.daemon_sets.state().iter().for_each(|ds| self.enqueue(ds)),
        }
    }

    fn revision_changed(&self, change: &Change<ControllerRevision>) {
        for rev in change.objects() {
            let ns = rev.namespace().unwrap_or_default();
            match controller_of(&rev.metadata) {
                Some(r) => {
                    if let Some(ds) = self.resolve(&ns, r) {
                        self.enqueue(&ds);
                    }
                }
                // Nobody waits for an orphan's deletion.
                None if matches!(change, Change::Delete(_)) => {}
                None => self.matching(rev.namespace(), rev.labels()).iter().for_each(|ds| self.enqueue(ds)),
            }
        }
    }
}

/// The node condition types that are True.
fn true_conditions(conditions: Option<&Vec<NodeCondition>>) -> std::collections::BTreeSet<&str> {
    conditions.into_iter().flatten().filter(|c| c.status == "True").map(|c| c.type_.as_str()).collect()
}

/// Upstream's `shouldIgnoreNodeUpdate`: the same conditions hold and nothing else but the
/// resource version and the conditions' details (heartbeats) changed.
fn should_ignore_node_update(old: &Node, cur: &Node) -> bool {
    let (oc, cc) = (
        old.status.as_ref().and_then(|s| s.conditions.as_ref()),
        cur.status.as_ref().and_then(|s| s.conditions.as_ref()),
    );
    if true_conditions(oc) != true_conditions(cc) {
        return false;
    }
    let mut old = old.clone();
    old.metadata.resource_version = cur.metadata.resource_version.clone();
    old.metadata.managed_fields = cur.metadata.managed_fields.clone();
    if let (Some(o), Some(c)) = (old.status.as_mut(), cur.status.as_ref()) {
        o.conditions = c.conditions.clone();
    }
    old == *cur
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(labels: serde_json::Value, ready: &str, heartbeat: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n", "labels": labels, "resourceVersion": heartbeat},
            "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": heartbeat}]},
        }))
        .unwrap()
    }

    #[test]
    fn heartbeats_are_ignored_but_label_and_condition_changes_are_not() {
        let a = node(json!({"x": "1"}), "True", "2026-01-01T00:00:00Z");
        assert!(should_ignore_node_update(&a, &node(json!({"x": "1"}), "True", "2026-01-01T00:00:10Z")));
        assert!(!should_ignore_node_update(&a, &node(json!({"x": "2"}), "True", "2026-01-01T00:00:10Z")));
        assert!(!should_ignore_node_update(&a, &node(json!({"x": "1"}), "False", "2026-01-01T00:00:10Z")));
    }
}
