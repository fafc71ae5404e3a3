//! The attacher (kubernetes-csi external-attacher): a VolumeAttachment for this driver that is
//! not attached yet gets the attacher's finalizer and the node's CSI id (annotation
//! `csi.alpha.kubernetes.io/node-id`), then `ControllerPublishVolume`; its status says
//! `attached` with the publish context as `attachmentMetadata`, or the `attachError`. One being
//! deleted is `ControllerUnpublishVolume`d and loses the finalizer. The PersistentVolume gets
//! the same finalizer when first attached, which it loses once it is being deleted and no
//! attachment names it. A driver without
//! `PUBLISH_UNPUBLISH_VOLUME` has nothing to publish: its attachments are only marked attached.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{CSIPersistentVolumeSource, PersistentVolume};
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{
    Driver, cache, read_secret, request, run_controller, sanitize_driver_name, status_message, volume_capability,
};
use crate::v1::{ControllerPublishVolumeRequest, ControllerUnpublishVolumeRequest};

/// The annotation keeping the node's CSI id on an attachment, for the detach.
pub const NODE_ID_ANNOTATION: &str = "csi.alpha.kubernetes.io/node-id";

/// The attacher's finalizer for `driver` (upstream's `GetFinalizerName`).
pub fn finalizer(driver: &str) -> String {
    format!("external-attacher/{}", sanitize_driver_name(driver))
}

/// Why an attach or detach failed; the attachment is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", status_message(.0))]
    Driver(tonic::Status),
    #[error("persistentvolume {0:?} not found")]
    VolumeNotFound(String),
    #[error("persistentvolume {0:?} is not a CSI volume")]
    NotCsi(String),
    #[error("volumeattachment {0:?} names no persistentvolume")]
    NoSource(String),
    #[error("CSINode {node} does not contain driver {driver}")]
    NoNodeId { node: String, driver: String },
    #[error("{action} {kind} {name}")]
    Api {
        action: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

struct Ctx {
    client: Client,
    driver: Driver,
    timeout: Duration,
    finalizer: String,
    attachments: Store<VolumeAttachment>,
}

impl Ctx {
    fn attachments(&self) -> Api<VolumeAttachment> {
        Api::all(self.client.clone())
    }
}

/// Runs the attacher until `shutdown`.
pub async fn run(client: Client, driver: Driver, timeout: Duration, shutdown: CancellationToken) {
    let (attachments, attachments_cache) = cache(Api::<VolumeAttachment>::all(client.clone()), shutdown.clone());
    let ctx =
        Arc::new(Ctx { client: client.clone(), finalizer: finalizer(&driver.name), driver, timeout, attachments });
    info!("starting csi attacher");
    let attach = run_controller(
        Api::<VolumeAttachment>::all(client.clone()),
        ctx.clone(),
        "attaching or detaching",
        shutdown.clone(),
        |va, ctx| async move { sync(&va, &ctx).await },
    );
    let volumes = run_controller(
        Api::<PersistentVolume>::all(client),
        ctx,
        "releasing a volume",
        shutdown,
        |pv, ctx| async move { sync_volume(&pv, &ctx).await },
    );
    tokio::join!(attachments_cache, attach, volumes);
}

async fn sync(va: &VolumeAttachment, ctx: &Ctx) -> Result<Action, Error> {
    if va.spec.attacher != ctx.driver.name {
        return Ok(Action::await_change());
    }
    let has_finalizer = va.finalizers().contains(&ctx.finalizer);
    if va.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            detach(va, ctx).await?;
        }
        return Ok(Action::await_change());
    }
    if va.status.as_ref().is_some_and(|s| s.attached) {
        return Ok(Action::await_change());
    }
    if !ctx.driver.publish_unpublish {
        set_status(ctx, va, json!({"attached": true})).await?;
        return Ok(Action::await_change());
    }
    match attach(va, has_finalizer, ctx).await {
        Ok(metadata) => {
            let metadata = if metadata.is_empty() { Value::Null } else { json!(metadata) };
            set_status(ctx, va, json!({"attached": true, "attachmentMetadata": metadata, "attachError": null})).await?;
            info!(attachment = %va.name_any(), node = %va.spec.node_name, "attached");
            Ok(Action::await_change())
        }
        Err(e) => {
            // The same error again is not written again: the write would bring the attachment
            // straight back, past the backoff (upstream's attacher ignores such changes).
            let message = e.to_string();
            let current = va.status.as_ref().and_then(|s| s.attach_error.as_ref()).and_then(|e| e.message.as_ref());
            if current != Some(&message) {
                let error = json!({"time": Time(k8s_openapi::jiff::Timestamp::now()), "message": message});
                set_status(ctx, va, json!({"attached": false, "attachError": error})).await?;
            }
            Err(e)
        }
    }
}

