//! A simulated node's own objects: its Node (registered once, status refreshed like a kubelet's)
//! and its Lease in `kube-node-lease` (renewed every 10 s, as the kubelet's node lease is).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{DaemonEndpoint, NodeSystemInfo};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::ipam::PodNetworks;
use crate::{ANNOTATION_SIMULATED, Config};

/// How often a Lease is renewed (the kubelet's default).
const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// The Lease duration the kubelet writes (`nodeLeaseDurationSeconds`).
const LEASE_DURATION_SECONDS: i32 = 40;
/// Node status is re-posted every this many lease renewals (5 minutes), as the kubelet re-posts
/// an unchanged status every `nodeStatusReportFrequency`.
const STATUS_EVERY_RENEWALS: u32 = 30;
/// Nodes registered (or removed) at once.
pub const REGISTER_CONCURRENCY: usize = 32;
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The resources every simulated node offers, as quantity strings.
#[derive(Debug, Clone)]
pub struct NodeShape {
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    pub ephemeral_storage: String,
}

impl Default for NodeShape {
    fn default() -> Self {
        NodeShape { cpu: "16".into(), memory: "64Gi".into(), pods: "110".into(), ephemeral_storage: "100Gi".into() }
    }
}

/// Node `index`'s InternalIP: 172.16.0.1 onwards, never a real host's loopback.
pub(crate) fn node_address(index: usize) -> String {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + index as u32).to_string()
}

fn node_object(config: &Config, index: usize, name: &str) -> Node {
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if config.zones > 0 {
        labels.insert("topology.kubernetes.io/zone".into(), format!("zone-{}", index % config.zones));
    }
    labels.extend(config.labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_SIMULATED.to_string(), "true".to_string()),
                ("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!config.taints.is_empty()).then(|| config.taints.clone()),
            ..Default::default()
        }),
        status: None,
    }
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> NodeCondition {
    NodeCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// The status a healthy kubelet posts. Transition times of conditions that did not change are
/// kept from `previous`.
fn node_status(config: &Config, index: usize, name: &str, previous: Option<&NodeStatus>) -> NodeStatus {
    let now = Timestamp::now();
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(config.shape.cpu.clone())),
        ("memory".to_string(), Quantity(config.shape.memory.clone())),
        ("pods".to_string(), Quantity(config.shape.pods.clone())),
        ("ephemeral-storage".to_string(), Quantity(config.shape.ephemeral_storage.clone())),
    ]);
    let mut conditions = vec![
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
            now,
        ),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", now),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available", now),
        condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", now),
    ];
    for c in &mut conditions {
        let before = previous.and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|p| p.type_ == c.type_));
        if let Some(before) = before
            && before.status == c.status
        {
            c.last_transition_time = before.last_transition_time.clone();
        }
    }
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(conditions),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: node_address(index) },
            NodeAddress { type_: "Hostname".into(), address: name.to_string() },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }) }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: format!("sim-boot-{index}"),
            container_runtime_version: "sim://1.0.0".into(),
            kernel_version: "simulated".into(),
            kube_proxy_version: String::new(),
            kubelet_version: "v1.36.0-tug-sim".into(),
            machine_id: format!("sim-machine-{index}"),
            operating_system: "linux".into(),
            os_image: "Tugboat simulated node".into(),
            system_uuid: format!("sim-uuid-{index}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the Node (or takes over an existing one of that name), posts its status and its
/// first Lease.
pub async fn register(
    client: &Client,
    config: &Config,
    index: usize,
    name: &str,
    nets: &PodNetworks,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = match nodes.create(&PostParams::default(), &node_object(config, index, name)).await {
        Ok(node) => node,
        Err(kube::Error::Api(e)) if e.code == 409 => nodes.get(name).await?,
        Err(e) => return Err(e),
    };
    let node = post_status(&nodes, config, index, &node).await?;
    nets.set_range(name, index, node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()));
    renew_lease(client, &node).await
}

async fn post_status(nodes: &Api<Node>, config: &Config, index: usize, node: &Node) -> Result<Node, kube::Error> {
    let name = node.name_any();
    let status = node_status(config, index, &name, node.status.as_ref());
    nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await
}

