//! A DaemonSet's status counts (upstream's `updateDaemonSetStatus` and
//! `storeDaemonSetStatus`): per node that should run the daemon, whether it has a pod and
//! whether its oldest pod is ready, available and of the current revision; pods on nodes that
//! should not run it are misscheduled.

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;

use super::manage::{NodePods, oldest_first};
use super::placement::Placement;
use super::util::is_pod_updated;
use crate::replicaset::ranking::{is_available, is_ready};

/// The counts of the status (upstream's `updateDaemonSetStatus`); `placement` says whether a
/// node should run the daemon.
pub fn calculate(
    nodes: &[std::sync::Arc<Node>],
    node_pods: &NodePods,
    hash: &str,
    generation: Option<i64>,
    min_ready_seconds: i32,
    now: Timestamp,
    placement: impl Fn(&Node) -> Placement,
) -> DaemonSetStatus {
    let mut s = DaemonSetStatus::default();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let pods = node_pods.get(name).filter(|p| !p.is_empty());
        if !placement(node).should_run {
            if pods.is_some() {
                s.number_misscheduled += 1;
            }
            continue;
        }
        s.desired_number_scheduled += 1;
        let Some(pods) = pods else { continue };
        s.current_number_scheduled += 1;
        let mut pods = pods.clone();
        pods.sort_by(oldest_first);
        let pod = &pods[0];
        if is_ready(pod) {
            s.number_ready += 1;
            if is_available(pod, min_ready_seconds, now) {
                *s.number_available.get_or_insert(0) += 1;
            }
        }
        if is_pod_updated(pod, hash, generation) {
            *s.updated_number_scheduled.get_or_insert(0) += 1;
        }
    }
    let unavailable = s.desired_number_scheduled - s.number_available.unwrap_or(0);
    s.number_unavailable = Some(unavailable);
    s
}

/// Whether the stored status already says all of `new` and has seen the current generation
/// (upstream's early return in `storeDaemonSetStatus`).
pub fn unchanged(ds: &DaemonSet, new: &DaemonSetStatus) -> bool {
    let old = ds.status.clone().unwrap_or_default();
    old.desired_number_scheduled == new.desired_number_scheduled
        && old.current_number_scheduled == new.current_number_scheduled
        && old.number_misscheduled == new.number_misscheduled
        && old.number_ready == new.number_ready
        && old.updated_number_scheduled.unwrap_or(0) == new.updated_number_scheduled.unwrap_or(0)
        && old.number_available.unwrap_or(0) == new.number_available.unwrap_or(0)
        && old.number_unavailable.unwrap_or(0) == new.number_unavailable.unwrap_or(0)
        && old.observed_generation.unwrap_or(0) >= ds.metadata.generation.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use crate::daemon::util::REVISION_HASH_LABEL;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name}})).unwrap())
    }

    fn pod(name: &str, hash: &str, ready: bool, ready_at: i64) -> Arc<Pod> {
        let status = if ready { "True" } else { "False" };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {REVISION_HASH_LABEL: hash},
                             "creationTimestamp": Time(Timestamp::from_second(1).unwrap())},
                "spec": {"nodeName": "x", "containers": []},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": status,
                    "lastTransitionTime": Time(Timestamp::from_second(ready_at).unwrap())}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn counts_follow_the_nodes_and_their_oldest_pods() {
        let nodes = [node("a"), node("b"), node("c"), node("d"), node("off")];
        let node_pods: NodePods = [
            ("a", vec![pod("a1", "new", true, 10)]),
            ("b", vec![pod("b1", "old", true, 95)]),
            ("c", vec![pod("c1", "new", false, 10)]),
            ("off", vec![pod("o1", "new", true, 10)]),
        ]
        .into_iter()
        .map(|(n, p)| (n.to_string(), p))
        .collect();
        let now = Timestamp::from_second(100).unwrap();
        let s = calculate(&nodes, &node_pods, "new", None, 30, now, |n| Placement {
            should_run: n.metadata.name.as_deref() != Some("off"),
            should_continue_running: true,
        });
        assert_eq!(s.desired_number_scheduled, 4);
        assert_eq!(s.current_number_scheduled, 3);
        assert_eq!(s.number_misscheduled, 1);
        assert_eq!(s.number_ready, 2);
        assert_eq!(s.number_available, Some(1), "b is ready for less than minReadySeconds");
        assert_eq!(s.updated_number_scheduled, Some(2));
        assert_eq!(s.number_unavailable, Some(3));
    }

    #[test]
    fn a_status_is_unchanged_only_once_the_generation_is_observed() {
        let mut ds = DaemonSet::default();
        ds.metadata.generation = Some(2);
        let s = DaemonSetStatus { desired_number_scheduled: 1, observed_generation: Some(1), ..Default::default() };
        ds.status = Some(s.clone());
        assert!(!unchanged(&ds, &s));
        ds.status.as_mut().unwrap().observed_generation = Some(2);
        assert!(unchanged(&ds, &s));
        assert!(!unchanged(&ds, &DaemonSetStatus { number_ready: 1, ..s }));
    }
}
