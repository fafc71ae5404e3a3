//! Claiming pods and ControllerRevisions (upstream's `ClaimPods` and
//! `ClaimControllerRevisions` in `pkg/controller/controller_ref_manager.go`): a DaemonSet owns
//! what carries its controller reference and matches its selector; it adopts matching orphans
//! (after a live read shows it is still there) and releases owned objects that stopped
//! matching.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Error, Manager, key_of};
use crate::controller_ref::{Claim, can_adopt, classify, release_patch};
use crate::replicaset::pod_control::PodError;

/// The controller reference a DaemonSet puts on what it owns (upstream's `NewControllerRef`).
pub(super) fn controller_ref(ds: &DaemonSet) -> OwnerReference {
    OwnerReference {
        api_version: DaemonSet::api_version(&()).into_owned(),
        kind: DaemonSet::kind(&()).into_owned(),
        name: ds.name_any(),
        uid: ds.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether adoption is allowed, decided by one live read per sync ([`can_adopt`]).
#[derive(Default)]
pub(super) struct AdoptionCheck(Option<bool>);

impl AdoptionCheck {
    async fn may_adopt(&mut self, m: &Manager, ds: &DaemonSet) -> Result<bool, Error> {
        if let Some(v) = self.0 {
            return Ok(v);
        }
        let key = key_of(ds);
        let ok = can_adopt(&m.client, ds).await.map_err(|source| Error::Recheck { key: key.clone(), source })?;
        self.0 = Some(ok);
        if ok { Ok(true) } else { Err(Error::CannotAdopt { key }) }
    }
}

/// The pods of the DaemonSet's namespace it owns after adopting and releasing.
pub(super) async fn claim_pods(
    m: &Manager,
    ds: &DaemonSet,
    selector: &Selector,
    check: &mut AdoptionCheck,
) -> Result<Vec<Arc<Pod>>, Error> {
    let key = key_of(ds);
    let uid = ds.uid().unwrap_or_default();
    let deleting = ds.metadata.deletion_timestamp.is_some();
    let ns = ds.namespace();
    let api: Api<Pod> = Api::namespaced(m.client.clone(), ns.as_deref().unwrap_or_default());
    let mut claimed = Vec::new();
    let mut first_error = None;
    for pod in m.pods.state_filter(|p| p.namespace() == ns) {
        let patch = match classify(&pod.metadata, &uid, deleting, selector.matches(pod.labels())) {
            Claim::Own => {
                claimed.push(pod);
                continue;
            }
            Claim::Ignore => continue,
            Claim::Release => release_patch(&uid, pod.metadata.uid.as_deref()),
            Claim::Adopt => {
                if !check.may_adopt(m, ds).await? {
                    continue;
                }
                json!({"metadata": {"ownerReferences": [controller_ref(ds)], "uid": pod.metadata.uid}})
            }
        };
        let adopting = patch["metadata"]["ownerReferences"][0].get("$patch").is_none();
        match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
            Ok(_) if adopting => claimed.push(pod),
            Ok(_) => {}
            // Gone, or (releasing) no longer carrying the reference.
            Err(kube::Error::Api(s)) if s.code == 404 || (!adopting && s.code == 422) => {}
            Err(e) => {
                let action = if adopting { "adopting" } else { "releasing" };
                first_error.get_or_insert(Error::Pod {
                    key: key.clone(),
                    action,
                    pod: pod.name_any(),
                    source: PodError::Api(e),
                });
            }
        }
    }
    first_error.map_or(Ok(claimed), Err)
}

/// The ControllerRevisions of the DaemonSet's namespace it owns after adopting and releasing.
pub(super) async fn claim_revisions(
    m: &Manager,
    ds: &DaemonSet,
    selector: &Selector,
    check: &mut AdoptionCheck,
) -> Result<Vec<ControllerRevision>, Error> {
    let key = key_of(ds);
    let uid = ds.uid().unwrap_or_default();
    let deleting = ds.metadata.deletion_timestamp.is_some();
    let ns = ds.namespace();
    let mut claimed = Vec::new();
    for rev in m.revisions.state_filter(|r| r.namespace() == ns) {
        let history_err = |source| Error::History { key: key.clone(), source };
        match classify(&rev.metadata, &uid, deleting, selector.matches(rev.labels())) {
            Claim::Own => claimed.push((*rev).clone()),
            Claim::Ignore => {}
            Claim::Release => {
                m.history.release_controller_revision(&uid, &rev).await.map_err(history_err)?;
            }
            Claim::Adopt => {
                if check.may_adopt(m, ds).await? {
                    let adopted =
                        m.history.adopt_controller_revision(&controller_ref(ds), &rev).await.map_err(history_err)?;
                    claimed.push(adopted);
                }
            }
        }
    }
    Ok(claimed)
}
