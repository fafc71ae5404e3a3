//! The PersistentVolumeClaim protection controller (upstream's
//! `pkg/controller/volume/pvcprotection`): a claim being deleted keeps its
//! `kubernetes.io/pvc-protection` finalizer while a scheduled pod still names it, and loses it
//! once none does, so that a volume is never pulled from under a pod. Claims without the
//! finalizer (made before the admission plugin added it) get it.
//!
//! As upstream, a pod that has finished (Succeeded or Failed) still uses its claims until it
//! is deleted; only an ephemeral volume's claim is free once its pod is shut down. Whether a
//! claim is in use is decided from a live list of its namespace's pods, never from a cache
//! that may not have seen a new pod yet; pods are watched without a cache (the watch only
//! says which claims to look at again), so the controller holds no copy of every pod.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ephemeral;
use crate::informer::{Change, Informers};

pub const FINALIZER: &str = "kubernetes.io/pvc-protection";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing the pods of namespace {namespace}")]
    ListPods {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("{action} the protection finalizer of persistentvolumeclaim {namespace}/{name}")]
    Patch {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Being deleted and still holding the finalizer (upstream's `IsDeletionCandidate`).
fn is_deletion_candidate(claim: &PersistentVolumeClaim) -> bool {
    claim.metadata.deletion_timestamp.is_some() && claim.finalizers().iter().any(|f| f == FINALIZER)
}

/// Alive and missing the finalizer (upstream's `NeedToAddFinalizer`).
fn needs_finalizer(claim: &PersistentVolumeClaim) -> bool {
    claim.metadata.deletion_timestamp.is_none() && !claim.finalizers().iter().any(|f| f == FINALIZER)
}

/// Upstream's `podIsShutDown`: the node agent is done with the pod (it asked for the final
/// delete with a zero grace period) or the pod was force-deleted.
fn is_shut_down(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some() && pod.metadata.deletion_grace_period_seconds == Some(0)
}

/// Whether `pod` uses `claim` (upstream's `podUsesPVC`): only scheduled pods count, since the
/// node agent refuses to start a pod whose claim is being deleted.
fn pod_uses(pod: &Pod, claim: &PersistentVolumeClaim) -> bool {
    let Some(spec) = pod.spec.as_ref().filter(|s| s.node_name.as_deref().is_some_and(|n| !n.is_empty())) else {
        return false;
    };
    let name = claim.name_any();
    spec.volumes.iter().flatten().any(|v| {
        v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == name)
            || (v.ephemeral.is_some()
                && !is_shut_down(pod)
                && ephemeral::claim_name(pod, &v.name) == name
                && ephemeral::is_for_pod(claim, pod))
    })
}

/// The claims a pod names, in its namespace (upstream's `enqueuePVCs`).
fn claims_of(pod: &Pod) -> Vec<ObjectRef<PersistentVolumeClaim>> {
    let ns = pod.namespace().unwrap_or_default();
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    volumes
        .into_iter()
        .flatten()
        .filter_map(|v| match (&v.persistent_volume_claim, &v.ephemeral) {
            (Some(c), _) => Some(c.claim_name.clone()),
            (None, Some(_)) => Some(ephemeral::claim_name(pod, &v.name)),
            (None, None) => None,
        })
        .map(|name| ObjectRef::new(&name).within(&ns))
        .collect()
}

/// Whether a pod event can free a claim: the pod is gone, finished, or not scheduled.
fn may_free_claims(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    matches!(phase, Some("Succeeded" | "Failed")) || !scheduled || is_shut_down(pod)
}

struct Ctx {
    client: Client,
}

/// Runs the controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (claims, writer) = informers.store::<PersistentVolumeClaim>().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<ObjectRef<PersistentVolumeClaim>>();
    let claim_tx = tx.clone();
    let informer = writer.run(shutdown.clone(), move |change| {
        if let Change::Add(c) | Change::Update(_, c) = change
            && (needs_finalizer(&c) || is_deletion_candidate(&c))
        {
            let _ = claim_tx.send(ObjectRef::from_obj(&*c));
        }
    });
    let pods = watch_pods(client.clone(), claims.clone(), tx, shutdown.clone());
    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
    let workers = applier(
        |claim, ctx| Box::pin(sync(claim, ctx)),
        |_, e: &Error, _| {
            warn!(error = %e, "persistentvolumeclaim protection sync failed; retrying");
            Action::requeue(std::time::Duration::from_secs(2))
        },
        Arc::new(Ctx { client }),
        claims,
        queue,
        Config::default().concurrency(4),
    )
    .for_each(|_| async {});
    info!("starting persistentvolumeclaim protection controller");
    tokio::join!(informer, pods, workers);
}

