//! The informers behind [`Listers`] (upstream's shared informer factory as the scheduler uses
//! it): services, replication controllers, replica sets, stateful sets, namespaces and
//! disruption budgets, each a kube-runtime reflector kept in sync through the API.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, ReplicationController, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::framework::Listers;

/// Listers backed by informers; cheap to clone.
#[derive(Clone)]
pub struct InformerListers {
    services: Store<Service>,
    replication_controllers: Store<ReplicationController>,
    replica_sets: Store<ReplicaSet>,
    stateful_sets: Store<StatefulSet>,
    namespaces: Store<Namespace>,
    pdbs: Store<PodDisruptionBudget>,
}

pub(crate) fn spawn_reflector<K>(client: &Client) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let api: Api<K> = Api::all(client.clone());
    let task = tokio::spawn(async move {
        let mut stream =
            reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff()).boxed();
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                debug!(kind = %K::kind(&()), error = %e, "informer watch failed; retrying");
            }
        }
    });
    (store, task)
}

impl InformerListers {
    /// Starts the informers; the tasks run until aborted.
    pub fn start(client: &Client) -> (Self, Vec<JoinHandle<()>>) {
        let (services, t1) = spawn_reflector(client);
        let (replication_controllers, t2) = spawn_reflector(client);
        let (replica_sets, t3) = spawn_reflector(client);
        let (stateful_sets, t4) = spawn_reflector(client);
        let (namespaces, t5) = spawn_reflector(client);
        let (pdbs, t6) = spawn_reflector(client);
        let listers = Self { services, replication_controllers, replica_sets, stateful_sets, namespaces, pdbs };
        (listers, vec![t1, t2, t3, t4, t5, t6])
    }

    /// Waits until every informer has listed once.
    pub async fn wait_until_ready(&self) -> bool {
        self.services.wait_until_ready().await.is_ok()
            && self.replication_controllers.wait_until_ready().await.is_ok()
            && self.replica_sets.wait_until_ready().await.is_ok()
            && self.stateful_sets.wait_until_ready().await.is_ok()
            && self.namespaces.wait_until_ready().await.is_ok()
            && self.pdbs.wait_until_ready().await.is_ok()
    }
}

fn in_namespace<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>, namespace: &str) -> Vec<Arc<K>> {
    store.state().into_iter().filter(|o| o.meta().namespace.as_deref() == Some(namespace)).collect()
}

impl Listers for InformerListers {
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
        self.namespaces.get(&ObjectRef::new(namespace)).map(|n| n.metadata.labels.clone().unwrap_or_default())
    }
    fn namespaces(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.namespaces
            .state()
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default()))
            .collect()
    }
    fn pod_disruption_budgets(&self, namespace: &str) -> Vec<Arc<PodDisruptionBudget>> {
        in_namespace(&self.pdbs, namespace)
    }
}
