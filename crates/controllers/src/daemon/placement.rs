//! Which nodes a DaemonSet's pod belongs on (upstream's `NodeShouldRunDaemonPod` and the
//! predicates it uses): the template's `nodeName`, `nodeSelector` and required node affinity
//! must match the node, and its `NoSchedule`/`NoExecute` taints must be tolerated, counting the
//! tolerations every daemon pod gets. `spec.unschedulable` is not looked at (a cordoned node
//! still runs daemons: the `unschedulable` taint is tolerated).
//!
//! The selector and toleration semantics are the scheduler's (NodeAffinity and TaintToleration
//! plugins); they are repeated here because the controller manager must not depend on the
//! scheduler.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

use tug_api::taints::tolerates;

use super::util::add_daemon_tolerations;

/// Where a DaemonSet stands with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// A daemon pod should be created on the node if it has none.
    pub should_run: bool,
    /// A daemon pod already on the node may stay.
    pub should_continue_running: bool,
}

impl Placement {
    const NONE: Placement = Placement { should_run: false, should_continue_running: false };
}

/// Whether `ds`'s pods should run (and keep running) on `node`.
pub fn node_should_run(node: &Node, ds: &DaemonSet) -> Placement {
    let name = node.metadata.name.as_deref().unwrap_or("");
    let mut spec = ds.spec.as_ref().and_then(|s| s.template.spec.clone()).unwrap_or_default();
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty() && n != name) {
        return Placement::NONE;
    }
    add_daemon_tolerations(&mut spec);
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if !fits_node_affinity(&spec, &labels, name) {
        return Placement::NONE;
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let untolerated = |effects: &[&str]| {
        taints
            .iter()
            .filter(|t| effects.contains(&t.effect.as_str()))
            .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    if untolerated(&["NoSchedule", "NoExecute"]) {
        // A pod already there stays unless a NoExecute taint would evict it anyway.
        return Placement { should_run: false, should_continue_running: !untolerated(&["NoExecute"]) };
    }
    Placement { should_run: true, should_continue_running: true }
}

/// Upstream's `GetRequiredNodeAffinity(pod).Match(node)`: every `nodeSelector` label, and one
/// of the required terms if there are any.
fn fits_node_affinity(spec: &PodSpec, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let selector_ok = spec.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    let affinity_ok = required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, labels, name)));
    selector_ok && affinity_ok
}

/// A term matches when all its expressions (on labels) and fields (only `metadata.name`) hold;
/// an empty term matches nothing.
fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
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
                (Ok(v), Ok(b)) => (op == "Gt" && v > b) || (op == "Lt" && v < b),
                _ => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": labels},
            "spec": {"taints": taints},
        }))
        .unwrap()
    }

    fn ds(pod_spec: serde_json::Value) -> DaemonSet {
        let mut spec = json!({"containers": [{"name": "c", "image": "i"}]});
        spec.as_object_mut().unwrap().extend(pod_spec.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {"selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}, "spec": spec}},
        }))
        .unwrap()
    }

    const RUN: Placement = Placement { should_run: true, should_continue_running: true };
    const STAY: Placement = Placement { should_run: false, should_continue_running: true };

    #[test]
    fn a_plain_daemon_runs_everywhere() {
        assert_eq!(node_should_run(&node(json!({}), json!([])), &ds(json!({}))), RUN);
    }

    #[test]
    fn the_node_selector_must_match() {
        let d = ds(json!({"nodeSelector": {"disk": "ssd"}}));
        assert_eq!(node_should_run(&node(json!({"disk": "ssd"}), json!([])), &d), RUN);
        assert_eq!(node_should_run(&node(json!({"disk": "hdd"}), json!([])), &d), Placement::NONE);
    }

    #[test]
    fn one_required_affinity_term_must_match() {
        let d = ds(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}));
        assert_eq!(node_should_run(&node(json!({"zone": "b"}), json!([])), &d), RUN, "second term: by name");
        let d = ds(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "cpus", "operator": "Gt", "values": ["8"]}]}]}}}}));
        assert_eq!(node_should_run(&node(json!({"cpus": "16"}), json!([])), &d), RUN);
        assert_eq!(node_should_run(&node(json!({"cpus": "4"}), json!([])), &d), Placement::NONE);
    }

    #[test]
    fn a_template_node_name_restricts_to_that_node() {
        assert_eq!(node_should_run(&node(json!({}), json!([])), &ds(json!({"nodeName": "n2"}))), Placement::NONE);
        assert_eq!(node_should_run(&node(json!({}), json!([])), &ds(json!({"nodeName": "n1"}))), RUN);
    }

    #[test]
    fn untolerated_no_schedule_keeps_new_pods_off_but_lets_old_ones_stay() {
        let n = node(json!({}), json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]));
        assert_eq!(node_should_run(&n, &ds(json!({}))), STAY);
        let tolerating = ds(json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db"}]}));
        assert_eq!(node_should_run(&n, &tolerating), RUN);
    }

    #[test]
    fn untolerated_no_execute_removes_the_daemon() {
        let n = node(json!({}), json!([{"key": "dedicated", "effect": "NoExecute"}]));
        assert_eq!(node_should_run(&n, &ds(json!({}))), Placement::NONE);
        let tolerating = ds(json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}]}));
        assert_eq!(node_should_run(&n, &tolerating), RUN);
    }

    #[test]
    fn daemons_tolerate_node_conditions_and_cordons() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
            "node.kubernetes.io/disk-pressure",
            "node.kubernetes.io/memory-pressure",
            "node.kubernetes.io/pid-pressure",
            "node.kubernetes.io/unschedulable",
        ] {
            let effect =
                if key.ends_with("ready") || key.ends_with("unreachable") { "NoExecute" } else { "NoSchedule" };
            let n = node(json!({}), json!([{"key": key, "effect": effect}]));
            assert_eq!(node_should_run(&n, &ds(json!({}))), RUN, "{key}");
        }
        let n = node(json!({}), json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]));
        assert_eq!(node_should_run(&n, &ds(json!({}))), STAY);
        assert_eq!(node_should_run(&n, &ds(json!({"hostNetwork": true}))), RUN);
    }

    #[test]
    fn prefer_no_schedule_taints_do_not_matter() {
        let n = node(json!({}), json!([{"key": "x", "effect": "PreferNoSchedule"}]));
        assert_eq!(node_should_run(&n, &ds(json!({}))), RUN);
    }
}
