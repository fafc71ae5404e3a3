//! What the API learns about a node's CSI drivers (upstream `pkg/volume/csi/nodeinfomanager`):
//! the CSINode object named after the node (owned by the Node) lists each driver with its node
//! id, topology keys and volume limit; the Node carries the `csi.volume.kubernetes.io/nodeid`
//! annotation (a JSON map driver -> node id) and a label per topology segment.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::{CSINode, CSINodeDriver, CSINodeSpec, VolumeNodeResources};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The Node annotation that maps CSI driver names to the node ids they gave.
pub const NODE_ID_ANNOTATION: &str = "csi.volume.kubernetes.io/nodeid";
/// Read-modify-write attempts before an update conflict is given up (the watcher retries).
const UPDATE_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum NodeInfoError {
    #[error("error getting node {name}: {source}")]
    GetNode {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("node {name} not found")]
    NodeNotFound { name: String },
    #[error("error updating node {name}: {source}")]
    UpdateNode {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "detected topology value collision: driver reported {key:?}:{wanted:?} but existing label is {key:?}:{existing:?}"
    )]
    LabelConflict { key: String, existing: String, wanted: String },
    #[error("error {operation} CSINode {name}: {source}")]
    CsiNode {
        operation: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("gave up updating CSINode {name} after {UPDATE_ATTEMPTS} conflicting writes")]
    Conflicts { name: String },
}

pub struct NodeInfoManager {
    client: kube::Client,
    node_name: String,
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// The driver map of the node id annotation, tolerating a missing or malformed annotation.
fn node_ids(node: &Node) -> BTreeMap<String, String> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NODE_ID_ANNOTATION))
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// The CSINode drivers list with `driver` replaced (or added) or, for `None`, removed.
pub fn with_driver(drivers: &[CSINodeDriver], name: &str, entry: Option<CSINodeDriver>) -> Vec<CSINodeDriver> {
    let mut out: Vec<CSINodeDriver> = drivers.iter().filter(|d| d.name != name).cloned().collect();
    out.extend(entry);
    out
}

/// The CSINode entry upstream writes for a driver: topology keys sorted, allocatable only when
/// the driver reported a limit.
pub fn driver_entry(name: &str, node_id: &str, max_volumes: i64, topology: &BTreeMap<String, String>) -> CSINodeDriver {
    CSINodeDriver {
        name: name.to_owned(),
        node_id: node_id.to_owned(),
        topology_keys: Some(topology.keys().cloned().collect()),
        allocatable: (max_volumes > 0)
            .then(|| VolumeNodeResources { count: Some(max_volumes.min(i64::from(i32::MAX)) as i32) }),
    }
}

impl NodeInfoManager {
    pub fn new(client: kube::Client, node_name: String) -> Self {
        NodeInfoManager { client, node_name }
    }

    async fn node(&self) -> Result<Node, NodeInfoError> {
        let name = self.node_name.clone();
        Api::<Node>::all(self.client.clone())
            .get_opt(&name)
            .await
            .map_err(|e| NodeInfoError::GetNode { name: name.clone(), source: Box::new(e) })?
            .ok_or(NodeInfoError::NodeNotFound { name })
    }

    /// Creates the node's CSINode object (no drivers) when it is missing.
    pub async fn ensure_csinode(&self) -> Result<(), NodeInfoError> {
        self.get_or_create_csinode().await.map(|_| ())
    }

