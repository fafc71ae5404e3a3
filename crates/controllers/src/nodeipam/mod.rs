//! The node IPAM controller with upstream's range allocator (`pkg/controller/nodeipam`): every
//! Node gets `spec.podCIDR`/`spec.podCIDRs`, one /`--node-cidr-mask-size` subnet of
//! `--cluster-cidr` each.
//!
//! As upstream, the taken subnets are kept up to date from the node events, in their order:
//! a node seen with subnets occupies them, a deleted node releases its own, a node without
//! one gets the next free subnet. On start, and before reporting the range full, the set is
//! recomputed from the node cache (plus allocations not yet seen in it), so nothing drifts for
//! long. (Recomputing it before every allocation made registering N nodes cost O(N²): minutes
//! at 5,000 nodes.) When the range is full the node gets a `CIDRNotAvailable` event and is
//! retried with backoff. Only IPv4 is supported.
//!
//! This module writes nothing but the pod CIDRs of nodes that have none.

pub mod cidrset;

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::events::{NORMAL, Recorder};
use crate::informer::{Change, Informers};
pub use cidrset::{CidrError, CidrSet, Ipv4Net};

/// The default `--cluster-cidr` (k3s's).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
/// The default `--node-cidr-mask-size` for IPv4.
pub const DEFAULT_NODE_CIDR_MASK_SIZE: u8 = 24;

/// Why a node's CIDR could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no pod CIDR for node {node}")]
    Allocate {
        node: String,
        #[source]
        source: CidrError,
    },
    #[error("writing the pod CIDR {cidr} of node {node}")]
    Patch {
        node: String,
        cidr: String,
        #[source]
        source: kube::Error,
    },
}

/// What the node events ask of the allocator, in their order.
enum Work {
    /// The node has no subnet.
    Allocate(String),
    /// The node holds these subnets.
    Seen(String, Vec<String>),
    /// The node was deleted holding these subnets.
    Gone(String, Vec<String>),
}

struct Allocator {
    client: Client,
    nodes: Store<Node>,
    set: CidrSet,
    /// Subnets handed out whose node the cache does not show with them yet: node name to
    /// (node UID, subnet). The UID tells a node deleted and registered again under the same
    /// name, whose old subnet is no longer its own, from one the cache is late about.
    in_flight: HashMap<String, (String, String)>,
    recorder: Recorder,
}

impl Allocator {
    /// Marks every subnet the cache or our pending writes hold as taken.
    fn recover(&mut self) {
        self.set.clear();
        for node in self.nodes.state() {
            let name = node.name_any();
            for cidr in pod_cidrs(&node) {
                if let Err(e) = self.set.occupy(&cidr) {
                    // Set by someone else from another range: leave it alone, as upstream.
                    warn!(node = %name, error = %e, "node has a pod CIDR outside the cluster CIDR");
                }
                self.in_flight.remove(&name);
            }
        }
        // A node gone from the cache was deleted: its pending subnet is free again.
        let nodes = &self.nodes;
        self.in_flight.retain(|name, _| nodes.get(&ObjectRef::new(name)).is_some());
        for (_, cidr) in self.in_flight.values() {
            let _ = self.set.occupy(cidr);
        }
    }

    /// A node holds `cidrs`: they are taken (upstream's `occupyCIDRs`), and an allocation of
    /// ours the cache was late about has arrived.
    fn seen(&mut self, name: &str, cidrs: &[String]) {
        for cidr in cidrs {
            if let Err(e) = self.set.occupy(cidr) {
                debug!(node = %name, error = %e, "node has a pod CIDR outside the cluster CIDR");
            }
        }
        if self.in_flight.get(name).is_some_and(|(_, pending)| cidrs.contains(pending)) {
            self.in_flight.remove(name);
        }
    }

    /// A node was deleted: its subnets, and one we gave it that the cache never showed, are
    /// free again.
    fn gone(&mut self, name: &str, cidrs: &[String]) {
        let pending = self.in_flight.remove(name).map(|(_, cidr)| cidr);
        for cidr in cidrs.iter().chain(pending.iter()) {
            let _ = self.set.release(cidr);
        }
    }

    async fn allocate(&mut self, name: &str) -> Result<(), Error> {
        let Some(node) = self.nodes.get(&ObjectRef::new(name)) else {
            self.in_flight.remove(name);
            return Ok(());
        };
        let uid = node.metadata.uid.clone().unwrap_or_default();
        if self.in_flight.get(name).is_some_and(|(for_uid, _)| *for_uid != uid)
            && let Some((_, stale)) = self.in_flight.remove(name)
        {
            // Given to an earlier node of this name, which is gone.
            let _ = self.set.release(&stale);
        }
        if !pod_cidrs(&node).is_empty() || self.in_flight.contains_key(name) {
            return Ok(());
        }
        // The range looks full: recompute what is taken before saying so.
        let next = self.set.allocate_next().or_else(|_| {
            self.recover();
            self.set.allocate_next()
        });
        let cidr = match next {
            Ok(c) => c.to_string(),
            Err(source) => {
                self.recorder.record(
                    &*node,
                    NORMAL,
                    "CIDRNotAvailable",
                    format!("Node {name} status is now: CIDRNotAvailable"),
                );
                return Err(Error::Allocate { node: name.to_string(), source });
            }
        };
        let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        let api: Api<Node> = Api::all(self.client.clone());
        match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                info!(node = %name, %cidr, "allocated pod CIDR");
                self.in_flight.insert(name.to_string(), (uid, cidr));
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(Error::Patch { node: name.to_string(), cidr, source }),
        }
    }
}

