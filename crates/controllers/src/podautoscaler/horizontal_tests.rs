//! The metric evaluation against a fake metrics client: conditions, events and messages as
//! upstream's `horizontal_test.go` expects them.

use super::*;
use crate::podautoscaler::metrics::fake::FakeMetricsClient;
use crate::podautoscaler::metrics::{PodMetric, PodMetricsInfo};
use jiff::SignedDuration;
use serde_json::json;

fn now() -> Timestamp {
    "2026-01-01T12:00:00Z".parse().unwrap()
}

fn hpa(metrics: serde_json::Value) -> HorizontalPodAutoscaler {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "generation": 1},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 10, "metrics": metrics
        }
    }))
    .unwrap()
}

fn cpu(target: i32) -> serde_json::Value {
    json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}})
}

fn pods(n: usize, app: &str) -> Vec<Pod> {
    (0..n)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("{app}-{i}"), "namespace": "ns", "labels": {"app": app}},
                "spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "100m"}}}]},
                "status": {"phase": "Running", "startTime": "2026-01-01T11:00:00Z",
                           "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T11:00:00Z"}]}
            }))
            .unwrap()
        })
        .collect()
}

fn usage(n: usize, app: &str, milli: i64) -> PodMetricsInfo {
    (0..n)
        .map(|i| {
            (format!("{app}-{i}"), PodMetric { value: milli, timestamp: now(), window: SignedDuration::from_secs(15) })
        })
        .collect()
}

struct Run {
    hpa: HorizontalPodAutoscaler,
    result: Result<Proposal, Failure>,
    events: Vec<PendingEvent>,
}

async fn evaluate(
    mut hpa: HorizontalPodAutoscaler,
    metrics: FakeMetricsClient,
    pods: &[Pod],
    others: BTreeMap<String, LabelSelector>,
    selector: Option<&str>,
    replicas: i32,
) -> Run {
    let refs: Vec<&Pod> = pods.iter().collect();
    let calc = ReplicaCalculator::default();
    let mut eval = Evaluation {
        metrics: &metrics,
        calc: &calc,
        tolerances: Tolerances::both(0.1),
        namespace_pods: &refs,
        other_selectors: &others,
        now: now(),
        events: Vec::new(),
    };
    let result = eval.compute_replicas_for_metrics(&mut hpa, selector, replicas, replicas).await;
    Run { hpa, result, events: eval.events }
}

fn condition<'a>(hpa: &'a HorizontalPodAutoscaler, type_: &str) -> &'a HorizontalPodAutoscalerCondition {
    hpa.status.as_ref().unwrap().conditions.as_ref().unwrap().iter().find(|c| c.type_ == type_).unwrap()
}

const NOT_SERVED: &str = "unable to fetch metrics from resource metrics API: the server could not find the requested resource (get pods.metrics.k8s.io)";

#[tokio::test]
async fn without_the_metrics_api_scaling_is_inactive_with_upstreams_messages() {
    let p = pods(2, "web");
    let run =
        evaluate(hpa(json!([cpu(50)])), FakeMetricsClient::default(), &p, BTreeMap::new(), Some("app=web"), 2).await;
    let failure = run.result.unwrap_err();
    let inner = format!("failed to get cpu utilization: unable to get metrics for resource cpu: {NOT_SERVED}");
    assert_eq!(
        failure.error.to_string(),
        format!(
            "invalid metrics (1 invalid out of 1), first error is: failed to get cpu resource metric value: {inner}"
        )
    );
    assert_eq!(run.events, vec![(crate::events::WARNING, "FailedGetResourceMetric", inner.clone())]);
    let c = condition(&run.hpa, "ScalingActive");
    assert_eq!((c.status.as_str(), c.reason.as_deref()), ("False", Some("FailedGetResourceMetric")));
    assert_eq!(
        c.message.as_deref(),
        Some(format!("the HPA was unable to compute the replica count: {inner}").as_str())
    );
    // currentMetrics keeps one (empty) entry per spec, as upstream.
    assert_eq!(failure.statuses, vec![MetricStatus::default()]);
}

#[tokio::test]
async fn utilization_above_target_proposes_more_replicas() {
    let p = pods(2, "web");
    let metrics = FakeMetricsClient { pods: Some(usage(2, "web", 90)) };
    let run = evaluate(hpa(json!([cpu(50)])), metrics, &p, BTreeMap::new(), Some("app=web"), 2).await;
    let proposal = run.result.unwrap();
    assert_eq!(proposal.replicas, 4);
    assert_eq!(proposal.metric, "cpu resource utilization (percentage of request)");
    let current = &proposal.statuses[0].resource.as_ref().unwrap().current;
    assert_eq!(current.average_utilization, Some(90));
    assert_eq!(current.average_value, Some(Quantity("90m".into())));
    let c = condition(&run.hpa, "ScalingActive");
    assert_eq!((c.status.as_str(), c.reason.as_deref()), ("True", Some("ValidMetricFound")));
    assert_eq!(
        c.message.as_deref(),
        Some(
            "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)"
        )
    );
    assert!(run.events.is_empty());
}

