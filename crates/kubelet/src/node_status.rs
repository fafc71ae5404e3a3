//! The node's own object: registration of the Node and the periodic status update, as upstream's
//! `kubelet_node_status.go` and the node status setters do.
//!
//! The status (capacity and allocatable, addresses, nodeInfo, images, and the Ready,
//! MemoryPressure, DiskPressure and PIDPressure conditions) is computed from the machine every
//! 10 s (`nodeStatusUpdateFrequency`) and written when it changed, otherwise every 5 minutes
//! (`nodeStatusReportFrequency`); the Lease (see [`crate::nodelease`]) is the 10 s heartbeat.
//! Status goes through a strategic merge patch of `nodes/<name>/status` as upstream's
//! `PatchNodeStatus` does, so conditions other components own (NetworkUnavailable, a node
//! problem detector's) are kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Event, EventSource, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeSpec, NodeStatus, NodeSwapStatus, NodeSystemInfo, ObjectReference,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Config;
use crate::config::{EvictionThresholds, Threshold};
use crate::machine::{self, FsStats, MachineError, MachineInfo, PidStats, binary_si};
use tug_runtime::cri::RuntimeService;
use tug_runtime::{Image, ImageService, ImageServiceError};

/// The version the node reports as its kubelet's (the upstream release Tugboat follows).
pub const KUBELET_VERSION: &str = "v1.36.0";
/// How often the status is computed (upstream's `nodeStatusUpdateFrequency`).
const NODE_STATUS_UPDATE_FREQUENCY: Duration = Duration::from_secs(10);
/// How often the runtime's readiness is checked between status updates.
const RUNTIME_STATUS_FREQUENCY: Duration = Duration::from_secs(1);
/// How often an unchanged status is written anyway (upstream's `nodeStatusReportFrequency`).
const NODE_STATUS_REPORT_FREQUENCY: Duration = Duration::from_secs(5 * 60);
/// Attempts per update, each from a fresh read of the Node (upstream's `nodeStatusUpdateRetry`).
const NODE_STATUS_UPDATE_RETRY: usize = 5;
/// Images listed in the status, biggest first (upstream's `nodeStatusMaxImages`).
const MAX_IMAGES_IN_NODE_STATUS: usize = 50;
/// Names listed per image (upstream's `MaxNamesPerImageInNodeStatus`).
const MAX_NAMES_PER_IMAGE: usize = 5;
/// The annotation telling the attach/detach controller that it, not the kubelet, attaches
/// volumes for this node (upstream's kubelet sets it by default).
const CONTROLLER_MANAGED_ATTACH_ANNOTATION: &str = "volumes.kubernetes.io/controller-managed-attach-detach";

/// A threshold in bytes (or a count) for a capacity. A fraction is taken as the float32 upstream
/// parses percentages into (`int64(float64(capacity) * float64(percentage))`), so that
/// reservations come out to upstream's byte.
pub(crate) fn amount(threshold: Threshold, capacity: u64) -> u64 {
    match threshold {
        Threshold::Bytes(b) | Threshold::Decimal(b) => b,
        Threshold::Fraction(f) => ((capacity as f64) * f64::from(f as f32)) as u64,
    }
}

/// Whether `available` of `capacity` is below the threshold.
fn crossed(threshold: Threshold, available: u64, capacity: u64) -> bool {
    available < amount(threshold, capacity)
}