/// A node's pod CIDRs (`podCIDRs`, or the older single `podCIDR`).
fn pod_cidrs(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    match spec.and_then(|s| s.pod_cidrs.clone()).filter(|c| !c.is_empty()) {
        Some(c) => c,
        None => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    }
}

/// Runs the range allocator for `cluster_cidr` until `shutdown`.
pub async fn run(informers: Informers, cluster_cidr: Ipv4Net, mask: u8, shutdown: CancellationToken) {
    let client = informers.client();
    let set = match CidrSet::new(cluster_cidr, mask) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "node IPAM disabled");
            return;
        }
    };
    let (nodes, writer) = informers.store::<Node>().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<Work>();
    let handler_tx = tx.clone();
    let cache = nodes.clone();
    let informer = writer.run(shutdown.clone(), move |change| match change {
        Change::Add(n) | Change::Update(_, n) => {
            let cidrs = pod_cidrs(&n);
            let work = if cidrs.is_empty() { Work::Allocate(n.name_any()) } else { Work::Seen(n.name_any(), cidrs) };
            let _ = handler_tx.send(work);
        }
        Change::Delete(n) => {
            let cidrs = pod_cidrs(&n);
            let freed = !cidrs.is_empty();
            let _ = handler_tx.send(Work::Gone(n.name_any(), cidrs));
            // A subnet came free: nodes still waiting for one need not wait for their backoff.
            if freed {
                for waiting in cache.state_filter(|n| pod_cidrs(n).is_empty()) {
                    let _ = handler_tx.send(Work::Allocate(waiting.name_any()));
                }
            }
        }
    });
    let mut allocator = Allocator {
        client: client.clone(),
        nodes: nodes.clone(),
        set,
        in_flight: HashMap::new(),
        recorder: Recorder::new(client, "node-ipam-controller"),
    };
    let worker = async move {
        let _ = nodes.wait_until_ready().await;
        info!(cluster_cidr = %cluster_cidr, mask, "starting node IPAM controller");
        allocator.recover();
        let mut failures: HashMap<String, u32> = HashMap::new();
        while let Some(work) = rx.recv().await {
            let name = match work {
                Work::Allocate(name) => name,
                Work::Seen(name, cidrs) => {
                    allocator.seen(&name, &cidrs);
                    continue;
                }
                Work::Gone(name, cidrs) => {
                    allocator.gone(&name, &cidrs);
                    continue;
                }
            };
            match allocator.allocate(&name).await {
                Ok(()) => {
                    failures.remove(&name);
                }
                Err(e) => {
                    let n = failures.entry(name.clone()).or_default();
                    *n += 1;
                    let delay = Duration::from_millis(500u64 << (*n).min(7)).min(Duration::from_secs(60));
                    warn!(node = %name, error = %e, retry_in = ?delay, "pod CIDR allocation failed");
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Work::Allocate(name));
                    });
                }
            }
        }
    };
    tokio::select! {
        _ = informer => {}
        _ = worker => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subnets_follow_the_node_events_without_recomputing() {
        // Never contacted: seen and gone only keep the set.
        let client = Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let (nodes, _writer) = kube::runtime::reflector::store::<Node>();
        let mut allocator = Allocator {
            client: client.clone(),
            nodes,
            set: CidrSet::new("10.99.0.0/23".parse().unwrap(), 24).unwrap(),
            in_flight: HashMap::new(),
            recorder: Recorder::new(client, "node-ipam-controller"),
        };
        allocator.seen("a", &["10.99.0.0/24".to_string()]);
        assert!(allocator.set.is_used("10.99.0.0/24"));
        // Ours, not yet in the cache, then seen there.
        allocator.in_flight.insert("b".into(), ("uid-b".into(), "10.99.1.0/24".into()));
        allocator.set.occupy("10.99.1.0/24").unwrap();
        allocator.seen("b", &["10.99.1.0/24".to_string()]);
        assert!(allocator.in_flight.is_empty());
        assert!(allocator.set.allocate_next().is_err(), "both subnets taken");

        allocator.gone("a", &["10.99.0.0/24".to_string()]);
        assert!(!allocator.set.is_used("10.99.0.0/24"));
        // A node deleted before the cache showed the subnet we gave it frees that subnet too.
        allocator.in_flight.insert("c".into(), ("uid-c".into(), "10.99.0.0/24".into()));
        allocator.set.occupy("10.99.0.0/24").unwrap();
        allocator.gone("c", &[]);
        assert!(!allocator.set.is_used("10.99.0.0/24"));
    }
}
