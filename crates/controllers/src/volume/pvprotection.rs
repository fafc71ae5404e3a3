//! The PersistentVolume protection controller (upstream's `pkg/controller/volume/pvprotection`):
//! a volume being deleted keeps its `kubernetes.io/pv-protection` finalizer while it is bound
//! to a claim, and loses it once it is not, so that the object goes. Volumes without the
//! finalizer (made before the admission plugin added it) get it.

use std::convert::Infallible;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::informer::{Change, Informers};

pub const FINALIZER: &str = "kubernetes.io/pv-protection";

#[derive(Debug, thiserror::Error)]
#[error("{action} the protection finalizer of persistentvolume {name}")]
pub struct Error {
    action: &'static str,
    name: String,
    #[source]
    source: kube::Error,
}

/// Being deleted and still holding the finalizer (upstream's `IsDeletionCandidate`).
fn is_deletion_candidate(pv: &PersistentVolume) -> bool {
    pv.metadata.deletion_timestamp.is_some() && pv.finalizers().iter().any(|f| f == FINALIZER)
}

/// Alive and missing the finalizer (upstream's `NeedToAddFinalizer`).
fn needs_finalizer(pv: &PersistentVolume) -> bool {
    pv.metadata.deletion_timestamp.is_none() && !pv.finalizers().iter().any(|f| f == FINALIZER)
}

/// A volume is in use while it is bound (upstream looks at the phase alone).
fn is_used(pv: &PersistentVolume) -> bool {
    pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

/// Runs the controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (volumes, writer) = informers.store::<PersistentVolume>().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<ObjectRef<PersistentVolume>>();
    let informer = writer.run(shutdown.clone(), move |change| {
        if let Change::Add(pv) | Change::Update(_, pv) = change
            && (needs_finalizer(&pv) || is_deletion_candidate(&pv))
        {
            let _ = tx.send(ObjectRef::from_obj(&*pv));
        }
    });
    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
    let workers = applier(
        |pv, api: Arc<Api<PersistentVolume>>| Box::pin(sync(pv, api)),
        |_, e: &Error, _| {
            warn!(error = %e, "persistentvolume protection sync failed; retrying");
            Action::requeue(std::time::Duration::from_secs(2))
        },
        Arc::new(Api::all(client)),
        volumes,
        queue,
        Config::default(),
    )
    .for_each(|_| async {});
    info!("starting persistentvolume protection controller");
    tokio::join!(informer, workers);
}

async fn sync(pv: Arc<PersistentVolume>, api: Arc<Api<PersistentVolume>>) -> Result<Action, Error> {
    let (action, add) = if is_deletion_candidate(&pv) {
        if is_used(&pv) {
            debug!(volume = %pv.name_any(), "keeping the finalizer of a bound volume");
            return Ok(Action::await_change());
        }
        ("removing", false)
    } else if needs_finalizer(&pv) {
        ("adding", true)
    } else {
        return Ok(Action::await_change());
    };
    match super::patch_finalizer(&api, &*pv, FINALIZER, add).await {
        Ok(()) => {
            debug!(volume = %pv.name_any(), action, "persistentvolume protection finalizer");
            Ok(Action::await_change())
        }
        // Gone, or changed since the cache saw it: the informer brings the new state.
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(Action::await_change()),
        Err(source) => Err(Error { action, name: pv.name_any(), source }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pv(phase: &str, deleting: bool, finalizers: &[&str]) -> PersistentVolume {
        let mut meta = json!({"name": "v", "finalizers": finalizers});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-11-27T00:00:00Z");
        }
        serde_json::from_value(json!({"metadata": meta, "status": {"phase": phase}})).unwrap()
    }

    #[test]
    fn a_bound_volume_being_deleted_keeps_its_finalizer_and_a_released_one_loses_it() {
        let bound = pv("Bound", true, &[FINALIZER]);
        assert!(is_deletion_candidate(&bound) && is_used(&bound));
        let released = pv("Released", true, &[FINALIZER]);
        assert!(is_deletion_candidate(&released) && !is_used(&released));
    }

    #[test]
    fn only_live_volumes_without_the_finalizer_need_it() {
        assert!(needs_finalizer(&pv("Available", false, &[])));
        assert!(!needs_finalizer(&pv("Available", false, &[FINALIZER])));
        assert!(!needs_finalizer(&pv("Available", true, &[])));
        assert!(!is_deletion_candidate(&pv("Available", true, &["other"])));
    }
}
