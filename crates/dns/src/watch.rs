//! Keeps the [`View`] in step with the cluster: Services, EndpointSlices and Pods watched
//! through the API (kube-rs reflectors), the view rebuilt whole shortly after each change.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::server::SharedView;
use crate::view::View;

/// Changes arriving this close together are folded into one rebuild; well inside the
/// one-second budget for answers to follow the cluster.
const BATCH: Duration = Duration::from_millis(50);

/// Drives a reflector, poking `changed` after every event.
async fn drive<K, S>(stream: S, what: &'static str, changed: Arc<Notify>)
where
    K: Resource + Clone,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            // The backoff retries; say why answers may be stale meanwhile.
            Err(e) => warn!(resource = what, error = %e, "watching for cluster DNS failed; retrying"),
        }
    }
}

fn reflect<K>(
    client: &Client,
    changed: Arc<Notify>,
    what: &'static str,
    trim: fn(&mut K),
) -> (Store<K>, impl Future<Output = ()>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    (reader, drive(stream, what, changed))
}

/// Rebuilds `view` from the cluster until `shutdown`.
pub async fn run(client: Client, domain: String, view: Arc<SharedView>, shutdown: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let (services, services_task) = reflect::<Service>(&client, changed.clone(), "services", |s| {
        s.metadata.managed_fields = None;
        s.status = None;
    });
    let (slices, slices_task) =
        reflect::<EndpointSlice>(&client, changed.clone(), "endpointslices", |s| s.metadata.managed_fields = None);
    let (pods, pods_task) = reflect::<Pod>(&client, changed.clone(), "pods", trim_pod);
    let rebuild = async {
        // The first view is built once every store has listed, so that it never answers a
        // name as missing when its object was simply not read yet.
        let synced = tokio::join!(services.wait_until_ready(), slices.wait_until_ready(), pods.wait_until_ready());
        if synced.0.is_err() || synced.1.is_err() || synced.2.is_err() {
            return;
        }
        changed.notify_one();
        let mut serial: u32 = 1;
        loop {
            changed.notified().await;
            tokio::time::sleep(BATCH).await;
            serial = serial.wrapping_add(1);
            let (services, slices, pods) = (services.state(), slices.state(), pods.state());
            let built = View::build(
                &domain,
                &services.iter().map(Arc::as_ref).collect::<Vec<_>>(),
                &slices.iter().map(Arc::as_ref).collect::<Vec<_>>(),
                &pods.iter().map(Arc::as_ref).collect::<Vec<_>>(),
                serial,
            );
            debug!(
                services = services.len(),
                endpointslices = slices.len(),
                pods = pods.len(),
                serial,
                "cluster DNS view rebuilt"
            );
            view.set(built);
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = services_task => {}
        _ = slices_task => {}
        _ = pods_task => {}
        _ = rebuild => {}
    }
}

/// Keeps of a pod only what the view reads (namespace, hostNetwork, its IPs): a cluster has
/// many pods, and the server keeps this copy of all of them.
fn trim_pod(pod: &mut Pod) {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network);
    let status = pod.status.take();
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.labels = None;
    pod.metadata.owner_references = None;
    pod.spec = Some(k8s_openapi::api::core::v1::PodSpec { host_network, ..Default::default() });
    pod.status = status.map(|s| k8s_openapi::api::core::v1::PodStatus {
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        ..Default::default()
    });
}