#[tokio::test]
async fn custom_and_external_metrics_fail_with_their_reasons() {
    let p = pods(1, "web");
    for (spec, reason) in [
        (
            json!({"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}}),
            "FailedGetPodsMetric",
        ),
        (
            json!({"type": "Object", "object": {"metric": {"name": "hits"},
                   "describedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "main"},
                   "target": {"type": "Value", "value": "10"}}}),
            "FailedGetObjectMetric",
        ),
        (
            json!({"type": "External", "external": {"metric": {"name": "queue"}, "target": {"type": "Value", "value": "10"}}}),
            "FailedGetExternalMetric",
        ),
    ] {
        let run =
            evaluate(hpa(json!([spec])), FakeMetricsClient::default(), &p, BTreeMap::new(), Some("app=web"), 1).await;
        assert!(run.result.is_err());
        let c = condition(&run.hpa, "ScalingActive");
        assert_eq!((c.status.as_str(), c.reason.as_deref()), ("False", Some(reason)));
        assert_eq!(run.events.len(), 1);
        assert_eq!(run.events[0].1, reason);
    }
}

#[tokio::test]
async fn a_failing_metric_does_not_block_a_scale_up_by_another() {
    let p = pods(2, "web");
    let metrics = FakeMetricsClient { pods: Some(usage(2, "web", 90)) };
    let qps = json!({"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}});
    let run = evaluate(hpa(json!([qps, cpu(50)])), metrics, &p, BTreeMap::new(), Some("app=web"), 2).await;
    let proposal = run.result.unwrap();
    assert_eq!(proposal.replicas, 4);
    assert!(proposal.partial_error.is_some());
    assert_eq!(condition(&run.hpa, "ScalingActive").status, "True");
    assert_eq!(proposal.statuses.len(), 2);
    assert_eq!(proposal.statuses[0], MetricStatus::default());
}

#[tokio::test]
async fn a_failing_metric_blocks_a_scale_down_by_another() {
    let p = pods(4, "web");
    let metrics = FakeMetricsClient { pods: Some(usage(4, "web", 10)) };
    let qps = json!({"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}});
    let run = evaluate(hpa(json!([qps, cpu(50)])), metrics, &p, BTreeMap::new(), Some("app=web"), 4).await;
    let failure = run.result.unwrap_err();
    assert!(failure.error.to_string().starts_with("invalid metrics (1 invalid out of 2)"));
    let c = condition(&run.hpa, "ScalingActive");
    assert_eq!((c.status.as_str(), c.reason.as_deref()), ("False", Some("FailedGetPodsMetric")));
}

#[tokio::test]
async fn a_scale_without_selector_is_an_invalid_selector() {
    let p = pods(1, "web");
    let run = evaluate(hpa(json!([cpu(50)])), FakeMetricsClient::default(), &p, BTreeMap::new(), None, 1).await;
    assert_eq!(run.result.unwrap_err().error.to_string(), "selector is required");
    assert_eq!(run.events, vec![(crate::events::WARNING, "SelectorRequired", "selector is required".to_string())]);
    let c = condition(&run.hpa, "ScalingActive");
    assert_eq!(c.reason.as_deref(), Some("InvalidSelector"));
    assert_eq!(c.message.as_deref(), Some("the HPA target's scale is missing a selector"));
}

#[tokio::test]
async fn pods_selected_by_two_autoscalers_are_ambiguous() {
    let p = pods(1, "web");
    let others = BTreeMap::from([("other".to_string(), LabelSelector::parse("app=web").unwrap())]);
    let run = evaluate(hpa(json!([cpu(50)])), FakeMetricsClient::default(), &p, others, Some("app=web"), 1).await;
    let message = "pods by selector app=web are controlled by multiple HPAs: [{other ns} {web ns}]";
    assert_eq!(run.result.unwrap_err().error.to_string(), message);
    let c = condition(&run.hpa, "ScalingActive");
    assert_eq!((c.reason.as_deref(), c.message.as_deref()), (Some("AmbiguousSelector"), Some(message)));
    // Another autoscaler over other pods is no conflict.
    let others = BTreeMap::from([("other".to_string(), LabelSelector::parse("app=db").unwrap())]);
    let metrics = FakeMetricsClient { pods: Some(usage(1, "web", 50)) };
    let run = evaluate(hpa(json!([cpu(50)])), metrics, &p, others, Some("app=web"), 1).await;
    assert!(run.result.is_ok());
}

#[test]
fn milli_quantities_print_as_upstream() {
    assert_eq!(milli_quantity(250).0, "250m");
    assert_eq!(milli_quantity(1000).0, "1");
    assert_eq!(milli_quantity(2_000_000).0, "2k");
    assert_eq!(milli_quantity(42_991_616_000).0, "42991616");
    assert_eq!(milli_quantity(0).0, "0");
}

#[test]
fn conditions_change_their_transition_time_only_with_their_status() {
    let mut h = hpa(json!([cpu(50)]));
    let later = now() + SignedDuration::from_secs(60);
    set_condition(&mut h, "AbleToScale", "True", "SucceededGetScale", "a".into(), now());
    set_condition(&mut h, "AbleToScale", "True", "SucceededRescale", "b".into(), later);
    assert_eq!(condition(&h, "AbleToScale").last_transition_time, Some(Time(now())));
    assert_eq!(condition(&h, "AbleToScale").reason.as_deref(), Some("SucceededRescale"));
    set_condition(&mut h, "AbleToScale", "False", "FailedGetScale", "c".into(), later);
    assert_eq!(condition(&h, "AbleToScale").last_transition_time, Some(Time(later)));
}
