//! The binder's syncs (upstream's `pv_controller.go`): `sync_claim` binds, provisions or
//! reports a claim; `sync_volume` keeps a volume's phase and reclaims it once its claim is gone.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tracing::{debug, info};
use tug_api::pv_helpers::{
    self, ANN_BETA_STORAGE_PROVISIONER, ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER, ANN_DYNAMICALLY_PROVISIONED,
    ANN_SELECTED_NODE, ANN_STORAGE_PROVISIONER, WAIT_FOR_FIRST_CONSUMER, has_annotation,
};

use super::{Ctx, Error, SYNC_PERIOD, claim_key};
use crate::events::{NORMAL, WARNING};

fn claim_phase(c: &PersistentVolumeClaim) -> &str {
    c.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn volume_phase(v: &PersistentVolume) -> &str {
    v.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn volume_name(c: &PersistentVolumeClaim) -> Option<&str> {
    c.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|n| !n.is_empty())
}

fn claim_ref(v: &PersistentVolume) -> Option<&ObjectReference> {
    v.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
}

fn reclaim_policy(v: &PersistentVolume) -> &str {
    v.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()).unwrap_or("Retain")
}

/// Whether the claim waits for the scheduler: its class binds on first consumer and no node
/// has been chosen yet (upstream's `shouldDelayBinding`).
fn should_delay_binding(ctx: &Ctx, claim: &PersistentVolumeClaim) -> bool {
    if has_annotation(&claim.metadata, ANN_SELECTED_NODE) {
        return false;
    }
    let class = pv_helpers::claim_class(claim);
    !class.is_empty()
        && ctx.class(&class).is_some_and(|c| c.volume_binding_mode.as_deref() == Some(WAIT_FOR_FIRST_CONSUMER))
}

/// Why a volume cannot serve a claim that asked for it by name (upstream's
/// `checkVolumeSatisfyClaim`), or `None` if it can.
pub(crate) fn volume_unsatisfying(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> Option<&'static str> {
    if pv_helpers::capacity_bytes(volume) < pv_helpers::requested_bytes(claim) {
        return Some("requested PV is too small");
    }
    if pv_helpers::volume_class(volume) != pv_helpers::claim_class(claim) {
        return Some("storageClassName does not match");
    }
    if pv_helpers::volume_mode_mismatch(claim, volume) {
        return Some("incompatible volumeMode");
    }
    if !pv_helpers::access_modes_fit(claim, volume) {
        return Some("incompatible accessMode");
    }
    None
}

pub(crate) async fn sync_claim(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let action = if has_annotation(&claim.metadata, ANN_BIND_COMPLETED) {
        sync_bound_claim(&claim, &ctx).await?
    } else {
        sync_unbound_claim(&claim, &ctx).await?
    };
    ctx.forget_failures(&claim_key(&claim));
    Ok(action)
}

