//! Claiming pods (upstream's `getPodsForJob` with `ClaimPods` of
//! `pkg/controller/controller_ref_manager.go`): a Job owns the pods that carry its controller
//! reference and match its selector. It adopts matching orphans, adding its reference and the
//! tracking finalizer, once an uncached read shows the Job is still there and not being
//! deleted; it releases owned pods whose labels stopped matching, deleting its reference and
//! the finalizer in one patch.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use serde_json::{Value, json};
use tracing::debug;

use super::pod_control::{TRACKING_FINALIZER, controller_ref};
use super::{Error, Manager, key_of};
use crate::controller_ref::{Claim, can_adopt, classify};

/// The strategic merge patch adopting `pod` (upstream's `ownerRefControllerPatch` with the
/// Job's finalizer); the uid makes it apply only to the pod that was looked at.
fn adopt_patch(job: &Job, pod: &Pod) -> Value {
    json!({"metadata": {
        "ownerReferences": [controller_ref(job)],
        "uid": pod.metadata.uid,
        "finalizers": [TRACKING_FINALIZER],
    }})
}

/// The strategic merge patch releasing `pod` (upstream's
/// `GenerateDeleteOwnerRefStrategicMergeBytes` with the Job's finalizer).
fn release_patch(owner_uid: &str, pod: &Pod) -> Value {
    json!({"metadata": {
        "ownerReferences": [{"$patch": "delete", "uid": owner_uid}],
        "uid": pod.metadata.uid,
        "$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER],
    }})
}

/// Adoption goes ahead only after a live read allows it ([`can_adopt`]).
async fn may_adopt(m: &Manager, job: &Job) -> Result<(), Error> {
    let key = key_of(job);
    match can_adopt(&m.client, job).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::CannotAdopt { key }),
        Err(source) => Err(Error::Recheck { key, source }),
    }
}

/// The pods of the Job's namespace it owns after adopting matching orphans (returned as the
/// API server stored them, so with the tracking finalizer) and releasing owned pods that
/// stopped matching.
pub(super) async fn claim_pods(m: &Manager, job: &Job, selector: &Selector) -> Result<Vec<Arc<Pod>>, Error> {
    let key = key_of(job);
    let ns = job.namespace();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let deleting = job.metadata.deletion_timestamp.is_some();
    let api: Api<Pod> = Api::namespaced(m.client.clone(), ns.as_deref().unwrap_or_default());
    let mut owned = Vec::new();
    let mut rechecked = false;
    for pod in m.pods.state_filter(|p| p.namespace() == ns) {
        let adopting = match classify(&pod.metadata, &uid, deleting, selector.matches(pod.labels())) {
            Claim::Own => {
                owned.push(pod);
                continue;
            }
            Claim::Ignore => continue,
            Claim::Adopt => true,
            Claim::Release => false,
        };
        if adopting && !rechecked {
            may_adopt(m, job).await?;
            rechecked = true;
        }
        let patch = if adopting { adopt_patch(job, &pod) } else { release_patch(&uid, &pod) };
        let action = if adopting { "adopting" } else { "releasing" };
        debug!(%key, pod = %pod.name_any(), action, "claiming pod");
        match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
            Ok(adopted) if adopting => owned.push(Arc::new(adopted)),
            Ok(_) => {}
            // Gone, or (releasing) the reference is already gone or the pod is being deleted.
            Err(kube::Error::Api(s)) if s.code == 404 || (!adopting && s.code == 422) => {}
            Err(source) => return Err(Error::Claim { key, pod: pod.name_any(), action, source }),
        }
    }
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    #[test]
    fn adoption_adds_the_tracking_finalizer_and_release_removes_it() {
        let job = Job {
            metadata: ObjectMeta { name: Some("pi".into()), uid: Some("j1".into()), ..Default::default() },
            ..Default::default()
        };
        let pod = Pod { metadata: ObjectMeta { uid: Some("p1".into()), ..Default::default() }, ..Default::default() };
        let adopt = adopt_patch(&job, &pod);
        assert_eq!(adopt["metadata"]["finalizers"], json!([TRACKING_FINALIZER]));
        assert_eq!(adopt["metadata"]["ownerReferences"][0]["uid"], "j1");
        assert_eq!(adopt["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(
            release_patch("j1", &pod),
            json!({"metadata": {
                "ownerReferences": [{"$patch": "delete", "uid": "j1"}],
                "uid": "p1",
                "$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER],
            }})
        );
    }
}
