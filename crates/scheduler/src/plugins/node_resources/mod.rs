//! NodeResourcesFit and NodeResourcesBalancedAllocation: whether a node has room for the pod's
//! requests (cpu, memory, ephemeral storage, pod count, extended resources), and how to rank
//! nodes by what would be left (LeastAllocated, the default), by how full they would be
//! (MostAllocated, to pack), or by a piecewise-linear function of the utilisation
//! (RequestedToCapacityRatio); and by how even the use would be (BalancedAllocation).

mod balanced_allocation;

pub use balanced_allocation::{BalancedAllocation, NAME as BALANCED_NAME};

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{
    Code, CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, Plugin, PreFilterPlugin, PreScorePlugin, Resource,
    ScorePlugin, Status, pod_requests,
};

pub const FIT_NAME: &str = "NodeResourcesFit";
const PRE_SCORE_KEY: &str = "PreScoreNodeResourcesFit";

/// A scored resource and its weight in the average (upstream's default: cpu and memory, 1 each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSpec {
    pub name: String,
    pub weight: i64,
}

pub fn default_resources() -> Vec<ResourceSpec> {
    vec![ResourceSpec { name: "cpu".into(), weight: 1 }, ResourceSpec { name: "memory".into(), weight: 1 }]
}

/// One point of a RequestedToCapacityRatio shape: utilisation 0..=100 -> score 0..=10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapePoint {
    pub utilization: i64,
    pub score: i64,
}

/// Upstream's `scoringStrategy.type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScoringStrategy {
    LeastAllocated,
    MostAllocated,
    /// Points sorted by utilisation.
    RequestedToCapacityRatio(Vec<ShapePoint>),
}

/// Upstream's `maxCustomPriorityScore`: shape scores run 0..=10 and are scaled to 0..=100.
const MAX_CUSTOM_PRIORITY_SCORE: i64 = 10;

/// The amount of one resource in `r`.
fn amount(r: &Resource, name: &str) -> i64 {
    match name {
        "cpu" => r.milli_cpu,
        "memory" => r.memory,
        "ephemeral-storage" => r.ephemeral_storage,
        "pods" => r.allowed_pod_number,
        other => r.scalar(other),
    }
}

/// For each scored resource: (allocatable, requested on the node including the pod), with
/// upstream's non-zero defaults. A scalar resource the pod does not request gives (0, 0).
fn allocatable_and_requested(node: &NodeInfo, pod_request: &Resource, resources: &[ResourceSpec]) -> Vec<(i64, i64)> {
    resources
        .iter()
        .map(|r| {
            let pod = amount(pod_request, &r.name);
            let scalar = !matches!(r.name.as_str(), "cpu" | "memory" | "ephemeral-storage" | "pods");
            if scalar && pod == 0 {
                return (0, 0);
            }
            (amount(&node.allocatable, &r.name), amount(&node.non_zero_requested, &r.name) + pod)
        })
        .collect()
}

/// The pod's requests as the Filter compares them (written in PreFilter).
struct PreFilterState(Resource);
/// The pod's non-zero requests as the scorers count them (written in PreScore).
struct PreScoreState(Resource);

fn scoring_request(state: &CycleState, pod: &Pod) -> Resource {
    state.read::<PreScoreState>(PRE_SCORE_KEY).map(|s| s.0.clone()).unwrap_or_else(|| pod_requests(pod, true))
}

/// NodeResourcesFit with a scoring strategy (LeastAllocated by default).
pub struct Fit {
    strategy: ScoringStrategy,
    resources: Vec<ResourceSpec>,
}

impl Default for Fit {
    fn default() -> Self {
        Self { strategy: ScoringStrategy::LeastAllocated, resources: default_resources() }
    }
}

impl Fit {
    pub fn new(strategy: ScoringStrategy, resources: Vec<ResourceSpec>) -> Self {
        Self { strategy, resources }
    }
}

impl Plugin for Fit {
    fn name(&self) -> &'static str {
        FIT_NAME
    }
}

