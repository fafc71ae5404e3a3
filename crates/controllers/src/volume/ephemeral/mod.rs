//! The ephemeral volume controller (upstream's `pkg/controller/volume/ephemeral`): for every
//! `ephemeral` volume of a pod it creates the claim `<pod>-<volume>` from the volume's
//! template, owned by the pod (controller reference), so that the garbage collector deletes it
//! with the pod. A claim of that name that the pod does not own is never used for it.

use std::convert::Infallible;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Config, applier};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::events::{Recorder, WARNING};
use crate::informer::{Change, Informers};

const COMPONENT: &str = "ephemeral_volume";

/// Why a sync failed; the pod is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating persistentvolumeclaim {namespace}/{name}")]
    Create {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

struct Ctx {
    client: Client,
    claims: Store<PersistentVolumeClaim>,
    recorder: Recorder,
}

/// The claim name of a pod's ephemeral volume (upstream's `ephemeral.VolumeClaimName`).
pub fn claim_name(pod: &Pod, volume: &str) -> String {
    format!("{}-{}", pod.name_any(), volume)
}

/// The claims a pod's ephemeral volumes need, built from their templates.
pub fn claims_for(pod: &Pod) -> Vec<PersistentVolumeClaim> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: Pod::kind(&()).into_owned(),
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut out = Vec::new();
    for v in volumes.into_iter().flatten() {
        let Some(template) = v.ephemeral.as_ref().and_then(|e| e.volume_claim_template.as_ref()) else { continue };
        let meta = template.metadata.clone().unwrap_or_default();
        out.push(PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(claim_name(pod, &v.name)),
                namespace: pod.namespace(),
                labels: meta.labels,
                annotations: meta.annotations,
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            spec: Some(template.spec.clone()),
            status: None,
        });
    }
    out
}

/// Whether `claim` was made for `pod` (upstream's `VolumeIsForPod`).
pub fn is_for_pod(claim: &PersistentVolumeClaim, pod: &Pod) -> bool {
    claim.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) == pod.uid().as_ref())
}

fn has_ephemeral(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).is_some_and(|v| v.iter().any(|v| v.ephemeral.is_some()))
}

/// Runs the controller until `shutdown`.
pub async fn run(informers: Informers, shutdown: CancellationToken) {
    let client = informers.client();
    let (pods, pod_writer) = informers.store::<Pod>().await;
    let (claims, claim_writer) = informers.store::<PersistentVolumeClaim>().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<ObjectRef<Pod>>();
    let pod_tx = tx.clone();
    let pod_informer = pod_writer.run(shutdown.clone(), move |c| {
        if let Change::Add(p) | Change::Update(_, p) = c
            && has_ephemeral(&p)
            && p.metadata.deletion_timestamp.is_none()
        {
            let _ = pod_tx.send(ObjectRef::from_obj(&*p));
        }
    });
    // A deleted claim is made again while its pod lives, as upstream's claim handler does.
    let claim_informer = claim_writer.run(shutdown.clone(), move |c| {
        if let Change::Delete(claim) = c {
            for o in claim.owner_references().iter().filter(|o| o.kind == "Pod" && o.controller == Some(true)) {
                let _ = tx.send(ObjectRef::new(&o.name).within(&claim.namespace().unwrap_or_default()));
            }
        }
    });
    let queue = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
    let ctx = Arc::new(Ctx { client: client.clone(), claims, recorder: Recorder::new(client, COMPONENT) });
    let workers = applier(
        |pod, ctx| Box::pin(sync(pod, ctx)),
        |_, e: &Error, _| {
            warn!(error = %e, "ephemeral volume sync failed; retrying");
            Action::requeue(std::time::Duration::from_secs(5))
        },
        ctx,
        pods,
        queue,
        Config::default().concurrency(4),
    )
    .for_each(|_| async {});
    info!("starting ephemeral volume controller");
    tokio::join!(pod_informer, claim_informer, workers);
}

async fn sync(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for claim in claims_for(&pod) {
        let name = claim.name_any();
        let existing = match ctx.claims.get(&ObjectRef::new(&name).within(&ns)) {
            Some(c) => Some(c),
            None => api.get_opt(&name).await.ok().flatten().map(Arc::new),
        };
        if let Some(existing) = existing {
            if !is_for_pod(&existing, &pod) {
                ctx.recorder.record(
                    &*pod,
                    WARNING,
                    "FailedBinding",
                    format!("PVC {ns}/{name} was not created for pod {ns}/{} (pod is not owner)", pod.name_any()),
                );
            }
            continue;
        }
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => debug!(claim = %name, pod = %pod.name_any(), "created ephemeral volume claim"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                ctx.recorder.record(
                    &*pod,
                    WARNING,
                    "FailedBinding",
                    format!("PVC {ns}/{name} creation failed: {source}"),
                );
                return Err(Error::Create { namespace: ns, name, source });
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "pod-uid"},
            "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": [
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
                    "metadata": {"labels": {"type": "scratch"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
                }}},
                {"name": "empty", "emptyDir": {}}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn each_ephemeral_volume_gets_a_claim_owned_by_the_pod() {
        let claims = claims_for(&pod());
        assert_eq!(claims.len(), 1);
        let c = &claims[0];
        assert_eq!(c.metadata.name.as_deref(), Some("web-scratch"));
        assert_eq!(c.metadata.labels.as_ref().unwrap()["type"], "scratch");
        let owner = &c.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Pod", "pod-uid", Some(true)));
        assert!(is_for_pod(c, &pod()));
    }

    #[test]
    fn a_claim_without_the_pod_as_controller_is_not_for_it() {
        let mut c = claims_for(&pod()).remove(0);
        c.metadata.owner_references = None;
        assert!(!is_for_pod(&c, &pod()));
    }
}