/// The attachment's PersistentVolume.
async fn volume(va: &VolumeAttachment, ctx: &Ctx) -> Result<Option<PersistentVolume>, Error> {
    let name = va.spec.source.persistent_volume_name.clone().ok_or_else(|| Error::NoSource(va.name_any()))?;
    Api::<PersistentVolume>::all(ctx.client.clone()).get_opt(&name).await.map_err(|source| Error::Api {
        action: "reading",
        kind: "persistentvolume",
        name,
        source,
    })
}

/// The driver's id for `node` from its CSINode.
async fn node_id(node: &str, ctx: &Ctx) -> Result<String, Error> {
    let no_id = || Error::NoNodeId { node: node.to_string(), driver: ctx.driver.name.clone() };
    let csi_node = Api::<CSINode>::all(ctx.client.clone())
        .get_opt(node)
        .await
        .map_err(|source| Error::Api { action: "reading", kind: "csinode", name: node.to_string(), source })?
        .ok_or_else(no_id)?;
    csi_node.spec.drivers.iter().find(|d| d.name == ctx.driver.name).map(|d| d.node_id.clone()).ok_or_else(no_id)
}

/// Publishes the volume to the node and returns the publish context.
async fn attach(va: &VolumeAttachment, has_finalizer: bool, ctx: &Ctx) -> Result<HashMap<String, String>, Error> {
    let pv_name = va.spec.source.persistent_volume_name.clone().unwrap_or_default();
    let pv = volume(va, ctx).await?.ok_or_else(|| Error::VolumeNotFound(pv_name.clone()))?;
    let spec = pv.spec.clone().unwrap_or_default();
    let csi = spec.csi.clone().ok_or(Error::NotCsi(pv_name))?;
    let node_id = node_id(&va.spec.node_name, ctx).await?;
    // The volume is kept while attached anywhere, as upstream's attacher keeps it.
    if !pv.finalizers().contains(&ctx.finalizer) {
        let mut finalizers = pv.finalizers().to_vec();
        finalizers.push(ctx.finalizer.clone());
        set_volume_finalizers(&pv, finalizers, ctx).await?;
    }
    if !has_finalizer || va.annotations().get(NODE_ID_ANNOTATION) != Some(&node_id) {
        let mut finalizers = va.finalizers().to_vec();
        if !has_finalizer {
            finalizers.push(ctx.finalizer.clone());
        }
        // Pinned to the version read, so that a finalizer added meanwhile is not lost.
        let patch = json!({"metadata": {"finalizers": finalizers, "annotations": {NODE_ID_ANNOTATION: node_id},
            "resourceVersion": va.resource_version()}});
        ctx.attachments().patch(&va.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(
            |source| Error::Api {
                action: "adding the finalizer to",
                kind: "volumeattachment",
                name: va.name_any(),
                source,
            },
        )?;
    }
    let secrets = publish_secrets(&csi, ctx).await?;
    let req = ControllerPublishVolumeRequest {
        volume_id: csi.volume_handle.clone(),
        node_id,
        volume_capability: Some(volume_capability(&spec)),
        readonly: csi.read_only.unwrap_or(false),
        secrets,
        volume_context: csi.volume_attributes.clone().unwrap_or_default().into_iter().collect(),
    };
    let response =
        ctx.driver.controller().controller_publish_volume(request(req, ctx.timeout)).await.map_err(Error::Driver)?;
    Ok(response.into_inner().publish_context)
}

/// The secret of the volume's `controllerPublishSecretRef`, for publishing and unpublishing.
async fn publish_secrets(csi: &CSIPersistentVolumeSource, ctx: &Ctx) -> Result<HashMap<String, String>, Error> {
    let Some(r) = csi.controller_publish_secret_ref.as_ref() else { return Ok(HashMap::new()) };
    let (ns, name) = (r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default());
    read_secret(&ctx.client, &ns, &name).await.map_err(|source| Error::Api {
        action: "reading",
        kind: "secret",
        name: format!("{ns}/{name}"),
        source,
    })
}

/// Unpublishes the volume from the node and lets the attachment go.
async fn detach(va: &VolumeAttachment, ctx: &Ctx) -> Result<(), Error> {
    if ctx.driver.publish_unpublish {
        match volume(va, ctx).await? {
            Some(pv) => {
                let csi =
                    pv.spec.and_then(|s| s.csi).ok_or_else(|| Error::NotCsi(pv.metadata.name.unwrap_or_default()))?;
                let node_id = match va.annotations().get(NODE_ID_ANNOTATION) {
                    Some(id) => id.clone(),
                    None => node_id(&va.spec.node_name, ctx).await?,
                };
                let secrets = publish_secrets(&csi, ctx).await?;
                let req = ControllerUnpublishVolumeRequest { volume_id: csi.volume_handle, node_id, secrets };
                if let Err(status) =
                    ctx.driver.controller().controller_unpublish_volume(request(req, ctx.timeout)).await
                {
                    let e = Error::Driver(status);
                    let message = e.to_string();
                    let current =
                        va.status.as_ref().and_then(|s| s.detach_error.as_ref()).and_then(|e| e.message.as_ref());
                    if current != Some(&message) {
                        let error = json!({"time": Time(k8s_openapi::jiff::Timestamp::now()), "message": message});
                        set_status(ctx, va, json!({"detachError": error})).await?;
                    }
                    return Err(e);
                }
            }
            // Its storage is gone with it: there is nothing left to unpublish.
            None => debug!(attachment = %va.name_any(), "volume gone; nothing to unpublish"),
        }
    }
    let rest: Vec<&String> = va.finalizers().iter().filter(|f| **f != ctx.finalizer).collect();
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": va.resource_version()}});
    match ctx.attachments().patch(&va.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            info!(attachment = %va.name_any(), node = %va.spec.node_name, "detached");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Api {
            action: "removing the finalizer of",
            kind: "volumeattachment",
            name: va.name_any(),
            source,
        }),
    }
}

