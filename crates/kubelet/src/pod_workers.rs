//! One worker per pod (upstream's `podWorkers`): a pod's syncs never overlap, a new update
//! replaces one not yet picked up (updates coalesce), and each worker syncs again on its own:
//! every second while the pod runs, so that exits, OOM kills and crash loops reach the status
//! quickly. The runtime trait has no event stream, so polling the pod's containers at about
//! 1 s is how exits are noticed; it is cheap against the built-in runtime's in-memory records.
//!
//! When the agent shuts down, workers stop where they are and leave containers running.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admission::Rejection;
use crate::eviction::Eviction;
use crate::kuberuntime::actions::ContainerToKill;
use crate::kuberuntime::{KubeRuntimeManager, PodRuntimeState, Reasons};
use crate::node_status::LatestNodeStatus;
use crate::status_manager::{StatusInputs, StatusManager, generate_pod_status};

/// How often a running pod's containers are looked at.
const POLL: Duration = Duration::from_secs(1);
/// How often a finished pod (or one whose sync failed) is looked at.
const SLOW_POLL: Duration = Duration::from_secs(10);
/// How often volume contents are refreshed (configMap/secret updates, token rotation).
const RESYNC: Duration = Duration::from_secs(10);

/// What the pod manager tells a worker.
#[derive(Debug, Clone)]
pub enum PodUpdate {
    /// The pod as the API has it now.
    Sync(Arc<Pod>),
    /// The pod is gone from the API (force-deleted, or deleted while the agent was away):
    /// the last object seen.
    Removed(Arc<Pod>),
}

impl PodUpdate {
    fn pod(&self) -> &Arc<Pod> {
        match self {
            PodUpdate::Sync(p) | PodUpdate::Removed(p) => p,
        }
    }
}

enum Outcome {
    Again(Duration),
    Finished,
}

struct Inner {
    manager: Arc<KubeRuntimeManager>,
    status: Arc<StatusManager>,
    /// The node's status as last computed, which new pods are admitted against.
    node_status: Arc<LatestNodeStatus>,
    /// The pods admitted to run here (by UID) and not finished: what a new pod is counted
    /// beside. Admission holds this lock so that pods arriving together are judged in turn.
    admitted: Mutex<HashMap<String, Arc<Pod>>>,
    workers: Mutex<HashMap<String, watch::Sender<PodUpdate>>>,
    /// Pods whose life on this node is over; later updates about them are ignored.
    finished: Mutex<HashSet<String>>,
    /// Evictions the eviction manager asked for, by pod UID, and whether each was carried out.
    evictions: Mutex<HashMap<String, (Eviction, bool)>>,
    shutdown: CancellationToken,
}

