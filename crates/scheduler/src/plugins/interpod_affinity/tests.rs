use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde_json::{Value, json};

use super::filtering::{AFFINITY_REASON, ANTI_AFFINITY_REASON, EXISTING_ANTI_AFFINITY_REASON};
use super::*;
use crate::framework::{
    Code, CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, NodeScore, PreFilterPlugin, PreScorePlugin, ScorePlugin,
    StaticListers, Status,
};
use crate::plugins::testing::node;

fn pod_in(ns: &str, name: &str, labels: Value, affinity: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "i"}], "affinity": affinity},
    }))
    .unwrap()
}

fn zone_node(name: &str, zone: &str, pods: Vec<Pod>) -> NodeInfo {
    let mut n = node(name, json!({"zone": zone, "kubernetes.io/hostname": name}), json!({}), json!({"pods": "10"}));
    for p in pods {
        n.add_pod(Arc::new(p));
    }
    n
}

fn term(app: &str, key: &str) -> Value {
    json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
}

fn plugin() -> InterPodAffinity {
    let ns = |name: &str, team: &str| -> Arc<Namespace> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}})).unwrap())
    };
    let listers = StaticListers { namespaces: vec![ns("default", "a"), ns("other", "b")], ..Default::default() };
    InterPodAffinity::new(Args::default(), Arc::new(listers))
}

fn filter_all(p: &Pod, nodes: &[NodeInfo]) -> Vec<Status> {
    let pl = plugin();
    let mut state = CycleState::new();
    let pre = pl.pre_filter(&mut state, p, nodes);
    if pre.code == Code::Skip {
        return nodes.iter().map(|_| Status::success()).collect();
    }
    nodes.iter().map(|n| pl.filter(&state, p, n)).collect()
}

fn ok(statuses: &[Status]) -> Vec<bool> {
    statuses.iter().map(Status::is_success).collect()
}

#[test]
fn required_affinity_follows_matching_pods_to_their_zone() {
    let nodes = [
        zone_node("a1", "a", vec![pod_in("default", "db", json!({"app": "db"}), json!(null))]),
        zone_node("a2", "a", vec![]),
        zone_node("b1", "b", vec![]),
    ];
    let p = pod_in(
        "default",
        "web",
        json!({"app": "web"}),
        json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "zone")]}}),
    );
    let s = filter_all(&p, &nodes);
    assert_eq!(ok(&s), vec![true, true, false]);
    assert_eq!(s[2], Status::new(Code::UnschedulableAndUnresolvable, AFFINITY_REASON));
}

#[test]
fn the_first_pod_of_a_self_affine_group_may_go_anywhere() {
    let nodes = [zone_node("a1", "a", vec![]), zone_node("b1", "b", vec![])];
    let p = pod_in(
        "default",
        "w0",
        json!({"app": "web"}),
        json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", "zone")]}}),
    );
    assert_eq!(ok(&filter_all(&p, &nodes)), vec![true, true]);
    // Not matching its own term: it must wait for a matching pod.
    let q = pod_in(
        "default",
        "x",
        json!({"app": "x"}),
        json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", "zone")]}}),
    );
    assert_eq!(ok(&filter_all(&q, &nodes)), vec![false, false]);
}

#[test]
fn required_anti_affinity_keeps_replicas_apart_per_hostname() {
    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", "kubernetes.io/hostname")]}});
    let nodes = [
        zone_node("a1", "a", vec![pod_in("default", "w0", json!({"app": "web"}), anti.clone())]),
        zone_node("a2", "a", vec![]),
    ];
    let p = pod_in("default", "w1", json!({"app": "web"}), anti);
    let s = filter_all(&p, &nodes);
    assert_eq!(ok(&s), vec![false, true]);
    assert_eq!(s[0], Status::new(Code::Unschedulable, ANTI_AFFINITY_REASON));
}

#[test]
fn existing_pods_anti_affinity_is_symmetric() {
    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", "zone")]}});
    let nodes = [
        zone_node("a1", "a", vec![pod_in("default", "loner", json!({"app": "loner"}), anti)]),
        zone_node("a2", "a", vec![]),
        zone_node("b1", "b", vec![]),
    ];
    // The incoming pod has no affinity of its own, yet zone a is closed to it.
    let p = pod_in("default", "w", json!({"app": "web"}), json!(null));
    let s = filter_all(&p, &nodes);
    assert_eq!(ok(&s), vec![false, false, true]);
    assert_eq!(s[0], Status::new(Code::Unschedulable, EXISTING_ANTI_AFFINITY_REASON));
}