    async fn get_or_create_csinode(&self) -> Result<CSINode, NodeInfoError> {
        let api = Api::<CSINode>::all(self.client.clone());
        let name = &self.node_name;
        let csi_error =
            |operation| move |e| NodeInfoError::CsiNode { operation, name: name.clone(), source: Box::new(e) };
        if let Some(existing) = api.get_opt(name).await.map_err(csi_error("getting"))? {
            return Ok(existing);
        }
        let node = self.node().await?;
        let csinode = CSINode {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.clone(),
                    uid: node.metadata.uid.clone().unwrap_or_default(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: CSINodeSpec { drivers: Vec::new() },
        };
        match api.create(&PostParams::default(), &csinode).await {
            Ok(created) => Ok(created),
            Err(e) if is_status(&e, 409) => api.get(name).await.map_err(csi_error("getting")),
            Err(e) => Err(csi_error("creating")(e)),
        }
    }

    /// Sets (or, for `None`, removes) one driver's entry in the CSINode object.
    async fn update_csinode(&self, driver: &str, entry: Option<CSINodeDriver>) -> Result<(), NodeInfoError> {
        let api = Api::<CSINode>::all(self.client.clone());
        let name = &self.node_name;
        for _ in 0..UPDATE_ATTEMPTS {
            let mut csinode = self.get_or_create_csinode().await?;
            let drivers = with_driver(&csinode.spec.drivers, driver, entry.clone());
            if drivers == csinode.spec.drivers {
                return Ok(());
            }
            csinode.spec.drivers = drivers;
            match api.replace(name, &PostParams::default(), &csinode).await {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => {
                    return Err(NodeInfoError::CsiNode {
                        operation: "updating",
                        name: name.clone(),
                        source: Box::new(e),
                    });
                }
            }
        }
        Err(NodeInfoError::Conflicts { name: name.clone() })
    }

    /// Patches the Node's node id annotation (and labels); the merge patch touches only the
    /// annotation and the labels named.
    async fn patch_node(
        &self,
        ids: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), NodeInfoError> {
        let annotation =
            if ids.is_empty() { Value::Null } else { json!(serde_json::to_string(ids).unwrap_or_default()) };
        let patch = json!({ "metadata": { "annotations": { NODE_ID_ANNOTATION: annotation }, "labels": labels } });
        Api::<Node>::all(self.client.clone())
            .patch(&self.node_name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| NodeInfoError::UpdateNode { name: self.node_name.clone(), source: Box::new(e) })?;
        Ok(())
    }

    /// Upstream's `InstallCSIDriver`: Node annotation and topology labels, then CSINode.
    pub async fn install_driver(
        &self,
        driver: &str,
        node_id: &str,
        max_volumes: i64,
        topology: &BTreeMap<String, String>,
    ) -> Result<(), NodeInfoError> {
        let node = self.node().await?;
        let labels = node.metadata.labels.clone().unwrap_or_default();
        for (key, wanted) in topology {
            if let Some(existing) = labels.get(key).filter(|v| *v != wanted) {
                return Err(NodeInfoError::LabelConflict {
                    key: key.clone(),
                    existing: existing.clone(),
                    wanted: wanted.clone(),
                });
            }
        }
        let mut ids = node_ids(&node);
        ids.insert(driver.to_owned(), node_id.to_owned());
        self.patch_node(&ids, topology).await?;
        self.update_csinode(driver, Some(driver_entry(driver, node_id, max_volumes, topology))).await
    }

    /// Upstream's `UninstallCSIDriver`: the CSINode entry and the annotation key go; topology
    /// labels stay (upstream leaves them too).
    pub async fn uninstall_driver(&self, driver: &str) -> Result<(), NodeInfoError> {
        self.update_csinode(driver, None).await?;
        let node = self.node().await?;
        let mut ids = node_ids(&node);
        if ids.remove(driver).is_some() {
            self.patch_node(&ids, &BTreeMap::new()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_entry_replaces_its_old_entry_and_keeps_the_others() {
        let topology = BTreeMap::from([("zone".to_string(), "a".to_string()), ("node".to_string(), "n1".to_string())]);
        let old =
            vec![driver_entry("a.csi", "old", 0, &BTreeMap::new()), driver_entry("b.csi", "n1", 0, &BTreeMap::new())];
        let new = with_driver(&old, "a.csi", Some(driver_entry("a.csi", "n1", 3, &topology)));
        assert_eq!(new.len(), 2);
        let a = new.iter().find(|d| d.name == "a.csi").unwrap();
        assert_eq!(a.node_id, "n1");
        assert_eq!(a.topology_keys.as_deref(), Some(&["node".to_string(), "zone".to_string()][..]));
        assert_eq!(a.allocatable.as_ref().and_then(|r| r.count), Some(3));
        assert_eq!(with_driver(&new, "a.csi", None), vec![old[1].clone()]);
    }

    #[test]
    fn no_volume_limit_means_no_allocatable() {
        assert_eq!(driver_entry("a", "n", 0, &BTreeMap::new()).allocatable, None);
    }

    #[test]
    fn the_node_id_annotation_is_read_as_a_json_map() {
        let mut node = Node::default();
        assert!(node_ids(&node).is_empty());
        node.metadata.annotations =
            Some(BTreeMap::from([(NODE_ID_ANNOTATION.to_string(), r#"{"a.csi":"n1"}"#.to_string())]));
        assert_eq!(node_ids(&node), BTreeMap::from([("a.csi".to_string(), "n1".to_string())]));
    }
}
