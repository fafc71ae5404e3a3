use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};

use super::*;
use crate::framework::StaticListers;
use crate::plugins::{default_plugins_with, testing::node};

fn prio_pod(name: &str, priority: i32, cpu: &str, extra: Value) -> Pod {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": name}},
        "spec": {"priority": priority, "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]},
    });
    if let Some(obj) = extra.as_object() {
        for (k, val) in obj {
            v["spec"][k] = val.clone();
        }
    }
    serde_json::from_value(v).unwrap()
}

fn cpu_node(name: &str, cpu: &str, pods: Vec<Pod>) -> NodeInfo {
    let mut n = node(
        name,
        json!({"kubernetes.io/hostname": name}),
        json!({}),
        json!({"cpu": cpu, "memory": "8Gi", "pods": "110"}),
    );
    for p in pods {
        n.add_pod(Arc::new(p));
    }
    n
}

fn preempt(listers: StaticListers, pod: &Pod, nodes: &[NodeInfo]) -> PostFilterResult {
    let fw = default_plugins_with(Arc::new(listers.clone()));
    let mut state = CycleState::new();
    let err = fw.schedule_pod(&mut state, pod, nodes).unwrap_err();
    let crate::framework::ScheduleError::Unschedulable { .. } = err else { panic!("{err:?}") };
    let mut statuses = NodeToStatus::default();
    let skip = fw.run_pre_filter(&mut state, pod, nodes).unwrap();
    for n in nodes {
        statuses.set(n.name(), fw.run_filter(&state, pod, n, &skip));
    }
    DefaultPreemption::new(Arc::new(listers)).post_filter(&state, pod, nodes, &statuses, &fw)
}

fn victims(r: &PostFilterResult) -> (String, Vec<String>) {
    let n = r.nomination.as_ref().expect("a nomination");
    (n.node.clone(), n.victims.iter().map(|v| v.name.clone()).collect())
}

#[test]
fn evicts_the_fewest_lower_priority_pods_and_reprieves_the_rest() {
    let nodes = [cpu_node(
        "a",
        "4",
        vec![
            prio_pod("low1", 0, "1", json!({})),
            prio_pod("low2", 0, "2", json!({})),
            prio_pod("high", 2000, "1", json!({})),
        ],
    )];
    let p = prio_pod("vip", 1000, "2", json!({}));
    // Removing low2 (2 cpu) is enough; low1 is reprieved and `high` is never a victim.
    assert_eq!(victims(&preempt(StaticListers::default(), &p, &nodes)), ("a".into(), vec!["low2".into()]));
}

#[test]
fn picks_the_node_whose_highest_victim_has_the_lowest_priority() {
    let nodes = [
        cpu_node("a", "2", vec![prio_pod("mid", 500, "2", json!({}))]),
        cpu_node("b", "2", vec![prio_pod("low", 100, "2", json!({}))]),
    ];
    let p = prio_pod("vip", 1000, "2", json!({}));
    assert_eq!(victims(&preempt(StaticListers::default(), &p, &nodes)), ("b".into(), vec!["low".into()]));
}

#[test]
fn prefers_the_node_where_no_disruption_budget_breaks() {
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "protect", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "guarded"}}},
        "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1},
    }))
    .unwrap();
    let listers = StaticListers { pod_disruption_budgets: vec![Arc::new(pdb)], ..Default::default() };
    let nodes = [
        cpu_node("a", "2", vec![prio_pod("guarded", 0, "2", json!({}))]),
        cpu_node("b", "2", vec![prio_pod("free", 100, "2", json!({}))]),
    ];
    let p = prio_pod("vip", 1000, "2", json!({}));
    // Node a's victim has the lower priority, but evicting it breaks the budget.
    assert_eq!(victims(&preempt(listers, &p, &nodes)), ("b".into(), vec!["free".into()]));
}

#[test]
fn without_lower_priority_pods_it_explains_in_upstream_words() {
    let nodes = [
        cpu_node("a", "1", vec![prio_pod("peer", 1000, "1", json!({}))]),
        cpu_node("b", "1", vec![]),
        cpu_node("c", "1", vec![]),
    ];
    let p = prio_pod("vip", 1000, "2", json!({}));
    let r = preempt(StaticListers::default(), &p, &nodes);
    assert!(r.nomination.is_none());
    assert_eq!(
        r.status.message(),
        "preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod"
    );
}

#[test]
fn unresolvable_nodes_are_not_helpful_and_too_small_nodes_keep_their_reason() {
    let mut tainted = cpu_node("t", "8", vec![prio_pod("low", 0, "1", json!({}))]);
    let mut n = (*tainted.node).clone();
    n.spec =
        Some(serde_json::from_value(json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]})).unwrap());
    tainted.set_node(Arc::new(n));
    let nodes = [tainted, cpu_node("small", "1", vec![prio_pod("low2", 0, "500m", json!({}))])];
    let p = prio_pod("vip", 1000, "2", json!({}));
    let r = preempt(StaticListers::default(), &p, &nodes);
    assert_eq!(
        r.status.message(),
        "preemption: 0/2 nodes are available: 1 Insufficient cpu, 1 Preemption is not helpful for scheduling"
    );
}

#[test]
fn preemption_policy_never_is_not_eligible() {
    let p = prio_pod("vip", 1000, "2", json!({"preemptionPolicy": "Never"}));
    let nodes = [cpu_node("a", "1", vec![prio_pod("low", 0, "1", json!({}))])];
    let r = preempt(StaticListers::default(), &p, &nodes);
    assert!(r.nomination.is_none());
    assert_eq!(r.status.message(), "preemption: not eligible due to preemptionPolicy=Never");
}

#[test]
fn a_nominated_pod_waits_for_its_victims_instead_of_preempting_again() {
    let victim: Pod = serde_json::from_value(json!({
        "metadata": {"name": "going", "namespace": "default", "uid": "going", "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"priority": 0, "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}]},
        "status": {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]},
    }))
    .unwrap();
    let nodes = [cpu_node("a", "1", vec![victim, prio_pod("other", 0, "0", json!({}))])];
    let mut p = prio_pod("vip", 1000, "1", json!({}));
    p.status = Some(serde_json::from_value(json!({"nominatedNodeName": "a"})).unwrap());
    let r = preempt(StaticListers::default(), &p, &nodes);
    assert!(r.nomination.is_none());
    assert_eq!(r.status.message(), "preemption: not eligible due to a terminating pod on the nominated node");
}
