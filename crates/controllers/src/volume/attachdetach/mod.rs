//! The attach/detach controller (upstream's `pkg/controller/volume/attachdetach`), for CSI
//! volumes: each node that leaves attaching to the controller gets a VolumeAttachment for every
//! CSI PersistentVolume its pods use, which the driver's attacher (`tug csi-controller`, or
//! upstream's external-attacher) acts on; attachments no longer wanted are deleted once the
//! kubelet has unmounted the volume; the node's `status.volumesAttached` lists the attached
//! ones, which the kubelet waits for before mounting.
//!
//! Work is keyed by node name, so that the attachments of a node that is gone are cleaned up
//! too; pods, claims, volumes, CSIDrivers, VolumeAttachments and nodes only enqueue nodes.
//! A volume only one node may use (no ReadOnlyMany or ReadWriteMany) is not attached to a
//! second node while attached to another: its pods get upstream's Multi-Attach error.

pub mod desired_state;
pub mod reconciler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSIDriver, VolumeAttachment};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use crate::endpoint::workqueue::WorkQueue;
use crate::events::{NORMAL, Recorder, WARNING};
use crate::informer::{Change, Informers};
use crate::podgc::is_out_of_service;
use crate::volume::ephemeral;
use desired_state::{Attachment, Lister, node_of};

/// The events' `source.component`, as upstream.
const COMPONENT: &str = "attachdetach-controller";
/// Upstream's `maxWaitForUnmountDuration`: how long a volume of a node that is not ready may stay
/// mounted before it is detached anyway.
const MAX_WAIT_FOR_UNMOUNT: Duration = Duration::from_secs(6 * 60);
const CONCURRENT_SYNCS: usize = 2;

/// Why a node's sync failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating volumeattachment {name}")]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting volumeattachment {name}")]
    Delete {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the attached volumes of node {node}")]
    NodeStatus {
        node: String,
        #[source]
        source: kube::Error,
    },
}

struct Controller {
    client: Client,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    drivers: Store<CSIDriver>,
    nodes: Store<Node>,
    attachments: Store<VolumeAttachment>,
    queue: WorkQueue,
    recorder: Recorder,
    /// Attachments no longer wanted but still mounted, and since when.
    unwanted_since: Mutex<HashMap<String, Instant>>,
    /// What was last said per attachment (its attach error, that it is attached) or pod (its
    /// multi-attach error), so that each is said once.
    reported: Mutex<HashMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lister for Controller {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&ObjectRef::new(name).within(namespace))
    }
    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
        self.volumes.get(&ObjectRef::new(name))
    }
    fn driver(&self, name: &str) -> Option<Arc<CSIDriver>> {
        self.drivers.get(&ObjectRef::new(name))
    }
}

/// Whether `pod` uses the claim `name` (directly or as its ephemeral volume's).
fn uses_claim(pod: &Pod, name: &str) -> bool {
    pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten().any(|v| {
        v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == name)
            || (v.ephemeral.is_some() && ephemeral::claim_name(pod, &v.name) == name)
    })
}

