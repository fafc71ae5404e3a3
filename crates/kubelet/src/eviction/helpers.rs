//! The eviction manager's decisions, kept free of I/O so that they are tested on fixed inputs
//! (upstream's `pkg/kubelet/eviction/helpers.go`): which thresholds are met, when a pressure
//! condition starts and ends, how pods are ranked for eviction, and the message an evicted pod
//! and its event carry.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use tug_api::quantity::Exact;
use tug_api::resource::pod_requests;

use super::EvictionThreshold;
use crate::config::{Signal, Threshold};
use crate::machine::binary_si;
use crate::node_status::{Pressure, amount};

/// Upstream's `nodeLowMessageFmt`.
const NODE_LOW_MESSAGE: &str = "The node was low on resource";
/// Keys of the annotations of an eviction event, as upstream's.
pub const OFFENDING_CONTAINERS_KEY: &str = "offending_containers";
pub const OFFENDING_CONTAINERS_USAGE_KEY: &str = "offending_containers_usage";
pub const OFFENDING_POD_KEY: &str = "offending_pod";
pub const OFFENDING_POD_USAGE_KEY: &str = "offending_pod_usage";
pub const STARVED_RESOURCE_KEY: &str = "starved_resource";

/// What one signal measured: what is left, of how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub available: u64,
    pub capacity: u64,
}

/// The signals observed at one moment.
pub type Observations = HashMap<Signal, Observation>;

/// The resource a signal is about (upstream's `signalToResource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Memory,
    EphemeralStorage,
    Inodes,
    Pids,
}

impl Resource {
    pub fn of(signal: Signal) -> Resource {
        match signal {
            Signal::MemoryAvailable => Resource::Memory,
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => Resource::EphemeralStorage,
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => Resource::Inodes,
            Signal::PidAvailable => Resource::Pids,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::EphemeralStorage => "ephemeral-storage",
            Resource::Inodes => "inodes",
            Resource::Pids => "pids",
        }
    }

    /// Bytes print as binary quantities (`51200Ki`), counts as decimal ones (`1k`), as the
    /// quantities upstream builds for them.
    fn format(self, value: u64) -> String {
        match self {
            Resource::Memory | Resource::EphemeralStorage => binary_si(value),
            Resource::Inodes | Resource::Pids => Exact::from_int(i64::try_from(value).unwrap_or(i64::MAX)).to_string(),
        }
    }
}

/// The node condition a signal sets (upstream's `signalToNodeCondition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    MemoryPressure,
    DiskPressure,
    PidPressure,
}

impl Condition {
    pub fn of(signal: Signal) -> Condition {
        match signal {
            Signal::MemoryAvailable => Condition::MemoryPressure,
            Signal::PidAvailable => Condition::PidPressure,
            _ => Condition::DiskPressure,
        }
    }
}

/// The indices of `candidates` (into `thresholds`) whose threshold is met by `observations`
/// (upstream's `thresholdsMet`). With `enforce_min_reclaim`, a threshold counts as met until
/// the signal is back above the threshold plus its minimum reclaim.
pub fn thresholds_met(
    thresholds: &[EvictionThreshold],
    candidates: impl IntoIterator<Item = usize>,
    observations: &Observations,
    enforce_min_reclaim: bool,
) -> Vec<usize> {
    candidates
        .into_iter()
        .filter(|&i| {
            let threshold = &thresholds[i];
            let Some(observed) = observations.get(&threshold.signal) else { return false };
            let mut quantity = amount(threshold.value, observed.capacity);
            if enforce_min_reclaim && let Some(min_reclaim) = threshold.min_reclaim {
                quantity = quantity.saturating_add(amount(min_reclaim, observed.capacity));
            }
            quantity > observed.available
        })
        .collect()
}

/// What the manager remembers between observations (upstream's `managerImpl` fields).
#[derive(Debug, Default)]
pub struct State {
    /// When each threshold now met was first seen met.
    thresholds_first_observed_at: HashMap<usize, Instant>,
    /// When each pressure condition was last seen.
    conditions_last_observed_at: HashMap<Condition, Instant>,
    /// The thresholds met (grace periods included) at the last observation, not yet resolved.
    thresholds_met: Vec<usize>,
}

