//! The node's view of the cluster's pod networks, from the API (flannel's subnet manager in
//! its `kube` mode): this node's `spec.podCIDR` makes the node's pod network ready (the
//! built-in bridge, or an external runtime's CNI configuration), every node's podCIDR is a
//! network pods reach without masquerade, and the overlay routes to each other node's podCIDR
//! as that node's annotations describe, after publishing this node's own.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;

use crate::overlay::{self, Overlay};
use crate::{BridgeNetwork, NetworkError};

/// The part of a node's pod network that follows the podCIDRs: the built-in bridge
/// ([`BridgeNetwork`]), or the CNI configuration of an external runtime
/// ([`RuntimeCniNetwork`](crate::runtime_cni::RuntimeCniNetwork)).
#[async_trait::async_trait]
pub trait NodeSubnet: Send + Sync {
    /// Makes the network ready for this node's podCIDR `cidr`. Returns the podCIDRs the node
    /// had before (a node deleted and registered again gets a new one), for the overlay to
    /// forget.
    async fn set_subnet(&self, cidr: Ipv4Net) -> Result<Vec<Ipv4Net>, NetworkError>;
    /// Sets the pod networks of every node: traffic to them is not masqueraded.
    async fn set_cluster_cidrs(&self, cidrs: Vec<Ipv4Net>) -> Result<(), NetworkError>;
}

#[async_trait::async_trait]
impl NodeSubnet for BridgeNetwork {
    async fn set_subnet(&self, cidr: Ipv4Net) -> Result<Vec<Ipv4Net>, NetworkError> {
        BridgeNetwork::set_subnet(self, cidr).await
    }

    async fn set_cluster_cidrs(&self, cidrs: Vec<Ipv4Net>) -> Result<(), NetworkError> {
        BridgeNetwork::set_cluster_cidrs(self, cidrs).await
    }
}

/// A node's IPv4 pod networks (`podCIDRs`, or the older single `podCIDR`).
pub fn pod_cidrs(node: &Node) -> Vec<Ipv4Net> {
    let Some(spec) = node.spec.as_ref() else { return Vec::new() };
    let listed = spec.pod_cidrs.clone().filter(|c| !c.is_empty());
    let all = listed.unwrap_or_else(|| spec.pod_cidr.clone().into_iter().collect());
    all.iter().filter_map(|c| c.parse().ok()).collect()
}

/// Keeps `network` and `overlay` in step with the Nodes until `shutdown`.
pub async fn run(
    client: kube::Client,
    node_name: String,
    network: Arc<dyn NodeSubnet>,
    overlay: Option<Overlay>,
    shutdown: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client);
    let mut events = watcher(nodes.clone()).boxed();
    let mut known: BTreeMap<String, Node> = BTreeMap::new();
    let mut listing: BTreeMap<String, Node> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        match event {
            Ok(Event::Apply(node)) => {
                known.insert(node_name_of(&node), node);
            }
            Ok(Event::Delete(node)) => {
                known.remove(&node_name_of(&node));
            }
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(node)) => {
                listing.insert(node_name_of(&node), node);
                continue;
            }
            Ok(Event::InitDone) => known = std::mem::take(&mut listing),
            Err(error) => {
                tracing::warn!(%error, "watching nodes for the pod network");
                continue;
            }
        }
        if let Err(error) = sync(&nodes, network.as_ref(), overlay.as_ref(), &node_name, &known).await {
            tracing::warn!(%error, "configuring the pod network");
        }
    }
}

fn watcher(nodes: Api<Node>) -> impl futures::Stream<Item = Result<Event<Node>, watcher::Error>> {
    watcher::watcher(nodes, watcher::Config::default()).default_backoff()
}

fn node_name_of(node: &Node) -> String {
    node.metadata.name.clone().unwrap_or_default()
}

async fn sync(
    nodes: &Api<Node>,
    network: &dyn NodeSubnet,
    overlay: Option<&Overlay>,
    node_name: &str,
    known: &BTreeMap<String, Node>,
) -> Result<(), NetworkError> {
    let own = known.get(node_name);
    if let Some(subnet) = own.and_then(|n| pod_cidrs(n).first().copied()) {
        let stale = network.set_subnet(subnet).await?;
        if let (Some(overlay), Some(node)) = (overlay, own) {
            let wanted = overlay.setup(subnet).await?;
            // Only now that the device has its new address: a device left without any IPv4
            // address loses every route through it.
            overlay.forget(&stale).await?;
            publish(nodes, node, wanted).await;
        }
    }
    network.set_cluster_cidrs(known.values().flat_map(pod_cidrs).collect()).await?;
    if let Some(overlay) = overlay {
        let peers: Vec<overlay::Peer> = known
            .iter()
            .filter(|(name, _)| name.as_str() != node_name)
            .filter_map(|(_, node)| overlay::peer_of(node, overlay.backend()))
            .collect();
        overlay.sync(&peers).await?;
    }
    Ok(())
}

/// Writes this node's overlay annotations unless the Node carries them already. A failure is
/// logged: the next change of any Node retries.
async fn publish(nodes: &Api<Node>, node: &Node, wanted: BTreeMap<String, String>) {
    let current = node.metadata.annotations.clone().unwrap_or_default();
    if wanted.iter().all(|(k, v)| current.get(k) == Some(v)) {
        return;
    }
    let name = node_name_of(node);
    let patch = serde_json::json!({"metadata": {"annotations": wanted}});
    match nodes.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => tracing::info!(node = %name, "published the node's overlay annotations"),
        Err(error) => tracing::warn!(node = %name, %error, "publishing the node's overlay annotations"),
    }
}
