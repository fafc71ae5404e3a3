//! A profile's plugins and the scheduling algorithm that runs them (upstream's
//! `frameworkruntime` plus `schedulePod`): PreFilter, Filter over every node, PostFilter when
//! none is feasible, then PreScore, Score, NormalizeScore and weighting, and the choice of the
//! best node with ties broken at random.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Pod;

use super::{
    BindPlugin, Code, CycleState, FilterPlugin, NodeInfo, NodeToStatus, PostFilterPlugin, PreBindPlugin,
    PreFilterPlugin, PreScorePlugin, ReservePlugin, ScorePlugin, Status,
};

/// A node's score at one plugin, or in total. The name is borrowed from the cycle's snapshot:
/// a cycle scores hundreds of nodes with every Score plugin, and copying each name for each
/// plugin was a good share of the scheduler's allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeScore<'a> {
    pub name: &'a str,
    pub score: i64,
}

/// Where the pod goes and how many nodes were looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleResult {
    pub node: String,
    pub evaluated_nodes: usize,
    pub feasible_nodes: usize,
}

/// A pod preemption would evict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Where preemption makes room for the pod, and whom it evicts for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nomination {
    pub node: String,
    pub victims: Vec<Victim>,
}

/// Why a cycle found no node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The pod fits no node; the message is upstream's FitError text. With a nomination,
    /// preemption chose a node to free for it.
    #[error("{message}")]
    Unschedulable { message: String, plugins: Vec<&'static str>, nomination: Option<Nomination> },
    #[error("no nodes available to schedule pods")]
    NoNodes,
    #[error("running {plugin}: {message}")]
    Plugin { plugin: &'static str, message: String },
}

/// The plugins of one scheduling profile, in the order they run at each extension point.
#[derive(Default, Clone)]
pub struct Framework {
    pub pre_filter: Vec<Arc<dyn PreFilterPlugin>>,
    pub filter: Vec<Arc<dyn FilterPlugin>>,
    pub post_filter: Vec<Arc<dyn PostFilterPlugin>>,
    pub pre_score: Vec<Arc<dyn PreScorePlugin>>,
    /// Score plugins with their weights.
    pub score: Vec<(Arc<dyn ScorePlugin>, i64)>,
    pub reserve: Vec<Arc<dyn ReservePlugin>>,
    pub pre_bind: Vec<Arc<dyn PreBindPlugin>>,
    pub bind: Vec<Arc<dyn BindPlugin>>,
    /// Upstream's `percentageOfNodesToScore`: filtering stops once this share of the nodes is
    /// found feasible; `None` or 0 is upstream's adaptive default.
    pub percentage_of_nodes_to_score: Option<i32>,
    /// Where the next cycle starts filtering, so that every node gets its turn.
    pub next_start_node_index: Arc<AtomicUsize>,
}

/// Upstream's `minFeasibleNodesToFind`: below this many nodes all are evaluated.
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// Upstream's `minFeasibleNodesPercentageToFind`.
const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// How many feasible nodes a cycle looks for among `all` (upstream's `numFeasibleNodesToFind`):
/// all of them in small clusters; otherwise the configured share, by default 50% less one
/// point per 125 nodes (at least 5%), and never fewer than 100.
pub fn num_feasible_nodes_to_find(percentage: Option<i32>, all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let percentage = match percentage {
        Some(p) if p > 0 => (p as usize).min(100),
        _ => 50usize.saturating_sub(all / 125).max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND),
    };
    (all * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

impl Framework {
    /// Finds the node for `pod` among `nodes`, or says why there is none.
    pub fn schedule_pod(
        &self,
        state: &mut CycleState,
        pod: &Pod,
        nodes: &[NodeInfo],
    ) -> Result<ScheduleResult, ScheduleError> {
        if nodes.is_empty() {
            return Err(ScheduleError::NoNodes);
        }
        let skip_filter = match self.run_pre_filter(state, pod, nodes) {
            Ok(skip) => skip,
            Err((plugin, s)) if s.code == Code::Error => {
                return Err(ScheduleError::Plugin { plugin, message: s.message() });
            }
            Err((plugin, s)) => {
                // Upstream reports the PreFilter's message once instead of per node.
                let message = format!("0/{} nodes are available: {}.", nodes.len(), s.message());
                return Err(ScheduleError::Unschedulable { message, plugins: vec![plugin], nomination: None });
            }
        };
        let mut statuses = NodeToStatus::default();
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        // As upstream: stop once enough feasible nodes are found, starting where the previous
        // cycle stopped so that every node gets its turn.
        let wanted = num_feasible_nodes_to_find(self.percentage_of_nodes_to_score, nodes.len());
        let start = self.next_start_node_index.load(Ordering::Relaxed) % nodes.len();
        let mut processed = 0;
        for node in nodes[start..].iter().chain(&nodes[..start]) {
            if feasible.len() >= wanted {
                break;
            }
            processed += 1;
            let s = self.run_filter(state, pod, node, &skip_filter);
            if s.code == Code::Error {
                return Err(ScheduleError::Plugin { plugin: s.plugin, message: s.message() });
            }
            if s.is_rejected() {
                statuses.set(node.name(), s);
            } else {
                feasible.push(node);
            }
        }
        self.next_start_node_index.store((start + processed) % nodes.len(), Ordering::Relaxed);
        if feasible.is_empty() {
            let mut message = statuses.fit_error_message(nodes.len());
            let mut plugins: Vec<&'static str> = statuses.plugins().collect();
            plugins.sort_unstable();
            plugins.dedup();
            let mut nomination = None;
            for p in &self.post_filter {
                let r = p.post_filter(state, pod, nodes, &statuses, self);
                if r.status.is_success() {
                    nomination = r.nomination;
                    break;
                }
                if !r.status.message().is_empty() {
                    message.push_str(&format!(" {}.", r.status.message()));
                }
            }
            return Err(ScheduleError::Unschedulable { message, plugins, nomination });
        }
        let result = |node: &str| ScheduleResult {
            node: node.to_string(),
            evaluated_nodes: processed,
            feasible_nodes: feasible.len(),
        };
        if feasible.len() == 1 {
            return Ok(result(feasible[0].name()));
        }
        let totals = self.score_nodes(state, pod, &feasible, nodes)?;
        Ok(result(select_host(&totals)))
    }

    /// Runs every PreFilter; returns the plugins whose Filter is skipped, or the plugin that
    /// rejected the pod (or failed) with its status.
    pub fn run_pre_filter(
        &self,
        state: &mut CycleState,
        pod: &Pod,
        nodes: &[NodeInfo],
    ) -> Result<Vec<&'static str>, (&'static str, Status)> {
        let mut skip: Vec<&'static str> = Vec::new();
        for p in &self.pre_filter {
            let s = p.pre_filter(state, pod, nodes);
            match s.code {
                Code::Success => {}
                Code::Skip => skip.push(p.name()),
                _ => return Err((p.name(), s.by(p.name()))),
            }
        }
        Ok(skip)
    }

    /// Runs the Filter plugins (but those in `skip`) on one node; the first rejection or
    /// error wins, tagged with its plugin.
    pub fn run_filter(&self, state: &CycleState, pod: &Pod, node: &NodeInfo, skip: &[&'static str]) -> Status {
        for f in self.filter.iter().filter(|f| !skip.contains(&f.name())) {
            let s = f.filter(state, pod, node);
            if s.code == Code::Error || s.is_rejected() {
                return s.by(f.name());
            }
        }
        Status::success()
    }

    /// A dry run on a changed snapshot (preemption): whether `pod` fits `nodes[index]`, with
    /// PreFilter state computed afresh over `nodes`.
    pub fn fits(&self, pod: &Pod, nodes: &[NodeInfo], index: usize) -> Status {
        let mut state = CycleState::new();
        match self.run_pre_filter(&mut state, pod, nodes) {
            Ok(skip) => self.run_filter(&state, pod, &nodes[index], &skip),
            Err((_, s)) => s,
        }
    }

    /// PreScore, Score, NormalizeScore and weights: each feasible node's total.
    fn score_nodes<'a>(
        &self,
        state: &mut CycleState,
        pod: &Pod,
        feasible: &[&'a NodeInfo],
        all: &[NodeInfo],
    ) -> Result<Vec<NodeScore<'a>>, ScheduleError> {
        let mut skip: Vec<&'static str> = Vec::new();
        for p in &self.pre_score {
            let s = p.pre_score(state, pod, feasible, all);
            match s.code {
                Code::Success => {}
                Code::Skip => skip.push(p.name()),
                _ => return Err(ScheduleError::Plugin { plugin: p.name(), message: s.message() }),
            }
        }
        let mut totals: Vec<NodeScore> = feasible.iter().map(|n| NodeScore { name: n.name(), score: 0 }).collect();
        for (plugin, weight) in self.score.iter().filter(|(p, _)| !skip.contains(&p.name())) {
            let mut scores = Vec::with_capacity(feasible.len());
            for n in feasible {
                let score = plugin
                    .score(state, pod, n)
                    .map_err(|s| ScheduleError::Plugin { plugin: plugin.name(), message: s.message() })?;
                scores.push(NodeScore { name: n.name(), score });
            }
            let s = plugin.normalize_score(state, pod, &mut scores);
            if !s.is_success() {
                return Err(ScheduleError::Plugin { plugin: plugin.name(), message: s.message() });
            }
            for (total, s) in totals.iter_mut().zip(&scores) {
                total.score += s.score * weight;
            }
        }
        Ok(totals)
    }

    /// Runs every Reserve plugin; on a failure, unreserves those already run.
    pub fn run_reserve(&self, state: &mut CycleState, pod: &Pod, node: &str) -> Status {
        for (i, p) in self.reserve.iter().enumerate() {
            let s = p.reserve(state, pod, node);
            if !s.is_success() {
                for done in self.reserve[..i].iter().rev() {
                    done.unreserve(state, pod, node);
                }
                return s.by(p.name());
            }
        }
        Status::success()
    }

    /// Runs every Unreserve, in reverse order, as upstream does.
    pub fn run_unreserve(&self, state: &mut CycleState, pod: &Pod, node: &str) {
        for p in self.reserve.iter().rev() {
            p.unreserve(state, pod, node);
        }
    }

    /// Asks the binders in order until one does not skip.
    pub async fn run_bind(&self, state: &CycleState, pod: &Pod, node: &str) -> Status {
        // PreBind runs first, as upstream's binding cycle; its failure is the binding's.
        for p in &self.pre_bind {
            let s = p.pre_bind(state, pod, node).await;
            if !s.is_success() && s.code != Code::Skip {
                return s.by(p.name());
            }
        }
        for b in &self.bind {
            let s = b.bind(state, pod, node).await;
            if s.code != Code::Skip {
                return s.by(b.name());
            }
        }
        Status::error("no bind plugin bound the pod")
    }
}

/// The node with the highest total; among equals, each is equally likely (reservoir sampling
/// as upstream's `selectHost`).
pub fn select_host<'a>(scores: &[NodeScore<'a>]) -> &'a str {
    let mut best = &scores[0];
    let mut ties = 1u32;
    for s in &scores[1..] {
        if s.score > best.score {
            best = s;
            ties = 1;
        } else if s.score == best.score {
            ties += 1;
            if fastrand::u32(0..ties) == 0 {
                best = s;
            }
        }
    }
    best.name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::node_info::tests::pod;
    use crate::framework::{MAX_NODE_SCORE, Plugin};
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn node(name: &str) -> NodeInfo {
        NodeInfo::new(Arc::new(serde_json::from_value::<Node>(json!({"metadata": {"name": name}})).unwrap()))
    }

    struct RejectNamed(&'static str);
    impl Plugin for RejectNamed {
        fn name(&self) -> &'static str {
            "RejectNamed"
        }
    }
    impl FilterPlugin for RejectNamed {
        fn filter(&self, _: &CycleState, _: &Pod, n: &NodeInfo) -> Status {
            if n.name() == self.0 { Status::new(Code::Unschedulable, "rejected") } else { Status::success() }
        }
    }

    struct NameLength;
    impl Plugin for NameLength {
        fn name(&self) -> &'static str {
            "NameLength"
        }
    }
    impl ScorePlugin for NameLength {
        fn score(&self, _: &CycleState, _: &Pod, n: &NodeInfo) -> Result<i64, Status> {
            Ok(n.name().len() as i64)
        }
        fn normalize_score(&self, _: &CycleState, _: &Pod, s: &mut [NodeScore<'_>]) -> Status {
            crate::framework::default_normalize_score(MAX_NODE_SCORE, false, s);
            Status::success()
        }
    }

    #[test]
    fn picks_the_highest_scoring_feasible_node() {
        let fw = Framework {
            filter: vec![Arc::new(RejectNamed("longest"))],
            score: vec![(Arc::new(NameLength), 2)],
            ..Default::default()
        };
        let nodes = vec![node("a"), node("bbb"), node("longest")];
        let r = fw.schedule_pod(&mut CycleState::new(), &pod(json!({"containers": []})), &nodes).unwrap();
        assert_eq!(r.node, "bbb");
        assert_eq!((r.evaluated_nodes, r.feasible_nodes), (3, 2));
    }

    #[test]
    fn no_feasible_node_gives_the_fit_error() {
        let fw = Framework { filter: vec![Arc::new(RejectNamed("a"))], ..Default::default() };
        let err = fw.schedule_pod(&mut CycleState::new(), &pod(json!({"containers": []})), &[node("a")]).unwrap_err();
        assert_eq!(
            err,
            ScheduleError::Unschedulable {
                message: "0/1 nodes are available: 1 rejected.".into(),
                plugins: vec!["RejectNamed"],
                nomination: None,
            }
        );
        let err = fw.schedule_pod(&mut CycleState::new(), &pod(json!({"containers": []})), &[]).unwrap_err();
        assert_eq!(err, ScheduleError::NoNodes);
    }

    /// Records reserve/unreserve calls; fails Reserve when `fail` is set.
    struct Recorder(&'static str, bool, std::sync::Mutex<Vec<String>>);
    impl Plugin for Recorder {
        fn name(&self) -> &'static str {
            self.0
        }
    }
    impl ReservePlugin for Recorder {
        fn reserve(&self, _: &mut CycleState, _: &Pod, _: &str) -> Status {
            self.2.lock().unwrap().push("reserve".into());
            if self.1 { Status::error("full") } else { Status::success() }
        }
        fn unreserve(&self, _: &mut CycleState, _: &Pod, _: &str) {
            self.2.lock().unwrap().push("unreserve".into());
        }
    }

    #[test]
    fn a_failed_reserve_unreserves_the_plugins_before_it() {
        let first = Arc::new(Recorder("First", false, Default::default()));
        let second = Arc::new(Recorder("Second", true, Default::default()));
        let fw = Framework { reserve: vec![first.clone(), second.clone()], ..Default::default() };
        let s = fw.run_reserve(&mut CycleState::new(), &pod(json!({"containers": []})), "n");
        assert_eq!((s.code, s.plugin), (Code::Error, "Second"));
        assert_eq!(*first.2.lock().unwrap(), vec!["reserve", "unreserve"]);
        assert_eq!(*second.2.lock().unwrap(), vec!["reserve"]);
    }

    #[test]
    fn large_clusters_evaluate_a_rotating_share_of_the_nodes() {
        assert_eq!(num_feasible_nodes_to_find(None, 99), 99);
        assert_eq!(num_feasible_nodes_to_find(None, 150), 100);
        assert_eq!(num_feasible_nodes_to_find(None, 5000), 500);
        assert_eq!(num_feasible_nodes_to_find(None, 100_000), 5000);
        assert_eq!(num_feasible_nodes_to_find(Some(50), 1000), 500);
        assert_eq!(num_feasible_nodes_to_find(Some(0), 1000), 420);
        let fw = Framework { score: vec![(Arc::new(NameLength), 1)], ..Default::default() };
        let nodes: Vec<NodeInfo> = (0..250).map(|i| node(&format!("n{i:03}"))).collect();
        let p = pod(json!({"containers": []}));
        let r = fw.schedule_pod(&mut CycleState::new(), &p, &nodes).unwrap();
        // 48% of 250 nodes.
        assert_eq!((r.evaluated_nodes, r.feasible_nodes), (120, 120));
        // The next cycles start where the previous stopped, wrapping around.
        assert_eq!(fw.next_start_node_index.load(Ordering::Relaxed), 120);
        fw.schedule_pod(&mut CycleState::new(), &p, &nodes).unwrap();
        fw.schedule_pod(&mut CycleState::new(), &p, &nodes).unwrap();
        assert_eq!(fw.next_start_node_index.load(Ordering::Relaxed), 110);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let scores: Vec<NodeScore> = ["a", "b", "c"].iter().map(|n| NodeScore { name: n, score: 5 }).collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(select_host(&scores));
        }
        assert_eq!(seen.len(), 3);
        let best = vec![NodeScore { name: "x", score: 1 }, NodeScore { name: "y", score: 9 }];
        assert_eq!(select_host(&best), "y");
    }
}
