use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::{Value, json};

use super::filtering::{CONSTRAINTS_NOT_MATCH, NODE_LABEL_NOT_MATCH};
use super::*;
use crate::framework::{
    Code, CycleState, FilterPlugin, NodeScore, PreFilterPlugin, PreScorePlugin, ScorePlugin, StaticListers, Status,
};
use crate::plugins::testing::node;

fn app_pod(name: &str, app: &str, spec: Value) -> Pod {
    let mut spec = spec;
    spec["containers"] = json!([{"name": "c", "image": "i"}]);
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": app}}, "spec": spec}),
    )
    .unwrap()
}

fn zone_node(name: &str, zone: Option<&str>, apps: &[&str]) -> NodeInfo {
    let mut labels = json!({"kubernetes.io/hostname": name});
    if let Some(z) = zone {
        labels["zone"] = json!(z);
    }
    let mut n = node(name, labels, json!({}), json!({"pods": "10"}));
    for (i, app) in apps.iter().enumerate() {
        n.add_pod(Arc::new(app_pod(&format!("{name}-{i}"), app, json!({}))));
    }
    n
}

fn spread(key: &str, skew: i32, action: &str, extra: Value) -> Value {
    let mut c = json!({"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": action, "labelSelector": {"matchLabels": {"app": "web"}}});
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    c
}

fn plugin() -> PodTopologySpread {
    PodTopologySpread::new(Args::default(), Arc::new(StaticListers::default()))
}

fn filter_all(pl: &PodTopologySpread, p: &Pod, nodes: &[NodeInfo]) -> Vec<Status> {
    let mut state = CycleState::new();
    if pl.pre_filter(&mut state, p, nodes).code == Code::Skip {
        return nodes.iter().map(|_| Status::success()).collect();
    }
    nodes.iter().map(|n| pl.filter(&state, p, n)).collect()
}

fn ok(s: &[Status]) -> Vec<bool> {
    s.iter().map(Status::is_success).collect()
}