/// Lets a volume being deleted go once no attachment names it.
async fn sync_volume(pv: &PersistentVolume, ctx: &Ctx) -> Result<Action, Error> {
    if pv.metadata.deletion_timestamp.is_none() || !pv.finalizers().contains(&ctx.finalizer) {
        return Ok(Action::await_change());
    }
    let _ = ctx.attachments.wait_until_ready().await;
    let name = pv.name_any();
    if ctx.attachments.state().iter().any(|va| va.spec.source.persistent_volume_name.as_ref() == Some(&name)) {
        // Retried: the detach does not change the volume.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let rest = pv.finalizers().iter().filter(|f| **f != ctx.finalizer).cloned().collect();
    match set_volume_finalizers(pv, rest, ctx).await {
        // Changed meanwhile (the provisioner lets it go too): the new version comes back.
        Err(Error::Api { source: kube::Error::Api(s), .. }) if s.code == 409 => Ok(Action::await_change()),
        result => result.map(|()| Action::await_change()),
    }
}

async fn set_volume_finalizers(pv: &PersistentVolume, finalizers: Vec<String>, ctx: &Ctx) -> Result<(), Error> {
    // Pinned to the version read, so that a finalizer changed meanwhile is not lost.
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": pv.resource_version()}});
    match Api::<PersistentVolume>::all(ctx.client.clone())
        .patch(&pv.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Api {
            action: "updating the finalizers of",
            kind: "persistentvolume",
            name: pv.name_any(),
            source,
        }),
    }
}

async fn set_status(ctx: &Ctx, va: &VolumeAttachment, status: Value) -> Result<(), Error> {
    let patch = json!({"status": status});
    match ctx.attachments().patch_status(&va.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => {
            Err(Error::Api { action: "updating the status of", kind: "volumeattachment", name: va.name_any(), source })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finalizer_names_the_sanitized_driver() {
        assert_eq!(finalizer("hostpath.csi.tugboat.dev"), "external-attacher/hostpath-csi-tugboat-dev");
    }
}
