//! PodTopologySpread: spreads pods matching a selector evenly across topology domains (the
//! values of a node label). `DoNotSchedule` constraints filter nodes where the skew would
//! exceed `maxSkew` (with `minDomains`); `ScheduleAnyway` ones score nodes with fewer matching
//! pods higher. A pod without constraints that belongs to a Service, ReplicationController,
//! ReplicaSet or StatefulSet gets the cluster's default constraints (upstream's "System"
//! defaulting: hostname maxSkew 3 and zone maxSkew 5, both ScheduleAnyway).

mod filtering;
mod scoring;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, TopologySpreadConstraint};
use tug_api::selector::{LabelSelector, Operator, Requirement};

use crate::framework::{Listers, NodeInfo, Plugin};
use crate::plugins::{node_affinity, taint_toleration};

pub const NAME: &str = "PodTopologySpread";
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// How constraints are defaulted for pods that have none (upstream's `defaultingType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultingType {
    /// Upstream's built-in defaults (hostname 3, zone 5, ScheduleAnyway).
    System,
    /// The `defaultConstraints` of the configuration.
    List,
}

/// Upstream's `PodTopologySpreadArgs`; default constraints have no selector (it comes from
/// the pod's owners).
#[derive(Debug, Clone)]
pub struct Args {
    pub default_constraints: Vec<TopologySpreadConstraint>,
    pub defaulting_type: DefaultingType,
}

impl Default for Args {
    fn default() -> Self {
        Self { default_constraints: Vec::new(), defaulting_type: DefaultingType::System }
    }
}

fn system_default_constraints() -> Vec<TopologySpreadConstraint> {
    let c = |key: &str, skew| TopologySpreadConstraint {
        max_skew: skew,
        topology_key: key.to_string(),
        when_unsatisfiable: "ScheduleAnyway".to_string(),
        ..Default::default()
    };
    vec![c(LABEL_HOSTNAME, 3), c(LABEL_ZONE, 5)]
}

pub struct PodTopologySpread {
    default_constraints: Vec<TopologySpreadConstraint>,
    system_defaulted: bool,
    listers: Arc<dyn Listers>,
}

impl PodTopologySpread {
    pub fn new(args: Args, listers: Arc<dyn Listers>) -> Self {
        let system_defaulted = args.defaulting_type == DefaultingType::System;
        let default_constraints =
            if system_defaulted { system_default_constraints() } else { args.default_constraints };
        Self { default_constraints, system_defaulted, listers }
    }
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// One constraint, parsed (upstream's `topologySpreadConstraint`).
#[derive(Debug, Clone)]
pub struct Constraint {
    pub max_skew: i64,
    pub topology_key: String,
    pub selector: LabelSelector,
    pub min_domains: i64,
    /// `nodeAffinityPolicy: Honor` (the default): only nodes the pod's node affinity admits count.
    pub honor_node_affinity: bool,
    /// `nodeTaintsPolicy: Honor` (default Ignore): only nodes whose taints the pod tolerates count.
    pub honor_node_taints: bool,
}

impl Constraint {
    fn new(c: &TopologySpreadConstraint, selector: LabelSelector, pod_labels: &BTreeMap<String, String>) -> Self {
        // matchLabelKeys: the pod's values of those keys narrow the selector (upstream ANDs them).
        let mut selector = selector;
        let extra: Vec<Requirement> = c
            .match_label_keys
            .iter()
            .flatten()
            .filter_map(|k| pod_labels.get(k).and_then(|v| Requirement::new(k, Operator::In, vec![v.clone()]).ok()))
            .collect();
        // A selector that selects nothing stays so.
        if !extra.is_empty() && selector != LabelSelector::nothing() {
            let mut reqs = selector.requirements().to_vec();
            reqs.extend(extra);
            selector = LabelSelector::from_requirements(reqs);
        }
        Self {
            max_skew: i64::from(c.max_skew),
            topology_key: c.topology_key.clone(),
            selector,
            min_domains: i64::from(c.min_domains.unwrap_or(1)),
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_node_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        }
    }

