//! The built-in local-path provisioner: what rancher's local-path-provisioner does in k3s,
//! as an external provisioner of the PersistentVolume controller.
//!
//! - On start it makes sure the `local-path` StorageClass exists (provisioner
//!   `rancher.io/local-path`, WaitForFirstConsumer, reclaim Delete, the default class), as
//!   k3s deploys its manifest.
//! - A claim that the binder handed to this provisioner (annotation
//!   `volume.kubernetes.io/storage-provisioner`) and that the scheduler gave a node
//!   (`volume.kubernetes.io/selected-node`) gets a hostPath volume
//!   `<storage path>/pvc-<uid>_<namespace>_<name>` on that node, pinned there by node affinity
//!   and pre-bound to the claim; the binder then completes the binding.
//! - A Released volume of ours with reclaim policy Delete is deleted. The directory lives on
//!   the node, and this controller may run elsewhere, so the data is not removed here: every
//!   volume is created with the finalizer [`CLEANUP_FINALIZER`], which the node agent of the
//!   volume's node removes after deleting the directory (upstream's external-provisioner keeps
//!   its volumes with a finalizer in the same way until their storage is gone; the
//!   rancher provisioner runs a helper pod on the node for the deletion instead).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tug_api::pv_helpers::{
    self, ANN_BETA_STORAGE_PROVISIONER, ANN_DYNAMICALLY_PROVISIONED, ANN_IS_DEFAULT_CLASS, ANN_SELECTED_NODE,
    ANN_STORAGE_PROVISIONER,
};

use crate::events::{NORMAL, Recorder, WARNING};
use crate::informer::{Change, Informers};

/// The provisioner's name, as k3s'.
pub const PROVISIONER: &str = "rancher.io/local-path";
/// The StorageClass created at start.
pub const CLASS_NAME: &str = "local-path";
/// Holds a volume of ours until the node agent of its node has deleted its directory.
pub const CLEANUP_FINALIZER: &str = "local-path.tugboat.dev/cleanup";
/// The node label the volumes' node affinity selects.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Why a sync failed; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating persistentvolume {name}")]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting persistentvolume {name}")]
    Delete {
        name: String,
        #[source]
        source: kube::Error,
    },
}

struct Ctx {
    client: Client,
    storage_path: PathBuf,
    classes: Store<StorageClass>,
    recorder: Recorder,
}

/// The StorageClass k3s installs.
pub fn storage_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(CLASS_NAME.into()),
            annotations: Some(BTreeMap::from([(ANN_IS_DEFAULT_CLASS.to_string(), "true".to_string())])),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some(pv_helpers::WAIT_FOR_FIRST_CONSUMER.into()),
        ..Default::default()
    }
}

/// The directory of a claim's volume, named as rancher's provisioner names it.
pub fn volume_dir(storage_path: &std::path::Path, claim: &PersistentVolumeClaim) -> PathBuf {
    storage_path.join(format!(
        "pvc-{}_{}_{}",
        claim.uid().unwrap_or_default(),
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    ))
}

/// The volume provisioned for `claim` on `node` with the class's reclaim policy.
pub fn volume_for(
    storage_path: &std::path::Path,
    claim: &PersistentVolumeClaim,
    node: &str,
    reclaim: &str,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let capacity = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).cloned();
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(format!("pvc-{}", claim.uid().unwrap_or_default())),
            annotations: Some(BTreeMap::from([(ANN_DYNAMICALLY_PROVISIONED.to_string(), PROVISIONER.to_string())])),
            finalizers: Some(vec![CLEANUP_FINALIZER.into()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: capacity.map(|q| BTreeMap::from([("storage".to_string(), q)])),
            access_modes: spec.access_modes.clone(),
            persistent_volume_reclaim_policy: Some(reclaim.into()),
            storage_class_name: Some(pv_helpers::claim_class(claim)),
            volume_mode: spec.volume_mode.clone(),
            host_path: Some(HostPathVolumeSource {
                path: volume_dir(storage_path, claim).to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.into(),
                            operator: "In".into(),
                            values: Some(vec![node.into()]),
                        }]),
                        ..Default::default()
                    }],
                }),
            }),
            claim_ref: Some(pv_helpers::claim_reference(claim)),
            ..Default::default()
        }),
        status: None,
    }
}