/// Whether `pod` has a `persistentVolumeClaim` or `ephemeral` volume.
fn has_claims(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .any(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Runs the controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (claims, claim_writer) = informers.store::<PersistentVolumeClaim>().await;
    let (volumes, volume_writer) = informers.store::<PersistentVolume>().await;
    let (drivers, driver_writer) = informers.store::<CSIDriver>().await;
    let (nodes, node_writer) = informers.store::<Node>().await;
    let (attachments, attachment_writer) = informers.store::<VolumeAttachment>().await;
    let c = Arc::new(Controller {
        client: client.clone(),
        pods,
        claims,
        volumes,
        drivers,
        nodes,
        attachments,
        queue: WorkQueue::default(),
        recorder: Recorder::new(client.clone(), COMPONENT),
        unwanted_since: Mutex::new(HashMap::new()),
        reported: Mutex::new(HashMap::new()),
    });
    let pod_informer = {
        let c = c.clone();
        pod_writer.run(shutdown.clone(), move |change| {
            // Only pods with claims can want an attachment.
            for pod in change.objects() {
                if has_claims(pod)
                    && let Some(node) = node_of(pod)
                {
                    c.queue.add(node.to_string());
                }
            }
        })
    };
    let claim_informer = {
        let c = c.clone();
        claim_writer.run(shutdown.clone(), move |ch| {
            for claim in ch.objects() {
                c.enqueue_claim_users(&claim.namespace().unwrap_or_default(), &claim.name_any());
            }
        })
    };
    let volume_informer = {
        let c = c.clone();
        volume_writer.run(shutdown.clone(), move |ch| {
            for pv in ch.objects() {
                if let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
                    && let (Some(ns), Some(name)) = (&r.namespace, &r.name)
                {
                    c.enqueue_claim_users(ns, name);
                }
                let name = pv.name_any();
                for va in c.attachments.state() {
                    if va.spec.source.persistent_volume_name.as_deref() == Some(name.as_str()) {
                        c.queue.add(va.spec.node_name.clone());
                    }
                }
            }
        })
    };
    let driver_informer = {
        let c = c.clone();
        driver_writer.run(shutdown.clone(), move |_| {
            // Whether a driver attaches changes what every node wants.
            for node in c.nodes.state() {
                c.queue.add(node.name_any());
            }
        })
    };
    let node_informer = {
        let c = c.clone();
        node_writer.run(shutdown.clone(), move |change| {
            let (Change::Add(n) | Change::Update(_, n) | Change::Delete(n)) = change;
            c.queue.add(n.name_any());
        })
    };
    let attachment_informer = {
        let c = c.clone();
        attachment_writer.run(shutdown.clone(), move |change| {
            for va in change.objects() {
                c.queue.add(va.spec.node_name.clone());
            }
            // A volume detached from one node may be attached to another now.
            if let Change::Delete(va) = &change
                && let Some(pv) = va.spec.source.persistent_volume_name.as_deref().and_then(|pv| c.volume(pv))
                && let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
                && let (Some(ns), Some(name)) = (&r.namespace, &r.name)
            {
                c.enqueue_claim_users(ns, name);
            }
        })
    };
    let workers = {
        let c = c.clone();
        async move {
            let _ = tokio::join!(
                c.pods.wait_until_ready(),
                c.claims.wait_until_ready(),
                c.volumes.wait_until_ready(),
                c.drivers.wait_until_ready(),
                c.nodes.wait_until_ready(),
                c.attachments.wait_until_ready(),
            );
            info!("starting attach detach controller");
            let sync_c = c.clone();
            c.queue
                .run_workers(CONCURRENT_SYNCS, shutdown, move |node| {
                    let c = sync_c.clone();
                    async move { c.sync(&node).instrument(info_span!("sync_attachdetach", %node)).await }
                })
                .await
        }
    };
    tokio::join!(
        pod_informer,
        claim_informer,
        volume_informer,
        driver_informer,
        node_informer,
        attachment_informer,
        workers
    );
}

impl Controller {
    fn enqueue_claim_users(&self, namespace: &str, claim: &str) {
        for pod in self.pods.state() {
            if pod.namespace().as_deref() == Some(namespace)
                && uses_claim(&pod, claim)
                && let Some(node) = node_of(&pod)
            {
                self.queue.add(node.to_string());
            }
        }
    }

    /// The unique name of the volume an attachment is for, from its PersistentVolume.
    fn unique_name(&self, va: &VolumeAttachment) -> Option<String> {
        let pv = self.volume(va.spec.source.persistent_volume_name.as_deref()?)?;
        let csi = pv.spec.as_ref()?.csi.as_ref()?;
        Some(tug_csi::volume_unique_name(&csi.driver, &csi.volume_handle))
    }

    fn pods_of(&self, a: &Attachment) -> Vec<Arc<Pod>> {
        a.pods.iter().filter_map(|(ns, name)| self.pods.get(&ObjectRef::new(name).within(ns))).collect()
    }

    /// Upstream's reconciler pass for one node.
    async fn sync(&self, node_name: &str) -> Result<(), Error> {
        let node = self.nodes.get(&ObjectRef::new(node_name));
        let attachments: Vec<Arc<VolumeAttachment>> = self
            .attachments
            .state()
            .into_iter()
            .filter(|va| va.spec.node_name == node_name && va.spec.source.persistent_volume_name.is_some())
            .collect();
        // A node that attaches for itself is not this controller's, unless it has attachments
        // left from when it was.
        if node.as_deref().is_some_and(|n| !desired_state::is_controller_managed(n)) && attachments.is_empty() {
            return Ok(());
        }
        let pods: Vec<Arc<Pod>> = self.pods.state().into_iter().filter(|p| node_of(p) == Some(node_name)).collect();
        let desired = desired_state::desired_for_node(node.as_deref(), pods.iter().map(|p| &**p), self);
        let now = Instant::now();
        let forced = |name: &str| {
            let Some(node) = node.as_deref() else { return true };
            if is_out_of_service(node) {
                return true;
            }
            let since = *lock(&self.unwanted_since).entry(name.to_string()).or_insert(now);
            !is_ready(node) && now.duration_since(since) >= MAX_WAIT_FOR_UNMOUNT
        };
        let plan =
            reconciler::plan(node_name, node.as_deref(), &desired, &attachments, |va| self.unique_name(va), forced);
        self.report_attach_errors(&desired, &attachments);

        let api: Api<VolumeAttachment> = Api::all(self.client.clone());
        let mut first_error = None;
        for va in &plan.create {
            let name = va.name_any();
            if let Some(a) = desired.get(&name)
                && self.report_multi_attach(node_name, a)
            {
                continue;
            }
            match api.create(&PostParams::default(), va).await {
                Ok(_) => {
                    debug!(attachment = %name, volume = ?va.spec.source.persistent_volume_name, "attaching");
                    if let Some(a) = desired.get(&name) {
                        let mut reported = lock(&self.reported);
                        for pod in self.pods_of(a) {
                            reported.remove(&format!("multi-attach/{}", pod.uid().unwrap_or_default()));
                        }
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(source) => {
                    if let Some(a) = desired.get(&name) {
                        let message = format!("AttachVolume.Attach failed for volume {:?} : {source}", a.volume);
                        for pod in self.pods_of(a) {
                            self.recorder.record(&*pod, WARNING, "FailedAttachVolume", message.clone());
                        }
                    }
                    first_error.get_or_insert(Error::Create { name, source });
                }
            }
        }
        for name in &plan.newly_attached {
            let Some(a) = desired.get(name) else { continue };
            // Said once: until the node cache has the new report, later syncs see it as new too.
            if lock(&self.reported).insert(format!("attached/{name}"), String::new()).is_some() {
                continue;
            }
            // Upstream's message ends in a space: its suffix is empty.
            let message = format!("AttachVolume.Attach succeeded for volume {:?} ", a.volume);
            for pod in self.pods_of(a) {
                self.recorder.record(&*pod, NORMAL, "SuccessfulAttachVolume", message.clone());
            }
        }
        if let Some(node) = &node {
            let current = node.status.as_ref().and_then(|s| s.volumes_attached.clone()).unwrap_or_default();
            if current != plan.attached {
                let list = if plan.attached.is_empty() { json!(null) } else { json!(plan.attached) };
                let patch = Patch::Merge(json!({"status": {"volumesAttached": list}}));
                let nodes: Api<Node> = Api::all(self.client.clone());
                match nodes.patch_status(node_name, &PatchParams::default(), &patch).await {
                    Ok(_) => debug!(attached = plan.attached.len(), "updated the node's attached volumes"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => return Err(Error::NodeStatus { node: node_name.to_string(), source }),
                }
            }
        }
        for name in &plan.detach {
            lock(&self.reported).remove(&format!("attached/{name}"));
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => info!(attachment = %name, "detaching"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    first_error.get_or_insert(Error::Delete { name: name.clone(), source });
                }
            }
        }
        self.track_waiting(node.as_deref(), node_name, &plan.waiting, now);
        first_error.map_or(Ok(()), Err)
    }

    /// Whether `a` may not be attached to `node_name` because its volume, which only one node
    /// may use, is attached elsewhere (upstream's multi-attach check); if so, says so on the
    /// pods wanting it, once per message.
    fn report_multi_attach(&self, node_name: &str, a: &Attachment) -> bool {
        let Some(pv) = self.volume(&a.volume) else { return false };
        let modes = pv.spec.as_ref().and_then(|s| s.access_modes.clone()).unwrap_or_default();
        if modes.iter().any(|m| m == "ReadOnlyMany" || m == "ReadWriteMany") {
            return false;
        }
        let others: Vec<String> = self
            .attachments
            .state()
            .into_iter()
            .filter(|va| va.spec.source.persistent_volume_name.as_ref() == Some(&a.volume))
            .map(|va| va.spec.node_name.clone())
            .filter(|n| n != node_name)
            .collect();
        if others.is_empty() {
            return false;
        }
        // The pods using the volume on those nodes.
        let mut users: Vec<(String, String)> = Vec::new();
        for other in &others {
            let node = self.nodes.get(&ObjectRef::new(other));
            let pods: Vec<Arc<Pod>> = self.pods.state().into_iter().filter(|p| node_of(p) == Some(other)).collect();
            let wanted = desired_state::desired_for_node(node.as_deref(), pods.iter().map(|p| &**p), self);
            users.extend(wanted.into_values().filter(|w| w.volume == a.volume).flat_map(|w| w.pods));
        }
        let mut reported = lock(&self.reported);
        for pod in self.pods_of(a) {
            let message = reconciler::multi_attach_message(&a.volume, &pod.namespace().unwrap_or_default(), &users);
            let key = format!("multi-attach/{}", pod.uid().unwrap_or_default());
            if reported.insert(key, message.clone()).as_ref() != Some(&message) {
                self.recorder.record(&*pod, WARNING, "FailedAttachVolume", message);
            }
        }
        true
    }

    /// Records `FailedAttachVolume` on the pods of a wanted attachment whose attacher failed,
    /// once per error message.
    fn report_attach_errors(
        &self,
        desired: &std::collections::BTreeMap<String, Attachment>,
        vas: &[Arc<VolumeAttachment>],
    ) {
        for va in vas {
            let name = va.name_any();
            let Some(a) = desired.get(&name) else { continue };
            let error = va.status.as_ref().and_then(|s| s.attach_error.as_ref()).and_then(|e| e.message.clone());
            let Some(error) = error else {
                lock(&self.reported).remove(&name);
                continue;
            };
            if lock(&self.reported).insert(name, error.clone()).as_ref() == Some(&error) {
                continue;
            }
            let message = format!("AttachVolume.Attach failed for volume {:?} : {error}", a.volume);
            for pod in self.pods_of(a) {
                self.recorder.record(&*pod, WARNING, "FailedAttachVolume", message.clone());
            }
        }
    }

    /// Forgets the wait of attachments no longer waiting, and looks at a node that is not ready
    /// again when its longest wait runs out.
    fn track_waiting(&self, node: Option<&Node>, node_name: &str, waiting: &[String], now: Instant) {
        let mut since = lock(&self.unwanted_since);
        since.retain(|name, _| {
            waiting.contains(name)
                || self.attachments.get(&ObjectRef::new(name)).is_some_and(|va| va.spec.node_name != node_name)
        });
        if node.is_some_and(|n| !is_ready(n))
            && let Some(first) = waiting.iter().filter_map(|n| since.get(n)).min()
        {
            let left = MAX_WAIT_FOR_UNMOUNT.saturating_sub(now.duration_since(*first));
            self.queue.add_after(node_name.to_string(), left + Duration::from_secs(1));
        }
    }
}