/// The outcome of one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synchronized {
    /// The node's pressure conditions.
    pub pressure: Pressure,
    /// The thresholds met whose grace period passed, memory first: what to reclaim.
    pub thresholds_met: Vec<usize>,
}

impl State {
    /// Takes in one observation at `now` (upstream's `synchronize`, up to the eviction itself):
    /// a condition is reported while any threshold of it was met within `transition_period`;
    /// a threshold drives eviction once it has been met for its grace period.
    pub fn synchronize(
        &mut self,
        thresholds: &[EvictionThreshold],
        observations: &Observations,
        transition_period: Duration,
        now: Instant,
    ) -> Synchronized {
        let mut met = thresholds_met(thresholds, 0..thresholds.len(), observations, false);
        for i in thresholds_met(thresholds, self.thresholds_met.iter().copied(), observations, true) {
            if !met.contains(&i) {
                met.push(i);
            }
        }
        let first_observed_at: HashMap<usize, Instant> =
            met.iter().map(|&i| (i, self.thresholds_first_observed_at.get(&i).copied().unwrap_or(now))).collect();
        for &i in &met {
            self.conditions_last_observed_at.insert(Condition::of(thresholds[i].signal), now);
        }
        let recent = |condition: Condition| {
            self.conditions_last_observed_at
                .get(&condition)
                .is_some_and(|at| now.duration_since(*at) < transition_period)
        };
        let pressure = Pressure {
            memory: recent(Condition::MemoryPressure),
            disk: recent(Condition::DiskPressure),
            pid: recent(Condition::PidPressure),
        };
        let mut grace_met: Vec<usize> = met
            .into_iter()
            .filter(|i| now.duration_since(first_observed_at[i]) >= thresholds[*i].grace_period)
            .collect();
        // Upstream's `byEvictionPriority`: memory is reclaimed before anything else.
        grace_met.sort_by_key(|&i| thresholds[i].signal != Signal::MemoryAvailable);
        self.thresholds_first_observed_at = first_observed_at;
        self.thresholds_met = grace_met.clone();
        Synchronized { pressure, thresholds_met: grace_met }
    }
}

/// Disk space and inodes in use.
pub use tug_runtime::cri::FsUsage;

/// One container's usage (of the summary API's `ContainerStats`, what eviction reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub name: String,
    pub memory_working_set: Option<u64>,
    /// The container's writable layer.
    pub rootfs: Option<FsUsage>,
    pub logs: Option<FsUsage>,
}

/// One pod's usage (of the summary API's `PodStats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodStats {
    pub memory_working_set: Option<u64>,
    pub containers: Vec<ContainerStats>,
    /// Local ephemeral volumes (emptyDir on disk) by name.
    pub volumes: Vec<(String, FsUsage)>,
    pub processes: Option<u64>,
}

/// Pod stats by pod UID; a pod without an entry had none.
pub type StatsByUid = HashMap<String, PodStats>;

/// Which of a pod's disk usage counts for a disk signal (upstream's `fsStatsType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsStatsType {
    Root,
    Logs,
    LocalVolumeSource,
}

/// What counts for a disk signal (upstream's `buildSignalToRankFunc`): everything when images
/// share the node's filesystem; else logs and volumes for the node's, writable layers for the
/// image filesystem's.
pub fn fs_stats_to_measure(signal: Signal, dedicated_image_fs: bool) -> &'static [FsStatsType] {
    const ALL: &[FsStatsType] = &[FsStatsType::Root, FsStatsType::Logs, FsStatsType::LocalVolumeSource];
    match (signal, dedicated_image_fs) {
        (_, false) => ALL,
        (Signal::ImageFsAvailable | Signal::ImageFsInodesFree, true) => &[FsStatsType::Root],
        (_, true) => &[FsStatsType::Logs, FsStatsType::LocalVolumeSource],
    }
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

/// Upstream's `cmpBool`: `true` first.
fn cmp_bool(a: bool, b: bool) -> Ordering {
    b.cmp(&a)
}

