//! A node with the pods placed on it and what they request (upstream's `NodeInfo`). The
//! requests of one pod come from the helpers the node agent shares ([`tug_api::resource`]).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};

pub use tug_api::resource::{Resource, pod_requests};

fn allocatable_of(node: &Node) -> Resource {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
        .map(Resource::from_list)
        .unwrap_or_default()
}

/// A node in the cycle's snapshot with the pods on it (bound or assumed).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node object; set it with [`NodeInfo::set_node`], which keeps the copies below.
    pub node: Arc<Node>,
    /// The node's name, `spec.unschedulable` and `spec.taints`, copied out of `node`: every
    /// cycle reads them for hundreds of nodes (the first filters, and the scores), and going
    /// through `node` for them cost a cache miss per node and cycle, the largest single cost
    /// of a cycle at 5,000 nodes.
    name: String,
    unschedulable: bool,
    taints: Vec<Taint>,
    pub pods: Vec<Arc<Pod>>,
    /// The sum of the pods' requests.
    pub requested: Resource,
    /// The same with upstream's defaults for missing cpu/memory requests (for scoring).
    pub non_zero_requested: Resource,
    pub allocatable: Resource,
    /// The pods with pod affinity or anti-affinity of any kind (upstream's
    /// `PodsWithAffinity`), so that InterPodAffinity need not look at every pod.
    pub pods_with_affinity: Vec<Arc<Pod>>,
    /// The pods with required pod anti-affinity (upstream's `PodsWithRequiredAntiAffinity`).
    pub pods_with_required_anti_affinity: Vec<Arc<Pod>>,
}

/// Whether the pod has pod affinity or anti-affinity, required or preferred.
pub fn has_pod_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

/// Whether the pod has required pod anti-affinity terms.
pub fn has_required_anti_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
        .is_some_and(|t| !t.is_empty())
}

fn remove_same(list: &mut Vec<Arc<Pod>>, pod: &Arc<Pod>) {
    if let Some(i) = list.iter().position(|p| Arc::ptr_eq(p, pod)) {
        list.remove(i);
    }
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        let mut info = Self {
            node: node.clone(),
            name: String::new(),
            unschedulable: false,
            taints: Vec::new(),
            pods: Vec::new(),
            requested: Resource::default(),
            non_zero_requested: Resource::default(),
            allocatable: Resource::default(),
            pods_with_affinity: Vec::new(),
            pods_with_required_anti_affinity: Vec::new(),
        };
        info.set_node(node);
        info
    }

    /// Swaps in a newer version of the node, keeping its pods.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let spec = node.spec.as_ref();
        self.allocatable = allocatable_of(&node);
        self.name = node.metadata.name.clone().unwrap_or_default();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        self.taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        self.node = node;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's `spec.unschedulable` (cordoned).
    pub fn unschedulable(&self) -> bool {
        self.unschedulable
    }

    /// The node's `spec.taints`.
    pub fn taints(&self) -> &[Taint] {
        &self.taints
    }

    pub fn add_pod(&mut self, pod: Arc<Pod>) {
        self.requested.add(&pod_requests(&pod, false));
        self.non_zero_requested.add(&pod_requests(&pod, true));
        if has_pod_affinity(&pod) {
            self.pods_with_affinity.push(pod.clone());
        }
        if has_required_anti_affinity(&pod) {
            self.pods_with_required_anti_affinity.push(pod.clone());
        }
        self.pods.push(pod);
    }

    /// Takes exactly this pod object off the node (the cache's update of a pod it placed).
    pub fn remove_pod_object(&mut self, pod: &Arc<Pod>) -> bool {
        let Some(i) = self.pods.iter().position(|p| Arc::ptr_eq(p, pod)) else { return false };
        self.pods.remove(i);
        self.requested.sub(&pod_requests(pod, false));
        self.non_zero_requested.sub(&pod_requests(pod, true));
        remove_same(&mut self.pods_with_affinity, pod);
        remove_same(&mut self.pods_with_required_anti_affinity, pod);
        true
    }

    /// Takes the pod with `uid` off the node (a preemption dry run); returns it if it was there.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<Pod>> {
        let i = self.pods.iter().position(|p| p.metadata.uid.as_deref() == Some(uid))?;
        let pod = self.pods.remove(i);
        self.requested.sub(&pod_requests(&pod, false));
        self.non_zero_requested.sub(&pod_requests(&pod, true));
        remove_same(&mut self.pods_with_affinity, &pod);
        remove_same(&mut self.pods_with_required_anti_affinity, &pod);
        Some(pod)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec})).unwrap()
    }
}
