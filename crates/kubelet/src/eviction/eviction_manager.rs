//! The eviction manager's loop (upstream's `eviction_manager.go`): every monitoring period it
//! observes the signals, publishes the pressure conditions for the node status, and when a
//! threshold is met reclaims node-level resources, then evicts at most one pod and waits for
//! it to be cleaned up before looking again.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use tug_runtime::ImageService;
use tug_runtime::cri::{Container, ContainerFilter, ContainerState, RuntimeService};

use super::helpers::{self, ContainerStats, FsUsage, Observation, Observations, PodStats, Resource, State, StatsByUid};
use super::{Eviction, EvictionThreshold};
use crate::config::{Config, Signal};
use crate::image_gc_manager::ImageGcManager;
use crate::kuberuntime::labels::POD_UID;
use crate::node_status::{LatestNodeStatus, Observed};
use crate::pod_workers::PodWorkers;

/// How long an evicted pod gets to be cleaned up before the next observation (upstream's
/// `podCleanupTimeout`), and how often that is checked (`podCleanupPollFreq`).
const POD_CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
const POD_CLEANUP_POLL: Duration = Duration::from_secs(1);

/// Runs the eviction manager until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: kube::Client,
    config: Arc<Config>,
    runtime: Arc<dyn RuntimeService>,
    images: Arc<dyn ImageService>,
    image_gc: Arc<ImageGcManager>,
    workers: PodWorkers,
    latest: Arc<LatestNodeStatus>,
    shutdown: CancellationToken,
) {
    let thresholds = match super::thresholds(&config) {
        Ok(list) if list.is_empty() => {
            info!("no eviction thresholds: node pressure eviction is off");
            return;
        }
        Ok(list) => list,
        Err(error) => {
            error!(%error, "node pressure eviction is off");
            return;
        }
    };
    let period = config.eviction.monitoring_period;
    let mut manager = EvictionManager {
        client,
        config,
        thresholds,
        runtime,
        images,
        image_gc,
        workers,
        latest,
        state: State::default(),
        dedicated_image_fs: None,
        reclaiming: None,
    };
    loop {
        let evicted = manager.synchronize().await;
        let wait = async {
            match &evicted {
                Some(uid) => manager.wait_for_pod_cleanup(uid).await,
                None => tokio::time::sleep(period).await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wait => {}
        }
    }
}

struct EvictionManager {
    client: kube::Client,
    config: Arc<Config>,
    thresholds: Vec<EvictionThreshold>,
    runtime: Arc<dyn RuntimeService>,
    images: Arc<dyn ImageService>,
    /// The image collector, whose records say which images are old enough to remove.
    image_gc: Arc<ImageGcManager>,
    workers: PodWorkers,
    latest: Arc<LatestNodeStatus>,
    state: State,
    /// Whether images live on another filesystem than the agent's data; found out once.
    dedicated_image_fs: Option<bool>,
    /// The resource the last round set out to reclaim, so that the node's
    /// `EvictionThresholdMet` event marks the start of an episode, not every round.
    reclaiming: Option<Resource>,
}

/// The signals of one look at the machine (upstream's `makeSignalObservations`). A filesystem
/// that reports no inodes has no inode signal.
fn observations(observed: &Observed) -> Observations {
    let m = &observed.machine;
    let mut result = Observations::from([
        (Signal::MemoryAvailable, Observation { available: m.memory_available, capacity: m.memory_capacity }),
        (
            Signal::NodeFsAvailable,
            Observation { available: observed.nodefs.available, capacity: observed.nodefs.capacity },
        ),
        (
            Signal::ImageFsAvailable,
            Observation { available: observed.imagefs.available, capacity: observed.imagefs.capacity },
        ),
        (Signal::PidAvailable, Observation { available: observed.pids.available(), capacity: observed.pids.max }),
    ]);
    for (signal, fs) in [(Signal::NodeFsInodesFree, &observed.nodefs), (Signal::ImageFsInodesFree, &observed.imagefs)] {
        if fs.inodes > 0 {
            result.insert(signal, Observation { available: fs.inodes_free, capacity: fs.inodes });
        }
    }
    result
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

/// The grace period of a pod evicted for `threshold` (upstream gives a pod evicted for a hard
/// threshold no time; for a soft one its own grace period, capped by
/// `--eviction-max-pod-grace-period` unless that is negative).
fn grace_period(threshold: &EvictionThreshold, pod: &Pod, max_pod_grace_period_seconds: i64) -> Duration {
    if threshold.is_hard() {
        return Duration::ZERO;
    }
    let own = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
    let seconds = if max_pod_grace_period_seconds < 0 { own } else { own.min(max_pod_grace_period_seconds) };
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

impl EvictionManager {
    /// One round (upstream's `synchronize`). Returns the UID of the pod it evicted.
    async fn synchronize(&mut self) -> Option<String> {
        let observed = self.observe().await?;
        let observations = observations(&observed);
        let transition = self.config.eviction.pressure_transition_period;
        let synced = self.state.synchronize(&self.thresholds, &observations, transition, Instant::now());
        self.latest.set_pressure(synced.pressure);
        let Some(&first) = synced.thresholds_met.first() else {
            self.reclaiming = None;
            return None;
        };
        let threshold = self.thresholds[first];
        let resource = Resource::of(threshold.signal);
        info!(
            signal = threshold.signal.as_str(),
            resource = resource.as_str(),
            "eviction manager: attempting to reclaim"
        );
        if self.reclaiming.replace(resource) != Some(resource) {
            let message = format!("Attempting to reclaim {}", resource.as_str());
            crate::node_status::record_node_event(
                &self.client,
                &self.config,
                "Warning",
                "EvictionThresholdMet",
                &message,
            )
            .await;
        }
        let dedicated_image_fs = self.dedicated_image_fs().await;
        if self.reclaim_node_level_resources(threshold.signal, dedicated_image_fs).await {
            info!(
                resource = resource.as_str(),
                "eviction manager: able to reduce resource pressure without evicting pods"
            );
            return None;
        }
        let mut pods = self.workers.active_pods();
        if pods.is_empty() {
            error!("eviction manager: eviction thresholds have been met, but no pods are active to evict");
            return None;
        }
        let stats = self.pod_stats(&pods, resource).await;
        helpers::rank(threshold.signal, dedicated_image_fs, &mut pods, &stats);
        let ranked: Vec<&str> = pods.iter().map(|p| p.metadata.name.as_deref().unwrap_or_default()).collect();
        info!(resource = resource.as_str(), pods = ?ranked, "eviction manager: pods ranked for eviction");
        let met = helpers::threshold_met_info(resource, &self.thresholds, &synced.thresholds_met, &observations);
        for pod in &pods {
            if crate::admission::is_critical(pod) {
                error!(
                    pod = pod.metadata.name.as_deref().unwrap_or_default(),
                    "eviction manager: cannot evict a critical pod"
                );
                continue;
            }
            let (message, annotations) = helpers::eviction_message(resource, pod, stats.get(uid(pod)), met.clone());
            let grace = grace_period(&threshold, pod, self.config.eviction.max_pod_grace_period_seconds);
            info!(
                pod = pod.metadata.name.as_deref().unwrap_or_default(),
                namespace = pod.metadata.namespace.as_deref().unwrap_or_default(),
                %message,
                ?annotations,
                grace_period = ?grace,
                "eviction manager: evicting pod"
            );
            self.workers.evict(uid(pod), Eviction { message, annotations, grace_period: grace });
            return Some(uid(pod).to_owned());
        }
        info!("eviction manager: unable to evict any pods from the node");
        None
    }

    async fn observe(&self) -> Option<Observed> {
        match crate::node_status::observe(&self.config, self.images.as_ref(), self.runtime.as_ref()).await {
            Ok(observed) => Some(observed),
            Err(error) => {
                warn!(%error, "eviction manager: observing the node failed");
                None
            }
        }
    }

    /// Whether the image filesystem is another device than the agent's data directory.
    async fn dedicated_image_fs(&mut self) -> bool {
        if let Some(known) = self.dedicated_image_fs {
            return known;
        }
        let image_dir = crate::image_gc_manager::image_fs_dir(&self.config, self.runtime.as_ref()).await;
        let device = |path: &Path| std::fs::metadata(path).map(|m| m.dev()).ok();
        let dedicated = match (device(&self.config.agent_dir), device(&image_dir)) {
            (Some(node), Some(image)) => node != image,
            _ => false,
        };
        self.dedicated_image_fs = Some(dedicated);
        dedicated
    }

    /// Frees what the node holds for nobody before pods are evicted (upstream's
    /// `reclaimNodeLevelResources`): for disk signals, dead containers and unused images (with
    /// a dedicated image filesystem, only for its signals). Returns whether every threshold is
    /// then resolved, minimum reclaims included.
    async fn reclaim_node_level_resources(&mut self, signal: Signal, dedicated_image_fs: bool) -> bool {
        let reclaims = match signal {
            Signal::MemoryAvailable | Signal::PidAvailable => false,
            Signal::NodeFsAvailable | Signal::NodeFsInodesFree => !dedicated_image_fs,
            Signal::ImageFsAvailable | Signal::ImageFsInodesFree => true,
        };
        if !reclaims {
            return false;
        }
        self.delete_unused_containers().await;
        self.delete_unused_images().await;
        let Some(observed) = self.observe().await else { return false };
        let observations = observations(&observed);
        helpers::thresholds_met(&self.thresholds, 0..self.thresholds.len(), &observations, true).is_empty()
    }

    /// Removes exited containers but the newest of each pod's container, which its status and
    /// `kubectl logs --previous` read (upstream's container GC keeps one per container).
    async fn delete_unused_containers(&self) {
        let containers = match self.runtime.list_containers(&ContainerFilter::default()).await {
            Ok(list) => list,
            Err(error) => {
                warn!(%error, "eviction manager: listing containers to collect");
                return;
            }
        };
        let mut dead: HashMap<(String, String), Vec<_>> = HashMap::new();
        for c in containers.into_iter().filter(|c| c.state == ContainerState::Exited) {
            let pod = c.labels.get(POD_UID).cloned().unwrap_or_default();
            dead.entry((pod, c.metadata.name.clone())).or_default().push(c);
        }
        for mut instances in dead.into_values() {
            instances.sort_by_key(|c| std::cmp::Reverse(c.created_at));
            for c in instances.into_iter().skip(1) {
                match self.runtime.remove_container(&c.id).await {
                    Ok(()) => {
                        info!(container = %c.id, name = %c.metadata.name, "eviction manager: removed a dead container")
                    }
                    Err(error) => warn!(container = %c.id, %error, "eviction manager: removing a dead container"),
                }
            }
        }
    }

    /// Removes every image no container uses that is older than the minimum image age
    /// (upstream's `DeleteUnusedImages`), through the image collector.
    async fn delete_unused_images(&self) {
        match self.image_gc.delete_unused_images().await {
            Ok(freed) => debug!(freed, "eviction manager: unused images removed"),
            Err(error) => warn!(%error, "eviction manager: removing unused images"),
        }
    }

    /// The usage of `pods` that ranking for `resource` reads (the summary API's pod stats).
    async fn pod_stats(&self, pods: &[Arc<Pod>], resource: Resource) -> StatsByUid {
        match resource {
            Resource::Memory => self.memory_stats().await,
            Resource::EphemeralStorage | Resource::Inodes => {
                let layers = self.writable_layers().await;
                let config = self.config.clone();
                let pods = pods.to_vec();
                tokio::task::spawn_blocking(move || {
                    pods.iter()
                        .map(|pod| (uid(pod).to_owned(), disk_stats(&config, pod, layers.get(uid(pod)))))
                        .collect()
                })
                .await
                .unwrap_or_default()
            }
            Resource::Pids => {
                let pods = pods.to_vec();
                tokio::task::spawn_blocking(move || {
                    pods.iter()
                        .filter_map(|pod| {
                            let cgroup = crate::qos::cgroup_parent(crate::qos::pod_qos(pod), uid(pod));
                            let processes = tug_runtime::cgroups::pids(&cgroup).ok()?.len() as u64;
                            Some((uid(pod).to_owned(), PodStats { processes: Some(processes), ..Default::default() }))
                        })
                        .collect()
                })
                .await
                .unwrap_or_default()
            }
        }
    }

    /// The writable layer of each pod's containers, by pod UID and container name, from the
    /// runtime's container stats. Of the containers of one name (a restarted container's dead
    /// predecessors stay until they are collected), the running one counts, or else the latest
    /// (upstream's `removeTerminatedContainers`): a container that crashed after filling its
    /// root filesystem still counts against its pod.
    async fn writable_layers(&self) -> HashMap<String, HashMap<String, FsUsage>> {
        let (containers, layers) = match (
            self.runtime.list_containers(&ContainerFilter::default()).await,
            self.runtime.container_writable_layers().await,
        ) {
            (Ok(containers), Ok(layers)) => (containers, layers.into_iter().collect::<HashMap<_, _>>()),
            (Err(error), _) | (_, Err(error)) => {
                warn!(%error, "eviction manager: reading the containers' writable layers");
                return HashMap::new();
            }
        };
        counted_writable_layers(containers, &layers)
    }

    /// Working sets of pods and containers from the runtime's CRI stats.
    async fn memory_stats(&self) -> StatsByUid {
        let sandboxes = match self.runtime.list_pod_sandbox_stats().await {
            Ok(list) => list,
            Err(error) => {
                warn!(%error, "eviction manager: reading the pods' memory usage");
                return StatsByUid::new();
            }
        };
        sandboxes
            .into_iter()
            .map(|s| {
                let pod_uid = s.labels.get(POD_UID).cloned().unwrap_or_else(|| s.metadata.uid.clone());
                let containers = s
                    .containers
                    .iter()
                    .map(|c| ContainerStats {
                        name: c.metadata.name.clone(),
                        memory_working_set: Some(c.memory.working_set_bytes),
                        ..Default::default()
                    })
                    .collect();
                (
                    pod_uid,
                    PodStats { memory_working_set: Some(s.memory.working_set_bytes), containers, ..Default::default() },
                )
            })
            .collect()
    }

    /// Waits until the evicted pod is no longer active, at most [`POD_CLEANUP_TIMEOUT`]
    /// (upstream's `waitForPodsCleanup`).
    async fn wait_for_pod_cleanup(&self, pod_uid: &str) {
        let deadline = Instant::now() + POD_CLEANUP_TIMEOUT;
        while Instant::now() < deadline {
            if !self.workers.active_pods().iter().any(|p| uid(p) == pod_uid) {
                info!(pod_uid, "eviction manager: evicted pod cleaned up");
                return;
            }
            tokio::time::sleep(POD_CLEANUP_POLL).await;
        }
        debug!(pod_uid, "eviction manager: timed out waiting for the evicted pod to be cleaned up");
    }
}

/// Of each pod's containers, by container name, the writable layer that counts: the running
/// container's, or else the latest created one's (see `EvictionManager::writable_layers`).
fn counted_writable_layers(
    mut containers: Vec<Container>,
    layers: &HashMap<String, FsUsage>,
) -> HashMap<String, HashMap<String, FsUsage>> {
    // Oldest first, so that a later container of the same name replaces an earlier one unless
    // the earlier one runs.
    containers.sort_by_key(|c| c.created_at);
    let mut counted: HashMap<String, HashMap<String, (bool, FsUsage)>> = HashMap::new();
    for c in containers {
        let (Some(pod), Some(layer)) = (c.labels.get(POD_UID), layers.get(&c.id)) else { continue };
        let running = c.state == ContainerState::Running;
        let names = counted.entry(pod.clone()).or_default();
        match names.get(&c.metadata.name) {
            Some((true, _)) if !running => {}
            _ => {
                names.insert(c.metadata.name.clone(), (running, *layer));
            }
        }
    }
    counted.into_iter().map(|(pod, names)| (pod, names.into_iter().map(|(n, (_, l))| (n, l)).collect())).collect()
}

/// A pod's disk usage: each container's writable layer (`layers`, by container name) and log
/// directory, and its emptyDir volumes on disk.
fn disk_stats(config: &Config, pod: &Pod, layers: Option<&HashMap<String, FsUsage>>) -> PodStats {
    let Some(spec) = pod.spec.as_ref() else { return PodStats::default() };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let log_dir = config.pod_log_dir(namespace, name, uid(pod));
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| {
            let rootfs = layers.and_then(|l| l.get(&c.name)).copied();
            ContainerStats {
                name: c.name.clone(),
                memory_working_set: None,
                rootfs,
                logs: Some(FsUsage::of_tree(&log_dir.join(&c.name))),
            }
        })
        .collect();
    let volumes = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.empty_dir.as_ref().is_some_and(|e| e.medium.as_deref().unwrap_or_default().is_empty()))
        .map(|v| {
            let usage: FsUsage = FsUsage::of_tree(&crate::volumemanager::empty_dir_path(config, uid(pod), &v.name));
            (v.name.clone(), usage)
        })
        .collect();
    PodStats { containers, volumes, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_running_container_of_a_name_counts_or_else_the_latest() {
        use std::time::{Duration, SystemTime};
        use tug_runtime::cri::ContainerMetadata;
        let container = |id: &str, pod: &str, name: &str, state: ContainerState, age: u64| Container {
            id: id.into(),
            pod_sandbox_id: "s".into(),
            metadata: ContainerMetadata { name: name.into(), attempt: 0 },
            image: String::new(),
            image_ref: String::new(),
            state,
            created_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1000 - age),
            labels: [(POD_UID.to_owned(), pod.to_owned())].into(),
            annotations: Default::default(),
        };
        let usage = |bytes| FsUsage { bytes, inodes: 1 };
        let containers = vec![
            // In pod u1, "app" runs beside a newer dead one; "crashed" died twice.
            container("app-old", "u1", "app", ContainerState::Running, 30),
            container("app-new", "u1", "app", ContainerState::Exited, 10),
            container("crashed-1", "u1", "crashed", ContainerState::Exited, 20),
            container("crashed-2", "u1", "crashed", ContainerState::Exited, 5),
            container("gone", "u2", "web", ContainerState::Exited, 1),
        ];
        let layers: HashMap<String, FsUsage> =
            [("app-old", usage(100)), ("app-new", usage(200)), ("crashed-1", usage(300)), ("crashed-2", usage(400))]
                .into_iter()
                .map(|(id, u)| (id.to_owned(), u))
                .collect();
        let counted = counted_writable_layers(containers, &layers);
        assert_eq!(counted["u1"]["app"], usage(100), "the running one");
        assert_eq!(counted["u1"]["crashed"], usage(400), "the latest dead one");
        assert!(!counted.contains_key("u2"), "a container the runtime reports no layer for");
    }

    #[test]
    fn soft_evictions_get_the_pods_grace_period_capped_by_the_maximum() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"terminationGracePeriodSeconds": 60, "containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap();
        let soft = EvictionThreshold {
            signal: Signal::MemoryAvailable,
            value: crate::config::Threshold::Bytes(1),
            grace_period: Duration::from_secs(30),
            min_reclaim: None,
        };
        let hard = EvictionThreshold { grace_period: Duration::ZERO, ..soft };
        assert_eq!(grace_period(&hard, &pod, 20), Duration::ZERO);
        assert_eq!(grace_period(&soft, &pod, 20), Duration::from_secs(20));
        assert_eq!(grace_period(&soft, &pod, 90), Duration::from_secs(60));
        assert_eq!(grace_period(&soft, &pod, -1), Duration::from_secs(60));
    }

    #[test]
    fn signals_are_observed_from_the_machine_and_inodes_only_where_counted() {
        let mut observed = Observed::default();
        observed.machine.memory_available = 5;
        observed.machine.memory_capacity = 10;
        observed.nodefs = crate::machine::FsStats { capacity: 100, available: 40, inodes: 0, inodes_free: 0 };
        observed.imagefs = crate::machine::FsStats { capacity: 100, available: 40, inodes: 50, inodes_free: 20 };
        observed.pids = crate::machine::PidStats { max: 1000, running: 100 };
        let o = observations(&observed);
        assert_eq!(o[&Signal::MemoryAvailable], Observation { available: 5, capacity: 10 });
        assert_eq!(o[&Signal::PidAvailable], Observation { available: 900, capacity: 1000 });
        assert_eq!(o[&Signal::ImageFsInodesFree], Observation { available: 20, capacity: 50 });
        assert!(!o.contains_key(&Signal::NodeFsInodesFree));
    }
}
