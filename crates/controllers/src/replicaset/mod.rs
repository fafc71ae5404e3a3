//! The ReplicaSet and ReplicationController controllers (upstream's `pkg/controller/replicaset`,
//! which also serves `pkg/controller/replication`): keep exactly `spec.replicas` active pods
//! matching each workload's selector.
//!
//! The recipe is upstream's. Informers (kube-runtime reflectors, one pod cache shared by both
//! kinds) call event handlers with the old and new object; the handlers only record
//! expectations and enqueue workload keys. The work queue is kube-runtime's applier, which
//! never runs one key twice at once, merges repeated keys and retries failures with a per-key
//! exponential backoff. The sync reads the caches: it claims the pods (adopting matching
//! orphans, releasing owned pods that stopped matching), creates or deletes pods (in
//! slow-start batches, surplus pods chosen by [`ranking`]) only when no earlier creation or
//! deletion is still awaited ([`crate::expectations`]), and writes the status through the
//! status subresource when it changed. A deleted workload's expectations are dropped by its
//! delete handler; its pods are left to the garbage collector.
//!
//! This module must not touch other controllers' objects beyond the pods it owns or adopts.

mod claim;
pub mod pod_control;
pub mod ranking;
pub mod status;
pub mod workload;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::events::Recorder;
use crate::expectations::Expectations;
use crate::informer::{Change, Informers};
use pod_control::{PodControl, PodError, SLOW_START_INITIAL_BATCH, slow_start_batch};
use status::ManageFailure;
use workload::Workload;

/// The most pods created or deleted in one sync (upstream's `BurstReplicas`).
pub const BURST_REPLICAS: usize = 500;
/// Workloads synced at once (upstream's `--concurrent-replicaset-syncs` default).
const CONCURRENT_SYNCS: u16 = 5;

/// Why a sync failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating pods for {key}")]
    Create {
        key: String,
        #[source]
        source: PodError,
    },
    #[error("deleting pods of {key}")]
    Delete {
        key: String,
        #[source]
        source: PodError,
    },
    #[error("adopting or releasing pods for {key}")]
    Claim {
        key: String,
        #[source]
        source: PodError,
    },
    #[error("reading {key} before adopting pods")]
    Recheck {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("{key} is gone or being deleted; not adopting pods")]
    CannotAdopt { key: String },
    #[error("updating the status of {key}")]
    Status {
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// Runs the ReplicaSet and ReplicationController controllers until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (rs, rs_run) = Manager::<ReplicaSet>::new(&informers, pods.clone(), shutdown.clone()).await;
    let (rc, rc_run) = Manager::<ReplicationController>::new(&informers, pods, shutdown.clone()).await;
    let pod_informer = pod_writer.run(shutdown, move |change: Change<Pod>| {
        rs.pod_changed(&change);
        rc.pod_changed(&change);
    });
    tokio::join!(pod_informer, rs_run, rc_run);
}

/// The controller of one workload kind: its caches, expectations and queue.
pub struct Manager<K: Workload> {
    client: Client,
    owners: Store<K>,
    pods: Store<Pod>,
    expectations: Expectations,
    queue: mpsc::UnboundedSender<ObjectRef<K>>,
    pod_control: PodControl,
    /// Consecutive failed syncs per key, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// `namespace/name`, the key of upstream's queues and expectations.
fn key_of<R: Resource>(obj: &R) -> String {
    format!("{}/{}", obj.meta().namespace.as_deref().unwrap_or(""), obj.meta().name.as_deref().unwrap_or(""))
}

pub use crate::controller_ref::controller_of;

/// The delay before retry number `failures` (client-go's default per-item limiter: 5ms doubled
/// per failure, at most 1000s).
pub fn backoff(failures: u32) -> Duration {
    let ms = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(40));
    Duration::from_millis(ms).min(Duration::from_secs(1000))
}