/// Errors of registration and status updates.
#[derive(Debug, thiserror::Error)]
pub enum NodeStatusError {
    #[error("{operation} node {node}: {source}")]
    Api {
        operation: &'static str,
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading the machine: {0}")]
    Machine(#[from] MachineError),
    #[error("listing images: {0}")]
    Images(#[from] ImageServiceError),
    #[error("machine inspection task failed")]
    Task(#[from] tokio::task::JoinError),
}

fn api_error(operation: &'static str, node: &str) -> impl FnOnce(kube::Error) -> NodeStatusError {
    let node = node.to_string();
    move |source| NodeStatusError::Api { operation, node, source }
}

/// What the status is computed from: one look at the machine and the image store.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    pub machine: MachineInfo,
    pub nodefs: FsStats,
    pub imagefs: FsStats,
    pub pids: PidStats,
    /// `None` when the image list could not be read: the previous list is kept.
    pub images: Option<Vec<Image>>,
    /// Why the runtime's network is not ready, when it is not (the Node is then not Ready).
    pub network_not_ready: Option<String>,
    /// `<name>://<version>` from the runtime's CRI `Version` (`containerd://1.6.20`), the Node's
    /// `containerRuntimeVersion` as upstream shows it.
    pub runtime_version: String,
    /// The eviction manager's pressure conditions (soft thresholds and the transition period
    /// included), once it has run; before, the hard thresholds against this observation.
    pub pressure: Option<Pressure>,
}

pub(crate) async fn observe(
    config: &Config,
    images: &dyn ImageService,
    runtime: &dyn RuntimeService,
) -> Result<Observed, NodeStatusError> {
    let image_dir = crate::image_gc_manager::image_fs_dir(config, runtime).await;
    let agent_dir = config.agent_dir.clone();
    let (machine, nodefs, imagefs, pids) = tokio::task::spawn_blocking(move || {
        Ok::<_, MachineError>((
            machine::machine_info()?,
            machine::fs_stats(&agent_dir)?,
            machine::fs_stats(&image_dir)?,
            machine::pid_stats()?,
        ))
    })
    .await??;
    let images = match images.list_images().await {
        Ok(list) => Some(list),
        Err(e) => {
            warn!(error = %e, "listing images for the node status failed");
            None
        }
    };
    let runtime_status = runtime.status().await;
    let network_not_ready = (!runtime_status.network_ready).then_some(runtime_status.network_message);
    let version = runtime.runtime_version();
    let runtime_version = format!("{}://{}", version.name, version.version);
    Ok(Observed { machine, nodefs, imagefs, pids, images, network_not_ready, runtime_version, pressure: None })
}

/// The labels the kubelet owns on its Node (upstream's `updateDefaultLabels` keeps them right on
/// an existing Node). The hostname label carries the node name, as with k3s, whose agent sets
/// the kubelet's hostname override to it.
fn default_labels(config: &Config) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", config.node_name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The Node as first registered (upstream's `initialNode`): default labels, then the
/// configured ones over them, the configured taints, and the attach/detach annotation. The
/// kubelet adds no not-ready taint: the node lifecycle controller does that from the
/// conditions.
pub(crate) fn initial_node(config: &Config) -> Node {
    let mut labels = default_labels(config);
    labels.extend(config.node_labels.iter().cloned());
    Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(CONTROLLER_MANAGED_ATTACH_ANNOTATION.to_string(), "true".to_string())])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!config.node_taints.is_empty()).then(|| config.node_taints.clone()),
            ..Default::default()
        }),
        status: None,
    }
}

fn quantity(s: impl Into<String>) -> Quantity {
    Quantity(s.into())
}

/// Capacity and allocatable (upstream's `GetNodeAllocatableAbsolute` with no kube or system
/// reservation: capacity minus the hard eviction thresholds for memory and the node filesystem,
/// and minus preallocated huge pages for memory).
pub(crate) fn resources(
    config: &Config,
    observed: &Observed,
) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let m = &observed.machine;
    let mut capacity = BTreeMap::from([
        ("cpu".to_string(), quantity(m.num_cpus.to_string())),
        ("memory".to_string(), quantity(binary_si(m.memory_capacity))),
        ("pods".to_string(), quantity(config.max_pods.to_string())),
        ("ephemeral-storage".to_string(), quantity(binary_si(observed.nodefs.capacity))),
    ]);
    for &(page_size, total) in &m.hugepages {
        capacity.insert(machine::hugepages_resource(page_size), quantity(binary_si(total)));
    }
    let mut allocatable = capacity.clone();
    let hugepages: u64 = m.hugepages.iter().map(|&(_, total)| total).sum();
    let hard = &config.eviction_hard;
    let memory_reserved = amount(hard.memory_available, m.memory_capacity);
    let memory = m.memory_capacity.saturating_sub(memory_reserved).saturating_sub(hugepages);
    allocatable.insert("memory".into(), quantity(binary_si(memory)));
    let storage_reserved = amount(hard.nodefs_available, observed.nodefs.capacity);
    let storage = observed.nodefs.capacity.saturating_sub(storage_reserved);
    allocatable.insert("ephemeral-storage".into(), quantity(binary_si(storage)));
    (capacity, allocatable)
}

/// Whether each eviction signal is past its threshold (upstream's eviction manager's view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

pub(crate) fn pressure(observed: &Observed, hard: &EvictionThresholds) -> Pressure {
    let fs_low = |fs: &FsStats, bytes: Threshold, inodes: Threshold| {
        crossed(bytes, fs.available, fs.capacity) || (fs.inodes > 0 && crossed(inodes, fs.inodes_free, fs.inodes))
    };
    let m = &observed.machine;
    Pressure {
        memory: crossed(hard.memory_available, m.memory_available, m.memory_capacity),
        disk: fs_low(&observed.nodefs, hard.nodefs_available, hard.nodefs_inodes_free)
            || fs_low(&observed.imagefs, hard.imagefs_available, hard.imagefs_inodes_free),
        pid: crossed(hard.pid_available, observed.pids.available(), observed.pids.max),
    }
}

