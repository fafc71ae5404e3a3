//! Simulated nodes: the role KWOK and kubemark's hollow nodes play upstream.
//!
//! A simulated node is a Node object whose kubelet is this crate: it registers the Node with
//! capacity, conditions and addresses, renews its Lease in `kube-node-lease` as a kubelet does,
//! and plays the pods bound to it through their lifecycle without running anything: they get an
//! IP, become Running and Ready, terminate or restart as their annotations say, and are removed
//! for good once the API marks them for deletion. Thousands of such nodes run in one process, so
//! the control plane (scheduler, controllers, API server) can be tested and measured at scale on
//! one machine.
//!
//! Like every component above the API it talks to the cluster only through the Kubernetes API
//! (a kube-rs client). It writes only its own Nodes and Leases and the status of pods bound to
//! them.
//!
//! Pods are steered by annotations (all optional):
//! - `sim.tugboat.dev/ready: "false"`: containers run but never become ready;
//! - `sim.tugboat.dev/exit-code: "N"`: containers terminate with exit code N ...
//! - `sim.tugboat.dev/run-seconds: "S"`: ... after running S seconds (default 0).
//!
//! A terminated container follows the pod's restartPolicy as the kubelet would: the pod
//! Succeeds or Fails, or the container restarts after a CrashLoopBackOff delay.

mod ipam;
mod node;
mod pod;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Taint;
use kube::Client;
use kube::runtime::reflector;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use node::NodeShape;
pub use pod::{Behaviour, Step, plan};

/// Annotation: containers never become ready when `"false"`.
pub const ANNOTATION_READY: &str = "sim.tugboat.dev/ready";
/// Annotation: the exit code containers terminate with.
pub const ANNOTATION_EXIT_CODE: &str = "sim.tugboat.dev/exit-code";
/// Annotation: how long containers run before terminating (with an exit code set).
pub const ANNOTATION_RUN_SECONDS: &str = "sim.tugboat.dev/run-seconds";
/// Annotation on every simulated Node, so tools can tell them from real ones.
pub const ANNOTATION_SIMULATED: &str = "sim.tugboat.dev/node";

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node names are `<name_prefix><index>` for index 0..count.
    pub name_prefix: String,
    pub count: usize,
    pub shape: NodeShape,
    /// Extra labels on every node.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// With N > 0, node i gets the label `topology.kubernetes.io/zone=zone-<i mod N>`.
    pub zones: usize,
    /// Play the pods bound to the nodes (off for benchmarks that only measure binding).
    pub play_pods: bool,
    /// Delete the nodes and their Leases on shutdown.
    pub cleanup: bool,
}

impl Config {
    /// The simulated nodes' names, in index order.
    pub fn node_names(&self) -> Vec<String> {
        (0..self.count).map(|i| format!("{}{i}", self.name_prefix)).collect()
    }
}

/// Why simulated nodes could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registering node {node}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// Registers the nodes, then keeps them alive and (with `play_pods`) plays their pods until
/// `shutdown`. When it returns the nodes go silent (their Leases are no longer renewed), as when
/// a node's kubelet stops; they are deleted only with `cleanup`.
pub async fn run(client: Client, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    register(client, config).await?.run(shutdown).await;
    Ok(())
}

/// Nodes registered by [`register`], not yet kept alive.
pub struct Registered {
    client: Client,
    config: Config,
    names: Vec<String>,
    pod_networks: Arc<ipam::PodNetworks>,
}

/// Registers the nodes (Node with a Ready status, and a Lease), 32 at a time.
pub async fn register(client: Client, config: Config) -> Result<Registered, Error> {
    let names = config.node_names();
    let pod_networks = Arc::new(ipam::PodNetworks::default());
    let registered = futures::stream::iter(names.clone().into_iter().enumerate())
        .map(|(index, name)| {
            let (client, config, nets) = (client.clone(), config.clone(), pod_networks.clone());
            async move {
                node::register(&client, &config, index, &name, &nets)
                    .await
                    .map_err(|source| Error::Register { node: name, source })
            }
        })
        .buffer_unordered(node::REGISTER_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    registered.into_iter().collect::<Result<Vec<()>, Error>>()?;
    info!(count = names.len(), prefix = %config.name_prefix, "simulated nodes registered");
    Ok(Registered { client, config, names, pod_networks })
}

impl Registered {
    /// Keeps the nodes alive and plays their pods until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let Registered { client, config, names, pod_networks } = self;
        let (nodes, writer) = reflector::store();
        let indexes: Arc<HashMap<String, usize>> =
            Arc::new(names.iter().enumerate().map(|(index, name)| (name.clone(), index)).collect());
        let mut tasks = vec![tokio::spawn(node::watch(
            client.clone(),
            config.clone(),
            indexes,
            pod_networks.clone(),
            writer,
            shutdown.clone(),
        ))];
        for (index, name) in names.iter().enumerate() {
            tasks.push(tokio::spawn(node::heartbeat(
                client.clone(),
                config.clone(),
                index,
                name.clone(),
                nodes.clone(),
                shutdown.clone(),
            )));
        }
        if config.play_pods {
            let ours: HashMap<String, String> =
                names.iter().enumerate().map(|(index, name)| (name.clone(), node::node_address(index))).collect();
            pod::run(client.clone(), Arc::new(ours), pod_networks, shutdown.clone()).await;
        } else {
            shutdown.cancelled().await;
        }
        for task in tasks {
            let _ = task.await;
        }
        if config.cleanup {
            node::remove(&client, &names).await;
            info!(count = names.len(), "simulated nodes removed");
        }
    }
}