fn is_ours(claim: &PersistentVolumeClaim) -> bool {
    let a = claim.metadata.annotations.as_ref();
    let provisioner = a.and_then(|a| a.get(ANN_STORAGE_PROVISIONER).or_else(|| a.get(ANN_BETA_STORAGE_PROVISIONER)));
    provisioner.map(String::as_str) == Some(PROVISIONER)
}

/// The node a claim waits for a volume on, if it is ours to provision now.
fn wanted_on(claim: &PersistentVolumeClaim) -> Option<&str> {
    if claim.metadata.deletion_timestamp.is_some()
        || !is_ours(claim)
        || claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()).is_some_and(|n| !n.is_empty())
    {
        return None;
    }
    claim.metadata.annotations.as_ref()?.get(ANN_SELECTED_NODE).map(String::as_str)
}

/// Whether a volume of ours is released and to be deleted.
fn to_delete(volume: &PersistentVolume) -> bool {
    let ann = volume.metadata.annotations.as_ref().and_then(|a| a.get(ANN_DYNAMICALLY_PROVISIONED));
    let spec = volume.spec.as_ref();
    ann.map(String::as_str) == Some(PROVISIONER)
        && volume.metadata.deletion_timestamp.is_none()
        && volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")
        && spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete")
}

/// Runs the provisioner until `shutdown`, with volumes under `storage_path` on the nodes.
pub async fn run(informers: Informers, storage_path: PathBuf, shutdown: CancellationToken) {
    let client = informers.client();
    ensure_class(&client).await;
    let (claims, claim_writer) = informers.store::<PersistentVolumeClaim>().await;
    let (volumes, volume_writer) = informers.store::<PersistentVolume>().await;
    let (classes, class_writer) = informers.store::<StorageClass>().await;
    let (claim_tx, mut claim_rx) = mpsc::unbounded_channel::<ObjectRef<PersistentVolumeClaim>>();
    let (volume_tx, mut volume_rx) = mpsc::unbounded_channel::<ObjectRef<PersistentVolume>>();
    let claim_informer = claim_writer.run(shutdown.clone(), move |c| {
        if let Change::Add(claim) | Change::Update(_, claim) = c
            && wanted_on(&claim).is_some()
        {
            let _ = claim_tx.send(ObjectRef::from_obj(&*claim));
        }
    });
    let volume_informer = volume_writer.run(shutdown.clone(), move |c| {
        if let Change::Add(v) | Change::Update(_, v) = c
            && to_delete(&v)
        {
            let _ = volume_tx.send(ObjectRef::from_obj(&*v));
        }
    });
    let class_informer = class_writer.run(shutdown.clone(), |_: Change<_>| {});
    let ctx =
        Arc::new(Ctx { client: client.clone(), storage_path, classes, recorder: Recorder::new(client, PROVISIONER) });
    let claim_queue = futures::stream::poll_fn(move |cx| claim_rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.clone().cancelled_owned());
    let volume_queue = futures::stream::poll_fn(move |cx| volume_rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.clone().cancelled_owned());
    let provisioning = applier(
        |c, ctx| Box::pin(provision(c, ctx)),
        |_, e: &Error, _| {
            warn!(error = %e, "local-path provisioning failed; retrying");
            Action::requeue(std::time::Duration::from_secs(5))
        },
        ctx.clone(),
        claims,
        claim_queue,
        Config::default(),
    )
    .for_each(|_| async {});
    let deleting = applier(
        |v, ctx| Box::pin(delete(v, ctx)),
        |_, e: &Error, _| {
            warn!(error = %e, "local-path volume deletion failed; retrying");
            Action::requeue(std::time::Duration::from_secs(5))
        },
        ctx,
        volumes,
        volume_queue,
        Config::default(),
    )
    .for_each(|_| async {});
    info!("starting local-path provisioner");
    tokio::join!(claim_informer, volume_informer, class_informer, provisioning, deleting);
}