/// The conditions this agent owns, in upstream's order.
fn own_conditions(
    pressure: Pressure,
    network_not_ready: Option<&str>,
) -> [(&'static str, bool, &'static str, String); 4] {
    let pick = |on: bool, yes: (&'static str, &'static str), no: (&'static str, &'static str)| {
        if on { (true, yes.0, yes.1) } else { (false, no.0, no.1) }
    };
    let (mem, mem_reason, mem_message) = pick(
        pressure.memory,
        ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
        ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    );
    let (disk, disk_reason, disk_message) = pick(
        pressure.disk,
        ("KubeletHasDiskPressure", "kubelet has disk pressure"),
        ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    );
    let (pid, pid_reason, pid_message) = pick(
        pressure.pid,
        ("KubeletHasInsufficientPID", "kubelet has insufficient PID available"),
        ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    );
    // Upstream's runtime state check words a network that is not ready this way.
    let ready = match network_not_ready {
        None => (true, "KubeletReady", "kubelet is posting ready status".to_owned()),
        Some(why) => (
            false,
            "KubeletNotReady",
            format!(
                "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: {why}"
            ),
        ),
    };
    [
        ("MemoryPressure", mem, mem_reason, mem_message.to_owned()),
        ("DiskPressure", disk, disk_reason, disk_message.to_owned()),
        ("PIDPressure", pid, pid_reason, pid_message.to_owned()),
        ("Ready", ready.0, ready.1, ready.2),
    ]
}

fn condition_status(on: bool) -> String {
    if on { "True" } else { "False" }.to_string()
}

/// The images of the status: the biggest 50, each with its digests then tags, at most 5 names.
fn status_images(images: &[Image]) -> Vec<ContainerImage> {
    let mut sorted: Vec<&Image> = images.iter().collect();
    // Ties broken by ID so that the list, and so the status, is stable between updates.
    sorted.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.id.cmp(&b.id)));
    sorted
        .into_iter()
        .take(MAX_IMAGES_IN_NODE_STATUS)
        .map(|image| {
            let mut names: Vec<String> = image.repo_digests.iter().chain(&image.repo_tags).cloned().collect();
            names.truncate(MAX_NAMES_PER_IMAGE);
            ContainerImage { names: Some(names), size_bytes: Some(image.size as i64) }
        })
        .collect()
}

/// The status to post, built over `previous` (the Node's current status): conditions of other
/// owners are kept in place, ours get a fresh heartbeat and keep their transition time unless
/// their status changed.
pub(crate) fn node_status(
    config: &Config,
    observed: &Observed,
    previous: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let (capacity, allocatable) = resources(config, observed);
    let mut conditions: Vec<NodeCondition> = previous.and_then(|s| s.conditions.clone()).unwrap_or_default();
    let pressure = observed.pressure.unwrap_or_else(|| pressure(observed, &config.eviction_hard));
    let own = own_conditions(pressure, observed.network_not_ready.as_deref());
    for (kind, on, reason, message) in own {
        let status = condition_status(on);
        let fresh = NodeCondition {
            type_: kind.to_string(),
            status: status.clone(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(Time(now)),
        };
        match conditions.iter_mut().find(|c| c.type_ == kind) {
            Some(existing) => {
                let transition = if existing.status == status { existing.last_transition_time.clone() } else { None };
                *existing =
                    NodeCondition { last_transition_time: transition.or(fresh.last_transition_time.clone()), ..fresh };
            }
            None => conditions.push(fresh),
        }
    }
    let m = &observed.machine;
    let images = match &observed.images {
        Some(list) => Some(status_images(list)),
        None => previous.and_then(|s| s.images.clone()),
    };
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        conditions: Some(conditions),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: config.node_ip.to_string() },
            NodeAddress { type_: "Hostname".into(), address: config.hostname.clone() },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(config.port) }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: m.boot_id.clone(),
            container_runtime_version: observed.runtime_version.clone(),
            kernel_version: m.kernel_version.clone(),
            // Deprecated upstream (kube-proxy's version is not the kubelet's to know): empty.
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: m.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: m.os_image.clone(),
            swap: Some(NodeSwapStatus { capacity: Some(m.swap_capacity as i64) }),
            system_uuid: m.system_uuid.clone(),
        }),
        images,
        volumes_in_use: crate::volumemanager::csi::volumes_in_use(
            config,
            previous.and_then(|s| s.volumes_in_use.as_deref()),
        ),
        ..previous.cloned().unwrap_or_default()
    }
}

