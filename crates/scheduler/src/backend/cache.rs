//! The scheduler's cache of nodes with the pods on them (upstream's
//! `pkg/scheduler/backend/cache`): one [`NodeInfo`] per node, kept up to date by the node and
//! pod informers' events and by the scheduler's own assume/forget, so that a scheduling cycle
//! no longer rebuilds every node from every pod. [`Cache::update_snapshot`] copies into the
//! cycle's [`Snapshot`] only the nodes changed since the previous cycle, as upstream's
//! generation-numbered `UpdateSnapshot` does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use crate::framework::NodeInfo;
use crate::plugins::image_locality::{ImageCounts, count_node_images};
use crate::scheduler::{is_terminal, node_name, pod_key};

/// A node as the cache holds it. A node the informer has not shown (or has deleted) while pods
/// still name it is kept, absent from snapshots, so that its pods are counted once it appears.
struct CachedNode {
    info: NodeInfo,
    present: bool,
}

/// Where the cache placed a pod; `assumed` until the informer shows the binding.
struct PlacedPod {
    node: String,
    pod: Arc<Pod>,
    assumed: bool,
}

/// Nodes with their bound and assumed pods, and the pending pods nominated to a node.
#[derive(Default)]
pub struct Cache {
    nodes: HashMap<String, CachedNode>,
    pods: HashMap<String, PlacedPod>,
    nominated: HashMap<String, Arc<Pod>>,
    /// Nodes changed since the last snapshot update.
    changed: HashSet<String>,
    /// A node appeared or went since the last snapshot update: the node list is rebuilt.
    node_set_changed: bool,
}

fn placeholder(name: &str) -> Arc<Node> {
    let mut node = Node::default();
    node.metadata.name = Some(name.to_string());
    Arc::new(node)
}

impl Cache {
    pub fn new() -> Self {
        Self { node_set_changed: true, ..Default::default() }
    }

    /// A node added or updated by the informer.
    pub fn add_or_update_node(&mut self, node: Arc<Node>) {
        let name = node.name_any();
        match self.nodes.get_mut(&name) {
            Some(cached) => {
                cached.info.set_node(node);
                if !cached.present {
                    cached.present = true;
                    self.node_set_changed = true;
                }
            }
            None => {
                self.nodes.insert(name.clone(), CachedNode { info: NodeInfo::new(node), present: true });
                self.node_set_changed = true;
            }
        }
        self.changed.insert(name);
    }

    /// A node deleted; its pods stay accounted until their own deletions arrive.
    pub fn remove_node(&mut self, name: &str) {
        let Some(cached) = self.nodes.get_mut(name) else { return };
        if cached.info.pods.is_empty() {
            self.nodes.remove(name);
        } else {
            cached.present = false;
        }
        self.node_set_changed = true;
    }

    fn place(&mut self, key: String, node: &str, pod: Arc<Pod>, assumed: bool) {
        self.unplace(&key);
        let cached = self
            .nodes
            .entry(node.to_string())
            .or_insert_with(|| CachedNode { info: NodeInfo::new(placeholder(node)), present: false });
        cached.info.add_pod(pod.clone());
        self.changed.insert(node.to_string());
        self.pods.insert(key, PlacedPod { node: node.to_string(), pod, assumed });
    }

    fn unplace(&mut self, key: &str) {
        let Some(old) = self.pods.remove(key) else { return };
        if let Some(cached) = self.nodes.get_mut(&old.node) {
            cached.info.remove_pod_object(&old.pod);
            if !cached.present && cached.info.pods.is_empty() {
                self.nodes.remove(&old.node);
            }
        }
        self.changed.insert(old.node);
    }

    /// A pod added or updated by the informer: a bound pod that has not finished holds its
    /// node; a pending pod keeps the node it is assumed on; a finished pod holds nothing.
    pub fn update_pod(&mut self, pod: Arc<Pod>) {
        let key = pod_key(&pod);
        let nominated =
            pod.status.as_ref().and_then(|s| s.nominated_node_name.as_deref()).is_some_and(|n| !n.is_empty())
                && node_name(&pod).is_none()
                && !is_terminal(&pod)
                && pod.metadata.deletion_timestamp.is_none();
        if nominated {
            self.nominated.insert(key.clone(), pod.clone());
        } else {
            self.nominated.remove(&key);
        }
        match node_name(&pod) {
            Some(node) if !is_terminal(&pod) => {
                let node = node.to_string();
                self.place(key, &node, pod, false);
            }
            _ => {
                if is_terminal(&pod) || !self.is_assumed(&key) {
                    self.unplace(&key);
                }
            }
        }
    }