/// Compares two pods by their stats; a pod without stats goes first.
fn by_stats(stats: &StatsByUid, p1: &Pod, p2: &Pod, cmp: impl Fn(&PodStats, &PodStats) -> Ordering) -> Ordering {
    match (stats.get(uid(p1)), stats.get(uid(p2))) {
        (Some(s1), Some(s2)) => cmp(s1, s2),
        (s1, s2) => cmp_bool(s1.is_none(), s2.is_none()),
    }
}

/// Lower priority first.
fn priority(p1: &Pod, p2: &Pod) -> Ordering {
    let of = |p: &Pod| p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
    of(p1).cmp(&of(p2))
}

/// A pod's disk usage of `resource` (bytes or inodes) counting `measured`.
fn pod_disk_usage(stats: &PodStats, resource: Resource, measured: &[FsStatsType]) -> u64 {
    let pick =
        |usage: &Option<FsUsage>| usage.map_or(0, |u| if resource == Resource::Inodes { u.inodes } else { u.bytes });
    let mut total = 0;
    for container in &stats.containers {
        if measured.contains(&FsStatsType::Root) {
            total += pick(&container.rootfs);
        }
        if measured.contains(&FsStatsType::Logs) {
            total += pick(&container.logs);
        }
    }
    if measured.contains(&FsStatsType::LocalVolumeSource) {
        total += stats.volumes.iter().map(|(_, usage)| pick(&Some(*usage))).sum::<u64>();
    }
    total
}

/// Orders `pods` for eviction under the pressure of `signal`, the first to evict first:
/// - memory: pods using more than they request, then lower priority, then the most used
///   above the request;
/// - disk: the same with ephemeral storage (or inodes) as `fs_stats_to_measure` counts it;
/// - process ids: lower priority, then more processes.
///
/// Pods without stats go first at each usage comparison, as upstream.
pub fn rank(signal: Signal, dedicated_image_fs: bool, pods: &mut [Arc<Pod>], stats: &StatsByUid) {
    let resource = Resource::of(signal);
    match resource {
        Resource::Memory => pods.sort_by(|p1, p2| {
            let usage = |s: &PodStats| i128::from(s.memory_working_set.unwrap_or(0));
            let request = |p: &Pod| i128::from(pod_requests(p, false).memory);
            by_stats(stats, p1, p2, |s1, s2| cmp_bool(usage(s1) > request(p1), usage(s2) > request(p2)))
                .then_with(|| priority(p1, p2))
                .then_with(|| {
                    by_stats(stats, p1, p2, |s1, s2| (usage(s2) - request(p2)).cmp(&(usage(s1) - request(p1))))
                })
        }),
        Resource::EphemeralStorage | Resource::Inodes => {
            let measured = fs_stats_to_measure(signal, dedicated_image_fs);
            let usage = |s: &PodStats| i128::from(pod_disk_usage(s, resource, measured));
            // Inodes have no request; the size comparison subtracts the storage request anyway,
            // as upstream's does.
            let exceed_request = |p: &Pod| match resource {
                Resource::Inodes => 0,
                _ => i128::from(pod_requests(p, false).ephemeral_storage),
            };
            let request = |p: &Pod| i128::from(pod_requests(p, false).ephemeral_storage);
            pods.sort_by(|p1, p2| {
                by_stats(stats, p1, p2, |s1, s2| {
                    cmp_bool(usage(s1) > exceed_request(p1), usage(s2) > exceed_request(p2))
                })
                .then_with(|| priority(p1, p2))
                .then_with(|| {
                    by_stats(stats, p1, p2, |s1, s2| (usage(s2) - request(p2)).cmp(&(usage(s1) - request(p1))))
                })
            });
        }
        Resource::Pids => pods.sort_by(|p1, p2| {
            priority(p1, p2).then_with(|| {
                by_stats(stats, p1, p2, |s1, s2| s2.processes.unwrap_or(0).cmp(&s1.processes.unwrap_or(0)))
            })
        }),
    }
}

