//! Scenarios after upstream's `replica_calculator_test.go`.

use super::*;
use serde_json::json;

fn now() -> Timestamp {
    "2026-01-01T12:00:00Z".parse().unwrap()
}

/// Upstream's testing timings: a 2 minute CPU initialisation period, a 10 s readiness delay.
fn calc() -> ReplicaCalculator {
    ReplicaCalculator {
        cpu_initialization_period: SignedDuration::from_mins(2),
        delay_of_initial_readiness_status: SignedDuration::from_secs(10),
    }
}

const TOL: Tolerances = Tolerances { scale_down: 0.1, scale_up: 0.1 };

struct P {
    name: String,
    phase: &'static str,
    ready: bool,
    /// Seconds before now the pod started (and its Ready condition last changed).
    started_ago: i64,
    transition_ago: i64,
    cpu_request: Option<&'static str>,
    deleting: bool,
}

fn p(i: usize) -> P {
    P {
        name: format!("pod-{i}"),
        phase: "Running",
        ready: true,
        started_ago: 180,
        transition_ago: 180,
        cpu_request: Some("1"),
        deleting: false,
    }
}

fn build(p: &P) -> Pod {
    let at = |ago: i64| (now() - SignedDuration::from_secs(ago)).to_string();
    let resources = match p.cpu_request {
        Some(r) => json!({"requests": {"cpu": r}}),
        None => json!({}),
    };
    let mut pod = json!({
        "metadata": {"name": p.name, "namespace": "ns", "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "app", "image": "i", "resources": resources}]},
        "status": {
            "phase": p.phase,
            "startTime": at(p.started_ago),
            "conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" },
                            "lastTransitionTime": at(p.transition_ago)}]
        }
    });
    if p.deleting {
        pod["metadata"]["deletionTimestamp"] = json!(at(1));
    }
    serde_json::from_value(pod).unwrap()
}

fn metrics(values: &[(usize, i64)]) -> PodMetricsInfo {
    values
        .iter()
        .map(|&(i, value)| {
            (format!("pod-{i}"), PodMetric { value, timestamp: now(), window: SignedDuration::from_mins(1) })
        })
        .collect()
}

fn utilization(pods: &[P], m: &[(usize, i64)], current: i32, target: i32) -> Result<UtilizationProposal, CalcError> {
    let built: Vec<Pod> = pods.iter().map(build).collect();
    let refs: Vec<&Pod> = built.iter().collect();
    calc().resource_replicas(current, target, "cpu", TOL, &refs, metrics(m), "", now())
}

fn three() -> Vec<P> {
    (0..3).map(p).collect()
}

#[test]
fn scale_up_by_average_utilization_of_requests() {
    let r = utilization(&three(), &[(0, 300), (1, 500), (2, 700)], 3, 30).unwrap();
    assert_eq!(r, UtilizationProposal { replicas: 5, utilization: 50, raw_average: 500 });
}

#[test]
fn scale_down_by_average_utilization() {
    let pods: Vec<P> = (0..5).map(p).collect();
    let r = utilization(&pods, &[(0, 100), (1, 300), (2, 500), (3, 250), (4, 250)], 5, 50).unwrap();
    assert_eq!((r.replicas, r.utilization), (3, 28));
}

#[test]
fn within_tolerance_keeps_the_current_count() {
    // 105% of target: inside the 10% tolerance.
    let r = utilization(&three(), &[(0, 525), (1, 525), (2, 525)], 3, 50).unwrap();
    assert_eq!(r.replicas, 3);
    let asym = Tolerances { scale_down: 0.1, scale_up: 0.02 };
    let built: Vec<Pod> = three().iter().map(build).collect();
    let refs: Vec<&Pod> = built.iter().collect();
    let m = metrics(&[(0, 525), (1, 525), (2, 525)]);
    let r = calc().resource_replicas(3, 50, "cpu", asym, &refs, m, "", now()).unwrap();
    assert_eq!(r.replicas, 4, "a per-HPA scale-up tolerance of 2% lets 105% scale up");
}

#[test]
fn unready_pods_count_as_idle_on_scale_up() {
    let mut pods = three();
    pods[0].ready = false;
    let r = utilization(&pods, &[(0, 300), (1, 500), (2, 700)], 3, 30).unwrap();
    assert_eq!((r.replicas, r.utilization), (4, 60));
}