/// The set of pod workers. Cheap to clone.
#[derive(Clone)]
pub struct PodWorkers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PodWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWorkers").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PodWorkers {
    pub fn new(
        manager: Arc<KubeRuntimeManager>,
        status: Arc<StatusManager>,
        node_status: Arc<LatestNodeStatus>,
        shutdown: CancellationToken,
    ) -> Self {
        PodWorkers {
            inner: Arc::new(Inner {
                manager,
                status,
                node_status,
                admitted: Mutex::new(HashMap::new()),
                workers: Mutex::new(HashMap::new()),
                finished: Mutex::new(HashSet::new()),
                evictions: Mutex::new(HashMap::new()),
                shutdown,
            }),
        }
    }

    /// Hands an update to the pod's worker, starting one if there is none.
    pub fn update(&self, update: PodUpdate) {
        let uid = update.pod().metadata.uid.clone().unwrap_or_default();
        if uid.is_empty() {
            return;
        }
        if lock(&self.inner.finished).contains(&uid) {
            if matches!(update, PodUpdate::Removed(_)) {
                // The API's delete event after our own final DELETE: nothing will come after it.
                lock(&self.inner.finished).remove(&uid);
            }
            return;
        }
        let mut workers = lock(&self.inner.workers);
        if let Some(tx) = workers.get(&uid) {
            tx.send_replace(update);
            return;
        }
        let (tx, rx) = watch::channel(update);
        workers.insert(uid.clone(), tx);
        let inner = self.inner.clone();
        tokio::spawn(async move { worker(inner, uid, rx).await });
    }

    /// Has the pod's status written at its next sync even if it did not change: its mirror
    /// pod was made again and starts without one.
    pub fn rewrite_status(&self, pod: Arc<Pod>) {
        self.inner.status.forget(pod.metadata.uid.as_deref().unwrap_or_default());
        self.update(PodUpdate::Sync(pod));
    }

    /// The UIDs of pods with a worker.
    pub fn active(&self) -> HashSet<String> {
        lock(&self.inner.workers).keys().cloned().collect()
    }

    /// The pods admitted here and not finished (upstream's active pods): what the eviction
    /// manager chooses from.
    pub fn active_pods(&self) -> Vec<Arc<Pod>> {
        lock(&self.inner.admitted).values().cloned().collect()
    }

    /// Has the pod's worker evict it at its next sync (the eviction manager's request).
    pub fn evict(&self, uid: &str, eviction: Eviction) {
        lock(&self.inner.evictions).insert(uid.to_owned(), (eviction, false));
        if let Some(tx) = lock(&self.inner.workers).get(uid) {
            // Wakes the worker now rather than at its next poll.
            tx.send_modify(|_| {});
        }
    }
}

async fn worker(inner: Arc<Inner>, uid: String, mut rx: watch::Receiver<PodUpdate>) {
    let mut reasons = Reasons::new();
    let mut last_refresh: Option<Instant> = None;
    loop {
        let update = rx.borrow_and_update().clone();
        let pod = update.pod().clone();
        let span = tracing::info_span!(
            "pod_sync",
            pod = %pod.metadata.name.as_deref().unwrap_or_default(),
            namespace = %pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod_uid = %uid,
        );
        let refresh = last_refresh.is_none_or(|t| t.elapsed() >= RESYNC);
        if refresh {
            last_refresh = Some(Instant::now());
        }
        let outcome = sync_once(&inner, &update, &mut reasons, refresh).instrument(span).await;
        let wait = match outcome {
            Outcome::Finished => break,
            Outcome::Again(wait) => wait,
        };
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(wait) => {}
        }
    }
    lock(&inner.admitted).remove(&uid);
    lock(&inner.evictions).remove(&uid);
    let mut workers = lock(&inner.workers);
    workers.remove(&uid);
    lock(&inner.finished).insert(uid);
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

async fn write_status(inner: &Inner, pod: &Pod, state: &PodRuntimeState, reasons: &Reasons) -> Option<String> {
    write_status_evicted(inner, pod, state, reasons, None).await
}

/// Writes the pod's status; with `evicted`, as upstream's eviction manager leaves it: phase
/// `Failed`, reason `Evicted`, the why as message and a `DisruptionTarget` condition.
async fn write_status_evicted(
    inner: &Inner,
    pod: &Pod,
    state: &PodRuntimeState,
    reasons: &Reasons,
    evicted: Option<&str>,
) -> Option<String> {
    let image_ids = inner.manager.image_ids(state).await;
    let mut state = state.clone();
    crate::termination_message::fill(&inner.manager.config, pod, &mut state);
    let state = &state;
    let node_ip = inner.manager.config.node_ip.to_string();
    let probes = inner.manager.probes.results();
    let runtime_name = inner.manager.runtime.runtime_version().name;
    let inputs = StatusInputs {
        pod,
        state,
        reasons,
        image_ids: &image_ids,
        node_ip: &node_ip,
        now: SystemTime::now(),
        probes: &probes,
        runtime_name: &runtime_name,
    };
    let mut status = generate_pod_status(&inputs);
    if let Some(message) = evicted {
        status.phase = Some("Failed".into());
        status.reason = Some(crate::eviction::REASON.into());
        status.message = Some(message.into());
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != crate::eviction::DISRUPTION_TARGET);
        conditions.push(k8s_openapi::api::core::v1::PodCondition {
            type_: crate::eviction::DISRUPTION_TARGET.into(),
            status: "True".into(),
            reason: Some(crate::eviction::TERMINATION_BY_KUBELET.into()),
            message: Some(message.into()),
            last_transition_time: Some(crate::status_manager::api_time(SystemTime::now())),
            observed_generation: pod.metadata.generation,
            ..Default::default()
        });
    }
    let phase = status.phase.clone();
    if let Err(error) = inner.status.set_status(pod, status).await {
        tracing::warn!(%error, "writing pod status");
    }
    phase
}