impl<K: Workload> Manager<K> {
    /// The manager and the future that runs its informer and workers until `shutdown`.
    async fn new(
        informers: &Informers,
        pods: Store<Pod>,
        shutdown: CancellationToken,
    ) -> (Arc<Self>, impl std::future::Future<Output = ()>) {
        let client = informers.client();
        let (owners, owner_writer) = informers.store::<K>().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let manager = Arc::new(Self {
            client: client.clone(),
            owners: owners.clone(),
            pods,
            expectations: Expectations::new(),
            queue: tx,
            pod_control: PodControl { client: client.clone(), recorder: Recorder::new(client.clone(), K::COMPONENT) },
            failures: Mutex::new(HashMap::new()),
        });
        let m = manager.clone();
        let informer = owner_writer.run(shutdown.clone(), move |change: Change<K>| m.owner_changed(&change));
        let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(Ok::<_, Infallible>)
            .take_until(shutdown.cancelled_owned());
        let ctx = manager.clone();
        let workers = applier(
            |obj, ctx| Box::pin(sync(obj, ctx)),
            error_policy,
            ctx,
            owners,
            queue,
            Config::default().concurrency(CONCURRENT_SYNCS),
        )
        .for_each(|res| async move {
            match res {
                Ok(_) => {}
                Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
                Err(e) => debug!(kind = %K::kind(&()), error = %e, "sync failed"),
            }
        });
        let run = async move {
            info!(kind = %K::kind(&()), "starting controller");
            tokio::join!(informer, workers);
        };
        (manager, run)
    }

    fn enqueue(&self, obj: &K) {
        let _ = self.queue.send(ObjectRef::from_obj(obj));
    }