    /// A pod deleted.
    pub fn remove_pod(&mut self, key: &str) {
        self.nominated.remove(key);
        self.unplace(key);
    }

    /// After a relist: drops the pods the informer no longer has (their deletions were missed),
    /// keeping assumed ones.
    pub fn retain_pods(&mut self, listed: &HashSet<String>) {
        self.nominated.retain(|k, _| listed.contains(k));
        let gone: Vec<String> =
            self.pods.iter().filter(|(k, p)| !p.assumed && !listed.contains(*k)).map(|(k, _)| k.clone()).collect();
        for key in gone {
            self.unplace(&key);
        }
    }

    /// Counts `pod` on `node` before its binding is seen (upstream's `AssumePod`).
    pub fn assume_pod(&mut self, key: &str, pod: Arc<Pod>, node: &str) {
        self.place(key.to_string(), node, pod, true);
    }

    /// Undoes [`Cache::assume_pod`] after a failed binding or reserve (upstream's `ForgetPod`).
    pub fn forget_pod(&mut self, key: &str) {
        if self.is_assumed(key) {
            self.unplace(key);
        }
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|p| p.assumed)
    }

    /// Brings `snap` up to date: the whole node list when nodes came or went, otherwise only
    /// the nodes changed since the last update (and those a cycle changed in the snapshot).
    pub fn update_snapshot(&mut self, snap: &mut Snapshot) {
        if self.node_set_changed {
            let mut present: Vec<(&String, &CachedNode)> = self.nodes.iter().filter(|(_, c)| c.present).collect();
            present.sort_unstable_by(|a, b| a.0.cmp(b.0));
            snap.nodes = present.iter().map(|(_, c)| c.info.clone()).collect();
            snap.index = present.iter().enumerate().map(|(i, (n, _))| ((*n).clone(), i)).collect();
            let mut images = ImageCounts::new();
            for node in &snap.nodes {
                count_node_images(&mut images, node, true);
            }
            snap.images = Arc::new(images);
            snap.touched.clear();
            self.changed.clear();
            self.node_set_changed = false;
            return;
        }
        let touched: Vec<usize> = std::mem::take(&mut snap.touched);
        for i in touched {
            let name = snap.nodes[i].name().to_string();
            self.changed.insert(name);
        }
        for name in self.changed.drain() {
            if let (Some(&i), Some(cached)) = (snap.index.get(&name), self.nodes.get(&name)) {
                // Most changes are pods coming and going; only a changed Node can change images.
                if !Arc::ptr_eq(&snap.nodes[i].node, &cached.info.node) {
                    let images = Arc::make_mut(&mut snap.images);
                    count_node_images(images, &snap.nodes[i], false);
                    count_node_images(images, &cached.info, true);
                }
                snap.nodes[i] = cached.info.clone();
            }
        }
    }

    /// Counts pending pods nominated to a node by preemption, of at least `for_pod`'s priority,
    /// on that node in `snap`, so that the room freed for them is not taken by others (upstream
    /// runs the filters "with nominated pods"). The nodes changed are copied afresh next cycle.
    pub fn add_nominated_pods(&self, snap: &mut Snapshot, for_pod: &Pod) {
        let own = priority(for_pod);
        for (key, p) in &self.nominated {
            if p.metadata.uid == for_pod.metadata.uid || priority(p) < own || self.is_assumed(key) {
                continue;
            }
            let nominated = p.status.as_ref().and_then(|s| s.nominated_node_name.as_deref()).unwrap_or_default();
            if let Some(&i) = snap.index.get(nominated) {
                snap.nodes[i].add_pod(p.clone());
                snap.touched.push(i);
            }
        }
    }
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The nodes one scheduling cycle sees, sorted by name.
#[derive(Default)]
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Nodes this cycle changed (nominated pods added), to be restored from the cache.
    touched: Vec<usize>,
    /// How many of the nodes have each image, kept as nodes change.
    images: Arc<ImageCounts>,
}

impl Snapshot {
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// How many of the snapshot's nodes have each image.
    pub fn images(&self) -> Arc<ImageCounts> {
        self.images.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(v: Value) -> Arc<Pod> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn node(name: &str) -> Arc<Node> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
    }