#[test]
fn unready_pods_are_ignored_on_scale_down() {
    let mut pods = three();
    pods[0].ready = false;
    let r = utilization(&pods, &[(0, 100), (1, 100), (2, 100)], 3, 50).unwrap();
    // Only the two ready pods count: 10% of request, ratio 0.2 over 2 pods.
    assert_eq!((r.replicas, r.utilization), (1, 10));
}

#[test]
fn pending_pods_are_unready() {
    let mut pods = three();
    pods[2].phase = "Pending";
    let r = utilization(&pods, &[(0, 900), (1, 900)], 3, 50).unwrap();
    // 90% over the two running pods, the pending one counted idle: 1800/3000 = 60%.
    assert_eq!((r.replicas, r.utilization), (4, 90));
}

#[test]
fn a_pod_still_initializing_with_a_sample_from_before_it_was_ready_is_unready() {
    let mut pods = three();
    // Started 30 s ago, ready for 20 s: the one-minute sample covers its start.
    pods[0].started_ago = 30;
    pods[0].transition_ago = 20;
    let r = utilization(&pods, &[(0, 1000), (1, 500), (2, 700)], 3, 30).unwrap();
    assert_eq!((r.replicas, r.utilization), (4, 60));
}

#[test]
fn a_pod_past_initialization_that_became_unready_later_still_counts() {
    let mut pods = three();
    // Unready since long after its start: it was ready once, its sample counts.
    pods[0].ready = false;
    pods[0].transition_ago = 60;
    let r = utilization(&pods, &[(0, 300), (1, 500), (2, 700)], 3, 30).unwrap();
    assert_eq!((r.replicas, r.utilization), (5, 50));
}

#[test]
fn unready_pods_do_not_matter_for_memory() {
    let mut pods = three();
    pods[0].ready = false;
    let built: Vec<Pod> = pods
        .iter()
        .map(|p| {
            let mut pod = build(p);
            pod.spec.as_mut().unwrap().containers[0].resources =
                Some(serde_json::from_value(json!({"requests": {"memory": "1000"}})).unwrap());
            pod
        })
        .collect();
    let refs: Vec<&Pod> = built.iter().collect();
    let m = metrics(&[(0, 300_000), (1, 500_000), (2, 700_000)]);
    let r = calc().resource_replicas(3, 30, "memory", TOL, &refs, m, "", now()).unwrap();
    assert_eq!((r.replicas, r.utilization), (5, 50));
}

#[test]
fn failed_and_deleted_pods_are_ignored() {
    let mut pods: Vec<P> = (0..4).map(p).collect();
    pods[2].phase = "Failed";
    pods[3].deleting = true;
    let r = utilization(&pods, &[(0, 500), (1, 700), (2, 100), (3, 100)], 2, 30).unwrap();
    assert_eq!((r.replicas, r.utilization), (4, 60));
}

#[test]
fn missing_pods_count_as_idle_on_scale_up() {
    let pods: Vec<P> = (0..4).map(p).collect();
    let r = utilization(&pods, &[(0, 900), (1, 900), (2, 900)], 4, 50).unwrap();
    // 2700/4000 = 67% -> ratio 1.34 over 4 pods.
    assert_eq!((r.replicas, r.utilization), (6, 90));
}

#[test]
fn missing_pods_count_as_fully_used_on_scale_down() {
    let pods: Vec<P> = (0..4).map(p).collect();
    let r = utilization(&pods, &[(0, 100), (1, 100), (2, 100)], 4, 50).unwrap();
    // 1300/4000 = 32% -> ratio 0.64 over 4 pods.
    assert_eq!((r.replicas, r.utilization), (3, 10));
}

#[test]
fn missing_pods_that_reverse_the_direction_keep_the_count() {
    let pods: Vec<P> = (0..2).map(p).collect();
    let r = utilization(&pods, &[(0, 600)], 2, 50).unwrap();
    assert_eq!(r.replicas, 2);
}

#[test]
fn metrics_of_pods_outside_the_selection_are_ignored() {
    let r = utilization(&three(), &[(0, 300), (1, 500), (2, 700), (9, 5000)], 3, 30).unwrap();
    assert_eq!(r.replicas, 5);
}

