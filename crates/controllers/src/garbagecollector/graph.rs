//! The garbage collector's view of ownership: every object it watches, by uid, with the
//! reverse index from owner uid to dependents.

use std::collections::{HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::discovery::ApiResource;

use super::{FOREGROUND, ORPHAN};

/// What the collector knows of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub uid: String,
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub owners: Vec<OwnerReference>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
}

impl Node {
    pub fn from_meta(ar: &ApiResource, meta: &ObjectMeta) -> Node {
        Node {
            uid: meta.uid.clone().unwrap_or_default(),
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
        }
    }

    pub fn has_propagation_finalizer(&self) -> bool {
        self.finalizers.iter().any(|f| f == ORPHAN || f == FOREGROUND)
    }

    fn in_foreground_deletion(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == FOREGROUND)
    }
}

/// Objects by uid, and who depends on whom.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// The objects that name `uid` as an owner.
    pub fn dependents(&self, uid: &str) -> Vec<&Node> {
        self.dependents.get(uid).into_iter().flatten().filter_map(|d| self.nodes.get(d)).collect()
    }

    /// Inserts or replaces a node. Returns the uids of owners the node no longer references,
    /// so that an owner waiting for its dependents to go is looked at again.
    pub fn upsert(&mut self, node: Node) -> Vec<String> {
        let mut released = Vec::new();
        if node.uid.is_empty() {
            return released;
        }
        if let Some(old) = self.nodes.get(&node.uid) {
            for o in &old.owners {
                if !node.owners.iter().any(|n| n.uid == o.uid) {
                    if let Some(set) = self.dependents.get_mut(&o.uid) {
                        set.remove(&node.uid);
                    }
                    released.push(o.uid.clone());
                }
            }
        }
        for o in &node.owners {
            self.dependents.entry(o.uid.clone()).or_default().insert(node.uid.clone());
        }
        self.nodes.insert(node.uid.clone(), node);
        released
    }

    /// Removes a node; returns its dependents and the owners it referenced.
    pub fn remove(&mut self, uid: &str) -> (Vec<String>, Vec<String>) {
        let dependents: Vec<String> = self.dependents.get(uid).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        let mut owners = Vec::new();
        if let Some(node) = self.nodes.remove(uid) {
            for o in node.owners {
                if let Some(set) = self.dependents.get_mut(&o.uid) {
                    set.remove(uid);
                    if set.is_empty() {
                        self.dependents.remove(&o.uid);
                    }
                }
                owners.push(o.uid);
            }
        }
        (dependents, owners)
    }

    /// Whether any owner of `node` that is in the graph is being deleted in the foreground
    /// and the reference blocks that deletion.
    pub fn any_owner_in_foreground(&self, node: &Node) -> bool {
        node.owners.iter().any(|o| self.nodes.get(&o.uid).is_some_and(Node::in_foreground_deletion))
    }

    /// Objects of one kind that a fresh listing did not include, as (uid, namespace).
    pub fn missing_of_kind(&self, api_version: &str, kind: &str, seen: &HashSet<String>) -> Vec<(String, String)> {
        self.nodes
            .values()
            .filter(|n| n.api_version == api_version && n.kind == kind && !seen.contains(&n.uid))
            .map(|n| (n.uid.clone(), n.namespace.clone()))
            .collect()
    }

    /// Everything a periodic pass should look at: objects with owners, and deleting owners
    /// with a propagation finalizer.
    pub fn resync_items(&self) -> (Vec<String>, Vec<String>) {
        let owned = self.nodes.values().filter(|n| !n.owners.is_empty()).map(|n| n.uid.clone()).collect();
        let deleting = self
            .nodes
            .values()
            .filter(|n| n.deleting && n.has_propagation_finalizer())
            .map(|n| n.uid.clone())
            .collect();
        (owned, deleting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(uid: &str, owners: &[&str]) -> Node {
        Node {
            uid: uid.into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: "default".into(),
            name: uid.into(),
            owners: owners
                .iter()
                .map(|o| OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: (*o).into(),
                    uid: (*o).into(),
                    ..Default::default()
                })
                .collect(),
            deleting: false,
            finalizers: vec![],
        }
    }

    #[test]
    fn removing_an_owner_reports_its_dependents() {
        let mut g = Graph::default();
        g.upsert(node("owner", &[]));
        g.upsert(node("dep", &["owner"]));
        assert_eq!(g.dependents("owner").len(), 1);
        let (deps, owners) = g.remove("owner");
        assert_eq!(deps, vec!["dep".to_string()]);
        assert!(owners.is_empty());
        let (_, owners) = g.remove("dep");
        assert_eq!(owners, vec!["owner".to_string()]);
        assert!(g.dependents("owner").is_empty());
    }

    #[test]
    fn dropping_a_reference_updates_the_reverse_index() {
        let mut g = Graph::default();
        g.upsert(node("dep", &["a", "b"]));
        g.upsert(node("dep", &["b"]));
        assert!(g.dependents("a").is_empty());
        assert_eq!(g.dependents("b").len(), 1);
    }

    #[test]
    fn foreground_owner_is_detected() {
        let mut g = Graph::default();
        let mut owner = node("owner", &[]);
        owner.deleting = true;
        owner.finalizers = vec![FOREGROUND.into()];
        g.upsert(owner);
        let dep = node("dep", &["owner"]);
        g.upsert(dep.clone());
        assert!(g.any_owner_in_foreground(&dep));
    }
}