#[test]
fn terms_look_in_the_pods_namespace_unless_told_otherwise() {
    let nodes = [
        zone_node("a1", "a", vec![pod_in("other", "db", json!({"app": "db"}), json!(null))]),
        zone_node("b1", "b", vec![]),
    ];
    let same_ns = pod_in(
        "default",
        "w",
        json!({}),
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "zone")]}}),
    );
    assert_eq!(ok(&filter_all(&same_ns, &nodes)), vec![true, true]);
    let mut listed = term("db", "zone");
    listed["namespaces"] = json!(["other"]);
    let p = pod_in(
        "default",
        "w",
        json!({}),
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [listed]}}),
    );
    assert_eq!(ok(&filter_all(&p, &nodes)), vec![false, true]);
    let mut by_selector = term("db", "zone");
    by_selector["namespaceSelector"] = json!({"matchLabels": {"team": "b"}});
    let p = pod_in(
        "default",
        "w",
        json!({}),
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [by_selector]}}),
    );
    assert_eq!(ok(&filter_all(&p, &nodes)), vec![false, true]);
    let mut everywhere = term("db", "zone");
    everywhere["namespaceSelector"] = json!({});
    let p = pod_in(
        "default",
        "w",
        json!({}),
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [everywhere]}}),
    );
    assert_eq!(ok(&filter_all(&p, &nodes)), vec![false, true]);
}

#[test]
fn pods_without_any_affinity_skip_the_filter() {
    let nodes = [zone_node("a1", "a", vec![pod_in("default", "x", json!({}), json!(null))])];
    let p = pod_in("default", "w", json!({}), json!(null));
    assert_eq!(plugin().pre_filter(&mut CycleState::new(), &p, &nodes).code, Code::Skip);
}

fn scores(pl: &InterPodAffinity, p: &Pod, nodes: &[NodeInfo]) -> Option<Vec<i64>> {
    let mut state = CycleState::new();
    let feasible: Vec<&NodeInfo> = nodes.iter().collect();
    if pl.pre_score(&mut state, p, &feasible, nodes).code == Code::Skip {
        return None;
    }
    let mut s: Vec<NodeScore> =
        nodes.iter().map(|n| NodeScore { name: n.name(), score: pl.score(&state, p, n).unwrap() }).collect();
    pl.normalize_score(&state, p, &mut s);
    Some(s.iter().map(|s| s.score).collect())
}

#[test]
fn preferred_terms_score_affinity_up_and_anti_affinity_down() {
    let nodes = [
        zone_node("a1", "a", vec![pod_in("default", "db", json!({"app": "db"}), json!(null))]),
        zone_node("b1", "b", vec![pod_in("default", "cache", json!({"app": "cache"}), json!(null))]),
        zone_node("c1", "c", vec![]),
    ];
    let p = pod_in(
        "default",
        "w",
        json!({}),
        json!({
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": term("db", "zone")}]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "podAffinityTerm": term("cache", "zone")}]},
        }),
    );
    // raw: a 10, b -5, c 0 -> (s + 5) * 100 / 15
    assert_eq!(scores(&plugin(), &p, &nodes), Some(vec![MAX_NODE_SCORE, 0, 33]));
}

#[test]
fn existing_pods_terms_score_symmetrically_with_the_hard_weight() {
    let wants_web = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", "zone")]}});
    let avoids_web = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 3, "podAffinityTerm": term("web", "zone")}]}});
    let nodes = [
        zone_node("a1", "a", vec![pod_in("default", "x", json!({}), wants_web)]),
        zone_node("b1", "b", vec![pod_in("default", "y", json!({}), avoids_web)]),
        zone_node("c1", "c", vec![]),
    ];
    let p = pod_in("default", "w", json!({"app": "web"}), json!(null));
    // raw: a +1 (hard weight), b -3, c 0 -> (s + 3) * 100 / 4
    assert_eq!(scores(&plugin(), &p, &nodes), Some(vec![100, 0, 75]));
    let no_hard = InterPodAffinity::new(
        Args { hard_pod_affinity_weight: 0, ..Args::default() },
        Arc::new(StaticListers::default()),
    );
    // raw: a 0, b -3, c 0
    assert_eq!(scores(&no_hard, &p, &nodes), Some(vec![100, 0, 100]));
}

#[test]
fn nothing_to_score_skips() {
    let nodes = [zone_node("a1", "a", vec![pod_in("default", "x", json!({}), json!(null))])];
    assert_eq!(scores(&plugin(), &pod_in("default", "w", json!({}), json!(null)), &nodes), None);
}
