//! Read access to the cluster objects some plugins need besides nodes and pods (upstream's
//! shared informer listers): services and workload controllers for PodTopologySpread's default
//! constraints, namespaces for InterPodAffinity's namespace selectors, and disruption budgets
//! for preemption. The scheduler backs it with informers; tests use [`StaticListers`].

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, ReplicationController, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

/// What plugins may read about the cluster beyond the cycle's snapshot.
pub trait Listers: Send + Sync {
    fn services(&self, namespace: &str) -> Vec<Arc<Service>>;
    fn replication_controllers(&self, namespace: &str) -> Vec<Arc<ReplicationController>>;
    fn replica_sets(&self, namespace: &str) -> Vec<Arc<ReplicaSet>>;
    fn stateful_sets(&self, namespace: &str) -> Vec<Arc<StatefulSet>>;
    /// The labels of a namespace; `None` when it is not known.
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>>;
    /// Every namespace's name with its labels.
    fn namespaces(&self) -> Vec<(String, BTreeMap<String, String>)>;
    fn pod_disruption_budgets(&self, namespace: &str) -> Vec<Arc<PodDisruptionBudget>>;
}

/// Fixed lists (empty by default): for tests and for a scheduler built without informers.
#[derive(Default, Clone)]
pub struct StaticListers {
    pub services: Vec<Arc<Service>>,
    pub replication_controllers: Vec<Arc<ReplicationController>>,
    pub replica_sets: Vec<Arc<ReplicaSet>>,
    pub stateful_sets: Vec<Arc<StatefulSet>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub pod_disruption_budgets: Vec<Arc<PodDisruptionBudget>>,
}

fn in_namespace<T: kube::Resource>(items: &[Arc<T>], namespace: &str) -> Vec<Arc<T>> {
    items.iter().filter(|o| o.meta().namespace.as_deref() == Some(namespace)).cloned().collect()
}

impl Listers for StaticListers {
    fn services(&self, namespace: &str) -> Vec<Arc<Service>> {
        in_namespace(&self.services, namespace)
    }
    fn replication_controllers(&self, namespace: &str) -> Vec<Arc<ReplicationController>> {
        in_namespace(&self.replication_controllers, namespace)
    }
    fn replica_sets(&self, namespace: &str) -> Vec<Arc<ReplicaSet>> {
        in_namespace(&self.replica_sets, namespace)
    }
    fn stateful_sets(&self, namespace: &str) -> Vec<Arc<StatefulSet>> {
        in_namespace(&self.stateful_sets, namespace)
    }
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(namespace))
            .map(|n| n.metadata.labels.clone().unwrap_or_default())
    }
    fn namespaces(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.namespaces
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default()))
            .collect()
    }
    fn pod_disruption_budgets(&self, namespace: &str) -> Vec<Arc<PodDisruptionBudget>> {
        in_namespace(&self.pod_disruption_budgets, namespace)
    }
}