/// Whether anything but heartbeat times differs (upstream's `nodeStatusHasChanged`).
pub(crate) fn status_changed(old: &NodeStatus, new: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    };
    strip(old) != strip(new)
}

/// The strategic merge patch that turns the Node's status into `new`: conditions merge by
/// type in `new`'s order, addresses are replaced whole (upstream's `PatchNodeStatus` does the
/// same with `$patch: replace`, since merging addresses by type would keep stale ones).
pub(crate) fn status_patch(new: &NodeStatus) -> Value {
    let mut status = serde_json::to_value(new).unwrap_or_else(|_| json!({}));
    if let Some(obj) = status.as_object_mut() {
        let order: Vec<Value> = new.conditions.iter().flatten().map(|c| json!({ "type": c.type_ })).collect();
        obj.insert("$setElementOrder/conditions".into(), Value::Array(order));
        if let Some(Value::Array(addresses)) = obj.get_mut("addresses") {
            addresses.insert(0, json!({ "$patch": "replace" }));
        }
    }
    json!({ "status": status })
}

/// The events a status change is announced with (upstream's setters record them when a
/// condition first appears or changes): `Node <name> status is now: <reason>`.
pub(crate) fn condition_events(previous: Option<&NodeStatus>, new: &NodeStatus) -> Vec<&'static str> {
    let status_of = |s: Option<&NodeStatus>, kind: &str| {
        s.and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
            .map(|c| c.status.clone())
    };
    [
        ("MemoryPressure", "NodeHasInsufficientMemory", "NodeHasSufficientMemory"),
        ("DiskPressure", "NodeHasDiskPressure", "NodeHasNoDiskPressure"),
        ("PIDPressure", "NodeHasInsufficientPID", "NodeHasSufficientPID"),
        ("Ready", "NodeReady", "NodeNotReady"),
    ]
    .into_iter()
    .filter_map(|(kind, when_true, when_false)| {
        let now = status_of(Some(new), kind)?;
        (status_of(previous, kind).as_ref() != Some(&now)).then_some(if now == "True" { when_true } else { when_false })
    })
    .collect()
}

