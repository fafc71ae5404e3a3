//! The Score half: for `ScheduleAnyway` constraints, a node's score grows with the matching
//! pods in its domains (weighted by the log of the number of domains), then is reversed so
//! that the emptiest domains score highest.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::Pod;

use super::{Constraint, LABEL_HOSTNAME, PodTopologySpread, count_matching, has_all_keys, label};
use crate::framework::{CycleState, MAX_NODE_SCORE, NodeInfo, NodeScore, PreScorePlugin, ScorePlugin, Status};

const PRE_SCORE_KEY: &str = "PreScorePodTopologySpread";

struct PreScoreState {
    constraints: Vec<Constraint>,
    /// Feasible nodes missing a topology key: they score 0.
    ignored: HashSet<String>,
    pair_counts: HashMap<(String, String), i64>,
    normalizing_weight: Vec<f64>,
    namespace: String,
}

impl PreScorePlugin for PodTopologySpread {
    fn pre_score(&self, state: &mut CycleState, pod: &Pod, feasible: &[&NodeInfo], all: &[NodeInfo]) -> Status {
        let constraints = self.constraints(pod, "ScheduleAnyway");
        if constraints.is_empty() {
            return Status::skip();
        }
        let has_own =
            pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_ref()).is_some_and(|c| !c.is_empty());
        // With system defaults, nodes without a zone label still count.
        let require_all = has_own || !self.system_defaulted;
        let mut ignored = HashSet::new();
        let mut pair_counts: HashMap<(String, String), i64> = HashMap::new();
        let mut sizes = vec![0usize; constraints.len()];
        for node in feasible {
            if require_all && !has_all_keys(node, &constraints) {
                ignored.insert(node.name().to_string());
                continue;
            }
            for (i, c) in constraints.iter().enumerate() {
                if c.topology_key == LABEL_HOSTNAME {
                    continue;
                }
                let pair = (c.topology_key.clone(), label(node, &c.topology_key).cloned().unwrap_or_default());
                if let std::collections::hash_map::Entry::Vacant(e) = pair_counts.entry(pair) {
                    e.insert(0);
                    sizes[i] += 1;
                }
            }
        }
        let normalizing_weight = constraints
            .iter()
            .zip(&sizes)
            .map(|(c, &size)| {
                let size = if c.topology_key == LABEL_HOSTNAME { feasible.len() - ignored.len() } else { size };
                ((size + 2) as f64).ln()
            })
            .collect();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        for node in all {
            if require_all && !has_all_keys(node, &constraints) {
                continue;
            }
            for c in constraints.iter().filter(|c| c.includes(pod, node)) {
                let pair = (c.topology_key.clone(), label(node, &c.topology_key).cloned().unwrap_or_default());
                if let Some(count) = pair_counts.get_mut(&pair) {
                    *count += count_matching(node, &c.selector, &namespace);
                }
            }
        }
        state.write(PRE_SCORE_KEY, PreScoreState { constraints, ignored, pair_counts, normalizing_weight, namespace });
        Status::success()
    }
}

impl ScorePlugin for PodTopologySpread {
    fn score(&self, state: &CycleState, _: &Pod, node: &NodeInfo) -> Result<i64, Status> {
        let Some(s) = state.read::<PreScoreState>(PRE_SCORE_KEY) else { return Ok(0) };
        if s.ignored.contains(node.name()) {
            return Ok(0);
        }
        let mut score = 0.0;
        for (c, weight) in s.constraints.iter().zip(&s.normalizing_weight) {
            let Some(value) = label(node, &c.topology_key) else { continue };
            let count = if c.topology_key == LABEL_HOSTNAME {
                count_matching(node, &c.selector, &s.namespace)
            } else {
                s.pair_counts.get(&(c.topology_key.clone(), value.clone())).copied().unwrap_or(0)
            };
            // Upstream's scoreForCount.
            score += count as f64 * weight + (c.max_skew - 1) as f64;
        }
        Ok(score.round() as i64)
    }

    fn normalize_score(&self, state: &CycleState, _: &Pod, scores: &mut [NodeScore<'_>]) -> Status {
        let Some(s) = state.read::<PreScoreState>(PRE_SCORE_KEY) else { return Status::success() };
        let counted = scores.iter().filter(|n| !s.ignored.contains(n.name)).map(|n| n.score);
        let min = counted.clone().min().unwrap_or(0);
        let max = counted.max().unwrap_or(0).max(0);
        for n in scores.iter_mut() {
            n.score = if s.ignored.contains(n.name) {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - n.score) / max
            };
        }
        Status::success()
    }
}
