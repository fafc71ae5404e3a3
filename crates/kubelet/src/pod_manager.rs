//! The pods bound to this node (upstream's pod config source from the API server plus the
//! pod manager): a watch of pods with `spec.nodeName=<node>` feeding the pod workers, and, after
//! the first full list, the removal of sandboxes whose pods no longer exist (the agent was away
//! while they were deleted). Sandboxes of pods that still exist are adopted by their workers as
//! they are: the containers keep running across an agent restart.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use crate::kuberuntime::KubeRuntimeManager;
use crate::pod_workers::{PodUpdate, PodWorkers};

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// Watches this node's pods until `shutdown`.
pub async fn run(
    client: kube::Client,
    node_name: String,
    workers: PodWorkers,
    manager: Arc<KubeRuntimeManager>,
    shutdown: CancellationToken,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut known: HashMap<String, Arc<Pod>> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut orphans_removed = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = stream.next() => event,
        };
        let Some(event) = event else { return };
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                listed.insert(uid(&pod));
                apply(&workers, &mut known, pod);
            }
            Ok(watcher::Event::InitDone) => {
                // Pods that vanished while the watch was down.
                let gone: Vec<String> = known.keys().filter(|u| !listed.contains(*u)).cloned().collect();
                for u in gone {
                    if let Some(pod) = known.remove(&u) {
                        workers.update(PodUpdate::Removed(pod));
                    }
                }
                if !orphans_removed {
                    orphans_removed = true;
                    let mut keep: HashSet<String> = known.keys().cloned().collect();
                    keep.extend(workers.active());
                    let manager = manager.clone();
                    tokio::spawn(async move {
                        if let Err(error) = manager.remove_orphans(&keep).await {
                            tracing::warn!(%error, "removing sandboxes of deleted pods");
                        }
                    });
                }
            }
            Ok(watcher::Event::Apply(pod)) => apply(&workers, &mut known, pod),
            Ok(watcher::Event::Delete(pod)) => {
                known.remove(&uid(&pod));
                workers.update(PodUpdate::Removed(Arc::new(pod)));
            }
            Err(error) => tracing::warn!(%error, "watching this node's pods"),
        }
    }
}

fn apply(workers: &PodWorkers, known: &mut HashMap<String, Arc<Pod>>, pod: Pod) {
    let pod = Arc::new(pod);
    known.insert(uid(&pod), pod.clone());
    workers.update(PodUpdate::Sync(pod));
}