async fn sync_unbound_claim(claim: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action, Error> {
    let volumes = ctx.volumes.state();
    let Some(name) = volume_name(claim) else {
        let delay = should_delay_binding(ctx, claim);
        let found = pv_helpers::find_matching_volume(claim, volumes.iter().map(|v| &**v), None, &|_| false, delay);
        if let Some(volume) = found {
            bind(ctx, volume, claim).await?;
            return Ok(Action::await_change());
        }
        let class = pv_helpers::claim_class(claim);
        if delay {
            ctx.report(
                claim,
                NORMAL,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding".into(),
            );
        } else if !class.is_empty() {
            provision(ctx, claim, &class).await?;
        } else {
            ctx.report(
                claim,
                NORMAL,
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set".into(),
            );
        }
        set_claim_phase(ctx, claim, "Pending").await?;
        return Ok(Action::requeue(super::SYNC_PERIOD));
    };
    // The user asked for a volume by name.
    let Some(volume) = ctx.volumes.get(&ObjectRef::new(name)) else {
        debug!(claim = %claim_key(claim), volume = name, "requested volume not found; waiting");
        set_claim_phase(ctx, claim, "Pending").await?;
        return Ok(Action::requeue(SYNC_PERIOD));
    };
    if claim_ref(&volume).is_none() || pv_helpers::is_volume_bound_to_claim(&volume, claim) {
        if claim_ref(&volume).is_none()
            && let Some(why) = volume_unsatisfying(&volume, claim)
        {
            ctx.report(claim, WARNING, "VolumeMismatch", format!("Cannot bind to requested volume \"{name}\": {why}"));
            set_claim_phase(ctx, claim, "Pending").await?;
            return Ok(Action::requeue(SYNC_PERIOD));
        }
        bind(ctx, &volume, claim).await?;
        return Ok(Action::await_change());
    }
    ctx.report(claim, WARNING, "FailedBinding", format!("volume \"{name}\" already bound to a different claim."));
    set_claim_phase(ctx, claim, "Pending").await?;
    Ok(Action::requeue(SYNC_PERIOD))
}

async fn sync_bound_claim(claim: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action, Error> {
    let Some(name) = volume_name(claim) else {
        lose_claim(
            ctx,
            claim,
            "ClaimLost",
            "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
        )
        .await?;
        return Ok(Action::await_change());
    };
    let Some(volume) = ctx.volumes.get(&ObjectRef::new(name)) else {
        lose_claim(ctx, claim, "ClaimLost", "Bound claim has lost its PersistentVolume. Data on the volume is lost!")
            .await?;
        return Ok(Action::await_change());
    };
    if claim_ref(&volume).is_none() || pv_helpers::is_volume_bound_to_claim(&volume, claim) {
        // Re-establish or finish the binding; no-op writes are skipped.
        bind(ctx, &volume, claim).await?;
        return Ok(Action::await_change());
    }
    lose_claim(ctx, claim, "ClaimMisbound", "Two claims are bound to the same volume, this one is bound incorrectly")
        .await?;
    Ok(Action::await_change())
}

async fn lose_claim(ctx: &Ctx, claim: &PersistentVolumeClaim, reason: &str, message: &str) -> Result<(), Error> {
    if claim_phase(claim) != "Lost" {
        ctx.report(claim, WARNING, reason, message.into());
    }
    set_claim_phase(ctx, claim, "Lost").await
}

/// Asks the class's provisioner for a volume. Every provisioner is external to this
/// controller (it has no in-tree volume plugins): the claim is annotated with its name and
/// the provisioner, watching claims, creates a volume pre-bound to it.
async fn provision(ctx: &Ctx, claim: &PersistentVolumeClaim, class_name: &str) -> Result<(), Error> {
    let Some(class) = ctx.class(class_name) else {
        ctx.report(
            claim,
            WARNING,
            "ProvisioningFailed",
            format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
        );
        return Ok(());
    };
    let provisioner = class.provisioner.clone();
    let annotations = claim.metadata.annotations.clone().unwrap_or_default();
    if annotations.get(ANN_STORAGE_PROVISIONER) != Some(&provisioner)
        || annotations.get(ANN_BETA_STORAGE_PROVISIONER) != Some(&provisioner)
    {
        let key = claim_key(claim);
        let patch = json!({"metadata": {"annotations": {
            ANN_STORAGE_PROVISIONER: provisioner, ANN_BETA_STORAGE_PROVISIONER: provisioner,
        }}});
        let api = ctx.claim_api(&claim.namespace().unwrap_or_default());
        api.patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::WriteClaim { key, source })?;
    }
    ctx.report(
        claim,
        NORMAL,
        "ExternalProvisioning",
        format!(
            "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
        ),
    );
    Ok(())
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn set_claim_phase(ctx: &Ctx, claim: &PersistentVolumeClaim, phase: &str) -> Result<(), Error> {
    if claim_phase(claim) == phase {
        return Ok(());
    }
    let patch = json!({"status": {"phase": phase}});
    let api = ctx.claim_api(&claim.namespace().unwrap_or_default());
    match api.patch_status(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::WriteClaim { key: claim_key(claim), source }),
    }
}

async fn set_volume_phase(
    ctx: &Ctx,
    volume: &PersistentVolume,
    phase: &str,
    message: Option<&str>,
) -> Result<(), Error> {
    if volume_phase(volume) == phase {
        return Ok(());
    }
    let patch = json!({"status": {"phase": phase, "message": message, "lastPhaseTransitionTime": now()}});
    match ctx.volume_api().patch_status(&volume.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::WriteVolume { name: volume.name_any(), source }),
    }
}

fn with_annotation(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, key: &str) {
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), "yes".into());
}