#[test]
fn do_not_schedule_keeps_the_skew_within_max_skew() {
    let nodes =
        [zone_node("a1", Some("a"), &["web", "web"]), zone_node("b1", Some("b"), &["web"]), zone_node("c1", None, &[])];
    let p = app_pod("w", "web", json!({"topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({}))]}));
    let s = filter_all(&plugin(), &p, &nodes);
    assert_eq!(ok(&s), vec![false, true, false]);
    assert_eq!(s[0], Status::new(Code::Unschedulable, CONSTRAINTS_NOT_MATCH));
    assert_eq!(s[2], Status::new(Code::UnschedulableAndUnresolvable, NODE_LABEL_NOT_MATCH));
}

#[test]
fn min_domains_counts_missing_domains_as_empty() {
    let nodes = [zone_node("a1", Some("a"), &["web"]), zone_node("b1", Some("b"), &["web"])];
    let p = app_pod(
        "w",
        "web",
        json!({"topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({"minDomains": 3}))]}),
    );
    // Only 2 of 3 domains exist: the global minimum is 0, so 1 + 1 - 0 > 1 everywhere.
    assert_eq!(ok(&filter_all(&plugin(), &p, &nodes)), vec![false, false]);
    let relaxed =
        app_pod("w", "web", json!({"topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({}))]}));
    assert_eq!(ok(&filter_all(&plugin(), &relaxed, &nodes)), vec![true, true]);
}

#[test]
fn node_affinity_policy_honor_leaves_unselectable_domains_out() {
    let nodes = [zone_node("a1", Some("a"), &["web"]), zone_node("b1", Some("b"), &[])];
    let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}});
    let honor = app_pod(
        "w",
        "web",
        json!({"affinity": affinity, "topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({}))]}),
    );
    // Zone b is not a domain for this pod: a alone has the minimum, so a passes.
    assert!(filter_all(&plugin(), &honor, &nodes)[0].is_success());
    let ignore = app_pod(
        "w",
        "web",
        json!({"affinity": affinity, "topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({"nodeAffinityPolicy": "Ignore"}))]}),
    );
    assert!(!filter_all(&plugin(), &ignore, &nodes)[0].is_success());
}

#[test]
fn node_taints_policy_is_ignore_by_default() {
    let mut tainted = node(
        "b1",
        json!({"zone": "b"}),
        json!({"taints": [{"key": "k", "effect": "NoSchedule"}]}),
        json!({"pods": "10"}),
    );
    tainted.pods.clear();
    let nodes = [zone_node("a1", Some("a"), &["web"]), tainted];
    let default =
        app_pod("w", "web", json!({"topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({}))]}));
    assert!(!filter_all(&plugin(), &default, &nodes)[0].is_success());
    let honor = app_pod(
        "w",
        "web",
        json!({"topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({"nodeTaintsPolicy": "Honor"}))]}),
    );
    assert!(filter_all(&plugin(), &honor, &nodes)[0].is_success());
}

#[test]
fn match_label_keys_narrow_the_selector_to_the_pods_value() {
    let mut old = zone_node("a1", Some("a"), &[]);
    let mut v1 = app_pod("old", "web", json!({}));
    v1.metadata.labels.as_mut().unwrap().insert("rev".into(), "1".into());
    old.add_pod(Arc::new(v1.clone()));
    old.add_pod(Arc::new(v1));
    let nodes = [old, zone_node("b1", Some("b"), &[])];
    let mut p = app_pod(
        "w",
        "web",
        json!({"topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({"matchLabelKeys": ["rev"]}))]}),
    );
    p.metadata.labels.as_mut().unwrap().insert("rev".into(), "2".into());
    // Only pods of revision 2 count: none anywhere, so zone a is fine.
    assert_eq!(ok(&filter_all(&plugin(), &p, &nodes)), vec![true, true]);
}

fn scores(pl: &PodTopologySpread, p: &Pod, nodes: &[NodeInfo]) -> Option<Vec<i64>> {
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
fn schedule_anyway_scores_emptier_domains_higher_and_ignores_unlabelled_nodes() {
    let nodes =
        [zone_node("a1", Some("a"), &["web", "web"]), zone_node("b1", Some("b"), &[]), zone_node("c1", None, &[])];
    let p = app_pod("w", "web", json!({"topologySpreadConstraints": [spread("zone", 1, "ScheduleAnyway", json!({}))]}));
    // weight ln(2 + 2) = 1.386: a 2 * 1.386 = 2.77 -> 3, b 0; normalised (3 + 0 - s) * 100 / 3.
    assert_eq!(scores(&plugin(), &p, &nodes), Some(vec![0, 100, 0]));
}

#[test]
fn pods_of_a_service_get_the_system_default_constraints() {
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "s", "namespace": "default"}, "spec": {"selector": {"app": "web"}}}),
    )
    .unwrap();
    let listers = StaticListers { services: vec![Arc::new(svc)], ..Default::default() };
    let pl = PodTopologySpread::new(Args::default(), Arc::new(listers));
    let nodes = [zone_node("a1", Some("a"), &["web", "web", "web"]), zone_node("b1", None, &[])];
    let p = app_pod("w", "web", json!({}));
    // Neither node has a zone label: with system defaults that does not ignore them, and only
    // hostname scores: a 3 pods * ln(2 + 2) + (3 - 1) = 6, b 0 + 2 = 2 -> (6 + 2 - s) * 100 / 6.
    assert_eq!(scores(&pl, &p, &nodes), Some(vec![33, 100]));
    // The filter has nothing to do: defaults are ScheduleAnyway.
    assert_eq!(pl.pre_filter(&mut CycleState::new(), &p, &nodes).code, Code::Skip);
    // A pod nobody selects has no default constraints.
    assert_eq!(scores(&pl, &app_pod("x", "other", json!({})), &nodes), None);
}

#[test]
fn default_selector_joins_services_and_replica_sets() {
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "s", "namespace": "default"}, "spec": {"selector": {"app": "web"}}}),
    )
    .unwrap();
    let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "r", "namespace": "default"}, "spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}, "template": {}}})).unwrap();
    let listers =
        StaticListers { services: vec![Arc::new(svc)], replica_sets: vec![Arc::new(rs)], ..Default::default() };
    let pl = PodTopologySpread::new(Args::default(), Arc::new(listers));
    let sel = pl.default_selector(&app_pod("w", "web", json!({})));
    assert_eq!(sel.requirements().len(), 2);
    assert!(pl.default_selector(&app_pod("w", "", json!({}))).requirements().len() == 1);
}
