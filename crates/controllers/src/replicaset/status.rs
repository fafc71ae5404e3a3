//! The status a workload reports (upstream's `calculateStatus` and the comparison in
//! `updateReplicaSetStatus`, `replica_set_utils.go`).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::ranking::{is_available, is_ready};
use super::workload::Workload;

/// The condition a workload carries while it fails to create or delete pods.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

/// How the last attempt to reach the wanted count failed.
pub struct ManageFailure {
    pub message: String,
}

/// The new status from the pods a workload owns (`claimed`, all active) and the terminating
/// ones it owns, after a sync that may have failed.
pub fn calculate<K: Workload>(
    w: &K,
    claimed: &[Arc<Pod>],
    terminating: usize,
    failure: Option<&ManageFailure>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let mut status = w.status();
    let template_labels =
        w.template().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    let min_ready = w.min_ready_seconds();
    let (mut fully_labeled, mut ready, mut available) = (0, 0, 0);
    for pod in claimed {
        let labels = pod.metadata.labels.as_ref();
        if template_labels.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v)) {
            fully_labeled += 1;
        }
        if is_ready(pod) {
            ready += 1;
            if is_available(pod, min_ready, now) {
                available += 1;
            }
        }
    }
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let has_failure = conditions.iter().any(|c| c.type_ == REPLICA_FAILURE);
    match failure {
        Some(f) if !has_failure => {
            let diff = claimed.len() as i64 - i64::from(w.replicas());
            let reason = if diff < 0 {
                "FailedCreate"
            } else if diff > 0 {
                "FailedDelete"
            } else {
                ""
            };
            conditions.push(ReplicaSetCondition {
                type_: REPLICA_FAILURE.into(),
                status: "True".into(),
                reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
                message: Some(f.message.clone()),
                last_transition_time: Some(Time(now)),
            });
        }
        None if has_failure => conditions.retain(|c| c.type_ != REPLICA_FAILURE),
        _ => {}
    }
    if conditions.is_empty() {
        status.conditions = None;
    }
    status.replicas = claimed.len() as i32;
    status.fully_labeled_replicas = Some(fully_labeled);
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.terminating_replicas = K::COUNTS_TERMINATING.then_some(terminating as i32);
    status
}

/// Whether writing `new` would change nothing: the counts and conditions are as stored and
/// the current generation was already observed.
pub fn unchanged(old: &ReplicaSetStatus, new: &ReplicaSetStatus, generation: Option<i64>) -> bool {
    let n = |v: Option<i32>| v.unwrap_or(0);
    old.replicas == new.replicas
        && n(old.fully_labeled_replicas) == n(new.fully_labeled_replicas)
        && n(old.ready_replicas) == n(new.ready_replicas)
        && n(old.available_replicas) == n(new.available_replicas)
        && old.terminating_replicas == new.terminating_replicas
        && generation.unwrap_or(0) == old.observed_generation.unwrap_or(0)
        && old.conditions.as_deref().unwrap_or_default() == new.conditions.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn rs(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta { name: Some("rs".into()), generation: Some(2), ..Default::default() },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector { match_labels: Some(labels(&[("app", "x")])), ..Default::default() },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(&[("app", "x"), ("tier", "web")])),
                        ..Default::default()
                    }),
                    spec: None,
                }),
                min_ready_seconds: None,
            }),
            status: None,
        }
    }

    fn pod(l: &[(&str, &str)], ready: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta { labels: Some(labels(l)), ..Default::default() },
            spec: None,
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn counts_pods_fully_labeled_ready_and_available() {
        let pods = vec![pod(&[("app", "x"), ("tier", "web")], true), pod(&[("app", "x")], false)];
        let s = calculate(&rs(3), &pods, 1, None, Timestamp::now());
        assert_eq!(s.replicas, 2);
        assert_eq!(s.fully_labeled_replicas, Some(1));
        assert_eq!(s.ready_replicas, Some(1));
        assert_eq!(s.available_replicas, Some(1));
        assert_eq!(s.terminating_replicas, Some(1));
        assert!(s.conditions.is_none());
    }

    #[test]
    fn a_failed_create_sets_replica_failure_and_success_clears_it() {
        let failure = ManageFailure { message: "pods \"rs-\" is forbidden: exceeded quota".into() };
        let mut w = rs(3);
        let s = calculate(&w, &[], 0, Some(&failure), Timestamp::now());
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()),
            (REPLICA_FAILURE, "True", Some("FailedCreate"))
        );
        w.status = Some(s);
        let cleared = calculate(&w, &[], 0, None, Timestamp::now());
        assert!(cleared.conditions.is_none());
    }

    #[test]
    fn an_observed_generation_behind_is_a_change() {
        let w = rs(0);
        let s = calculate(&w, &[], 0, None, Timestamp::now());
        assert!(!unchanged(&w.status(), &s, Some(2)));
        let mut observed = s.clone();
        observed.observed_generation = Some(2);
        assert!(unchanged(&observed, &s, Some(2)));
    }
}