/// Creates the `local-path` class unless it exists (an admin's edits are kept).
async fn ensure_class(client: &Client) {
    let api: Api<StorageClass> = Api::all(client.clone());
    for attempt in 0..30 {
        match api.create(&PostParams::default(), &storage_class()).await {
            Ok(_) => return info!(class = CLASS_NAME, "created the local-path storage class"),
            Err(kube::Error::Api(s)) if s.code == 409 => return,
            Err(e) => debug!(error = %e, attempt, "creating the local-path storage class; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    warn!("could not create the local-path storage class");
}

async fn provision(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some(node) = wanted_on(&claim) else { return Ok(Action::await_change()) };
    let class = ctx.classes.get(&ObjectRef::new(&pv_helpers::claim_class(&claim)));
    let Some(class) = class.filter(|c| c.provisioner == PROVISIONER) else {
        return Ok(Action::await_change());
    };
    let key = format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any());
    ctx.recorder.record(
        &*claim,
        NORMAL,
        "Provisioning",
        format!("External provisioner is provisioning volume for claim \"{key}\""),
    );
    // A directory on one node serves one node's pods only.
    let modes = claim.spec.as_ref().and_then(|s| s.access_modes.clone()).unwrap_or_default();
    if modes.iter().any(|m| m != "ReadWriteOnce" && m != "ReadWriteOncePod") {
        ctx.recorder.record(
            &*claim,
            WARNING,
            "ProvisioningFailed",
            format!(
                "failed to provision volume with StorageClass \"{}\": NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes",
                class.name_any()
            ),
        );
        return Ok(Action::await_change());
    }
    let reclaim = class.reclaim_policy.as_deref().unwrap_or("Delete");
    let volume = volume_for(&ctx.storage_path, &claim, node, reclaim);
    let name = volume.name_any();
    match Api::<PersistentVolume>::all(ctx.client.clone()).create(&PostParams::default(), &volume).await {
        Ok(_) => {
            info!(claim = %key, volume = %name, node, "provisioned local-path volume");
            ctx.recorder.record(
                &*claim,
                NORMAL,
                "ProvisioningSucceeded",
                format!("Successfully provisioned volume {name}"),
            );
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(source) => {
            ctx.recorder.record(
                &*claim,
                WARNING,
                "ProvisioningFailed",
                format!("failed to provision volume: {source}"),
            );
            return Err(Error::Create { name, source });
        }
    }
    Ok(Action::await_change())
}

async fn delete(volume: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !to_delete(&volume) {
        return Ok(Action::await_change());
    }
    let name = volume.name_any();
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: volume.uid(), resource_version: None }),
        ..Default::default()
    };
    // The finalizer keeps the object until its node has removed the directory.
    match Api::<PersistentVolume>::all(ctx.client.clone()).delete(&name, &params).await {
        Ok(_) => info!(volume = %name, "deleting released local-path volume"),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(source) => return Err(Error::Delete { name, source }),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claim(annotations: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data-web-0", "namespace": "apps", "uid": "1234", "annotations": annotations},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                     "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .unwrap()
    }

    #[test]
    fn a_volume_is_a_host_directory_pinned_to_the_selected_node() {
        let v = volume_for(std::path::Path::new("/data/storage"), &claim(json!({})), "node-a", "Delete");
        assert_eq!(v.metadata.name.as_deref(), Some("pvc-1234"));
        let spec = v.spec.unwrap();
        let hp = spec.host_path.unwrap();
        assert_eq!(hp.path, "/data/storage/pvc-1234_apps_data-web-0");
        assert_eq!(hp.type_.as_deref(), Some("DirectoryOrCreate"));
        let term = &spec.node_affinity.unwrap().required.unwrap().node_selector_terms[0];
        let req = &term.match_expressions.as_ref().unwrap()[0];
        assert_eq!((req.key.as_str(), req.values.as_ref().unwrap()[0].as_str()), ("kubernetes.io/hostname", "node-a"));
        assert_eq!(spec.claim_ref.unwrap().uid.as_deref(), Some("1234"));
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
        assert_eq!(v.metadata.finalizers.unwrap(), vec![CLEANUP_FINALIZER.to_string()]);
    }

    #[test]
    fn only_claims_handed_to_us_with_a_node_are_provisioned() {
        assert_eq!(wanted_on(&claim(json!({}))), None);
        assert_eq!(wanted_on(&claim(json!({ANN_STORAGE_PROVISIONER: PROVISIONER}))), None);
        let ready = claim(json!({ANN_STORAGE_PROVISIONER: PROVISIONER, ANN_SELECTED_NODE: "n1"}));
        assert_eq!(wanted_on(&ready), Some("n1"));
        let other = claim(json!({ANN_STORAGE_PROVISIONER: "ebs.csi.aws.com", ANN_SELECTED_NODE: "n1"}));
        assert_eq!(wanted_on(&other), None);
    }
}