async fn sync_once(inner: &Inner, update: &PodUpdate, reasons: &mut Reasons, refresh: bool) -> Outcome {
    let manager = &inner.manager;
    let (pod, exists) = match update {
        PodUpdate::Removed(pod) => (pod, false),
        PodUpdate::Sync(pod) => (pod, true),
    };
    if !exists || pod.metadata.deletion_timestamp.is_some() {
        return terminate(inner, pod, exists).await;
    }
    if is_terminal(pod) {
        lock(&inner.admitted).remove(pod.metadata.uid.as_deref().unwrap_or_default());
        lock(&inner.evictions).remove(pod.metadata.uid.as_deref().unwrap_or_default());
        let state = match manager.pod_state(pod.metadata.uid.as_deref().unwrap_or_default()).await {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(%error, "reading a finished pod's containers");
                return Outcome::Again(SLOW_POLL);
            }
        };
        manager.probes.remove_pod(pod.metadata.uid.as_deref().unwrap_or_default());
        if let Err(error) = manager.stop_finished_pod(&state).await {
            tracing::warn!(%error, "stopping a finished pod's sandbox");
        }
        write_status(inner, pod, &state, reasons).await;
        return Outcome::Again(SLOW_POLL);
    }
    if let Err(rejection) = admit(inner, pod) {
        return reject(inner, pod, &rejection).await;
    }
    let requested = lock(&inner.evictions).get(pod.metadata.uid.as_deref().unwrap_or_default()).cloned();
    if let Some((eviction, done)) = requested {
        return evict(inner, pod, reasons, &eviction, !done).await;
    }
    if refresh && let Some(message) = crate::eviction::local_storage_violation(&manager.config, pod) {
        let eviction = Eviction { message, annotations: Default::default(), grace_period: Duration::ZERO };
        return evict(inner, pod, reasons, &eviction, true).await;
    }
    let (state, wait) = match manager.sync_pod(pod, reasons, refresh).await {
        Ok(state) => (state, POLL),
        Err(error) => {
            tracing::warn!(%error, "pod sync failed");
            let state = manager.pod_state(pod.metadata.uid.as_deref().unwrap_or_default()).await.unwrap_or_default();
            (state, POLL)
        }
    };
    manager.probes.sync_pod(pod, &state, &manager.config.node_ip.to_string());
    let phase = write_status(inner, pod, &state, reasons).await;
    if matches!(phase.as_deref(), Some("Succeeded" | "Failed"))
        && let Err(error) = manager.stop_finished_pod(&state).await
    {
        tracing::warn!(%error, "stopping a finished pod's sandbox");
    }
    Outcome::Again(wait)
}

/// Admits the pod the first time it is synced, unless it already started (an agent restart):
/// it must fit beside the pods admitted before it.
fn admit(inner: &Inner, pod: &Arc<Pod>) -> Result<(), Rejection> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut admitted = lock(&inner.admitted);
    if admitted.contains_key(&uid) {
        return Ok(());
    }
    let started = pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running") || s.container_statuses.as_ref().is_some_and(|c| !c.is_empty())
    });
    if !started && let Some(node) = inner.node_status.get() {
        let others: Vec<&Pod> = admitted.values().map(|p| p.as_ref()).collect();
        crate::admission::admit(pod, &others, &node)?;
    }
    admitted.insert(uid, pod.clone());
    Ok(())
}

