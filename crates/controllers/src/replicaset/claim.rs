//! Claiming pods (upstream's `PodControllerRefManager.ClaimPods` in
//! `pkg/controller/controller_ref_manager.go`): a workload owns the active pods that carry its
//! controller reference and match its selector; it adopts matching orphans and releases owned
//! pods that no longer match.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::{Selector, SelectorExt};

use super::workload::Workload;
use super::{Error, Manager, controller_of, key_of};

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
        let matches = selector.matches(pod.labels());
        match controller_of(&pod.metadata) {
            Some(r) if r.uid != uid => {}
            Some(_) if matches => claimed.push(pod),
            // A workload being deleted keeps what it has until the collector is done.
            Some(_) if deleting => {}
            Some(_) => match m.pod_control.release(&**w, &pod).await {
                Ok(()) => {}
                // Gone, or no longer carrying the reference: released either way.
                Err(e) if e.is_not_found() || e.is_invalid() => {}
                Err(source) => {
                    first_error.get_or_insert(Error::Claim { key: key.clone(), source });
                }
            },
            None if deleting || !matches || pod.metadata.deletion_timestamp.is_some() => {}
            None => {
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

/// Upstream's `RecheckDeletionTimestamp`: a live read of the workload, which must be the same
/// object (uid) and not being deleted.
async fn recheck<K: Workload>(m: &Manager<K>, w: &K) -> Result<(), Error> {
    let key = key_of(w);
    let api: Api<K> = Api::namespaced(m.client.clone(), &w.namespace().unwrap_or_default());
    let fresh = api.get_opt(&w.name_any()).await.map_err(|source| Error::Recheck { key: key.clone(), source })?;
    match fresh {
        Some(f) if f.meta().uid == w.meta().uid && f.meta().deletion_timestamp.is_none() => Ok(()),
        _ => Err(Error::CannotAdopt { key }),
    }
}