/// The threshold quantity and the available amount of the first met threshold of `resource`
/// (upstream's `getThresholdMetInfo`), as they print in the message.
pub fn threshold_met_info(
    resource: Resource,
    thresholds: &[EvictionThreshold],
    met: &[usize],
    observations: &Observations,
) -> Option<(String, String)> {
    met.iter().map(|&i| &thresholds[i]).filter(|t| Resource::of(t.signal) == resource).find_map(|threshold| {
        let observed = observations.get(&threshold.signal)?;
        // The quantity prints in the format it was written in (`100Mi`, `100M`, `1k`); a
        // percentage becomes a binary quantity of bytes or items alike, as upstream's
        // `GetThresholdQuantity`.
        let quantity = match threshold.value {
            Threshold::Decimal(value) => Exact::from_int(i64::try_from(value).unwrap_or(i64::MAX)).to_string(),
            Threshold::Bytes(_) | Threshold::Fraction(_) => binary_si(amount(threshold.value, observed.capacity)),
        };
        Some((quantity, resource.format(observed.available)))
    })
}

/// The canonical form of a request as the API would print it, `0` without one.
fn request_of(container: &Container, resource: Resource) -> (String, f64) {
    let quantity =
        container.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get(resource.as_str()));
    match quantity {
        Some(q) => (
            Exact::parse(&q.0).map_or_else(|| q.0.clone(), |e| e.to_string()),
            tug_api::quantity::parse(&q.0).unwrap_or(0.0),
        ),
        None => ("0".to_owned(), 0.0),
    }
}

/// The message of an eviction and the annotations of its event (upstream's `evictionMessage`):
/// `The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki.
/// Container app was using 300Mi, request is 0, has larger consumption of memory. `
pub fn eviction_message(
    resource: Resource,
    pod: &Pod,
    stats: Option<&PodStats>,
    threshold: Option<(String, String)>,
) -> (String, BTreeMap<String, String>) {
    let resource_name = resource.as_str();
    let mut message = format!("{NODE_LOW_MESSAGE}: {resource_name}. ");
    if let Some((quantity, available)) = threshold {
        message += &format!("Threshold quantity: {quantity}, available: {available}. ");
    }
    let mut annotations = BTreeMap::new();
    let (Some(stats), Some(spec)) = (stats, pod.spec.as_ref()) else { return (message, annotations) };
    // Pod-level requests (PodLevelResources) are named for memory.
    let pod_request = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get(resource_name));
    if resource == Resource::Memory
        && let (Some(request), Some(usage)) = (pod_request, stats.memory_working_set)
    {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let request = Exact::parse(&request.0).map_or_else(|| request.0.clone(), |e| e.to_string());
        let usage = binary_si(usage);
        message +=
            &format!("Pod {name} was using {usage}, request is {request}, has larger consumption of {resource_name}. ");
        annotations.insert(OFFENDING_POD_KEY.to_owned(), name.to_owned());
        annotations.insert(OFFENDING_POD_USAGE_KEY.to_owned(), usage);
    }
    let (mut offending, mut usages) = (Vec::new(), Vec::new());
    for container_stats in &stats.containers {
        let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
        let Some(container) = containers.into_iter().find(|c| c.name == container_stats.name) else { continue };
        let usage = match resource {
            Resource::EphemeralStorage => match (container_stats.rootfs, container_stats.logs) {
                (Some(rootfs), Some(logs)) => Some(rootfs.bytes + logs.bytes),
                _ => None,
            },
            Resource::Memory => container_stats.memory_working_set,
            Resource::Inodes | Resource::Pids => None,
        };
        let (request, request_value) = request_of(container, resource);
        if let Some(usage) = usage.filter(|u| *u as f64 > request_value) {
            let usage = binary_si(usage);
            message += &format!(
                "Container {} was using {usage}, request is {request}, has larger consumption of {resource_name}. ",
                container.name
            );
            offending.push(container.name.clone());
            usages.push(usage);
        }
    }
    annotations.insert(OFFENDING_CONTAINERS_KEY.to_owned(), offending.join(","));
    annotations.insert(OFFENDING_CONTAINERS_USAGE_KEY.to_owned(), usages.join(","));
    annotations.insert(STARVED_RESOURCE_KEY.to_owned(), resource_name.to_owned());
    (message, annotations)
}

#[cfg(test)]
#[path = "helpers_tests.rs"]
mod tests;
