//! The node half of the built-in local-path provisioner: deletes the directories of this
//! node's local-path volumes once they are being deleted.
//!
//! The provisioner (in the controller manager, possibly on another host) creates each volume
//! with a hostPath directory on one node, node affinity to that node, and the finalizer
//! [`CLEANUP_FINALIZER`]; when it deletes a released volume, the object waits on that
//! finalizer. This agent watches volumes, and for one of its own node (the affinity names it)
//! that is being deleted it removes the directory and then the finalizer, so that the object
//! goes only once the data is gone (as upstream's external provisioners keep their finalizer
//! until the storage is deleted).

use std::path::{Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Set by the provisioner on every volume it creates (`crates/controllers/src/volume/local_path`).
pub const CLEANUP_FINALIZER: &str = "local-path.tugboat.dev/cleanup";
const PROVISIONER: &str = "rancher.io/local-path";
const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Why a volume's cleanup failed; it is retried on the next event or relist.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing the finalizer of persistentvolume {name}")]
    Finalizer {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The node a local-path volume lives on: the single hostname its node affinity requires.
fn volume_node(volume: &PersistentVolume) -> Option<&str> {
    let required = volume.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref()?;
    let term = required.node_selector_terms.first()?;
    let req = term.match_expressions.as_ref()?.iter().find(|r| r.key == HOSTNAME_LABEL && r.operator == "In")?;
    req.values.as_ref()?.first().map(String::as_str)
}

/// The directory to delete if `volume` is a local-path volume of `node` being deleted.
pub fn directory_to_clean(volume: &PersistentVolume, node: &str) -> Option<PathBuf> {
    let ours = volume.annotations().get(ANN_PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER)
        && volume.finalizers().iter().any(|f| f == CLEANUP_FINALIZER);
    if !ours || volume.metadata.deletion_timestamp.is_none() || volume_node(volume) != Some(node) {
        return None;
    }
    let path = PathBuf::from(&volume.spec.as_ref()?.host_path.as_ref()?.path);
    // Only a directory the provisioner named is ever removed, never a path edited into it.
    let name = path.file_name()?.to_str()?;
    (path.is_absolute() && name.starts_with("pvc-")).then_some(path)
}

fn remove_dir(path: &Path) -> Result<(), CleanupError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CleanupError::Remove { path: path.to_owned(), source }),
    }
}

async fn clean(client: &Client, volume: &PersistentVolume, path: PathBuf) -> Result<(), CleanupError> {
    let p = path.clone();
    tokio::task::spawn_blocking(move || remove_dir(&p))
        .await
        .unwrap_or_else(|e| Err(CleanupError::Remove { path: path.clone(), source: std::io::Error::other(e) }))?;
    let name = volume.name_any();
    let rest: Vec<&String> = volume.finalizers().iter().filter(|f| *f != CLEANUP_FINALIZER).collect();
    // The resourceVersion makes the write fail rather than drop a finalizer added meanwhile.
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": volume.resource_version()}});
    match Api::<PersistentVolume>::all(client.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => return Err(CleanupError::Finalizer { name, source }),
    }
    info!(volume = %volume.name_any(), path = %path.display(), "deleted local-path volume data");
    Ok(())
}

/// Watches volumes until `shutdown`, cleaning up this node's deleted local-path volumes.
pub async fn run(client: Client, node_name: String, shutdown: CancellationToken) {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let mut events = watcher(api, watcher::Config::default()).default_backoff().applied_objects().boxed();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = events.next() => next,
        };
        match next {
            None => return,
            Some(Err(e)) => debug!(error = %e, "persistentvolume watch failed; retrying"),
            Some(Ok(volume)) => {
                if let Some(path) = directory_to_clean(&volume, &node_name)
                    && let Err(e) = clean(&client, &volume, path).await
                {
                    warn!(volume = %volume.name_any(), error = %e, "cleaning up local-path volume failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn volume(node: &str, path: &str, deleting: bool) -> PersistentVolume {
        let mut v = json!({
            "metadata": {"name": "pvc-1", "finalizers": [CLEANUP_FINALIZER],
                         "annotations": {ANN_PROVISIONED_BY: PROVISIONER}},
            "spec": {"hostPath": {"path": path}, "nodeAffinity": {"required": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}]}]}}}
        });
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_this_nodes_deleted_volumes_are_cleaned() {
        let path = "/var/lib/tug/storage/pvc-1_ns_data";
        assert_eq!(directory_to_clean(&volume("a", path, true), "a"), Some(PathBuf::from(path)));
        assert_eq!(directory_to_clean(&volume("b", path, true), "a"), None);
        assert_eq!(directory_to_clean(&volume("a", path, false), "a"), None);
    }

    #[test]
    fn a_path_not_named_by_the_provisioner_is_never_removed() {
        assert_eq!(directory_to_clean(&volume("a", "/etc", true), "a"), None);
        assert_eq!(directory_to_clean(&volume("a", "relative/pvc-1", true), "a"), None);
    }
}
