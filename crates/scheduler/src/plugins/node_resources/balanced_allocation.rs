//! NodeResourcesBalancedAllocation: prefers nodes where the pod would leave cpu and memory
//! used in equal shares (score `(1 - standard deviation of the shares) * 100`).

use k8s_openapi::api::core::v1::Pod;

use super::{ResourceSpec, allocatable_and_requested, default_resources, scoring_request};
use crate::framework::{CycleState, MAX_NODE_SCORE, NodeInfo, Plugin, PreScorePlugin, ScorePlugin, Status};

pub const NAME: &str = "NodeResourcesBalancedAllocation";

pub struct BalancedAllocation {
    resources: Vec<ResourceSpec>,
}

impl Default for BalancedAllocation {
    fn default() -> Self {
        Self { resources: default_resources() }
    }
}

impl BalancedAllocation {
    pub fn new(resources: Vec<ResourceSpec>) -> Self {
        Self { resources }
    }
}

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl PreScorePlugin for BalancedAllocation {
    fn pre_score(&self, _: &mut CycleState, _: &Pod, _: &[&NodeInfo], _: &[NodeInfo]) -> Status {
        // NodeResourcesFit's PreScore already leaves the pod's scoring request in the state.
        Status::success()
    }
}

/// Upstream's `balancedResourceScorer`.
fn balanced_score(pairs: &[(i64, i64)]) -> i64 {
    let fractions: Vec<f64> = pairs
        .iter()
        .filter(|(alloc, _)| *alloc != 0)
        .map(|&(alloc, req)| (req as f64 / alloc as f64).min(1.0))
        .collect();
    let std = match fractions.len() {
        0 | 1 => 0.0,
        2 => ((fractions[0] - fractions[1]) / 2.0).abs(),
        n => {
            let mean = fractions.iter().sum::<f64>() / n as f64;
            (fractions.iter().map(|f| (f - mean) * (f - mean)).sum::<f64>() / n as f64).sqrt()
        }
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

impl ScorePlugin for BalancedAllocation {
    fn score(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<i64, Status> {
        let request = scoring_request(state, pod);
        Ok(balanced_score(&allocatable_and_requested(node, &request, &self.resources)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node, pod_requesting};
    use serde_json::json;

    #[test]
    fn even_use_scores_highest() {
        let state = CycleState::new();
        let p = pod_requesting(json!({"cpu": "1", "memory": "1Gi"}));
        let even = node("a", json!({}), json!({}), json!({"cpu": "4", "memory": "4Gi"}));
        assert_eq!(BalancedAllocation::default().score(&state, &p, &even).unwrap(), 100);
        // cpu 1/2 = 0.5, memory 1/4 = 0.25: std 0.125 -> 87
        let uneven = node("b", json!({}), json!({}), json!({"cpu": "2", "memory": "4Gi"}));
        assert_eq!(BalancedAllocation::default().score(&state, &p, &uneven).unwrap(), 87);
    }

    #[test]
    fn three_resources_use_the_standard_deviation() {
        assert_eq!(balanced_score(&[(10, 5), (10, 5), (10, 5)]), 100);
        // shares 0, 0.5, 1: std sqrt(1/6) = 0.408 -> 59
        assert_eq!(balanced_score(&[(10, 0), (10, 5), (10, 20)]), 59);
    }
}