    /// Whether `node` counts for this constraint under its inclusion policies.
    fn includes(&self, pod: &Pod, node: &NodeInfo) -> bool {
        if self.honor_node_affinity && !node_affinity::required_matches(pod, node) {
            return false;
        }
        if self.honor_node_taints {
            let tols = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
            let untolerated = node
                .taints()
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .any(|taint| !tols.iter().any(|t| taint_toleration::tolerates(t, taint)));
            if untolerated {
                return false;
            }
        }
        true
    }
}

fn pod_labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

/// Whether the node carries every constraint's topology key.
fn has_all_keys(node: &NodeInfo, constraints: &[Constraint]) -> bool {
    let labels = node.node.metadata.labels.as_ref();
    constraints.iter().all(|c| labels.is_some_and(|l| l.contains_key(&c.topology_key)))
}

fn label<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a String> {
    node.node.metadata.labels.as_ref().and_then(|l| l.get(key))
}

/// Upstream's `countPodsMatchSelector`: pods of the namespace, not being deleted, selected.
fn count_matching(node: &NodeInfo, selector: &LabelSelector, namespace: &str) -> i64 {
    node.pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.metadata.namespace.as_deref() == Some(namespace)
                && selector.matches_map(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
        })
        .count() as i64
}

impl PodTopologySpread {
    /// The pod's constraints for `action` (`DoNotSchedule` or `ScheduleAnyway`): its own, or
    /// the defaults with a selector built from the workloads it belongs to.
    fn constraints(&self, pod: &Pod, action: &str) -> Vec<Constraint> {
        let labels = pod_labels(pod);
        let own = pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_deref()).unwrap_or_default();
        if !own.is_empty() {
            return own
                .iter()
                .filter(|c| c.when_unsatisfiable == action)
                .map(|c| {
                    let selector = c.label_selector.as_ref().map_or_else(LabelSelector::nothing, |s| {
                        LabelSelector::from_label_selector(s).unwrap_or_else(|_| LabelSelector::nothing())
                    });
                    Constraint::new(c, selector, &labels)
                })
                .collect();
        }
        let defaults: Vec<&TopologySpreadConstraint> =
            self.default_constraints.iter().filter(|c| c.when_unsatisfiable == action).collect();
        if defaults.is_empty() {
            return Vec::new();
        }
        let selector = self.default_selector(pod);
        if selector.is_empty() {
            return Vec::new();
        }
        defaults.into_iter().map(|c| Constraint::new(c, selector.clone(), &labels)).collect()
    }

    /// Upstream's `DefaultSelector`: the union of the selectors of the pod's Services,
    /// ReplicationControllers, ReplicaSets and StatefulSets that select it.
    fn default_selector(&self, pod: &Pod) -> LabelSelector {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let labels = pod_labels(pod);
        let mut set: BTreeMap<String, String> = BTreeMap::new();
        let selects_map =
            |m: &BTreeMap<String, String>| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v));
        for svc in self.listers.services(ns) {
            if let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref())
                && selects_map(sel)
            {
                set.extend(sel.clone());
            }
        }
        for rc in self.listers.replication_controllers(ns) {
            if let Some(sel) = rc.spec.as_ref().and_then(|s| s.selector.as_ref())
                && selects_map(sel)
            {
                set.extend(sel.clone());
            }
        }
        let mut reqs: Vec<Requirement> =
            set.into_iter().filter_map(|(k, v)| Requirement::new(k, Operator::Equals, vec![v]).ok()).collect();
        let label_selectors = self
            .listers
            .replica_sets(ns)
            .iter()
            .filter_map(|rs| rs.spec.as_ref().map(|s| s.selector.clone()))
            .chain(self.listers.stateful_sets(ns).iter().filter_map(|ss| ss.spec.as_ref().map(|s| s.selector.clone())))
            .collect::<Vec<_>>();
        for sel in label_selectors {
            let Ok(parsed) = LabelSelector::from_label_selector(&sel) else { continue };
            if !parsed.is_empty() && parsed.matches_map(&labels) {
                reqs.extend(parsed.requirements().iter().cloned());
            }
        }
        LabelSelector::from_requirements(reqs)
    }
}

#[cfg(test)]
mod tests;
