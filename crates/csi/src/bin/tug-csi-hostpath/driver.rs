//! The driver's shared state and the mapping of its errors to gRPC statuses.

use std::sync::Arc;

use tonic::Status;

use crate::mounter::Mounter;
use crate::state::{StateError, VolumeStore};

/// The topology key this driver reports: volumes live on one node's disk.
pub const TOPOLOGY_KEY: &str = "topology.hostpath.csi/node";
/// volume_context key the kubelet sets for CSI ephemeral inline volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";

pub struct Driver {
    pub name: String,
    pub version: String,
    pub node_id: String,
    pub max_volumes_per_node: i64,
    pub store: VolumeStore,
    pub mounter: Arc<dyn Mounter>,
    /// Serialises operations: CSI allows a CO to send concurrent calls for one volume, and the
    /// check-then-mount sequences below must not interleave.
    pub lock: tokio::sync::Mutex<()>,
}

impl From<StateError> for Status {
    fn from(err: StateError) -> Self {
        match err {
            StateError::InvalidId { .. } => Status::invalid_argument(err.to_string()),
            StateError::Io { .. } | StateError::Decode { .. } => Status::internal(error_chain(&err)),
        }
    }
}

/// The error and its sources on one line, for a gRPC status message.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

pub fn require(value: &str, what: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} missing in request")));
    }
    Ok(())
}

pub fn internal_io(what: &str, path: &std::path::Path, err: std::io::Error) -> Status {
    Status::internal(format!("{what} {}: {err}", path.display()))
}

#[cfg(test)]
pub mod testing {
    use std::sync::Arc;

    use super::Driver;
    use crate::mounter::fake::FakeMounter;
    use crate::state::VolumeStore;

    /// A driver over a temp state dir with an in-memory mounter.
    pub fn driver(state: &std::path::Path) -> (Arc<Driver>, Arc<FakeMounter>) {
        let mounter = Arc::new(FakeMounter::default());
        let driver = Arc::new(Driver {
            name: "hostpath.csi.tugboat.dev".into(),
            version: "test".into(),
            node_id: "node-a".into(),
            max_volumes_per_node: 7,
            store: VolumeStore::open(state).unwrap(),
            mounter: mounter.clone(),
            lock: tokio::sync::Mutex::new(()),
        });
        (driver, mounter)
    }
}
