//! The Score half: a score per topology domain summed from every matching term, then a node's
//! score is the sum over its domains, normalised between the lowest and the highest.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;

use super::{AffinityTerm, InterPodAffinity, NamespaceLabels, PodTerms, has_pod_affinity};
use crate::framework::{CycleState, MAX_NODE_SCORE, NodeInfo, NodeScore, PreScorePlugin, ScorePlugin, Status};

const PRE_SCORE_KEY: &str = "PreScoreInterPodAffinity";

/// Topology key -> value -> score.
#[derive(Default)]
struct TopologyScore(HashMap<String, HashMap<String, i64>>);

impl TopologyScore {
    /// Adds `sign * weight` of every term that `target` matches, in the domain of `node`.
    fn process_terms(
        &mut self,
        terms: &[AffinityTerm],
        target: &Pod,
        target_ns: &BTreeMap<String, String>,
        node: &NodeInfo,
        sign: i64,
    ) {
        for t in terms {
            let Some(value) = node.node.metadata.labels.as_ref().and_then(|l| l.get(&t.topology_key)) else {
                continue;
            };
            if t.matches(target, target_ns) {
                *self.0.entry(t.topology_key.clone()).or_default().entry(value.clone()).or_insert(0) += sign * t.weight;
            }
        }
    }
}

impl PreScorePlugin for InterPodAffinity {
    fn pre_score(&self, state: &mut CycleState, pod: &Pod, _: &[&NodeInfo], all: &[NodeInfo]) -> Status {
        let terms = PodTerms::of(pod);
        let has_constraints = !terms.preferred_affinity.is_empty() || !terms.preferred_anti_affinity.is_empty();
        if self.args.ignore_preferred_terms_of_existing_pods && !has_constraints {
            return Status::skip();
        }
        let mut ns = NamespaceLabels::new(self.listers.as_ref());
        let own_ns = ns.of(pod).clone();
        let mut scores = TopologyScore::default();
        for node in all {
            let candidates = if has_constraints { &node.pods } else { &node.pods_with_affinity };
            for existing in candidates {
                let existing_has = has_pod_affinity(existing);
                // Unless the pod has preferred terms, only pods with affinity of their own matter.
                if !has_constraints && !existing_has {
                    continue;
                }
                if has_constraints {
                    let existing_ns = ns.of(existing).clone();
                    scores.process_terms(&terms.preferred_affinity, existing, &existing_ns, node, 1);
                    scores.process_terms(&terms.preferred_anti_affinity, existing, &existing_ns, node, -1);
                }
                if !existing_has {
                    continue;
                }
                let theirs = PodTerms::of(existing);
                if self.args.hard_pod_affinity_weight > 0 {
                    let hard: Vec<AffinityTerm> = theirs
                        .required_affinity
                        .iter()
                        .cloned()
                        .map(|mut t| {
                            t.weight = self.args.hard_pod_affinity_weight;
                            t
                        })
                        .collect();
                    scores.process_terms(&hard, pod, &own_ns, node, 1);
                }
                if !self.args.ignore_preferred_terms_of_existing_pods {
                    scores.process_terms(&theirs.preferred_affinity, pod, &own_ns, node, 1);
                    scores.process_terms(&theirs.preferred_anti_affinity, pod, &own_ns, node, -1);
                }
            }
        }
        if scores.0.is_empty() {
            return Status::skip();
        }
        state.write(PRE_SCORE_KEY, scores);
        Status::success()
    }
}

impl ScorePlugin for InterPodAffinity {
    fn score(&self, state: &CycleState, _: &Pod, node: &NodeInfo) -> Result<i64, Status> {
        let Some(s) = state.read::<TopologyScore>(PRE_SCORE_KEY) else { return Ok(0) };
        let labels = node.node.metadata.labels.as_ref();
        Ok(s.0.iter().filter_map(|(key, values)| labels.and_then(|l| l.get(key)).and_then(|v| values.get(v))).sum())
    }

    /// Upstream maps `[min, max]` onto `[0, 100]`; all equal gives 0.
    fn normalize_score(&self, state: &CycleState, _: &Pod, scores: &mut [NodeScore<'_>]) -> Status {
        if state.read::<TopologyScore>(PRE_SCORE_KEY).is_none() {
            return Status::success();
        }
        let min = scores.iter().map(|s| s.score).min().unwrap_or(0);
        let max = scores.iter().map(|s| s.score).max().unwrap_or(0);
        let diff = max - min;
        for s in scores.iter_mut() {
            s.score =
                if diff > 0 { (MAX_NODE_SCORE as f64 * ((s.score - min) as f64 / diff as f64)) as i64 } else { 0 };
        }
        Status::success()
    }
}
