//! The StatefulSet controller (upstream's `pkg/controller/statefulset`): pods with stable
//! identities `<set>-<ordinal>`, each with its own claims made from `volumeClaimTemplates`,
//! created in order and removed in reverse order, and updated through ControllerRevisions.
//!
//! The recipe is the ReplicaSet controller's: informers (sets, pods, revisions, claims) whose
//! handlers only enqueue set keys, kube-runtime's applier as the work queue (one key never
//! synced twice at once, failures retried with a per-key backoff), and a sync reading the
//! caches. No expectations are needed: pods have fixed names, so a cache that lags behind
//! leads at worst to a create answered with AlreadyExists, which is taken as done. The sync
//! claims pods and revisions (adopting orphans, releasing pods that no longer match),
//! hands the set to [`stateful_set_control`], writes the status through the status
//! subresource and prunes old revisions. A deleted set's pods and revisions are left to the
//! garbage collector; its claims stay unless the retention policy made the set their owner.
//!
//! This module must not touch objects other than the pods, claims and revisions of its sets.

pub mod stateful_pod_control;
pub mod stateful_set_control;
pub mod stateful_set_utils;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::controller_ref::{Claim, can_adopt, classify, release_patch};
use crate::events::Recorder;
use crate::history::{History, HistoryError};
use crate::informer::{Change, Informers};
use crate::replicaset::{backoff, controller_of};
use stateful_pod_control::StatefulPodControl;
use stateful_set_control::ControlError;
use stateful_set_utils as utils;

/// Sets synced at once (upstream's `--concurrent-statefulset-syncs` default).
const CONCURRENT_SYNCS: u16 = 5;
const COMPONENT: &str = "statefulset-controller";

