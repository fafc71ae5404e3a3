//! The node's view of the cluster's pod networks, from the API (flannel's subnet manager in
//! its `kube` mode): this node's `spec.podCIDR` makes the bridge network ready, and every
//! node's podCIDR is a network pods reach without masquerade.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;

use crate::BridgeNetwork;

/// A node's IPv4 pod networks (`podCIDRs`, or the older single `podCIDR`).
pub fn pod_cidrs(node: &Node) -> Vec<Ipv4Net> {
    let Some(spec) = node.spec.as_ref() else { return Vec::new() };
    let listed = spec.pod_cidrs.clone().filter(|c| !c.is_empty());
    let all = listed.unwrap_or_else(|| spec.pod_cidr.clone().into_iter().collect());
    all.iter().filter_map(|c| c.parse().ok()).collect()
}

/// Keeps `network` in step with the Nodes until `shutdown`.
pub async fn run(client: kube::Client, node_name: String, network: Arc<BridgeNetwork>, shutdown: CancellationToken) {
    let nodes: Api<Node> = Api::all(client);
    let mut events = watcher(nodes).boxed();
    let mut known: BTreeMap<String, Vec<Ipv4Net>> = BTreeMap::new();
    let mut listing: BTreeMap<String, Vec<Ipv4Net>> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        match event {
            Ok(Event::Apply(node)) => {
                known.insert(node_name_of(&node), pod_cidrs(&node));
            }
            Ok(Event::Delete(node)) => {
                known.remove(&node_name_of(&node));
            }
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(node)) => {
                listing.insert(node_name_of(&node), pod_cidrs(&node));
                continue;
            }
            Ok(Event::InitDone) => known = std::mem::take(&mut listing),
            Err(error) => {
                tracing::warn!(%error, "watching nodes for the pod network");
                continue;
            }
        }
        if let Err(error) = sync(&network, &node_name, &known).await {
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
    network: &BridgeNetwork,
    node_name: &str,
    known: &BTreeMap<String, Vec<Ipv4Net>>,
) -> Result<(), crate::NetworkError> {
    if let Some(own) = known.get(node_name).and_then(|c| c.first()) {
        network.set_subnet(*own).await?;
    }
    network.set_cluster_cidrs(known.values().flatten().copied().collect()).await
}
