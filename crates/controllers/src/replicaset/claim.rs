//! Claiming pods (upstream's `PodControllerRefManager.ClaimPods` in
//! `pkg/controller/controller_ref_manager.go`): a workload owns the active pods that carry its
//! controller reference and match its selector; it adopts matching orphans and releases owned
//! pods that no longer match.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use super::workload::Workload;
use super::{Error, Manager, key_of};
use crate::controller_ref::{Claim, can_adopt, classify};

/// The pods of `pods` (all active) that `w` owns after adopting and releasing.
pub(super) async fn claim_pods<K: Workload>(
    m: &Manager<K>,
    w: &Arc<K>,
    selector: &Selector,
    pods: Vec<Arc<Pod>>,
) -> Result<Vec<Arc<Pod>>, Error> {
    let key = key_of(&**w);
    let uid = w.meta().uid.clone().unwrap_or_default();
    let deleting = w.meta().deletion_timestamp.is_some();
    let mut claimed = Vec::new();
    let mut may_adopt: Option<bool> = None;
    let mut first_error = None;
    for pod in pods {
        match classify(&pod.metadata, &uid, deleting, selector.matches(pod.labels())) {
            Claim::Ignore => {}
            Claim::Own => claimed.push(pod),
            Claim::Release => match m.pod_control.release(&**w, &pod).await {
                Ok(()) => {}
                // Gone, or no longer carrying the reference: released either way.
                Err(e) if e.is_not_found() || e.is_invalid() => {}
                Err(source) => {
                    first_error.get_or_insert(Error::Claim { key: key.clone(), source });
                }
            },
            Claim::Adopt => {
                // Adoption needs a fresh read showing the workload is still there and not
                // being deleted (the cache may be behind), once per sync.
                if may_adopt.is_none() {
                    let verdict = recheck(m, w).await;
                    may_adopt = Some(verdict.is_ok());
                    if let Err(e) = verdict {
                        first_error.get_or_insert(e);
                    }
                }
                if may_adopt == Some(false) {
                    continue;
                }
                match m.pod_control.adopt(&**w, &pod).await {
                    Ok(()) => claimed.push(pod),
                    Err(e) if e.is_not_found() => {}
                    Err(source) => {
                        first_error.get_or_insert(Error::Claim { key: key.clone(), source });
                    }
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(claimed),
    }
}

/// The live read upstream's adoption needs ([`can_adopt`]), as this controller's error.
async fn recheck<K: Workload>(m: &Manager<K>, w: &K) -> Result<(), Error> {
    let key = key_of(w);
    match can_adopt(&m.client, w).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::CannotAdopt { key }),
        Err(source) => Err(Error::Recheck { key, source }),
    }
}
