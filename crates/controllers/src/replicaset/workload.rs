//! The two kinds this controller drives: apps/v1 ReplicaSet and core/v1 ReplicationController.
//!
//! Upstream runs one controller for both, converting an RC to an RS on the way in and out
//! (`pkg/controller/replication/conversion.go`); here the same logic reads both through the
//! [`Workload`] trait, with the RC's equality selector seen as `matchLabels`. The status is
//! handled in the RS's shape and converted back for an RC.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{
    PodTemplateSpec, ReplicationController, ReplicationControllerCondition, ReplicationControllerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What the controller needs of a ReplicaSet or ReplicationController.
pub trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The Events' source component.
    const COMPONENT: &'static str;
    /// Whether the status has `terminatingReplicas` (upstream's
    /// `DeploymentReplicaSetTerminatingReplicas`, beta and on by default since 1.35; RS only).
    const COUNTS_TERMINATING: bool;

    fn selector(&self) -> Option<LabelSelector>;
    /// `spec.replicas`, defaulted to 1 as the API server does.
    fn replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// The status in the RS's shape.
    fn status(&self) -> ReplicaSetStatus;
    /// A copy with its status replaced.
    fn with_status(&self, status: ReplicaSetStatus) -> Self;
}

impl Workload for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    const COUNTS_TERMINATING: bool = true;

    fn selector(&self) -> Option<LabelSelector> {
        self.spec.as_ref().map(|s| s.selector.clone())
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn status(&self) -> ReplicaSetStatus {
        self.status.clone().unwrap_or_default()
    }
    fn with_status(&self, status: ReplicaSetStatus) -> Self {
        let mut copy = self.clone();
        copy.status = Some(status);
        copy
    }
}

impl Workload for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    const COUNTS_TERMINATING: bool = false;

    fn selector(&self) -> Option<LabelSelector> {
        let labels = self.spec.as_ref().and_then(|s| s.selector.clone());
        Some(LabelSelector { match_labels: labels, match_expressions: None })
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn status(&self) -> ReplicaSetStatus {
        let s = self.status.clone().unwrap_or_default();
        ReplicaSetStatus {
            available_replicas: s.available_replicas,
            conditions: s.conditions.map(|cs| {
                cs.into_iter()
                    .map(|c| ReplicaSetCondition {
                        last_transition_time: c.last_transition_time,
                        message: c.message,
                        reason: c.reason,
                        status: c.status,
                        type_: c.type_,
                    })
                    .collect()
            }),
            fully_labeled_replicas: s.fully_labeled_replicas,
            observed_generation: s.observed_generation,
            ready_replicas: s.ready_replicas,
            replicas: s.replicas,
            terminating_replicas: None,
        }
    }
    fn with_status(&self, s: ReplicaSetStatus) -> Self {
        let mut copy = self.clone();
        copy.status = Some(ReplicationControllerStatus {
            available_replicas: s.available_replicas,
            conditions: s.conditions.map(|cs| {
                cs.into_iter()
                    .map(|c| ReplicationControllerCondition {
                        last_transition_time: c.last_transition_time,
                        message: c.message,
                        reason: c.reason,
                        status: c.status,
                        type_: c.type_,
                    })
                    .collect()
            }),
            fully_labeled_replicas: s.fully_labeled_replicas,
            observed_generation: s.observed_generation,
            ready_replicas: s.ready_replicas,
            replicas: s.replicas,
        });
        copy
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ReplicationControllerSpec;

    use super::*;

    #[test]
    fn a_replication_controller_reads_as_a_replica_set() {
        let selector = BTreeMap::from([("app".to_string(), "legacy".to_string())]);
        let rc = ReplicationController {
            spec: Some(ReplicationControllerSpec {
                selector: Some(selector.clone()),
                replicas: None,
                ..Default::default()
            }),
            status: Some(ReplicationControllerStatus {
                replicas: 2,
                ready_replicas: Some(1),
                conditions: Some(vec![ReplicationControllerCondition {
                    type_: "ReplicaFailure".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(rc.selector(), Some(LabelSelector { match_labels: Some(selector), match_expressions: None }));
        assert_eq!(rc.replicas(), 1, "replicas defaults to 1");
        let status = rc.status();
        assert_eq!((status.replicas, status.ready_replicas), (2, Some(1)));
        assert_eq!(status.terminating_replicas, None);
        let back = rc.with_status(status);
        assert_eq!(back.status, rc.status);
    }
}
