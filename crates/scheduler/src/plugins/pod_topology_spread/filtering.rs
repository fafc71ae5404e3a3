//! The Filter half: matching pods per domain counted once in PreFilter over the nodes that
//! count (all topology keys present, inclusion policies met), then the skew check per node.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;

use super::{Constraint, NAME, PodTopologySpread, count_matching, has_all_keys, label};
use crate::framework::{Code, CycleState, FilterPlugin, NodeInfo, PreFilterPlugin, Status};

/// Upstream's reasons.
pub const CONSTRAINTS_NOT_MATCH: &str = "node(s) didn't match pod topology spread constraints";
pub const NODE_LABEL_NOT_MATCH: &str = "node(s) didn't match pod topology spread constraints (missing required label)";

struct PreFilterState {
    constraints: Vec<Constraint>,
    /// (key, value) -> matching pods in that domain.
    match_num: HashMap<(String, String), i64>,
    /// Per constraint: the smallest count over its domains, or 0 below `minDomains` domains.
    min_match: Vec<i64>,
}

impl PreFilterPlugin for PodTopologySpread {
    fn pre_filter(&self, state: &mut CycleState, pod: &Pod, nodes: &[NodeInfo]) -> Status {
        let constraints = self.constraints(pod, "DoNotSchedule");
        if constraints.is_empty() {
            return Status::skip();
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let mut match_num: HashMap<(String, String), i64> = HashMap::new();
        for node in nodes.iter().filter(|n| has_all_keys(n, &constraints)) {
            for c in constraints.iter().filter(|c| c.includes(pod, node)) {
                let value = label(node, &c.topology_key).cloned().unwrap_or_default();
                *match_num.entry((c.topology_key.clone(), value)).or_insert(0) += count_matching(node, &c.selector, ns);
            }
        }
        let min_match = constraints
            .iter()
            .map(|c| {
                let domains: Vec<i64> =
                    match_num.iter().filter(|((k, _), _)| *k == c.topology_key).map(|(_, n)| *n).collect();
                if (domains.len() as i64) < c.min_domains { 0 } else { domains.into_iter().min().unwrap_or(0) }
            })
            .collect();
        state.write(NAME, PreFilterState { constraints, match_num, min_match });
        Status::success()
    }
}

impl FilterPlugin for PodTopologySpread {
    fn filter(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<PreFilterState>(NAME) else { return Status::success() };
        let empty = BTreeMap::new();
        let own_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        for (c, min) in s.constraints.iter().zip(&s.min_match) {
            let Some(value) = label(node, &c.topology_key) else {
                return Status::new(Code::UnschedulableAndUnresolvable, NODE_LABEL_NOT_MATCH);
            };
            let self_match = i64::from(c.selector.matches_map(own_labels));
            let count = s.match_num.get(&(c.topology_key.clone(), value.clone())).copied().unwrap_or(0);
            if count + self_match - min > c.max_skew {
                return Status::new(Code::Unschedulable, CONSTRAINTS_NOT_MATCH);
            }
        }
        Status::success()
    }
}
