//! What VolumeBinding reads: claims, volumes and storage classes, from informers (or fixed
//! lists in tests), and the events that send pods it rejected back to the queue.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::queue::SchedulingQueue;

pub trait VolumeListers: Send + Sync {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>>;
    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>>;
    fn volumes(&self) -> Vec<Arc<PersistentVolume>>;
    fn class(&self, name: &str) -> Option<Arc<StorageClass>>;
}

/// Fixed lists, for tests and for a scheduler built without a client.
#[derive(Default, Clone)]
pub struct StaticVolumeListers {
    pub claims: Vec<Arc<PersistentVolumeClaim>>,
    pub volumes: Vec<Arc<PersistentVolume>>,
    pub classes: Vec<Arc<StorageClass>>,
}

impl VolumeListers for StaticVolumeListers {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.iter().find(|c| c.name_any() == name && c.namespace().as_deref() == Some(namespace)).cloned()
    }
    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
        self.volumes.iter().find(|v| v.name_any() == name).cloned()
    }
    fn volumes(&self) -> Vec<Arc<PersistentVolume>> {
        self.volumes.clone()
    }
    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.classes.iter().find(|c| c.name_any() == name).cloned()
    }
}

/// Informer caches kept through the API; their watches stop when this is dropped (with its
/// profile's framework, e.g. when the scheduler loses its lease).
pub struct InformerVolumeListers {
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for InformerVolumeListers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn reflect<K>(client: &Client, tasks: &mut Vec<tokio::task::JoinHandle<()>>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, task) = crate::cache::spawn_reflector(client);
    tasks.push(task);
    store
}

impl InformerVolumeListers {
    /// Starts the informers.
    pub fn start(client: &Client) -> Self {
        let mut tasks = Vec::new();
        let claims = reflect(client, &mut tasks);
        let volumes = reflect(client, &mut tasks);
        let classes = reflect(client, &mut tasks);
        Self { claims, volumes, classes, tasks }
    }
}

impl VolumeListers for InformerVolumeListers {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&ObjectRef::new(name).within(namespace))
    }
    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
        self.volumes.get(&ObjectRef::new(name))
    }
    fn volumes(&self) -> Vec<Arc<PersistentVolume>> {
        self.volumes.state()
    }
    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.classes.get(&ObjectRef::new(name))
    }
}

/// Sends the pods VolumeBinding rejected back to the queue when a claim, volume or storage
/// class changes (upstream's queueing hints for those events), until the watches end.
pub async fn watch_for_requeue(client: Client, queue: Arc<SchedulingQueue>) {
    let helps = |_: &str, plugins: &[&'static str]| plugins.contains(&super::NAME);
    let claims = watch_events::<PersistentVolumeClaim>(&client, queue.clone(), "PersistentVolumeClaimChange", helps);
    let volumes = watch_events::<PersistentVolume>(&client, queue.clone(), "PersistentVolumeChange", helps);
    let classes = watch_events::<StorageClass>(&client, queue, "StorageClassChange", helps);
    tokio::join!(claims, volumes, classes);
}

async fn watch_events<K>(
    client: &Client,
    queue: Arc<SchedulingQueue>,
    event: &'static str,
    helps: impl Fn(&str, &[&'static str]) -> bool + Copy,
) where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        if let Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) = ev {
            queue.move_if(event, helps);
        }
    }
}