    fn enqueue_after(&self, obj: &K, delay: Duration) {
        let (queue, r) = (self.queue.clone(), ObjectRef::from_obj(obj));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = queue.send(r);
        });
    }

    /// The workload a controller reference names, if it is in the cache with that uid.
    fn resolve(&self, namespace: &str, r: &OwnerReference) -> Option<Arc<K>> {
        if r.kind != K::kind(&()) {
            return None;
        }
        let obj = self.owners.get(&ObjectRef::new(&r.name).within(namespace))?;
        (obj.meta().uid.as_deref() == Some(r.uid.as_str())).then_some(obj)
    }

    /// The workloads whose selector matches an orphan pod (upstream's `GetPodReplicaSets`: an
    /// empty selector matches nothing here).
    fn matching_owners(&self, pod: &Pod) -> Vec<Arc<K>> {
        let ns = pod.namespace();
        if pod.labels().is_empty() {
            return Vec::new();
        }
        self.owners.state_filter(|o| {
            o.namespace() == ns
                && match o.selector().map(Selector::try_from) {
                    Some(Ok(s)) => !s.selects_all() && s.matches(pod.labels()),
                    _ => false,
                }
        })
    }

    fn owner_changed(&self, change: &Change<K>) {
        match change {
            Change::Add(o) => self.enqueue(o),
            Change::Update(old, cur) => {
                if old.meta().uid != cur.meta().uid {
                    self.expectations.delete(&key_of(&**old));
                }
                self.enqueue(cur);
            }
            // The sync of a workload that is gone has nothing to do: clean up here.
            Change::Delete(o) => {
                let key = key_of(&**o);
                self.expectations.delete(&key);
                self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            }
        }
    }

    fn pod_changed(&self, change: &Change<Pod>) {
        match change {
            Change::Add(p) => self.pod_added(p),
            Change::Update(old, cur) => self.pod_updated(old, cur),
            Change::Delete(p) => self.pod_deleted(p),
        }
    }

    fn pod_added(&self, pod: &Pod) {
        if pod.metadata.deletion_timestamp.is_some() {
            // Seen already going (e.g. after a restart): not a creation.
            return self.pod_deleted(pod);
        }
        let ns = pod.namespace().unwrap_or_default();
        if let Some(r) = controller_of(&pod.metadata) {
            if let Some(owner) = self.resolve(&ns, r) {
                self.expectations.creation_observed(&key_of(&*owner));
                self.enqueue(&owner);
            }
            return;
        }
        for owner in self.matching_owners(pod) {
            self.enqueue(&owner);
        }
    }

    fn pod_updated(&self, old: &Pod, cur: &Pod) {
        if old.metadata.resource_version == cur.metadata.resource_version {
            return;
        }
        let labels_changed = old.labels() != cur.labels();
        if cur.metadata.deletion_timestamp.is_some() {
            self.pod_deleted(cur);
            if labels_changed {
                self.pod_deleted(old);
            }
            return;
        }
        let ns = cur.namespace().unwrap_or_default();
        let (old_ref, cur_ref) = (controller_of(&old.metadata), controller_of(&cur.metadata));
        let ref_changed = old_ref != cur_ref;
        if ref_changed
            && let Some(r) = old_ref
            && let Some(owner) = self.resolve(&ns, r)
        {
            self.enqueue(&owner);
        }
        if let Some(r) = cur_ref {
            if let Some(owner) = self.resolve(&ns, r) {
                self.enqueue(&owner);
                let min_ready = owner.min_ready_seconds();
                if min_ready > 0 && !ranking::is_ready(old) && ranking::is_ready(cur) {
                    // Check availability again once the pod has been ready long enough.
                    self.enqueue_after(&owner, Duration::from_secs(min_ready as u64 + 1));
                }
            }
            return;
        }
        if labels_changed || ref_changed {
            for owner in self.matching_owners(cur) {
                self.enqueue(&owner);
            }
        }
    }

    fn pod_deleted(&self, pod: &Pod) {
        let Some(r) = controller_of(&pod.metadata) else { return };
        let ns = pod.namespace().unwrap_or_default();
        if let Some(owner) = self.resolve(&ns, r) {
            let key = key_of(&*owner);
            self.expectations.deletion_observed(&key, &key_of(pod));
            self.enqueue(&owner);
        }
    }

    /// The pods of every workload sharing `w`'s controller (e.g. all ReplicaSets of one
    /// Deployment), to rank pods by how crowded their node is.
    fn related_pods(&self, w: &K) -> Vec<Arc<Pod>> {
        let Some(owner) = controller_of(w.meta()) else { return Vec::new() };
        let ns = w.namespace();
        let siblings = self
            .owners
            .state_filter(|o| o.namespace() == ns && controller_of(o.meta()).is_some_and(|r| r.uid == owner.uid));
        let mut seen = HashSet::new();
        let mut related = Vec::new();
        for sibling in siblings {
            let Some(Ok(selector)) = sibling.selector().map(Selector::try_from) else { continue };
            for pod in self.pods.state_filter(|p| p.namespace() == ns && selector.matches(p.labels())) {
                if seen.insert(pod.metadata.uid.clone()) {
                    related.push(pod);
                }
            }
        }
        related
    }

    /// Creates or deletes pods to reach `spec.replicas` (upstream's `manageReplicas`).
    async fn manage_replicas(&self, w: &Arc<K>, claimed: &[Arc<Pod>]) -> Result<(), Error> {
        let key = key_of(&**w);
        let diff = claimed.len() as i64 - i64::from(w.replicas());
        if diff < 0 {
            let count = (diff.unsigned_abs() as usize).min(BURST_REPLICAS);
            self.expectations.expect_creations(&key, count);
            debug!(%key, count, "too few replicas; creating");
            let (created, err) = slow_start_batch(count, SLOW_START_INITIAL_BATCH, || async {
                match self.pod_control.create(&**w).await {
                    // The namespace is going: nothing can be created, and that is no failure.
                    Err(e) if e.is_namespace_terminating() => Ok(()),
                    r => r,
                }
            })
            .await;
            // Creations never made (or failed) will never be observed.
            for _ in created..count {
                self.expectations.creation_observed(&key);
            }
            return err.map_or(Ok(()), |source| Err(Error::Create { key, source }));
        }
        if diff > 0 {
            let count = (diff as usize).min(BURST_REPLICAS);
            let related = self.related_pods(w);
            let victims = ranking::pods_to_delete(claimed, &related, count, k8s_openapi::jiff::Timestamp::now());
            debug!(%key, count, "too many replicas; deleting");
            self.expectations.expect_deletions(&key, victims.iter().map(|p| key_of(&**p)));
            let results = futures::future::join_all(
                victims.iter().map(|p| async move { (p, self.pod_control.delete(&**w, &p.name_any()).await) }),
            )
            .await;
            let mut first = None;
            for (pod, result) in results {
                if let Err(e) = result {
                    // This deletion will never be observed.
                    self.expectations.deletion_observed(&key, &key_of(&**pod));
                    if !e.is_not_found() {
                        first.get_or_insert(e);
                    }
                }
            }
            return first.map_or(Ok(()), |source| Err(Error::Delete { key, source }));
        }
        Ok(())
    }

    /// Writes `status` if it differs from the stored one (upstream's `updateReplicaSetStatus`:
    /// one retry after re-reading on a failed update).
    async fn update_status(&self, w: &K, mut status: ReplicaSetStatus) -> Result<(), Error> {
        if status::unchanged(&w.status(), &status, w.meta().generation) {
            return Ok(());
        }
        status.observed_generation = w.meta().generation;
        let key = key_of(w);
        let api: Api<K> = Api::namespaced(self.client.clone(), &w.namespace().unwrap_or_default());
        let name = w.name_any();
        let mut current = w.clone();
        let mut retried = false;
        loop {
            match api.replace_status(&name, &PostParams::default(), &current.with_status(status.clone())).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(source) if retried => return Err(Error::Status { key, source }),
                Err(_) => {
                    retried = true;
                    current = api.get(&name).await.map_err(|source| Error::Status { key: key.clone(), source })?;
                }
            }
        }
    }
}