/// Writes an event of `type_` (`Normal`, `Warning`) about the node, as the kubelet's recorder
/// does (namespace `default`, the node referenced by name, source `kubelet` on this host).
/// Failures are only logged.
pub(crate) async fn record_node_event(
    client: &kube::Client,
    config: &Config,
    type_: &str,
    reason: &str,
    message: &str,
) {
    let now = Timestamp::now();
    let name = &config.node_name;
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some("default".into()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Node".into()),
            name: Some(name.clone()),
            // Upstream's kubelet refers to its node with the name as UID.
            uid: Some(name.clone()),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(type_.into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        source: Some(EventSource { component: Some("kubelet".into()), host: Some(name.clone()) }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(name.clone()),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    if let Err(e) = events.create(&PostParams::default(), &event).await {
        debug!(node = %name, reason, error = %e, "recording a node event failed");
    }
}

async fn record_condition_events(
    client: &kube::Client,
    config: &Config,
    previous: Option<&NodeStatus>,
    new: &NodeStatus,
) {
    for reason in condition_events(previous, new) {
        let message = format!("Node {} status is now: {reason}", config.node_name);
        record_node_event(client, config, "Normal", reason, &message).await;
    }
}

/// The node's status as the agent last computed it (conditions, allocatable), whether or not
/// it was written: pod admission judges new pods against it. Beside it, the pressure the
/// eviction manager last concluded, which the next status reports.
#[derive(Debug, Default)]
pub struct LatestNodeStatus(std::sync::RwLock<Option<NodeStatus>>, std::sync::RwLock<Option<Pressure>>);

impl LatestNodeStatus {
    pub fn get(&self) -> Option<NodeStatus> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, status: NodeStatus) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    pub(crate) fn pressure(&self) -> Option<Pressure> {
        *self.1.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_pressure(&self, pressure: Pressure) {
        *self.1.write().unwrap_or_else(|e| e.into_inner()) = Some(pressure);
    }
}

/// Registers the Node: creates it, or, when a Node of this name exists (from an earlier run of
/// this agent, or made by hand), reconciles the labels and annotation the kubelet owns on it as
/// upstream's `tryRegisterWithAPIServer` does; then posts the full status once.
///
/// Like upstream's `registerWithAPIServer`, it keeps trying while the API server cannot be
/// reached or fails (backing off from 100 ms to 7 s); an answer that refuses the request (403,
/// 422) is returned as an error.
pub async fn register(
    client: &kube::Client,
    config: &Config,
    images: &dyn ImageService,
    runtime: &dyn RuntimeService,
    latest: &LatestNodeStatus,
) -> Result<(), NodeStatusError> {
    let mut step = Duration::from_millis(100);
    loop {
        match try_register(client, config, images, runtime, latest).await {
            Err(NodeStatusError::Api { source, .. }) if transient(&source) => {
                warn!(node = %config.node_name, error = %source, retry_in = ?step, "registering the node failed");
                tokio::time::sleep(step).await;
                step = (step * 2).min(Duration::from_secs(7));
            }
            result => return result,
        }
    }
}

/// Whether an API error may go away by itself: no answer at all, a server error, throttling.
fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

async fn try_register(
    client: &kube::Client,
    config: &Config,
    images: &dyn ImageService,
    runtime: &dyn RuntimeService,
    latest: &LatestNodeStatus,
) -> Result<(), NodeStatusError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = config.node_name.as_str();
    let initial = initial_node(config);
    let node = match nodes.create(&PostParams::default(), &initial).await {
        Ok(node) => {
            info!(node = name, "registered the node");
            node
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            info!(node = name, "node was previously registered");
            let existing = nodes.get(name).await.map_err(api_error("reading", name))?;
            reconcile_existing(&nodes, config, existing).await?
        }
        Err(e) => return Err(api_error("creating", name)(e)),
    };
    let observed = observe(config, images, runtime).await?;
    let status = node_status(config, &observed, node.status.as_ref(), Timestamp::now());
    latest.set(status.clone());
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(status_patch(&status)))
        .await
        .map_err(api_error("posting the status of", name))?;
    record_node_event(client, config, "Normal", "Starting", "Starting kubelet.").await;
    record_condition_events(client, config, node.status.as_ref(), &status).await;
    Ok(())
}

/// Puts the kubelet's default labels and the attach/detach annotation back on an existing Node
/// when they differ (the rest of its metadata and spec belong to the user and controllers).
async fn reconcile_existing(nodes: &Api<Node>, config: &Config, existing: Node) -> Result<Node, NodeStatusError> {
    let name = config.node_name.as_str();
    let labels = existing.metadata.labels.clone().unwrap_or_default();
    let wrong_labels: BTreeMap<String, String> =
        default_labels(config).into_iter().filter(|(k, v)| labels.get(k) != Some(v)).collect();
    let annotation_ok = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONTROLLER_MANAGED_ATTACH_ANNOTATION))
        .is_some_and(|v| v == "true");
    if wrong_labels.is_empty() && annotation_ok {
        return Ok(existing);
    }
    let patch = json!({ "metadata": {
        "labels": wrong_labels,
        "annotations": { CONTROLLER_MANAGED_ATTACH_ANNOTATION: "true" },
    }});
    nodes.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.map_err(api_error("reconciling", name))
}

/// Keeps the Node's status and Lease fresh until `shutdown` (upstream's `syncNodeStatus` loop
/// and node lease controller). A Node deleted from under the agent is registered again.
pub async fn run(
    client: kube::Client,
    config: Arc<Config>,
    images: Arc<dyn ImageService>,
    runtime: Arc<dyn RuntimeService>,
    latest: Arc<LatestNodeStatus>,
    shutdown: CancellationToken,
) {
    let lease = crate::nodelease::run(client.clone(), config.node_name.clone(), shutdown.clone());
    let status = status_loop(client, config, images, runtime, latest, shutdown);
    tokio::join!(lease, status);
}