/// Renews the node's Lease, creating it (owned by the Node, as the kubelet does) when missing.
async fn renew_lease(client: &Client, node: &Node) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let name = node.name_any();
    let now = MicroTime(Timestamp::now());
    let renew =
        json!({ "spec": { "holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": now } });
    match leases.patch(&name, &PatchParams::default(), &Patch::Merge(renew)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.clone(),
                        uid: node.uid().unwrap_or_default(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Keeps one node alive until `shutdown`: renews its Lease every 10 s (one request, as the
/// kubelet's lease controller) and re-posts its status every 5 minutes from the cached Node.
pub async fn heartbeat(
    client: Client,
    config: Config,
    index: usize,
    name: String,
    nodes: Store<Node>,
    shutdown: CancellationToken,
) {
    let api: Api<Node> = Api::all(client.clone());
    // Spread the nodes' renewals over the interval instead of renewing them all at once.
    let mut delay = LEASE_RENEW_INTERVAL.mul_f64(fastrand::f64());
    for tick in 1u32.. {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = LEASE_RENEW_INTERVAL;
        let Some(node) = nodes.get(&ObjectRef::new(&name)) else { continue };
        if let Err(e) = renew_lease(&client, &node).await {
            warn!(node = %name, error = %e, "renewing the node lease failed");
        }
        if tick % STATUS_EVERY_RENEWALS == 0
            && let Err(e) = post_status(&api, &config, index, &node).await
        {
            warn!(node = %name, error = %e, "posting the node status failed");
        }
        debug!(node = %name, "heartbeat");
    }
}

/// Watches the simulated nodes: picks up the podCIDR the node IPAM controller assigns, and
/// reports a node Ready again at once when something (the node lifecycle controller, after this
/// process was paused) marked it otherwise, as a kubelet does. Fills `writer` for the
/// heartbeats.
pub async fn watch(
    client: Client,
    config: Config,
    indexes: Arc<HashMap<String, usize>>,
    nets: Arc<PodNetworks>,
    writer: Writer<Node>,
    shutdown: CancellationToken,
) {
    let api: Api<Node> = Api::all(client);
    let mut nodes =
        watcher(api.clone(), watcher::Config::default()).default_backoff().reflect(writer).applied_objects().boxed();
    loop {
        let node = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = nodes.next() => match next {
                None => return,
                Some(Ok(node)) => node,
                Some(Err(e)) => {
                    warn!(error = %e, "watching nodes failed; retrying");
                    continue;
                }
            },
        };
        let name = node.name_any();
        let Some(&index) = indexes.get(&name) else { continue };
        nets.set_range(&name, index, node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()));
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        if !ready && let Err(e) = post_status(&api, &config, index, &node).await {
            warn!(node = %name, error = %e, "posting the node status failed");
        }
    }
}

/// Deletes the simulated nodes and their Leases (`--cleanup`).
pub async fn remove(client: &Client, names: &[String]) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    futures::stream::iter(names.to_vec())
        .for_each_concurrent(REGISTER_CONCURRENCY, |name| {
            let (nodes, leases) = (nodes.clone(), leases.clone());
            async move {
                for result in [
                    nodes.delete(&name, &Default::default()).await.map(|_| ()),
                    leases.delete(&name, &Default::default()).await.map(|_| ()),
                ] {
                    match result {
                        Ok(()) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => warn!(node = %name, error = %e, "removing the simulated node failed"),
                    }
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            name_prefix: "sim-".into(),
            count: 2,
            shape: NodeShape::default(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            taints: vec![],
            zones: 0,
            play_pods: true,
            cleanup: false,
        }
    }

    #[test]
    fn nodes_carry_standard_labels_and_the_configured_ones() {
        let node = node_object(&Config { zones: 2, ..config() }, 3, "sim-1");
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "sim-1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["zone"], "a");
        assert_eq!(labels["topology.kubernetes.io/zone"], "zone-1");
    }

    #[test]
    fn a_healthy_status_keeps_earlier_transition_times() {
        let first = node_status(&config(), 1, "sim-1", None);
        let ready =
            |s: &NodeStatus| s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").cloned().unwrap();
        let mut earlier = first.clone();
        for c in earlier.conditions.as_mut().unwrap() {
            c.last_transition_time = Some(Time("2020-01-01T00:00:00Z".parse().unwrap()));
        }
        let again = node_status(&config(), 1, "sim-1", Some(&earlier));
        assert_eq!(ready(&again).status, "True");
        assert_eq!(ready(&again).last_transition_time, ready(&earlier).last_transition_time);
        assert_eq!(first.addresses.unwrap()[0].address, "172.16.0.2");
    }
}