/// Upstream's `fitsRequest`: every resource the node lacks, as reasons.
pub fn insufficient_resources(request: &Resource, node: &NodeInfo) -> Vec<String> {
    let mut reasons = Vec::new();
    if node.pods.len() as i64 + 1 > node.allocatable.allowed_pod_number {
        reasons.push("Too many pods".to_string());
    }
    if request.milli_cpu == 0
        && request.memory == 0
        && request.ephemeral_storage == 0
        && request.scalar.values().all(|v| *v == 0)
    {
        return reasons;
    }
    let (alloc, used) = (&node.allocatable, &node.requested);
    if request.milli_cpu > 0 && request.milli_cpu > alloc.milli_cpu - used.milli_cpu {
        reasons.push("Insufficient cpu".to_string());
    }
    if request.memory > 0 && request.memory > alloc.memory - used.memory {
        reasons.push("Insufficient memory".to_string());
    }
    if request.ephemeral_storage > 0 && request.ephemeral_storage > alloc.ephemeral_storage - used.ephemeral_storage {
        reasons.push("Insufficient ephemeral-storage".to_string());
    }
    for (name, &want) in &request.scalar {
        if want > 0 && want > alloc.scalar(name) - used.scalar(name) {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

impl PreFilterPlugin for Fit {
    fn pre_filter(&self, state: &mut CycleState, pod: &Pod, _: &[NodeInfo]) -> Status {
        state.write(FIT_NAME, PreFilterState(pod_requests(pod, false)));
        Status::success()
    }
}

impl FilterPlugin for Fit {
    fn filter(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        let computed;
        let request = match state.read::<PreFilterState>(FIT_NAME) {
            Some(s) => &s.0,
            None => {
                computed = pod_requests(pod, false);
                &computed
            }
        };
        let reasons = insufficient_resources(request, node);
        if reasons.is_empty() { Status::success() } else { Status::with_reasons(Code::Unschedulable, reasons) }
    }
}

impl PreScorePlugin for Fit {
    fn pre_score(&self, state: &mut CycleState, pod: &Pod, _: &[&NodeInfo], _: &[NodeInfo]) -> Status {
        state.write(PRE_SCORE_KEY, PreScoreState(pod_requests(pod, true)));
        Status::success()
    }
}

fn least_requested_score(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

fn most_requested_score(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 {
        return 0;
    }
    // Pods without requests count upstream's defaults, which may exceed a small node.
    requested.min(capacity) * MAX_NODE_SCORE / capacity
}

/// Upstream's `buildBrokenLinearFunction` over a shape already scaled to 0..=100 scores.
fn broken_linear(shape: &[ShapePoint], utilization: i64) -> i64 {
    for (i, p) in shape.iter().enumerate() {
        if utilization <= p.utilization {
            if i == 0 {
                return p.score;
            }
            let prev = shape[i - 1];
            return prev.score
                + (p.score - prev.score) * (utilization - prev.utilization) / (p.utilization - prev.utilization);
        }
    }
    shape.last().map_or(0, |p| p.score)
}

impl ScorePlugin for Fit {
    /// The weighted average over the scored resources of the strategy's per-resource score.
    fn score(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<i64, Status> {
        let request = scoring_request(state, pod);
        let pairs = allocatable_and_requested(node, &request, &self.resources);
        let scaled: Vec<ShapePoint> = match &self.strategy {
            ScoringStrategy::RequestedToCapacityRatio(shape) => shape
                .iter()
                .map(|p| ShapePoint {
                    utilization: p.utilization,
                    score: p.score * (MAX_NODE_SCORE / MAX_CUSTOM_PRIORITY_SCORE),
                })
                .collect(),
            _ => Vec::new(),
        };
        let (mut total, mut weights) = (0, 0);
        for ((alloc, req), spec) in pairs.into_iter().zip(&self.resources) {
            if alloc == 0 {
                continue;
            }
            let score = match &self.strategy {
                ScoringStrategy::LeastAllocated => least_requested_score(req, alloc),
                ScoringStrategy::MostAllocated => most_requested_score(req, alloc),
                ScoringStrategy::RequestedToCapacityRatio(_) => {
                    let utilization = if req > alloc { 100 } else { req * 100 / alloc };
                    broken_linear(&scaled, utilization)
                }
            };
            total += score * spec.weight;
            weights += spec.weight;
        }
        if weights == 0 {
            return Ok(0);
        }
        Ok(match self.strategy {
            // Upstream rounds this one, and truncates the others.
            ScoringStrategy::RequestedToCapacityRatio(_) => (total as f64 / weights as f64).round() as i64,
            _ => total / weights,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node, pod_requesting};
    use serde_json::json;
    use std::sync::Arc;

    fn sized(cpu: &str, memory: &str, pods: &str) -> NodeInfo {
        node(
            "n",
            json!({}),
            json!({}),
            json!({"cpu": cpu, "memory": memory, "pods": pods, "ephemeral-storage": "10Gi", "example.com/gpu": "1"}),
        )
    }

    fn filter(pod: &Pod, n: &NodeInfo) -> Status {
        let mut state = CycleState::new();
        Fit::default().pre_filter(&mut state, pod, &[]);
        Fit::default().filter(&state, pod, n)
    }

    #[test]
    fn rejects_a_pod_asking_more_than_is_left() {
        let mut n = sized("2", "4Gi", "110");
        n.add_pod(Arc::new(pod_requesting(json!({"cpu": "1500m"}))));
        let s = filter(&pod_requesting(json!({"cpu": "600m", "memory": "5Gi"})), &n);
        assert_eq!(
            s,
            Status::with_reasons(Code::Unschedulable, vec!["Insufficient cpu".into(), "Insufficient memory".into()])
        );
        assert!(filter(&pod_requesting(json!({"cpu": "500m", "memory": "4Gi"})), &n).is_success());
    }

    #[test]
    fn counts_pods_ephemeral_storage_and_extended_resources() {
        let mut n = sized("2", "4Gi", "1");
        let s = filter(
            &pod_requesting(json!({"ephemeral-storage": "11Gi", "example.com/gpu": "2", "example.com/fpga": "1"})),
            &n,
        );
        assert_eq!(
            s.reasons,
            vec!["Insufficient ephemeral-storage", "Insufficient example.com/fpga", "Insufficient example.com/gpu"]
        );
        n.add_pod(Arc::new(pod_requesting(json!({}))));
        assert_eq!(filter(&pod_requesting(json!({})), &n).reasons, vec!["Too many pods"]);
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let state = CycleState::new();
        let p = pod_requesting(json!({"cpu": "1", "memory": "1Gi"}));
        let empty = sized("4", "4Gi", "110");
        // cpu (4000-1000)/4000 = 75, memory (4Gi-1Gi)/4Gi = 75
        assert_eq!(Fit::default().score(&state, &p, &empty).unwrap(), 75);
        let mut busy = sized("4", "4Gi", "110");
        busy.add_pod(Arc::new(pod_requesting(json!({"cpu": "2", "memory": "2Gi"}))));
        assert_eq!(Fit::default().score(&state, &p, &busy).unwrap(), 25);
        let over = sized("500m", "4Gi", "110");
        // cpu over capacity scores 0: (0 + 75) / 2
        assert_eq!(Fit::default().score(&state, &p, &over).unwrap(), 37);
    }

    #[test]
    fn most_allocated_prefers_the_fuller_node() {
        let state = CycleState::new();
        let p = pod_requesting(json!({"cpu": "1", "memory": "1Gi"}));
        let most = Fit::new(ScoringStrategy::MostAllocated, default_resources());
        assert_eq!(most.score(&state, &p, &sized("4", "4Gi", "110")).unwrap(), 25);
        let mut busy = sized("4", "4Gi", "110");
        busy.add_pod(Arc::new(pod_requesting(json!({"cpu": "2", "memory": "2Gi"}))));
        assert_eq!(most.score(&state, &p, &busy).unwrap(), 75);
        // Over capacity counts as full.
        assert_eq!(most.score(&state, &p, &sized("500m", "4Gi", "110")).unwrap(), (100 + 25) / 2);
    }

    #[test]
    fn requested_to_capacity_ratio_follows_the_shape() {
        let state = CycleState::new();
        let p = pod_requesting(json!({"cpu": "1", "memory": "1Gi"}));
        let shape = vec![ShapePoint { utilization: 0, score: 0 }, ShapePoint { utilization: 100, score: 10 }];
        let ratio = Fit::new(ScoringStrategy::RequestedToCapacityRatio(shape), default_resources());
        // 25% used: 25 on both resources.
        assert_eq!(ratio.score(&state, &p, &sized("4", "4Gi", "110")).unwrap(), 25);
        let falling = vec![ShapePoint { utilization: 0, score: 10 }, ShapePoint { utilization: 50, score: 0 }];
        let ratio = Fit::new(ScoringStrategy::RequestedToCapacityRatio(falling), default_resources());
        // 25% is half way down from 100 to 0; above 50% the last point's 0 holds.
        assert_eq!(ratio.score(&state, &p, &sized("4", "4Gi", "110")).unwrap(), 50);
        assert_eq!(ratio.score(&state, &p, &sized("1", "1Gi", "110")).unwrap(), 0);
    }

    #[test]
    fn scoring_counts_missing_requests_as_upstream_defaults() {
        let state = CycleState::new();
        let p = pod_requesting(json!({}));
        let n = sized("1", "2000Mi", "110");
        // cpu (1000-100)/1000 = 90, memory (2000-200)/2000 = 90
        assert_eq!(Fit::default().score(&state, &p, &n).unwrap(), 90);
    }
}