/// Sends the claims being deleted that a pod event may have freed. After a relist every such
/// claim is looked at again, since a pod deleted while the watch was down left no event.
async fn watch_pods(
    client: Client,
    claims: Store<PersistentVolumeClaim>,
    tx: mpsc::UnboundedSender<ObjectRef<PersistentVolumeClaim>>,
    shutdown: CancellationToken,
) {
    let deleting = |r: &ObjectRef<PersistentVolumeClaim>| claims.get(r).is_some_and(|c| is_deletion_candidate(&c));
    let mut events = watcher::watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff().boxed();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let pod_claims = match event {
            None => return,
            Some(Err(e)) => {
                warn!(error = %e, "watching pods for claim protection; retrying");
                continue;
            }
            Some(Ok(watcher::Event::Delete(pod))) => claims_of(&pod),
            Some(Ok(watcher::Event::Apply(pod))) if may_free_claims(&pod) => claims_of(&pod),
            Some(Ok(watcher::Event::InitDone)) => {
                claims.state().iter().filter(|c| is_deletion_candidate(c)).map(|c| ObjectRef::from_obj(&**c)).collect()
            }
            Some(Ok(_)) => continue,
        };
        let unique: HashSet<_> = pod_claims.into_iter().filter(|r| deleting(r)).collect();
        for r in unique {
            let _ = tx.send(r);
        }
    }
}

async fn sync(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let (namespace, name) = (claim.namespace().unwrap_or_default(), claim.name_any());
    let (action, add) = if is_deletion_candidate(&claim) {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
        let live = pods
            .list(&ListParams::default())
            .await
            .map_err(|source| Error::ListPods { namespace: namespace.clone(), source })?;
        if let Some(user) = live.items.iter().find(|p| pod_uses(p, &claim)) {
            debug!(%namespace, claim = %name, pod = %user.name_any(), "keeping the finalizer of a claim in use");
            return Ok(Action::await_change());
        }
        ("removing", false)
    } else if needs_finalizer(&claim) {
        ("adding", true)
    } else {
        return Ok(Action::await_change());
    };
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
    match super::patch_finalizer(&api, &*claim, FINALIZER, add).await {
        Ok(()) => {
            debug!(%namespace, claim = %name, action, "persistentvolumeclaim protection finalizer");
            Ok(Action::await_change())
        }
        // Gone, or changed since the cache saw it: the informer brings the new state.
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(Action::await_change()),
        Err(source) => Err(Error::Patch { action, namespace, name, source }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn claim(name: &str, owner_uid: Option<&str>) -> PersistentVolumeClaim {
        let mut meta = json!({"name": name, "namespace": "ns", "finalizers": [FINALIZER],
                              "deletionTimestamp": "2026-11-27T00:00:00Z"});
        if let Some(uid) = owner_uid {
            meta["ownerReferences"] =
                json!([{"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": uid, "controller": true}]);
        }
        serde_json::from_value(json!({"metadata": meta})).unwrap()
    }

    fn pod(node: Option<&str>, phase: &str, extra_meta: Value) -> Pod {
        let mut meta = json!({"name": "web", "namespace": "ns", "uid": "pod-uid"});
        meta.as_object_mut().unwrap().extend(extra_meta.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}], "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
            ]},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn a_scheduled_pod_uses_its_claims_even_once_finished() {
        let running = pod(Some("n1"), "Running", json!({}));
        assert!(pod_uses(&running, &claim("data", None)));
        assert!(!pod_uses(&running, &claim("other", None)));
        // As upstream: a finished pod holds its claims until it is deleted.
        assert!(pod_uses(&pod(Some("n1"), "Succeeded", json!({})), &claim("data", None)));
        assert!(!pod_uses(&pod(None, "Pending", json!({})), &claim("data", None)));
    }

    #[test]
    fn an_ephemeral_claim_is_used_by_its_own_pod_until_it_is_shut_down() {
        let running = pod(Some("n1"), "Running", json!({}));
        assert!(pod_uses(&running, &claim("web-scratch", Some("pod-uid"))));
        assert!(!pod_uses(&running, &claim("web-scratch", Some("another-pod"))));
        let shut = pod(
            Some("n1"),
            "Running",
            json!({"deletionTimestamp": "2026-11-27T00:00:00Z", "deletionGracePeriodSeconds": 0}),
        );
        assert!(!pod_uses(&shut, &claim("web-scratch", Some("pod-uid"))));
    }

    #[test]
    fn pod_events_that_may_free_claims_name_every_claim_of_the_pod() {
        assert!(!may_free_claims(&pod(Some("n1"), "Running", json!({}))));
        assert!(may_free_claims(&pod(Some("n1"), "Failed", json!({}))));
        assert!(may_free_claims(&pod(None, "Pending", json!({}))));
        let names: Vec<String> =
            claims_of(&pod(Some("n1"), "Running", json!({}))).iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, ["data", "web-scratch"]);
    }
}
