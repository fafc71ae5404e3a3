//! The scheduling framework (upstream's `pkg/scheduler/framework`): one trait per extension
//! point, the per-cycle [`CycleState`], the [`Status`] plugins answer with, and the
//! [`Framework`] that runs a profile's plugins in order.
//!
//! Plugins are pure where upstream's are: PreFilter, Filter, PostFilter, PreScore, Score and
//! Reserve work on the cycle's snapshot ([`NodeInfo`]s) and never call the API; only Bind does.

mod cycle_state;
mod listers;
mod node_info;
mod runtime;
mod status;

pub use cycle_state::CycleState;
pub use listers::{Listers, StaticListers};
pub use node_info::{NodeInfo, Resource, has_pod_affinity, has_required_anti_affinity, pod_requests};
pub use runtime::{Framework, NodeScore, Nomination, ScheduleError, ScheduleResult, Victim};
pub use status::{Code, NodeToStatus, Status};

use k8s_openapi::api::core::v1::Pod;

/// The highest score a Score plugin may give a node after normalisation.
pub const MAX_NODE_SCORE: i64 = 100;

/// What every plugin has: its upstream name.
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
}

/// Runs once per cycle before filtering; may precompute state or reject the pod outright.
/// Returning [`Code::Skip`] skips the plugin's Filter for this cycle.
pub trait PreFilterPlugin: Plugin {
    fn pre_filter(&self, state: &mut CycleState, pod: &Pod, nodes: &[NodeInfo]) -> Status;
}

/// Decides whether the pod can run on one node.
pub trait FilterPlugin: Plugin {
    fn filter(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status;
}

/// What a PostFilter answers: a status (its message joins the pod's failure message) and, on
/// success, the node the pod is nominated to once the victims are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostFilterResult {
    pub status: Status,
    pub nomination: Option<Nomination>,
}

impl From<Status> for PostFilterResult {
    fn from(status: Status) -> Self {
        Self { status, nomination: None }
    }
}

/// Runs when no node passed the filters (upstream: preemption). It may run the profile's
/// PreFilter and Filter plugins again through `fw` on a changed snapshot (a dry run).
pub trait PostFilterPlugin: Plugin {
    fn post_filter(
        &self,
        state: &CycleState,
        pod: &Pod,
        nodes: &[NodeInfo],
        statuses: &NodeToStatus,
        fw: &Framework,
    ) -> PostFilterResult;
}

/// Runs once per cycle before scoring, over the feasible nodes (`all` is the whole snapshot).
/// [`Code::Skip`] skips the plugin's Score for this cycle.
pub trait PreScorePlugin: Plugin {
    fn pre_score(&self, state: &mut CycleState, pod: &Pod, nodes: &[&NodeInfo], all: &[NodeInfo]) -> Status;
}

/// Ranks a feasible node; scores are normalised to `0..=MAX_NODE_SCORE` then weighted.
pub trait ScorePlugin: Plugin {
    fn score(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<i64, Status>;

    /// Rescales the raw scores of all feasible nodes; the default keeps them.
    fn normalize_score(&self, _state: &CycleState, _pod: &Pod, _scores: &mut [NodeScore<'_>]) -> Status {
        Status::success()
    }
}

/// Holds (and on failure releases) whatever the plugin keeps for a pod placed on a node,
/// before the binding cycle.
pub trait ReservePlugin: Plugin {
    fn reserve(&self, state: &mut CycleState, pod: &Pod, node: &str) -> Status;
    fn unreserve(&self, state: &mut CycleState, pod: &Pod, node: &str);
}

/// Prepares the cluster for the placement before it is written (e.g. binds or provisions the
/// pod's volumes); may wait. Any failure sends the pod back to the queue.
#[async_trait::async_trait]
pub trait PreBindPlugin: Plugin {
    async fn pre_bind(&self, state: &CycleState, pod: &Pod, node: &str) -> Status;
}

/// Writes the placement to the cluster. [`Code::Skip`] hands it to the next binder.
#[async_trait::async_trait]
pub trait BindPlugin: Plugin {
    async fn bind(&self, state: &CycleState, pod: &Pod, node: &str) -> Status;
}

/// Upstream's `DefaultNormalizeScore`: scales scores so the highest becomes `max`; with
/// `reverse`, a high raw score becomes a low final one.
pub fn default_normalize_score(max: i64, reverse: bool, scores: &mut [NodeScore<'_>]) {
    let highest = scores.iter().map(|s| s.score).max().unwrap_or(0);
    if highest == 0 {
        if reverse {
            for s in scores.iter_mut() {
                s.score = max;
            }
        }
        return;
    }
    for s in scores.iter_mut() {
        let mut score = max * s.score / highest;
        if reverse {
            score = max - score;
        }
        s.score = score;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(raw: &[i64]) -> Vec<NodeScore<'static>> {
        raw.iter().map(|&score| NodeScore { name: "n", score }).collect()
    }

    #[test]
    fn default_normalize_scales_to_the_highest() {
        let mut s = scores(&[1, 2, 4]);
        default_normalize_score(100, false, &mut s);
        assert_eq!(s.iter().map(|s| s.score).collect::<Vec<_>>(), vec![25, 50, 100]);
    }

    #[test]
    fn default_normalize_reverse_turns_high_into_low() {
        let mut s = scores(&[0, 1, 2]);
        default_normalize_score(100, true, &mut s);
        assert_eq!(s.iter().map(|s| s.score).collect::<Vec<_>>(), vec![100, 50, 0]);
        let mut zero = scores(&[0, 0]);
        default_normalize_score(100, true, &mut zero);
        assert_eq!(zero.iter().map(|s| s.score).collect::<Vec<_>>(), vec![100, 100]);
    }
}