async fn status_loop(
    client: kube::Client,
    config: Arc<Config>,
    images: Arc<dyn ImageService>,
    runtime: Arc<dyn RuntimeService>,
    latest: Arc<LatestNodeStatus>,
    shutdown: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    // `register` has just posted a full status.
    let mut last_report = Instant::now();
    let mut last_update = Instant::now();
    // Not what the runtime says now: `register` posted an earlier look, and the network may
    // have become ready since (the podCIDR arrives milliseconds after registration). Starting
    // from "not ready" makes a ready network post at the first check; at worst one extra update.
    let mut network_ready = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RUNTIME_STATUS_FREQUENCY) => {}
        }
        // The runtime's readiness is looked at more often than the rest, so that the Node turns
        // Ready as soon as the pod network is (upstream's runtime state check runs every 5 s).
        let ready_now = runtime.status().await.network_ready;
        if last_update.elapsed() < NODE_STATUS_UPDATE_FREQUENCY && ready_now == network_ready {
            continue;
        }
        network_ready = ready_now;
        last_update = Instant::now();
        let mut result = Ok(false);
        for _ in 0..NODE_STATUS_UPDATE_RETRY {
            result =
                try_update(&client, &nodes, &config, images.as_ref(), runtime.as_ref(), &latest, last_report).await;
            if result.is_ok() {
                break;
            }
        }
        match result {
            Ok(true) => last_report = Instant::now(),
            Ok(false) => {}
            Err(e) => warn!(node = %config.node_name, error = %e, "updating the node status failed"),
        }
    }
}