    fn bound(name: &str, node: &str) -> Arc<Pod> {
        pod(json!({
            "metadata": {"name": name, "namespace": "d", "uid": name},
            "spec": {"nodeName": node, "containers": []},
        }))
    }

    fn names(snap: &Snapshot, i: usize) -> Vec<String> {
        let mut v: Vec<String> = snap.nodes()[i].pods.iter().map(|p| p.name_any()).collect();
        v.sort();
        v
    }

    #[test]
    fn counts_bound_and_assumed_pods_but_not_finished_ones() {
        let mut cache = Cache::new();
        cache.add_or_update_node(node("n"));
        cache.update_pod(bound("a", "n"));
        let mut done = (*bound("b", "n")).clone();
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        cache.update_pod(Arc::new(done));
        let pending = pod(json!({"metadata": {"name": "c", "namespace": "d"}, "spec": {"containers": []}}));
        cache.update_pod(pending.clone());
        cache.assume_pod("d/c", bound("c", "n"), "n");
        // A status update of the pending pod keeps its assumed place.
        cache.update_pod(pending);
        let mut snap = Snapshot::default();
        cache.update_snapshot(&mut snap);
        assert_eq!(names(&snap, 0), vec!["a", "c"]);
        // The binding seen: counted once; a forgotten non-assumed pod stays.
        cache.update_pod(bound("c", "n"));
        cache.forget_pod("d/c");
        cache.update_snapshot(&mut snap);
        assert_eq!(names(&snap, 0), vec!["a", "c"]);
    }

    #[test]
    fn snapshots_follow_node_and_pod_events() {
        let mut cache = Cache::new();
        // A pod seen before its node is counted once the node appears.
        cache.update_pod(bound("early", "m"));
        cache.add_or_update_node(node("n"));
        let mut snap = Snapshot::default();
        cache.update_snapshot(&mut snap);
        assert_eq!(snap.nodes().len(), 1);
        cache.add_or_update_node(node("m"));
        cache.update_snapshot(&mut snap);
        assert_eq!(snap.nodes().iter().map(|n| n.name()).collect::<Vec<_>>(), vec!["m", "n"]);
        assert_eq!(names(&snap, 0), vec!["early"]);
        cache.assume_pod("d/x", bound("x", "n"), "n");
        cache.update_snapshot(&mut snap);
        assert_eq!(names(&snap, 1), vec!["x"]);
        cache.forget_pod("d/x");
        cache.remove_pod("d/early");
        cache.update_snapshot(&mut snap);
        assert!(snap.nodes()[0].pods.is_empty() && snap.nodes()[1].pods.is_empty());
        assert_eq!(snap.nodes()[0].requested, crate::framework::Resource::default());
        cache.remove_node("m");
        cache.update_snapshot(&mut snap);
        assert_eq!(snap.nodes().iter().map(|n| n.name()).collect::<Vec<_>>(), vec!["n"]);
        // A relist that no longer has a pod drops it.
        cache.update_pod(bound("gone", "n"));
        cache.retain_pods(&HashSet::new());
        cache.update_snapshot(&mut snap);
        assert!(snap.nodes()[0].pods.is_empty());
    }

    #[test]
    fn nominated_pods_of_at_least_equal_priority_hold_their_node_for_one_cycle() {
        let mut cache = Cache::new();
        cache.add_or_update_node(node("n"));
        let nominated = |name: &str, priority: i32| {
            pod(json!({
                "metadata": {"name": name, "namespace": "d", "uid": name},
                "spec": {"priority": priority, "containers": []},
                "status": {"nominatedNodeName": "n"},
            }))
        };
        let high = nominated("high", 1000);
        cache.update_pod(high.clone());
        cache.update_pod(nominated("low", 0));
        let me = pod(json!({
            "metadata": {"name": "me", "namespace": "d", "uid": "me"},
            "spec": {"priority": 500, "containers": []},
        }));
        let mut snap = Snapshot::default();
        cache.update_snapshot(&mut snap);
        cache.add_nominated_pods(&mut snap, &me);
        assert_eq!(names(&snap, 0), vec!["high"]);
        // The next cycle starts from the cache again; the nominated pod does not count against itself.
        cache.update_snapshot(&mut snap);
        cache.add_nominated_pods(&mut snap, &high);
        assert!(snap.nodes()[0].pods.is_empty());
    }
}
