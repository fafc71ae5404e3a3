//! TaintToleration: nodes' `NoSchedule`/`NoExecute` taints keep off pods that do not tolerate
//! them; untolerated `PreferNoSchedule` taints lower a node's score.

use k8s_openapi::api::core::v1::{Pod, Toleration};

use crate::framework::{
    Code, CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, NodeScore, Plugin, PreScorePlugin, ScorePlugin, Status,
    default_normalize_score,
};

pub const NAME: &str = "TaintToleration";

pub use tug_api::taints::tolerates;

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default()
}

pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl FilterPlugin for TaintToleration {
    fn filter(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        let tols = tolerations(pod);
        let untolerated = node
            .taints()
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .find(|taint| !tols.iter().any(|t| tolerates(t, taint)));
        match untolerated {
            None => Status::success(),
            Some(t) => Status::new(
                Code::UnschedulableAndUnresolvable,
                format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or("")),
            ),
        }
    }
}

/// The pod's tolerations that can tolerate `PreferNoSchedule` taints.
struct PreferTolerations(Vec<Toleration>);

impl PreScorePlugin for TaintToleration {
    fn pre_score(&self, state: &mut CycleState, pod: &Pod, _: &[&NodeInfo], _: &[NodeInfo]) -> Status {
        let tols = tolerations(pod)
            .iter()
            .filter(|t| t.effect.as_deref().is_none_or(|e| e.is_empty() || e == "PreferNoSchedule"))
            .cloned()
            .collect();
        state.write(NAME, PreferTolerations(tols));
        Status::success()
    }
}

impl ScorePlugin for TaintToleration {
    /// The number of `PreferNoSchedule` taints the pod does not tolerate.
    fn score(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<i64, Status> {
        let computed;
        let tols = match state.read::<PreferTolerations>(NAME) {
            Some(t) => &t.0,
            None => {
                computed = tolerations(pod).to_vec();
                &computed
            }
        };
        let count = node
            .taints()
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|taint| !tols.iter().any(|t| tolerates(t, taint)))
            .count();
        Ok(count as i64)
    }

    fn normalize_score(&self, _: &CycleState, _: &Pod, scores: &mut [NodeScore<'_>]) -> Status {
        default_normalize_score(MAX_NODE_SCORE, true, scores);
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node, pod};
    use serde_json::json;

    fn tainted(taints: serde_json::Value) -> NodeInfo {
        node("n", json!({}), json!({"taints": taints}), json!({}))
    }

    #[test]
    fn untolerated_no_schedule_taint_rejects_with_upstream_reason() {
        let n = tainted(json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]));
        let s = TaintToleration.filter(&CycleState::new(), &pod(json!({})), &n);
        assert_eq!(
            s,
            Status::new(Code::UnschedulableAndUnresolvable, "node(s) had untolerated taint {dedicated: gpu}")
        );
        let tol = pod(
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert!(TaintToleration.filter(&CycleState::new(), &tol, &n).is_success());
        let wrong = pod(json!({"tolerations": [{"key": "dedicated", "value": "cpu"}]}));
        assert!(!TaintToleration.filter(&CycleState::new(), &wrong, &n).is_success());
    }

    #[test]
    fn no_execute_rejects_and_prefer_no_schedule_does_not() {
        let n = tainted(json!([{"key": "k", "effect": "NoExecute"}]));
        assert!(!TaintToleration.filter(&CycleState::new(), &pod(json!({})), &n).is_success());
        let exists_all = pod(json!({"tolerations": [{"operator": "Exists"}]}));
        assert!(TaintToleration.filter(&CycleState::new(), &exists_all, &n).is_success());
        let soft = tainted(json!([{"key": "k", "effect": "PreferNoSchedule"}]));
        assert!(TaintToleration.filter(&CycleState::new(), &pod(json!({})), &soft).is_success());
    }

    #[test]
    fn prefer_no_schedule_taints_lower_the_normalized_score() {
        let p = pod(json!({"tolerations": [{"key": "ok", "operator": "Exists", "effect": "PreferNoSchedule"}]}));
        let nodes = [
            tainted(json!([])),
            tainted(json!([{"key": "a", "effect": "PreferNoSchedule"}, {"key": "ok", "effect": "PreferNoSchedule"}])),
            tainted(json!([{"key": "a", "effect": "PreferNoSchedule"}, {"key": "b", "effect": "PreferNoSchedule"}])),
        ];
        let mut state = CycleState::new();
        TaintToleration.pre_score(&mut state, &p, &nodes.iter().collect::<Vec<_>>(), &nodes);
        let mut scores: Vec<NodeScore> = nodes
            .iter()
            .map(|n| NodeScore { name: n.name(), score: TaintToleration.score(&state, &p, n).unwrap() })
            .collect();
        assert_eq!(scores.iter().map(|s| s.score).collect::<Vec<_>>(), vec![0, 1, 2]);
        TaintToleration.normalize_score(&state, &p, &mut scores);
        assert_eq!(scores.iter().map(|s| s.score).collect::<Vec<_>>(), vec![100, 50, 0]);
    }
}