/// Binds volume and claim (upstream's `bind`): the volume's claimRef first, then its phase,
/// then the claim's volumeName and annotations, then its status. Each step is skipped when
/// already done, so that a sync finding a half-done binding completes it.
async fn bind(ctx: &Ctx, volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> Result<(), Error> {
    let key = claim_key(claim);
    let name = volume.name_any();
    let mut volume = volume.clone();
    let needs_ref = claim_ref(&volume).is_none_or(|r| r.uid.as_deref().unwrap_or("").is_empty())
        || !pv_helpers::is_volume_bound_to_claim(&volume, claim);
    if needs_ref {
        if claim_ref(&volume).is_none() {
            with_annotation(&mut volume.metadata, ANN_BOUND_BY_CONTROLLER);
        }
        volume.spec.get_or_insert_default().claim_ref = Some(pv_helpers::claim_reference(claim));
        volume.status = None;
        volume = ctx
            .volume_api()
            .replace(&name, &PostParams::default(), &volume)
            .await
            .map_err(|source| Error::WriteVolume { name: name.clone(), source })?;
    }
    set_volume_phase(ctx, &volume, "Bound", None).await?;

    let mut claim = claim.clone();
    let api = ctx.claim_api(&claim.namespace().unwrap_or_default());
    if volume_name(&claim) != Some(name.as_str()) || !has_annotation(&claim.metadata, ANN_BIND_COMPLETED) {
        if volume_name(&claim) != Some(name.as_str()) {
            claim.spec.get_or_insert_default().volume_name = Some(name.clone());
            with_annotation(&mut claim.metadata, ANN_BOUND_BY_CONTROLLER);
        }
        with_annotation(&mut claim.metadata, ANN_BIND_COMPLETED);
        claim.status = None;
        claim = api
            .replace(&claim.name_any(), &PostParams::default(), &claim)
            .await
            .map_err(|source| Error::WriteClaim { key: key.clone(), source })?;
    }
    let spec = volume.spec.clone().unwrap_or_default();
    let status = claim.status.clone().unwrap_or_default();
    if status.phase.as_deref() != Some("Bound")
        || status.capacity != spec.capacity
        || status.access_modes != spec.access_modes
    {
        let patch = json!({"status": {"phase": "Bound", "capacity": spec.capacity, "accessModes": spec.access_modes}});
        api.patch_status(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::WriteClaim { key: key.clone(), source })?;
        info!(claim = %key, volume = %name, "bound claim to volume");
    }
    ctx.forget_reports(&claim);
    Ok(())
}

/// The claim a volume's claimRef names, if it still exists as that very claim. A miss in the
/// cache is checked against the API, as upstream does, so that a claim created a moment ago
/// does not get its volume released.
async fn referenced_claim(ctx: &Ctx, r: &ObjectReference) -> Result<Option<Arc<PersistentVolumeClaim>>, Error> {
    let (ns, name) = (r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default());
    let claim = match ctx.claims.get(&ObjectRef::new(&name).within(&ns)) {
        Some(c) => Some(c),
        None => ctx
            .claim_api(&ns)
            .get_opt(&name)
            .await
            .map_err(|source| Error::ReadClaim { key: format!("{ns}/{name}"), source })?
            .map(Arc::new),
    };
    Ok(claim.filter(|c| c.metadata.uid == r.uid))
}

/// Volumes being deleted are synced too, as upstream does: one held by its protection
/// finalizer must still turn Released once its claim is gone, which frees it to go.
pub(crate) async fn sync_volume(volume: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let Some(r) = claim_ref(&volume) else {
        set_volume_phase(&ctx, &volume, "Available", None).await?;
        return Ok(Action::await_change());
    };
    if r.uid.as_deref().unwrap_or("").is_empty() {
        // Pre-bound by the user to a claim that does not exist yet or is not bound yet.
        set_volume_phase(&ctx, &volume, "Available", None).await?;
        return Ok(Action::await_change());
    }
    let claim = referenced_claim(&ctx, r).await?;
    let Some(claim) = claim else {
        if !matches!(volume_phase(&volume), "Released" | "Failed") {
            set_volume_phase(&ctx, &volume, "Released", None).await?;
        }
        reclaim(&ctx, &volume).await?;
        ctx.forget_failures(&volume.name_any());
        return Ok(Action::await_change());
    };
    match volume_name(&claim) {
        // The claim's side of the binding is not written yet: its sync finishes it.
        None => {
            let _ = ctx.claim_queue.send(ObjectRef::from_obj(&*claim));
        }
        Some(n) if n == volume.name_any() => set_volume_phase(&ctx, &volume, "Bound", None).await?,
        Some(_) => {
            // The claim is bound to another volume.
            if has_annotation(&volume.metadata, ANN_DYNAMICALLY_PROVISIONED) && reclaim_policy(&volume) == "Delete" {
                set_volume_phase(&ctx, &volume, "Released", None).await?;
                reclaim(&ctx, &volume).await?;
            } else {
                unbind_volume(&ctx, &volume).await?;
            }
        }
    }
    ctx.forget_failures(&volume.name_any());
    Ok(Action::await_change())
}

/// Frees a volume whose claim went elsewhere: a binding the controller made is undone
/// entirely; a user's pre-binding keeps its claim name but loses the uid.
async fn unbind_volume(ctx: &Ctx, volume: &PersistentVolume) -> Result<(), Error> {
    let mut v = volume.clone();
    if has_annotation(&v.metadata, ANN_BOUND_BY_CONTROLLER) {
        v.spec.get_or_insert_default().claim_ref = None;
        if let Some(a) = v.metadata.annotations.as_mut() {
            a.remove(ANN_BOUND_BY_CONTROLLER);
        }
    } else if let Some(r) = v.spec.as_mut().and_then(|s| s.claim_ref.as_mut()) {
        r.uid = None;
    }
    v.status = None;
    let name = v.name_any();
    let v = ctx
        .volume_api()
        .replace(&name, &PostParams::default(), &v)
        .await
        .map_err(|source| Error::WriteVolume { name: name.clone(), source })?;
    set_volume_phase(ctx, &v, "Available", None).await
}

/// What happens to a Released volume (upstream's `reclaimVolume`).
async fn reclaim(ctx: &Ctx, volume: &PersistentVolume) -> Result<(), Error> {
    let name = volume.name_any();
    match reclaim_policy(volume) {
        "Retain" => debug!(volume = %name, "reclaim policy is Retain; nothing to do"),
        "Delete" => {
            // A provisioned volume's storage belongs to its provisioner: it deletes the data
            // and then the object. This controller has no volume plugins of its own, so for
            // a volume made by hand only the object is deleted, its data left in place.
            if has_annotation(&volume.metadata, ANN_DYNAMICALLY_PROVISIONED) {
                debug!(volume = %name, "waiting for the external provisioner to delete the volume");
                return Ok(());
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions { uid: volume.uid(), resource_version: None }),
                ..Default::default()
            };
            match ctx.volume_api().delete(&name, &params).await {
                Ok(_) => info!(volume = %name, "deleted released volume"),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(source) => return Err(Error::WriteVolume { name, source }),
            }
        }
        // Upstream's recyclers (a scrubber pod) are deprecated and none is built in here.
        "Recycle" => {
            if volume_phase(volume) != "Failed" {
                let message = "No recycler plugin found for the volume!";
                ctx.recorder.record(volume, WARNING, "VolumeFailedRecycle", message.into());
                set_volume_phase(ctx, volume, "Failed", Some(message)).await?;
            }
        }
        policy => {
            if volume_phase(volume) != "Failed" {
                ctx.recorder.record(
                    volume,
                    WARNING,
                    "VolumeUnknownReclaimPolicy",
                    format!("Volume has unrecognized PersistentVolumeReclaimPolicy {policy:?}"),
                );
                set_volume_phase(ctx, volume, "Failed", Some("Volume has unrecognized PersistentVolumeReclaimPolicy"))
                    .await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_requested_volume_must_satisfy_the_claim() {
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "c"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}
        }))
        .unwrap();
        let volume = |size: &str, class: &str| -> PersistentVolume {
            serde_json::from_value(json!({
                "metadata": {"name": "v"},
                "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": class}
            }))
            .unwrap()
        };
        assert_eq!(volume_unsatisfying(&volume("1Gi", ""), &claim), Some("requested PV is too small"));
        assert_eq!(volume_unsatisfying(&volume("2Gi", "x"), &claim), Some("storageClassName does not match"));
        assert_eq!(volume_unsatisfying(&volume("2Gi", ""), &claim), None);
    }
}