/// Why a sync failed; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("updating the pods of statefulset {key}")]
    Control {
        key: String,
        #[source]
        source: ControlError,
    },
    #[error("adopting or releasing pods for statefulset {key}")]
    Claim {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("adopting or releasing revisions for statefulset {key}")]
    Revisions {
        key: String,
        #[source]
        source: HistoryError,
    },
    #[error("updating the status of statefulset {key}")]
    Status {
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// `namespace/name`.
fn key_of<R: Resource>(obj: &R) -> String {
    format!("{}/{}", obj.meta().namespace.as_deref().unwrap_or(""), obj.meta().name.as_deref().unwrap_or(""))
}

/// The controller's caches, queue and writers.
pub struct Manager {
    client: Client,
    sets: Store<StatefulSet>,
    pods: Store<Pod>,
    revisions: Store<ControllerRevision>,
    queue: mpsc::UnboundedSender<ObjectRef<StatefulSet>>,
    pod_control: StatefulPodControl,
    history: History,
    /// Consecutive failed syncs per key, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// Runs the StatefulSet controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (sets, set_writer) = informers.store::<StatefulSet>().await;
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (revisions, rev_writer) = informers.store::<ControllerRevision>().await;
    let (claims, claim_writer) = informers.store::<PersistentVolumeClaim>().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let recorder = Recorder::new(client.clone(), COMPONENT);
    let m = Arc::new(Manager {
        client: client.clone(),
        sets: sets.clone(),
        pods: pods.clone(),
        revisions: revisions.clone(),
        queue: tx,
        pod_control: StatefulPodControl { client: client.clone(), recorder, claims: claims.clone() },
        history: History::new(client.clone()),
        failures: Mutex::new(HashMap::new()),
    });

    let set_informer = {
        let m = m.clone();
        set_writer.run(shutdown.clone(), move |c| m.set_changed(&c))
    };
    let pod_informer = {
        let m = m.clone();
        pod_writer.run(shutdown.clone(), move |c| m.pod_changed(&c))
    };
    // Revisions and claims are only read by syncs (as upstream's listers are).
    let rev_informer = rev_writer.run(shutdown.clone(), |_| {});
    let claim_informer = claim_writer.run(shutdown.clone(), |_| {});

    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
    let workers = applier(
        |set, m| Box::pin(sync(set, m)),
        error_policy,
        m.clone(),
        sets,
        queue,
        Config::default().concurrency(CONCURRENT_SYNCS),
    )
    .for_each(|res| async move {
        match res {
            Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
            Err(e) => debug!(error = %e, "statefulset sync failed"),
        }
    });
    info!("starting statefulset controller");
    tokio::join!(set_informer, pod_informer, rev_informer, claim_informer, workers);
}

impl Manager {
    fn enqueue(&self, set: &StatefulSet) {
        let _ = self.queue.send(ObjectRef::from_obj(set));
    }

    fn enqueue_after(&self, set: &StatefulSet, delay: Duration) {
        let (queue, r) = (self.queue.clone(), ObjectRef::from_obj(set));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = queue.send(r);
        });
    }

    /// The set a controller reference names, if it is in the cache with that uid.
    fn resolve(&self, namespace: &str, r: &OwnerReference) -> Option<Arc<StatefulSet>> {
        if r.kind != "StatefulSet" {
            return None;
        }
        let set = self.sets.get(&ObjectRef::new(&r.name).within(namespace))?;
        (set.metadata.uid.as_deref() == Some(r.uid.as_str())).then_some(set)
    }

    /// The sets whose selector matches an orphan pod (upstream's `getPodStatefulSets`).
    fn matching_sets(&self, pod: &Pod) -> Vec<Arc<StatefulSet>> {
        let ns = pod.namespace();
        if pod.labels().is_empty() {
            return Vec::new();
        }
        self.sets.state_filter(|s| {
            s.namespace() == ns
                && match s.spec.as_ref().map(|sp| Selector::try_from(sp.selector.clone())) {
                    Some(Ok(sel)) => !sel.selects_all() && sel.matches(pod.labels()),
                    _ => false,
                }
        })
    }

    fn set_changed(&self, change: &Change<StatefulSet>) {
        match change {
            Change::Add(s) | Change::Update(_, s) => self.enqueue(s),
            Change::Delete(s) => {
                self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key_of(&**s));
            }
        }
    }

    fn pod_changed(&self, change: &Change<Pod>) {
        let (old, pod) = match change {
            Change::Add(p) | Change::Delete(p) => (None, p),
            Change::Update(old, cur) => {
                if old.metadata.resource_version == cur.metadata.resource_version {
                    return;
                }
                (Some(old), cur)
            }
        };
        let ns = pod.namespace().unwrap_or_default();
        // A pod that changed controller is news to its former controller too.
        if let Some(old) = old
            && controller_of(&old.metadata) != controller_of(&pod.metadata)
            && let Some(set) = controller_of(&old.metadata).and_then(|r| self.resolve(&ns, r))
        {
            self.enqueue(&set);
        }
        match controller_of(&pod.metadata) {
            Some(r) => {
                if let Some(set) = self.resolve(&ns, r) {
                    self.enqueue(&set);
                    let min_ready = utils::min_ready_seconds(&set);
                    let became_ready =
                        old.is_some_and(|o| !utils::is_running_and_ready(o)) && utils::is_running_and_ready(pod);
                    if min_ready > 0 && became_ready {
                        // Look again once the pod has been ready long enough to be available.
                        self.enqueue_after(&set, Duration::from_secs(min_ready as u64 + 1));
                    }
                }
            }
            None if !matches!(change, Change::Delete(_)) => {
                for set in self.matching_sets(pod) {
                    self.enqueue(&set);
                }
            }
            None => {}
        }
    }

    /// The set's pods after adopting matching orphans and releasing owned pods that stopped
    /// matching (upstream's `getPodsForStatefulSet`: a pod must also be named after the set).
    async fn claim_pods(&self, set: &StatefulSet, selector: &Selector) -> Result<Vec<Arc<Pod>>, Error> {
        let ns = set.namespace();
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let name = set.name_any();
        let key = key_of(set);
        let deleting = set.metadata.deletion_timestamp.is_some();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns.as_deref().unwrap_or(""));
        let mut claimed = Vec::new();
        // One live read per sync must allow adoption (the cache may lag a delete).
        let mut may_adopt: Option<bool> = None;
        for pod in self.pods.state_filter(|p| p.namespace() == ns) {
            let member =
                pod.metadata.name.as_deref().and_then(utils::parent_and_ordinal).is_some_and(|(p, _)| p == name);
            let matches = member && selector.matches(pod.labels());
            let adopting = match classify(&pod.metadata, &uid, deleting, matches) {
                Claim::Own => {
                    claimed.push(pod);
                    continue;
                }
                Claim::Ignore => continue,
                Claim::Release => false,
                Claim::Adopt => {
                    let allowed = match may_adopt {
                        Some(allowed) => allowed,
                        None => {
                            let allowed = can_adopt(&self.client, set)
                                .await
                                .map_err(|source| Error::Claim { key: key.clone(), source })?;
                            *may_adopt.insert(allowed)
                        }
                    };
                    if !allowed {
                        continue;
                    }
                    true
                }
            };
            let patch = if adopting {
                json!({"metadata": {"ownerReferences": [utils::controller_ref(set)], "uid": pod.metadata.uid}})
            } else {
                release_patch(&uid, pod.metadata.uid.as_deref())
            };
            match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
                Ok(p) if adopting => claimed.push(Arc::new(p)),
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => {}
                Err(source) => return Err(Error::Claim { key, source }),
            }
        }
        Ok(claimed)
    }

    /// The set's revisions after adopting orphans its selector matches (upstream's
    /// `adoptOrphanRevisions` and `ListControllerRevisions`).
    async fn claim_revisions(&self, set: &StatefulSet, selector: &Selector) -> Result<Vec<ControllerRevision>, Error> {
        let ns = set.namespace();
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let mut owned = Vec::new();
        for rev in self.revisions.state_filter(|r| r.namespace() == ns) {
            match controller_of(&rev.metadata) {
                Some(r) if r.uid == uid => owned.push((*rev).clone()),
                Some(_) => {}
                None if selector.matches(rev.labels()) && set.metadata.deletion_timestamp.is_none() => {
                    let adopted = self
                        .history
                        .adopt_controller_revision(&utils::controller_ref(set), &rev)
                        .await
                        .map_err(|source| Error::Revisions { key: key_of(set), source })?;
                    owned.push(adopted);
                }
                None => {}
            }
        }
        Ok(owned)
    }

    /// Writes `status` if it differs from the stored one (upstream's
    /// `updateStatefulSetStatus`, retrying once after a conflict with a fresh read).
    async fn update_status(&self, set: &StatefulSet, status: StatefulSetStatus) -> Result<(), Error> {
        let old = set.status.clone().unwrap_or_default();
        let same = old.replicas == status.replicas
            && old.ready_replicas.unwrap_or(0) == status.ready_replicas.unwrap_or(0)
            && old.available_replicas.unwrap_or(0) == status.available_replicas.unwrap_or(0)
            && old.current_replicas.unwrap_or(0) == status.current_replicas.unwrap_or(0)
            && old.updated_replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0)
            && old.current_revision == status.current_revision
            && old.update_revision == status.update_revision
            && old.observed_generation == status.observed_generation
            && old.collision_count == status.collision_count;
        if same {
            return Ok(());
        }
        let key = key_of(set);
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), &set.namespace().unwrap_or_default());
        let name = set.name_any();
        let mut current = set.clone();
        for attempt in 0..2 {
            // Conditions are not this controller's to drop.
            let mut new = status.clone();
            new.conditions = current.status.as_ref().and_then(|s| s.conditions.clone());
            current.status = Some(new);
            match api.replace_status(&name, &PostParams::default(), &current).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 && attempt == 0 => {
                    current = api.get(&name).await.map_err(|source| Error::Status { key: key.clone(), source })?;
                }
                Err(source) => return Err(Error::Status { key, source }),
            }
        }
        Ok(())
    }
}