/// Refuses a pod as upstream's `rejectPod`: a warning event, and the pod `Failed` with the
/// reason and `Pod was rejected: <why>`. It never runs; the terminal status ends its worker's
/// interest in it.
async fn reject(inner: &Inner, pod: &Pod, rejection: &Rejection) -> Outcome {
    tracing::info!(reason = %rejection.reason, message = %rejection.message, "pod rejected");
    let manager = &inner.manager;
    manager.recorder.record(pod, None, crate::events::WARNING, &rejection.reason, &rejection.message).await;
    let status = k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Failed".into()),
        reason: Some(rejection.reason.clone()),
        message: Some(format!("Pod was rejected: {}", rejection.message)),
        qos_class: Some(crate::qos::pod_qos(pod).as_str().into()),
        ..Default::default()
    };
    if let Err(error) = inner.status.set_status(pod, status).await {
        tracing::warn!(%error, "writing a rejected pod's status");
        return Outcome::Again(POLL);
    }
    Outcome::Again(SLOW_POLL)
}

/// Evicts a running pod: an `Evicted` event (unless `announce` is off: a repeat), its
/// containers stopped within `grace`, the failed status written, and its volumes torn down so
/// that their space returns to the node, as upstream's terminated pods'. The pod then stays on
/// the node, finished, until it is deleted (as upstream).
async fn evict(inner: &Inner, pod: &Pod, reasons: &Reasons, eviction: &Eviction, announce: bool) -> Outcome {
    let manager = &inner.manager;
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let (message, grace) = (eviction.message.as_str(), eviction.grace_period);
    if announce {
        tracing::info!(%message, ?grace, "evicting pod");
        let annotations = eviction.annotations.clone();
        let (warning, reason) = (crate::events::WARNING, crate::eviction::REASON);
        manager.recorder.record_annotated(pod, None, warning, reason, message, annotations).await;
    }
    manager.probes.remove_pod(uid);
    let killed =
        if grace.is_zero() { manager.kill_evicted_pod(pod).await } else { kill_within(manager, pod, grace).await };
    let state = match killed {
        Ok(state) => state,
        Err(error) => {
            tracing::warn!(%error, "stopping an evicted pod's containers; retrying");
            return Outcome::Again(POLL);
        }
    };
    if let Some(entry) = lock(&inner.evictions).get_mut(uid) {
        entry.1 = true;
    }
    write_status_evicted(inner, pod, &state, reasons, Some(message)).await;
    if state.running().next().is_none()
        && let Err(error) = crate::volumemanager::teardown_pod_volumes(&manager.config, uid).await
    {
        tracing::warn!(%error, "tearing down an evicted pod's volumes");
    }
    // The API's copy turns Failed shortly (the worker wakes on it) and is finished from then on.
    Outcome::Again(SLOW_POLL)
}

/// Stops the pod's running containers within `grace` (an eviction for a soft threshold).
async fn kill_within(
    manager: &KubeRuntimeManager,
    pod: &Pod,
    grace: Duration,
) -> Result<PodRuntimeState, tug_runtime::cri::RuntimeError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let state = manager.pod_state(uid).await?;
    let kills = state
        .running()
        .map(|c| ContainerToKill {
            id: c.id.clone(),
            name: c.metadata.name.clone(),
            reason: format!("Stopping container {}", c.metadata.name),
        })
        .collect();
    manager.kill_containers(pod, kills, grace).await;
    manager.pod_state(uid).await
}

async fn terminate(inner: &Inner, pod: &Pod, exists: bool) -> Outcome {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    inner.manager.probes.remove_pod(uid);
    if let Err(error) = inner.manager.terminate_pod(pod).await {
        tracing::warn!(%error, "terminating pod; retrying");
        return Outcome::Again(POLL);
    }
    inner.status.forget(uid);
    if exists && let Err(error) = inner.status.delete_pod(pod).await {
        tracing::warn!(%error, "deleting a terminated pod; retrying");
        return Outcome::Again(POLL);
    }
    tracing::info!("pod terminated");
    Outcome::Finished
}