#[test]
fn errors_read_as_upstreams() {
    let e = utilization(&[], &[(0, 1)], 1, 50).unwrap_err();
    assert_eq!(e.to_string(), "no pods returned by selector while calculating replica count");
    let mut pods = three();
    for p in &mut pods {
        p.phase = "Pending";
    }
    let e = utilization(&pods, &[(0, 1)], 3, 50).unwrap_err();
    assert_eq!(e.to_string(), "did not receive metrics for targeted pods (pods might be unready)");
    let mut pods = three();
    pods[1].cpu_request = None;
    let e = utilization(&pods, &[(0, 1), (1, 1), (2, 1)], 3, 50).unwrap_err();
    assert_eq!(e.to_string(), "missing request for cpu in container app of Pod pod-1");
}

#[test]
fn container_requests_and_sidecars() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pod-0", "namespace": "ns"},
        "spec": {
            "initContainers": [
                {"name": "init", "image": "i", "resources": {"requests": {"cpu": "5"}}},
                {"name": "sidecar", "image": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": "250m"}}}
            ],
            "containers": [
                {"name": "app", "image": "i", "resources": {"requests": {"cpu": "500m"}}},
                {"name": "other", "image": "i", "resources": {"requests": {"cpu": "250m"}}}
            ]
        }
    }))
    .unwrap();
    assert_eq!(calculate_requests(&[&pod], "", "cpu").unwrap()["pod-0"], 1000);
    assert_eq!(calculate_requests(&[&pod], "app", "cpu").unwrap()["pod-0"], 500);
    assert_eq!(calculate_requests(&[&pod], "sidecar", "cpu").unwrap()["pod-0"], 250);
    let e = calculate_requests(&[&pod], "nope", "cpu").unwrap_err();
    assert_eq!(e.to_string(), "container nope not found in Pod pod-0");
}

#[test]
fn pod_level_requests_win_unless_a_container_is_named() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pod-0", "namespace": "ns"},
        "spec": {
            "resources": {"requests": {"cpu": "2"}},
            "containers": [{"name": "app", "image": "i", "resources": {"requests": {"cpu": "500m"}}}]
        }
    }))
    .unwrap();
    assert_eq!(calculate_requests(&[&pod], "", "cpu").unwrap()["pod-0"], 2000);
    assert_eq!(calculate_requests(&[&pod], "app", "cpu").unwrap()["pod-0"], 500);
    let e = calculate_requests(&[&pod], "", "memory").unwrap_err();
    assert_eq!(e.to_string(), "missing pod-level request for memory in Pod pod-0");
}

#[test]
fn average_value_targets() {
    let built: Vec<Pod> = three().iter().map(build).collect();
    let refs: Vec<&Pod> = built.iter().collect();
    let m = metrics(&[(0, 10_000), (1, 20_000), (2, 30_000)]);
    // Average 20 against a target of 10: double.
    let (replicas, usage) = calc().plain_metric_replicas(m, 3, 10_000, TOL, &refs, "memory", now()).unwrap();
    assert_eq!((replicas, usage), (6, 20_000));
    // Missing pods count as on target when scaling down: (1 + 1 + 10) / 3 = 4 of 10.
    let m = metrics(&[(0, 1_000), (1, 1_000)]);
    let (replicas, usage) = calc().plain_metric_replicas(m, 3, 10_000, TOL, &refs, "memory", now()).unwrap();
    assert_eq!((replicas, usage), (2, 1_000));
}

#[test]
fn whole_target_ratios() {
    let built: Vec<Pod> = three().iter().map(build).collect();
    let refs: Vec<&Pod> = built.iter().collect();
    assert_eq!(ReplicaCalculator::usage_ratio_replica_count(3, 2.0, TOL, &refs), Ok(6));
    assert_eq!(ReplicaCalculator::usage_ratio_replica_count(3, 1.05, TOL, &refs), Ok(3));
    assert_eq!(ReplicaCalculator::usage_ratio_replica_count(0, 2.5, TOL, &[]), Ok(3));
    assert_eq!(ReplicaCalculator::per_pod_replicas(2, 10_000, 2_000, TOL), (5, 5_000));
    assert_eq!(ReplicaCalculator::per_pod_replicas(5, 10_000, 2_000, TOL), (5, 2_000));
}
