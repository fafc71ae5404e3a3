//! The node's heartbeat: its Lease `kube-node-lease/<node>`, renewed every 10 s, as upstream's
//! node lease controller (`k8s.io/component-helpers/apimachinery/lease`) keeps it.
//!
//! The Lease is created when missing, owned by the Node (so it goes when the Node is deleted),
//! and renewed with an update of the last Lease written (optimistic concurrency); after a
//! failure the next renewal starts from a fresh read.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `nodeLeaseDurationSeconds`, the kubelet's default.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// A quarter of the duration, as upstream renews.
const RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// Quick retries of a failed renewal before waiting for the next interval (upstream's
/// `maxUpdateRetries`, 200 ms apart).
const UPDATE_RETRIES: usize = 5;
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Errors renewing the Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{operation} lease {LEASE_NAMESPACE}/{node}: {source}")]
    Api {
        operation: &'static str,
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// Renews the Lease every 10 s until `shutdown`.
pub async fn run(client: kube::Client, node_name: String, shutdown: CancellationToken) {
    let controller = LeaseController::new(client, node_name);
    let mut latest: Option<Lease> = None;
    loop {
        latest = controller.renew_with_retries(latest).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RENEW_INTERVAL) => {}
        }
    }
}

pub(crate) struct LeaseController {
    leases: Api<Lease>,
    nodes: Api<Node>,
    node_name: String,
}

impl LeaseController {
    pub(crate) fn new(client: kube::Client, node_name: String) -> Self {
        LeaseController { leases: Api::namespaced(client.clone(), LEASE_NAMESPACE), nodes: Api::all(client), node_name }
    }

    /// One renewal with quick retries; returns the Lease written, or `None` after failures so
    /// that the next renewal reads it afresh.
    pub(crate) async fn renew_with_retries(&self, mut latest: Option<Lease>) -> Option<Lease> {
        for attempt in 0..UPDATE_RETRIES {
            match self.renew(latest.take()).await {
                Ok(lease) => return Some(lease),
                Err(e) => {
                    warn!(node = %self.node_name, attempt, error = %e, "renewing the node lease failed");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        None
    }

    async fn renew(&self, latest: Option<Lease>) -> Result<Lease, LeaseError> {
        let current = match latest {
            Some(lease) => lease,
            None => match self.leases.get_opt(&self.node_name).await.map_err(self.error("reading"))? {
                Some(lease) => lease,
                None => return self.create().await,
            },
        };
        let mut lease = current;
        self.fill(&mut lease).await;
        let written = self.leases.replace(&self.node_name, &PostParams::default(), &lease).await;
        let written = written.map_err(self.error("updating"))?;
        debug!(node = %self.node_name, "node lease renewed");
        Ok(written)
    }

    async fn create(&self) -> Result<Lease, LeaseError> {
        let mut lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.node_name.clone()),
                namespace: Some(LEASE_NAMESPACE.into()),
                ..Default::default()
            },
            spec: None,
        };
        self.fill(&mut lease).await;
        match self.leases.create(&PostParams::default(), &lease).await {
            Ok(lease) => Ok(lease),
            // Someone (an earlier run) made it meanwhile: renew that one.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = self.leases.get(&self.node_name).await.map_err(self.error("reading"))?;
                let mut lease = existing;
                self.fill(&mut lease).await;
                self.leases
                    .replace(&self.node_name, &PostParams::default(), &lease)
                    .await
                    .map_err(self.error("updating"))
            }
            Err(e) => Err(self.error("creating")(e)),
        }
    }

    /// Sets the holder, duration and renew time, and the Node as owner when the Lease has none
    /// (upstream's `setNodeOwnerFunc`; skipped while the Node cannot be read).
    async fn fill(&self, lease: &mut Lease) {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.node_name.clone());
        spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        if lease.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()) {
            match self.nodes.get_opt(&self.node_name).await {
                Ok(Some(node)) => lease.metadata.owner_references = Some(vec![node_owner(&node)]),
                Ok(None) => {}
                Err(e) => warn!(node = %self.node_name, error = %e, "reading the node to own its lease failed"),
            }
        }
    }

    fn error(&self, operation: &'static str) -> impl FnOnce(kube::Error) -> LeaseError + use<> {
        let node = self.node_name.clone();
        move |source| LeaseError::Api { operation, node, source }
    }
}

/// The owner reference a node Lease carries.
pub(crate) fn node_owner(node: &Node) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.name_any(),
        uid: node.uid().unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_owned_by_its_node() {
        let node = Node {
            metadata: ObjectMeta { name: Some("n1".into()), uid: Some("u-1".into()), ..Default::default() },
            ..Default::default()
        };
        let owner = node_owner(&node);
        assert_eq!((owner.api_version.as_str(), owner.kind.as_str()), ("v1", "Node"));
        assert_eq!((owner.name.as_str(), owner.uid.as_str()), ("n1", "u-1"));
        assert_eq!(owner.controller, None);
    }
}
