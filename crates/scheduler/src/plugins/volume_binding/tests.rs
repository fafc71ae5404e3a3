use std::sync::Arc;

use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::{Value, json};

use super::*;
use crate::plugins::testing::{node, plain_node};

fn claim(name: &str, spec: Value) -> Arc<PersistentVolumeClaim> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "uid": name}, "spec": spec}))
            .unwrap(),
    )
}

fn bound_claim(name: &str, volume: &str) -> Arc<PersistentVolumeClaim> {
    claim(name, json!({"volumeName": volume}))
}

fn local_volume(name: &str, host: &str, class: &str) -> Arc<PersistentVolume> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}}},
            "status": {"phase": "Available"}
        }))
        .unwrap(),
    )
}

fn class(name: &str, mode: &str, provisioner: &str) -> Arc<StorageClass> {
    Arc::new(
        serde_json::from_value(
            json!({"metadata": {"name": name}, "provisioner": provisioner, "volumeBindingMode": mode}),
        )
        .unwrap(),
    )
}

fn pod_with_claim(claim: &str) -> Pod {
    crate::plugins::testing::pod(json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}))
}

fn host(name: &str) -> NodeInfo {
    node(name, json!({"kubernetes.io/hostname": name}), json!({}), json!({"cpu": "4", "memory": "8Gi", "pods": "110"}))
}

fn run(listers: StaticVolumeListers, pod: &Pod, nodes: &[NodeInfo]) -> Vec<Status> {
    let p = VolumeBinding::new(Arc::new(listers), None);
    let mut state = CycleState::new();
    let pre = p.pre_filter(&mut state, pod, nodes);
    if !pre.is_success() {
        return vec![pre];
    }
    nodes.iter().map(|n| p.filter(&state, pod, n)).collect()
}

#[test]
fn pods_without_claims_skip_the_plugin() {
    let p = VolumeBinding::new(Arc::new(StaticVolumeListers::default()), None);
    let pod = crate::plugins::testing::pod(json!({}));
    assert_eq!(p.pre_filter(&mut CycleState::new(), &pod, &[]).code, Code::Skip);
}

#[test]
fn a_bound_volume_pins_the_pod_to_its_node() {
    let listers = StaticVolumeListers {
        claims: vec![bound_claim("data", "pv-a")],
        volumes: vec![local_volume("pv-a", "a", "")],
        ..Default::default()
    };
    let statuses = run(listers, &pod_with_claim("data"), &[host("a"), host("b")]);
    assert!(statuses[0].is_success());
    assert_eq!(statuses[1].code, Code::UnschedulableAndUnresolvable);
    assert_eq!(statuses[1].message(), ERR_NODE_CONFLICT);
}

#[test]
fn unbound_immediate_claims_make_the_pod_unschedulable() {
    let listers = StaticVolumeListers {
        claims: vec![claim("data", json!({"storageClassName": "fast"}))],
        classes: vec![class("fast", "Immediate", "x")],
        ..Default::default()
    };
    let s = run(listers, &pod_with_claim("data"), &[plain_node("a")]);
    assert_eq!(s[0].message(), ERR_UNBOUND_IMMEDIATE);
    let missing = run(StaticVolumeListers::default(), &pod_with_claim("nope"), &[plain_node("a")]);
    assert_eq!(missing[0].message(), "persistentvolumeclaim \"nope\" not found");
}

#[test]
fn a_delayed_claim_needs_a_local_volume_or_a_provisioner() {
    let spec = json!({"storageClassName": "local", "accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "1Gi"}}});
    let listers = StaticVolumeListers {
        claims: vec![claim("data", spec.clone())],
        volumes: vec![local_volume("pv-b", "b", "local")],
        classes: vec![class("local", WAIT_FOR_FIRST_CONSUMER, "kubernetes.io/no-provisioner")],
    };
    let s = run(listers, &pod_with_claim("data"), &[host("a"), host("b")]);
    assert_eq!(s[0].message(), ERR_BIND_CONFLICT);
    assert!(s[1].is_success());

    let provisioned = StaticVolumeListers {
        claims: vec![claim("data", json!({"storageClassName": "local-path"}))],
        classes: vec![class("local-path", WAIT_FOR_FIRST_CONSUMER, "rancher.io/local-path")],
        ..Default::default()
    };
    let s = run(provisioned, &pod_with_claim("data"), &[host("a"), host("b")]);
    assert!(s.iter().all(Status::is_success));
}

#[test]
fn reserve_keeps_a_chosen_volume_from_the_next_pod() {
    let spec = json!({"storageClassName": "local", "accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "1Gi"}}});
    let listers = Arc::new(StaticVolumeListers {
        claims: vec![claim("one", spec.clone()), claim("two", spec)],
        volumes: vec![local_volume("pv-a", "a", "local")],
        classes: vec![class("local", WAIT_FOR_FIRST_CONSUMER, "kubernetes.io/no-provisioner")],
    });
    let p = VolumeBinding::new(listers, None);
    let nodes = [host("a")];
    let first = pod_with_claim("one");
    let mut state = CycleState::new();
    assert!(p.pre_filter(&mut state, &first, &nodes).is_success());
    assert!(p.filter(&state, &first, &nodes[0]).is_success());
    assert!(p.reserve(&mut state, &first, "a").is_success());
    let mut second: Pod = pod_with_claim("two");
    second.metadata.name = Some("q".into());
    let mut state2 = CycleState::new();
    assert!(p.pre_filter(&mut state2, &second, &nodes).is_success());
    assert_eq!(p.filter(&state2, &second, &nodes[0]).message(), ERR_BIND_CONFLICT);
    p.unreserve(&mut state, &first, "a");
    assert!(p.filter(&state2, &second, &nodes[0]).is_success());
}
