use super::*;
use serde_json::json;

fn service(ports: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid", "labels": {"app": "web"}},
        "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": ports},
    }))
    .unwrap()
}

fn http() -> serde_json::Value {
    json!([{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}])
}

fn pod(i: usize, port: i32) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("p{i:03}"), "namespace": "ns", "uid": format!("uid-{i}"), "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": format!("10.0.{}.{}", i / 250, i % 250 + 1),
            "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap()
}

fn node(name: &str) -> Option<Node> {
    (name == "n1").then(|| {
        serde_json::from_value(json!({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}}))
            .unwrap()
    })
}

/// The plan's slices as the API server would store them.
fn stored(plan: Plan) -> Vec<EndpointSlice> {
    let mut out = plan.update;
    for (i, mut s) in plan.create.into_iter().enumerate() {
        s.metadata.name = Some(format!("web-new{i}"));
        s.metadata.uid = Some(format!("slice-{i}"));
        out.push(s);
    }
    out
}

fn run(svc: &Service, pods: &[Pod], existing: &[EndpointSlice]) -> Plan {
    let pods: Vec<&Pod> = pods.iter().collect();
    let existing: Vec<&EndpointSlice> = existing.iter().collect();
    reconcile(svc, &pods, &node, &existing, MAX_ENDPOINTS_PER_SLICE)
}

fn sizes(slices: &[EndpointSlice]) -> Vec<usize> {
    let mut s: Vec<usize> = slices.iter().map(|s| endpoints_of(s).len()).collect();
    s.sort_unstable();
    s
}

#[test]
fn endpoints_are_packed_a_hundred_per_slice() {
    let svc = service(http());
    let pods: Vec<Pod> = (0..250).map(|i| pod(i, 8080)).collect();
    let plan = run(&svc, &pods, &[]);
    assert_eq!(sizes(&plan.create), [50, 100, 100]);
    assert!(plan.update.is_empty() && plan.delete.is_empty());
    let s = &plan.create[0];
    assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
    let labels = s.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[LABEL_SERVICE_NAME], "web");
    assert_eq!(labels[LABEL_MANAGED_BY], CONTROLLER_NAME);
    assert_eq!(labels["app"], "web");
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Service", "svc-uid", Some(true)));
    let ep = &endpoints_of(s)[0];
    assert_eq!(ep.zone.as_deref(), Some("z1"));
    assert_eq!(ep.node_name.as_deref(), Some("n1"));
    assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
}

#[test]
fn an_unchanged_state_needs_no_writes() {
    let svc = service(http());
    let pods: Vec<Pod> = (0..150).map(|i| pod(i, 8080)).collect();
    let slices = stored(run(&svc, &pods, &[]));
    let plan = run(&svc, &pods, &slices);
    assert!(plan.create.is_empty() && plan.update.is_empty() && plan.delete.is_empty(), "{plan:?}");
}

#[test]
fn a_removed_pod_updates_only_its_slice() {
    let svc = service(http());
    let pods: Vec<Pod> = (0..150).map(|i| pod(i, 8080)).collect();
    let slices = stored(run(&svc, &pods, &[]));
    let plan = run(&svc, &pods[1..], &slices);
    assert!(plan.create.is_empty() && plan.delete.is_empty());
    assert_eq!(plan.update.len(), 1);
    assert!(endpoints_of(&plan.update[0]).iter().all(|e| e.addresses[0] != "10.0.0.1"));
}

#[test]
fn new_endpoints_go_into_the_unchanged_slice_they_fit_best() {
    let svc = service(http());
    let pods: Vec<Pod> = (0..160).map(|i| pod(i, 8080)).collect();
    let slices = stored(run(&svc, &pods, &[]));
    assert_eq!(sizes(&slices), [60, 100]);
    let more: Vec<Pod> = (0..170).map(|i| pod(i, 8080)).collect();
    let plan = run(&svc, &more, &slices);
    assert!(plan.create.is_empty() && plan.delete.is_empty());
    assert_eq!(sizes(&plan.update), [70]);
}

#[test]
fn a_service_without_endpoints_keeps_one_placeholder() {
    let svc = service(http());
    let plan = run(&svc, &[], &[]);
    assert_eq!(plan.create.len(), 1);
    assert!(endpoints_of(&plan.create[0]).is_empty());
    let slices = stored(plan);
    let plan = run(&svc, &[], &slices);
    assert!(plan.create.is_empty() && plan.update.is_empty() && plan.delete.is_empty(), "{plan:?}");
    // The first pod replaces the placeholder in place.
    let plan = run(&svc, &[pod(0, 8080)], &slices);
    assert!(plan.create.is_empty() && plan.delete.is_empty());
    assert_eq!(sizes(&plan.update), [1]);
    assert_eq!(plan.update[0].metadata.name.as_deref(), Some("web-new0"));
}

#[test]
fn pods_resolving_ports_differently_get_separate_slices() {
    let svc = service(http());
    let pods = vec![pod(0, 8080), pod(1, 9090), pod(2, 8080)];
    let plan = run(&svc, &pods, &[]);
    assert_eq!(sizes(&plan.create), [1, 2]);
}

#[test]
fn a_pod_on_an_unknown_node_is_left_out() {
    let svc = service(http());
    let mut p = pod(0, 8080);
    p.spec.as_mut().unwrap().node_name = Some("gone".into());
    let plan = run(&svc, &[p, pod(1, 8080)], &[]);
    assert_eq!(plan.missing_nodes, ["p000"]);
    assert_eq!(sizes(&plan.create), [1]);
}

#[test]
fn a_terminating_pod_is_serving_but_not_ready() {
    let svc = service(http());
    let mut p = pod(0, 8080);
    p.metadata.deletion_timestamp = Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
    let ep = pod_to_endpoint(&p, None, &svc, ADDRESS_TYPE_IPV4);
    let c = ep.conditions.unwrap();
    assert_eq!((c.ready, c.serving, c.terminating), (Some(false), Some(true), Some(true)));
    let mut publish = svc.clone();
    publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    assert_eq!(pod_to_endpoint(&p, None, &publish, ADDRESS_TYPE_IPV4).conditions.unwrap().ready, Some(true));
}

#[test]
fn a_headless_service_marks_its_slices() {
    let mut svc = service(http());
    svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    let plan = run(&svc, &[pod(0, 8080)], &[]);
    assert!(plan.create[0].metadata.labels.as_ref().unwrap().contains_key(LABEL_HEADLESS));
    assert_eq!(address_types(&svc).into_iter().collect::<Vec<_>>(), [ADDRESS_TYPE_IPV4]);
}
