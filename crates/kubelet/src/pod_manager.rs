//! The pods bound to this node (upstream's pod config source from the API server plus the
//! pod manager): a watch of pods with `spec.nodeName=<node>` feeding the pod workers, and, after
//! the first full list, the removal of sandboxes whose pods no longer exist (the agent was away
//! while they were deleted). Sandboxes of pods that still exist are adopted by their workers as
//! they are: the containers keep running across an agent restart.
//!
//! Static pods (`--pod-manifest-path`) join the same workers from the manifest files; their
//! mirror pods in the API are not run (the static pod is) but tracked, and kept matching by the
//! mirror task of [`crate::static_pods`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use crate::kuberuntime::KubeRuntimeManager;
use crate::pod_workers::{PodUpdate, PodWorkers};
use crate::static_pods::mirror::{ByFullName, MirrorClient, full_name};
use crate::static_pods::{self, MirrorSnapshot, StaticPods};

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// Watches this node's pods, and reads its static pod manifests when `manifest_path` is set,
/// until `shutdown`.
pub async fn run(
    client: kube::Client,
    node_name: String,
    manifest_path: Option<std::path::PathBuf>,
    workers: PodWorkers,
    manager: Arc<KubeRuntimeManager>,
    shutdown: CancellationToken,
) {
    // Static pods are read before anything else: their sandboxes from before a restart must be
    // known to the workers before orphaned sandboxes are removed.
    let mut statics = manifest_path.map(|path| StaticPods::new(path, node_name.clone()));
    let mut mirrors = ByFullName::new();
    let (snapshots, snapshot_rx) = tokio::sync::watch::channel(MirrorSnapshot::default());
    if let Some(statics) = &mut statics {
        for pod in statics.refresh().added {
            workers.update(PodUpdate::Sync(pod));
        }
    }
    // Also without a manifest path: mirrors left from an earlier configuration are removed.
    let mirror_client = MirrorClient::new(client.clone(), node_name.clone());
    tokio::spawn(static_pods::run_mirrors(mirror_client, snapshot_rx, shutdown.clone()));
    let mut manifest_check = tokio::time::interval(static_pods::CHECK_PERIOD);
    manifest_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut known: HashMap<String, Arc<Pod>> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut orphans_removed = false;
    // Between a watch's Init and InitDone: the mirror list is incomplete.
    let mut listing = true;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = stream.next() => event,
            _ = manifest_check.tick(), if statics.is_some() => {
                if let Some(statics) = &mut statics {
                    let changes = statics.refresh();
                    if !changes.added.is_empty() || !changes.removed.is_empty() {
                        for pod in changes.removed {
                            workers.update(PodUpdate::Removed(pod));
                        }
                        for pod in changes.added {
                            workers.update(PodUpdate::Sync(pod));
                        }
                        if !listing {
                            snapshots.send_replace(snapshot(statics, &mirrors));
                        }
                    }
                }
                continue;
            }
        };
        let Some(event) = event else { return };
        // Mirror pods are the API's view of static pods: tracked, never run.
        let mirror_event = match &event {
            Ok(watcher::Event::Init) => {
                mirrors.clear();
                listing = true;
                false
            }
            Ok(watcher::Event::InitDone) => {
                listing = false;
                false
            }
            Ok(watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)) if static_pods::is_mirror(pod) => {
                let name = full_name(pod);
                let replaced = mirrors.get(&name).is_none_or(|old| old.metadata.uid != pod.metadata.uid);
                mirrors.insert(name, Arc::new(pod.clone()));
                // A mirror made again starts without status: the static pod's worker writes it anew.
                if replaced
                    && let Some(statics) = &statics
                    && let Some(static_pod) = statics.pods().values().find(|s| full_name(s) == full_name(pod))
                {
                    workers.rewrite_status(static_pod.clone());
                }
                true
            }
            Ok(watcher::Event::Delete(pod)) if static_pods::is_mirror(pod) => {
                let name = full_name(pod);
                if mirrors.get(&name).is_some_and(|m| m.metadata.uid == pod.metadata.uid) {
                    mirrors.remove(&name);
                }
                true
            }
            _ => false,
        };
        // Mirrors are reconciled only from a complete list: before it, every mirror looks missing.
        if matches!(event, Ok(watcher::Event::InitDone)) || (mirror_event && !listing) {
            let statics = statics.as_ref().map(|s| s.pods().clone()).unwrap_or_default();
            snapshots.send_replace(MirrorSnapshot { statics, mirrors: mirrors.clone() });
        }
        if mirror_event {
            continue;
        }
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

fn snapshot(statics: &StaticPods, mirrors: &ByFullName) -> MirrorSnapshot {
    MirrorSnapshot { statics: statics.pods().clone(), mirrors: mirrors.clone() }
}

fn apply(workers: &PodWorkers, known: &mut HashMap<String, Arc<Pod>>, pod: Pod) {
    let pod = Arc::new(pod);
    known.insert(uid(&pod), pod.clone());
    workers.update(PodUpdate::Sync(pod));
}