fn error_policy<K: Workload>(w: Arc<K>, err: &Error, m: Arc<Manager<K>>) -> Action {
    let key = key_of(&*w);
    let failures = {
        let mut f = m.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    warn!(kind = %K::kind(&()), %key, error = %err, source = ?std::error::Error::source(err).map(|s| s.to_string()), "sync failed; retrying");
    Action::requeue(backoff(failures))
}

/// Upstream's `syncReplicaSet`, for the workload the queue handed over.
async fn sync<K: Workload>(w: Arc<K>, m: Arc<Manager<K>>) -> Result<Action, Error> {
    // Never act on a pod cache that has not been filled yet.
    let _ = m.pods.wait_until_ready().await;
    let key = key_of(&*w);
    let needs_sync = m.expectations.satisfied(&key);
    let selector = match w.selector().map(Selector::try_from) {
        Some(Ok(s)) => s,
        _ => {
            warn!(%key, "invalid selector; not syncing");
            return Ok(Action::await_change());
        }
    };
    let ns = w.namespace();
    let all = m.pods.state_filter(|p| p.namespace() == ns);
    let active: Vec<Arc<Pod>> = all.iter().filter(|p| ranking::is_active(p)).cloned().collect();
    let claimed = claim::claim_pods(&m, &w, &selector, active).await?;
    let uid = w.meta().uid.clone();
    let terminating = all
        .iter()
        .filter(|p| ranking::is_terminating(p))
        .filter(|p| controller_of(&p.metadata).is_some_and(|r| Some(&r.uid) == uid.as_ref()))
        .filter(|p| selector.matches(p.labels()))
        .count();

    let mut manage_err = None;
    if needs_sync && w.meta().deletion_timestamp.is_none() {
        manage_err = m.manage_replicas(&w, &claimed).await.err();
    }
    let failure = manage_err.as_ref().map(|e| ManageFailure {
        message: std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string()),
    });
    let now = k8s_openapi::jiff::Timestamp::now();
    let new_status = status::calculate(&*w, &claimed, terminating, failure.as_ref(), now);
    let (ready, available) = (new_status.ready_replicas.unwrap_or(0), new_status.available_replicas.unwrap_or(0));
    m.update_status(&w, new_status).await?;
    if let Some(e) = manage_err {
        return Err(e);
    }
    m.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    let min_ready = w.min_ready_seconds();
    if min_ready > 0 && ready == w.replicas() && available != w.replicas() {
        // A last line of defence against clock skew: look at availability again.
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_milliseconds_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(5), Duration::from_millis(80));
        assert_eq!(backoff(30), Duration::from_secs(1000));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(1000));
    }
}
