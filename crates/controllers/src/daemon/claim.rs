//! Claiming pods and ControllerRevisions (upstream's `ClaimPods` and
//! `ClaimControllerRevisions` in `pkg/controller/controller_ref_manager.go`): a DaemonSet owns
//! what carries its controller reference and matches its selector; it adopts matching orphans
//! (after a live read shows it is still there) and releases owned objects that stopped
//! matching.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Error, Manager, key_of};
use crate::replicaset::controller_of;
use crate::replicaset::pod_control::PodError;

/// What claiming does with one object.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Claim {
    Own,
    Ignore,
    Release,
    Adopt,
}

/// Upstream's `ClaimObject` decision for an object of the owner `owner_uid`.
pub(super) fn classify(meta: &ObjectMeta, owner_uid: &str, matches: bool) -> Claim {
    match controller_of(meta) {
        Some(r) if r.uid != owner_uid => Claim::Ignore,
        Some(_) if matches => Claim::Own,
        Some(_) => Claim::Release,
        None if !matches || meta.deletion_timestamp.is_some() => Claim::Ignore,
        None => Claim::Adopt,
    }
}

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

/// Whether adoption is allowed, decided by one live read per sync (upstream's
/// `RecheckDeletionTimestamp`).
#[derive(Default)]
pub(super) struct AdoptionCheck(Option<bool>);

impl AdoptionCheck {
    async fn may_adopt(&mut self, m: &Manager, ds: &DaemonSet) -> Result<bool, Error> {
        if let Some(v) = self.0 {
            return Ok(v);
        }
        let key = key_of(ds);
        let api: Api<DaemonSet> = Api::namespaced(m.client.clone(), &ds.namespace().unwrap_or_default());
        let fresh = api.get_opt(&ds.name_any()).await.map_err(|source| Error::Recheck { key: key.clone(), source })?;
        let ok = fresh.is_some_and(|f| f.metadata.uid == ds.metadata.uid && f.metadata.deletion_timestamp.is_none());
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
    let ns = ds.namespace();
    let api: Api<Pod> = Api::namespaced(m.client.clone(), ns.as_deref().unwrap_or_default());
    let mut claimed = Vec::new();
    let mut first_error = None;
    for pod in m.pods.state_filter(|p| p.namespace() == ns) {
        let patch = match classify(&pod.metadata, &uid, selector.matches(pod.labels())) {
            Claim::Own => {
                claimed.push(pod);
                continue;
            }
            Claim::Ignore => continue,
            Claim::Release => json!({"metadata": {
                "ownerReferences": [{"$patch": "delete", "uid": uid}], "uid": pod.metadata.uid}}),
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
    let ns = ds.namespace();
    let mut claimed = Vec::new();
    for rev in m.revisions.state_filter(|r| r.namespace() == ns) {
        let history_err = |source| Error::History { key: key.clone(), source };
        match classify(&rev.metadata, &uid, selector.matches(rev.labels())) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(owner: Option<&str>, deleting: bool) -> ObjectMeta {
        ObjectMeta {
            owner_references: owner
                .map(|uid| vec![OwnerReference { uid: uid.into(), controller: Some(true), ..Default::default() }]),
            deletion_timestamp: deleting.then_some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            )),
            ..Default::default()
        }
    }

    #[test]
    fn claiming_follows_the_controller_reference_and_the_selector() {
        assert_eq!(classify(&meta(Some("me"), false), "me", true), Claim::Own);
        assert_eq!(classify(&meta(Some("me"), false), "me", false), Claim::Release);
        assert_eq!(classify(&meta(Some("other"), false), "me", true), Claim::Ignore);
        assert_eq!(classify(&meta(None, false), "me", true), Claim::Adopt);
        assert_eq!(classify(&meta(None, false), "me", false), Claim::Ignore);
        assert_eq!(classify(&meta(None, true), "me", true), Claim::Ignore, "no adopting what is going");
    }
}
