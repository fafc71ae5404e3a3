//! The Filter half: counts per topology domain, computed once in PreFilter over all nodes,
//! then a lookup per node.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

use super::{
    AffinityTerm, InterPodAffinity, NAME, NamespaceLabels, PodTerms, TopologyPair, has_required_anti_affinity,
};
use crate::framework::{Code, CycleState, FilterPlugin, NodeInfo, PreFilterPlugin, Status};

/// Upstream's reasons.
pub const AFFINITY_REASON: &str = "node(s) didn't match pod affinity rules";
pub const ANTI_AFFINITY_REASON: &str = "node(s) didn't match pod anti-affinity rules";
pub const EXISTING_ANTI_AFFINITY_REASON: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

struct PreFilterState {
    terms: PodTerms,
    own_ns_labels: std::collections::BTreeMap<String, String>,
    /// Domains where an existing pod's required anti-affinity term matches the pod.
    existing_anti_affinity: HashMap<TopologyPair, i64>,
    /// Domains holding pods that match all the pod's required affinity terms.
    affinity: HashMap<TopologyPair, i64>,
    /// Domains holding pods that match one of the pod's required anti-affinity terms.
    anti_affinity: HashMap<TopologyPair, i64>,
}

fn labels(node: &NodeInfo) -> Option<&std::collections::BTreeMap<String, String>> {
    node.node.metadata.labels.as_ref()
}

fn pair(node: &NodeInfo, key: &str) -> Option<TopologyPair> {
    labels(node).and_then(|l| l.get(key)).map(|v| (key.to_string(), v.clone()))
}

fn matches_all(terms: &[AffinityTerm], pod: &Pod, ns_labels: &std::collections::BTreeMap<String, String>) -> bool {
    !terms.is_empty() && terms.iter().all(|t| t.matches(pod, ns_labels))
}

impl PreFilterPlugin for InterPodAffinity {
    fn pre_filter(&self, state: &mut CycleState, pod: &Pod, nodes: &[NodeInfo]) -> Status {
        let terms = PodTerms::of(pod);
        let mut ns = NamespaceLabels::new(self.listers.as_ref());
        let own_ns_labels = ns.of(pod).clone();
        let mut existing_anti_affinity = HashMap::new();
        let mut affinity = HashMap::new();
        let mut anti_affinity = HashMap::new();
        let has_own = !terms.required_affinity.is_empty() || !terms.required_anti_affinity.is_empty();
        let mut any_existing_anti = false;
        for node in nodes {
            // Without terms of its own, only existing pods' required anti-affinity matters.
            let candidates = if has_own { &node.pods } else { &node.pods_with_required_anti_affinity };
            for existing in candidates {
                if has_required_anti_affinity(existing) {
                    any_existing_anti = true;
                    for t in PodTerms::of(existing).required_anti_affinity {
                        if let Some(p) = pair(node, &t.topology_key)
                            && t.matches(pod, &own_ns_labels)
                        {
                            *existing_anti_affinity.entry(p).or_insert(0) += 1;
                        }
                    }
                }
                if !has_own {
                    continue;
                }
                let existing_ns = ns.of(existing).clone();
                if matches_all(&terms.required_affinity, existing, &existing_ns) {
                    for t in &terms.required_affinity {
                        if let Some(p) = pair(node, &t.topology_key) {
                            *affinity.entry(p).or_insert(0) += 1;
                        }
                    }
                }
                for t in &terms.required_anti_affinity {
                    if let Some(p) = pair(node, &t.topology_key)
                        && t.matches(existing, &existing_ns)
                    {
                        *anti_affinity.entry(p).or_insert(0) += 1;
                    }
                }
            }
        }
        if !has_own && !any_existing_anti {
            return Status::skip();
        }
        state.write(NAME, PreFilterState { terms, own_ns_labels, existing_anti_affinity, affinity, anti_affinity });
        Status::success()
    }
}

impl PreFilterState {
    fn satisfies_existing_anti_affinity(&self, node: &NodeInfo) -> bool {
        if self.existing_anti_affinity.is_empty() {
            return true;
        }
        labels(node)
            .into_iter()
            .flatten()
            .all(|(k, v)| self.existing_anti_affinity.get(&(k.clone(), v.clone())).copied().unwrap_or(0) <= 0)
    }

    fn satisfies_anti_affinity(&self, node: &NodeInfo) -> bool {
        self.terms
            .required_anti_affinity
            .iter()
            .all(|t| pair(node, &t.topology_key).is_none_or(|p| self.anti_affinity.get(&p).copied().unwrap_or(0) <= 0))
    }

    fn satisfies_affinity(&self, pod: &Pod, node: &NodeInfo) -> bool {
        let mut pods_exist = true;
        for t in &self.terms.required_affinity {
            // Every topology key must be on the node.
            let Some(p) = pair(node, &t.topology_key) else { return false };
            if self.affinity.get(&p).copied().unwrap_or(0) <= 0 {
                pods_exist = false;
            }
        }
        // The first pod of a group with affinity to itself: no pod anywhere matches yet, so it
        // may go to any node with the topology keys, as long as it matches its own terms.
        pods_exist || (self.affinity.is_empty() && matches_all(&self.terms.required_affinity, pod, &self.own_ns_labels))
    }
}

impl FilterPlugin for InterPodAffinity {
    fn filter(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<PreFilterState>(NAME) else { return Status::success() };
        if !s.satisfies_affinity(pod, node) {
            return Status::new(Code::UnschedulableAndUnresolvable, AFFINITY_REASON);
        }
        if !s.satisfies_anti_affinity(node) {
            return Status::new(Code::Unschedulable, ANTI_AFFINITY_REASON);
        }
        if !s.satisfies_existing_anti_affinity(node) {
            return Status::new(Code::Unschedulable, EXISTING_ANTI_AFFINITY_REASON);
        }
        Status::success()
    }
}
