//! NodeAffinity: `spec.nodeSelector` and required node affinity terms filter nodes; preferred
//! terms add their weights to a node's score.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Pod};

use crate::framework::{
    Code, CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, NodeScore, Plugin, PreFilterPlugin, PreScorePlugin,
    ScorePlugin, Status, default_normalize_score,
};

pub const NAME: &str = "NodeAffinity";
/// Upstream's reason.
pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), [bound]) = (value, values) else { return false };
            match (v.parse::<i64>(), bound.parse::<i64>()) {
                (Ok(v), Ok(b)) => {
                    if op == "Gt" {
                        v > b
                    } else {
                        v < b
                    }
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether a node selector term matches a node: every expression on its labels and every
/// field (only `metadata.name`) holds; a term with neither matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_matches(r, Some(name))
        })
}

fn node_labels(node: &NodeInfo) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    node.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

/// Whether the pod's nodeSelector and required node affinity admit the node.
pub fn required_matches(pod: &Pod, node: &NodeInfo) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return true };
    let labels = node_labels(node);
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    match required {
        None => true,
        Some(sel) => sel.node_selector_terms.iter().any(|t| term_matches(t, labels, node.name())),
    }
}

impl PreFilterPlugin for NodeAffinity {
    fn pre_filter(&self, _: &mut CycleState, pod: &Pod, _: &[NodeInfo]) -> Status {
        let spec = pod.spec.as_ref();
        let has_selector = spec.and_then(|s| s.node_selector.as_ref()).is_some_and(|s| !s.is_empty());
        let has_required = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .is_some_and(|na| na.required_during_scheduling_ignored_during_execution.is_some());
        if has_selector || has_required { Status::success() } else { Status::skip() }
    }
}

impl FilterPlugin for NodeAffinity {
    fn filter(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        if required_matches(pod, node) {
            Status::success()
        } else {
            Status::new(Code::UnschedulableAndUnresolvable, REASON)
        }
    }
}

impl PreScorePlugin for NodeAffinity {
    fn pre_score(&self, _: &mut CycleState, pod: &Pod, _: &[&NodeInfo], _: &[NodeInfo]) -> Status {
        let preferred = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| na.preferred_during_scheduling_ignored_during_execution.as_ref())
            .is_some_and(|p| !p.is_empty());
        if preferred { Status::success() } else { Status::skip() }
    }
}

impl ScorePlugin for NodeAffinity {
    /// The sum of the weights of the preferred terms the node matches.
    fn score(&self, _: &CycleState, pod: &Pod, node: &NodeInfo) -> Result<i64, Status> {
        let preferred = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| na.preferred_during_scheduling_ignored_during_execution.as_deref())
            .unwrap_or_default();
        let labels = node_labels(node);
        Ok(preferred
            .iter()
            .filter(|t| t.weight != 0 && term_matches(&t.preference, labels, node.name()))
            .map(|t| i64::from(t.weight))
            .sum())
    }

    fn normalize_score(&self, _: &CycleState, _: &Pod, scores: &mut [NodeScore<'_>]) -> Status {
        default_normalize_score(MAX_NODE_SCORE, false, scores);
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node, pod};
    use serde_json::json;

    fn labelled(name: &str, labels: serde_json::Value) -> NodeInfo {
        node(name, labels, json!({}), json!({}))
    }

    fn required(terms: serde_json::Value) -> Pod {
        pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}),
        )
    }

    #[test]
    fn node_selector_needs_every_label() {
        let p = pod(json!({"nodeSelector": {"disk": "ssd", "zone": "a"}}));
        let s = NodeAffinity.filter(&CycleState::new(), &p, &labelled("n", json!({"disk": "ssd"})));
        assert_eq!(s, Status::new(Code::UnschedulableAndUnresolvable, REASON));
        assert!(
            NodeAffinity
                .filter(&CycleState::new(), &p, &labelled("n", json!({"disk": "ssd", "zone": "a"})))
                .is_success()
        );
    }

    #[test]
    fn required_terms_are_ored_and_expressions_anded() {
        let p = required(json!([
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}, {"key": "gpu", "operator": "DoesNotExist"}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]},
        ]));
        let ok = |n: &NodeInfo| NodeAffinity.filter(&CycleState::new(), &p, n).is_success();
        assert!(ok(&labelled("n", json!({"zone": "b"}))));
        assert!(!ok(&labelled("n", json!({"zone": "b", "gpu": "1"}))));
        assert!(!ok(&labelled("n", json!({"zone": "c"}))));
        assert!(ok(&labelled("special", json!({}))));
    }

    #[test]
    fn gt_lt_not_in_and_empty_terms() {
        let p = required(json!([{"matchExpressions": [
            {"key": "cores", "operator": "Gt", "values": ["4"]},
            {"key": "tier", "operator": "NotIn", "values": ["low"]},
        ]}]));
        let ok = |n: &NodeInfo| NodeAffinity.filter(&CycleState::new(), &p, n).is_success();
        assert!(ok(&labelled("n", json!({"cores": "8"}))));
        assert!(!ok(&labelled("n", json!({"cores": "4"}))));
        assert!(!ok(&labelled("n", json!({"cores": "8", "tier": "low"}))));
        let empty = required(json!([{}]));
        assert!(!NodeAffinity.filter(&CycleState::new(), &empty, &labelled("n", json!({}))).is_success());
    }

    #[test]
    fn no_selector_skips_the_filter() {
        assert_eq!(NodeAffinity.pre_filter(&mut CycleState::new(), &pod(json!({})), &[]).code, Code::Skip);
    }

    #[test]
    fn preferred_terms_add_weights_then_normalize() {
        let p = pod(json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
            {"weight": 30, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}},
        ]}}}));
        let nodes = [
            labelled("x", json!({})),
            labelled("y", json!({"zone": "a"})),
            labelled("z", json!({"zone": "a", "disk": "1"})),
        ];
        let state = CycleState::new();
        let mut scores: Vec<NodeScore> = nodes
            .iter()
            .map(|n| NodeScore { name: n.name(), score: NodeAffinity.score(&state, &p, n).unwrap() })
            .collect();
        assert_eq!(scores.iter().map(|s| s.score).collect::<Vec<_>>(), vec![0, 10, 40]);
        NodeAffinity.normalize_score(&state, &p, &mut scores);
        assert_eq!(scores.iter().map(|s| s.score).collect::<Vec<_>>(), vec![0, 25, 100]);
    }
}
