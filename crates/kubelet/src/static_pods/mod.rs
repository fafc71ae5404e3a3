//! Static pods: pods the node agent runs from manifest files (`--pod-manifest-path`) rather
//! than from the API, as upstream's kubelet does for control-plane components. They run even
//! while the API is unreachable; the API shows each through a mirror pod ([`mirror`]) whose
//! status the agent keeps, and deleting the mirror does not stop the pod: removing (or changing)
//! the manifest does.

pub mod file;
pub mod mirror;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use file::{is_mirror, is_static};
use mirror::{ByFullName, MirrorClient, full_name};

/// How often the manifest path is read again (upstream reads it every 20 s and on inotify
/// events; a poll this frequent costs a directory listing and keeps changes quick to apply).
pub const CHECK_PERIOD: Duration = Duration::from_secs(2);
/// How often mirrors are checked even when nothing changed (e.g. a failed create).
const MIRROR_RESYNC: Duration = Duration::from_secs(10);

/// The static pods as last read from the manifest path, by UID.
#[derive(Debug)]
pub struct StaticPods {
    path: PathBuf,
    node_name: String,
    pods: HashMap<String, Arc<Pod>>,
    /// When each pod (by UID) was first seen: its `kubernetes.io/config.seen`.
    seen: HashMap<String, String>,
    /// The manifest errors last logged, so that a broken file is reported once, not every read.
    reported: BTreeSet<String>,
}

/// What changed between two reads.
#[derive(Debug, Default)]
pub struct Changes {
    pub added: Vec<Arc<Pod>>,
    pub removed: Vec<Arc<Pod>>,
}

impl StaticPods {
    pub fn new(path: PathBuf, node_name: String) -> Self {
        StaticPods { path, node_name, pods: HashMap::new(), seen: HashMap::new(), reported: BTreeSet::new() }
    }

    /// Reads the manifests again. A changed manifest is a new pod (another UID): the old one is
    /// removed and the new one added.
    pub fn refresh(&mut self) -> Changes {
        let (pods, errors) = file::read_manifests(&self.path, &self.node_name);
        let messages: BTreeSet<String> = errors.iter().map(|e| tug_runtime::error_chain(e)).collect();
        for message in messages.difference(&self.reported) {
            tracing::warn!(error = %message, "static pod manifest skipped");
        }
        self.reported = messages;
        let mut fresh: HashMap<String, Arc<Pod>> = HashMap::new();
        for mut pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let seen = self.seen.entry(uid.clone()).or_insert_with(|| jiff::Timestamp::now().to_string()).clone();
            pod.metadata.annotations.get_or_insert_with(Default::default).insert(file::CONFIG_SEEN.into(), seen);
            fresh.insert(uid, Arc::new(pod));
        }
        let mut changes = Changes::default();
        for (uid, pod) in &self.pods {
            if !fresh.contains_key(uid) {
                changes.removed.push(pod.clone());
            }
        }
        for (uid, pod) in &fresh {
            if !self.pods.contains_key(uid) {
                changes.added.push(pod.clone());
            }
        }
        self.seen.retain(|uid, _| fresh.contains_key(uid));
        self.pods = fresh;
        changes
    }

    /// The current static pods by UID.
    pub fn pods(&self) -> &HashMap<String, Arc<Pod>> {
        &self.pods
    }
}

/// What the mirror task reconciles: the static pods (by UID) and the mirror pods the API has.
#[derive(Debug, Clone, Default)]
pub struct MirrorSnapshot {
    pub statics: HashMap<String, Arc<Pod>>,
    pub mirrors: ByFullName,
}

/// Keeps the mirror pods matching the static pods until `shutdown`: after every change of
/// either, and every few seconds.
pub async fn run_mirrors(
    client: MirrorClient,
    mut snapshots: watch::Receiver<MirrorSnapshot>,
    shutdown: CancellationToken,
) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let statics: ByFullName = snapshot.statics.values().map(|p| (full_name(p), p.clone())).collect();
        let actions = mirror::plan(&statics, &snapshot.mirrors);
        if !actions.is_empty() {
            client.apply(&actions, &snapshot.statics).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(MIRROR_RESYNC) => {}
        }
    }
}