/// One update: reads the Node, computes its status and patches it when it changed or the
/// report interval passed. Returns whether it wrote.
async fn try_update(
    client: &kube::Client,
    nodes: &Api<Node>,
    config: &Config,
    images: &dyn ImageService,
    runtime: &dyn RuntimeService,
    latest: &LatestNodeStatus,
    last_report: Instant,
) -> Result<bool, NodeStatusError> {
    let name = config.node_name.as_str();
    let node = match nodes.get_opt(name).await.map_err(api_error("reading", name))? {
        Some(node) => node,
        None => {
            warn!(node = name, "the node object is gone; registering it again");
            register(client, config, images, runtime, latest).await?;
            return Ok(true);
        }
    };
    let mut observed = observe(config, images, runtime).await?;
    observed.pressure = latest.pressure();
    let previous = node.status.clone().unwrap_or_default();
    let status = node_status(config, &observed, Some(&previous), Timestamp::now());
    latest.set(status.clone());
    if last_report.elapsed() < NODE_STATUS_REPORT_FREQUENCY && !status_changed(&previous, &status) {
        debug!(node = name, "node status unchanged");
        return Ok(false);
    }
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(status_patch(&status)))
        .await
        .map_err(api_error("patching the status of", name))?;
    record_condition_events(client, config, Some(&previous), &status).await;
    debug!(node = name, "node status posted");
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    pub(crate) fn config() -> Config {
        Config {
            node_name: "node-a".into(),
            node_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            hostname: "host-a".into(),
            cluster_dns: vec![],
            node_labels: vec![("tier".into(), "edge".into())],
            node_taints: vec![k8s_openapi::api::core::v1::Taint {
                key: "dedicated".into(),
                value: Some("x".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }],
            ..Config::for_tests(std::path::Path::new("/var/lib/tug/agent"))
        }
    }

    fn observed() -> Observed {
        Observed {
            machine: MachineInfo {
                num_cpus: 2,
                memory_capacity: 24519812 * 1024,
                memory_available: 8 << 30,
                swap_capacity: 0,
                hugepages: vec![(2 << 20, 0), (1 << 30, 0)],
                machine_id: "m1".into(),
                system_uuid: "m1".into(),
                boot_id: "b1".into(),
                kernel_version: "6.18.0".into(),
                os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            },
            nodefs: FsStats { capacity: 100 << 30, available: 50 << 30, inodes: 1000, inodes_free: 900 },
            imagefs: FsStats { capacity: 100 << 30, available: 50 << 30, inodes: 1000, inodes_free: 900 },
            pids: PidStats { max: 4_194_304, running: 300 },
            images: Some(vec![
                Image {
                    id: "sha256:small".into(),
                    repo_tags: vec!["r/small:1".into()],
                    repo_digests: vec!["r/small@sha256:aa".into()],
                    size: 10,
                    user: None,
                },
                Image {
                    id: "sha256:big".into(),
                    repo_tags: vec!["r/big:1".into()],
                    repo_digests: vec![],
                    size: 1000,
                    user: None,
                },
            ]),
            network_not_ready: None,
            runtime_version: "containerd://1.6.20".into(),
            pressure: None,
        }
    }

    #[test]
    fn a_node_whose_pod_network_is_not_ready_is_not_ready_as_upstream_words_it() {
        let observed = Observed { network_not_ready: Some("the node has no podCIDR yet".into()), ..observed() };
        let status = node_status(&config(), &observed, None, at("2026-01-01T00:00:00Z"));
        let ready = cond(&status, "Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("KubeletNotReady")));
        assert_eq!(
            ready.message.as_deref(),
            Some(
                "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: the node has no podCIDR yet"
            )
        );
        assert_eq!(cond(&status, "DiskPressure").status, "False");
    }

    fn cond<'a>(s: &'a NodeStatus, kind: &str) -> &'a NodeCondition {
        s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == kind).unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_initial_node_carries_default_and_configured_labels_and_taints_only() {
        let node = initial_node(&config());
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "node-a");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["beta.kubernetes.io/arch"], "amd64");
        assert_eq!(labels["tier"], "edge");
        assert!(!labels.keys().any(|k| k.starts_with("node-role.kubernetes.io/")));
        let taints = node.spec.unwrap().taints.unwrap();
        assert_eq!(taints.len(), 1, "no not-ready taint from the kubelet: {taints:?}");
        assert_eq!(taints[0].key, "dedicated");
        assert_eq!(node.metadata.annotations.unwrap()[CONTROLLER_MANAGED_ATTACH_ANNOTATION], "true");
    }

    #[test]
    fn allocatable_is_capacity_minus_the_hard_eviction_thresholds() {
        let (capacity, allocatable) = resources(&config(), &observed());
        assert_eq!(capacity["cpu"].0, "2");
        assert_eq!(capacity["memory"].0, "24519812Ki");
        assert_eq!(capacity["pods"].0, "110");
        assert_eq!(capacity["ephemeral-storage"].0, "100Gi");
        assert_eq!(capacity["hugepages-2Mi"].0, "0");
        assert_eq!(capacity["hugepages-1Gi"].0, "0");
        assert_eq!(allocatable["memory"].0, "24417412Ki");
        assert_eq!(allocatable["cpu"].0, "2");
        // 100Gi minus int64(100Gi * float64(float32(0.1))): upstream's figure to the byte.
        assert_eq!(allocatable["ephemeral-storage"].0, "96636764000");
    }

    #[test]
    fn the_status_reports_a_healthy_node_ready() {
        let now = at("2026-01-01T00:00:00Z");
        let status = node_status(&config(), &observed(), None, now);
        let types: Vec<_> = status.conditions.as_ref().unwrap().iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]);
        let ready = cond(&status, "Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("True", Some("KubeletReady")));
        assert_eq!(ready.message.as_deref(), Some("kubelet is posting ready status"));
        assert_eq!(cond(&status, "MemoryPressure").reason.as_deref(), Some("KubeletHasSufficientMemory"));
        assert_eq!(cond(&status, "DiskPressure").status, "False");
        assert_eq!(cond(&status, "PIDPressure").reason.as_deref(), Some("KubeletHasSufficientPID"));
        let addresses = status.addresses.unwrap();
        assert_eq!((addresses[0].type_.as_str(), addresses[0].address.as_str()), ("InternalIP", "10.0.0.5"));
        assert_eq!((addresses[1].type_.as_str(), addresses[1].address.as_str()), ("Hostname", "host-a"));
        let info = status.node_info.unwrap();
        assert_eq!(info.kubelet_version, "v1.36.0");
        assert_eq!(info.os_image, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(info.container_runtime_version, "containerd://1.6.20", "from the runtime's CRI Version");
        assert_eq!(status.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port, 10250);
        let images = status.images.unwrap();
        assert_eq!(images[0].names.as_ref().unwrap(), &["r/big:1"]);
        assert_eq!(images[1].names.as_ref().unwrap(), &["r/small@sha256:aa", "r/small:1"]);
    }

    #[test]
    fn pressure_conditions_follow_the_eviction_thresholds() {
        let mut o = observed();
        o.machine.memory_available = 50 << 20;
        o.imagefs.available = 14 << 30; // under 15% of 100Gi
        o.pids.running = o.pids.max - 10;
        let status = node_status(&config(), &o, None, Timestamp::now());
        let memory = cond(&status, "MemoryPressure");
        assert_eq!((memory.status.as_str(), memory.reason.as_deref()), ("True", Some("KubeletHasInsufficientMemory")));
        assert_eq!(cond(&status, "DiskPressure").reason.as_deref(), Some("KubeletHasDiskPressure"));
        assert_eq!(cond(&status, "PIDPressure").reason.as_deref(), Some("KubeletHasInsufficientPID"));
        assert_eq!(cond(&status, "Ready").status, "True");
        let mut o = observed();
        o.nodefs.inodes_free = 10;
        assert!(pressure(&o, &EvictionThresholds::default()).disk);
    }

    #[test]
    fn the_eviction_managers_pressure_wins_over_the_raw_thresholds() {
        // Relieved machine, but still within the manager's transition period: pressure stays.
        let held = Observed { pressure: Some(Pressure { memory: false, disk: true, pid: false }), ..observed() };
        let status = node_status(&config(), &held, None, Timestamp::now());
        assert_eq!(cond(&status, "DiskPressure").status, "True");
        assert_eq!(cond(&status, "MemoryPressure").status, "False");
    }

    #[test]
    fn transition_times_change_only_with_the_status_and_other_conditions_stay() {
        let first = at("2026-01-01T00:00:00Z");
        let mut previous = node_status(&config(), &observed(), None, first);
        previous.conditions.as_mut().unwrap().insert(
            0,
            NodeCondition { type_: "NetworkUnavailable".into(), status: "False".into(), ..Default::default() },
        );
        let later = at("2026-01-01T00:00:10Z");
        let mut o = observed();
        o.machine.memory_available = 1;
        let next = node_status(&config(), &o, Some(&previous), later);
        assert_eq!(next.conditions.as_ref().unwrap()[0].type_, "NetworkUnavailable");
        let ready = cond(&next, "Ready");
        assert_eq!(ready.last_transition_time, Some(Time(first)));
        assert_eq!(ready.last_heartbeat_time, Some(Time(later)));
        assert_eq!(cond(&next, "MemoryPressure").last_transition_time, Some(Time(later)));
    }

    #[test]
    fn a_heartbeat_alone_is_no_change() {
        let previous = node_status(&config(), &observed(), None, at("2026-01-01T00:00:00Z"));
        let same = node_status(&config(), &observed(), Some(&previous), at("2026-01-01T00:00:10Z"));
        assert!(!status_changed(&previous, &same));
        let mut o = observed();
        o.images = Some(vec![]);
        let changed = node_status(&config(), &o, Some(&previous), at("2026-01-01T00:00:10Z"));
        assert!(status_changed(&previous, &changed));
    }

    #[test]
    fn the_status_patch_merges_conditions_and_replaces_addresses() {
        let status = node_status(&config(), &observed(), None, Timestamp::now());
        let patch = status_patch(&status);
        let s = &patch["status"];
        assert_eq!(s["$setElementOrder/conditions"][3], json!({"type": "Ready"}));
        assert_eq!(s["addresses"][0], json!({"$patch": "replace"}));
        assert_eq!(s["addresses"][1]["type"], "InternalIP");
        assert_eq!(s["capacity"]["memory"], "24519812Ki");
    }

    #[test]
    fn without_thresholds_a_full_disk_is_no_pressure_and_nothing_is_reserved() {
        let mut o = observed();
        o.nodefs.available = 1;
        o.imagefs.available = 1;
        let none = EvictionThresholds {
            memory_available: Threshold::Bytes(0),
            nodefs_available: Threshold::Bytes(0),
            imagefs_available: Threshold::Bytes(0),
            ..EvictionThresholds::default()
        };
        assert!(!pressure(&o, &none).disk);
        assert!(pressure(&o, &EvictionThresholds::default()).disk);
        let (capacity, allocatable) = resources(&Config { eviction_hard: none, ..config() }, &o);
        assert_eq!(capacity["memory"], allocatable["memory"]);
        assert_eq!(capacity["ephemeral-storage"], allocatable["ephemeral-storage"]);
    }

    #[test]
    fn condition_changes_are_announced_with_upstream_event_reasons() {
        let first = node_status(&config(), &observed(), None, Timestamp::now());
        assert_eq!(
            condition_events(None, &first),
            ["NodeHasSufficientMemory", "NodeHasNoDiskPressure", "NodeHasSufficientPID", "NodeReady"]
        );
        let again = node_status(&config(), &observed(), Some(&first), Timestamp::now());
        assert!(condition_events(Some(&first), &again).is_empty());
        let mut o = observed();
        o.machine.memory_available = 0;
        let low = node_status(&config(), &o, Some(&first), Timestamp::now());
        assert_eq!(condition_events(Some(&first), &low), ["NodeHasInsufficientMemory"]);
    }

    #[test]
    fn at_most_fifty_images_and_five_names_each_are_reported() {
        let many: Vec<Image> = (0..60)
            .map(|i| Image {
                id: format!("sha256:{i}"),
                repo_tags: (0..7).map(|t| format!("r/i{i}:{t}")).collect(),
                repo_digests: vec![],
                size: i,
                user: None,
            })
            .collect();
        let listed = status_images(&many);
        assert_eq!(listed.len(), 50);
        assert_eq!(listed[0].size_bytes, Some(59));
        assert_eq!(listed[0].names.as_ref().unwrap().len(), 5);
    }
}