fn error_policy(set: Arc<StatefulSet>, err: &Error, m: Arc<Manager>) -> Action {
    let key = key_of(&*set);
    let failures = {
        let mut f = m.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    let source = std::error::Error::source(err).map(|s| s.to_string());
    warn!(%key, error = %err, ?source, "statefulset sync failed; retrying");
    Action::requeue(backoff(failures))
}

/// Upstream's `syncStatefulSet` for the set the queue handed over.
async fn sync(set: Arc<StatefulSet>, m: Arc<Manager>) -> Result<Action, Error> {
    // Never act on caches that have not been filled yet.
    let _ = m.pods.wait_until_ready().await;
    let _ = m.revisions.wait_until_ready().await;
    let _ = m.pod_control.claims.wait_until_ready().await;
    let key = key_of(&*set);
    let selector = match set.spec.as_ref().map(|s| Selector::try_from(s.selector.clone())) {
        Some(Ok(s)) if !s.selects_all() => s,
        _ => {
            warn!(%key, "invalid or empty selector; not syncing");
            return Ok(Action::await_change());
        }
    };
    let mut revisions = m.claim_revisions(&set, &selector).await?;
    let pods = m.claim_pods(&set, &selector).await?;

    let control_err = |source| Error::Control { key: key.clone(), source };
    let revs = stateful_set_control::get_revisions(&m.history, &set, &mut revisions).await.map_err(control_err)?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let result = stateful_set_control::update_stateful_set(&m.pod_control, &set, &revs, &pods, now).await;
    let mut status = match result {
        Ok(s) => s,
        Err(source) => return Err(Error::Control { key, source }),
    };
    stateful_set_control::complete_rolling_update(&set, &mut status);
    m.update_status(&set, status.clone()).await?;

    // Keep spec.revisionHistoryLimit old revisions (and every one still in use).
    crate::history::sort_controller_revisions(&mut revisions);
    let (cur, upd) = (revs.current.name_any(), revs.update.name_any());
    for rev in stateful_set_control::revisions_to_prune(&set, &pods, &revisions, &cur, &upd) {
        m.history
            .delete_controller_revision(rev)
            .await
            .map_err(|source| Error::Revisions { key: key.clone(), source })?;
    }

    m.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    let min_ready = utils::min_ready_seconds(&set);
    if min_ready > 0 && status.available_replicas != status.ready_replicas {
        // Pods ready but not yet available: look again when they may be.
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
    }
    Ok(Action::await_change())
}
