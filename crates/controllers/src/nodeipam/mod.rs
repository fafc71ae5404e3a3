//! The node IPAM controller with upstream's range allocator (`pkg/controller/nodeipam`): every
//! Node gets `spec.podCIDR`/`spec.podCIDRs`, one /`--node-cidr-mask-size` subnet of
//! `--cluster-cidr` each.
//!
//! The taken subnets are recomputed from the node cache (plus allocations not yet seen in it)
//! before each allocation, so subnets of existing nodes are recovered on start and those of
//! deleted nodes are released without bookkeeping that could drift. When the range is full the
//! node gets a `CIDRNotAvailable` event and is retried with backoff. Only IPv4 is supported.
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
use tracing::{info, warn};

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

    async fn allocate(&mut self, name: &str) -> Result<(), Error> {
        let Some(node) = self.nodes.get(&ObjectRef::new(name)) else {
            self.in_flight.remove(name);
            return Ok(());
        };
        let uid = node.metadata.uid.clone().unwrap_or_default();
        if self.in_flight.get(name).is_some_and(|(for_uid, _)| *for_uid != uid) {
            self.in_flight.remove(name);
        }
        if !pod_cidrs(&node).is_empty() || self.in_flight.contains_key(name) {
            return Ok(());
        }
        self.recover();
        let cidr = match self.set.allocate_next() {
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
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let handler_tx = tx.clone();
    let cache = nodes.clone();
    let informer = writer.run(shutdown.clone(), move |change| match change {
        Change::Add(n) | Change::Update(_, n) => {
            if pod_cidrs(&n).is_empty() {
                let _ = handler_tx.send(n.name_any());
            }
        }
        // A subnet may have come free: nodes still waiting for one need not wait for their
        // backoff to end.
        Change::Delete(n) if !pod_cidrs(&n).is_empty() => {
            for waiting in cache.state_filter(|n| pod_cidrs(n).is_empty()) {
                let _ = handler_tx.send(waiting.name_any());
            }
        }
        Change::Delete(_) => {}
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
        let mut failures: HashMap<String, u32> = HashMap::new();
        while let Some(name) = rx.recv().await {
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
                        let _ = tx.send(name);
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
